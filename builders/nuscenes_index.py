"""The nuScenes build driver's table reader: the records scene payloads need, without the devkit's full tables.

``load_index(dataroot=..., version=..., channels=(...))`` reads the JSON tables of ``DATAROOT/VERSION`` table
by table and streams the big ones (``sample_data``, ``ego_pose``, ``sample_annotation``) ~16 M characters at
a time (``iter_json_records``), so a table's records are never all held at once before the filter. It keeps:

- every ``scene``, ``sample``, ``calibrated_sensor``, ``instance``, ``sample_annotation`` record and the small
  fixed tables (``category``, ``attribute``, ``visibility``, ``sensor``) and the label tables
  (``lidarseg`` / ``panoptic``, where the version has them);
- the ``sample_data`` records of ``channels`` only (the builder's CAM_FRONT and LIDAR_TOP), and the
  ``ego_pose`` records they point to; of the other channels' records only what the devkit's reverse index
  takes from them: a keyframe's ``token`` under its ``channel`` in its sample's ``data``.

It adds the devkit's reverse-index fields (``NuScenes.__make_reverse_index__``) exactly as the devkit does:
``sample_annotation["category_name"]``, ``sample_data["sensor_modality"]`` and ``["channel"]``,
``sample["data"]`` (channel -> keyframe token, in table order, the last keyframe winning) and
``sample["anns"]``; records keep the JSON's key order, and the keys of one table's records are shared
objects as ``json.load`` of the whole table makes them, so ``builders.nuscenes_tables.scene_payload`` on
this index gives a payload equal to the devkit's, ``pickle.dumps`` byte for byte
(``tests/test_nuscenes_index.py``). ``get`` raises ``KeyError`` for a record it did not keep (another
channel's sample_data), as the devkit does for an unknown token.

The devkit's load checks are kept as ``ValueError`` naming the file: a missing table file, a table that
is not a JSON list of objects, a reference to a missing record, a category without ``index`` where label
tables exist, and a label table whose record count differs from its label files. Not read: ``log`` and
``map`` (checked to exist only; the build reads neither, so neither are the map images the devkit opens).
Measured at v1.0-trainval's record counts: 3.3 GB and 35-41 s against the devkit's 8.0 GB and 46 s
(``bench/RESULTS.md``). Torch-free; no devkit import.
"""

from __future__ import annotations

import gc
import json
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["DEVKIT_TABLES", "KeySharer", "NuScenesIndex", "iter_json_records", "load_index"]

DEVKIT_TABLES = ("category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor", "ego_pose", "log",
                 "scene", "sample", "sample_data", "sample_annotation", "map")
LABEL_TASKS = ("lidarseg", "panoptic")
CHUNK_CHARS = 1 << 24
_SPACE = re.compile(r"[ \t\n\r]*")


def iter_json_records(path: Path, *, chunk_chars: int | None = None) -> Iterator[dict]:
    """The objects of a JSON list file, in order, read ``chunk_chars`` (default ``CHUNK_CHARS``) characters at
    a time; ValueError naming the file if it is not a list of objects. Records of one chunk are decoded by one
    ``json.loads`` where the chunk's complete records parse as a list, else one by one (``raw_decode``). Key
    objects are shared within a chunk only: pass the records kept to one ``KeySharer`` per file to share them
    as one ``json.load`` of the file does."""
    decoder, size = json.JSONDecoder(), chunk_chars or CHUNK_CHARS
    with open(path, encoding="utf-8") as stream:
        pending = stream.read(size)
        head = _SPACE.match(pending).end()
        if not pending.startswith("[", head):
            raise ValueError(f"{path}: not a JSON list of records")
        pending, state, eof = pending[head + 1:], "first", False
        while True:
            pos = _SPACE.match(pending).end()
            if pos == len(pending):
                if eof:
                    raise ValueError(f"{path}: not a JSON list of records (the file ends before the list does)")
                pending = stream.read(size)
                eof = not pending
                continue
            char = pending[pos]
            if state == "separator" or (state == "first" and char == "]"):
                if char == "]":
                    return
                if char != ",":
                    raise ValueError(f"{path}: not a JSON list of records (expected ',' or ']' after a record)")
                pending, state = pending[pos + 1:], "record"
                continue
            if char != "{":
                raise ValueError(f"{path}: not a JSON list of records (a list item is not an object)")
            records, used = _complete_records(pending[pos:], decoder)
            if not records:
                more = "" if eof else stream.read(size)
                if not more:
                    raise ValueError(f"{path}: not a JSON list of records (a record is broken or unterminated)")
                pending, eof = pending[pos:] + more, False
                continue
            for record in records:
                if not isinstance(record, dict):
                    raise ValueError(f"{path}: not a JSON list of records (a list item is not an object)")
            yield from records
            pending, state = pending[pos + used:], "separator"


