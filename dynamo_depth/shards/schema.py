"""Schema v2 of a training sample (v1 still read): one target frame t with its neighbours t-1 and t+1.

A sample is stored as WebDataset members under the key ``{sequence}_{camera}_{frame:06d}``:

=================== ==================================================================
member              content
=================== ==================================================================
prev.jpg            frame t-1, JPEG, already resized to the dataset's training size
cur.jpg             frame t
next.jpg            frame t+1
k.npy               (3, 3) float64 pinhole intrinsics in pixels of the stored images (``K.npy`` in v1)
poses.npy           (3, 4, 4) float64 world_from_camera for t-1, t, t+1 (OpenCV camera axes); optional in v2
depth.npy.zst       zstd .npy, (N, 3) float32 [u, v, z]: u, v pixels of the ORIGINAL image, z metres; optional
                    in v2
motion.npy.zst      optional zstd .npy, (N,) uint8 per depth point (see ``MotionLabel``)
motion_mask.npy.zst optional zstd .npy, (H, W) uint8 ``MotionLabel`` per pixel of the ORIGINAL image
                    (``original_size``; Waymo frames with a panoptic label: the original's filled-contour mask,
                    which its motion-segmentation evaluation scores pixel by pixel)
orig.png            optional: the target frame's raw PNG file, byte for byte (KITTI test-split builds), so
                    evaluation can feed the network the raw image resized bicubic as the original does
meta.json           ``SampleMeta`` as canonical JSON
=================== ==================================================================

Edge samples: a build from a split file (``--split-file``) makes a sample of every listed frame; a
frame without a previous / next frame uses ITSELF as that neighbour (the original's rule), and
``meta.json`` ``extra["edge"]`` lists the substituted neighbours (``["prev"]``, ``["next"]`` or both;
see ``edge_neighbours``). The loader leaves such samples out of training unless asked.

Versions (``meta.json`` ``schema_version``): v2 (``SCHEMA_VERSION``, what every builder writes) differs from
v1 in two ways: every member name is lower case (``K.npy`` became ``k.npy``: ``webdataset.WebDataset``
lower-cases extensions, so v1's ``K.npy`` reached its users as ``k.npy`` anyway), and ``depth.npy.zst`` and
``poses.npy`` are optional, for samples from a camera alone (``builders.video``: no LiDAR, no odometry).
v1 shards keep reading (``READABLE_VERSIONS``): their ``K.npy`` (or ``k.npy`` through WebDataset) is the
intrinsics, and depth and poses stay required; ``encode`` writes a v1 sample back under its v1 names, byte
for byte. A v1 reader refuses a v2 sample by its ``schema_version``.

Nothing here ever unpickles: every ``np.load`` uses ``allow_pickle=False``.
"""

from __future__ import annotations

import dataclasses
import enum
import io
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zstandard

SCHEMA_VERSION = 2
"""The sample schema written (v2: lower-case member names, depth and poses optional)."""
READABLE_VERSIONS = (1, 2)
K_MEMBER = {1: "K.npy", 2: "k.npy"}
"""The intrinsics member's name per schema version."""
ZSTD_LEVEL = 3

IMAGE_MEMBERS = ("prev.jpg", "cur.jpg", "next.jpg")
REQUIRED_MEMBERS = (*IMAGE_MEMBERS, "k.npy", "meta.json")
"""Members of every v2 sample."""
DEPTH_AND_POSES = ("poses.npy", "depth.npy.zst")
"""Optional in v2, required in v1."""
OPTIONAL_MEMBERS = ("motion.npy.zst", "orig.png", "motion_mask.npy.zst")
EDGE_KEY = "edge"
"""``meta.json`` ``extra`` key listing neighbours replaced by the target frame (``EDGE_NEIGHBOURS``)."""
EDGE_NEIGHBOURS = ("prev", "next")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ALL_MEMBERS = (*REQUIRED_MEMBERS, *DEPTH_AND_POSES, *OPTIONAL_MEMBERS)
V1_MEMBERS = (*IMAGE_MEMBERS, "K.npy", *DEPTH_AND_POSES, "meta.json", *OPTIONAL_MEMBERS)
DATASETS = ("kitti", "nuscenes", "waymo", "video")
_KEY_RE = re.compile(r"^[A-Za-z0-9\-]+(?:_[A-Za-z0-9\-]+)*_\d{6,}$")


