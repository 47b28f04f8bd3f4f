"""Synthetic 3D driving world and writers of small raw datasets in the KITTI, Waymo and nuScenes formats.

``world`` is the shared analytic scene (see ``world.make_world``); ``cli`` is ``python -m dynamo_depth synth``.
Writers are imported lazily by the CLI so that importing this package stays cheap.
"""
