"""The segmentation subcommands of the ``finecut`` CLI: parsers and their handlers.

``add_parsers(train_sub, eval_sub, top_sub)`` adds ``train segment``, ``eval segment``,
``segment`` and ``prune`` to the CLI's subparser groups; each parser's ``func`` default is its
handler, which returns the exit status and raises :class:`~finecut.errors.FinecutError`
subclasses for user errors (the CLI prints them as one line).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger("finecut")


def _scales_arg(text: str) -> tuple[float, ...]:
    """``--scales 0.75,1,1.25`` -> (0.75, 1.0, 1.25); each a positive number."""
    try:
        scales = tuple(float(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected positive numbers separated by commas, got {text!r}"
        ) from None
    if not all(0 < s <= 4 for s in scales):  # also refuses NaN
        raise argparse.ArgumentTypeError(f"each scale must be in (0, 4], got {text!r}")
    return scales


def _add_tta_args(p: argparse.ArgumentParser) -> None:
    from finecut.segment.defaults import DEFAULT_FLIP, DEFAULT_SCALES

    default = ",".join(f"{s:g}" for s in DEFAULT_SCALES)
    p.add_argument(
        "--scales", type=_scales_arg, default=DEFAULT_SCALES,
        help=f"input scales whose class probabilities are averaged (default: {default}; "
        "1 for a single plain pass)",
    )  # fmt: skip
    p.add_argument(
        "--flip", action=argparse.BooleanOptionalAction, default=DEFAULT_FLIP,
        help=f"also average the mirrored pass of every scale (default: {DEFAULT_FLIP})",
    )  # fmt: skip


__all__ = [
    "add_eval_parser",
    "add_parsers",
    "add_top_parsers",
    "add_train_parser",
    "cmd_eval_segment",
    "cmd_prune",
    "cmd_segment",
    "cmd_train_segment",
]


def add_parsers(train_sub, eval_sub, top_sub) -> None:
    """Add ``train segment`` (to ``train_sub``), ``eval segment`` (to ``eval_sub``), and
    ``segment`` and ``prune`` (to ``top_sub``), the subparser groups of the CLI."""
    add_train_parser(train_sub)
    add_eval_parser(eval_sub)
    add_top_parsers(top_sub)


def add_top_parsers(sub) -> None:
    """Add the top-level ``segment`` and ``prune`` commands to the CLI's subparsers."""
    _add_segment(sub)
    _add_prune(sub)


def add_train_parser(sub) -> None:
    """Add ``segment`` to the subparsers of ``finecut train``."""
    p = sub.add_parser(
        "segment",
        help="train a semantic segmenter (P-pooling, SparseMask decoder, SPN head) on CamVid",
        description="Train a segmenter from a YAML config (SegmentTrainConfig: data, out, model, "
        "iters, ...). Resumes from OUT/last.pt if present. Options given here override the file. "
        "Multi-GPU: torchrun --nproc_per_node N -m finecut train segment --config FILE.yaml",
    )
    p.add_argument("--config", type=Path, required=True, help="YAML training config")
    p.add_argument("--data", default=None, help="CamVid-layout folder (overrides the config)")
    p.add_argument("--out", default=None, help="run folder (overrides the config)")
    p.add_argument("--iters", type=int, default=None, help="length of the lr schedule")
    p.add_argument(
        "--stop-at", type=int, default=None, metavar="STEP",
        help="stop after this step of the schedule (a training stage); rerun with a larger "
        "value to resume from OUT/last.pt",
    )  # fmt: skip
    p.add_argument(
        "--init", default=None, metavar="WEIGHTS",
        help="start a new run from trained weights (last.pt, exported .safetensors with its "
        "manifest, or an embedded name such as segmenter_camvid): the model only, with a fresh "
        "optimiser and schedule",
    )  # fmt: skip
    p.add_argument(
        "--loss", choices=("ce", "mfb", "ohem"), default=None,
        help="cross-entropy, median-frequency balanced cross-entropy, or OHEM",
    )  # fmt: skip
    p.add_argument(
        "--eval-every", type=int, default=None, metavar="N",
        help="validate (whole images) every N steps",
    )  # fmt: skip
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--ckpt-every", type=int, default=None)
    p.add_argument("--no-pretrained", action="store_true", help="random encoder init (tests)")
    p.set_defaults(func=cmd_train_segment)


