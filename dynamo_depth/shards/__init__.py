"""The data contract and its I/O, torch-free: the sample schema, the byte-reproducible tar shards (writer,
reader), the manifest and its verification, local / s3:// storage, and the compact sample index derived
from the manifest (the loader's start-up; builds write it beside the manifest).

Builders write through this package and the loader reads through it; it imports no torch, so a build
driver and its workers never load it.
"""
