"""Where do the soft layers lose the object: in the spectral space, the segments or the grouping?
(issue 14)

    # the small-object choice set of the DUTS-TR hold-out (training side), shipped network
    .venv/bin/python bench/soft_diagnose.py --stems @configs/soft/duts_holdout_small.txt \
        --json runs/soft_diagnose.json

Each image (read and scored as in ``bench/soft_quality.py``: 640 px, fast mode, 5 layers, the
shipped embedding network) is segmented twice:

- **as shipped**: the best layer or pair of layers against the object mask (IoU of the cut at
  0.5);
- **oracle grouping**: the same soft segments (the constrained sparsification's output), but
  grouped with the answer: every segment whose alpha mass lies mostly inside the mask forms one
  layer, the others are grouped into the remaining layers by the shipped k-means. What this
  gains over the shipped row is what a perfect grouping could give; what it still misses is lost
  before the grouping, in the segments.

**oracle segments**: the union of the segments mostly inside the mask, on the superpixels, before
the grouping and the relaxed step (mass-weighted IoU of its cut at 0.5 against the superpixels
whose mask share is over half, the measure of the span ceilings below).

Two ceilings come from the same run, on the superpixel graph (each superpixel's share of the mask,
mass-weighted IoU of the superpixels whose share is over half):

- **span k**: the mask share of every superpixel fitted by least squares (weights: superpixel
  sizes) from the superpixel coefficients of the Laplacian's k smallest eigenvectors, cut at 0.5.
  A high value says the spectral space holds the object, so the sparsification, not the graph,
  is what loses it. It is optimistic: a least-squares fit with k free coefficients fits some of
  any target: the ``spanrandom`` column fits as many random vectors as the largest span, the
  control.
- **superpixels**: the pixel IoU of the superpixels whose share is over half (what superpixel
  constants alone can reach; the colour-linear basis can do better inside a superpixel).

DAVIS (``--dataset davis``) may be diagnosed, never used to choose a setting. ``--json`` keeps
every image's numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import soft_quality  # noqa: E402  (the same frames, resizing and hold-out as the quality bench)

SPANS = (10, 25, 50, 100)


def _fail(message: str) -> None:
    print(f"soft_diagnose: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=soft_quality.DATA)
    p.add_argument("--dataset", default="duts", choices=("duts", "davis", "ecssd"))
    p.add_argument("--duts", type=Path, default=soft_quality.DUTS)
    p.add_argument("--stems", help="@FILE: the stems listed (duts default: the whole hold-out)")
    p.add_argument("--every", type=int, default=1)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--long-side", type=int, default=640)
    p.add_argument("--layers", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    for name in ("every", "long_side", "layers", "threads"):
        if getattr(args, name) < 1:
            _fail(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.layers < 2:
        _fail("--layers must be >= 2 (one for the object, the rest for the background)")
    folder = soft_quality._folder(args)
    if not (folder / "images").is_dir() or not (folder / "masks").is_dir():
        _fail(f"{folder} has no images/ and masks/ (the {args.dataset} data)")
    if args.stems is None and args.dataset == "duts":
        args.stems = f"@{soft_quality.HOLDOUT}"
    if args.stems is None and args.dataset == "ecssd":
        _fail("--dataset ecssd needs --stems @FILE (ECSSD 0001-0800 only: 0801-1000 is held out)")
    args.stem_list = None
    if args.stems is not None:
        if not args.stems.startswith("@"):
            _fail("--stems must be @FILE")
        try:
            args.stem_list = Path(args.stems[1:]).read_text().split()
        except OSError as exc:
            _fail(f"cannot read --stems file {args.stems[1:]!r}: {exc.strerror}")
    if args.json is not None and args.json.exists() and args.json.is_dir():
        _fail(f"{str(args.json)!r} is a folder")
    return args


@contextlib.contextmanager
def _capture(found: dict):
    """Keep the superpixels and the eigenvectors of the next soft_segment run in ``found``."""
    from finecut.soft import pipeline

    superpixels, eigenvectors = (
        pipeline.affinities.compute_superpixels,
        pipeline.eigen.smallest_eigenvectors,
    )

    def keep_superpixels(*args, **kwargs):
        found["superpixels"] = superpixels(*args, **kwargs)
        return found["superpixels"]

    def keep_eigenvectors(*args, **kwargs):
        values, vectors = eigenvectors(*args, **kwargs)
        found["vectors"] = vectors
        return values, vectors

    pipeline.affinities.compute_superpixels = keep_superpixels
    pipeline.eigen.smallest_eigenvectors = keep_eigenvectors
    try:
        yield found
    finally:
        pipeline.affinities.compute_superpixels = superpixels
        pipeline.eigen.smallest_eigenvectors = eigenvectors


@contextlib.contextmanager
def _oracle_grouping(found: dict, mask: np.ndarray):
    """Group the segments of the next run with the mask's help (see the module's text)."""
    from finecut.soft import pipeline

    shipped = pipeline.grouping.group_segments

    def oracle(segments, features, n_layers, *, mass=None, **kwargs):
        share = found["superpixels"].means(mask[..., None].astype(np.float64))[:, 0]
        weights = np.maximum(segments, 0.0) * (1.0 if mass is None else mass[:, None])
        inside = (weights * share[:, None]).sum(0) / np.maximum(weights.sum(0), 1e-12)
        found["segments_inside"] = int((inside > 0.5).sum())
        # the oracle union of the constrained step's segments on the superpixels, before the
        # grouping and the relaxed step (same measure as the span ceilings)
        union = segments[:, inside > 0.5].sum(1) > 0.5
        target = share > 0.5
        sizes = found["superpixels"].sizes
        found["segments_union"] = float(
            (sizes * (union & target)).sum() / max((sizes * (union | target)).sum(), 1e-12)
        )
        if (inside > 0.5).all() or not (inside > 0.5).any():
            return shipped(segments, features, n_layers, mass=mass, **kwargs)
        rest = np.flatnonzero(inside <= 0.5)
        _, rest_groups = shipped(segments[:, rest], features, n_layers - 1, mass=mass, **kwargs)
        groups = np.zeros(segments.shape[1], dtype=np.int64)
        groups[rest] = rest_groups + 1
        layers = np.stack([segments[:, groups == g].sum(1) for g in range(groups.max() + 1)], 1)
        return layers, groups

    pipeline.grouping.group_segments = oracle
    try:
        yield
    finally:
        pipeline.grouping.group_segments = shipped


def ceilings(superpixels, vectors: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """The span-k and superpixel ceilings of one image (see the module's text)."""
    sizes = superpixels.sizes
    share = superpixels.means(mask[..., None].astype(np.float64))[:, 0]
    target = share > 0.5
    out = {}
    on = target[superpixels.labels]
    out["superpixels"] = float((on & mask).sum() / max((on | mask).sum(), 1))
    node_vectors = vectors[: superpixels.count]
    root = np.sqrt(sizes)
    # the control: as many random vectors as the largest span (what a fit of that many free
    # coefficients reaches without the graph)
    rng = np.random.default_rng(0)
    control = rng.standard_normal((node_vectors.shape[0], SPANS[-1]))
    for k, basis in [(k, node_vectors[:, :k]) for k in SPANS] + [("random", control)]:
        coef, *_ = np.linalg.lstsq(basis * root[:, None], share * root, rcond=None)
        fit = basis @ coef > 0.5
        union = (sizes * (fit | target)).sum()
        out[f"span{k}"] = float((sizes * (fit & target)).sum() / max(union, 1e-12))
    return out


def main() -> None:
    args = _parse()
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, str(args.threads))
    import torch
    from threadpoolctl import threadpool_limits

    from finecut.models.embedding import load_embedding_model
    from finecut.soft import soft_segment
    from finecut.soft.compare import object_layers

    torch.set_num_threads(args.threads)
    frames_args = SimpleNamespace(**vars(args), stem_range=None)
    stems = soft_quality._frames(frames_args)
    model = load_embedding_model(None, "cpu")
    print(
        f"soft diagnose: {args.dataset} {len(stems)} images, {args.long_side} px, fast mode, "
        f"{args.layers} layers, shipped embedding; {args.threads} thread(s), "
        f"{platform.processor() or platform.machine()}",
        flush=True,
    )
    rows = []
    with threadpool_limits(limits=args.threads):
        for stem in stems:
            start = time.perf_counter()
            image, mask = soft_quality._frame(frames_args, stem)
            features = model.embed(image)
            found: dict = {}
            with _capture(found):
                alphas = soft_segment(image, features, n_layers=args.layers, mode="fast").alphas
            shipped = object_layers(alphas, mask)
            row = {"frame": stem, "object_share": float(mask.mean())}
            row["shipped_pair_iou"] = shipped.pair.iou
            row.update(ceilings(found["superpixels"], found["vectors"], mask))
            with _capture(found), _oracle_grouping(found, mask):
                alphas = soft_segment(image, features, n_layers=args.layers, mode="fast").alphas
            row["oracle_pair_iou"] = object_layers(alphas, mask).pair.iou
            row["segments_inside"] = found.get("segments_inside", 0)
            row["segments_union"] = found.get("segments_union", 0.0)
            rows.append(row)
            print(
                f"{stem}: shipped {row['shipped_pair_iou']:.3f}  oracle grouping "
                f"{row['oracle_pair_iou']:.3f}  oracle segments {row['segments_union']:.3f}  "
                f"superpixels {row['superpixels']:.3f}  "
                + "  ".join(f"span{k} {row[f'span{k}']:.3f}" for k in (*SPANS, "random"))
                + f"  ({time.perf_counter() - start:.1f} s)",
                flush=True,
            )
            if args.json is not None:
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps({"args": sys.argv[1:], "rows": rows}, indent=1))
    keys = ["shipped_pair_iou", "oracle_pair_iou", "segments_union", "superpixels"]
    keys += [f"span{k}" for k in (*SPANS, "random")]
    print(f"\n{args.dataset}, {len(rows)} images, means:\n")
    print("| " + " | ".join(["images", *keys]) + " |")
    print("|" + "---:|" * (len(keys) + 1))
    print(
        f"| {len(rows)} | "
        + " | ".join(f"{np.mean([r[k] for r in rows]):.3f}" for k in keys)
        + " |"
    )


if __name__ == "__main__":
    main()
