"""Per-pixel SSIM dissimilarity of the photometric loss, with the target's statistics shared and a hand-written backward.

    ssim_loss(x, y) = clamp((1 - SSIM(x, y)) / 2, 0, 1)                        (B, C, H, W)
    SSIM = (2 mx my + C1)(2 sxy + C2) / ((mx^2 + my^2 + C1)(sx + sy + C2)),  C1 = 0.01^2, C2 = 0.03^2

with mx = mean3x3(x'), sx = mean3x3(x'^2) - mx^2, sxy = mean3x3(x' y') - mx my, x' / y' the images
reflection-padded by 1 and mean3x3 the 3x3 average without padding (the original's SSIM).

Why not plain autograd: the photometric loss compares every warped source with the same target at full
resolution, 8 times a step (4 scales x 2 sources). ``SSIMTarget`` computes the target's padded image,
mean and variance once per batch instead of once per comparison, and ``ssim_loss`` is one
``torch.autograd.Function`` whose backward keeps 3 maps (mx, E[x'^2], E[x'y']) instead of the ~15 that autograd
keeps, and runs one 3x3 mean instead of autograd's chain of pool backwards and products. The 3x3 means are
separable sums (``box_mean3``) rather than ``avg_pool2d``. Same forward formulas in the same order as
the reference (``ssim_loss_reference``), so the forward is the reference's to float rounding; the gradient is the analytic one (tests/test_ssim.py compares both
with autograd of the reference, in float64 by ``gradcheck`` and in float32 on images).

Gradient (only x learns; y is a target): with A1 = 2 mx my + C1, A2 = 2 sxy + C2, B1 = mx^2 + my^2 + C1,
B2 = sx + sy + C2, D = B1 B2, S = A1 A2 / D and E[.] the 3x3 means,
    dS/dmx = (2 my (A2 - A1) - 2 mx S (B2 - B1)) / D,  dS/dE[x'^2] = -S B1 / D,  dS/dE[x'y'] = 2 A1 / D,
the clamp passes the gradient where 0 <= (1 - S) / 2 <= 1 (as torch.clamp's), the 3x3 mean's adjoint is a
3x3 mean of the zero-padded-by-2 gradient, and the reflection padding's adjoint folds the border back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2
_PAD = (1, 1, 1, 1)

__all__ = ["SSIM_C1", "SSIM_C2", "SSIMTarget", "ssim_loss", "box_mean3", "ssim_loss_reference", "ssim_target"]


@dataclass(frozen=True)
class SSIMTarget:
    """A target image's SSIM statistics, shared by every prediction compared with it.

    image (B, C, H, W); padded (B, C, H+2, W+2) reflection-padded by 1; mean and variance (B, C, H, W):
    mean3x3(padded) and mean3x3(padded^2) - mean^2. All without gradient.
    """

    image: torch.Tensor
    padded: torch.Tensor
    mean: torch.Tensor
    variance: torch.Tensor


def ssim_target(y: torch.Tensor) -> SSIMTarget:
    """The statistics of target ``y`` (B, C, H, W) (no gradient flows into a target)."""
    y = y.detach()
    padded = F.pad(y, _PAD, mode="reflect")
    mean, second = box_mean3(torch.cat([padded, padded**2], dim=1)).chunk(2, dim=1)
    return SSIMTarget(image=y, padded=padded, mean=mean, variance=second - mean**2)


def box_mean3(x: torch.Tensor) -> torch.Tensor:
    """Mean of every 3x3 window of x (B, C, H, W) -> (B, C, H - 2, W - 2), as ``avg_pool2d(x, 3, 1)``.

    Summed as three rows of three (separable) with vectorised adds: equal to the pool up to float rounding
    (another summation order), several times faster than CPU ``avg_pool2d`` on these maps.
    """
    rows = torch.add(x[..., :-2, :], x[..., 1:-1, :]).add_(x[..., 2:, :])  # in place on fresh tensors: 3x faster
    return torch.add(rows[..., :-2], rows[..., 1:-1]).add_(rows[..., 2:]).div_(9)


def ssim_loss_reference(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The module docstring's formula by plain autograd (both inputs may require grad)."""
    x, y = F.pad(x, _PAD, mode="reflect"), F.pad(y, _PAD, mode="reflect")
    mu_x, mu_y = F.avg_pool2d(x, 3, 1), F.avg_pool2d(y, 3, 1)
    sigma_x = F.avg_pool2d(x**2, 3, 1) - mu_x**2
    sigma_y = F.avg_pool2d(y**2, 3, 1) - mu_y**2
    sigma_xy = F.avg_pool2d(x * y, 3, 1) - mu_x * mu_y
    numerator = (2 * mu_x * mu_y + SSIM_C1) * (2 * sigma_xy + SSIM_C2)
    denominator = (mu_x**2 + mu_y**2 + SSIM_C1) * (sigma_x + sigma_y + SSIM_C2)
    return torch.clamp((1 - numerator / denominator) / 2, 0, 1)


