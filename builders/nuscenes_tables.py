"""One nuScenes scene's own table records: what the driver hands a scene task instead of the full tables.

The driver reads the tables once (``builders.nuscenes.load_tables``: ``builders.nuscenes_index``, which keeps
the built channels' records only; the devkit ``NuScenes`` gives the same payloads); right before a scene's task
is submitted, ``scene_payload`` copies out the records that scene's build reads, and the task rebuilds a
``SceneTables`` from them. ``SceneTables`` answers the part of the devkit ``NuScenes`` interface the scene
build uses (``get(table, token)``, ``dataroot``, ``panoptic``, ``lidarseg_idx2name_mapping``), so the
build code is the same whether it runs on the devkit object or on a payload, and writes the same bytes.

What a payload holds (records as the devkit holds them, reverse-index fields included: ``sample["data"]``,
``sample["anns"]``, ``sample_data["channel"]``, ``sample_annotation["category_name"]``...):

- ``scene``: the scene; ``sample``: its samples (the ``next`` chain from ``first_sample_token``, plus any
  sample a gathered sample_data points to);
- ``sample_data``: the ``next`` chains of the given channels from the first sample, plus every sample's
  keyframe record of those channels; ``ego_pose`` and ``calibrated_sensor`` of those;
- ``sample_annotation``: the annotations of its samples; ``instance``: theirs;
- ``panoptic`` / ``lidarseg``: the label-file records of its gathered sweeps (versions that have them);
- the small fixed tables ``category``, ``attribute``, ``visibility``, ``sensor`` (tens of records,
  whatever the number of scenes) and the devkit's category index -> name mapping.

Its size depends on the scene only, never on the number of other scenes in the tables.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["FIXED_TABLES", "LABEL_TABLES", "SceneTables", "scene_payload"]

FIXED_TABLES = ("attribute", "category", "sensor", "visibility")
LABEL_TABLES = ("lidarseg", "panoptic")


@dataclass(frozen=True)
class SceneTables:
    """The records of one scene, with the devkit's lookup interface (see the module docstring).

    Attributes:
        dataroot: the nuScenes dataroot the records' ``filename`` fields are relative to.
        records: table name -> token -> record.
        lidarseg_idx2name_mapping: category ``index`` -> category name (the devkit's mapping; empty for
            versions without lidarseg / panoptic labels).
    """

    dataroot: str
    records: Mapping[str, Mapping[str, dict]]
    lidarseg_idx2name_mapping: Mapping[int, str]

    def get(self, table_name: str, token: str) -> dict:
        """The record ``token`` of ``table_name``; ``KeyError`` when the scene has none (as the devkit)."""
        try:
            return self.records[table_name][token]
        except KeyError:
            raise KeyError(f"{table_name} {token!r}: not among this scene's records") from None

    @property
    def panoptic(self) -> tuple[dict, ...]:
        """The scene's nuScenes-panoptic records (empty: no labels for this scene or this version)."""
        return tuple(self.records.get("panoptic", {}).values())

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> SceneTables:
        """Rebuild from ``scene_payload``'s JSON-able dict."""
        records = {table: {r["token"]: r for r in rows} for table, rows in payload["records"].items()}
        mapping = {int(index): str(name) for index, name in payload["lidarseg_idx2name"]}
        return cls(dataroot=str(payload["dataroot"]), records=records, lidarseg_idx2name_mapping=mapping)


def _walk(nusc: Any, table: str, token: str) -> list[dict]:
    """The records of ``table`` from ``token`` along their ``next`` links."""
    records = []
    while token:
        records.append(nusc.get(table, token))
        token = records[-1]["next"]
    return records


def _by_token(records: Iterable[dict]) -> dict[str, dict]:
    return {r["token"]: r for r in records}


def _referenced(nusc: Any, table: str, tokens: Iterable[str]) -> dict[str, dict]:
    return {token: nusc.get(table, token) for token in dict.fromkeys(tokens)}


def _sample_data(nusc: Any, samples: Mapping[str, dict], first: Mapping[str, Any],
                 channels: Sequence[str]) -> dict[str, dict]:
    data: dict[str, dict] = {}
    for channel in channels:
        if channel in first["data"]:
            data.update(_by_token(_walk(nusc, "sample_data", first["data"][channel])))
        for sample in samples.values():
            if channel in sample["data"]:
                token = sample["data"][channel]
                data.setdefault(token, nusc.get("sample_data", token))
    return data


def _label_records(nusc: Any, sweeps: Iterable[str]) -> dict[str, list[dict]]:
    """The panoptic / lidarseg records of ``sweeps`` (a label record's token is its sweep's token); both tables
    where a version has both (before, ``sweeps`` was a generator spent on lidarseg, and panoptic got none)."""
    sweeps = list(sweeps)
    out: dict[str, list[dict]] = {}
    for table in LABEL_TABLES:
        if table not in getattr(nusc, "table_names", ()):
            continue
        out[table] = [record for record in (_record_or_none(nusc, table, token) for token in sweeps) if record]
    return out


def _record_or_none(nusc: Any, table: str, token: str) -> dict | None:
    try:
        return nusc.get(table, token)
    except KeyError:
        return None


def scene_payload(nusc: Any, scene_token: str, *, channels: Sequence[str]) -> dict[str, Any]:
    """The JSON-able records one scene's build reads (``SceneTables.from_payload`` rebuilds them).

    ``nusc`` is the devkit ``NuScenes``, a ``builders.nuscenes_index.NuScenesIndex`` (the same payload, pickle
    byte for byte) or a ``SceneTables``; ``channels`` the sample_data channels the
    build reads (``CAM_FRONT``, ``LIDAR_TOP``).
    """
    scene = nusc.get("scene", scene_token)
    samples = _by_token(_walk(nusc, "sample", scene["first_sample_token"]))
    data = _sample_data(nusc, samples, samples[scene["first_sample_token"]], channels)
    samples.update(_referenced(nusc, "sample", (sd["sample_token"] for sd in data.values()
                                                if sd["sample_token"] not in samples)))
    annotations = _referenced(nusc, "sample_annotation", (a for s in samples.values() for a in s["anns"]))
    records: dict[str, list[dict]] = {
        "scene": [scene],
        "sample": list(samples.values()),
        "sample_data": list(data.values()),
        "ego_pose": list(_referenced(nusc, "ego_pose", (sd["ego_pose_token"] for sd in data.values())).values()),
        "calibrated_sensor": list(_referenced(nusc, "calibrated_sensor",
                                              (sd["calibrated_sensor_token"] for sd in data.values())).values()),
        "sample_annotation": list(annotations.values()),
        "instance": list(_referenced(nusc, "instance", (a["instance_token"] for a in annotations.values())).values()),
        **{table: list(getattr(nusc, table)) for table in FIXED_TABLES},
        **_label_records(nusc, (sd["token"] for sd in data.values())),
    }
    mapping = getattr(nusc, "lidarseg_idx2name_mapping", {})
    return {"dataroot": str(nusc.dataroot), "records": records,
            "lidarseg_idx2name": [[int(index), str(name)] for index, name in sorted(mapping.items())]}
