"""Networks: ResNet-18 layout and weights, output shapes, pose convention, per-phase gradients."""

from __future__ import annotations

import math

import pytest
import torch

from dynamo_depth.losses import compute_losses
from dynamo_depth.models import PHASES, DynamoDepthModel, phase_spec
from dynamo_depth.models.depth import depth_to_disp, disp_to_depth
from dynamo_depth.models.motion import MotionNetwork
from dynamo_depth.models.pose import PoseDecoder, PoseNetwork, predict_source_from_target
from dynamo_depth.models.registry import build_depth_network
from dynamo_depth.models.resnet import (
    ResNet18Encoder,
    WeightLoadError,
    count_parameters,
    load_torchvision_state_dict,
    load_torchvision_weights,
)
from dynamo_depth.warping import axis_angle_to_matrix, relative_pose, transform_points

torch.set_num_threads(2)


def _torchvision_resnet18_keys() -> list[str]:
    """The key list of torchvision's resnet18 state dict, written out from its layout (fc included)."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = ["conv1.weight", *(f"bn1.{p}" for p in bn)]
    for layer in range(1, 5):
        for block in range(2):
            prefix = f"layer{layer}.{block}"
            keys += [f"{prefix}.conv1.weight", *(f"{prefix}.bn1.{p}" for p in bn)]
            keys += [f"{prefix}.conv2.weight", *(f"{prefix}.bn2.{p}" for p in bn)]
            if layer > 1 and block == 0:
                keys += [f"{prefix}.downsample.0.weight", *(f"{prefix}.downsample.1.{p}" for p in bn)]
    return keys + ["fc.weight", "fc.bias"]


def _fake_torchvision_state(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    reference = ResNet18Encoder().state_dict()
    state = {k: torch.randn(v.shape, generator=generator) if v.is_floating_point() else v.clone()
             for k, v in reference.items()}
    state["fc.weight"] = torch.randn(1000, 512, generator=generator)
    state["fc.bias"] = torch.randn(1000, generator=generator)
    return state


def test_resnet18_parameter_count_matches_torchvision():
    encoder = ResNet18Encoder()
    assert count_parameters(encoder) == 11_176_512
    assert count_parameters(encoder) + 512 * 1000 + 1000 == 11_689_512  # torchvision's count with fc
    assert count_parameters(ResNet18Encoder(num_input_images=2)) == 11_176_512 + 64 * 3 * 7 * 7
    assert sorted(encoder.state_dict()) == sorted(k for k in _torchvision_resnet18_keys() if not k.startswith("fc."))


def test_pose_decoder_layout_parameter_count():
    squeeze, conv3x3, final = 512 * 256 + 256, 256 * 256 * 9 + 256, 256 * 6 + 6
    assert count_parameters(PoseDecoder()) == squeeze + 3 * conv3x3 + final == 1_903_110


def test_encoder_feature_shapes():
    features = ResNet18Encoder(num_input_images=3)(torch.rand(2, 9, 64, 192))
    assert [tuple(f.shape) for f in features] == [
        (2, 64, 32, 96), (2, 64, 16, 48), (2, 128, 8, 24), (2, 256, 4, 12), (2, 512, 2, 6)]
    with pytest.raises(ValueError, match="multiples of 32"):
        ResNet18Encoder()(torch.rand(1, 3, 60, 192))


def test_torchvision_state_dict_round_trip(tmp_path):
    state = _fake_torchvision_state(0)
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    encoder = ResNet18Encoder()
    load_torchvision_weights(encoder, path)
    loaded = encoder.state_dict()
    for key, value in loaded.items():
        assert torch.equal(value, state[key]), key
    pose_encoder = ResNet18Encoder(num_input_images=2)
    load_torchvision_weights(pose_encoder, path)
    conv1 = pose_encoder.conv1.weight.detach()
    assert conv1.shape == (64, 6, 7, 7)
    assert torch.allclose(conv1[:, :3], state["conv1.weight"] / 2) and torch.allclose(conv1[:, 3:], conv1[:, :3])
    assert torch.equal(pose_encoder.layer3[0].downsample[1].running_var, state["layer3.0.downsample.1.running_var"])
    # torchvision's original files lack num_batches_tracked: still loads
    old_style = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    load_torchvision_state_dict(ResNet18Encoder(), old_style)


def test_bad_state_dicts_name_the_keys(tmp_path):
    state = _fake_torchvision_state(1)
    del state["layer2.0.downsample.0.weight"]
    state["layer5.0.conv1.weight"] = torch.zeros(1)
    with pytest.raises(WeightLoadError, match=r"missing keys \['layer2.0.downsample.0.weight'\].*layer5"):
        load_torchvision_state_dict(ResNet18Encoder(), state)
    state = _fake_torchvision_state(1)
    state["bn1.weight"] = torch.zeros(32)
    with pytest.raises(WeightLoadError, match=r"'bn1.weight' has shape \(32,\)"):
        load_torchvision_state_dict(ResNet18Encoder(), state)
    with pytest.raises(WeightLoadError, match="not found"):
        load_torchvision_weights(ResNet18Encoder(), tmp_path / "absent.pth")


def test_disp_to_depth_hand_values():
    disp = torch.tensor([0.0, 1.0, 0.5])
    scaled, depth = disp_to_depth(disp, min_depth=0.1, max_depth=100.0)
    assert torch.allclose(scaled, torch.tensor([0.01, 10.0, 0.01 + 0.5 * 9.99]))
    assert torch.allclose(depth, torch.tensor([100.0, 0.1, 1.0 / 5.005]))
    assert torch.allclose(depth_to_disp(depth), disp, atol=1e-6)
    with pytest.raises(ValueError, match="min_depth"):
        disp_to_depth(disp, min_depth=5.0, max_depth=1.0)


def test_registry():
    assert build_depth_network("resnet18").decoder.scales == (0, 1, 2, 3)
    with pytest.raises(ValueError, match=r"unknown depth network 'litemono'; allowed: \['resnet18'\]"):
        build_depth_network("litemono")
    with pytest.raises(ValueError, match="unknown phase"):
        phase_spec("pretrain")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DynamoDepthModel()


def test_output_shapes_all_scales(model):
    images = torch.rand(2, 3, 3, 96, 320)
    with torch.no_grad():
        out = model(images, phase="fine_tune")
    for s in range(4):
        h, w = 96 // 2**s, 320 // 2**s
        assert out[f"disp_{s}"].shape == (2, 1, h, w)
        assert out[f"flow_{s}"].shape == (2, 3, h, w)
        assert out[f"mask_{s}"].shape == out[f"mask_logits_{s}"].shape == (2, 1, h, w)
        assert torch.allclose(out[f"mask_{s}"], torch.sigmoid(out[f"mask_logits_{s}"]))
        assert 0 < out[f"disp_{s}"].min() and out[f"disp_{s}"].max() < 1
    for name in ("prev", "next"):
        transform = out[f"source_from_target_{name}"]
        assert transform.shape == (2, 4, 4)
        rotation = transform[:, :3, :3]
        assert torch.allclose(rotation @ rotation.transpose(1, 2), torch.eye(3).expand(2, 3, 3), atol=1e-5)
        assert torch.equal(transform[:, 3], torch.tensor([0.0, 0, 0, 1]).expand(2, 4))
    with pytest.raises(ValueError, match=r"\(B, 3 frames, 3, H, W\)"):
        model(torch.rand(2, 3, 96, 320), phase="fine_tune")


def test_pose_convention_is_source_from_target(model):
    """Camera drives 1 m forward per frame: a point 5 m ahead of camera t is 6 m ahead of camera t-1
    and 4 m ahead of camera t+1. A pose net fixed to output later_from_earlier = translate (0, 0, -1)
    must give T_source_from_target equal to inverse(world_from_source) @ world_from_target."""
    pose = PoseNetwork()
    with torch.no_grad():
        pose.decoder.out.weight.zero_()
        pose.decoder.out.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, -100.0]))  # x0.01 -> -1 m
    out = predict_source_from_target(pose, torch.rand(1, 3, 3, 64, 64))
    point = torch.tensor([[[0.3], [0.2], [5.0]]])
    assert torch.allclose(transform_points(out["source_from_target_prev"], point), point + torch.tensor([[[0.0], [0], [1]]]))
    assert torch.allclose(transform_points(out["source_from_target_next"], point), point - torch.tensor([[[0.0], [0], [1]]]))
    world_from_camera = torch.eye(4).repeat(3, 1, 1)
    world_from_camera[:, 2, 3] = torch.tensor([-1.0, 0.0, 1.0])  # OpenCV z forward = driving direction
    for name, index in (("prev", 0), ("next", 2)):
        expected = relative_pose(world_from_source=world_from_camera[index], world_from_target=world_from_camera[1])
        assert torch.allclose(out[f"source_from_target_{name}"][0], expected, atol=1e-6)


def test_axis_angle_hand_values():
    quarter_turn_z = axis_angle_to_matrix(torch.tensor([[0.0, 0.0, math.pi / 2]]))[0]
    assert torch.allclose(quarter_turn_z, torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]), atol=1e-6)
    vector = torch.zeros(1, 3, requires_grad=True)
    axis_angle_to_matrix(vector).sum().backward()
    assert torch.isfinite(vector.grad).all()
    tiny = axis_angle_to_matrix(torch.tensor([[1e-6, 0.0, 0.0]]))[0]
    assert torch.allclose(tiny, torch.tensor([[1.0, 0, 0], [0, 1, -1e-6], [0, 1e-6, 1]]), atol=1e-9)


def test_motion_decoders_start_from_detached_ego_motion():
    torch.manual_seed(0)
    motion = MotionNetwork()
    with torch.no_grad():
        for decoder in (motion.flow_decoder, motion.mask_decoder):
            for head in decoder.heads.values():
                head.conv.weight.zero_()
                head.conv.bias.zero_()
    ego = torch.tensor([[0.01, 0.02, 0.03, 0.5, -0.25, 2.0]], requires_grad=True)
    features = motion.encode(torch.rand(1, 3, 3, 64, 64))
    flows, logits = motion.complete_flow(features, ego), motion.mask_logits(features, ego)
    for s in range(4):  # with zero residual heads the prediction is the ego translation everywhere
        assert torch.allclose(flows[s], torch.tensor([0.5, -0.25, 2.0])[None, :, None, None].expand_as(flows[s]))
        assert torch.equal(logits[s], torch.zeros_like(logits[s]))
    assert torch.autograd.grad(flows[0].sum(), ego, allow_unused=True)[0] is None


def _subnetwork_grads(model: DynamoDepthModel) -> dict[str, bool]:
    groups = {"depth": model.depth, "pose": model.pose, "flow": model.motion.flow_decoder,
              "mask": model.motion.mask_decoder, "motion_encoder": model.motion.encoder}
    return {name: any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
            for name, module in groups.items()}


@pytest.mark.parametrize("phase", list(PHASES))
def test_gradients_reach_exactly_the_trained_subnetworks(model, phase):
    torch.manual_seed(1)
    images = torch.rand(2, 3, 3, 64, 64)
    K = torch.tensor([[64.0, 0, 31.5], [0, 64.0, 31.5], [0, 0, 1]]).expand(2, 3, 3)
    model.zero_grad(set_to_none=True)
    model.train()
    outputs = model(images, phase=phase)
    losses = compute_losses({"images": images, "K": K}, outputs, phase=phase, phase_progress=0.5)
    losses["total"].backward()
    trained = phase_spec(phase).train
    expected = {name: name in trained for name in ("depth", "pose", "flow", "mask")}
    expected["motion_encoder"] = bool(trained & {"flow", "mask"})
    assert _subnetwork_grads(model) == expected
    assert model.training and model.depth.training  # frozen sub-networks are put back in train mode
    expected_params = sum(p.numel() for p in model.trainable_parameters(phase=phase))
    assert expected_params == sum(p.numel() for p in model.parameters() if p.grad is not None)
