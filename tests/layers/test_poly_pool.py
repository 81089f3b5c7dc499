"""Tests of polynomial pooling (finecut.layers.poly_pool)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from finecut.layers.poly_pool import (
    PolyPool2d,
    _PolyPoolFunction,
    _UnfoldLayout,
    poly_pool2d,
)

# (kernel, stride, padding, (H, W)): non-overlapping (the fast path), with a cropped border,
# non-square, overlapping, padded.
SETTINGS = [
    (2, 2, 0, (6, 8)),
    (2, 2, 0, (5, 7)),
    (3, 3, 0, (7, 6)),
    ((2, 3), (2, 3), 0, (6, 7)),
    (3, 1, 1, (5, 6)),
    (3, 2, 1, (6, 5)),
    ((2, 3), (1, 2), (1, 1), (5, 6)),
]


def _out_hw(hw, kernel, stride, padding) -> tuple[int, int]:
    y = F.max_pool2d(torch.zeros(1, 1, *hw), kernel, stride, padding)
    return tuple(y.shape[2:])


def reference_pool(x: Tensor, p, kernel, stride, padding) -> Tensor:
    """The formula as written, sum(x^(p+1)) / sum(x^p), in float64 for x >= 0 (no normalisation).

    Padding positions are left out of the windows.
    """
    b, c, h, w = x.shape
    ho, wo = _out_hw((h, w), kernel, stride, padding)
    x = x.double()
    cols = F.unfold(x, kernel, padding=padding, stride=stride).view(b, c, -1, ho * wo)
    ones = torch.ones(1, 1, h, w, dtype=x.dtype)
    valid = F.unfold(ones, kernel, padding=padding, stride=stride).view(1, 1, -1, ho * wo) > 0
    if isinstance(p, Tensor):
        p = p.double()
        if p.dim() == 1:
            p = p.view(1, c, 1, 1)
        elif p.dim() == 4:
            p = p.reshape(b, c, 1, ho * wo)
    weights = torch.where(valid, cols**p, torch.zeros((), dtype=x.dtype))
    y = (weights * cols).sum(2) / weights.sum(2)
    return y.view(b, c, ho, wo)


def _positive(*shape, dtype=torch.float64, seed=0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g, dtype=dtype) + 0.1


def _p_forms(b: int, c: int, out_hw, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {
        "float": 2.5,
        "0-d": torch.tensor(1.7, dtype=dtype),
        "channel": torch.rand(c, generator=g, dtype=dtype) * 4 + 0.5,
        "location": torch.rand(b, c, *out_hw, generator=g, dtype=dtype) * 4 + 0.5,
    }


# --------------------------------------------------------------------------------------------
# forward values
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("p", "expected"), [(0.0, 2.5), (1.0, 3.0), (2.0, 100 / 30), (3.0, 3.54)])
def test_known_answers(p: float, expected: float) -> None:
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=torch.float64)
    # p = 3: (1 + 16 + 81 + 256) / (1 + 8 + 27 + 64) = 354 / 100
    assert poly_pool2d(x, p, 2).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(("kernel", "stride", "padding", "hw"), SETTINGS)
def test_shape_and_reference(kernel, stride, padding, hw) -> None:
    x = _positive(2, 3, *hw)
    out_hw = _out_hw(hw, kernel, stride, padding)
    for name, p in _p_forms(2, 3, out_hw).items():
        y = poly_pool2d(x, p, kernel, stride, padding)
        assert y.shape == (2, 3, *out_hw), name
        torch.testing.assert_close(
            y, reference_pool(x, p, kernel, stride, padding), rtol=1e-12, atol=1e-12
        )


def test_fast_path_equals_unfold_path() -> None:
    """stride == kernel takes the strided-view path; the general unfold path must agree."""
    torch.manual_seed(0)
    x = torch.rand(2, 3, 9, 11, dtype=torch.float32)  # cropped border: 9 = 4 * 2 + 1
    x[:, :, ::3] = 0.0  # exact zeros as after a ReLU
    for p in [0.0, 1.0, 3.0, torch.rand(2, 3, 4, 5) * 5, torch.rand(3) * 5]:
        xa = x.clone().requires_grad_()
        xb = x.clone().requires_grad_()
        pa = p.clone().requires_grad_() if isinstance(p, Tensor) else p
        pb = p.clone().requires_grad_() if isinstance(p, Tensor) else p
        ya = poly_pool2d(xa, pa, 2)
        p4 = pb if not isinstance(pb, Tensor) else pb.reshape(1, 3, 1, 1) if pb.dim() == 1 else pb
        yb = _PolyPoolFunction.apply(xb, p4, _UnfoldLayout(x.shape, (2, 2), (2, 2), (0, 0)))
        torch.testing.assert_close(ya, yb, rtol=1e-6, atol=1e-6)
        gy = torch.rand_like(ya)
        (ya * gy).sum().backward()
        (yb * gy).sum().backward()
        torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-6)
        if isinstance(p, Tensor):
            torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-5, atol=1e-6)


def test_scale_equivariant() -> None:
    """y(c x) = c y(x), also for dy/dp / c: the floors are relative to the window maximum."""
    x = _positive(1, 2, 6, 6)
    x[0, 0, 0, 0] = 0.0
    p = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    y1 = poly_pool2d(x, p, 2)
    (g1,) = torch.autograd.grad(y1.sum(), p)
    for scale in (1e-6, 1e6):
        ys = poly_pool2d(x * scale, p, 2)
        (gs,) = torch.autograd.grad(ys.sum(), p)
        torch.testing.assert_close(ys, y1 * scale, rtol=1e-10, atol=0)
        torch.testing.assert_close(gs, g1 * scale, rtol=1e-8, atol=0)


# --------------------------------------------------------------------------------------------
# the propositions: p = 0 is average pooling, p -> inf is max pooling (forward and backward)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kernel", "stride", "padding"), [(2, 2, 0), (3, 3, 0), (3, 2, 1)])
def test_p0_is_average_pooling(kernel, stride, padding) -> None:
    x = torch.rand(2, 3, 9, 10, dtype=torch.float32)
    x[:, :, 1::4] = 0.0  # zeros count at p = 0 (0^0 = 1)
    xa = x.clone().requires_grad_()
    xb = x.clone().requires_grad_()
    ya = poly_pool2d(xa, torch.tensor(0.0), kernel, stride, padding)
    yb = F.avg_pool2d(xb, kernel, stride, padding, count_include_pad=False)
    torch.testing.assert_close(ya, yb, rtol=1e-6, atol=1e-6)
    gy = torch.rand_like(ya)
    (ya * gy).sum().backward()
    (yb * gy).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-6, atol=1e-7)
    if (kernel, stride, padding) == (2, 2, 0):  # Proposition 1: dy/dx = 1/N in every window
        xc = x.clone().requires_grad_()
        poly_pool2d(xc, 0.0, 2).sum().backward()
        expected = torch.zeros_like(x)
        expected[:, :, :8, :] = 0.25
        torch.testing.assert_close(xc.grad, expected, rtol=0, atol=1e-7)


def test_large_p_approaches_max_pooling_from_below() -> None:
    torch.manual_seed(0)
    x = torch.rand(4, 8, 32, 32, dtype=torch.float32) + 1e-3
    y_max = F.max_pool2d(x, 2)
    gaps = []
    for p in [1.0, 3.0, 10.0, 30.0, 110.0]:
        y = poly_pool2d(x, p, 2)
        assert bool((y <= y_max).all()), f"above max pooling at p = {p}"
        gaps.append((y_max - y) / y_max)
    assert float(gaps[-1].max()) < 0.01  # p = 110: within 1 %
    for small, large in zip(gaps, gaps[1:], strict=False):
        assert float(large.mean()) < float(small.mean())
        assert bool((large <= small + 1e-6).all())  # per window, up to float32 rounding


def test_large_p_gradient_tends_to_one_hot() -> None:
    """Proposition 2, backward: the gradient becomes max pooling's (one-hot at the maximum)."""
    torch.manual_seed(0)
    levels = torch.linspace(1.0, 2.0, 2 * 3 * 8 * 8, dtype=torch.float64)  # no ties
    x = levels[torch.randperm(levels.numel())].view(2, 3, 8, 8)
    xm = x.clone().requires_grad_()
    gy = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    (F.max_pool2d(xm, 2) * gy).sum().backward()
    mean_errors, max_errors = [], []
    for p in [10.0, 100.0, 1000.0, 1e5]:
        xp = x.clone().requires_grad_()
        (poly_pool2d(xp, p, 2) * gy).sum().backward()
        mean_errors.append(float((xp.grad - xm.grad).abs().mean()))
        max_errors.append(float((xp.grad - xm.grad).abs().max()))
    assert all(b < a for a, b in zip(mean_errors, mean_errors[1:], strict=False)), mean_errors
    assert max_errors[0] > 0.1  # far from one-hot at p = 10 ...
    assert max_errors[-1] < 1e-6  # ... one-hot at p = 1e5


