"""Network half of the parity test: the original's networks, checkpoints in and out, ``predict``.

For every parity fixture whose depth network we have (``DYNAMO_PARITY_FIXTURES``, colon-separated, or
every ``../shared/reference/parity_*``): the weights are rebuilt from ``weights_spec.json`` by its rule,
written as an original checkpoint folder, loaded through our loader, and every network output of the
fixture is compared (train mode, batch statistics), then ``eval_disp`` through the ``predict`` CLI and the
folder written back by ``train.export``.
"""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dynamo_depth.models import DynamoDepthModel
from dynamo_depth.models.original import load_folder
from dynamo_depth.models.registry import DEPTH_NETWORKS

sys.path.insert(0, str(Path(__file__).parent))
from parity_fixture import ParityFixture, fixture_folders  # noqa: E402
from parity_weights import assert_same_module_files, generated_state_dicts  # noqa: E402

TOLERANCE = 1e-4
NETWORK_OF_MODEL = {"monodepthv2": "resnet18", "litemono": "litemono"}
DISP_HEAD_KEY = {"resnet18": "dispconv_0.conv.weight", "litemono": "decoder.6.conv.weight"}


FIXTURES = fixture_folders()


def _network(folder: Path) -> str:
    return NETWORK_OF_MODEL.get(json.loads((folder / "fixture.json").read_text())["model"], "?")


def _supported(folder: Path) -> Path:
    if _network(folder) not in DEPTH_NETWORKS:
        pytest.skip(f"{folder.name}: depth network {_network(folder)!r} not built here")
    return folder


@pytest.fixture(scope="module", params=FIXTURES or [None], ids=lambda p: p.name if p else "none")
def fixture(request) -> Path:
    if request.param is None:
        pytest.skip("no parity fixtures (../shared/reference/parity_* or $DYNAMO_PARITY_FIXTURES)")
    return _supported(request.param)


