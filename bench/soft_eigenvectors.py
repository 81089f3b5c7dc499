"""Do the fast mode's eigenvectors see objects? The smallest eigenvectors of the soft-segmentation
Laplacian on the superpixel graph (fast mode) against those on the pixel graph (the paper's).

    .venv/bin/python bench/soft_eigenvectors.py ../data/duts/images/ILSVRC2014_train_00007518.jpg \\
        --side 200 --out docs/img/soft_eigenvectors.png

The image is resized (area) to a long side of ``--side`` px (the pixel graph's eigensolver takes
seconds at 200 px and minutes at 640), features are colour + position (``--features none``) or
finecut's embedding network (``auto``), and the Laplacian is built exactly as
:func:`finecut.soft.soft_segment` builds it in fast mode (superpixels, matting + 0.01 semantic +
0.01 colour affinities) and in faithful mode's pixel form on the same superpixels. Writes one grey
PNG: a row per graph, the image then eigenvectors 1, 2, 3, 5, 10 and 19 (0 is constant), each
stretched to [0, 255]; prints the solve times and the first eigenvalues.

A third row: the same Laplacian on the colour-linear superpixel basis that the fast mode now
uses (:mod:`finecut.soft.basis`: per superpixel a constant and its colour-linear functions,
``P^T L P`` with ``P^T P`` as mass), the functions the matting Laplacian finds cheap inside each
superpixel. The first row is ``basis="constant"``, the fast mode before. ``--no-pixels`` skips the
pixel graph (minutes at 640 px).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("image", type=Path)
    p.add_argument("--side", type=int, default=200, help="long side in px (200)")
    p.add_argument("--features", default="none", choices=("none", "auto"))
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    p.add_argument("--no-pixels", action="store_true", help="skip the pixel graph")
    args = p.parse_args()
    if args.side < 16:
        sys.exit("soft_eigenvectors: error: --side must be >= 16")

    import cv2
    import numpy as np

    from finecut.data.io import read_image
    from finecut.errors import FinecutError
    from finecut.soft import affinities, eigen, laplacian
    from finecut.soft.features import fallback_features
    from finecut.soft.pipeline import FAST, _preprocess
    from finecut.soft.semantic import semantic_features

    try:
        img = read_image(args.image)
    except FinecutError as exc:
        sys.exit(f"soft_eigenvectors: error: {exc}")
    h, w = img.shape[:2]
    scale = min(1.0, args.side / max(h, w))
    img = cv2.resize(img, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    im = img.astype(np.float64) / 255.0
    hh, ww = im.shape[:2]
    cfg = FAST
    raw = fallback_features(im) if args.features == "none" else semantic_features(img, "auto")
    feats = _preprocess(raw, im, cfg)
    n_sp = max(1, min(cfg.n_superpixels, hh * ww // cfg.min_superpixel_pixels))
    sp = affinities.compute_superpixels(im, n_sp, cfg.slic_compactness)
    w_m = affinities.matting_affinity(im, cfg.matting_radius, cfg.matting_eps)
    w_s = affinities.semantic_affinity(sp, feats, cfg.semantic_steepness, cfg.semantic_center)
    w_c = affinities.color_affinity(
        sp, im, cfg.color_steepness, cfg.color_center, cfg.color_max_distance,
        cfg.color_min_affinity,
    )
    weights = {"semantic_weight": cfg.semantic_weight, "color_weight": cfg.color_weight}
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    rows = []
    graphs = ("superpixels",) if args.no_pixels else ("superpixels", "pixels")
    for graph in graphs:
        start = time.perf_counter()
        if graph == "superpixels":
            lap = laplacian.superpixel_laplacian(w_m, w_s, w_c, sp, **weights)
            mass = sp.sizes
        else:
            lap = laplacian.pixel_laplacian(w_m, w_s, w_c, sp, **weights)
            mass = None
        values, vectors = eigen.smallest_eigenvectors(lap, 20, mass=mass, seed=0)
        print(f"{graph}: {lap.shape[0]} nodes, {time.perf_counter() - start:.1f} s, "
              f"eigenvalues {np.array2string(values[:5], precision=2)}")
        tiles = [grey]
        for k in (1, 2, 3, 5, 10, 19):
            v = vectors[:, k]
            v = v[sp.labels] if graph == "superpixels" else v.reshape(hh, ww)
            v = (v - v.min()) / (np.ptp(v) + 1e-12)
            tiles.append((v * 255).astype(np.uint8))
        rows.append(np.hstack(tiles))
    rows.append(np.hstack([grey] + _colour_linear_basis(im, sp, w_m, w_s, w_c, weights)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), np.vstack(rows))
    print(f"wrote {args.out}: rows: {', '.join(graphs)}, colour-linear basis (fast mode)")


def _colour_linear_basis(im, sp, w_m, w_s, w_c, weights) -> list:
    """Eigenvectors 1, 2, 3, 5, 10, 19 on the fast mode's colour-linear basis, as pixels."""
    import numpy as np

    from finecut.soft import eigen, laplacian
    from finecut.soft.basis import colour_linear_basis

    hh, ww = im.shape[:2]
    start = time.perf_counter()
    basis = colour_linear_basis(im, sp)
    lap = laplacian.basis_laplacian(w_m, w_s, w_c, basis, **weights)
    values, vectors = eigen.smallest_eigenvectors(lap, 20, mass=basis.mass, seed=0)
    print(f"colour-linear basis: {basis.size} unknowns, {time.perf_counter() - start:.1f} s, "
          f"eigenvalues {np.array2string(values[:5], precision=2)}")
    tiles = []
    for k in (1, 2, 3, 5, 10, 19):
        v = basis.to_pixels(vectors[:, k]).reshape(hh, ww)
        lo, hi = np.percentile(v, [1, 99])  # colour-linear parts can overshoot at single pixels
        tiles.append((np.clip((v - lo) / (hi - lo + 1e-12), 0, 1) * 255).astype(np.uint8))
    return tiles


if __name__ == "__main__":
    main()