class MotionLabel(enum.IntEnum):
    """Per-LiDAR-point motion class (``motion.npy.zst``)."""

    BACKGROUND = 0
    MOVING = 1
    STATIC_MOVABLE = 2
    UNLABELED = 3


class SampleError(ValueError):
    """A sample (or one of its members) breaks the schema; the message names key and member."""

    def __init__(self, key: str, member: str, reason: str) -> None:
        super().__init__(f"sample {key!r}, member {member!r}: {reason}")
        self.key, self.member, self.reason = key, member, reason


def make_key(sequence: str, camera: str, frame: int) -> str:
    """Return ``{sequence}_{camera}_{frame:06d}``; dots and slashes are replaced by ``-``."""
    clean = [re.sub(r"[^A-Za-z0-9_\-]", "-", part) for part in (sequence, camera)]
    return f"{clean[0]}_{clean[1]}_{frame:06d}"


@dataclass(frozen=True)
class SampleMeta:
    """``meta.json``: everything about a triplet that is not an array.

    Attributes:
        dataset: one of ``DATASETS``.
        split: e.g. ``train`` / ``val`` / ``test``.
        sequence: Waymo segment, nuScenes scene or KITTI drive name.
        camera: camera name (``FRONT``, ``CAM_FRONT``, ``image_02``...).
        frame_indices: indices of t-1, t, t+1 within the sequence's frame list.
        timestamps_us: capture times of t-1, t, t+1 in microseconds.
        original_size: [H, W] of the raw image in pixels.
        original_K: 3x3 intrinsics in pixels of the raw (undistorted) image.
        distortion: source distortion coefficients (Waymo k1, k2, p1, p2, k3) or ``None``.
        ego_from_camera: 4x4 camera-to-ego/vehicle transform (OpenCV camera axes).
        builder: builder name; builder_version: its version string.
        extra: dataset-specific JSON-able facts (gaps, lidar sweep used, ...).
    """

    dataset: str
    split: str
    sequence: str
    camera: str
    frame_indices: tuple[int, int, int]
    timestamps_us: tuple[int, int, int]
    original_size: tuple[int, int]
    original_K: tuple[tuple[float, ...], ...]
    ego_from_camera: tuple[tuple[float, ...], ...]
    builder: str
    builder_version: str
    distortion: tuple[float, ...] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        """JSON-able fields (tuples as lists); no deep copy first, as ``dataclasses.asdict`` makes."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["extra"] = dict(self.extra)
        return _listify(out)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> SampleMeta:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(obj) - names)
        if unknown:
            raise ValueError(f"unknown meta.json fields {unknown}; allowed: {sorted(names)}")
        kw = dict(obj)
        for name in ("frame_indices", "timestamps_us", "original_size"):
            kw[name] = tuple(int(v) for v in kw[name])
        for name, size in (("frame_indices", 3), ("timestamps_us", 3), ("original_size", 2)):
            if len(kw[name]) != size:
                raise ValueError(f"meta.json {name}: expected {size} values, got {len(kw[name])}")
        for name, size in (("original_K", 3), ("ego_from_camera", 4)):
            kw[name] = tuple(tuple(float(v) for v in row) for row in kw[name])
            if len(kw[name]) != size or any(len(row) != size for row in kw[name]):
                raise ValueError(f"meta.json {name}: expected a {size}x{size} matrix")
        if kw.get("distortion") is not None:
            kw["distortion"] = tuple(float(v) for v in kw["distortion"])
        kw["extra"] = dict(kw.get("extra") or {})
        return cls(**kw)


_PLAIN_NUMBERS = (float, int)


def _listify(obj: Any) -> Any:
    if type(obj) in (tuple, list) and all(type(v) in _PLAIN_NUMBERS for v in obj):
        return list(obj)  # the common case (matrix rows, indices): nothing inside to convert
    if isinstance(obj, Mapping):
        return {str(k): _listify(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_listify(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _listify(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def edge_neighbours(meta: SampleMeta) -> tuple[str, ...]:
    """Neighbours of an edge sample that are the target frame itself (empty for a regular sample)."""
    value = meta.extra.get(EDGE_KEY, ())
    if not isinstance(value, (list, tuple)) or any(v not in EDGE_NEIGHBOURS for v in value):
        raise ValueError(f"meta.json extra[{EDGE_KEY!r}] = {value!r}; allowed: a list of {EDGE_NEIGHBOURS}")
    return tuple(value)


def is_edge_meta_json(data: bytes, *, key: str = "?") -> bool:
    """Whether raw ``meta.json`` bytes flag an edge sample (``extra["edge"]`` non-empty); parses nothing else.

    Used where only the flag is needed (the shard packer writes it into the manifest, a folder scan reads it).
    ``SampleError`` naming ``key`` if the bytes are not a meta.json object or the flag is malformed."""
    try:
        obj = json.loads(bytes(data))
        extra = obj.get("extra") or {}
        value = extra.get(EDGE_KEY, [])
    except (ValueError, TypeError, AttributeError) as exc:
        raise SampleError(key, "meta.json", f"cannot read the edge flag: {exc}") from exc
    if not isinstance(value, list) or any(v not in EDGE_NEIGHBOURS for v in value):
        raise SampleError(key, "meta.json", f"extra[{EDGE_KEY!r}] = {value!r}; allowed: a list of {EDGE_NEIGHBOURS}")
    return bool(value)


def matrix_tuple(m: Any) -> tuple[tuple[float, ...], ...]:
    """A 2-D array-like as a tuple of float tuples (for ``SampleMeta`` matrix fields)."""
    arr = np.asarray(m, dtype=np.float64)
    return tuple(tuple(float(v) for v in row) for row in arr)


@dataclass(frozen=True, eq=False)
class TripletSample:
    """One training triplet.

    Attributes:
        key: ``{sequence}_{camera}_{frame:06d}`` (no dots).
        images: JPEG bytes of frames (t-1, t, t+1) at the training size.
        K: (3, 3) float64 intrinsics in pixels of the stored (resized) images.
        poses: (3, 4, 4) float64 world_from_camera for t-1, t, t+1; metres, OpenCV camera axes; None
            when the source has no poses (schema v2).
        depth: (N, 3) float32 [u, v, z]; u (column), v (row) in pixels of the ORIGINAL image,
            z the camera z-depth in metres of LiDAR points of frame t; None without LiDAR (schema v2).
        meta: ``SampleMeta``.
        motion: optional (N,) uint8 ``MotionLabel`` per depth point.
        original_image: optional raw PNG bytes of the target frame (``orig.png``).
        motion_mask: optional (H, W) uint8 ``MotionLabel`` per pixel of the original image
            (``motion_mask.npy.zst``, H, W = ``meta.original_size``).
    """

    key: str
    images: tuple[bytes, bytes, bytes]
    K: np.ndarray
    poses: np.ndarray | None
    depth: np.ndarray | None
    meta: SampleMeta
    motion: np.ndarray | None = None
    original_image: bytes | None = None
    motion_mask: np.ndarray | None = None

    def __post_init__(self) -> None:
        validate(self)


def validate(sample: TripletSample) -> None:
    """Raise ``SampleError`` naming key and member on any schema violation."""
    key = sample.key
    if not isinstance(key, str) or not _KEY_RE.match(key):
        raise SampleError(str(key), "__key__", "key must look like {sequence}_{camera}_{frame:06d} with no dots")
    if len(sample.images) != 3:
        raise SampleError(key, "images", f"need 3 JPEG frames, got {len(sample.images)}")
    for name, data in zip(IMAGE_MEMBERS, sample.images, strict=False):
        if not isinstance(data, (bytes, bytearray)) or not bytes(data[:3]) == b"\xff\xd8\xff":
            raise SampleError(key, name, "not JPEG data (missing SOI marker)")
    if sample.original_image is not None and not bytes(sample.original_image[:8]) == _PNG_MAGIC:
        raise SampleError(key, "orig.png", "not PNG data (missing PNG signature)")
    version = sample.meta.schema_version
    if version not in READABLE_VERSIONS:
        raise SampleError(key, "meta.json", f"schema_version {version}, this reader knows {READABLE_VERSIONS}")
    _check_array(key, K_MEMBER[version], sample.K, np.float64, (3, 3))
    if sample.poses is not None:
        _check_array(key, "poses.npy", sample.poses, np.float64, (3, 4, 4))
    if sample.depth is not None:
        _check_array(key, "depth.npy.zst", sample.depth, np.float32, (None, 3))
    if sample.motion is not None:
        if sample.depth is None:
            raise SampleError(key, "motion.npy.zst", "motion labels need depth points (depth.npy.zst)")
        _check_array(key, "motion.npy.zst", sample.motion, np.uint8, (sample.depth.shape[0],))
    if sample.motion_mask is not None:
        _check_array(key, "motion_mask.npy.zst", sample.motion_mask, np.uint8, tuple(sample.meta.original_size))
    for member, arr in ((K_MEMBER[version], sample.K), ("poses.npy", sample.poses), ("depth.npy.zst", sample.depth)):
        if arr is not None and not np.isfinite(arr).all():
            raise SampleError(key, member, "holds NaN or infinite values")
    meta = sample.meta
    if version == 1 and (sample.depth is None or sample.poses is None):
        raise SampleError(key, "meta.json", "schema_version 1 needs depth.npy.zst and poses.npy (v2 makes them "
                          "optional)")
    if meta.dataset not in DATASETS:
        raise SampleError(key, "meta.json", f"dataset {meta.dataset!r}; allowed: {DATASETS}")
    if sample.poses is not None and not (np.abs(sample.poses[:, 3] - _POSE_LAST_ROW) <= _POSE_ROW_TOLERANCE).all():
        raise SampleError(key, "poses.npy", "last row of each pose must be [0, 0, 0, 1]")


_POSE_LAST_ROW = np.array([0.0, 0.0, 0.0, 1.0])
_POSE_ROW_TOLERANCE = 1e-8 + 1e-5 * _POSE_LAST_ROW  # np.allclose's default rtol / atol, without its overhead


def _check_array(key: str, member: str, arr: Any, dtype: type, shape: tuple[int | None, ...]) -> None:
    if not isinstance(arr, np.ndarray):
        raise SampleError(key, member, f"expected a numpy array, got {type(arr).__name__}")
    if arr.dtype != dtype:
        raise SampleError(key, member, f"dtype {arr.dtype}, expected {np.dtype(dtype)}")
    if arr.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, arr.shape, strict=False)):
        want = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
        raise SampleError(key, member, f"shape {arr.shape}, expected {want}")


def npy_bytes(arr: np.ndarray) -> bytes:
    """``.npy`` bytes of a C-contiguous copy of ``arr`` (never pickled)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def load_npy(data: bytes) -> np.ndarray:
    """Parse ``.npy`` bytes without ever unpickling."""
    return np.load(io.BytesIO(data), allow_pickle=False)


