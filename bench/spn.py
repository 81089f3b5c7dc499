"""Benchmark of the spatial propagation layer (SPN, METHODS.md section 2); prints markdown tables.

Usage::

    python bench/spn.py [--repeats N] [--layouts]

Times :class:`finecut.layers.propagation.SpatialPropagation` (four directions, per-channel gates,
``normalize="clip"``) on the CPU, forward and forward + backward, median over ``--repeats`` runs
after one warm-up, against a memory-bound limit measured in the same run: a plain copy of the same
bytes (``x.clone()`` and ``gates.clone()``). The candidates are interleaved run by run so that a
noisy machine affects them alike. ``--layouts`` adds the measurement behind the choice of scan
axis: one direction of the scan over rows (the kernel's layout), over the last contiguous axis
(one strided column per step) and over the first axis of a permuted contiguous copy.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor

from finecut.layers.propagation import SpatialPropagation

Row = dict[str, object]

SHAPES: tuple[tuple[int, int, int, int], ...] = ((1, 32, 256, 256), (4, 32, 512, 512))


def _markdown(rows: list[Row]) -> str:
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def _interleaved(candidates: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Median seconds of each candidate over ``repeats`` interleaved runs (after one warm-up)."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for fn in candidates.values():
        fn()
    for _ in range(repeats):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def bench_spn(
    repeats: int = 5, shapes: tuple[tuple[int, int, int, int], ...] = SHAPES
) -> list[Row]:
    """CPU time of SpatialPropagation (four directions) against a copy of the same bytes.

    Args:
        repeats: timed runs per candidate (after one warm-up); the median is reported.
        shapes: input shapes (B, C, H, W), float32; gates are per channel, (B, 4 * 3 * C, H, W).

    Returns:
        One row per shape and candidate: shape, op, median ms and the ratio to the copy.
    """
    torch.manual_seed(0)
    layer = SpatialPropagation("clip")
    rows: list[Row] = []
    for shape in shapes:
        b, c, h, w = shape
        x = torch.randn(shape, requires_grad=True)
        gates = torch.randn(b, 4 * 3 * c, h, w, requires_grad=True)

        def copy(x: Tensor = x, gates: Tensor = gates) -> None:
            with torch.no_grad():
                x.clone()
                gates.clone()

        def forward(x: Tensor = x, gates: Tensor = gates) -> None:
            with torch.no_grad():
                layer(x, gates)

        def forward_backward(x: Tensor = x, gates: Tensor = gates) -> None:
            x.grad = gates.grad = None
            out = layer(x, gates)
            out.backward(torch.ones_like(out))

        candidates = {
            "x.clone() + gates.clone() (memory-bound limit)": copy,
            "SpatialPropagation forward": forward,
            "SpatialPropagation forward + backward": forward_backward,
        }
        medians = _interleaved(candidates, repeats)
        base = medians["x.clone() + gates.clone() (memory-bound limit)"]
        for name, seconds in medians.items():
            rows.append(
                {
                    "shape (B, C, H, W)": str(shape),
                    "op": name,
                    "ms (median)": f"{seconds * 1e3:.1f}",
                    "ratio to copy": f"{seconds / base:.2f}",
                }
            )
        del x, gates
    return rows


def _scan(u: Tensor, g0: Tensor, g1: Tensor, g2: Tensor) -> Tensor:
    """One direction of the scan over dim 0 of (S, ..., A) views (any strides), as in the layer."""
    h = torch.empty_like(u)
    rows, lo, hi = h.unbind(0), h[..., :-1].unbind(0), h[..., 1:].unbind(0)
    us, g1s, g0s, g2s = u.unbind(0), g1.unbind(0), g0[..., 1:].unbind(0), g2[..., :-1].unbind(0)
    rows[0].copy_(us[0])
    for t in range(1, len(rows)):
        torch.addcmul(us[t], g1s[t], rows[t - 1], out=rows[t])
        hi[t].addcmul_(g0s[t], lo[t - 1])
        lo[t].addcmul_(g2s[t], hi[t - 1])
    return h


def bench_layouts(
    repeats: int = 3, shape: tuple[int, int, int, int] = (4, 32, 512, 512)
) -> list[Row]:
    """Time of one scan direction by scan axis (float32, per-channel gates, CPU).

    The map is stored as (B, C, H, W). "rows" scans H on views of the stored tensors (each step
    reads runs of W contiguous values), "last axis" scans W on views (each step reads one value
    every W), "first axis" copies the tensors into a contiguous (H, B, C, W) layout first (the
    copies are timed) and scans its first axis (each step reads one contiguous block).

    Returns:
        One row per layout with the median ms of one direction (u = x here, as only the scan
        differs).
    """
    torch.manual_seed(0)
    x = torch.randn(shape)
    gates = torch.rand(3, *shape) / 3
    layouts = {  # name: (permutation of (B, C, H, W) to (S, ..., A), copy to contiguous)
        "rows: views of (B, C, H, W), scan H": ((2, 0, 1, 3), False),
        "last contiguous axis: views of (B, C, H, W), scan W": ((3, 0, 1, 2), False),
        "first axis: contiguous (H, B, C, W) copies, scan H": ((2, 0, 1, 3), True),
    }
    candidates = {}
    for name, (perm, copy) in layouts.items():

        def run(perm: tuple[int, ...] = perm, copy: bool = copy) -> None:
            views = [t.permute(*perm) for t in (x, *gates.unbind(0))]
            if copy:
                views = [t.contiguous() for t in views]
            _scan(*views)

        candidates[name] = run
    medians = _interleaved(candidates, repeats)
    return [
        {"scan layout": name, "one direction, ms (median)": f"{seconds * 1e3:.0f}"}
        for name, seconds in medians.items()
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per candidate")
    parser.add_argument("--layouts", action="store_true", help="also time the scan layouts")
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads, repeats={args.repeats}, CPU\n")
    print("## Spatial propagation, four directions, per-channel gates, float32\n")
    print(_markdown(bench_spn(args.repeats)))
    print()
    if args.layouts:
        print("## Scan layout, one direction, (4, 32, 512, 512) float32\n")
        print(_markdown(bench_layouts(args.repeats)))
        print()


if __name__ == "__main__":
    main()
