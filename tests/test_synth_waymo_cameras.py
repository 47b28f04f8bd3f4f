"""Synthetic Waymo ``camera_images``: every listed camera's JPEG at its calibrated size; default bytes unchanged."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from builders import waymo as wb
from builders.spec import SkippedFrame, Unit
from dynamo_depth.formats import waymo as wf
from dynamo_depth.formats.tfrecord import iter_records
from dynamo_depth.synth import waymo as sw

SMALL_ALL = sw.WaymoSynthOptions(top_width=400, short_range_hw=(60, 180), image_hw=(320, 480),
                                 camera_images=wf.CAMERA_NAMES)
SMALL_FRONT = sw.WaymoSynthOptions(top_width=400, short_range_hw=(60, 180), image_hw=(320, 480))


@pytest.fixture(scope="module")
def five_camera_segment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sw.write_waymo(tmp_path_factory.mktemp("waymo5"), frames=3, seed=2, options=SMALL_ALL)[0]


def test_every_camera_image_at_its_calibrated_size(five_camera_segment: Path) -> None:
    for _, frame in wf.iter_frames(five_camera_segment):
        images = wf.camera_images(frame)
        calibs = wf.camera_calibrations(frame)
        assert list(images) == list(wf.CAMERA_NAMES)
        sizes = {name: Image.open(io.BytesIO(images[name].jpeg)).size for name in images}
        # 1920x1280 and 1920x886 scaled by 480 / 1920 and 320 / 1280: 480x320 and 480x round(886 / 4) = 222
        assert sizes == {"FRONT": (480, 320), "FRONT_LEFT": (480, 320), "FRONT_RIGHT": (480, 320),
                         "SIDE_LEFT": (480, 222), "SIDE_RIGHT": (480, 222)}
        assert all(sizes[name] == (calibs[name].width, calibs[name].height) for name in images)


def test_front_bytes_equal_the_default_records(five_camera_segment: Path, tmp_path: Path) -> None:
    """FRONT's image, the lasers and labels are the FRONT-only record's; the other images are extra."""
    front_only = sw.write_waymo(tmp_path, frames=3, seed=2, options=SMALL_FRONT)[0]
    for (_, full), (_, front) in zip(wf.iter_frames(five_camera_segment), wf.iter_frames(front_only), strict=True):
        assert len(front.images) == 1 and len(full.images) == 5
        assert full.images[0].SerializeToString() == front.images[0].SerializeToString()
        del full.images[1:]
        assert full.SerializeToString(deterministic=True) == front.SerializeToString(deterministic=True)


def test_first_records_are_the_shorter_segment(five_camera_segment: Path, tmp_path: Path) -> None:
    """Frames are independent: the first 2 records of a 3-frame segment are the 2-frame segment (bench prefixes)."""
    two = sw.write_waymo(tmp_path, frames=2, seed=2, options=SMALL_ALL)[0]
    longer = [payload for _, payload in iter_records(five_camera_segment)]
    assert [payload for _, payload in iter_records(two)] == longer[:2]


def test_side_camera_builds_from_its_image(five_camera_segment: Path) -> None:
    root = five_camera_segment.parents[1]
    unit = Unit(name="x/SIDE_LEFT", params={"path": f"val/{five_camera_segment.name}", "sequence": "x",
                                             "camera": "SIDE_LEFT"})
    out = list(wb.build_unit(str(root), unit, {"split": "val"}))
    samples = [s for s in out if not isinstance(s, SkippedFrame)]
    assert len(samples) == 1 and samples[0].meta.original_size == (222, 480)
    assert samples[0].meta.frame_indices == (0, 1, 2)


def test_unknown_camera_is_refused() -> None:
    with pytest.raises(ValueError, match="camera_images must be a non-empty subset of"):
        sw.WaymoSynthOptions(camera_images=("REAR",))
