"""The shared-target SSIM with its hand-written backward (dynamo_depth.objective.ssim) against autograd of the formula."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dynamo_depth.objective.ssim import box_mean3, ssim_loss, ssim_loss_reference, ssim_target


def _images(seed: int, shape: tuple[int, ...], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.rand(shape, generator=g, dtype=dtype)
    x = (y + 0.3 * torch.randn(shape, generator=g, dtype=dtype)).clamp(0, 1)
    return x, y


def test_gradcheck_float64() -> None:
    x, y = _images(0, (2, 3, 5, 7), torch.float64)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: ssim_loss(a, y), (x,), eps=1e-6, atol=1e-7)


def test_forward_and_gradient_equal_autograd_of_the_formula() -> None:
    x, y = _images(1, (3, 3, 48, 64), torch.float32)
    weights = torch.rand(x.shape, generator=torch.Generator().manual_seed(2))
    x_ref = x.clone().requires_grad_(True)
    reference = ssim_loss_reference(x_ref, y)
    (reference * weights).sum().backward()
    x.requires_grad_(True)
    target = ssim_target(y)
    ours = ssim_loss(x, target)
    (ours * weights).sum().backward()
    # same formulas; the 3x3 means are summed in another order, which E[x^2] - mx^2 amplifies on some pixels
    difference = (ours - reference).detach().abs()
    assert float(difference.max()) <= 2e-5 and float(difference.mean()) <= 1e-6
    assert 0 < float(reference.detach().min()) and float(reference.detach().max()) < 1
    scale = float(x_ref.grad.abs().max())
    assert float((x.grad - x_ref.grad).abs().max()) <= 1e-5 * scale
    # the same target shared by a second comparison gives that comparison's own values
    other = (x.detach() * 0.5).requires_grad_(True)
    assert float((ssim_loss(other, target) - ssim_loss_reference(other.detach(), y)).abs().max()) <= 2e-5


def test_identical_images_sit_on_the_clamp_boundary_and_keep_the_gradient() -> None:
    """x == y gives (1 - SSIM) / 2 == 0 exactly: torch.clamp passes the gradient at its bounds, so must we."""
    _, y = _images(4, (1, 3, 16, 16), torch.float32)
    weights = torch.rand(y.shape, generator=torch.Generator().manual_seed(5))
    x = y.clone().requires_grad_(True)
    x_ref = y.clone().requires_grad_(True)
    ours, reference = ssim_loss(x, y), ssim_loss_reference(x_ref, y)
    assert bool((reference == 0).all()) and float(ours.abs().max()) <= 1e-6
    (ours * weights).sum().backward()
    (reference * weights).sum().backward()
    assert float(x_ref.grad.abs().max()) > 0
    assert torch.allclose(x.grad, x_ref.grad, rtol=1e-4, atol=1e-6)


def test_target_that_requires_grad_gets_a_gradient() -> None:
    x, y = _images(3, (1, 3, 8, 8), torch.float64)
    y.requires_grad_(True)
    ssim_loss(x, y).sum().backward()
    assert y.grad is not None and float(y.grad.abs().max()) > 0


def test_box_mean_is_the_3x3_average_pool() -> None:
    x = torch.rand(2, 4, 9, 11, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    assert torch.allclose(box_mean3(x), F.avg_pool2d(x, 3, 1), rtol=0, atol=1e-15)
    assert box_mean3(torch.arange(16.0).reshape(1, 1, 4, 4)).flatten().tolist() == [5.0, 6.0, 9.0, 10.0]