def _complete_records(text: str, decoder: json.JSONDecoder) -> tuple[list, int]:
    """The complete records at the start of ``text`` (a record starts it) and the end of the last one."""
    cut = text.rfind("}") + 1
    if cut:  # a cut inside a string or an inner object cannot parse: success means complete records
        try:
            return json.loads(f"[{text[:cut]}]"), cut
        except json.JSONDecodeError:
            pass
    records, pos, end = [], 0, 0
    while True:
        try:
            record, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return records, end  # the end of the last complete record (0: none)
        records.append(record)
        rest = _SPACE.match(text, end).end()
        if not text.startswith(",", rest):
            return records, end
        pos = _SPACE.match(text, rest + 1).end()


class KeySharer:
    """Rebuilds records with one key object per distinct key (``json.load`` shares a file's keys: ``pickle``
    writes a shared key once, so the payload's bytes depend on it). Key order and values are kept."""

    def __init__(self) -> None:
        self._keys: dict[str, str] = {}

    def __call__(self, value: Any) -> Any:
        if isinstance(value, dict):
            keys = self._keys
            return {keys.setdefault(k, k): self(v) if isinstance(v, (dict, list)) else v for k, v in value.items()}
        if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
            return [self(v) for v in value]
        return value


def _load_list(path: Path) -> list[dict]:
    try:
        with open(path, encoding="utf-8") as stream:
            records = json.load(stream)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) and "token" in r for r in records):
        raise ValueError(f"{path}: not a JSON list of records with a 'token'")
    return records


def _by_token(records: Sequence[dict]) -> dict[str, dict]:
    return {r["token"]: r for r in records}  # the last record of a token wins, as the devkit's index


