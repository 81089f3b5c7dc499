"""Soft-segmentation quality: do the layers follow objects? (issue 14)

    # the issue's figure: DAVIS every 3rd frame (115 frames), 640 px, shipped vs colour features
    .venv/bin/python bench/soft_quality.py --every 3 --pictures runs/soft_quality
    # a new embedding checkpoint against the shipped one, same frames
    .venv/bin/python bench/soft_quality.py --every 3 --weights runs/embedding_new/last.pt
    # a smoke run: 5 frames and the lemur
    .venv/bin/python bench/soft_quality.py --every 69 --threads 1 --pictures /tmp/sq

DAVIS (``../shared/data/davis``: ``images/NNN.jpg``, ``masks/NNN.png``, one object per frame;
never trained on, never used to choose settings): every ``--every``-th frame from 000, resized
(area) so that its longer side is ``--long-side`` (640) px, the mask resized with it and cut at
0.5. Each frame is segmented by :func:`finecut.soft.soft_segment` (fast mode, 5 layers, seed 0)
with each kind of features:

- ``embedded``: the shipped embedding network (``embedding_lite0``), what ``soft_segment(image)``
  uses by default;
- ``colour``: colour + position features (``features="none"``);
- ``new`` (with ``--weights PATH``): an embedding checkpoint (``.pt`` of ``finecut train
  embedding``) or ``.safetensors`` with its manifest.

The network is loaded once per kind and its features passed to ``soft_segment`` as an array (the
same features ``features="embedding"`` computes); "s / frame" is the network plus the pipeline,
not the load. Scoring: :func:`finecut.soft.compare.object_layers`, the best layer and the best
union of at most two layers by IoU of the alpha cut at 0.5 (soft IoU beside it). A line per frame
and kind while it runs, then a table per kind: mean IoU of the best layer and of the best layer or
pair, the share of frames whose pair IoU is at least 0.6, mean soft IoU of the pair, seconds per
frame.

The lemur (``../shared/data/matting/lemur.png``, resized the same way): the shared data has its
trimap but **no ground-truth alpha**, so the reference alpha is closed-form matting (Levin et al.,
through pymatting's ``estimate_alpha_cf``) from the trimap, and the object mask is that alpha cut
at 0.5. This reference is built on the same matting Laplacian that finecut's lift step solves
with, so it favours soft layers; read the lemur row as "are the soft values better than the
layer's own binary cut", not as a matting score. Errors (mean absolute alpha difference) over all
pixels and over the trimap's unknown band.

``--pictures DIR`` writes, for the first ``--n-pictures`` frames and the lemur, one PNG per image:
a row per kind, ``image | layers coloured | best pair's alpha`` (object outline in red).
To tune graph weights on training-side images only: ``--dataset duts`` (the 300 DUTS-TR images of
``configs/refine/duts_holdout.txt``, which ``configs/soft/mix.yaml`` leaves out of the embedding's
training; DUTS-TR is read from ``--duts``, default ``../data/duts``) or ``--dataset ecssd``
(ECSSD 0001-0800 unless ``--stems A-B`` says otherwise; 801-1000 is held out), with
``--set KEY=VALUE`` overriding fields of the mode's :class:`finecut.soft.SoftConfig`, e.g.
``--set semantic_weight=0.03``. Never choose settings on DAVIS. ECSSD 0001-0800 is the embedding
networks' training data: fine for comparing graph settings under the same features, not a figure
of one network against another.

``--json PATH`` keeps every frame's numbers (rewritten after each frame, so a stopped run keeps
what it did).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
DUTS = ROOT.parent / "data" / "duts"
HOLDOUT = ROOT / "configs" / "refine" / "duts_holdout.txt"
KINDS = ("embedded", "colour")


def _fail(message: str) -> None:
    first = message.strip().splitlines()[0] if message.strip() else "failed"
    sys.stderr.write(f"soft_quality: error: {first}\n")
    raise SystemExit(2)


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DATA, help="the shared data folder")
    p.add_argument(
        "--dataset",
        default="davis",
        choices=("davis", "ecssd", "duts"),
        help="davis (the issue's figure; never tune on it), or duts / ecssd (training side, to "
        "tune)",
    )
    p.add_argument(
        "--stems",
        help="A-B: only stems in this range (ecssd default: 1-800), or @FILE: the stems listed "
        "(duts default: @configs/refine/duts_holdout.txt)",
    )
    p.add_argument("--duts", type=Path, default=DUTS, help="DUTS-TR with images/ and masks/")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a SoftConfig field of the mode, e.g. semantic_weight=0.03 (repeatable)",
    )
    p.add_argument("--every", type=int, default=3, help="every Nth DAVIS frame (3: 115 frames)")
    p.add_argument("--limit", type=int, default=None, help="at most this many frames")
    p.add_argument("--kinds", default=",".join(KINDS), help="comma list of embedded, colour")
    p.add_argument("--weights", type=Path, help="also run an embedding checkpoint (kind 'new')")
    p.add_argument("--long-side", type=int, default=640)
    p.add_argument("--layers", type=int, default=5)
    p.add_argument(
        "--embed-scale", type=float, default=None,
        help="the embedding network sees the image resized by this factor (default: "
        "finecut's own default)",
    )  # fmt: skip
    p.add_argument("--mode", default="fast", choices=("fast", "faithful"))
    p.add_argument("--threads", type=int, default=1, help="torch / BLAS / OpenCV threads (1)")
    p.add_argument("--device", default="cpu", help="device of the embedding network (cpu)")
    p.add_argument("--no-lemur", action="store_true", help="skip the lemur row")
    p.add_argument("--pictures", type=Path, help="write pictures of the layers into DIR")
    p.add_argument("--n-pictures", type=int, default=3, help="frames with a picture (3)")
    p.add_argument("--json", type=Path, help="write every frame's numbers to this file")
    args = p.parse_args()
    for name in ("every", "long_side", "layers", "threads"):
        if getattr(args, name) < 1:
            _fail(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.limit is not None and args.limit < 1:
        _fail(f"--limit must be >= 1, got {args.limit}")
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        _fail(f"unknown kind {unknown[0]!r} (choose from {', '.join(KINDS)}; --weights adds 'new')")
    if args.embed_scale is not None and not 0 < args.embed_scale <= 8:  # also refuses NaN
        _fail(f"--embed-scale must be in (0, 8], got {args.embed_scale}")
    args.kind_list = kinds + (["new"] if args.weights is not None else [])
    if not args.kind_list:
        _fail("no kinds to run")
    if args.weights is not None and not args.weights.is_file():
        _fail(f"weights file {str(args.weights)!r} not found")
    folder = _folder(args)
    if not (folder / "images").is_dir() or not (folder / "masks").is_dir():
        _fail(f"{folder} has no images/ and masks/ (the {args.dataset} data)")
    if args.stems is None and args.dataset == "ecssd":
        args.stems = "1-800"  # ECSSD 801-1000 is held out
    if args.stems is None and args.dataset == "duts":
        args.stems = f"@{HOLDOUT}"  # the rest of DUTS-TR trains the embedding
    args.stem_list = None
    if args.stems is not None and args.stems.startswith("@"):
        try:
            args.stem_list = Path(args.stems[1:]).read_text().split()
        except OSError as exc:
            _fail(f"cannot read --stems file {args.stems[1:]!r}: {exc.strerror}")
    elif args.stems is not None:
        lo, _, hi = args.stems.partition("-")
        if not (lo.isdigit() and hi.isdigit() and int(lo) <= int(hi)):
            _fail(f"--stems must be A-B with A <= B, got {args.stems!r}")
        args.stem_range = (int(lo), int(hi))
    for path in (args.pictures, args.json and args.json.parent):
        if path is not None and path.exists() and not path.is_dir():
            _fail(f"{str(path)!r} is not a folder")
    return args


def _config(mode: str, overrides: list[str]):
    """The mode's SoftConfig with ``KEY=VALUE`` overrides (None without any)."""
    from dataclasses import fields, replace

    from finecut.errors import ConfigError
    from finecut.soft import FAITHFUL, FAST

    if not overrides:
        return None
    base = FAST if mode == "fast" else FAITHFUL
    types = {f.name: type(getattr(base, f.name)) for f in fields(base)}
    changes = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or key not in types:
            _fail(f"--set {item!r}: expected KEY=VALUE with KEY a SoftConfig field")
        kind = types[key]
        try:
            if kind is bool:
                value = {"true": True, "false": False}[text.lower()]
            elif text.lower() == "none":
                value = None
            else:
                value = _number(text) if kind is type(None) else kind(text)
        except (KeyError, ValueError):
            _fail(f"--set {item!r}: {text!r} is not a {kind.__name__}")
        changes[key] = value
    try:
        return replace(base, **changes)
    except ConfigError as exc:
        _fail(f"--set: {exc}")