def ssim_loss(x: torch.Tensor, y: torch.Tensor | SSIMTarget) -> torch.Tensor:
    """Per-pixel clamp((1 - SSIM) / 2, 0, 1) (B, C, H, W) of ``x`` against target ``y`` (B, C, H, W); 0 for x == y.

    ``y`` may be an ``SSIMTarget`` (statistics computed once per batch). A plain tensor ``y`` that
    requires grad goes through ``ssim_loss_reference`` (gradient to both images).
    """
    if isinstance(y, torch.Tensor):
        if y.requires_grad:
            return ssim_loss_reference(x, y)
        y = ssim_target(y)
    if x.shape != y.image.shape:
        raise ValueError(f"ssim_loss: image {tuple(x.shape)} and target {tuple(y.image.shape)} differ in shape")
    return _SSIMLoss.apply(x, y.padded, y.mean, y.variance)


def _terms(mu_x: torch.Tensor, second: torch.Tensor, cross: torch.Tensor, mu_y: torch.Tensor,
           sigma_y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(A1, A2, B1, B2, SSIM) of the module docstring from mx, E[x'^2], E[x'y'] and the target's my, sy.

    The reference's operations in the reference's order (a - b taken as (-b) + a, which IEEE rounds the
    same), in place on fresh tensors: a dozen full-size temporaries fewer per call.
    """
    mu_x_sq = torch.mul(mu_x, mu_x)
    a1 = torch.mul(mu_x, 2).mul_(mu_y).add_(SSIM_C1)
    a2 = torch.mul(mu_x, mu_y).neg_().add_(cross).mul_(2).add_(SSIM_C2)
    b1 = torch.mul(mu_y, mu_y).add_(mu_x_sq).add_(SSIM_C1)
    b2 = mu_x_sq.neg_().add_(second).add_(sigma_y).add_(SSIM_C2)
    return a1, a2, b1, b2, torch.mul(a1, a2).div_(torch.mul(b1, b2))


class _SSIMLoss(torch.autograd.Function):
    """clamp((1 - SSIM) / 2, 0, 1) with the analytic gradient to x (module docstring)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, y_padded: torch.Tensor, mu_y: torch.Tensor,  # type: ignore[override]
                sigma_y: torch.Tensor) -> torch.Tensor:
        x_padded = F.pad(x, _PAD, mode="reflect")
        mu_x, second, cross = box_mean3(torch.cat([x_padded, x_padded**2, x_padded * y_padded], dim=1)).chunk(3, dim=1)
        ssim = _terms(mu_x, second, cross, mu_y, sigma_y)[-1]
        ctx.save_for_backward(x, y_padded, mu_y, sigma_y, mu_x, second, cross)  # 3 views of one pooled tensor
        return ssim.neg_().add_(1).div_(2).clamp_(0, 1)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        x, y_padded, mu_y, sigma_y, mu_x, second, cross = ctx.saved_tensors
        a1, a2, b1, b2, ssim = _terms(mu_x, second, cross, mu_y, sigma_y)
        value = torch.neg(ssim).add_(1).div_(2)
        outside = (value < 0).logical_or_(value > 1)  # torch.clamp passes the gradient at its bounds
        g = torch.mul(grad_out, -0.5).masked_fill_(outside, 0).div_(torch.mul(b1, b2))
        b, c, h, w = x.shape
        spread_in = x.new_zeros(b, 3 * c, h + 4, w + 4)  # the 3 gradients to E[.], zero-padded by 2
        inner = spread_in[..., 2:-2, 2:-2]
        # dS/dmx = (2 my (A2 - A1) - 2 mx S (B2 - B1)) / D; dS/dE[x'^2] = -S B1 / D; dS/dE[x'y'] = 2 A1 / D
        torch.mul(a2.sub_(a1).mul_(mu_y), 2, out=inner[:, :c]).sub_(
            b2.sub_(b1).mul_(mu_x).mul_(ssim).mul_(2)).mul_(g)
        torch.mul(ssim, b1, out=inner[:, c:2 * c]).mul_(g).neg_()
        torch.mul(a1, 2, out=inner[:, 2 * c:]).mul_(g)
        s_mu, s_second, s_cross = box_mean3(spread_in).chunk(3, dim=1)
        x_padded = F.pad(x, _PAD, mode="reflect")
        grad_padded = x_padded.mul_(s_second).mul_(2).add_(s_mu).addcmul_(y_padded, s_cross)
        grad_x = torch.ops.aten.reflection_pad2d_backward(grad_padded, x, list(_PAD))
        return grad_x, None, None, None
