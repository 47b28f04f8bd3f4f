"""Building blocks of the Lite-Mono encoder (Zhang et al., CVPR 2023), original state-dict names.

- ``ConvBN``: conv (no bias) optionally followed by ``bn_gelu`` = BatchNorm + exact GELU; keys
  ``conv.weight`` [, ``bn_gelu.bn.*``].
- ``DilatedConvBlock`` (the paper's consecutive dilated convolutions, CDC): depthwise 3x3 conv with
  dilation d -> BatchNorm -> channels-last Linear(C, 6C) -> GELU -> Linear(6C, C) -> * ``gamma`` ->
  stochastic depth -> + input. Its LayerNorm ``norm`` is kept for the state dict and never applied.
- ``LGFIBlock`` (local-global features interaction): tokens (B, HW, C) [+ Fourier positional encoding]
  -> t + gamma_xca * XCA(LayerNorm(t)) -> LayerNorm -> Linear(C, 6C) -> GELU -> Linear -> * ``gamma``
  -> stochastic depth -> + the block INPUT (the XCA branch reaches the output only through the MLP).
- ``XCA``: cross-covariance attention (Ali et al., XCiT 2021) over channels, per head.
- ``drop_path``: per-sample stochastic depth with keep-probability scaling, torch's global RNG.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

EXPANSION = 6
LAYER_SCALE_INIT = 1e-6
LN_EPS = 1e-6
POS_HIDDEN = 32
POS_TEMPERATURE = 10000.0


def drop_path_factors(x: torch.Tensor, *, p: float, training: bool,
                      dtype: torch.dtype | None = None) -> torch.Tensor | None:
    """The factors (B, 1, ..., 1) ``drop_path`` multiplies x (B, ...) by: 0 for a dropped sample, 1 / (1 - p) for a
    kept one; None when ``drop_path`` is the identity (p == 0 or not training).

    The mask is drawn with ``bernoulli_`` from torch's global generator of x's device (one draw per call,
    the same whichever of the two functions makes it), so RNG capture/restore reproduces it. ``dtype``: the
    mask's (default x's).
    """
    if p == 0.0 or not training:
        return None
    keep = 1.0 - p
    return x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=dtype).bernoulli_(keep).div_(keep)


def drop_path(x: torch.Tensor, *, p: float, training: bool) -> torch.Tensor:
    """Zero whole samples of x (B, ...) with probability p and scale the kept ones by 1 / (1 - p).

    Identity when p == 0 or not training (``drop_path_factors``).
    """
    factors = drop_path_factors(x, p=p, training=training)
    return x if factors is None else x * factors


def residual_with_drop_path(x: torch.Tensor, branch_input: torch.Tensor,
                            branch: Callable[[torch.Tensor], torch.Tensor], *, p: float, training: bool,
                            dtype: torch.dtype) -> torch.Tensor:
    """x + drop_path(branch(branch_input)), the branch evaluated only on the samples the draw keeps.

    ``branch`` maps samples (b, ...) of ``branch_input`` to (b, ...) like x, each sample on its own (no
    batch statistics inside); it must draw no random numbers, so drawing the mask before it runs leaves
    torch's RNG sequence the original's. A dropped sample's branch would be multiplied by 0, so it is not
    computed on CPU (issue #18: 18 % of Lite-Mono's MLP work on average at rate 0.4). Deliberate difference: a
    NaN or infinite branch output of a dropped sample makes the original's output NaN; here the sample
    is x. Kept samples get the same float operations (x + branch * factor; a BLAS may block a product
    over fewer samples differently: rounding, tests/test_litemono.py). ``dtype``: the branch output's, known
    before it runs (the original draws the mask in it; fp32 under bf16 autocast, where the branch ends with
    an fp32 layer scale); the result has x's and its promoted dtype, as the original's sum.
    """
    factors = drop_path_factors(x, p=p, training=training, dtype=dtype)
    if factors is None:
        return x + branch(branch_input)
    # off CPU, finding the kept samples would synchronise the device in every block: all samples run there
    kept = factors.flatten().nonzero().flatten() if x.device.type == "cpu" else None
    if kept is None or len(kept) == x.shape[0]:
        return x + branch(branch_input) * factors
    out = x.to(torch.promote_types(x.dtype, dtype))  # exact; x itself when the dtype is already that
    # with every sample dropped the branch still runs on an empty batch: its parameters get the original's
    # zero gradients (Adam still steps them; DDP needs every parameter's gradient)
    return out.index_put((kept,), branch(branch_input[kept]) * factors[kept], accumulate=True)


class DropPath(nn.Module):
    """``drop_path`` as a module with rate ``drop_prob`` (no state-dict entries)."""

    def __init__(self, *, drop_prob: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob}")
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, p=self.drop_prob, training=self.training)

    def residual(self, x: torch.Tensor, branch_input: torch.Tensor,
                 branch: Callable[[torch.Tensor], torch.Tensor], *, dtype: torch.dtype) -> torch.Tensor:
        """``residual_with_drop_path`` at this module's rate and mode."""
        return residual_with_drop_path(x, branch_input, branch, p=self.drop_prob, training=self.training,
                                       dtype=dtype)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class BNGELU(nn.Module):
    """BatchNorm2d (eps 1e-5) then exact GELU; keys ``bn.*``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, eps=1e-5)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(x))


class ConvBN(nn.Module):
    """(B, cin, H, W) -> (B, cout, H', W'): k x k conv without bias (padding (k-1)/2 * dilation), + ``bn_gelu``."""

    def __init__(self, cin: int, cout: int, *, kernel: int = 3, stride: int = 1, dilation: int = 1,
                 groups: int = 1, bn_act: bool = False) -> None:
        super().__init__()
        padding = (kernel - 1) // 2 * dilation
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, dilation=dilation,
                              groups=groups, bias=False)
        self.bn_act = bn_act
        if bn_act:
            self.bn_gelu = BNGELU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.bn_gelu(x) if self.bn_act else x


class _ChannelMLP(nn.Module):
    """Shared tail: channels-last Linear(C, 6C) -> GELU -> Linear(6C, C) -> * gamma (keys pwconv1/2)."""

    gamma: nn.Parameter

    def _init_mlp(self, dim: int) -> None:
        self.pwconv1 = nn.Linear(dim, EXPANSION * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(EXPANSION * dim, dim)

    def _out_dtype(self, x: torch.Tensor) -> torch.dtype:
        """The dtype of gamma * MLP(...) for block input x: fp32 under autocast (gamma stays fp32)."""
        return torch.promote_types(self.gamma.dtype, x.dtype)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled(x.device.type):
            return self.gamma * self.pwconv2(self.act(self.pwconv1(x)))
        weights = (self.pwconv1.weight, self.pwconv1.bias, self.pwconv2.weight, self.pwconv2.bias)
        if torch.is_grad_enabled():
            return self.gamma * _ChunkedMLP.apply(x, *weights)
        return self.gamma * _chunked_mlp(x, *weights)


MLP_CHUNK_ROWS = 1024
"""Pixels per chunk of the MLP on CPU: the (rows, 6C) hidden maps of a chunk stay in cache (forward and
backward of one MLP 1.1-2x faster than whole-map matrix products at batch 3, 192x640 in a one-off
measurement; the step-level effect is in bench/RESULTS.md)."""


def _chunks(rows: int, device: torch.device) -> list[slice]:
    """Row ranges of ``MLP_CHUNK_ROWS`` on CPU; one range elsewhere (a GPU wants the whole product)."""
    step = MLP_CHUNK_ROWS if device.type == "cpu" else max(rows, 1)
    return [slice(i, i + step) for i in range(0, rows, step)]


KEEP_HIDDEN_MIN_CHANNELS = 128
"""``_ChunkedMLP`` keeps h = pwconv1(x) for the backward when C >= this (Lite-Mono's stages 1 and 2), and
recomputes it below (stage 0). Keeping h (6C values per pixel) saves C multiply-adds per value kept: worth it
in the wide stages (0.14 GiB at batch 3, 192x640; their MLPs' fwd + bwd 8-15 % faster in a one-off
measurement), not in stage 0 (another 0.13 GiB for the cheapest product, which a chunk recomputes in cache)."""


def _chunked_mlp(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
                 *, hidden: torch.Tensor | None = None) -> torch.Tensor:
    """linear(gelu(linear(x, w1, b1)), w2, b2) for x (..., C), computed ``_chunks`` of pixels at a time.

    Each output row is the same products as the whole-map computation (bitwise equal in tests/test_litemono.py;
    a BLAS may block a chunk's product differently: 1e-6 on the Lite-Mono parity fixture). ``hidden`` (rows,
    6C), when given, receives linear(x, w1, b1).
    """
    rows = x.reshape(-1, x.shape[-1])
    out = rows.new_empty(rows.shape[0], w2.shape[0])
    for chunk in _chunks(rows.shape[0], x.device):
        h = torch.addmm(b1, rows[chunk], w1.t(), out=hidden[chunk] if hidden is not None else None)
        torch.addmm(b2, F.gelu(h), w2.t(), out=out[chunk])
    return out.view(*x.shape[:-1], w2.shape[0])


class _ChunkedMLP(torch.autograd.Function):
    """linear(gelu(linear(x, w1, b1)), w2, b2) for x (..., C), ``_chunks`` of pixels at a time, forward and backward.

    Plain autograd keeps x, h = linear(x, w1, b1) (for GELU's gradient) and gelu(h) (for w2's gradient):
    13 C values per pixel (0.58 GiB over Lite-Mono's 18 blocks at batch 3, 192x640). This keeps x and, when
    C >= ``KEEP_HIDDEN_MIN_CHANNELS``, h (7 C values); otherwise it recomputes h in the backward; gelu(h) is
    always recomputed, a chunk at a time, so a chunk's hidden maps stay in cache. Outputs and the input
    gradient are plain autograd's products row by row (``_chunked_mlp``); the weight gradients are its sums
    over pixels accumulated chunk by chunk (float rounding: ~3e-7 relative, tests/test_litemono.py). Used in
    fp32 training only (under autocast the modules run as they are).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,  # type: ignore[override]
                b2: torch.Tensor) -> torch.Tensor:
        hidden = None
        if x.shape[-1] >= KEEP_HIDDEN_MIN_CHANNELS:
            hidden = x.new_empty(x.numel() // x.shape[-1], w1.shape[0])
        ctx.save_for_backward(x, w1, b1, w2, hidden)
        return _chunked_mlp(x, w1, b1, w2, b2, hidden=hidden)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        x, w1, b1, w2, hidden = ctx.saved_tensors
        need_x, need_w1, need_b1, need_w2, need_b2 = ctx.needs_input_grad
        rows, grads = x.reshape(-1, x.shape[-1]), grad.reshape(-1, grad.shape[-1])
        grad_w1, grad_b1, grad_w2 = torch.zeros_like(w1), torch.zeros_like(b1), torch.zeros_like(w2)
        grad_x = torch.empty_like(rows) if need_x else None
        for chunk in _chunks(rows.shape[0], x.device):
            h = hidden[chunk] if hidden is not None else torch.addmm(b1, rows[chunk], w1.t())
            if need_w2:
                grad_w2.addmm_(grads[chunk].t(), F.gelu(h))
            if need_x or need_w1 or need_b1:
                grad_hidden = torch.ops.aten.gelu_backward(grads[chunk] @ w2, h)
                if need_w1:
                    grad_w1.addmm_(grad_hidden.t(), rows[chunk])
                if need_b1:
                    grad_b1 += grad_hidden.sum(0)
                if grad_x is not None:
                    torch.mm(grad_hidden, w1, out=grad_x[chunk])
        return (grad_x.view_as(x) if grad_x is not None else None, grad_w1 if need_w1 else None,
                grad_b1 if need_b1 else None, grad_w2 if need_w2 else None, grads.sum(0) if need_b2 else None)


class DilatedConvBlock(_ChannelMLP):
    """(B, C, H, W) -> (B, C, H, W): the CDC block (module docstring) with dilation ``dilation``."""

    def __init__(self, *, dim: int, dilation: int, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.gamma = nn.Parameter(LAYER_SCALE_INIT * torch.ones(dim))
        self.ddwconv = ConvBN(dim, dim, dilation=dilation, groups=dim)
        self.bn1 = nn.BatchNorm2d(dim)
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)  # in the original's state dict, never applied
        self._init_mlp(dim)
        self.drop_path = DropPath(drop_prob=drop_path_rate)

    def never_used_parameters(self) -> list[nn.Parameter]:
        """The LayerNorm ``norm``: kept for the original's checkpoints, never applied, so never trained."""
        return list(self.norm.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the convolution and BatchNorm see every sample (batch statistics); the MLP only the kept ones
        return self.drop_path.residual(x, self.bn1(self.ddwconv(x)), self._pixel_mlp, dtype=self._out_dtype(x))

    def _pixel_mlp(self, y: torch.Tensor) -> torch.Tensor:
        return self._mlp(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class XCA(nn.Module):
    """Cross-covariance attention: tokens (B, N, C) -> (B, N, C), ``heads`` heads of C/heads channels.

    q, k, v (B, h, C/h, N) from one Linear(C, 3C) split as (3, h, C/h); q and k L2-normalised over the
    tokens; attention softmax(q k^T * temperature[h]) (B, h, C/h, C/h); output proj(attn @ v).
    """

    def __init__(self, *, dim: int, heads: int = 8) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 4, 1)
        q, k, v = qkv[0], qkv[1], qkv[2]
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attn = ((q @ k.transpose(-2, -1)) * self.temperature).softmax(dim=-1)
        return self.proj((attn @ v).permute(0, 3, 1, 2).reshape(b, n, c))


class FourierPositionalEncoding(nn.Module):
    """(B, H, W) grid -> (B, dim, H, W): sine/cosine of normalised row / column positions, then a 1x1 conv.

    pos_y = i / (H + 1e-6) * 2 pi for row i = 1..H (x likewise over columns); feature k of each uses
    frequency 10000 ** (2 * (k // 2) / 32), sin for even k, cos for odd k; cat(y features, x features)
    (64 channels) -> ``token_projection`` conv1x1 -> dim.
    """

    def __init__(self, *, dim: int, hidden: int = POS_HIDDEN, temperature: float = POS_TEMPERATURE) -> None:
        super().__init__()
        self.hidden, self.temperature = hidden, temperature
        self.token_projection = nn.Conv2d(2 * hidden, dim, kernel_size=1)

    def _features(self, embed: torch.Tensor) -> torch.Tensor:
        k = torch.arange(self.hidden, dtype=torch.float32, device=embed.device)
        freq = self.temperature ** (2 * torch.div(k, 2, rounding_mode="floor") / self.hidden)
        pos = embed[..., None] / freq
        return torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=4).flatten(3)

    def forward(self, *, batch: int, height: int, width: int) -> torch.Tensor:
        device = self.token_projection.weight.device
        ones = torch.ones(batch, height, width, device=device)
        y, x = ones.cumsum(1), ones.cumsum(2)
        y = y / (y[:, -1:, :] + 1e-6) * (2 * math.pi)
        x = x / (x[:, :, -1:] + 1e-6) * (2 * math.pi)
        pos = torch.cat((self._features(y), self._features(x)), dim=3).permute(0, 3, 1, 2)
        return self.token_projection(pos.to(self.token_projection.weight.dtype))


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> tokens (B, HW, C), row-major over pixels: a view when x is channels_last."""
    b, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(b, h * w, c)


class LGFIBlock(_ChannelMLP):
    """(B, C, H, W) -> (B, C, H, W): the LGFI block (module docstring); ``positional`` in stage 0 only."""

    def __init__(self, *, dim: int, heads: int = 8, positional: bool = False, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.gamma_xca = nn.Parameter(LAYER_SCALE_INIT * torch.ones(dim))
        self.gamma = nn.Parameter(LAYER_SCALE_INIT * torch.ones(dim))
        self.pos_embd = FourierPositionalEncoding(dim=dim) if positional else None
        self.norm_xca = nn.LayerNorm(dim, eps=LN_EPS)
        self.xca = XCA(dim=dim, heads=heads)
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self._init_mlp(dim)
        self.drop_path = DropPath(drop_prob=drop_path_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # every step of the branch is per sample: only the kept ones run
        return self.drop_path.residual(x, x, self._branch, dtype=self._out_dtype(x))

    def _branch(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = _tokens(x)
        if self.pos_embd is not None:
            tokens = tokens + _tokens(self.pos_embd(batch=b, height=h, width=w))
        tokens = tokens + self.gamma_xca * self.xca(self.norm_xca(tokens))
        return self._mlp(self.norm(tokens.reshape(b, h, w, c))).permute(0, 3, 1, 2)