def _number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)


def _resize(image, long_side: int, interpolation):
    import cv2

    h, w = image.shape[:2]
    scale = long_side / max(h, w)
    if scale >= 1.0:
        return image
    return cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=interpolation)


def _folder(args: argparse.Namespace) -> Path:
    return args.duts if args.dataset == "duts" else args.data / args.dataset


def _frames(args: argparse.Namespace) -> list[str]:
    folder = _folder(args)
    stems = sorted(p.stem for p in (folder / "images").glob("*.jpg"))
    stems = [s for s in stems if (folder / "masks" / f"{s}.png").is_file()]
    if args.stem_list is not None:
        wanted = set(args.stem_list)
        stems = [s for s in stems if s in wanted]
    elif args.stems is not None:
        lo, hi = args.stem_range
        stems = [s for s in stems if s.isdigit() and lo <= int(s) <= hi]
    stems = stems[:: args.every]
    if not stems:
        _fail(
            f"no image with a mask in {folder}" + (f" for stems {args.stems}" if args.stems else "")
        )
    return stems[: args.limit]


def _frame(args: argparse.Namespace, stem: str):
    import cv2
    import numpy as np

    from finecut.data.io import read_image, read_mask
    from finecut.metrics import binarize

    folder = _folder(args)
    image = _resize(read_image(folder / "images" / f"{stem}.jpg"), args.long_side, cv2.INTER_AREA)
    mask = binarize(read_mask(folder / "masks" / f"{stem}.png")).astype(np.float32)
    mask = _resize(mask, args.long_side, cv2.INTER_AREA) > 0.5
    return np.ascontiguousarray(image), mask


