"""Dataset builders: raw KITTI / Waymo / nuScenes / your own videos -> byte-reproducible shards + manifest.

One Ray task per unit (``runner``), parallel pack tasks (``packing``), one module per dataset
(``python -m builders.<name> RAW OUT``) giving a ``spec.BuilderSpec``. Torch-free: a build never loads torch.
"""