def cmd_train_segment(args: argparse.Namespace) -> int:
    from finecut.train.segment import load_train_config, train_segment

    cfg = load_train_config(
        args.config,
        data=args.data,
        out=args.out,
        iters=args.iters,
        stop_at=args.stop_at,
        init=args.init,
        loss=args.loss,
        eval_every=args.eval_every,
        batch_size=args.batch_size,
        lr=args.lr,
        workers=args.workers,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
        ckpt_every=args.ckpt_every,
        pretrained=False if args.no_pretrained else None,
    )
    last = train_segment(cfg, progress=sys.stderr.isatty())
    log.info("checkpoint: %s", last)
    return 0


def add_eval_parser(sub) -> None:
    """Add ``segment`` to the subparsers of ``finecut eval``."""
    p = sub.add_parser(
        "segment",
        help="per-class IoU and mIoU of a segmenter on a CamVid-layout split",
        description="Segment every image of DATA/SPLIT whole and print per-class IoU and mIoU "
        "(void pixels ignored).",
    )
    p.add_argument("--data", type=Path, required=True, help="CamVid-layout folder")
    p.add_argument("--split", default="test")
    p.add_argument(
        "--weights", default=None,
        help="last.pt, exported .safetensors or an embedded name (default: the shipped CamVid "
        "model)",
    )  # fmt: skip
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    _add_tta_args(p)
    p.set_defaults(func=cmd_eval_segment)


def cmd_eval_segment(args: argparse.Namespace) -> int:
    from finecut.segment.evaluate import evaluate_segment, format_segment_table

    result = evaluate_segment(
        args.data,
        args.split,
        weights=args.weights,
        device=args.device,
        threads=args.threads,
        progress=sys.stderr.isatty(),
        scales=args.scales,
        flip=args.flip,
    )
    print(format_segment_table(result))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return 0


def _add_segment(sub) -> None:
    p = sub.add_parser(
        "segment",
        help="label every pixel of a photo (CamVid classes) and draw a colour overlay",
        description="Write the class-id label map of IMAGE to OUT (a lossless image, e.g. .png) "
        "and a colour overlay next to it (OUT's name + '_overlay').",
    )
    p.add_argument("image", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True, help="label map file (.png)")
    p.add_argument("--overlay", type=Path, default=None, help="overlay file (default: beside OUT)")
    p.add_argument(
        "--weights", default=None,
        help="last.pt or exported .safetensors (default: the shipped CamVid model)",
    )  # fmt: skip
    p.add_argument("--device", default=None)
    p.add_argument("--max-side", type=int, default=1024, help="segment larger images downscaled")
    _add_tta_args(p)
    p.set_defaults(func=cmd_segment)


def cmd_segment(args: argparse.Namespace) -> int:
    from finecut.data.io import read_image, write_image, write_mask

    image = read_image(args.image)  # a bad image is reported before torch loads (seconds)
    from finecut.segment.predict import load_segmenter, overlay, segment_image

    model = load_segmenter(args.weights, device=args.device)
    labels = segment_image(model, image, max_side=args.max_side, scales=args.scales, flip=args.flip)
    out = write_mask(args.output, labels, protect=[args.image])
    overlay_path = args.overlay or out.with_name(f"{out.stem}_overlay.png")
    write_image(overlay_path, overlay(image, labels), protect=[args.image, out])
    print(f"labels: {out}")
    print(f"overlay: {overlay_path}")
    return 0


def _add_prune(sub) -> None:
    p = sub.add_parser(
        "prune",
        help="write the pruned decoder of a SparseMask search run as a training config",
        description="Prune the decoder connections of a search run (model.search: true) and write "
        "the retraining config: finecut train segment --config OUTPUT retrains it.",
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="last.pt of the search run")
    p.add_argument("-o", "--output", type=Path, required=True, help="YAML config to write")
    p.add_argument("--threshold", type=float, default=None, help="default: 1e-3")
    p.add_argument("--out-dir", default=None, help="run folder of the retraining")
    p.set_defaults(func=cmd_prune)


def cmd_prune(args: argparse.Namespace) -> int:
    from finecut.layers import PRUNE_THRESHOLD
    from finecut.segment.prune import prune_checkpoint

    threshold = PRUNE_THRESHOLD if args.threshold is None else args.threshold
    cfg, result = prune_checkpoint(
        args.checkpoint, args.output, threshold=threshold, out_dir=args.out_dir
    )
    kept = sum(len(s.inputs) for s in result.graph.stages)
    print(
        f"pruned decoder: {len(result.graph.stages)} stages, {kept} connections; "
        f"wrote {args.output} (retrain into {cfg.out})"
    )
    return 0
