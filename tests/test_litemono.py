"""Lite-Mono (lite-mono-8m) depth network: size, shapes, stochastic depth, ImageNet loading."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from dynamo_depth.models import DynamoDepthModel
from dynamo_depth.models.litemono import LiteMonoEncoder, build_litemono_depth, drop_path_rates
from dynamo_depth.models.litemono_blocks import (
    KEEP_HIDDEN_MIN_CHANNELS,
    DilatedConvBlock,
    DropPath,
    LGFIBlock,
    drop_path,
)
from dynamo_depth.models.pretrained import load_imagenet_encoder, load_imagenet_weights
from dynamo_depth.models.registry import DEPTH_NETWORKS, build_depth_network
from dynamo_depth.models.resnet import ResnetEncoder, WeightLoadError

SPEC = Path(__file__).resolve().parents[2] / "shared" / "reference" / "parity_litemono" / "weights_spec.json"
PAPER_PARAMS_M = 8.7  # Zhang et al., CVPR 2023, Table: Lite-Mono-8M


@pytest.fixture(scope="module")
def network() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    return build_litemono_depth(drop_path_rate=0.0)


def test_registered_with_the_original_defaults() -> None:
    assert "litemono" in DEPTH_NETWORKS
    encoder, decoder = build_depth_network("litemono", scales=(0, 1, 2), drop_path_rate=0.0)
    assert encoder.num_ch_enc == (64, 128, 224) and decoder.scales == (0, 1, 2)
    with pytest.raises(ValueError, match=r"subset of \(0, 1, 2\)"):
        build_litemono_depth(scales=(0, 1, 2, 3))
    with pytest.raises(ValueError, match=r">= 0 and < 1"):
        build_litemono_depth(drop_path_rate=1.0)


def test_parameter_count_is_the_papers_and_the_fixtures(network) -> None:
    encoder, decoder = network
    params = sum(p.numel() for m in network for p in m.parameters())
    assert params == 8_775_851
    assert abs(params / 1e6 - PAPER_PARAMS_M) < 0.1
    if not SPEC.is_file():
        pytest.skip(f"no fixture spec at {SPEC}")
    spec = {m["name"]: m["keys"] for m in json.loads(SPEC.read_text())["modules"]}
    for name, module in (("depth_enc", encoder), ("depth_dec", decoder)):
        assert [(k, tuple(v.shape)) for k, v in module.state_dict().items()] == [
            (e["key"], tuple(e["shape"])) for e in spec[name]]
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    spec_params = sum(torch.Size(e["shape"]).numel() for name in ("depth_enc", "depth_dec")
                      for e in spec[name] if not e["key"].endswith(buffers))
    assert spec_params == params


def test_feature_and_disparity_shapes(network) -> None:
    encoder, decoder = network
    encoder.eval(), decoder.eval()
    with torch.no_grad():
        features = encoder(torch.rand(2, 3, 64, 96))
        disps = decoder(features)
    assert [tuple(f.shape) for f in features] == [(2, 64, 16, 24), (2, 128, 8, 12), (2, 224, 4, 6)]
    assert {s: tuple(d.shape) for s, d in disps.items()} == {0: (2, 1, 64, 96), 1: (2, 1, 32, 48),
                                                             2: (2, 1, 16, 24)}
    assert all(((d > 0) & (d < 1)).all() for d in disps.values())
    with pytest.raises(ValueError, match="multiples of 16"):
        encoder(torch.rand(1, 3, 40, 64))


def test_drop_path_rates_rise_linearly_over_the_18_blocks() -> None:
    rates = drop_path_rates(0.4)
    assert len(rates) == 18 and rates[0] == 0.0 and rates[-1] == pytest.approx(0.4)
    assert all(b - a == pytest.approx(0.4 / 17) for a, b in zip(rates, rates[1:], strict=False))
    modules = [m.drop_prob for m in LiteMonoEncoder(drop_path_rate=0.4).modules() if isinstance(m, DropPath)]
    assert modules == pytest.approx(rates) and sum(p > 0 for p in modules) == 17


def test_drop_path_drops_whole_samples_and_rescales() -> None:
    torch.manual_seed(1)
    out = drop_path(torch.ones(4000, 3, 2), p=0.25, training=True)
    per_sample = out.reshape(4000, -1)
    assert ((per_sample == 0).all(1) | (per_sample == 4 / 3).all(1)).all()
    assert abs(float(out.mean()) - 1.0) < 0.05
    x = torch.randn(5, 3)
    assert drop_path(x, p=0.25, training=False) is x and drop_path(x, p=0.0, training=True) is x


def _twice(encoder: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return encoder(x)[-1], encoder(x)[-1]


@pytest.mark.parametrize("dim", [16, KEEP_HIDDEN_MIN_CHANNELS])  # h recomputed / kept for the backward
@pytest.mark.parametrize("block", ["dilated", "lgfi"])
def test_chunked_mlp_gives_autograd_outputs_and_gradients(block: str, dim: int) -> None:
    """The MLP that runs in chunks of pixels (``_ChunkedMLP``) against plain autograd of
    pwconv2(gelu(pwconv1)): outputs and the input gradient bit for bit, the weight gradients (summed chunk by
    chunk) to 1e-6 of their largest entry; 2 x 32 x 40 = 2560 pixels: 3 chunks."""
    torch.manual_seed(0)
    module = DilatedConvBlock(dim=dim, dilation=2) if block == "dilated" else LGFIBlock(dim=dim, heads=4)
    with torch.no_grad():
        module.gamma.normal_()  # layer scale 1e-6 would make the MLP's gradients vanish
    x = torch.randn(2, dim, 32, 40)
    upstream = torch.randn(2, dim, 32, 40)
    plain_mlp = module._mlp

    def run(recomputed: bool) -> tuple[torch.Tensor, ...]:
        module.zero_grad(set_to_none=True)
        module._mlp = plain_mlp if recomputed else (  # type: ignore[method-assign]
            lambda t: module.gamma * module.pwconv2(module.act(module.pwconv1(t))))
        given = x.clone().requires_grad_()
        out = module(given)
        out.backward(upstream)
        names = ("pwconv1.weight", "pwconv1.bias", "pwconv2.weight", "pwconv2.bias", "gamma")
        params = dict(module.named_parameters())
        return (out.detach(), given.grad, *(params[n].grad for n in names))

    fast, plain = run(True), run(False)
    with torch.no_grad():
        chunked_without_grad = module(x)
    del module._mlp
    assert torch.equal(fast[0], plain[0]) and torch.equal(chunked_without_grad, plain[0])
    for ours, theirs in zip(fast[1:], plain[1:], strict=True):
        assert theirs is not None and float((ours - theirs).abs().max()) <= 1e-6 * float(theirs.abs().max())


@pytest.mark.parametrize("block", ["dilated", "lgfi"])
@pytest.mark.parametrize(("seed", "dropped"), [(1, 0), (3, 1), (4, 2), (0, 3), (55, 4)])
def test_dropped_samples_skip_the_branch_with_the_original_outputs_and_gradients(block: str, seed: int,
                                                                                dropped: int) -> None:
    """``residual_with_drop_path`` against x + drop_path(branch) over every sample (the original's order:
    branch first, then the draw): outputs, every gradient and the RNG state after, float64, rate 0.5 on a
    batch of 4: the seeds drop 0, 1, 2, 3 and all 4 samples."""
    torch.manual_seed(100 + seed)
    module = (DilatedConvBlock(dim=16, dilation=2, drop_path_rate=0.5) if block == "dilated"
              else LGFIBlock(dim=16, heads=4, positional=True, drop_path_rate=0.5)).double().train()
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith("gamma"):
                p.normal_()  # layer scale 1e-6 would hide the branch
    x, upstream = torch.randn(4, 16, 8, 12, dtype=torch.float64), torch.randn(4, 16, 8, 12, dtype=torch.float64)
    if block == "dilated":
        def everything(t: torch.Tensor) -> torch.Tensor:
            return t + module.drop_path(module._pixel_mlp(module.bn1(module.ddwconv(t))))
    else:
        def everything(t: torch.Tensor) -> torch.Tensor:
            return t + module.drop_path(module._branch(t))

    def run(forward: Callable[[torch.Tensor], torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor, int]:
        module.zero_grad(set_to_none=True)
        torch.manual_seed(seed)
        given = x.clone().requires_grad_()
        out = forward(given)
        rng_after = torch.get_rng_state()
        out.backward(upstream)
        # every parameter the original's order gives a gradient (zeros when all samples drop) gets one here
        grads = [given.grad] + [p.grad if p.grad is not None else p.new_full(p.shape, torch.nan) for p in module.parameters()]
        unchanged = int(((out - given).detach().flatten(1) == 0).all(1).sum())
        return [out.detach(), *grads], rng_after, unchanged

    (ours, rng_ours, unchanged), (theirs, rng_theirs, _) = run(module), run(everything)
    assert torch.equal(rng_ours, rng_theirs) and unchanged == dropped
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a.isnan(), b.isnan())  # the same parameters without a gradient (the unused norm)
        a, b = a.nan_to_num(), b.nan_to_num()
        assert float((a - b).abs().max()) <= 1e-12 * max(float(b.abs().max()), 1.0)  # BLAS blocking of fewer rows


@pytest.mark.parametrize("block", ["dilated", "lgfi"])
def test_dropped_samples_skip_the_branch_under_bf16_autocast(block: str) -> None:
    """Under bf16 autocast (``train.amp=bf16``) the block input may be bf16 while gamma * MLP is fp32: the mask
    is drawn in fp32 as the original draws it from the branch output (same RNG state after), the result is
    fp32 as the original's sum, dropped samples are exactly the input, kept ones agree to bf16 rounding."""
    torch.manual_seed(0)
    module = (DilatedConvBlock(dim=16, dilation=1, drop_path_rate=0.5) if block == "dilated"
              else LGFIBlock(dim=16, heads=4, drop_path_rate=0.5)).train()
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith("gamma"):
                p.normal_()
    x = torch.randn(4, 16, 8, 12).bfloat16()
    branch = module._pixel_mlp if block == "dilated" else module._branch
    branch_input = (lambda t: module.bn1(module.ddwconv(t))) if block == "dilated" else (lambda t: t)

    def run(forward: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(3)  # drops 1 of 4 (the float64 test's seeds)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return forward(x), torch.get_rng_state()

    (ours, rng_ours), (theirs, rng_theirs) = run(module), run(lambda t: t + module.drop_path(branch(branch_input(t))))
    assert ours.dtype == theirs.dtype == torch.float32 and torch.equal(rng_ours, rng_theirs)
    unchanged = (ours == x.float()).flatten(1).all(1)
    assert int(unchanged.sum()) == 1 and torch.equal(ours[unchanged], theirs[unchanged])
    assert torch.allclose(ours, theirs, rtol=2e-2, atol=2e-2)


def test_stochastic_depth_only_in_train_mode_above_zero() -> None:
    x = torch.rand(4, 3, 32, 32)
    torch.manual_seed(0)
    deterministic = LiteMonoEncoder(drop_path_rate=0.0).train()
    a, b = _twice(deterministic, x)
    assert torch.equal(a, b)
    torch.manual_seed(0)
    stochastic = LiteMonoEncoder(drop_path_rate=0.4)
    with torch.no_grad():  # layer scale 1e-6 would hide the drops: make the residual branches count
        for name, p in stochastic.named_parameters():
            if name.endswith("gamma"):
                p.fill_(1.0)
    stochastic.eval()
    a, b = _twice(stochastic, x)
    assert torch.equal(a, b)
    stochastic.train()
    a, b = _twice(stochastic, x)
    assert not torch.equal(a, b)
    torch.manual_seed(5)
    c = _twice(stochastic, x)[0]
    torch.manual_seed(5)
    assert torch.equal(c, _twice(stochastic, x)[0])  # torch's global RNG: capture / restore replays it


# ----------------------------------------------------------------------------- ImageNet initialisation
@pytest.fixture(scope="module")
def model() -> DynamoDepthModel:
    return DynamoDepthModel(depth_network="litemono", scales=(0, 1, 2))


def _imagenet_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(7)
    state = {k: v.clone() for k, v in LiteMonoEncoder().state_dict().items() if not k.endswith("num_batches_tracked")}
    for value in state.values():
        value.add_(torch.randn_like(value.float()).to(value.dtype))
    head = {"norm.weight": torch.ones(224), "norm.bias": torch.zeros(224), "head.weight": torch.randn(1000, 224),
            "head.bias": torch.zeros(1000)}
    return {**state, **head}


def _save(state: dict[str, torch.Tensor], path: Path) -> Path:
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 299}, path)
    return path


