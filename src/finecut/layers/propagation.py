"""Spatial propagation network (SPN): linear three-way propagation of a feature map.

Implements the propagation layer of Liu et al., "Learning Affinity via Spatial Propagation
Networks", NIPS 2017 (supplementary material: ``seeds/001_*``; METHODS.md section 2). A map x is
scanned line by line; every pixel of the hidden map h mixes its own input with three neighbours
of the previous line, weighted by gates that a guidance network predicts:

    h[i, t] = (1 - g0 - g1 - g2) * x[i, t] + g0 * h[i-1, t-1] + g1 * h[i, t-1] + g2 * h[i+1, t-1]

(written for the left-to-right scan: t is the column, i the row, every gate taken at [i, t]).
Neighbours outside the image have gate 0 and drop out of both terms, so the first line is x.
Four directions, each with its own gates, are merged by an element-wise maximum.

Stability (Theorem 3 of the paper, proved in the seed with Gershgorin's theorem): write one step
as h_t = a_t * x_t + G_t h_{t-1} with G_t the tridiagonal matrix of the gates and
a_t = 1 - sum_k g_k. If sum_k |g_k| <= rho <= 1 at every pixel then every row of G_t has absolute
sum <= rho, so ||G_t||_inf <= rho and its eigenvalues lie in the unit disc: the propagation of
h is non-expansive in the max norm. With |a_t| <= 1 + rho this gives, for every line t,

    max|h_t| <= rho * max|h_{t-1}| + (1 + rho) * max|x_t|,

hence max|h| <= (1 + rho) / (1 - rho) * max|x| for rho < 1, and max|h_t| <= (2t + 1) * max|x|
(linear growth at most, never exponential) for rho = 1. Non-negative gates with sum <= 1 make
every h a convex combination of x, so h stays within [min x, max x]. :func:`normalize_gates`
enforces the condition: ``"clip"`` (the official PyTorch code) divides the gates by sum |g| where
that sum exceeds 1, ``"always"`` (the Caffe VOC model) divides by it everywhere (rho = 1).

Implementation. All four directions run one scan kernel on a ``(B, C, S, A)`` view of the data:
S is the scan axis, A the axis across the scan lines. Top-to-bottom uses the tensor as it is
(S = H, A = W: one step reads one row of every image and channel, contiguous runs of W values);
left-to-right works on the transposed map (the gates copied once into a contiguous
``(B, 3, C, W, H)``, S = W, A = H); the reversed directions walk the same view backwards. Each
step is three vectorised ``addcmul`` over a whole line of every image and channel, never a loop
over pixels. Measured for one direction on (4, 32, 512, 512) float32 (``python bench/spn.py
--layouts``): scanning rows 105 ms, scanning the last, contiguous axis directly (one strided column
per step) 1503 ms, scanning the first axis of contiguous ``(H, B, C, W)`` copies 297 ms with the
copies; on (1, 32, 256, 256): 7, 43 and 8 ms. Hence rows, and a transposed copy of the gates for
lr/rl rather than a column scan.

Backward. ``_PropagateFunction`` runs the directions, the optional gate normalisation and the
max merge with a hand-written backward: a reverse scan (one vectorised step per line) gives the
adjoint lam of h, from which the gradients of x and of the gates are computed for all lines at
once. It keeps x, the raw gates and one hidden map per direction, nothing per line, so
training memory is O(size of h); the normalised gates and the winner of the max are recomputed.
Scratch tensors are reused across the four directions (``_Workspace``): on the CPU a fresh
tensor of hundreds of MB costs more in page faults than the pass that fills it.
:func:`_scan_kernels` is the single place where a fused CUDA kernel would be dispatched for CUDA
tensors.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Literal

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

__all__ = [
    "DIRECTIONS",
    "SpatialPropagation",
    "normalize_gates",
    "spatial_propagate",
    "spatial_propagation",
]

logger = logging.getLogger(__name__)

Direction = Literal["lr", "rl", "tb", "bt"]
NormalizeMode = Literal["clip", "always"]

#: The four scan directions, in the order their gates appear in the guidance network's output.
DIRECTIONS: tuple[str, ...] = ("lr", "rl", "tb", "bt")
_NORMALIZE_MODES = ("clip", "always")
# "always" divides by sum |g|; where all gates are 0 the divisor is floored here (gates stay 0).
_ALWAYS_EPS = 1e-12

ScanFn = Callable[[Tensor, Tensor, Tensor, Tensor, bool, Tensor], Tensor]


# --------------------------------------------------------------------------------------------
# scan kernels: tensors are (..., S, A) with S the scan axis and A the axis across the lines
# --------------------------------------------------------------------------------------------


def _scan_lines(
    u: Tensor, g0: Tensor, g1: Tensor, g2: Tensor, reverse: bool, out: Tensor
) -> Tensor:
    """Forward scan h_t = u_t + g0_t * h_{t-1}[i-1] + g1_t * h_{t-1}[i] + g2_t * h_{t-1}[i+1].

    One vectorised step per line. u already holds (1 - sum g) * x and equals x on the first line.
    The result is written to ``out`` (contiguous lines are fastest) and returned.

    Shape:
        - u: (..., S, A); gates: broadcastable to u over the leading dimensions.
        - out: (..., S, A)
    """
    h = out
    rows = h.unbind(-2)
    rows_lo, rows_hi = h[..., :-1].unbind(-2), h[..., 1:].unbind(-2)
    u_rows, g1_rows = u.unbind(-2), g1.unbind(-2)
    g0_rows, g2_rows = g0[..., 1:].unbind(-2), g2[..., :-1].unbind(-2)
    order = range(len(rows) - 1, -1, -1) if reverse else range(len(rows))
    step = 1 if reverse else -1  # offset of the previous line
    first = True
    for t in order:
        if first:
            rows[t].copy_(u_rows[t])
            first = False
            continue
        p = t + step
        torch.addcmul(u_rows[t], g1_rows[t], rows[p], out=rows[t])
        rows_hi[t].addcmul_(g0_rows[t], rows_lo[p])  # h[i] += g0[i] * h_prev[i-1], i >= 1
        rows_lo[t].addcmul_(g2_rows[t], rows_hi[p])  # h[i] += g2[i] * h_prev[i+1], i <= A-2
    return h


def _reverse_scan_lines(
    grad_h: Tensor, g0: Tensor, g1: Tensor, g2: Tensor, reverse: bool, out: Tensor
) -> Tensor:
    """Adjoint of :func:`_scan_lines`: lam_t = grad_t + sum_k S_k^T (g_k,next * lam_next).

    Walks the lines in the opposite order of the forward scan, one vectorised step per line.
    lam, the total derivative of the loss with respect to h, is written to ``out`` and returned.

    Shape:
        - grad_h: (..., S, A); gates: broadcastable to grad_h over the leading dimensions.
        - out: (..., S, A)
    """
    lam = out
    rows = lam.unbind(-2)
    rows_lo, rows_hi = lam[..., :-1].unbind(-2), lam[..., 1:].unbind(-2)
    grad_rows, g1_rows = grad_h.unbind(-2), g1.unbind(-2)
    g0_rows, g2_rows = g0[..., 1:].unbind(-2), g2[..., :-1].unbind(-2)
    # The forward scan's last line comes first here.
    order = range(len(rows)) if reverse else range(len(rows) - 1, -1, -1)
    step = -1 if reverse else 1  # offset of the next line of the forward scan
    first = True
    for t in order:
        if first:
            rows[t].copy_(grad_rows[t])
            first = False
            continue
        n = t + step
        torch.addcmul(grad_rows[t], g1_rows[n], rows[n], out=rows[t])
        rows_lo[t].addcmul_(g0_rows[n], rows_hi[n])  # h_n[i] used h_t[i-1] with g0_n[i]
        rows_hi[t].addcmul_(g2_rows[n], rows_lo[n])  # h_n[i] used h_t[i+1] with g2_n[i]
    return lam


def _scan_kernels(device: torch.device) -> tuple[ScanFn, ScanFn]:
    """The one dispatch point of the scan: (forward scan, reverse scan) for tensors on ``device``.

    Only the vectorised torch kernels exist; a fused CUDA/Triton pair with the same signatures
    (one thread per line position, looping over the scan axis) would be returned here for
    ``device.type == "cuda"``.
    """
    del device  # no device-specific kernel yet
    return _scan_lines, _reverse_scan_lines


# --------------------------------------------------------------------------------------------
# autograd function: one or several directions, optional gate normalisation, max merge
# --------------------------------------------------------------------------------------------

# direction -> (reverse: scan from the last line, transpose: scan the columns of the map)
_LAYOUT: dict[str, tuple[bool, bool]] = {
    "lr": (False, True),
    "rl": (True, True),
    "tb": (False, False),
    "bt": (True, False),
}


def _to_scan_view(t: Tensor, transpose: bool) -> Tensor:
    """(..., H, W) -> (..., S, A): the map itself for tb/bt, its transpose for lr/rl (a view)."""
    return t.transpose(-1, -2) if transpose else t


def _gate_total(gates: Tensor, mode: str, dim: int) -> tuple[Tensor, Tensor]:
    """sum_k |g_k| along ``dim`` and the scale 1 / max(sum, floor) of :func:`normalize_gates`."""
    # a sum of |slices|: reducing the short, strided neighbour axis with .sum(dim) is slower on
    # CPU, and linalg.vector_norm(ord=1) is about 10x slower
    parts = gates.unbind(dim)
    total = parts[0].abs()
    for part in parts[1:]:
        total = total + part.abs()
    total = total.unsqueeze(dim)
    return total, total.clamp_min(_floor(mode)).reciprocal()


def _floor(mode: str) -> float:
    return 1.0 if mode == "clip" else _ALWAYS_EPS


class _Workspace:
    """Scratch tensors reused across the directions of one call.

    A fresh CPU tensor of hundreds of MB costs several times its first write in page faults
    (measured: 134 ms to allocate and fill 400 MB against 20 ms to refill it), so scratch space
    is allocated once per call and viewed in whatever shape a direction needs.
    """

    def __init__(self, like: Tensor) -> None:
        self._like = like
        self._buffers: dict[str, Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype | None = None) -> Tensor:
        numel = 1
        for n in shape:
            numel *= n
        buffer = self._buffers.get(name)
        if buffer is None or buffer.numel() < numel:
            buffer = self._like.new_empty(numel, dtype=dtype)
            self._buffers[name] = buffer
        return buffer[:numel].view(shape)


def _scale_into(raw: Tensor, mode: str, ws: _Workspace) -> tuple[Tensor, Tensor]:
    """No-grad :func:`_gate_total` into workspace buffers: (sum_k |g_k|, 1 / max(sum, floor)).

    Shape:
        - raw: (B, 3, Cg, H, W)
        - Output: two (B, 1, Cg, H, W) tensors
    """
    parts = raw.unbind(1)
    shape = (raw.shape[0], 1, *raw.shape[2:])
    total, scale = ws.get("total", shape), ws.get("scale", shape)
    tmp = ws.get("abs", parts[0].shape)
    torch.abs(parts[0], out=total[:, 0])
    for part in parts[1:]:
        total[:, 0].add_(torch.abs(part, out=tmp))
    torch.clamp_min(total, _floor(mode), out=scale).reciprocal_()
    return total, scale


def _load_gates(
    raw: Tensor, normalize: str | None, transpose: bool, ws: _Workspace
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Gates of one direction in scan layout (contiguous), normalised when ``normalize`` is set.

    Returns the gates and, when normalised, sum |g| and the scale (stored layout).
    """
    raw_s = _to_scan_view(raw, transpose)
    if normalize is None and raw_s.is_contiguous():
        return raw_s, None, None
    gates = ws.get("gates", tuple(raw_s.shape))
    if normalize is None:
        gates.copy_(raw_s)
        return gates, None, None
    total, scale = _scale_into(raw, normalize, ws)
    torch.mul(raw_s, _to_scan_view(scale, transpose), out=gates)
    return gates, total, scale