def _lemur(args: argparse.Namespace):
    """(image uint8, reference alpha, object mask, unknown band) at the benchmark's size."""
    import cv2
    import numpy as np
    from pymatting import estimate_alpha_cf

    from finecut.data.io import read_image

    folder = args.data / "matting"
    image = _resize(read_image(folder / "lemur.png"), args.long_side, cv2.INTER_AREA)
    trimap = read_image(folder / "lemur_trimap.png")[..., 0]
    trimap = _resize(trimap, args.long_side, cv2.INTER_NEAREST).astype(np.float64) / 255.0
    alpha = estimate_alpha_cf(image.astype(np.float64) / 255.0, trimap)
    alpha = np.clip(alpha, 0.0, 1.0)
    band = (trimap > 0.01) & (trimap < 0.99)
    return np.ascontiguousarray(image), alpha, alpha > 0.5, band


class _Runner:
    """One kind of features: the network loaded once, ``run(image)`` -> (alphas, seconds)."""

    def __init__(self, kind: str, args: argparse.Namespace) -> None:
        self.kind = kind
        self.args = args
        self.model = None
        if kind != "colour":
            from finecut.errors import FinecutError
            from finecut.models.embedding import load_embedding_model

            weights = None if kind == "embedded" else args.weights
            try:
                self.model = load_embedding_model(weights, args.device)
            except (FinecutError, RuntimeError) as exc:
                _fail(f"cannot load the {kind} embedding network: {exc}")

    def run(self, image):
        from finecut.soft import soft_segment

        start = time.perf_counter()
        if self.model is None:
            features = "none"
        elif self.args.embed_scale is None:
            features = self.model.embed(image)
        else:
            features = self.model.embed(image, scale=self.args.embed_scale)
        result = soft_segment(
            image, features, n_layers=self.args.layers, mode=self.args.mode, config=self.args.config
        )
        return result.alphas, time.perf_counter() - start