def test_litemono_imagenet_file_loads_into_the_depth_encoder(model, tmp_path: Path) -> None:
    state = _imagenet_state()
    pose_before = model.pose_enc.encoder.conv1.weight.clone()
    load_imagenet_encoder(model, _save(state, tmp_path / "lite-mono-8m.pth"))
    own = model.depth_enc.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items() if k in own)
    assert torch.equal(model.pose_enc.encoder.conv1.weight, pose_before)  # pose / motion need resnet=


def test_litemono_imagenet_file_refusals_name_file_and_keys(model, tmp_path: Path) -> None:
    state = _imagenet_state()
    bad = dict(state)
    bad["stages.1.3.xca.qkv.weight"] = bad["stages.1.3.xca.qkv.weight"][:, :64]
    path = _save(bad, tmp_path / "shape.pth")
    with pytest.raises(WeightLoadError, match=r"shape\.pth: key 'stages\.1\.3\.xca\.qkv\.weight' has shape"):
        load_imagenet_encoder(model, path)
    odd = {k: v for k, v in state.items() if k != "stem2.0.conv.weight"}
    odd["stages.0.3.extra.weight"] = torch.zeros(3)
    path = _save(odd, tmp_path / "keys.pth")
    with pytest.raises(WeightLoadError, match=r"keys\.pth.*missing keys \['stem2\.0\.conv\.weight'\]; "
                                              r"unexpected keys \['stages\.0\.3\.extra\.weight'\]"):
        load_imagenet_encoder(model, path)