# --------------------------------------------------------------------------------------------
# numerical stability
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("p_value", [0.0, 0.5, 1.0, 3.0, 50.0, 110.0, "location"])
def test_finite_for_extreme_inputs(dtype, p_value) -> None:
    """x^110 overflows float32 for x > 2.2; here x spans 1e-20 .. 1e20 with zeros and negatives."""
    g = torch.Generator().manual_seed(0)
    magnitude = 10.0 ** (torch.rand(2, 3, 8, 8, generator=g) * 40 - 20)
    x = magnitude * torch.where(torch.rand(2, 3, 8, 8, generator=g) < 0.1, -1.0, 1.0)
    x[:, :, ::3] = 0.0
    x[0, 0, :2, :2] = 0.0  # an all-zero window
    x[1, 1] = x[1, 1].abs()  # a plane that needs no shift
    x = x.to(dtype).requires_grad_()
    if p_value == "location":
        p = (torch.rand(2, 3, 4, 4, generator=g) * 110).to(dtype).requires_grad_()
    else:
        p = torch.tensor(p_value, dtype=dtype, requires_grad=True)
    y = poly_pool2d(x, p, 2)
    assert y.dtype == dtype
    assert bool(torch.isfinite(y).all())
    (y * torch.rand(y.shape, generator=g).to(dtype)).sum().backward()
    assert x.grad.dtype == dtype
    assert bool(torch.isfinite(x.grad).all())
    assert bool(torch.isfinite(p.grad).all())


