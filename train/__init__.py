"""The trainer: ``torchrun ... train/main.py --config C`` (DDP, the original's four phases, exact resume),
checkpoints, export to the original's module folders."""
