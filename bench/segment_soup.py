"""Average the weights of segmenter checkpoints (a "model soup", Wortsman et al. 2022; with two
models along one fine-tuning path, WiSE-FT's interpolation, Wortsman et al. 2022).

    .venv/bin/python bench/segment_soup.py segmenter_camvid ../data/s17/c5_step900.pt \\
        -o ../data/s18/soup45.pt                         # equal weights
    .venv/bin/python bench/segment_soup.py A.pt B.pt --alpha 0.3 -o soup.pt   # 0.7 A + 0.3 B

Every input is read by :func:`finecut.segment.predict.load_segmenter` (a ``last.pt``, an exported
``.safetensors`` with its manifest, or an embedded name); all must share one model config. Floating
tensors (weights and batch-norm statistics) are averaged; integer buffers (batch-norm step
counts) are the first model's. The output is a ``train segment``-style checkpoint (model and
config, no optimiser) that ``bench/segment_tta.py --weights`` and ``python -m
finecut.train.export`` read. Averaging is a few lines of torch: no library of the field does it
for a plain state dict.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from finecut.errors import FinecutError
from finecut.segment.predict import load_segmenter
from finecut.train.common import save_checkpoint
from finecut.train.segment import CHECKPOINT_KIND


def soup(states: list[dict], weights: list[float]) -> dict:
    """The weighted mean of state dicts with the same keys and shapes; integer tensors from the
    first."""
    keys = list(states[0])
    if any(list(s) != keys for s in states[1:]):
        raise ValueError("the checkpoints hold different tensors: not one model config")
    out = {}
    for k in keys:
        first = states[0][k]
        if first.is_floating_point():
            total = sum(w * s[k].double() for w, s in zip(weights, states, strict=True))
            out[k] = total.to(first.dtype)
        else:
            out[k] = first.clone()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("weights", nargs="+", help="two or more segmenter weights")
    ap.add_argument("-o", "--out", type=Path, required=True)
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    ap.add_argument(
        "--alpha",
        type=float,
        default=None,
        help="with two inputs: the second one's weight (default: equal weights)",
    )
    args = ap.parse_args()
    if len(args.weights) < 2:
        raise SystemExit("segment_soup: error: give at least two weights")
    if args.out.exists() and not args.overwrite:
        raise SystemExit(f"segment_soup: error: {args.out} exists (pass --overwrite to replace it)")
    n = len(args.weights)
    if args.alpha is not None:
        if n != 2 or not 0.0 <= args.alpha <= 1.0:
            raise SystemExit("segment_soup: error: --alpha takes two inputs and a value in [0, 1]")
        mix = [1.0 - args.alpha, args.alpha]
    else:
        mix = [1.0 / n] * n
    try:
        models = [load_segmenter(w, device="cpu") for w in args.weights]
    except FinecutError as exc:
        raise SystemExit(f"segment_soup: error: {exc}") from None
    configs = [m.config.to_dict() for m in models]
    if any(c != configs[0] for c in configs[1:]):
        raise SystemExit("segment_soup: error: the weights have different model configs")
    state = soup([m.state_dict() for m in models], mix)
    checkpoint = {
        "kind": CHECKPOINT_KIND,
        "model": state,
        "step": 0,
        "epoch": 0,
        "config": {"model": configs[0]},
        "soup": {"weights": args.weights, "mix": mix},
    }
    try:
        save_checkpoint(args.out, checkpoint)
    except OSError as exc:
        raise SystemExit(f"segment_soup: error: cannot write {args.out}: {exc}") from None
    parts = [f"{m:.3f} x {w}" for m, w in zip(mix, args.weights, strict=True)]
    print(f"wrote {args.out}: {' + '.join(parts)}", file=sys.stderr)


if __name__ == "__main__":
    main()