class NuScenesIndex:
    """The records scene payloads read, with the devkit's ``get`` / table-list interface (module docstring).

    Attributes:
        dataroot: the dataroot as given (``builders.nuscenes`` passes an absolute path).
        version: the table folder name.
        channels: the sample_data channels whose records are kept.
        table_names: the devkit's table names, plus the label tasks present.
        scene, category, attribute, visibility, sensor, lidarseg, panoptic: those tables' records in order.
        lidarseg_idx2name_mapping: category ``index`` -> name (only where a label table exists, as the devkit).
    """

    def __init__(self, *, dataroot: str, version: str, channels: Sequence[str]) -> None:
        self.dataroot, self.version, self.channels = dataroot, version, tuple(channels)
        self.table_root = Path(dataroot) / version
        for name in DEVKIT_TABLES:
            if not (self.table_root / f"{name}.json").is_file():
                raise ValueError(f"{self.table_root / f'{name}.json'}: missing (a nuScenes table)")
        self.table_names = list(DEVKIT_TABLES)
        self._tables: dict[str, dict[str, dict]] = {}
        for name in ("category", "attribute", "visibility", "sensor", "calibrated_sensor", "instance", "scene",
                     "sample"):
            setattr(self, name, _load_list(self._path(name)))
            self._tables[name] = _by_token(getattr(self, name))
        self._label_tables()
        for sample in self.sample:
            sample["data"], sample["anns"] = {}, []
        self._read_sample_data()
        self._read_ego_pose()
        self._read_annotations()

    def _path(self, name: str) -> Path:
        return self.table_root / f"{name}.json"

    def _ref(self, table: str, token: str, source: str) -> dict:
        try:
            return self._tables[table][token]
        except KeyError:
            raise ValueError(f"{self._path(source)}: refers to {table} {token!r}, which is not in "
                             f"{self._path(table)}") from None

    def _label_tables(self) -> None:
        tasks = [t for t in LABEL_TASKS if self._path(t).is_file()]
        if tasks:
            self.lidarseg_idx2name_mapping: dict[int, str] = {}
            for category in self.category:
                if "index" not in category:
                    raise ValueError(f"{self._path('category')}: a category has no 'index' (use the category.json "
                                     "of nuScenes-lidarseg / panoptic)")
                self.lidarseg_idx2name_mapping[category["index"]] = category["name"]
        for task in tasks:
            records = _load_list(self._path(task))
            folder = Path(self.dataroot) / task / self.version
            try:
                files = sum(n.endswith((".bin", ".npz")) for n in os.listdir(folder))
            except OSError as exc:
                raise ValueError(f"{folder}: cannot list the {task} label files ({exc.strerror})") from None
            if files != len(records):
                raise ValueError(f"{folder}: {files} label files but {len(records)} records in {self._path(task)}")
            setattr(self, task, records)
            self._tables[task] = _by_token(records)
            self.table_names.append(task)

    def _read_sample_data(self) -> None:
        kept: dict[str, dict] = {}
        share = KeySharer()
        for record in iter_json_records(self._path("sample_data")):
            calibration = self._ref("calibrated_sensor", record["calibrated_sensor_token"], "sample_data")
            sensor = self._ref("sensor", calibration["sensor_token"], "calibrated_sensor")
            channel = sensor["channel"]
            if channel in self.channels:
                record = share(record)
                record["sensor_modality"] = sensor["modality"]
                record["channel"] = channel
                kept[record["token"]] = record
            if record["is_key_frame"]:
                self._ref("sample", record["sample_token"], "sample_data")["data"][channel] = record["token"]
        self._tables["sample_data"] = kept

    def _read_ego_pose(self) -> None:
        wanted = {r["ego_pose_token"] for r in self._tables["sample_data"].values()}
        share = KeySharer()
        self._tables["ego_pose"] = {r["token"]: share(r) for r in iter_json_records(self._path("ego_pose"))
                                    if r["token"] in wanted}
        missing = wanted - self._tables["ego_pose"].keys()
        if missing:
            raise ValueError(f"{self._path('sample_data')}: refers to ego_pose {sorted(missing)[0]!r}, which is not "
                             f"in {self._path('ego_pose')}")

    def _read_annotations(self) -> None:
        annotations: dict[str, dict] = {}
        share = KeySharer()
        for record in map(share, iter_json_records(self._path("sample_annotation"))):
            instance = self._ref("instance", record["instance_token"], "sample_annotation")
            record["category_name"] = self._ref("category", instance["category_token"], "instance")["name"]
            annotations[record["token"]] = record
            self._ref("sample", record["sample_token"], "sample_annotation")["anns"].append(record["token"])
        self._tables["sample_annotation"] = annotations

    def get(self, table_name: str, token: str) -> dict:
        """The record ``token`` of ``table_name`` (KeyError: unknown, or another channel's sample_data)."""
        if table_name not in self._tables:
            raise KeyError(f"{table_name}: not a table of this index ({sorted(self._tables)})")
        return self._tables[table_name][token]


def load_index(*, dataroot: str, version: str, channels: Sequence[str]) -> NuScenesIndex:
    """The tables of ``dataroot/version`` keeping the sample_data of ``channels`` (ValueError naming a bad file)."""
    if not (Path(dataroot) / version).is_dir():
        raise ValueError(f"{Path(dataroot) / version}: missing (not a nuScenes table folder)")
    collecting = gc.isenabled()
    gc.disable()  # millions of acyclic records: the cyclic collector's passes over them cost a third of the load
    try:
        return NuScenesIndex(dataroot=dataroot, version=version, channels=channels)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{Path(dataroot) / version}: a table record lacks a field the index reads ({exc})") from None
    finally:
        if collecting:
            gc.enable()
