"""Tests of the spatial propagation layer (SPN, Liu et al. 2017; METHODS.md section 2)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

from finecut.layers.propagation import (
    DIRECTIONS,
    SpatialPropagation,
    normalize_gates,
    spatial_propagate,
    spatial_propagation,
)

# --------------------------------------------------------------------------------------------
# references
# --------------------------------------------------------------------------------------------


def reference_propagate(x: Tensor, gates: Tensor, direction: str) -> Tensor:
    """Slow reference: pure Python loops over every pixel, straight from the documented formula.

    For "lr"/"rl" the scan index t is the column and the across index i the row; for "tb"/"bt"
    t is the row and i the column. Gate k of pixel (i, t) weights h at (i + k - 1, t -/+ 1); a
    neighbour outside the image drops out of both terms.
    """
    batch, channels, height, width = x.shape
    shared = gates.dim() == 4
    xs, gs = x.tolist(), gates.tolist()
    out = [[[[0.0] * width for _ in range(height)] for _ in range(channels)] for _ in range(batch)]
    horizontal = direction in ("lr", "rl")
    length, across = (width, height) if horizontal else (height, width)
    step = -1 if direction in ("lr", "tb") else 1  # offset of the previous line
    order = range(length) if step == -1 else range(length - 1, -1, -1)

    def at(t: int, i: int) -> tuple[int, int]:  # (row, column) of scan position t, across i
        return (i, t) if horizontal else (t, i)

    for b in range(batch):
        for c in range(channels):
            h = out[b][c]
            for t in order:
                for i in range(across):
                    r, q = at(t, i)
                    value, weight = 0.0, 0.0
                    for k in range(3):
                        ii, tp = i + k - 1, t + step
                        if 0 <= ii < across and 0 <= tp < length:
                            g = gs[b][k][r][q] if shared else gs[b][k][c][r][q]
                            rr, qq = at(tp, ii)
                            value += g * h[rr][qq]
                            weight += g
                    h[r][q] = (1.0 - weight) * xs[b][c][r][q] + value
    return torch.tensor(out, dtype=x.dtype)


def loop_propagate(x: Tensor, gates: Tensor, direction: str) -> Tensor:
    """Differentiable per-line loop with plain torch ops (autograd keeps every line)."""
    if gates.dim() == 4:
        gates = gates.unsqueeze(2)
    if direction in ("lr", "rl"):
        x, gates = x.transpose(-1, -2), gates.transpose(-1, -2)
    lines = list(range(x.shape[-2]))
    if direction in ("rl", "bt"):
        lines.reverse()
    out: dict[int, Tensor] = {}
    prev = None
    for t in lines:
        xt, gt = x[..., t, :], gates[..., t, :]
        if prev is None:
            ht = xt
        else:
            hp = out[prev]
            zero = hp.new_zeros(hp.shape[:-1] + (1,))
            nb = [torch.cat([zero, hp[..., :-1]], -1), hp, torch.cat([hp[..., 1:], zero], -1)]
            mask = torch.ones(3, hp.shape[-1], dtype=x.dtype)  # neighbour inside the image
            mask[0, 0] = 0
            mask[2, -1] = 0
            weight = sum(gt[:, k] * mask[k] for k in range(3))
            ht = (1 - weight) * xt + sum(gt[:, k] * nb[k] for k in range(3))
        out[t] = ht
        prev = t
    h = torch.stack([out[t] for t in range(x.shape[-2])], -2)
    return h.transpose(-1, -2) if direction in ("lr", "rl") else h


def _inputs(shape, shared: bool, dtype=torch.float64, seed: int = 0, scale: float = 0.5):
    gen = torch.Generator().manual_seed(seed)
    b, c, h, w = shape
    x = torch.randn(shape, generator=gen, dtype=dtype)
    gshape = (b, 3, h, w) if shared else (b, 3, c, h, w)
    gates = (torch.rand(gshape, generator=gen, dtype=dtype) * 2 - 1) * scale
    return x, gates


BOTH = pytest.mark.parametrize("shared", [False, True], ids=["per-channel", "shared"])
DIRS = pytest.mark.parametrize("direction", DIRECTIONS)


# --------------------------------------------------------------------------------------------
# correctness of the recurrence
# --------------------------------------------------------------------------------------------


@DIRS
@BOTH
def test_zero_gates_return_x_exactly(direction, shared):
    x, gates = _inputs((2, 3, 5, 6), shared, dtype=torch.float32)
    out = spatial_propagate(x, torch.zeros_like(gates), direction)
    assert torch.equal(out, x)


@DIRS
@BOTH
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 2, 1, 4), (1, 2, 4, 1), (1, 1, 2, 2)])
def test_matches_pixel_loop_reference(direction, shared, shape):
    x, gates = _inputs(shape, shared, seed=1, scale=0.9)
    out = spatial_propagate(x, gates, direction)
    torch.testing.assert_close(
        out, reference_propagate(x, gates, direction), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize(
    ("direction", "start", "path"),
    [
        ("lr", (0, 0), [(1, 1), (2, 2), (3, 3)]),  # h[i, t] = h[i-1, t-1]
        ("rl", (0, 3), [(1, 2), (2, 1), (3, 0)]),  # h[i, t] = h[i-1, t+1]
        ("tb", (0, 0), [(1, 1), (2, 2), (3, 3)]),  # h[t, j] = h[t-1, j-1]
        ("bt", (3, 0), [(2, 1), (1, 2), (0, 3)]),  # h[t, j] = h[t+1, j-1]
    ],
)
def test_neighbour_offsets_known_answer(direction, start, path):
    # g0 = 1 copies the neighbour at offset -1 across the previous line: an impulse on the first
    # line walks diagonally; on the border position 0 the neighbour is outside, g0 drops, x stays.
    x = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    x[0, 0, start[0], start[1]] = 1.0
    gates = torch.zeros(1, 3, 4, 4, dtype=torch.float64)
    gates[:, 0] = 1.0
    out = spatial_propagate(x, gates, direction)[0, 0]
    expected = x[0, 0].clone()
    for r, q in path:
        expected[r, q] = 1.0
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


@DIRS
def test_centre_gate_decays_geometrically(direction):
    # g1 = 0.5 everywhere, x = 1 on the first line only: h = 0.5 ** (distance along the scan).
    x = torch.zeros(1, 1, 5, 5, dtype=torch.float64)
    line = {
        "lr": (..., 0),
        "rl": (..., -1),
        "tb": (..., 0, slice(None)),
        "bt": (..., -1, slice(None)),
    }
    x[line[direction]] = 1.0
    gates = torch.zeros(1, 3, 1, 5, 5, dtype=torch.float64)
    gates[:, 1] = 0.5
    out = spatial_propagate(x, gates, direction)[0, 0]
    dist = torch.arange(5, dtype=torch.float64)
    if direction in ("rl", "bt"):
        dist = dist.flip(0)
    decay = 0.5**dist
    expected = decay.expand(5, 5) if direction in ("lr", "rl") else decay[:, None].expand(5, 5)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


@DIRS
@BOTH
def test_one_vectorised_step_per_line(direction, shared):
    # The number of kernel calls depends on the scan length only, never on the pixel count.
    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.calls += 1
            return func(*args, **(kwargs or {}))

    def calls(length: int, across: int, batch: int) -> tuple[int, int]:
        shape = (
            (batch, 2, across, length) if direction in ("lr", "rl") else (batch, 2, length, across)
        )
        x, gates = _inputs(shape, shared)
        x.requires_grad_(True)
        gates.requires_grad_(True)
        with Count() as fwd:
            out = spatial_propagate(x, gates, direction)
        with Count() as bwd:
            out.backward(torch.ones_like(out))
        return fwd.calls, bwd.calls

    base = calls(6, 4, 1)
    assert calls(6, 9, 3) == base  # more pixels per line, more images: same number of calls
    longer = calls(16, 4, 1)
    per_line = [(a - b) / 10 for a, b in zip(longer, base, strict=True)]
    assert all(0 < n <= 4 for n in per_line), per_line  # a few vectorised ops per extra line


# --------------------------------------------------------------------------------------------
# bounds: convexity and Theorem 3
# --------------------------------------------------------------------------------------------


@DIRS
@BOTH
def test_nonnegative_normalised_gates_give_convex_combination(direction, shared):
    x, raw = _inputs((2, 3, 9, 11), shared, seed=2)
    gates = normalize_gates(raw.abs() * 3, "clip")  # non-negative, sum <= 1
    assert gates.sum(1).max() <= 1 + 1e-12
    out = spatial_propagate(x, gates, direction)
    assert out.min() >= x.min() - 1e-12
    assert out.max() <= x.max() + 1e-12


def test_module_with_nonnegative_gates_stays_in_range():
    x, _ = _inputs((1, 4, 12, 10), False, seed=3)
    raw = torch.rand(1, 4 * 3 * 4, 12, 10, dtype=torch.float64) * 2
    for mode in ("clip", "always"):
        out = SpatialPropagation(mode)(x, raw)
        assert x.min() - 1e-12 <= out.min() and out.max() <= x.max() + 1e-12


# Theorem 3 (seed 001, proof by Gershgorin): if sum_k |g_k| <= rho <= 1 at every pixel, the
# line-to-line matrix G_t has ||G_t||_inf <= rho, hence, with |1 - sum g| <= 1 + rho,
#   max|h_t| <= rho * max|h_{t-1}| + (1 + rho) * max|x_t|                     (per line)
#   max|h|   <= (1 + rho) / (1 - rho) * max|x|                                (rho < 1)
#   max|h_t| <= (2 t + 1) * max|x|, and the homogeneous part never expands     (rho = 1)
WIDTH = 2000


def _line_max(h: Tensor) -> Tensor:
    return h.abs().amax(dim=(0, 1, 2))  # per column t of an "lr" scan


@BOTH
def test_theorem3_rho_below_one_bounds_long_scans(shared):
    rho = 0.9
    x, raw = _inputs((1, 2, 6, WIDTH), shared, seed=4, scale=5.0)
    gates = normalize_gates(raw, "always") * rho  # signed, sum |g| = rho exactly
    torch.testing.assert_close(gates.abs().sum(1), torch.full_like(gates[:, 0], rho))
    h = spatial_propagate(x, gates, "lr")
    hmax, xmax = _line_max(h), _line_max(x)
    assert torch.all(hmax[1:] <= rho * hmax[:-1] + (1 + rho) * xmax[1:] + 1e-9)
    assert hmax.max() <= (1 + rho) / (1 - rho) * x.abs().max()


@BOTH
def test_theorem3_rho_one_is_non_expansive(shared):
    # "always" gives sum |g| = 1: with input only on the first line, max|h_t| never increases.
    x = torch.zeros(1, 2, 6, WIDTH, dtype=torch.float64)
    x0, raw = _inputs((1, 2, 6, WIDTH), shared, seed=5, scale=3.0)
    x[..., 0] = x0[..., 0]
    h = spatial_propagate(x, normalize_gates(raw, "always"), "lr")
    hmax = _line_max(h)
    assert torch.all(hmax[1:] <= hmax[:-1] * (1 + 1e-12))
    assert hmax[0] == x.abs().max()
    # full input: the linear-growth bound of the theorem holds on every line
    h = spatial_propagate(x0, normalize_gates(raw, "always"), "lr")
    t = torch.arange(WIDTH, dtype=torch.float64)
    assert torch.all(_line_max(h) <= (2 * t + 1) * x0.abs().max() + 1e-9)


def test_theorem3_linear_growth_is_attained_at_rho_one():
    # g1 = -1 (sum |g| = 1), x_t = (-1)^t: h_t = 2 x_t - h_{t-1} reaches |h_t| = 2 t + 1.
    t = torch.arange(WIDTH, dtype=torch.float64)
    x = (1 - 2 * (t % 2)).expand(1, 1, 1, WIDTH)
    gates = torch.zeros(1, 3, 1, WIDTH, dtype=torch.float64)
    gates[:, 1] = -1.0
    h = spatial_propagate(x, gates, "lr")
    torch.testing.assert_close(h.abs()[0, 0, 0], 2 * t + 1, rtol=0, atol=0)


def test_unnormalised_gates_blow_up_and_normalisation_prevents_it():
    x = torch.zeros(1, 1, 3, WIDTH, dtype=torch.float64)
    x[..., 0] = 1.0
    gates = torch.zeros(1, 3, 3, WIDTH, dtype=torch.float64)
    gates[:, 1] = 1.05  # sum |g| = 1.05 > 1: h_t = 1.05 ** t, exponential (~1e42 at the end)
    torch.testing.assert_close(
        spatial_propagate(x, gates, "lr")[0, 0, 0, -1].log(),
        torch.tensor(1.05, dtype=torch.float64).log() * (WIDTH - 1),
    )
    for mode in ("clip", "always"):
        assert spatial_propagate(x, normalize_gates(gates, mode), "lr").abs().max() <= 1.0


# --------------------------------------------------------------------------------------------
# gradients
# --------------------------------------------------------------------------------------------


@DIRS
@BOTH
def test_gradcheck(direction, shared):
    x, gates = _inputs((2, 2, 3, 4), shared, seed=6)
    x.requires_grad_(True)
    gates.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, g: spatial_propagate(a, g, direction), (x, gates), eps=1e-6, atol=1e-8
    )


@BOTH
def test_gradcheck_module_both_normalisations(shared):
    x, _ = _inputs((1, 2, 3, 4), shared, seed=7)
    gates = torch.randn(1, 12 if shared else 24, 3, 4, dtype=torch.float64)
    x.requires_grad_(True)
    gates.requires_grad_(True)
    for mode in ("clip", "always"):
        assert torch.autograd.gradcheck(
            lambda a, g, m=mode: spatial_propagation(a, g, m), (x, gates), eps=1e-6, atol=1e-8
        )


@DIRS
@BOTH
def test_backward_matches_autograd_through_loop(direction, shared):
    x, gates = _inputs((2, 3, 7, 8), shared, seed=8, scale=0.6)
    upstream = torch.randn(2, 3, 7, 8, dtype=torch.float64)
    grads = []
    for fn in (spatial_propagate, loop_propagate):
        a = x.clone().requires_grad_(True)
        g = gates.clone().requires_grad_(True)
        out = fn(a, g, direction)
        out.backward(upstream)
        grads.append((out.detach(), a.grad, g.grad))
    for mine, theirs in zip(*grads, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-12)


def test_saves_only_inputs_and_output_for_backward():
    # O(size of h): the custom backward keeps x, the gates and h, nothing per line.
    x, gates = _inputs((1, 4, 16, 32), False)
    x.requires_grad_(True)
    gates.requires_grad_(True)

    def saved_bytes(fn) -> int:
        storages: dict[int, int] = {}

        def pack(t: Tensor) -> Tensor:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(x, gates, "lr")
        return sum(storages.values())

    size = x.numel() * x.element_size()
    ours = saved_bytes(spatial_propagate)
    assert ours == size * (1 + 3 + 1)  # x, gates, h
    assert saved_bytes(loop_propagate) > ours  # plain autograd keeps the per-line products too


# --------------------------------------------------------------------------------------------
# module, normalisation, layouts, dtypes
# --------------------------------------------------------------------------------------------


@BOTH
@pytest.mark.parametrize("mode", ["clip", "always"])
def test_module_equals_function_and_documented_channel_order(shared, mode):
    b, c, h, w = 2, 3, 4, 5
    x = torch.randn(b, c, h, w, dtype=torch.float64)
    raw = torch.randn(b, 12 if shared else 12 * c, h, w, dtype=torch.float64)
    out = SpatialPropagation(mode)(x, raw)
    torch.testing.assert_close(out, spatial_propagation(x, raw, mode), rtol=0, atol=0)
    # channel (d * 3 + k) * C + c (or d * 3 + k when shared), through the pixel-loop reference
    results = []
    for d, direction in enumerate(DIRECTIONS):
        if shared:
            g = raw[:, [d * 3 + k for k in range(3)]]
        else:
            g = torch.stack(
                [raw[:, [(d * 3 + k) * c + ch for ch in range(c)]] for k in range(3)], 1
            )
        results.append(reference_propagate(x, normalize_gates(g, mode), direction))
    expected = torch.stack(results).amax(0)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_normalize_gates_known_answers():
    g = torch.tensor([[0.2, 0.3, -0.1], [1.0, -2.0, 1.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    clip = normalize_gates(g, "clip", dim=1)
    torch.testing.assert_close(clip[0], g[0])  # sum |g| = 0.6 <= 1: unchanged
    torch.testing.assert_close(clip[1], g[1] / 4)
    torch.testing.assert_close(clip[2], g[2])
    always = normalize_gates(g, "always", dim=1)
    torch.testing.assert_close(always[0], g[0] / 0.6)
    torch.testing.assert_close(always[1], g[1] / 4)
    assert torch.equal(always[2], g[2])  # all-zero gates stay zero, no NaN
    gates = torch.randn(2, 3, 4, 5, 6) * 3
    for mode in ("clip", "always"):
        assert normalize_gates(gates, mode).abs().sum(1).max() <= 1 + 1e-6


@DIRS
def test_non_contiguous_inputs(direction):
    x, gates = _inputs((2, 3, 5, 6), False, seed=9)
    x_nc = x.contiguous(memory_format=torch.channels_last)
    gates_nc = gates.permute(0, 2, 1, 4, 3).contiguous().permute(0, 2, 1, 4, 3)
    wide = torch.randn(2, 3, 5, 12, dtype=torch.float64)[..., ::2]  # strided view
    wide_gates = torch.randn(2, 3, 5, 12, dtype=torch.float64)[..., ::2] * 0.3
    assert not x_nc.is_contiguous() and not gates_nc.is_contiguous() and not wide.is_contiguous()
    expected = spatial_propagate(x, gates, direction)
    torch.testing.assert_close(spatial_propagate(x_nc, gates_nc, direction), expected)
    torch.testing.assert_close(
        spatial_propagate(wide, wide_gates, direction),
        spatial_propagate(wide.contiguous(), wide_gates.contiguous(), direction),
    )
    # gradients through non-contiguous leaves
    a, g = x_nc.clone().requires_grad_(True), gates_nc.clone().requires_grad_(True)
    spatial_propagate(a, g, direction).backward(torch.ones(2, 3, 5, 6, dtype=torch.float64))
    b, k = x.clone().requires_grad_(True), gates.clone().requires_grad_(True)
    spatial_propagate(b, k, direction).backward(torch.ones(2, 3, 5, 6, dtype=torch.float64))
    torch.testing.assert_close(a.grad, b.grad)
    torch.testing.assert_close(g.grad, k.grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_follows_input(dtype):
    x, gates = _inputs((1, 2, 6, 7), False, dtype=torch.float64, seed=10)
    raw = torch.randn(1, 24, 6, 7, dtype=torch.float64)
    out = spatial_propagate(x.to(dtype), gates.to(dtype), "bt")
    merged = SpatialPropagation()(x.to(dtype), raw.to(dtype))
    assert out.dtype == dtype and merged.dtype == dtype and out.device == x.device
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(out.double(), spatial_propagate(x, gates, "bt"), rtol=tol, atol=tol)
    torch.testing.assert_close(merged.double(), SpatialPropagation()(x, raw), rtol=tol, atol=tol)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@DIRS
def test_cuda_matches_cpu(direction):
    x, gates = _inputs((2, 3, 17, 19), False, dtype=torch.float32, seed=11)
    out = spatial_propagate(x.cuda(), gates.cuda(), direction)
    assert out.is_cuda
    torch.testing.assert_close(out.cpu(), spatial_propagate(x, gates, direction))


# --------------------------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------------------------


def test_argument_errors():
    x = torch.randn(2, 3, 4, 5)
    gates = torch.randn(2, 3, 3, 4, 5)
    with pytest.raises(ValueError, match=r"x must have shape \(B, C, H, W\), got \(3, 4, 5\)"):
        spatial_propagate(x[0], gates, "lr")
    with pytest.raises(ValueError, match=r"\(B, 3, C, H, W\) = \(2, 3, 3, 4, 5\) or "):
        spatial_propagate(x, gates[:, :2], "lr")
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\) = \(2, 3, 4, 5\), got \(2, 3, 4, 4\)"):
        spatial_propagate(x, gates[:, :, 0, :, :4], "lr")
    with pytest.raises(ValueError, match=r"got \(2, 3, 2, 4, 5\)"):
        spatial_propagate(x, gates[:, :, :2], "tb")
    with pytest.raises(ValueError, match=r"direction must be one of .*'lr'.*got 'up'"):
        spatial_propagate(x, gates, "up")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="gates must have the dtype and device of x"):
        spatial_propagate(x, gates.double(), "lr")
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        spatial_propagate(x.long(), gates, "lr")
    with pytest.raises(ValueError, match=r"mode must be one of \('clip', 'always'\), got 'max'"):
        normalize_gates(gates, "max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"normalize must be one of"):
        SpatialPropagation("none")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\(B, 4 \* 3 \* C, H, W\) = \(2, 36, 4, 5\) or "):
        SpatialPropagation()(x, torch.randn(2, 35, 4, 5))
    with pytest.raises(ValueError, match=r"\(B, 4 \* 3, H, W\) = \(2, 12, 4, 5\), got \(2, 36\)"):
        spatial_propagation(x, torch.randn(2, 36))


# --------------------------------------------------------------------------------------------
# the fused four-direction path
# --------------------------------------------------------------------------------------------


def _composed(x: Tensor, raw: Tensor, mode: str) -> Tensor:
    """normalize_gates + loop_propagate + torch.maximum, all through plain autograd."""
    per_direction = raw.unflatten(1, (4, 3, raw.shape[1] // 12))
    maps = [
        loop_propagate(x, normalize_gates(per_direction[:, d], mode), direction)
        for d, direction in enumerate(DIRECTIONS)
    ]
    out = maps[0]
    for h in maps[1:]:
        out = torch.maximum(out, h)
    return out


@BOTH
@pytest.mark.parametrize("mode", ["clip", "always"])
def test_module_backward_matches_autograd_composition(shared, mode):
    b, c, h, w = 2, 3, 6, 7
    gen = torch.Generator().manual_seed(12)
    x = torch.randn(b, c, h, w, generator=gen, dtype=torch.float64)
    raw = torch.randn(b, 12 if shared else 12 * c, h, w, generator=gen, dtype=torch.float64)
    upstream = torch.randn(b, c, h, w, generator=gen, dtype=torch.float64)
    results = []
    for fn in (lambda a, g: SpatialPropagation(mode)(a, g), lambda a, g: _composed(a, g, mode)):
        a, g = x.clone().requires_grad_(True), raw.clone().requires_grad_(True)
        out = fn(a, g)
        out.backward(upstream)
        results.append((out.detach(), a.grad, g.grad))
    for mine, theirs in zip(*results, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-12)


def test_gradcheck_normalize_gates():
    gates = torch.randn(2, 3, 2, 3, 4, dtype=torch.float64) * 2
    gates.requires_grad_(True)
    for mode in ("clip", "always"):
        assert torch.autograd.gradcheck(lambda g, m=mode: normalize_gates(g, m), (gates,))


def test_module_saves_no_normalised_gates():
    # x, the raw gates and the four hidden maps; no normalised gates, no per-line tensors.
    b, c, h, w = 1, 4, 16, 32
    x = torch.randn(b, c, h, w, requires_grad=True)
    raw = torch.randn(b, 12 * c, h, w, requires_grad=True)
    storages: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        SpatialPropagation()(x, raw)
    size = x.numel() * x.element_size()
    assert sum(storages.values()) == size * (1 + 12 + 4)


def test_module_ties_send_the_gradient_once():
    # Zero gates: all four directions return x and tie everywhere; the gradient of x must be the
    # upstream gradient exactly once (not once per tied direction).
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    raw = torch.zeros(2, 36, 5, 6, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    out = SpatialPropagation()(x, raw)
    out.backward(upstream)
    assert torch.equal(out, x.detach())
    assert torch.equal(x.grad, upstream)


def test_module_output_may_be_modified_in_place():
    x, _ = _inputs((1, 2, 4, 5), False, seed=13)
    raw = torch.randn(1, 24, 4, 5, dtype=torch.float64)
    a, g = x.clone().requires_grad_(True), raw.clone().requires_grad_(True)
    SpatialPropagation()(a, g).relu_().sum().backward()
    b, k = x.clone().requires_grad_(True), raw.clone().requires_grad_(True)
    _composed(b, k, "clip").relu().sum().backward()
    torch.testing.assert_close(a.grad, b.grad)
    torch.testing.assert_close(g.grad, k.grad)