def _gate_terms(
    gates: Tensor, reverse: bool, ws: _Workspace
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Split scan-layout gates (B, 3, Cg, S, A) into g0, g1, g2 and s = sum of in-image gates.

    s is the sum of the gates whose neighbour lies inside the image (0 on the first line), so
    that (1 - s) is the weight of x at every pixel.
    """
    g0, g1, g2 = gates.unbind(1)
    s = ws.get("s", tuple(g1.shape)).copy_(g1)
    s[..., 1:] += g0[..., 1:]
    s[..., :-1] += g2[..., :-1]
    if s.shape[-2] > 0:
        s.select(-2, -1 if reverse else 0).zero_()
    return g0, g1, g2, s


def _merge_max(hidden: list[Tensor], transposed: list[bool], out: Tensor, ws: _Workspace) -> Tensor:
    """Element-wise maximum of two or more hidden maps (scan layouts), written to ``out``.

    The maps in the same layout are reduced first, so that only one operation reads a
    transposed layout (a strided, unvectorised pass).

    Shape:
        - hidden: D maps, (B, C, H, W) or, where ``transposed``, (B, C, W, H)
        - out: (B, C, H, W)
    """
    plain = [h for h, t in zip(hidden, transposed, strict=True) if not t]
    flipped = [h for h, t in zip(hidden, transposed, strict=True) if t]
    if len(flipped) > 1:
        acc = torch.maximum(flipped[0], flipped[1], out=ws.get("merge", tuple(flipped[0].shape)))
        for h in flipped[2:]:
            torch.maximum(acc, h, out=acc)
        flipped = [acc]
    maps = plain + [h.transpose(-1, -2) for h in flipped]
    torch.maximum(maps[0], maps[1], out=out)
    for h in maps[2:]:
        torch.maximum(out, h, out=out)
    return out


def _winner_masks(hidden: list[Tensor], transposed: list[bool], ws: _Workspace) -> Iterator[Tensor]:
    """For each map in turn, where it is the maximum (the first of them where several tie).

    Recomputed in the backward pass from the saved maps, so the forward pass stores no index and
    the caller may modify the merged output in place. Each mask (stored (B, C, H, W) layout) is
    valid until the next one.
    """
    maps = [_to_scan_view(h, t) for h, t in zip(hidden, transposed, strict=True)]
    shape = tuple(maps[0].shape)
    merged = _merge_max(hidden, transposed, ws.get("merged", shape), ws)
    taken = ws.get("taken", shape, torch.bool)
    for d, h in enumerate(maps):
        mask = torch.eq(h, merged, out=ws.get("mask", shape, torch.bool))
        if d > 0:
            mask.logical_and_(taken.logical_not())
        yield mask
        if d == 0:
            taken.copy_(mask)
        else:
            taken.logical_or_(mask)


class _PropagateFunction(torch.autograd.Function):
    """Propagation in one or several directions, merged by max, with a hand-written backward.

    forward(x, gates, directions, normalize): x (B, C, H, W); gates (B, D, 3, Cg, H, W) raw, one
    set per direction in ``directions``; ``normalize`` None or a :func:`normalize_gates` mode.

    Saves x, the raw gates and the D hidden maps: nothing per line, so the memory kept for the
    backward pass is O(size of h). The normalised gates and the winner of the max are recomputed
    in the backward pass instead of being stored.
    """

    @staticmethod
    def forward(ctx, x: Tensor, gates: Tensor, directions: tuple[str, ...], normalize):
        scan, _ = _scan_kernels(x.device)
        ws = _Workspace(x)
        hidden = []
        for d, direction in enumerate(directions):
            reverse, transpose = _LAYOUT[direction]
            gates_s, _, _ = _load_gates(gates[:, d], normalize, transpose, ws)
            g0, g1, g2, s = _gate_terms(gates_s, reverse, ws)
            x_s = _to_scan_view(x, transpose)
            # (1 - s) * x (= x on the first line), written in scan layout: contiguous lines
            u = torch.addcmul(x_s, s, x_s, value=-1, out=ws.get("u", tuple(x_s.shape)))
            hidden.append(scan(u, g0, g1, g2, reverse, x.new_empty(x_s.shape)))
        transposed = [_LAYOUT[direction][1] for direction in directions]
        if len(hidden) == 1:
            out = _to_scan_view(hidden[0], transposed[0]).contiguous()
        else:
            out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
            _merge_max(hidden, transposed, out, ws)
        del ws
        ctx.save_for_backward(x, gates, *hidden)
        ctx.directions = directions
        ctx.normalize = normalize
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        x, gates, *hidden = ctx.saved_tensors
        need_x, need_gates = ctx.needs_input_grad[:2]
        _, reverse_scan = _scan_kernels(grad_out.device)
        ws = _Workspace(x)
        grad_x = torch.zeros(x.shape, dtype=x.dtype, device=x.device) if need_x else None
        grad_gates = None
        if need_gates:
            grad_gates = torch.empty(gates.shape, dtype=gates.dtype, device=gates.device)
        zero = grad_out.new_zeros(())
        layouts = [_LAYOUT[direction] for direction in ctx.directions]
        transposed = [t for _, t in layouts]
        masks = _winner_masks(hidden, transposed, ws) if len(hidden) > 1 else None
        for d, (h_s, (reverse, transpose)) in enumerate(zip(hidden, layouts, strict=True)):
            shape = tuple(h_s.shape)
            grad_s = _to_scan_view(grad_out, transpose)
            grad_h = ws.get("grad_h", shape)  # gradient of this direction's map, scan layout
            if masks is None:
                grad_h.copy_(grad_s)
            else:
                torch.where(_to_scan_view(next(masks), transpose), grad_s, zero, out=grad_h)
            gates_s, total, scale = _load_gates(gates[:, d], ctx.normalize, transpose, ws)
            g0, g1, g2, s = _gate_terms(gates_s, reverse, ws)
            lam = reverse_scan(grad_h, g0, g1, g2, reverse, ws.get("lam", shape))
            if grad_x is not None:  # += (1 - s) * lam
                _to_scan_view(grad_x, transpose).add_(lam).addcmul_(s, lam, value=-1)
            if grad_gates is None:
                continue
            x_s = _to_scan_view(x, transpose)
            target = _to_scan_view(grad_gates[:, d], transpose)
            if transpose:  # compute in contiguous scan layout, one transposed copy at the end
                x_s = ws.get("x", shape).copy_(x_s)
                target = ws.get("grad_gates", tuple(gates_s.shape))
            _gates_grad(lam, x_s, h_s, reverse, target, ws)
            if ctx.normalize is not None:
                assert total is not None and scale is not None
                _normalize_backward(
                    target,
                    gates_s,
                    _to_scan_view(gates[:, d], transpose),
                    _to_scan_view(total, transpose),
                    _to_scan_view(scale, transpose),
                    ctx.normalize,
                    ws,
                )
            if transpose:
                _to_scan_view(grad_gates[:, d], transpose).copy_(target)
        return grad_x, grad_gates, None, None


def _gates_grad(lam: Tensor, x: Tensor, h: Tensor, reverse: bool, out: Tensor, ws: _Workspace):
    """Write d loss / d g_k[t] = lam_t * (S_k h_{t-1} - x_t) into ``out``.

    Entries whose neighbour lies outside the image (first line, first/last position across)
    are set to 0.

    Shape:
        - lam, x, h: (B, C, S, A) in scan layout (any strides).
        - out: (B, 3, Cg, S, A), Cg in {1, C}; summed over the channels when Cg == 1 < C.
    """
    channels, length = lam.shape[1], lam.shape[2]
    if length == 0 or lam.shape[3] == 0:
        out.zero_()
        return
    out.select(-2, -1 if reverse else 0).zero_()  # first line: no previous line
    out[:, 0, ..., 0].zero_()  # neighbour i-1 of position 0 is outside
    out[:, 2, ..., -1].zero_()  # neighbour i+1 of position A-1 is outside
    if length < 2:
        return
    cur, prev = (slice(0, -1), slice(1, None)) if reverse else (slice(1, None), slice(0, -1))
    lam_c, x_c, h_p = lam[..., cur, :], x[..., cur, :], h[..., prev, :]
    shared = out.shape[2] == 1 and channels > 1
    terms = (
        (0, (slice(1, None), slice(0, -1))),  # neighbour i-1: targets i >= 1 read h[i-1]
        (1, (slice(None), slice(None))),
        (2, (slice(0, -1), slice(1, None))),  # neighbour i+1: targets i <= A-2 read h[i+1]
    )
    for k, (dst, src) in terms:
        target = out[:, k, :, cur, dst]
        lam_k = lam_c[..., dst]
        if shared:
            term = torch.sub(h_p[..., src], x_c[..., dst], out=ws.get("term", tuple(lam_k.shape)))
            target.copy_(term.mul_(lam_k).sum(1, keepdim=True))
        else:
            torch.sub(h_p[..., src], x_c[..., dst], out=target).mul_(lam_k)


def _normalize_backward(
    grad: Tensor,
    normed: Tensor,
    raw: Tensor,
    total: Tensor,
    scale: Tensor,
    mode: str,
    ws: _Workspace,
) -> None:
    """Chain d loss / d n (n = g * r, r = 1 / max(sum_k |g_k|, floor)) back to the raw gates.

    d loss / d g_j = r * (grad_j - sgn(g_j) * [sum |g| > floor] * sum_k grad_k * n_k), written
    over ``grad`` (which holds d loss / d n on entry).

    Shape:
        - grad, normed, raw: (B, 3, Cg, S, A) (any strides)
        - total, scale: (B, 1, Cg, S, A)
    """
    dot = ws.get("dot", tuple(scale.shape)).zero_()
    for k in range(grad.shape[1]):
        dot.addcmul_(grad[:, k : k + 1], normed[:, k : k + 1])
    dot.masked_fill_(total <= _floor(mode), 0)
    tmp = ws.get("sgn", tuple(raw[:, 0].shape))
    for k in range(grad.shape[1]):
        grad[:, k].addcmul_(torch.sgn(raw[:, k], out=tmp), dot[:, 0], value=-1)
    grad.mul_(scale)


# --------------------------------------------------------------------------------------------
# public functions
# --------------------------------------------------------------------------------------------


def _check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")


def _check_x(x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"x must have shape (B, C, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")


def _check_like(x: Tensor, gates: Tensor) -> None:
    if not isinstance(gates, Tensor):
        raise TypeError(f"gates must be a torch.Tensor, got {type(gates).__name__}")
    if gates.dtype != x.dtype or gates.device != x.device:
        raise ValueError(
            f"gates must have the dtype and device of x ({x.dtype}, {x.device}), "
            f"got {gates.dtype}, {gates.device}"
        )


def spatial_propagate(x: Tensor, gates: Tensor, direction: Direction) -> Tensor:
    """Linear three-way spatial propagation of x in one direction (Liu et al., NIPS 2017).

    Gates are used as given (see :func:`normalize_gates` for the stability condition). They are
    stored at the current pixel; index k = 0, 1, 2 is the neighbour at offset -1, 0, +1 across the
    scan line, in the line scanned just before. Offsets across always count up the row or column
    index, whatever the scan direction:

    - ``"lr"`` (t = column, increasing): h[i, t] = (1 - g0 - g1 - g2) * x[i, t]
      + g0 * h[i-1, t-1] + g1 * h[i, t-1] + g2 * h[i+1, t-1]
    - ``"rl"`` (t = column, decreasing): the same with t+1 in place of t-1.
    - ``"tb"`` (t = row, increasing): h[t, j] = (1 - g0 - g1 - g2) * x[t, j]
      + g0 * h[t-1, j-1] + g1 * h[t-1, j] + g2 * h[t-1, j+1]
    - ``"bt"`` (t = row, decreasing): the same with t+1 in place of t-1.

    Every g is taken at the current pixel ([i, t] or [t, j]) and channel. A neighbour outside the
    image counts with gate 0 in both terms: on the top/bottom row (lr, rl) or the left/right column
    (tb, bt) g0 resp. g2 is ignored, and the first scanned line passes x through unchanged.

    Args:
        x: input map.
        gates: propagation weights, one set per channel or one set shared by all channels; same
            dtype and device as x. Any real values are accepted; the output is bounded when
            sum_k |g_k| <= 1 at every pixel (Theorem 3).
        direction: one of ``"lr"``, ``"rl"``, ``"tb"``, ``"bt"``.

    Returns:
        The hidden map h, contiguous, with the dtype and device of x.

    Shape:
        - x: (B, C, H, W)
        - gates: (B, 3, C, H, W), or (B, 3, H, W) (equivalently (B, 3, 1, H, W)) shared by all
          channels
        - Output: (B, C, H, W)
    """
    _check_x(x)
    _check_like(x, gates)
    _check_direction(direction)
    b, c, height, width = x.shape
    given = tuple(gates.shape)
    if gates.dim() == 4:
        gates = gates.unsqueeze(2)
    if (
        gates.dim() != 5
        or gates.shape[:2] != (b, 3)
        or gates.shape[2] not in (1, c)
        or (gates.shape[3:] != (height, width))
    ):
        raise ValueError(
            f"gates must have shape (B, 3, C, H, W) = ({b}, 3, {c}, {height}, {width}) or "
            f"(B, 3, H, W) = ({b}, 3, {height}, {width}), got {given}"
        )
    return _PropagateFunction.apply(x, gates.unsqueeze(1), (direction,), None)


def normalize_gates(gates: Tensor, mode: NormalizeMode = "clip", dim: int = 1) -> Tensor:
    """Normalise propagation gates so that sum_k |g_k| <= 1 (Theorem 3 of Liu et al., 2017).

    ``"clip"`` divides by sum_k |g_k| only where it exceeds 1 (the official PyTorch code),
    ``"always"`` divides by it everywhere (the Caffe VOC model; pixels whose gates are all 0 keep
    gates 0).

    Args:
        gates: raw gates, the three neighbours along ``dim``.
        mode: ``"clip"`` or ``"always"``.
        dim: the neighbour axis (of size 3 for :func:`spatial_propagate`; any size is accepted).

    Returns:
        Gates of the same shape, dtype and device.

    Shape:
        - gates: any, e.g. (B, 3, C, H, W) or (B, 3, H, W) with ``dim=1``
        - Output: same as gates
    """
    if not isinstance(gates, Tensor):
        raise TypeError(f"gates must be a torch.Tensor, got {type(gates).__name__}")
    if mode not in _NORMALIZE_MODES:
        raise ValueError(f"mode must be one of {_NORMALIZE_MODES}, got {mode!r}")
    _, scale = _gate_total(gates, mode, dim)
    return gates * scale


def spatial_propagation(x: Tensor, gates: Tensor, normalize: NormalizeMode = "clip") -> Tensor:
    """Four-direction spatial propagation merged by element-wise max (Liu et al., NIPS 2017).

    The raw gates of a guidance network are normalised per direction with
    :func:`normalize_gates` (``normalize``), x is propagated with :func:`spatial_propagate` in the
    directions ``"lr"``, ``"rl"``, ``"tb"``, ``"bt"`` and the four hidden maps are merged by their
    element-wise maximum (where several directions tie, the gradient goes to the first of them in
    that order). Equal to composing :func:`normalize_gates`, :func:`spatial_propagate` and
    ``torch.maximum``, but one autograd node that stores no normalised gates.

    Channel order of ``gates``: direction-major, then neighbour k, then channel c, i.e. channel
    ``(d * 3 + k) * C + c`` holds gate k (offset k - 1 across the scan line) of channel c for
    direction ``DIRECTIONS[d]``; with gates shared by all channels it is channel ``d * 3 + k``.

    Args:
        x: input map.
        gates: raw gates from the guidance network, same dtype and device as x.
        normalize: ``"clip"`` (official PyTorch code) or ``"always"`` (Caffe VOC model).

    Returns:
        The merged hidden map.

    Shape:
        - x: (B, C, H, W)
        - gates: (B, 4 * 3 * C, H, W), or (B, 4 * 3, H, W) shared by all channels
        - Output: (B, C, H, W)
    """
    _check_x(x)
    _check_like(x, gates)
    if normalize not in _NORMALIZE_MODES:
        raise ValueError(f"normalize must be one of {_NORMALIZE_MODES}, got {normalize!r}")
    b, c, height, width = x.shape
    n = len(DIRECTIONS)
    if (
        gates.dim() != 4
        or gates.shape[0] != b
        or gates.shape[1] not in (n * 3 * c, n * 3)
        or (gates.shape[2:] != (height, width))
    ):
        raise ValueError(
            f"gates must have shape (B, 4 * 3 * C, H, W) = ({b}, {n * 3 * c}, {height}, {width}) "
            f"or (B, 4 * 3, H, W) = ({b}, {n * 3}, {height}, {width}), got {tuple(gates.shape)}"
        )
    per_direction = gates.unflatten(1, (n, 3, gates.shape[1] // (n * 3)))
    return _PropagateFunction.apply(x, per_direction, DIRECTIONS, normalize)


class SpatialPropagation(nn.Module):
    """Four-direction spatial propagation unit of an SPN (Liu et al., NIPS 2017).

    Thin wrapper of :func:`spatial_propagation`; has no parameters (the gates come from a guidance
    network). See :func:`spatial_propagation` for the channel order of the gates.

    Args:
        normalize: gate normalisation, ``"clip"`` (divide by sum |g| where it exceeds 1, the
            official PyTorch code) or ``"always"`` (always divide by sum |g|, the Caffe VOC model).

    Shape:
        - x: (B, C, H, W)
        - gates: (B, 4 * 3 * C, H, W), or (B, 4 * 3, H, W) shared by all channels
        - Output: (B, C, H, W)
    """

    def __init__(self, normalize: NormalizeMode = "clip") -> None:
        super().__init__()
        if normalize not in _NORMALIZE_MODES:
            raise ValueError(f"normalize must be one of {_NORMALIZE_MODES}, got {normalize!r}")
        self.normalize = normalize

    def forward(self, x: Tensor, gates: Tensor) -> Tensor:
        return spatial_propagation(x, gates, self.normalize)

    def extra_repr(self) -> str:
        return f"normalize={self.normalize!r}"