def test_float32_matches_float64_at_large_p() -> None:
    x = _positive(2, 3, 8, 8) * 100  # 100^110 = 1e220 > float32 max
    for p in [50.0, 110.0]:
        y64 = poly_pool2d(x, p, 2)
        y32 = poly_pool2d(x.float(), p, 2)
        torch.testing.assert_close(y32.double(), y64, rtol=1e-5, atol=0)


@pytest.mark.parametrize("p_value", [0.0, 0.5, 1.0, 3.0])
def test_zero_windows_and_zero_inputs(p_value) -> None:
    x = torch.tensor([[[[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 2.0, 3.0]]]], dtype=torch.float64)
    x = x.requires_grad_()
    p = torch.tensor(p_value, dtype=torch.float64, requires_grad=True)
    y = poly_pool2d(x, p, 2)
    assert y[0, 0, 0, 0].item() == 0.0  # all-zero window
    y.sum().backward()
    assert bool(torch.isfinite(x.grad).all()) and bool(torch.isfinite(p.grad).all())
    if p_value == 0.0:  # average pooling, zeros included
        assert y[0, 0, 0, 1].item() == pytest.approx(1.5)
        torch.testing.assert_close(x.grad, torch.full_like(x, 0.25))
    else:  # zeros get weight 0^p = 0
        s = 1.0 + 2.0**p_value + 3.0**p_value
        expected = (1.0 + 2.0 ** (p_value + 1) + 3.0 ** (p_value + 1)) / s
        assert y[0, 0, 0, 1].item() == pytest.approx(expected, rel=1e-12)
        # all-zero window: no gradient (x / m is floored at the smallest normal number, whose
        # p-th power is 0 to working precision)
        assert x.grad[0, 0, :, :2].abs().max().item() < 1e-100
    if p_value == 1.0:
        # smooth at x = 0 for p = 1: dy/dx_0 = (2 * 0 * sum(x) - sum(x^2)) / sum(x)^2 = -14 / 36
        assert x.grad[0, 0, 0, 2].item() == pytest.approx(-14 / 36, rel=1e-12)
    if p_value == 3.0:
        assert x.grad[0, 0, 0, 2].item() == 0.0  # d(x^3)/dx = 0 at x = 0