def zstd_npy_bytes(arr: np.ndarray) -> bytes:
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True).compress(npy_bytes(arr))


def load_zstd_npy(data: bytes) -> np.ndarray:
    return load_npy(zstandard.ZstdDecompressor().decompress(data))


def encode(sample: TripletSample) -> dict[str, bytes]:
    """Member name -> bytes for one sample (deterministic: same sample, same bytes)."""
    validate(sample)
    members = {name: bytes(data) for name, data in zip(IMAGE_MEMBERS, sample.images, strict=False)}
    members[K_MEMBER[sample.meta.schema_version]] = npy_bytes(sample.K)
    if sample.poses is not None:
        members["poses.npy"] = npy_bytes(sample.poses)
    if sample.depth is not None:
        members["depth.npy.zst"] = zstd_npy_bytes(sample.depth)
    if sample.motion is not None:
        members["motion.npy.zst"] = zstd_npy_bytes(sample.motion)
    if sample.motion_mask is not None:
        members["motion_mask.npy.zst"] = zstd_npy_bytes(sample.motion_mask)
    if sample.original_image is not None:
        members["orig.png"] = bytes(sample.original_image)
    meta = json.dumps(sample.meta.to_json(), sort_keys=True, separators=(",", ":"), allow_nan=False)
    members["meta.json"] = meta.encode("utf-8")
    return members


