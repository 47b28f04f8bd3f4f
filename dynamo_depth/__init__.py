"""dynamo-depth: data and training system for Dynamo-Depth (NeurIPS 2023).

The library: sample schema, shards, manifests, geometry, data pipeline, models, losses, metrics,
config. It imports nothing from ``builders``, ``train`` or ``eval``.
"""

__version__ = "0.1.0"