def test_resnet_file_initialises_pose_and_motion_encoders(model, tmp_path: Path) -> None:
    torch.manual_seed(3)
    torchvision_like = ResnetEncoder().encoder.state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision_like, path)
    assert load_imagenet_weights(model, resnet=path) == ["pose_enc", "motion_enc"]
    conv1 = torchvision_like["conv1.weight"]
    assert torch.equal(model.pose_enc.encoder.conv1.weight, torch.cat([conv1] * 2, 1) / 2)
    assert torch.equal(model.motion_enc.encoder.conv1.weight, torch.cat([conv1] * 3, 1) / 3)
    assert torch.equal(model.motion_enc.encoder.layer4[1].conv2.weight, torchvision_like["layer4.1.conv2.weight"])


def test_resnet18_init_weights_fills_all_three_encoders(tmp_path: Path) -> None:
    resnet_model = DynamoDepthModel(depth_network="resnet18")
    torch.manual_seed(4)
    torchvision_like = ResnetEncoder().encoder.state_dict()
    torch.save(torchvision_like, tmp_path / "resnet18.pth")
    load_imagenet_encoder(resnet_model, tmp_path / "resnet18.pth")
    conv1 = torchvision_like["conv1.weight"]
    assert torch.equal(resnet_model.depth_enc.encoder.conv1.weight, conv1)
    assert torch.equal(resnet_model.pose_enc.encoder.conv1.weight, torch.cat([conv1] * 2, 1) / 2)
    assert torch.equal(resnet_model.motion_enc.encoder.conv1.weight, torch.cat([conv1] * 3, 1) / 3)
    with pytest.raises(WeightLoadError, match="absent.pth: not found"):
        load_imagenet_encoder(resnet_model, tmp_path / "absent.pth")
