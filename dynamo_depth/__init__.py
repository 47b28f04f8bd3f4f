"""dynamo-depth: data and training system for Dynamo-Depth (NeurIPS 2023).

The library, one subpackage per role: ``formats`` (raw datasets), ``synth`` (a synthetic world in those
formats), ``video`` (your own cameras), ``shards`` (the torch-free data contract and its I/O), ``data`` (the
streaming loader), ``models`` (the networks), ``objective`` (warps and losses), ``evaluation`` (the paper's
protocols); ``geometry``, ``config`` and the commands (``predict``, ``show``, ``__main__``) at the root.
It imports nothing from ``builders``, ``train`` or ``eval`` (the layer rules: ``pyproject.toml``).
"""

__version__ = "0.1.0"
