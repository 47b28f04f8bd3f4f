"""Dataset builders: raw KITTI / Waymo / nuScenes / your own videos -> byte-reproducible shards + manifest.

One task per unit (``runner``; a local process pool or Ray), parallel pack tasks (``packing``), one module per dataset
(``python -m builders.<name> RAW OUT``) giving a ``spec.BuilderSpec``. Torch-free: a build never loads torch.
"""
