"""Folders written the way the original's ``networks/model.py: Model.save`` writes them load everywhere.

``Model.save`` stores each module's ``state_dict()`` with the ints ``height`` and ``width`` appended to every
module whose name contains ``enc`` (``depth_enc``, ``pose_enc``, ``motion_enc``). ``save_like_original`` below
does exactly that from the module state dicts (our modules carry the original's keys, order and dtypes:
``tests/test_parity_networks.py``). Such a folder loads through ``predict``, ``eval.depth --checkpoint`` and
``train/main.py --init-from``, and ``train.export`` writes it back key for key.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dynamo_depth.models import MODULE_NAMES, DynamoDepthModel
from dynamo_depth.models.loading import load_for_inference
from dynamo_depth.models.resnet import WeightLoadError
from tests.parity_weights import assert_same_module_files

HEIGHT, WIDTH = 64, 64


def save_like_original(model: DynamoDepthModel, folder: Path, *, height: int, width: int) -> Path:
    """What ``Model.save(folder)`` writes: ``<module>.pth`` = state dict (+ height, width for ``*enc*``)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in MODULE_NAMES:
        to_save = getattr(model, name).state_dict()
        if "enc" in name:
            to_save["height"] = height
            to_save["width"] = width
        torch.save(to_save, folder / f"{name}.pth")
    return folder


@pytest.fixture(scope="module")
def model() -> DynamoDepthModel:
    torch.manual_seed(5)
    net = DynamoDepthModel()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so the round trip checks them too
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
    return net.eval()


@pytest.fixture
def folder(model: DynamoDepthModel, tmp_path: Path) -> Path:
    return save_like_original(model, tmp_path / "released", height=HEIGHT, width=WIDTH)


def test_model_save_folder_holds_sizes_in_every_encoder_file(folder: Path) -> None:
    for name in MODULE_NAMES:
        state = torch.load(folder / f"{name}.pth", weights_only=True)
        has_sizes = list(state)[-2:] == ["height", "width"]
        assert has_sizes == ("enc" in name), name
        if has_sizes:
            assert (state["height"], state["width"]) == (HEIGHT, WIDTH)


def test_loads_for_inference_with_every_module(model: DynamoDepthModel, folder: Path) -> None:
    loaded = load_for_inference(folder, need_motion=True)
    assert (loaded.height, loaded.width, loaded.modules) == (HEIGHT, WIDTH, MODULE_NAMES)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key


def test_predict_reads_the_folder(model: DynamoDepthModel, folder: Path, tmp_path: Path) -> None:
    from dynamo_depth.predict import main as predict_main

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for stem in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)).save(images / f"{stem}.png")
    out = tmp_path / "pred"
    assert predict_main(["--checkpoint", str(folder), str(images), "--out", str(out), "--quiet"]) == 0
    got = np.load(out / "predictions.npz")
    for stem in ("a", "b"):
        rgb = np.asarray(Image.open(images / f"{stem}.png"), dtype=np.float32) / np.float32(255.0)
        with torch.no_grad():
            expected = model.predict_disparity(torch.from_numpy(rgb).permute(2, 0, 1)[None])[0][0, 0]
        assert np.allclose(got[stem], expected.numpy(), rtol=0, atol=1e-6), stem


def test_eval_depth_checkpoint_reads_the_folder(folder: Path, tmp_path: Path) -> None:
    from eval import depth as eval_depth
    from tests.test_eval_cli import _sample, _write_tar

    shards = tmp_path / "shards"
    shards.mkdir()
    _write_tar(shards / "waymo-val-000000.tar", [_sample(f) for f in (1, 2, 3)])
    assert eval_depth.main(["--data", str(shards), "--checkpoint", str(folder), "--out", str(tmp_path / "o")]) == 0


def test_train_init_from_reads_the_folder(model: DynamoDepthModel, folder: Path, tmp_path: Path) -> None:
    from builders.kitti import main as build_kitti
    from dynamo_depth.synth.kitti import write_kitti
    from train.checkpoint import load_checkpoint
    from train.main import main as train_main

    write_kitti(tmp_path / "raw", sequences=1, frames=4, seed=0)
    assert build_kitti([str(tmp_path / "raw"), str(tmp_path / "shards"), "--workers", "0", "--quiet"]) == 0
    demo = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    threads = torch.get_num_threads()
    try:
        status = train_main(["--config", str(demo), "--set", f"data.url={tmp_path / 'shards'}",
                             f"train.run_dir={tmp_path / 'run'}", f"data.height={HEIGHT}", f"data.width={WIDTH}",
                             "data.batch_size=2", "data.num_workers=0", "train.threads=1", "train.progress=false",
                             "train.checkpoint_every=0", "train.image_every=0",
                             "--init-from", str(folder), "--max-steps", "1"])
    finally:
        torch.set_num_threads(threads)
    assert status == 0
    saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.json")
    assert saved.step == 1 and saved.phase == "disp_init"
    # disp_init trains depth and pose only: the motion networks' parameters are still the folder's
    frozen = [k for k, _ in model.named_parameters() if k.startswith(("motion_enc.", "motion_dec.", "motion_mask."))]
    assert len(frozen) > 100
    for key in frozen:
        assert torch.equal(saved.model[key], model.state_dict()[key]), key
    moved = [k for k, _ in model.named_parameters() if k.startswith("depth_dec.")]
    assert any(not torch.equal(saved.model[k], model.state_dict()[k]) for k in moved)


def test_export_round_trip_keeps_keys_order_dtypes_and_values(folder: Path, tmp_path: Path) -> None:
    from train.export import main as export_main

    exported = tmp_path / "exported"
    assert export_main([str(folder), str(exported)]) == 0
    assert_same_module_files(folder, exported)


def test_sizes_in_any_encoder_file_and_disagreement_names_both(model: DynamoDepthModel, folder: Path,
                                                               tmp_path: Path, capsys) -> None:
    from dynamo_depth.predict import main as predict_main

    depth_only = tmp_path / "depth_only"
    depth_only.mkdir()
    state = torch.load(folder / "depth_enc.pth", weights_only=True)
    del state["height"], state["width"]
    torch.save(state, depth_only / "depth_enc.pth")
    (depth_only / "depth_dec.pth").write_bytes((folder / "depth_dec.pth").read_bytes())
    with pytest.raises(WeightLoadError, match=r"no encoder file \(depth_enc.pth\) holds"):
        load_for_inference(depth_only)
    (depth_only / "pose_enc.pth").write_bytes((folder / "pose_enc.pth").read_bytes())  # sizes there only
    loaded = load_for_inference(depth_only)
    assert (loaded.height, loaded.width, loaded.modules) == (HEIGHT, WIDTH, ("depth_enc", "depth_dec"))

    state = torch.load(folder / "motion_enc.pth", weights_only=True)
    state["width"] = 96
    torch.save(state, folder / "motion_enc.pth")
    with pytest.raises(WeightLoadError, match=r"depth_enc.pth stores height x width 64x64, motion_enc.pth stores 64x96"):
        load_for_inference(folder, need_motion=True)
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    assert predict_main(["--checkpoint", str(folder), str(image), "--out", str(tmp_path / "p"), "--quiet"]) == 2
    assert "motion_enc.pth stores 64x96" in capsys.readouterr().err
    state["width"] = 64.0
    torch.save(state, folder / "motion_enc.pth")
    with pytest.raises(WeightLoadError, match=r"motion_enc.pth: needs integer 'height' and 'width'"):
        load_for_inference(folder, need_motion=True)