def decode(members: Mapping[str, bytes], key: str | None = None) -> TripletSample:
    """Rebuild a ``TripletSample`` from its member bytes.

    ``members`` maps member names (``cur.jpg``...) to bytes; a WebDataset dict with ``__key__``
    works too. Raises ``SampleError`` naming the key and member on a missing member, an unknown
    member, a corrupt array, a wrong shape or dtype, or an unknown schema version.
    """
    key = str(key if key is not None else members.get("__key__", "?"))
    names = {n for n in members if not n.startswith("__")}
    if "meta.json" not in names:
        raise SampleError(key, "meta.json", "missing member")
    meta = _decode_member(key, "meta.json", members, lambda b: SampleMeta.from_json(json.loads(b)))
    if meta.schema_version not in READABLE_VERSIONS:
        raise SampleError(key, "meta.json", f"unknown schema_version {meta.schema_version} (this reader knows "
                          f"{READABLE_VERSIONS})")
    if meta.schema_version == 1:
        if "k.npy" in members and "K.npy" not in members:  # a v1 shard read through webdataset.WebDataset
            members = {("K.npy" if name == "k.npy" else name): data for name, data in members.items()}
            names = {n for n in members if not n.startswith("__")}
        required, allowed = (*IMAGE_MEMBERS, "K.npy", *DEPTH_AND_POSES, "meta.json"), V1_MEMBERS
    else:
        required, allowed = REQUIRED_MEMBERS, ALL_MEMBERS
    for name in required:
        if name not in names:
            raise SampleError(key, name, "missing member")
    unknown = sorted(names - set(allowed))
    if unknown:
        raise SampleError(key, unknown[0], f"unknown member; schema v{meta.schema_version} allows {allowed}")
    motion = None
    if "motion.npy.zst" in names:
        motion = _decode_member(key, "motion.npy.zst", members, load_zstd_npy)
    return TripletSample(
        key=key,
        images=tuple(bytes(members[n]) for n in IMAGE_MEMBERS),  # type: ignore[arg-type]
        K=_decode_member(key, K_MEMBER[meta.schema_version], members, load_npy),
        poses=_decode_member(key, "poses.npy", members, load_npy) if "poses.npy" in names else None,
        depth=_decode_member(key, "depth.npy.zst", members, load_zstd_npy) if "depth.npy.zst" in names else None,
        meta=meta,
        motion=motion,
        original_image=bytes(members["orig.png"]) if "orig.png" in names else None,
        motion_mask=(_decode_member(key, "motion_mask.npy.zst", members, load_zstd_npy)
                     if "motion_mask.npy.zst" in names else None),
    )


def _decode_member(key: str, name: str, members: Mapping[str, bytes], parse: Any) -> Any:
    try:
        return parse(bytes(members[name]))
    except SampleError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parse failure becomes a named SampleError
        raise SampleError(key, name, f"cannot parse: {type(exc).__name__}: {exc}") from exc
