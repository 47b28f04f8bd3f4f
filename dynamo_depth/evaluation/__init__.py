"""The paper's evaluation protocols as plain functions: depth metrics and median scaling (``metrics``,
``depth``), motion segmentation PR / F1 (``motion``) and 5-frame odometry ATE (``odometry``).

The command-line tools on top (reading shards, running a checkpoint, writing reports) are the top-level
``eval`` package.
"""
