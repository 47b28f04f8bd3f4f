"""The training objective of the original Dynamo-Depth: the batch the losses read (``inputs``), the torch
warps (``warping``, ``view_synthesis``), SSIM, the ground-plane term and ``losses.compute_losses``.

It reads the networks' outputs (``dynamo_depth.models.outputs``) and knows nothing about the loader.
"""