def _picture(rows, mask, path: Path) -> None:
    """rows: [(kind, image uint8, alphas, ObjectLayers)] -> one PNG, a row per kind."""
    import cv2
    import numpy as np

    from finecut.data.io import write_image
    from finecut.viz import side_by_side, soft_composite

    out = []
    outline = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)[0]
    for kind, image, alphas, found in rows:
        pair = alphas[..., list(found.pair.indices)].sum(2)
        grey = np.repeat((np.clip(pair, 0, 1) * 255.0).round().astype(np.uint8)[..., None], 3, 2)
        grey = np.ascontiguousarray(grey)
        cv2.drawContours(grey, outline, -1, (255, 0, 0), 1)
        panels = [image.copy(), soft_composite(alphas), grey]
        labels = [
            kind,
            f"{alphas.shape[2]} layers",
            f"pair {'+'.join(map(str, found.pair.indices))}: IoU {found.pair.iou:.2f}",
        ]
        for panel, label in zip(panels, labels, strict=True):
            cv2.putText(panel, label, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 3)
            cv2.putText(panel, label, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1)
        out.append(side_by_side(panels, height=image.shape[0], gap=4))
    write_image(path, np.vstack(out), overwrite=True)


def _record(found, seconds: float | None = None) -> dict:
    row = {
        "layer": list(found.layer.indices),
        "layer_iou": found.layer.iou,
        "layer_soft_iou": found.layer.soft_iou,
        "pair": list(found.pair.indices),
        "pair_iou": found.pair.iou,
        "pair_soft_iou": found.pair.soft_iou,
    }
    if seconds is not None:
        row["seconds"] = seconds
    return row


def _line(name: str, kind: str, found, seconds: float) -> str:
    pair = "+".join(map(str, found.pair.indices))
    return (
        f"{name} {kind:<8} layer {found.layer.iou:.3f} (#{found.layer.indices[0]})  "
        f"pair {found.pair.iou:.3f} (#{pair})  soft {found.pair.soft_iou:.3f}  {seconds:.1f} s"
    )


