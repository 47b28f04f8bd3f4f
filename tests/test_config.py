"""Config system: presets, unknown keys, dotted overrides, validation, save + reload."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from dynamo_depth.config import (
    ConfigError,
    RunConfig,
    config_differences,
    config_from_dict,
    dump_config,
    load_config,
    save_config,
)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


@pytest.mark.parametrize(("name", "height", "width"), [("kitti", 192, 640), ("waymo", 320, 480),
                                                        ("nuscenes", 288, 512), ("demo", 64, 192)])
def test_presets_load_with_the_paper_sizes(name: str, height: int, width: int) -> None:
    config = load_config(CONFIGS / f"{name}.yaml")
    assert (config.data.height, config.data.width) == (height, width)
    assert config.data.dataset == ("kitti" if name == "demo" else name)
    if name != "demo":
        assert config.optim.lr == 1e-4 and config.optim.decay_factor == 0.5 and config.optim.decay_every_epochs == 10
        assert config.schedule.iterations_per_epoch == 8000
        epochs = [config.phase(n).epochs for n in ("disp_init", "motion_init", "mask_init", "fine_tune")]
        assert epochs == [1, 1, 5, 20]
        assert config.schedule.fine_tune.lr_scale == 0.5 and config.schedule.mask_init.lr_scale == 1.0


def test_defaults_are_the_paper_schedule() -> None:
    config = load_config(None)
    assert config == RunConfig()
    assert config.schedule.mask_init.epochs == 5 and config.schedule.fine_tune.epochs == 20


def test_unknown_key_in_file_names_file_key_and_allowed(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  lr: 1.0e-4\n  learning_rate: 3\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message and "optim.learning_rate" in message and "'lr'" in message and "decay_factor" in message


def test_unknown_section_and_override_key() -> None:
    with pytest.raises(ConfigError, match=r"unknown key optimizer; allowed keys: \['data', 'model'"):
        load_config(CONFIGS / "kitti.yaml", overrides=["optimizer.lr=1"])
    with pytest.raises(ConfigError, match=r"unknown key schedule\.fine_tune\.epoch;.*'epochs'"):
        load_config(CONFIGS / "kitti.yaml", overrides=["schedule.fine_tune.epoch=3"])
    with pytest.raises(ConfigError, match="optim.lr is a value, not a section"):
        load_config(None, overrides=["optim.lr.x=1"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(None, overrides=["optim.lr"])


def test_dotted_overrides_set_typed_values() -> None:
    config = load_config(CONFIGS / "kitti.yaml", overrides=[
        "optim.lr=2e-4", "data.url=s3://bucket/shards/kitti", "schedule.fine_tune.epochs=2", "model.scales=[0, 1]",
        "data.augment=false", "data.cache_dir=/tmp/cache", "train.run_dir=123", "optim.grad_clip_norm=1",
    ])
    assert config.optim.lr == 2e-4 and isinstance(config.optim.lr, float)
    assert config.data.url == "s3://bucket/shards/kitti"
    assert config.schedule.fine_tune == dataclasses.replace(config.schedule.fine_tune, epochs=2, lr_scale=0.5)
    assert config.model.scales == (0, 1)
    assert config.data.augment is False and config.data.cache_dir == "/tmp/cache"
    assert config.train.run_dir == "123"  # string fields keep the text
    assert config.optim.grad_clip_norm == 1.0
    assert load_config(None, overrides=["data.cache_dir=null"]).data.cache_dir is None
    # later overrides win; the preset's other values stay
    twice = load_config(CONFIGS / "waymo.yaml", overrides=["optim.lr=1e-3", "optim.lr=5e-5"])
    assert twice.optim.lr == 5e-5 and twice.data.width == 480


@pytest.mark.parametrize(("override", "fragment"), [
    ("data.batch_size=two", "data.batch_size: expected an integer, got 'two'"),
    ("data.batch_size=2.5", "data.batch_size: expected an integer"),
    ("data.augment=1", "data.augment: expected true or false"),
    ("data.height=100", "data.height: 100 must be a positive multiple of 32"),
    ("data.dataset=cityscapes", "data.dataset: 'cityscapes' is not one of"),
    ("train.amp=fp8", "train.amp: 'fp8' is not one of"),
    ("optim.lr=-1", "optim: lr -1.0 must be > 0"),
    ("model.scales=[1, 0]", "model.scales"),
    ("schedule.iterations_per_epoch=0", "schedule.iterations_per_epoch: 0 must be >= 1"),
    ("optim=3", "optim: expected a mapping of OptimConfig fields"),
])
def test_bad_values_raise_config_errors_naming_the_key(override: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(CONFIGS / "kitti.yaml", overrides=[override])
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)


def test_resolved_config_saved_and_reloaded_equal(tmp_path: Path) -> None:
    config = load_config(CONFIGS / "nuscenes.yaml", overrides=["optim.lr=3e-5", "schedule.iterations_per_epoch=7",
                                                              "model.scales=[0, 1, 2]"])
    path = tmp_path / "run" / "config.yaml"
    save_config(config, path)
    assert not path.with_name("config.yaml.tmp").exists()
    reloaded = load_config(path)
    assert reloaded == config
    assert path.read_text(encoding="utf-8") == dump_config(config)
    # canonical: keys sorted, same bytes on a second save
    save_config(reloaded, tmp_path / "again.yaml")
    assert (tmp_path / "again.yaml").read_bytes() == path.read_bytes()
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if not line.startswith(" ")]
    assert lines == ["data:", "loss:", "model:", "optim:", "schedule:", "train:"]


def test_differences_and_dict_errors() -> None:
    a = load_config(CONFIGS / "kitti.yaml")
    b = load_config(CONFIGS / "kitti.yaml", overrides=["optim.lr=2e-4", "data.url=x"])
    assert config_differences(a, b) == ["data.url", "optim.lr"]
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        config_from_dict([1, 2], source="x.yaml")  # type: ignore[arg-type]


def test_unreadable_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(scalar)


@pytest.mark.parametrize("text", ["inf", "nan", "-inf"])
def test_non_finite_numbers_are_rejected(text: str) -> None:
    with pytest.raises(ConfigError, match=r"optim.lr.*a finite number"):
        load_config(CONFIGS / "kitti.yaml", overrides=[f"optim.lr={text}"])