def write_generated_folder(folder: Path, out: Path) -> Path:
    """The fixture's generated weights as an original checkpoint folder, as ``Model.save`` writes it: the ints
    height / width appended to every ``*enc*`` module's state dict."""
    meta = json.loads((folder / "fixture.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    for name, state in generated_state_dicts(folder / "weights_spec.json").items():
        if "enc" in name:
            state = {**state, "height": int(meta["height"]), "width": int(meta["width"])}
        torch.save(state, out / f"{name}.pth")
    return out


def compare(ours: torch.Tensor, reference: ParityFixture, phase: str, key: str) -> float:
    """Largest |ours - stored| of outputs[key] of ``phase`` (at the sample indices when stored as samples)."""
    stored = reference.output(phase, key)
    mine = stored.view(ours.detach().double().numpy())
    assert mine.shape == stored.value.shape, f"{key}: shape {mine.shape} vs {stored.value.shape}"
    return float(np.abs(mine - stored.value).max())


@pytest.fixture(scope="module")
def loaded(fixture: Path, tmp_path_factory) -> tuple[Path, DynamoDepthModel, Path]:
    ckpt = write_generated_folder(fixture, tmp_path_factory.mktemp("ckpt"))
    model = DynamoDepthModel(depth_network=_network(fixture), scales=tuple(json.loads(
        (fixture / "fixture.json").read_text())["scales"]))
    load_folder(model, ckpt)
    return fixture, model, ckpt


def _inputs(folder: Path) -> dict[int, torch.Tensor]:
    data = np.load(folder / "inputs.npz")
    return {f: torch.from_numpy(data[f"color_aug|{f}|0"]) for f in (-1, 0, 1)}


@pytest.mark.parametrize("layout", ["channels_first", "channels_last"])
def test_network_outputs_equal_the_original(loaded, layout: str) -> None:
    """Both memory layouts the trainer uses (``train.channels_last``, ``DynamoDepthModel.use_channels_last``)."""
    folder, model, _ = loaded
    if layout == "channels_last":
        model = copy.deepcopy(model).use_channels_last()
        conv = model.pose_enc.encoder.conv1.weight
        assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    torch.manual_seed(0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    color = _inputs(folder)
    images = torch.stack([color[-1], color[0], color[1]], dim=1)
    out = model(images, phase="fine_tune")
    ref = ParityFixture(folder)
    worst: dict[str, float] = {}

    def check(family: str, tensor: torch.Tensor, key: str) -> None:
        worst[family] = max(worst.get(family, 0.0), compare(tensor, ref, "mask_init", key))

    for s in model.scales:
        check("disp", out.disp[s], f"disp|0|{s}")
        check("complete_flow", out.complete_flow[s], f"complete_flow|1|{s}")
        check("motion_prob", out.motion_logits[s], f"motion_prob|1|{s}")
        check("motion_mask", out.motion_mask(s), f"motion_mask|1|{s}")
    for f in (-1, 1):
        check("axisangle", out.axisangle[f], f"axisangle|0|{f}")
        check("translation", out.translation[f], f"translation|0|{f}")
        check("cam_T_cam", out.cam_T_cam[f], f"cam_T_cam|0|{f}")
        pose_in = torch.cat([color[f], color[0]], dim=1)
        for i, feature in enumerate([pose_in, *model.pose_enc(pose_in)]):
            check("pose_feats", feature, f"pose_feats|0|{f}|{i}")
        disp_f = model.predict_disparity(color[f])  # unused by the losses; the original computes it
        for s in model.scales:
            check("disp (frames -1, +1)", disp_f[s], f"disp|{f}|{s}")
    motion_in = torch.cat([color[-1], color[0], color[1]], dim=1)
    for i, feature in enumerate([motion_in, *model.motion_enc(motion_in)]):
        check("motion_feats", feature, f"motion_feats|0|1|{i}")
    print(f"\n{folder.name} networks ({layout}), largest |ours - original|: " + ", ".join(f"{k} {v:.2e}" for k, v in worst.items()))
    assert all(v <= TOLERANCE for v in worst.values()), worst
    model.load_state_dict(state)


def test_predict_cli_gives_eval_disp_and_export_round_trips(loaded, tmp_path: Path) -> None:
    from dynamo_depth.predict import main as predict_main
    from train.export import main as export_main

    folder, _, ckpt = loaded
    out = tmp_path / "pred"
    assert predict_main(["--checkpoint", str(ckpt), str(folder / "eval_images"), "--out", str(out), "--quiet"]) == 0
    expected = np.load(folder / "eval_disp.npz")["eval_disp"]
    got = np.load(out / "predictions.npz")
    stems = sorted(got.files, key=int)
    assert len(stems) == expected.shape[0]
    diff = max(float(np.abs(got[s] - expected[int(s), 0]).max()) for s in stems)
    print(f"\n{folder.name} eval_disp through predict: largest difference {diff:.2e}")
    assert diff <= TOLERANCE
    assert all((out / f"{s}_depth.png").is_file() for s in stems)

    exported = tmp_path / "exported"
    assert export_main([str(ckpt), str(exported)]) == 0
    assert_same_module_files(ckpt, exported)


def test_original_folder_errors_name_the_file(loaded, tmp_path: Path) -> None:
    from dynamo_depth.models.loading import load_for_inference
    from dynamo_depth.models.resnet import WeightLoadError

    folder, _, ckpt = loaded
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("depth_enc", "depth_dec"):
        (partial / f"{name}.pth").write_bytes((ckpt / f"{name}.pth").read_bytes())
    assert load_for_inference(partial).modules == ("depth_enc", "depth_dec")  # depth-only is enough
    with pytest.raises(WeightLoadError, match="pose_enc.pth"):
        load_for_inference(partial, need_motion=True)
    state = torch.load(ckpt / "depth_dec.pth", weights_only=True)
    key = DISP_HEAD_KEY[_network(folder)]  # the scale-0 disparity head of the decoder
    state[key] = state[key][:, :8]
    torch.save(state, partial / "depth_dec.pth")
    with pytest.raises(WeightLoadError, match=rf"depth_dec.pth.*{re.escape(key)}.*shape"):
        load_for_inference(partial)
    del state[key]
    torch.save(state, partial / "depth_dec.pth")
    with pytest.raises(WeightLoadError, match=rf"missing keys \['{re.escape(key)}'\]"):
        load_for_inference(partial)


def test_predict_motion_on_consecutive_frames(loaded, tmp_path: Path) -> None:
    """--motion writes the middle frames' motion probability and complete flow, equal to the model's own."""
    from PIL import Image

    from dynamo_depth.predict import main as predict_main

    folder, model, ckpt = loaded
    frames = tmp_path / "frames"
    frames.mkdir()
    pictures = [Image.open(folder / "eval_images" / f"{i % 2}.png").convert("RGB") for i in range(3)]
    for i, picture in enumerate(pictures):
        picture.save(frames / f"{i:04d}.png")
    out = tmp_path / "out"
    assert predict_main(["--checkpoint", str(ckpt), str(frames), "--out", str(out), "--motion", "--quiet"]) == 0
    motion = np.load(out / "motion.npz")
    assert sorted(motion.files) == ["0001/flow", "0001/mask"]
    x = torch.stack([torch.from_numpy(np.asarray(p, dtype=np.float32) / np.float32(255)).permute(2, 0, 1)
                     for p in pictures])[None]
    model.eval()
    with torch.no_grad():
        expected = model(x, phase="fine_tune")
    model.train()
    assert np.allclose(motion["0001/mask"], expected.motion_mask(0)[0, 0].numpy(), atol=1e-6)
    assert np.allclose(motion["0001/flow"], expected.complete_flow[0][0].numpy(), atol=1e-6)