def test_negative_inputs_are_shifted_per_plane() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 6, 6, generator=g, dtype=torch.float64)
    x[1, 2] = x[1, 2].abs() + 0.5  # positive plane: pooled as is
    shift = x.amin(dim=(2, 3), keepdim=True).clamp(max=0.0)
    expected = reference_pool(x - shift, 2.0, 2, 2, 0) + shift
    torch.testing.assert_close(poly_pool2d(x, 2.0, 2), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        poly_pool2d(x, 2.0, 2)[1, 2], reference_pool(x[1:2, 2:3], 2.0, 2, 2, 0)[0, 0]
    )


# --------------------------------------------------------------------------------------------
# gradients
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kernel", "stride", "padding", "hw"), SETTINGS)
@pytest.mark.parametrize("p_form", ["float", "0-d", "channel", "location"])
def test_gradcheck(kernel, stride, padding, hw, p_form) -> None:
    x = _positive(1, 2, *hw).requires_grad_()
    p = _p_forms(1, 2, _out_hw(hw, kernel, stride, padding))[p_form]
    if isinstance(p, Tensor):
        p.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x_, p_: poly_pool2d(x_, p_, kernel, stride, padding), (x, p)
    )


def test_gradcheck_negative_inputs() -> None:
    """The shift by the plane minimum is differentiated too (the reference keeps it constant)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 2, 4, 6, generator=g, dtype=torch.float64).requires_grad_()
    p = torch.tensor([1.5, 2.5], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x_, p_: poly_pool2d(x_, p_, 2), (x, p))
    assert torch.autograd.gradcheck(lambda x_, p_: poly_pool2d(x_, p_, 3, 1, 1), (x, p))


def test_negative_p_tensor_acts_as_zero() -> None:
    x = _positive(1, 2, 4, 4)
    p = torch.tensor([-1.0, 2.0], dtype=torch.float64, requires_grad=True)
    y = poly_pool2d(x, p, 2)
    torch.testing.assert_close(y[:, 0], F.avg_pool2d(x, 2)[:, 0])
    y.sum().backward()
    assert p.grad[0].item() == 0.0 and p.grad[1].item() != 0.0


# --------------------------------------------------------------------------------------------
# module, dtypes, layouts, errors
# --------------------------------------------------------------------------------------------


def test_module_channel_mode_equals_function() -> None:
    pool = PolyPool2d(2, channels=3)
    assert pool.p.shape == (3,) and bool((pool.p == 3.0).all())
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    y = pool(x)
    torch.testing.assert_close(y, poly_pool2d(x, pool.p, 2))
    y.sum().backward()
    assert pool.p.grad is not None and bool(torch.isfinite(pool.p.grad).all())
    assert bool((pool.p.grad != 0).all())


@pytest.mark.parametrize(("p_range", "bias_init"), [((1.0, 50.0), 30.0), ((1.0, 110.0), 70.0)])
def test_module_predicted_mode(p_range, bias_init) -> None:
    torch.manual_seed(0)
    pool = PolyPool2d(3, 2, 1, channels=4, p_mode="predicted", p_range=p_range, bias_init=bias_init)
    assert bool((pool.p_branch[2].bias == bias_init).all())
    x = torch.rand(2, 4, 9, 9, requires_grad=True)
    p = pool.p_branch(x)
    assert p.shape == (2, 4, 5, 5)
    assert float(p.detach().min()) >= p_range[0] and float(p.detach().max()) <= p_range[1]
    y = pool(x)
    torch.testing.assert_close(y, poly_pool2d(x, p, 3, 2, 1))
    y.sum().backward()
    for name, param in pool.named_parameters():
        assert param.grad is not None and bool(torch.isfinite(param.grad).all()), name
    assert bool(torch.isfinite(x.grad).all())


def test_bfloat16_close_to_float32() -> None:
    x = torch.rand(2, 3, 8, 8) * 10
    p = torch.rand(3) * 20
    y16 = poly_pool2d(x.bfloat16(), p.bfloat16(), 2)
    y32 = poly_pool2d(x.bfloat16().float(), p.bfloat16().float(), 2)
    assert y16.dtype == torch.bfloat16
    torch.testing.assert_close(y16.float(), y32, rtol=1e-2, atol=0)


@pytest.mark.parametrize("layout", ["transposed", "channels_last", "sliced"])
@pytest.mark.parametrize(("kernel", "stride", "padding"), [(2, 2, 0), (3, 2, 1)])
def test_non_contiguous_input(layout, kernel, stride, padding) -> None:
    transforms = {
        "transposed": lambda t: t.transpose(2, 3),
        "channels_last": lambda t: t.contiguous(memory_format=torch.channels_last),
        "sliced": lambda t: t[:, :, 1:, ::2],
    }
    transform = transforms[layout]
    base = torch.rand(2, 3, 10, 10, dtype=torch.float64).requires_grad_()
    xa = transform(base)
    assert not xa.is_contiguous()
    xb = transform(base.detach()).contiguous().requires_grad_()
    ya = poly_pool2d(xa, 2.0, kernel, stride, padding)
    yb = poly_pool2d(xb, 2.0, kernel, stride, padding)
    torch.testing.assert_close(ya, yb)
    gy = torch.rand_like(ya)
    (ya * gy).sum().backward()
    (yb * gy).sum().backward()
    torch.testing.assert_close(transform(base.grad), xb.grad)


def test_no_grad_inference() -> None:
    x = torch.rand(1, 2, 6, 6)
    with torch.no_grad():
        y = poly_pool2d(x, torch.ones(2), 2)
    assert not y.requires_grad
    torch.testing.assert_close(y, poly_pool2d(x, 1.0, 2))


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((torch.rand(2, 3, 8), 2.0, 2), ValueError, r"expected x of shape \(B, C, H, W\)"),
        ((torch.ones(1, 1, 4, 4, dtype=torch.int64), 2.0, 2), TypeError, "floating-point x"),
        ((torch.rand(1, 3, 4, 4), torch.ones(4), 2), ValueError, r"a \(3,\) tensor"),
        ((torch.rand(1, 3, 4, 4), torch.ones(1, 3, 4, 4), 2), ValueError, r"\(1, 3, 2, 2\)"),
        ((torch.rand(1, 3, 4, 4), -1.0, 2), ValueError, "p must be a finite number >= 0"),
        ((torch.rand(1, 3, 4, 4), float("nan"), 2), ValueError, "finite"),
        ((torch.rand(1, 3, 4, 4), torch.ones(3, dtype=torch.int64), 2), TypeError, "floating"),
        ((torch.rand(1, 3, 4, 4), "3", 2), TypeError, "expected p as a float"),
        ((torch.rand(1, 3, 4, 4), 2.0, 5), ValueError, "larger than the padded input"),
        ((torch.rand(1, 3, 4, 4), 2.0, (2, 0)), ValueError, "kernel_size must be >= 1"),
        ((torch.rand(1, 3, 4, 4), 2.0, 2, 0), ValueError, "stride must be >= 1"),
        ((torch.rand(1, 3, 4, 4), 2.0, 2, 2, 2), ValueError, "at most half of kernel_size"),
        ((torch.rand(1, 3, 4, 4), 2.0, 2.5), TypeError, "int or a pair of ints"),
    ],
)
def test_errors(args, error, match) -> None:
    with pytest.raises(error, match=match):
        poly_pool2d(*args)


def test_module_errors() -> None:
    with pytest.raises(ValueError, match="p_mode must be 'channel' or 'predicted'"):
        PolyPool2d(2, channels=3, p_mode="global")
    with pytest.raises(ValueError, match="channels must be a positive int"):
        PolyPool2d(2, channels=0)
    with pytest.raises(ValueError, match="p_range must satisfy"):
        PolyPool2d(2, channels=3, p_mode="predicted", p_range=(50.0, 1.0))
    with pytest.raises(ValueError, match="p_init must be"):
        PolyPool2d(2, channels=3, p_init=-1.0)
    with pytest.raises(ValueError, match=r"got p of shape \(3,\)"):
        PolyPool2d(2, channels=3)(torch.rand(1, 4, 4, 4))