def _table(records: dict[str, list[dict]], kinds: list[str]) -> list[str]:
    import numpy as np

    lines = [
        "| features | frames | best layer IoU | best layer or pair IoU | frames with pair IoU "
        ">= 0.6 | pair soft IoU | s / frame |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for kind in kinds:
        rows = records[kind]
        if not rows:
            continue
        layer = np.mean([r["layer_iou"] for r in rows])
        pair = np.array([r["pair_iou"] for r in rows])
        soft = np.mean([r["pair_soft_iou"] for r in rows])
        secs = np.mean([r["seconds"] for r in rows])
        lines.append(
            f"| {kind} | {len(rows)} | {layer:.3f} | {pair.mean():.3f} | "
            f"{(pair >= 0.6).mean() * 100:.0f}% | {soft:.3f} | {secs:.1f} |"
        )
    return lines


def _lemur_table(lemur: dict[str, dict], kinds: list[str]) -> list[str]:
    lines = [
        "| features | layer IoU | pair IoU | layer alpha / cut error | pair alpha / cut error | "
        "pair alpha / cut error, unknown band |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for kind in kinds:
        r = lemur.get(kind)
        if r is None:
            continue
        lines.append(
            f"| {kind} | {r['layer_iou']:.3f} (#{'+'.join(map(str, r['layer']))}) | "
            f"{r['pair_iou']:.3f} (#{'+'.join(map(str, r['pair']))}) | "
            f"{r['layer_alpha_error']:.4f} / {r['layer_cut_error']:.4f} | "
            f"{r['pair_alpha_error']:.4f} / {r['pair_cut_error']:.4f} | "
            f"{r['band_alpha_error']:.4f} / {r['band_cut_error']:.4f} |"
        )
    return lines


def main() -> None:
    args = _parse()
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(name, str(args.threads))
    args.config = _config(args.mode, args.set)
    import cv2
    import torch
    from threadpoolctl import threadpool_limits

    from finecut.soft.compare import object_layers

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    stems = _frames(args)
    runners = [_Runner(kind, args) for kind in args.kind_list]
    kinds = args.kind_list
    if args.pictures is not None:
        args.pictures.mkdir(parents=True, exist_ok=True)
    print(
        f"soft quality: {args.dataset} {len(stems)} images (every {args.every}"
        + (f", stems {args.stems}" if args.stems else "")
        + f"), long side {args.long_side}, {args.mode} mode"
        + (f" with {', '.join(args.set)}" if args.set else "")
        + f", {args.layers} layers, kinds {', '.join(kinds)}"
        + (f" (new = {args.weights})" if args.weights else "")
        + f"; {args.threads} thread(s), {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}",
        flush=True,
    )
    records: dict[str, list[dict]] = {kind: [] for kind in kinds}
    lemur: dict[str, dict] = {}

    def save() -> None:
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            body = {"args": {k: str(v) for k, v in vars(args).items()}, args.dataset: records}
            args.json.write_text(json.dumps({**body, "lemur": lemur}, indent=1))

    with threadpool_limits(limits=args.threads):
        for i, stem in enumerate(stems):
            image, mask = _frame(args, stem)
            rows = []
            for runner in runners:
                alphas, seconds = runner.run(image)
                found = object_layers(alphas, mask)
                records[runner.kind].append({"frame": stem, **_record(found, seconds)})
                print(_line(f"{args.dataset} {stem}", runner.kind, found, seconds), flush=True)
                rows.append((runner.kind, image, alphas, found))
            if args.pictures is not None and i < args.n_pictures:
                _picture(rows, mask, args.pictures / f"{args.dataset}_{stem}.png")
            save()
        if not args.no_lemur:
            image, alpha, mask, band = _lemur(args)
            rows = []
            for runner in runners:
                alphas, seconds = runner.run(image)
                found = object_layers(alphas, mask, alpha=alpha)
                in_band = object_layers(alphas, mask, alpha=alpha, region=band)
                lemur[runner.kind] = {
                    **_record(found, seconds),
                    "layer_alpha_error": found.layer.alpha_error,
                    "layer_cut_error": found.layer.cut_error,
                    "pair_alpha_error": found.pair.alpha_error,
                    "pair_cut_error": found.pair.cut_error,
                    "band_alpha_error": in_band.pair.alpha_error,
                    "band_cut_error": in_band.pair.cut_error,
                }
                print(
                    _line("lemur", runner.kind, found, seconds)
                    + f"  alpha error {found.pair.alpha_error:.4f} vs cut "
                    f"{found.pair.cut_error:.4f}",
                    flush=True,
                )
                rows.append((runner.kind, image, alphas, found))
            if args.pictures is not None:
                _picture(rows, mask, args.pictures / "lemur.png")
            save()

    print(f"\n{args.dataset}, best layer and best union of at most two layers vs the mask:\n")
    print("\n".join(_table(records, kinds)))
    if lemur:
        print(
            "\nlemur, reference alpha = closed-form matting from the trimap (no ground-truth "
            "alpha in the shared data); mean |alpha error| of the chosen layer (pair) and of its "
            "binary cut:\n"
        )
        print("\n".join(_lemur_table(lemur, kinds)))


if __name__ == "__main__":
    main()
