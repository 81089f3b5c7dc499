"""A learned "keep" decision per changed region: undo the refiner's changes that are likely wrong.

The edge check (:mod:`finecut.refine.support`) keeps a changed region when the output's boundary
next to it lies on stronger colour edges than the input's. One margin for every region cannot
tell a low-resolution mask (whose changes are wide and mostly right) from a near-perfect one
(whose changes are slivers and mostly wrong). Here each connected region where the finished mask
differs from the input is described by a few numbers (its size, thickness and reach from the
input boundary, the edge support on both sides, the CRM's confidence in it, how well the input's
boundary already follows edges, how much of the image changed) and a small model trained on
training-side images (``finecut train keep``: a logistic :class:`KeepModel` or, the default
since the fourteenth session, gradient-boosted :class:`KeepTrees`) gives the probability that
the change is right.
Regions below ``threshold`` take the input's value.

Written here because no library judges a mask edit region by region; the pieces are OpenCV's
(connected components, distance transforms, dilation) and numpy's.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage

from finecut.refine.support import (
    _boundary,
    boundary_support,
    changed_regions,
    edge_strength,
    set_to_input,
)

__all__ = [
    "DEFAULT_KEEP_MODEL",
    "FEATURES",
    "KeepModel",
    "KeepTrees",
    "apply_keep",
    "default_keep_model",
    "default_snap_keep_model",
    "keep_probabilities",
    "left_to_input",
    "load_keep_model",
    "region_features",
    "second_opinion",
    "undo_regions",
]

#: The names of the columns of :func:`region_features`, in order.
FEATURES = (
    "log_area",
    "log_area_per_outline",
    "added",
    "support_in",
    "support_out",
    "log_support_ratio",
    "has_in_boundary",
    "has_out_boundary",
    "crm_confidence",
    "crm_agrees",
    "log_thickness",
    "log_reach",
    "outline_support",
    "log_changed_per_outline",
    "log_long_side",
    "colour_evidence",
)


def tile_pixels(tile: float, shape: tuple[int, ...]) -> int:
    """The side in px of the cells that cut changed regions: ``tile`` times the image's long
    side (at least 8 px), so an image and its upsampled copy are cut alike; 0 = no cut."""
    return max(8, round(tile * max(shape[:2]))) if tile > 0 else 0


def region_features(
    rgb: np.ndarray,
    coarse: np.ndarray,
    prob: np.ndarray,
    crm: np.ndarray,
    reach: int = 2,
    tile: float = 0.0,
) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
    """The changed regions of ``prob`` against ``coarse`` and one row of features per region.

    ``tile`` > 0 cuts each connected region into pieces along a grid of cells of ``tile`` times
    the image's long side (:func:`tile_pixels`), and each piece is a region.

    ``prob`` is the finished probability (gate and snapping applied), ``crm`` the CRM's own.
    Returns ``(box, labels, features)``: ``labels`` is the (h, w) region map of the image crop
    ``box`` (0 = unchanged, region k = row k - 1 of ``features``), ``features`` is
    ``(n_regions, len(FEATURES))`` float64. No regions: an empty box and a (0, F) array.

    Shape:
        rgb: (H, W, 3) uint8; coarse: (H, W) bool; prob, crm: (H, W) float.
    """
    new = prob > 0.5
    box, n, labels = changed_regions(coarse, new, reach, tile_pixels(tile, coarse.shape))
    if n == 1:
        return box, labels, np.zeros((0, len(FEATURES)))
    h, w = coarse.shape
    changed = new != coarse
    idx = labels.ravel()
    area = np.bincount(idx, minlength=n).astype(np.float64)

    # edge support of the input's and the output's boundary within reach of each region, in
    # units of the image's own contrast (the 95th percentile of the gradient in the box), so a
    # soft video frame and a crisp photo read alike
    g = edge_strength(rgb[box])
    g = g / (float(np.percentile(g, 95)) + 1e-3)
    c0, s0, c1, s1 = boundary_support(g, coarse[box], new[box], labels, n, reach)

    # the whole input outline: its length and how well it follows edges (image-level)
    outline = _boundary(coarse)
    outline_len = float(outline.sum()) + 1.0
    ob = outline[box]
    outline_support = float(g[ob].mean()) if ob.any() else 0.0
    changed_per_outline = float(changed.sum()) / outline_len

    # the CRM's confidence in each region and whether the CRM itself made the change
    crm_box = crm[box].astype(np.float64)
    conf = np.bincount(idx, weights=np.abs(crm_box.ravel() - 0.5) * 2, minlength=n)
    agrees = np.bincount(idx, weights=((crm_box > 0.5) == new[box]).ravel(), minlength=n)
    # thickness: the largest distance to the region's own edge; reach: the largest distance
    # from the input's boundary
    inside = cv2.distanceTransform((labels > 0).view(np.uint8) * 255, cv2.DIST_L2, 3)
    from_outline = cv2.distanceTransform((~ob).view(np.uint8) * 255, cv2.DIST_L2, 3)
    index = np.arange(n)
    thick = np.asarray(ndimage.maximum(inside, labels, index), np.float64)
    reach_px = np.asarray(ndimage.maximum(from_outline, labels, index), np.float64)
    added = np.bincount(idx, weights=new[box].ravel().astype(np.float64), minlength=n)

    # colour evidence: is the region's mean colour nearer the object's or the background's,
    # both read in a band of 3 to 12 px on either side of the input's boundary in the box? For
    # an added region "nearer the object" speaks for the change, for a removed one against it
    img = rgb[box].astype(np.float32)
    dist_in = cv2.distanceTransform(coarse[box].view(np.uint8), cv2.DIST_L2, 3)
    dist_out = cv2.distanceTransform((~coarse[box]).view(np.uint8), cv2.DIST_L2, 3)
    fg_band = (dist_in >= 3) & (dist_in <= 12)
    bg_band = (dist_out >= 3) & (dist_out <= 12)
    evidence = np.zeros(n)
    if fg_band.any() and bg_band.any():
        fg, bg = img[fg_band].mean(axis=0), img[bg_band].mean(axis=0)
        colour = (
            np.stack(
                [np.bincount(idx, weights=img[..., c].ravel(), minlength=n) for c in range(3)], 1
            )
            / np.maximum(area, 1.0)[:, None]
        )
        d_fg = np.linalg.norm(colour - fg, axis=1)
        d_bg = np.linalg.norm(colour - bg, axis=1)
        toward = (d_bg - d_fg) / (d_bg + d_fg + 1e-3)  # +1: object's colour, -1: background's
        sign = np.where(added > area / 2, 1.0, -1.0)
        evidence = toward * sign

    a = np.maximum(area, 1.0)
    f = np.stack(
        [
            np.log1p(area),
            np.log(a / outline_len),
            added / a,
            s0,
            s1,
            np.log((s1 + 0.05) / (s0 + 0.05)),
            (c0 > 0).astype(np.float64),
            (c1 > 0).astype(np.float64),
            conf / a,
            agrees / a,
            np.log1p(thick),
            np.log1p(reach_px),
            np.full(n, outline_support),
            np.full(n, np.log(changed_per_outline + 1e-4)),
            np.full(n, np.log(max(h, w))),
            evidence,
        ],
        axis=1,
    )
    return box, labels, f[1:]


@dataclass(frozen=True)
class KeepModel:
    """Logistic regression on standardised :data:`FEATURES`: p = sigmoid(w . (x - mean) / std + b).

    ``threshold``: a region is kept when p >= threshold (chosen on training-side images).
    ``tile``: the regions are cut into cells of ``tile`` times the image's long side before they
    are judged (0: whole connected regions), as when the model was trained."""

    mean: np.ndarray
    std: np.ndarray
    weight: np.ndarray
    bias: float
    threshold: float = 0.5
    tile: float = 0.0

    def probability(self, features: np.ndarray) -> np.ndarray:
        z = (features - self.mean) / self.std @ self.weight + self.bias
        return 1.0 / (1.0 + np.exp(-z))

    def save(self, path: str | Path, metadata: dict[str, str] | None = None) -> None:
        """Write the model as safetensors (float64 arrays; the feature names in the metadata)."""
        from safetensors.numpy import save_file

        tensors = {
            "mean": self.mean,
            "std": self.std,
            "weight": self.weight,
            "bias": np.array([self.bias]),
            "threshold": np.array([self.threshold]),
            "tile": np.array([self.tile]),
        }
        meta = {"features": ",".join(FEATURES), **(metadata or {})}
        save_file(
            {k: np.ascontiguousarray(v, np.float64) for k, v in tensors.items()}, str(path), meta
        )


@dataclass(frozen=True)
class KeepTrees:
    """Gradient-boosted decision trees on the raw :data:`FEATURES` (fitted by scikit-learn's
    ``HistGradientBoostingClassifier`` in ``finecut train keep --form trees``, exported to
    arrays): p = sigmoid(baseline + the sum over trees of the leaf each region reaches).

    Every array is (trees, nodes), padded with leaves of value 0; node 0 is each tree's root. An
    inner node sends a region left when its feature is at most ``split`` (a missing value, NaN,
    goes where ``missing_left`` says), as scikit-learn's predictor does. Children always have
    larger indices than their parent, so a walk ends within ``nodes`` steps.

    Evaluated here with numpy, not scikit-learn, so that inference needs no extra dependency and
    the file is plain arrays (safetensors), not a pickle.
    ``threshold`` and ``tile`` as for :class:`KeepModel`."""

    feature: np.ndarray
    split: np.ndarray
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray
    is_leaf: np.ndarray
    missing_left: np.ndarray
    baseline: float
    threshold: float = 0.5
    tile: float = 0.0

    def raw(self, features: np.ndarray, chunk: int = 2048) -> np.ndarray:
        """The boosted sum (log-odds) for each row of ``features`` (n, len(FEATURES)), walked
        ``chunk`` rows at a time (every tree at once: (trees, chunk) arrays bound the memory)."""
        x = np.asarray(features, np.float64)
        if len(x) > chunk:
            return np.concatenate(
                [self.raw(x[i : i + chunk], chunk) for i in range(0, len(x), chunk)]
            )
        n, trees = len(x), self.feature.shape[0]
        node = np.zeros((trees, n), np.int64)
        t = np.arange(trees)[:, None]
        rows = np.arange(n)[None, :]
        for _ in range(self.feature.shape[1]):
            inner = ~self.is_leaf[t, node]
            if not inner.any():
                break
            v = x[rows, self.feature[t, node]]
            go_left = np.where(np.isnan(v), self.missing_left[t, node], v <= self.split[t, node])
            child = np.where(go_left, self.left[t, node], self.right[t, node])
            node = np.where(inner, child, node)
        return self.baseline + self.value[t, node].sum(axis=0)

    def probability(self, features: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.raw(features)))

    def save(self, path: str | Path, metadata: dict[str, str] | None = None) -> None:
        """Write the trees as safetensors (``form`` = ``trees`` and the feature names in the
        metadata)."""
        from safetensors.numpy import save_file

        tensors = {
            "feature": np.ascontiguousarray(self.feature, np.int64),
            "split": np.ascontiguousarray(self.split, np.float64),
            "left": np.ascontiguousarray(self.left, np.int64),
            "right": np.ascontiguousarray(self.right, np.int64),
            "value": np.ascontiguousarray(self.value, np.float64),
            "is_leaf": np.ascontiguousarray(self.is_leaf, np.uint8),
            "missing_left": np.ascontiguousarray(self.missing_left, np.uint8),
            "baseline": np.array([self.baseline], np.float64),
            "threshold": np.array([self.threshold], np.float64),
            "tile": np.array([self.tile], np.float64),
        }
        meta = {"features": ",".join(FEATURES), "form": "trees", **(metadata or {})}
        save_file(tensors, str(path), meta)


def _trees_from_arrays(path: Path, arrays: dict[str, np.ndarray]) -> KeepTrees:
    """A :class:`KeepTrees` from the arrays of its file, checked so that a foreign or hostile
    file is a :class:`~finecut.errors.WeightsError`, never an index error or an endless walk."""
    from finecut.errors import WeightsError

    names = ("feature", "split", "left", "right", "value", "is_leaf", "missing_left")
    if any(k not in arrays for k in (*names, "baseline", "threshold")):
        raise WeightsError(f"keep model {str(path)!r} lacks some of the trees' arrays")
    a = {k: arrays[k] for k in names}
    shape = a["feature"].shape
    if len(shape) != 2 or 0 in shape or any(v.shape != shape for v in a.values()):
        raise WeightsError(f"keep model {str(path)!r}: the trees' arrays differ in shape")
    leaf = a["is_leaf"] != 0
    idx = np.arange(shape[1])[None, :]
    ints = [a[k] for k in ("feature", "left", "right")]
    if any(not np.array_equal(v, np.round(v)) for v in ints):
        raise WeightsError(f"keep model {str(path)!r}: node and feature indices must be integers")
    feature, left, right = (v.astype(np.int64) for v in ints)
    inner_ok = (
        (feature >= 0) & (feature < len(FEATURES)) & (left > idx) & (right > idx)
        & (left < shape[1]) & (right < shape[1])
    )  # fmt: skip
    if not np.all(leaf | inner_ok) or not np.all(np.isfinite(a["value"])):
        raise WeightsError(f"keep model {str(path)!r}: its trees are malformed")
    # leaves' own indices are never followed; make them harmless
    feature, left, right = (np.where(leaf, 0, v) for v in (feature, left, right))
    tile = float(arrays["tile"][0]) if "tile" in arrays else 0.0
    if not 0.0 <= tile < 1.0:
        raise WeightsError(f"keep model {str(path)!r}: tile {tile} is not in [0, 1)")
    return KeepTrees(
        feature, a["split"], left, right, a["value"], leaf, a["missing_left"] != 0,
        baseline=float(arrays["baseline"][0]), threshold=float(arrays["threshold"][0]), tile=tile,
    )  # fmt: skip


def load_keep_model(path: str | Path, expected_sha256: str | None = None) -> KeepModel | KeepTrees:
    """A :class:`KeepModel` or :class:`KeepTrees` (metadata ``form``) from its safetensors file, its
    sha256 checked when one is given.

    Raises:
        WeightsError: a missing, corrupt or foreign file.
    """
    from safetensors import safe_open

    from finecut.errors import WeightsError
    from finecut.weights import sha256_file

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"keep model {str(path)!r} not found")
    if expected_sha256 is not None and sha256_file(path) != expected_sha256:
        raise WeightsError(
            f"keep model {str(path)!r} is corrupt: its sha256 does not match the recorded "
            f"{expected_sha256[:12]}... (reinstall finecut)"
        )
    try:
        with safe_open(str(path), framework="numpy") as fh:
            meta = fh.metadata() or {}
            arrays = {k: fh.get_tensor(k).astype(np.float64) for k in fh.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises several types on bad headers
        raise WeightsError(f"keep model {str(path)!r} cannot be read: {exc}") from None
    if meta.get("features", "").split(",") != list(FEATURES):
        raise WeightsError(f"keep model {str(path)!r}: its features are not this version's")
    form = meta.get("form", "logistic")  # files before the trees have no form
    if form == "trees":
        return _trees_from_arrays(path, arrays)
    if form != "logistic":
        raise WeightsError(f"keep model {str(path)!r}: unknown form {form!r}")
    try:
        vectors = [arrays[k] for k in ("mean", "std", "weight")]
        bias, threshold = float(arrays["bias"][0]), float(arrays["threshold"][0])
        # files of the third session have no tile: whole regions
        tile = float(arrays["tile"][0]) if "tile" in arrays else 0.0
    except (KeyError, IndexError):
        raise WeightsError(
            f"keep model {str(path)!r} lacks mean, std, weight, bias or threshold"
        ) from None
    if any(v.shape != (len(FEATURES),) for v in vectors):
        raise WeightsError(f"keep model {str(path)!r}: one value per feature is needed")
    if not 0.0 <= tile < 1.0:
        raise WeightsError(f"keep model {str(path)!r}: tile {tile} is not in [0, 1)")
    return KeepModel(*vectors, bias=bias, threshold=threshold, tile=tile)


#: The embedded keep model of the default: since the fourteenth session the gradient-boosted
#: trees ``refine_keep_trees`` (chosen by the rules in docs/training_refine.md, "A judge of
#: another form"); the earlier logistic model ``refine_keep`` stays loadable by its file.
DEFAULT_KEEP_MODEL = "refine_keep_trees"


@functools.lru_cache(maxsize=1)
def default_keep_model() -> KeepModel | KeepTrees:
    """The embedded keep model (``finecut/weights/`` :data:`DEFAULT_KEEP_MODEL`
    ``.safetensors``), sha256-checked."""
    from finecut.weights import WEIGHTS_DIR, load_manifest

    manifest = load_manifest(DEFAULT_KEEP_MODEL)
    return load_keep_model(WEIGHTS_DIR / manifest["file"], manifest["sha256"])


@functools.lru_cache(maxsize=1)
def default_snap_keep_model() -> KeepModel:
    """The embedded model of the second opinion (``finecut/weights/refine_keep_snap.safetensors``:
    which of snapping alone's changes to trust), sha256-checked."""
    from finecut.weights import WEIGHTS_DIR, load_manifest

    manifest = load_manifest("refine_keep_snap")
    return load_keep_model(WEIGHTS_DIR / "refine_keep_snap.safetensors", manifest["sha256"])


def keep_probabilities(
    rgb: np.ndarray, coarse: np.ndarray, prob: np.ndarray, crm: np.ndarray, model: KeepModel
) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
    """``(box, labels, p)``: the changed regions (as :func:`region_features`) and the model's
    probability that each change is right (``p[k - 1]`` for region ``k``)."""
    box, labels, feats = region_features(rgb, coarse, prob, crm, tile=model.tile)
    return box, labels, model.probability(feats) if len(feats) else np.zeros(0)


def undo_regions(
    prob: np.ndarray, coarse: np.ndarray, box, labels: np.ndarray, p: np.ndarray, threshold: float
) -> np.ndarray:
    """``prob`` with the regions whose ``p`` is below ``threshold`` set to the input's value."""
    prob = prob.astype(np.float32, copy=False)
    return set_to_input(prob, coarse, box, labels, np.concatenate([[False], p < threshold]))


def apply_keep(
    rgb: np.ndarray,
    coarse: np.ndarray,
    prob: np.ndarray,
    crm: np.ndarray,
    model: KeepModel,
    threshold: float | None = None,
) -> np.ndarray:
    """``prob`` with every changed region the model does not trust set back to the input's value.

    Shape:
        rgb: (H, W, 3) uint8; coarse: (H, W) bool; prob, crm: (H, W) float -> (H, W) float32.
    """
    box, labels, p = keep_probabilities(rgb, coarse, prob, crm, model)
    t = model.threshold if threshold is None else threshold
    return undo_regions(prob, coarse, box, labels, p, t)


def left_to_input(kept: np.ndarray, coarse: np.ndarray, other: np.ndarray) -> np.ndarray:
    """``other`` where ``kept`` still has the input's value, the input elsewhere: the changes of
    another finishing that :func:`second_opinion` may add (regions of it against ``coarse``).

    Shape: (H, W) float, (H, W) bool, (H, W) float -> (H, W) float32.
    """
    return np.where((kept > 0.5) == coarse, other, coarse).astype(np.float32)


def second_opinion(
    kept: np.ndarray,
    coarse: np.ndarray,
    other: np.ndarray,
    box,
    labels: np.ndarray,
    p: np.ndarray,
    threshold: float,
) -> np.ndarray:
    """``kept`` with another finishing's trusted changes added where ``kept`` left the input.

    ``box, labels, p`` are :func:`keep_probabilities` of ``left_to_input(kept, coarse, other)``
    against ``coarse`` (e.g. ``other`` is snapping alone): each of its regions with
    ``p >= threshold`` takes ``other``'s value; a change ``kept`` made is never overridden.

    Shape:
        kept, other: (H, W) float; coarse: (H, W) bool -> (H, W) float32.
    """
    out = kept.astype(np.float32, copy=True)
    if not len(p):
        return out
    trusted = np.concatenate([[False], p >= threshold])[labels]
    take = trusted & ((out[box] > 0.5) == coarse[box])
    out[box][take] = other[box][take]
    return out
