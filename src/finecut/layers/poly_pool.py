"""Polynomial pooling (P-pooling).

Implements the pooling of Wei et al., "Building Detail-Sensitive Semantic Segmentation Networks
with Polynomial Pooling", CVPR 2019 (supplementary material: ``seeds/003_*``). Over every window
R_j the output is

    y_j = sum_{i in R_j} x_i^(p+1) / sum_{i in R_j} x_i^p,

a weighted mean of the window with weights x_i^p: p = 0 is average pooling and p -> inf is max
pooling, in the forward and the backward pass (Propositions 1 and 2 of the seed). p may be one
number, one per channel (a learnable parameter) or one per channel and output location, predicted
from the input by a small side branch as in the authors' code.

Numerics. x^p overflows float32 long before p = 110, so every window is normalised by its maximum
m: with r_i = x_i / m in [0, 1] and w_i = r_i^p in [0, 1],

    y = sum(w_i * x_i) / sum(w_i),    sum(w_i) >= 1 (the maximum has w = 1),

which neither overflows nor divides by zero for any p >= 0. y is a convex combination of the
window, so it never exceeds the window maximum. The gradient is computed by a custom
``torch.autograd.Function`` (see ``_PolyPoolFunction``) that keeps one window-sized tensor for the
backward pass and treats m as a constant, which is exact because y is positively homogeneous of
degree 1 in x.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from numbers import Real
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

__all__ = ["PolyPool2d", "poly_pool2d"]

# In the derivative w.r.t. p, log(x / m) is floored at log(_LOG_FLOOR): finite at x = 0. The
# reference floors log(x) at log(1e-3) in absolute units; the floor here is relative to the window
# maximum, which keeps the layer scale-equivariant (y(c * x) = c * y(x)).
_LOG_FLOOR = 1e-3
_LOG_FLOOR_LN = math.log(_LOG_FLOOR)
# In the derivative w.r.t. x, the factor (x / m)^(p - 1) is capped at _MAX_SLOPE: it is at most 1
# for p >= 1 (cap never active) and tends to infinity at x -> 0 for 0 < p < 1.
_MAX_SLOPE = 1e3

_Pair = int | tuple[int, int]


def _pair(value: _Pair, name: str, minimum: int) -> tuple[int, int]:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        pair = (value, value)
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        pair = (value[0], value[1])
    else:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return pair


def _combine(
    t: Tensor, dim: int, first: Callable[[Tensor, Tensor], Tensor], inplace: Callable
) -> Tensor:
    """Reduce a small dimension by combining its slices with elementwise ops (vectorised)."""
    n = t.shape[dim]
    if n == 1:
        return t.select(dim, 0).clone()
    acc = first(t.select(dim, 0), t.select(dim, 1))
    for i in range(2, n):
        inplace(acc, t.select(dim, i))
    return acc


def _max_(acc: Tensor, t: Tensor) -> None:
    torch.maximum(acc, t, out=acc)


class _BlockLayout:
    """Non-overlapping windows (stride == kernel, no padding) as a (B, C, Ho, kh, Wo, kw) view.

    Nothing is copied or unfolded: reductions over a window combine slices of this view with
    elementwise ops. Rows and columns that do not fill a whole window are dropped, as in
    max_pool2d (floor mode).
    """

    def __init__(self, shape: torch.Size, kernel: tuple[int, int]) -> None:
        self.shape = shape
        self.kh, self.kw = kernel
        self.ho, self.wo = shape[2] // self.kh, shape[3] // self.kw
        self.cropped = (self.ho * self.kh, self.wo * self.kw) != tuple(shape[2:])

    def windows(self, x: Tensor) -> Tensor:
        if self.cropped:
            x = x[:, :, : self.ho * self.kh, : self.wo * self.kw]
        return x.unflatten(3, (self.wo, self.kw)).unflatten(2, (self.ho, self.kh))

    def expand(self, o: Tensor) -> Tensor:
        """Broadcast an output-sized (B|1, C|1, Ho|1, Wo|1) tensor over the windows."""
        if self.kw == 2 and o.shape[-1] > 1 and o.is_floating_point():
            # Broadcasting over runs of 2 elements is slow (no vectorisation): repeat along the
            # width first (nearest upsampling by 2 is an exact index shift), so that full-size
            # ops broadcast over whole rows only.
            o = F.interpolate(o, size=(o.shape[2], 2 * o.shape[3]), mode="nearest")
            return o.unflatten(3, (self.wo, 2)).unsqueeze(3)
        return o[:, :, :, None, :, None]

    def max(self, t: Tensor) -> Tensor:
        return _combine(_combine(t, 3, torch.maximum, _max_), 4, torch.maximum, _max_)

    def sum(self, t: Tensor) -> Tensor:
        return _combine(_combine(t, 3, torch.add, Tensor.add_), 4, torch.add, Tensor.add_)

    def dot(self, a: Tensor, b: Tensor) -> Tensor:
        acc = a.select(3, 0) * b.select(3, 0)
        for i in range(1, self.kh):
            acc.addcmul_(a.select(3, i), b.select(3, i))
        return _combine(acc, 4, torch.add, Tensor.add_)

    def valid(self, like: Tensor) -> Tensor | None:
        return None

    def grad_buffer(self, xw: Tensor) -> tuple[Tensor, Tensor]:
        """(gradient of the whole input, its window view to fill)."""
        b, c, h, w = self.shape
        make = torch.zeros if self.cropped else torch.empty
        gx = make((b, c, h, w), dtype=xw.dtype, device=xw.device)
        return gx, self.windows(gx)

    def finish(self, gx: Tensor, gw: Tensor) -> Tensor:
        return gx


class _UnfoldLayout:
    """General windows (any stride, padding) as unfolded columns of shape (B, C, kh * kw, L)."""

    def __init__(
        self,
        shape: torch.Size,
        kernel: tuple[int, int],
        stride: tuple[int, int],
        padding: tuple[int, int],
    ) -> None:
        self.shape = shape
        self.kernel, self.stride, self.padding = kernel, stride, padding
        self.ho = (shape[2] + 2 * padding[0] - kernel[0]) // stride[0] + 1
        self.wo = (shape[3] + 2 * padding[1] - kernel[1]) // stride[1] + 1
        self.k = kernel[0] * kernel[1]

    def _unfold(self, x: Tensor) -> Tensor:
        b, c = x.shape[:2]
        cols = F.unfold(x, self.kernel, padding=self.padding, stride=self.stride)
        return cols.view(b, c, self.k, self.ho * self.wo)

    def windows(self, x: Tensor) -> Tensor:
        return self._unfold(x)

    def expand(self, o: Tensor) -> Tensor:
        return o.flatten(2).unsqueeze(2)

    def _out(self, t: Tensor) -> Tensor:
        return t.view(t.shape[0], t.shape[1], self.ho, self.wo)

    def max(self, t: Tensor) -> Tensor:
        return self._out(t.amax(2))

    def sum(self, t: Tensor) -> Tensor:
        return self._out(t.sum(2))

    def dot(self, a: Tensor, b: Tensor) -> Tensor:
        acc = a[:, :, 0] * b[:, :, 0]
        for i in range(1, self.k):
            acc.addcmul_(a[:, :, i], b[:, :, i])
        return self._out(acc)

    def valid(self, like: Tensor) -> Tensor | None:
        """1 where a window element lies inside the input, 0 on padding (None without padding)."""
        if self.padding == (0, 0):
            return None
        ones = like.new_ones((1, 1, *self.shape[2:]))
        return self._unfold(ones)

    def grad_buffer(self, xw: Tensor) -> tuple[None, Tensor]:
        return None, torch.empty_like(xw)

    def finish(self, gx: None, gw: Tensor) -> Tensor:
        b, c, h, w = self.shape
        return F.fold(
            gw.view(b, c * self.k, -1),
            (h, w),
            self.kernel,
            padding=self.padding,
            stride=self.stride,
        )


_Layout = _BlockLayout | _UnfoldLayout


class _PolyPoolFunction(torch.autograd.Function):
    """P-pooling of a non-negative input; see the module docstring for the formulas.

    Saved for backward: the window view of the input (a view of the input itself on the
    non-overlapping path) and the weights w = (x / m)^p, plus a few output-sized tensors.
    """

    @staticmethod
    def forward(ctx, x: Tensor, p: float | Tensor, layout: _Layout) -> Tensor:
        tiny = torch.finfo(x.dtype).tiny
        xw = layout.windows(x)
        m = layout.max(xw)
        m_safe = m.clamp_min(tiny)  # all-zero windows: r = 0 / tiny = 0 instead of 0 / 0
        w = torch.empty(xw.shape, dtype=x.dtype, device=x.device)
        torch.div(xw, layout.expand(m_safe), out=w)  # r = x / m in [0, 1]
        # w = r^p = exp(p * log r). r is floored at the smallest normal number: log(0) would give
        # 0 * -inf = NaN at p = 0, and log is several times slower on zeros than on normals.
        w.clamp_min_(tiny).log_()
        # A learned p needs log r again in backward (dy/dp); keeping it (floored as there) costs
        # one more window-sized tensor and saves recomputing x / m and the log, the dearest op.
        log_r = w.clamp_min(_LOG_FLOOR_LN) if ctx.needs_input_grad[1] else None
        w.mul_(p if isinstance(p, float) else layout.expand(p)).exp_()
        valid = layout.valid(w)
        if valid is not None:
            w.mul_(valid)  # padding is not part of the window (matters at p = 0, where 0^0 = 1)
        s0 = layout.sum(w).clamp_min_(1.0)  # >= 1 unless the window is all zeros
        y = layout.dot(w, xw).div_(s0)
        torch.minimum(y, m, out=y)  # a convex combination: guard against a last-ulp excess
        p_tensor = p if isinstance(p, Tensor) else None
        ctx.save_for_backward(xw, w, m_safe, s0, y, p_tensor, log_r)
        ctx.p_float = p if p_tensor is None else None
        ctx.layout = layout
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        xw, w, m_safe, s0, y, p_tensor, log_r = ctx.saved_tensors
        p = ctx.p_float if p_tensor is None else p_tensor
        layout: _Layout = ctx.layout
        need_x, need_p = ctx.needs_input_grad[:2]
        gs = gy / s0
        if need_x:
            gx, gw = layout.grad_buffer(xw)
        else:
            gx, gw = None, torch.empty_like(w)
        grad_x = grad_p = None
        if need_p:
            # dy/dp = sum(w * log(r) * (x - y)) / sum(w), log r floored at log(_LOG_FLOOR)
            torch.mul(log_r, w, out=gw)
            dydp_s0 = layout.dot(gw, xw).sub_(layout.sum(gw).mul_(y))
            grad_p = (gs * dydp_s0).sum_to_size(p_tensor.shape)
        if need_x:
            # dy/dx = ((p + 1) * w - p * y * r^(p - 1) / m) / sum(w), with r^(p - 1) / m = w / x
            # for x > 0; at x = 0 the floored x gives a finite value.
            torch.clamp(xw, min=torch.finfo(w.dtype).tiny, out=gw)
            torch.div(w, gw, out=gw)
            some_p_below_1 = p < 1 if isinstance(p, float) else bool((p < 1).any())
            if some_p_below_1:  # r^(p - 1) -> inf as x -> 0: cap it (r^(p - 1) <= 1 for p >= 1)
                torch.minimum(gw, layout.expand(_MAX_SLOPE / m_safe), out=gw)
            if isinstance(p, float) and p == 1.0:
                gw.copy_(layout.expand(1.0 / m_safe))  # r^0 = 1, also at x = 0
            elif isinstance(p, Tensor) and bool((p == 1).any()):
                is_one = layout.expand(p == 1)
                torch.where(is_one, layout.expand(1.0 / m_safe), gw, out=gw)
            gw.mul_(layout.expand(gs * p * y).neg_()).addcmul_(w, layout.expand(gs * (p + 1)))
            grad_x = layout.finish(gx, gw)
        return grad_x, grad_p, None


def _check_p(p: float | Tensor, x: Tensor, out_hw: tuple[int, int]) -> float | Tensor:
    """Validate p and bring it to a float or a 4-D tensor broadcastable to the output."""
    b, c = x.shape[:2]
    expected = (
        f"expected p as a float, a 0-d tensor, a ({c},) tensor (per channel) or a "
        f"({b}, {c}, {out_hw[0]}, {out_hw[1]}) tensor (per output location)"
    )
    if isinstance(p, Real) and not isinstance(p, bool):
        p = float(p)
        if not math.isfinite(p) or p < 0:
            raise ValueError(f"p must be a finite number >= 0, got {p}")
        return p
    if not isinstance(p, Tensor):
        raise TypeError(f"{expected}, got {type(p).__name__}")
    if not p.is_floating_point():
        raise TypeError(f"p must be a floating-point tensor, got dtype {p.dtype}")
    if p.device != x.device:
        raise ValueError(f"p is on {p.device} but x is on {x.device}; move p to the input's device")
    if p.dim() == 0:
        p4 = p.reshape(1, 1, 1, 1)
    elif p.shape == (c,):
        p4 = p.reshape(1, c, 1, 1)
    elif p.shape == (b, c, *out_hw):
        p4 = p
    else:
        raise ValueError(f"{expected}, got p of shape {tuple(p.shape)}")
    # A learnable p must not leave the valid range: negative values act as p = 0.
    return p4.clamp_min(0.0)


def poly_pool2d(
    x: Tensor,
    p: float | Tensor,
    kernel_size: _Pair,
    stride: _Pair | None = None,
    padding: _Pair = 0,
) -> Tensor:
    """Polynomial pooling: y = sum(x^(p+1)) / sum(x^p) over every window (Wei et al., CVPR 2019).

    p = 0 is average pooling (with ``count_include_pad=False``), p -> inf is max pooling, forward
    and backward. The computation normalises every window by its maximum, so it is stable for any
    p >= 0 in float32 (tested up to p = 110). float16 and bfloat16 inputs are computed internally
    in float32 and the result is cast back to the input dtype.

    Conventions (where the formula or the reference code leaves a choice):

    - Negative inputs: as in the authors' code, each (n, c) plane whose minimum is negative is
      shifted by that minimum, pooled, and shifted back. Unlike the authors' code, the gradient also
      flows through the minimum (the exact derivative of what is computed).
    - Padding positions are not part of a window (as in max_pool2d). For p > 0 this is the same as
      the reference's zero padding of the shifted input; at p = 0 it gives the average over the
      real elements only.
    - Zeros: 0^0 = 1, so at p = 0 zeros count in the average; for p > 0 they get weight 0. (x / m
      is floored at the smallest normal number t of the compute dtype before the power, so a zero
      weighs t^p: below float32 rounding for p > 0.2, below float64 rounding for p > 0.06.) A
      window of zeros pools to 0; its gradient is 1/N per element at p = 0 and 0 for p > 0 (y is
      not differentiable there).
    - Derivatives at (near-)zero inputs, where the exact ones can be infinite: in dy/dp, log(x / m)
      is floored at log(1e-3) (the reference floors log(x) at log(1e-3), in absolute units); in
      dy/dx, (x / m)^(p - 1) is capped at 1e3 (never active for p >= 1) and evaluated at the
      floored x where x = 0 (exactly 1 at p = 1). All gradients are finite; for inputs above
      1e-3 of their window's maximum they are exact.
    - Tensor p: values below 0 are clamped to 0 (their gradient is then 0).

    Args:
        x: input feature map.
        p: the exponent: a float, a 0-d tensor, a (C,) tensor (one per channel) or a
            (B, C, H_out, W_out) tensor (one per channel and output location, as predicted by the
            authors' side branch). Tensors may require grad.
        kernel_size: window size, int or (kh, kw).
        stride: window stride, int or (sh, sw); defaults to ``kernel_size``.
        padding: implicit padding on both sides, int or (ph, pw), at most half the kernel.

    Returns:
        The pooled map, in the dtype of x.

    Raises:
        ValueError: on a bad p shape or value, or a kernel larger than the (padded) input.
        TypeError: on a non-tensor or non-floating input.

    Shape:
        - x: (B, C, H, W)
        - p: (), (C,) or (B, C, H_out, W_out)
        - output: (B, C, H_out, W_out), H_out = floor((H + 2 * ph - kh) / sh) + 1, same for W.

    Non-overlapping windows without padding (stride == kernel, as in encoders) take a fast path
    that works on strided views of the input; other settings unfold the input into windows.
    """
    if not isinstance(x, Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"expected x of shape (B, C, H, W), got {shape}")
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point x, got dtype {x.dtype}")
    kernel = _pair(kernel_size, "kernel_size", 1)
    stride_ = kernel if stride is None else _pair(stride, "stride", 1)
    pad = _pair(padding, "padding", 0)
    if pad[0] > kernel[0] // 2 or pad[1] > kernel[1] // 2:
        raise ValueError(f"padding {pad} must be at most half of kernel_size {kernel}")
    h, w = x.shape[2:]
    if h + 2 * pad[0] < kernel[0] or w + 2 * pad[1] < kernel[1]:
        raise ValueError(
            f"kernel_size {kernel} is larger than the padded input "
            f"({h + 2 * pad[0]}, {w + 2 * pad[1]}) of x with shape {tuple(x.shape)}"
        )
    out_hw = (
        (h + 2 * pad[0] - kernel[0]) // stride_[0] + 1,
        (w + 2 * pad[1] - kernel[1]) // stride_[1] + 1,
    )

    compute_dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    p_c = _check_p(p, x, out_hw)
    if isinstance(p_c, Tensor):
        p_c = p_c.to(compute_dtype)
    xc = x.to(compute_dtype)

    # Shift planes with a negative minimum to [0, inf), as the reference does.
    x_min = xc.amin(dim=(2, 3), keepdim=True)
    shift = x_min.clamp(max=0.0) if bool((x_min.detach() < 0).any()) else None
    if shift is not None:
        xc = xc - shift

    if stride_ == kernel and pad == (0, 0):
        layout: _Layout = _BlockLayout(xc.shape, kernel)
    else:
        layout = _UnfoldLayout(xc.shape, kernel, stride_, pad)
    y = _PolyPoolFunction.apply(xc, p_c, layout)
    if shift is not None:
        y = y + shift
    return y.to(x.dtype)


class PolyPool2d(nn.Module):
    """Polynomial pooling with a learnable exponent (Wei et al., CVPR 2019).

    A drop-in replacement for ``nn.MaxPool2d``/``nn.AvgPool2d``; ``forward`` is one call of
    :func:`poly_pool2d`.

    Two ways to get p:

    - ``p_mode="channel"``: one learnable p per channel, initialised to ``p_init``. The default 3.0
      already weights the window maximum strongly, while keeping dy/dp alive: the gradient w.r.t.
      p vanishes like (x_k / x_max)^p as p grows, so a p initialised near max pooling hardly moves
      (the reference compensates with a 180x learning rate on its bias).
    - ``p_mode="predicted"``: the authors' side branch predicts p per channel and output location:
      depthwise kh x kw conv with the pooling stride and padding (no bias) -> PReLU (per channel,
      init 0.25) -> depthwise 1x1 conv whose bias starts at ``bias_init`` -> Hardtanh clamp to
      ``p_range``. The defaults ``p_range=(1, 50)``, ``bias_init=30`` are the authors' code's;
      it also has a variant with ``p_range=(1, 110)``, ``bias_init=70``. Their training script
      gives the PReLU slopes 100x and the bias 180x the base learning rate, without weight decay.
      Only the bias is set at construction; the convs keep PyTorch's default initialisation.

    Args:
        kernel_size: window size, int or (kh, kw).
        stride: window stride; defaults to ``kernel_size``.
        padding: implicit padding, at most half the kernel.
        channels: number of input channels C.
        p_mode: ``"channel"`` or ``"predicted"``.
        p_init: initial p of ``p_mode="channel"``.
        p_range: (min, max) clamp of the predicted p.
        bias_init: initial bias of the side branch's last conv (the initial p, up to the branch's
            input-dependent term).

    Shape:
        - input: (B, C, H, W)
        - output: (B, C, H_out, W_out) as in :func:`poly_pool2d`.
    """

    def __init__(
        self,
        kernel_size: _Pair,
        stride: _Pair | None = None,
        padding: _Pair = 0,
        *,
        channels: int,
        p_mode: Literal["channel", "predicted"] = "channel",
        p_init: float = 3.0,
        p_range: tuple[float, float] = (1.0, 50.0),
        bias_init: float = 30.0,
    ) -> None:
        super().__init__()
        if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
            raise ValueError(f"channels must be a positive int, got {channels!r}")
        self.kernel_size = _pair(kernel_size, "kernel_size", 1)
        self.stride = self.kernel_size if stride is None else _pair(stride, "stride", 1)
        self.padding = _pair(padding, "padding", 0)
        self.channels = channels
        self.p_mode = p_mode
        if p_mode == "channel":
            if not math.isfinite(p_init) or p_init < 0:
                raise ValueError(f"p_init must be a finite number >= 0, got {p_init}")
            self.p = nn.Parameter(torch.full((channels,), float(p_init)))
        elif p_mode == "predicted":
            lo, hi = p_range
            if not 0 <= lo < hi:
                raise ValueError(f"p_range must satisfy 0 <= min < max, got {p_range}")
            last = nn.Conv2d(channels, channels, 1, groups=channels, bias=True)
            nn.init.constant_(last.bias, bias_init)
            self.p_branch = nn.Sequential(
                nn.Conv2d(
                    channels,
                    channels,
                    self.kernel_size,
                    stride=self.stride,
                    padding=self.padding,
                    groups=channels,
                    bias=False,
                ),
                nn.PReLU(channels, init=0.25),
                last,
                nn.Hardtanh(float(lo), float(hi)),
            )
        else:
            raise ValueError(f"p_mode must be 'channel' or 'predicted', got {p_mode!r}")

    def forward(self, x: Tensor) -> Tensor:
        p = self.p if self.p_mode == "channel" else self.p_branch(x)
        return poly_pool2d(x, p, self.kernel_size, self.stride, self.padding)

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"channels={self.channels}, p_mode={self.p_mode!r}"
        )
