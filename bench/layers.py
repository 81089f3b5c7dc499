"""Benchmarks of finecut's layers; prints markdown tables.

Usage::

    python bench/layers.py [--only {pool,spn,all}] [--repeats N] [--threads T]

Timings are forward + backward on the CPU, median over ``--repeats`` runs; the candidates are
interleaved run by run so that a noisy machine affects them alike. Memory is the number of bytes
the autograd graph keeps for the backward pass, counted with
``torch.autograd.graph.saved_tensors_hooks``, each storage once: with the input's storage when an
op saves it, and without it (the input is usually kept alive by the layer before anyway), which
is what the layer adds to a network's peak training memory.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from finecut.layers.poly_pool import PolyPool2d, poly_pool2d

Row = dict[str, object]


# --------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------


def _saved_bytes(fn: Callable[[], Tensor], inputs: list[Tensor]) -> tuple[int, int]:
    """Bytes of distinct storages saved for the backward of fn(): all, and not the inputs'."""
    storages: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    own = {t.untyped_storage().data_ptr() for t in inputs}
    total = sum(storages.values())
    return total, total - sum(n for ptr, n in storages.items() if ptr in own)


def _time_fwd_bwd(fn: Callable[[], Tensor], leaves: list[Tensor]) -> float:
    """Seconds for one forward + backward of fn() (gradients of the leaves reset first)."""
    for t in leaves:
        t.grad = None
    start = time.perf_counter()
    out = fn()
    out.backward(torch.ones_like(out))
    return time.perf_counter() - start


def _markdown(rows: list[Row], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# polynomial pooling
# --------------------------------------------------------------------------------------------


def bench_pool(
    repeats: int = 15,
    shape: tuple[int, int, int, int] = (8, 64, 128, 128),
    kernel: int = 2,
    stride: int = 2,
) -> list[Row]:
    """Forward + backward time and saved memory of P-pooling vs max and average pooling.

    Args:
        repeats: timed runs per candidate (after two warm-up runs); the median is reported.
        shape: input shape (B, C, H, W); the input is uniform in [0, 1).
        kernel: pooling window.
        stride: pooling stride.

    Returns:
        One row per candidate: name, median ms, time ratio to max pooling, saved MiB (with and
        without the input's storage) and their ratios to max pooling.
    """
    torch.manual_seed(0)
    channels = shape[1]
    x = torch.rand(shape, requires_grad=True)
    p_scalar = torch.tensor(3.0, requires_grad=True)
    p_channel = torch.full((channels,), 3.0, requires_grad=True)
    predicted = PolyPool2d(kernel, stride, channels=channels, p_mode="predicted")
    candidates: dict[str, tuple[Callable[[], Tensor], list[Tensor]]] = {
        "max_pool2d": (lambda: F.max_pool2d(x, kernel, stride), [x]),
        "avg_pool2d": (lambda: F.avg_pool2d(x, kernel, stride), [x]),
        "poly_pool2d, p = 3.0 (float)": (lambda: poly_pool2d(x, 3.0, kernel, stride), [x]),
        "poly_pool2d, scalar p tensor (learned)": (
            lambda: poly_pool2d(x, p_scalar, kernel, stride),
            [x, p_scalar],
        ),
        "poly_pool2d, per-channel p (learned)": (
            lambda: poly_pool2d(x, p_channel, kernel, stride),
            [x, p_channel],
        ),
        "PolyPool2d, predicted p (side branch)": (
            lambda: predicted(x),
            [x, *predicted.parameters()],
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for fn, leaves in candidates.values():  # warm-up
        for _ in range(2):
            _time_fwd_bwd(fn, leaves)
    for _ in range(repeats):
        for name, (fn, leaves) in candidates.items():
            times[name].append(_time_fwd_bwd(fn, leaves))
    saved = {name: _saved_bytes(fn, [x]) for name, (fn, _) in candidates.items()}
    base_t = statistics.median(times["max_pool2d"])
    base_m, base_own = saved["max_pool2d"]
    rows = []
    for name in candidates:
        t = statistics.median(times[name])
        rows.append(
            {
                "op": name,
                "fwd+bwd ms (median)": f"{t * 1e3:.1f}",
                "time / max_pool2d": f"{t / base_t:.2f}",
                "saved for backward MiB": f"{saved[name][0] / 2**20:.1f}",
                "memory / max_pool2d": f"{saved[name][0] / base_m:.2f}",
                "saved, input excluded, MiB": f"{saved[name][1] / 2**20:.1f}",
                "(ratio)": f"{saved[name][1] / base_own:.2f}",
            }
        )
    return rows


# --------------------------------------------------------------------------------------------
# spatial propagation: the measurement lives in bench/spn.py (which also has the scan-layout study)
# --------------------------------------------------------------------------------------------


def bench_spn(repeats: int = 15) -> list[Row]:
    """SpatialPropagation (four directions) on (1, 32, 256, 256) and (4, 32, 512, 512), CPU.

    Rows: shape, op, median ms and the ratio to a plain copy of the same bytes (see bench/spn.py).
    """
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from spn import bench_spn as _bench_spn

    return _bench_spn(repeats)


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("pool", "spn", "all"), default="all")
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per candidate")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"repeats={args.repeats}, CPU\n"
    )
    if args.only in ("pool", "all"):
        print("## Polynomial pooling, (8, 64, 128, 128), kernel 2, stride 2, forward + backward\n")
        columns = [
            "op",
            "fwd+bwd ms (median)",
            "time / max_pool2d",
            "saved for backward MiB",
            "memory / max_pool2d",
            "saved, input excluded, MiB",
            "(ratio)",
        ]
        print(_markdown(bench_pool(args.repeats), columns))
        print()
    if args.only in ("spn", "all"):
        print("## Spatial propagation\n")
        rows = bench_spn(min(args.repeats, 5))
        print(_markdown(rows, list(rows[0])))
        print()


if __name__ == "__main__":
    main()
