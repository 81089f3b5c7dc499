"""Train the refiner's "keep" model (:mod:`finecut.refine.keep`) on training-side images.

Cases: DUTS-TR images that the hold-out list leaves for training, each with every coarse family
(:func:`finecut.train.coarse.seeded_coarse`), at a scale and photo condition drawn per image
(clean, or video-like: blur and JPEG). The refiner's CRM probability of each case is cached (it
is the slow part), the finishing (gate and snapping) applied, and every connected region where
the finished mask differs from the input is one example: its :data:`FEATURES` and whether the
change is right (most of its pixels then agree with the ground truth), weighted by its area in
units of the image's outline so that every image counts about alike.

The fit is an L2-regularised logistic regression by SciPy's L-BFGS (``form`` ``logistic``), or
gradient-boosted trees by scikit-learn's ``HistGradientBoostingClassifier`` (``form`` ``trees``,
exported to :class:`finecut.refine.keep.KeepTrees`; scikit-learn is needed only to fit them:
``pip install 'finecut[train]'``).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from finecut.refine.keep import FEATURES, KeepModel, KeepTrees, region_features
from finecut.train.refine_data import jpeg_roundtrip

log = logging.getLogger(__name__)

__all__ = [
    "CANDIDATES",
    "FORMS",
    "KeepTrainConfig",
    "degrade_photo",
    "fit_keep",
    "fit_keep_trees",
    "gather_regions",
    "trees_from_sklearn",
    "keep_output",
    "require_scikit_learn",
]


def degrade_photo(image: np.ndarray, condition: str) -> np.ndarray:
    """The photo as it is (``clean``) or as a video frame has it (``video``: Gaussian blur of
    1.2 px and JPEG at quality 40)."""
    if condition == "clean":
        return image
    if condition == "video":
        return jpeg_roundtrip(cv2.GaussianBlur(image, (0, 0), 1.2), 40)
    raise ValueError(f"unknown photo condition {condition!r}; choose clean or video")


@dataclass
class KeepTrainConfig:
    """Which training-side cases :func:`gather_regions` makes.

    Attributes:
        images: how many images (drawn with ``seed`` from the stems left for training).
        families: coarse families, every one for every image.
        scales / scale_p: the scale drawn per image and its probabilities.
        conditions: photo conditions, one drawn per image.
        l2: weight of the L2 penalty of the fit (on standardised features).
        tile: cut the changed regions into cells of this share of the image's long side
            (:func:`finecut.refine.keep.tile_pixels`; 0: whole connected regions).
        candidate: whose changes are judged: ``finecut`` (the CRM's, after the gate and the
            snapping: the keep step's model) or ``snap`` (snapping alone's, the snapping applied
            to the input mask, where the refiner's keep step left the input as it was: the
            model of the second opinion, ``InferenceConfig.keep_snap_threshold``).
        form: ``logistic`` (:func:`fit_keep`) or ``trees`` (:func:`fit_keep_trees`).
    """

    images: int = 120
    families: tuple[str, ...] = ("lowres", "sam", "polygon", "brush", "perturb", "identity")
    scales: tuple[float, ...] = (1.0, 2.0, 4.0)
    scale_p: tuple[float, ...] = (0.45, 0.35, 0.2)
    conditions: tuple[str, ...] = ("clean", "video")
    seed: int = 0
    l2: float = 1e-2
    tile: float = 0.0
    candidate: str = "finecut"
    form: str = "logistic"


#: The values of :attr:`KeepTrainConfig.candidate`.
CANDIDATES = ("finecut", "snap")
#: The values of :attr:`KeepTrainConfig.form`.
FORMS = ("logistic", "trees")


def gather_regions(
    pairs: list[tuple[Path, Path]], refiner, cfg: KeepTrainConfig, cache: Path | None = None
) -> dict[str, np.ndarray]:
    """Features, labels and weights of every changed region of every case of ``pairs``.

    Returns arrays ``x`` (n, F), ``y`` (n,) 0/1, ``w`` (n,), ``case`` (n,) the case index, and
    per case ``case_family``, ``case_scale``, ``case_condition``, ``case_stem``.
    """
    from finecut.data.io import read_image, read_mask
    from finecut.refine.api import gate_and_snap, snap_alone_probability
    from finecut.refine.evaluate import cached_float16, upsample_case
    from finecut.train.coarse import seeded_coarse

    if cfg.candidate not in CANDIDATES:
        raise ValueError(f"unknown candidate {cfg.candidate!r}; choose {' or '.join(CANDIDATES)}")
    if cfg.candidate == "snap":
        from finecut.refine.keep import apply_keep, default_keep_model, left_to_input

        keep_model = refiner.keep_model
        if keep_model is None:
            keep_model = default_keep_model()
    rng = np.random.default_rng(cfg.seed)
    xs, ys, ws, cs = [], [], [], []
    meta = {"case_family": [], "case_scale": [], "case_condition": [], "case_stem": []}
    t0 = time.perf_counter()
    for n, (img_path, gt_path) in enumerate(pairs):
        image0 = read_image(img_path)
        gt0 = read_mask(gt_path, shape=image0.shape[:2], image_path=img_path) > 127
        scale = float(rng.choice(cfg.scales, p=cfg.scale_p))
        cond = str(rng.choice(cfg.conditions))
        photo0 = degrade_photo(image0, cond)
        for fam in cfg.families:
            coarse0 = seeded_coarse(gt0, img_path.stem, fam, cfg.seed)
            image, gt, coarse = upsample_case(photo0, gt0, coarse0, scale)
            # the CRM and the snapping are the slow parts: both cached (float16, also on the
            # first run, so a rerun gives the same fit)
            case = f"{img_path.stem}_{cond}_{fam}_{scale:g}"
            crm = cached_float16(
                cache / f"{case}.npy" if cache else None,
                refiner._crm_probability, image, coarse, refiner.config,
            )  # fmt: skip
            prob = cached_float16(
                cache / f"{case}_finish.npy" if cache else None,
                gate_and_snap, image, coarse, crm, refiner.config,
            )  # fmt: skip
            if cfg.candidate == "snap":
                # the second opinion's regions: snapping alone's changes where the keep step
                # (the refiner's keep model at its threshold) left the input as it was
                snapped = cached_float16(
                    cache / f"{case}_snapalone.npy" if cache else None,
                    snap_alone_probability, image, coarse, refiner.config,
                )  # fmt: skip
                kept = apply_keep(image, coarse, prob, crm, keep_model)
                prob = left_to_input(kept, coarse, snapped)
            box, labels, feats = region_features(image, coarse, prob, crm, tile=cfg.tile)
            if len(feats):
                new = prob[box] > 0.5
                idx = labels.ravel()
                k = len(feats) + 1
                area = np.bincount(idx, minlength=k)[1:].astype(np.float64)
                right = np.bincount(idx, weights=(new == gt[box]).ravel(), minlength=k)[1:]
                outline = max(
                    1.0,
                    float(np.count_nonzero(gt[1:] != gt[:-1]))
                    + float(np.count_nonzero(gt[:, 1:] != gt[:, :-1])),
                )
                xs.append(feats)
                ys.append((right > area / 2).astype(np.float64))
                ws.append(area / outline)
                cs.append(np.full(len(feats), len(meta["case_stem"])))
            meta["case_family"].append(fam)
            meta["case_scale"].append(scale)
            meta["case_condition"].append(cond)
            meta["case_stem"].append(img_path.stem)
        log.info("[%d/%d] %s %.0f s", n + 1, len(pairs), img_path.stem, time.perf_counter() - t0)
    out = {
        "x": np.concatenate(xs) if xs else np.zeros((0, len(FEATURES))),
        "y": np.concatenate(ys) if ys else np.zeros(0),
        "w": np.concatenate(ws) if ws else np.zeros(0),
        "case": np.concatenate(cs) if cs else np.zeros(0, np.int64),
    }
    out.update({k: np.asarray(v) for k, v in meta.items()})
    return out


def fit_keep(
    x: np.ndarray, y: np.ndarray, w: np.ndarray, l2: float = 1e-2, threshold: float = 0.5
) -> KeepModel:
    """Weighted L2-regularised logistic regression of ``y`` on standardised ``x`` (L-BFGS)."""
    from scipy.optimize import minimize

    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std = np.where(std > 1e-9, std, 1.0)
    z = (x - mean) / std
    w = w / w.sum()
    f_dim = z.shape[1]

    def loss(theta):
        beta, b = theta[:f_dim], theta[f_dim]
        s = z @ beta + b
        # log(1 + e^s) - y s, stably
        nll = np.logaddexp(0.0, s) - y * s
        p = 1.0 / (1.0 + np.exp(-s))
        value = float(w @ nll) + 0.5 * l2 * float(beta @ beta)
        grad_s = w * (p - y)
        grad = np.concatenate([z.T @ grad_s + l2 * beta, [grad_s.sum()]])
        return value, grad

    res = minimize(loss, np.zeros(f_dim + 1), jac=True, method="L-BFGS-B")
    return KeepModel(mean, std, res.x[:f_dim], float(res.x[f_dim]), threshold)


def trees_from_sklearn(model, threshold: float = 0.5, tile: float = 0.0) -> KeepTrees:
    """A fitted binary ``HistGradientBoostingClassifier`` as :class:`KeepTrees` (its trees'
    node arrays, padded to one length with leaves of value 0).

    scikit-learn has no public export of these trees, so this reads its ``_predictors`` and
    ``_baseline_prediction``; ``tests/refine/test_keep.py`` checks the result against its own
    ``predict_proba``, so a change of those internals fails there, not silently."""
    predictors = [tree[0] for tree in model._predictors]  # one tree per iteration (binary)
    if not predictors:
        raise ValueError("the classifier has no trees")
    size = max(len(p.nodes) for p in predictors)
    out = {
        "feature": np.zeros((len(predictors), size), np.int64),
        "split": np.zeros((len(predictors), size)),
        "left": np.zeros((len(predictors), size), np.int64),
        "right": np.zeros((len(predictors), size), np.int64),
        "value": np.zeros((len(predictors), size)),
        "is_leaf": np.ones((len(predictors), size), bool),
        "missing_left": np.zeros((len(predictors), size), bool),
    }
    for t, p in enumerate(predictors):
        nodes = p.nodes
        if nodes["is_categorical"].any():
            raise ValueError("categorical splits are not supported")
        k = len(nodes)
        out["feature"][t, :k] = nodes["feature_idx"]
        out["split"][t, :k] = nodes["num_threshold"]
        out["left"][t, :k] = nodes["left"]
        out["right"][t, :k] = nodes["right"]
        out["value"][t, :k] = nodes["value"]
        out["is_leaf"][t, :k] = nodes["is_leaf"] != 0
        out["missing_left"][t, :k] = nodes["missing_go_to_left"] != 0
    leaf = out["is_leaf"]
    for key in ("feature", "left", "right"):
        out[key][leaf] = 0
    out["value"][~leaf] = 0.0
    baseline = float(np.ravel(model._baseline_prediction)[0])
    return KeepTrees(**out, baseline=baseline, threshold=threshold, tile=tile)


def require_scikit_learn() -> None:
    """Raise :class:`~finecut.errors.ConfigError` (one line: how to install it) when
    scikit-learn, which fits the trees, is missing; ``finecut train keep --form trees`` asks
    before gathering regions for an hour."""
    try:
        import sklearn  # noqa: F401
    except ImportError:
        from finecut.errors import ConfigError

        raise ConfigError(
            "fitting the trees (--form trees) needs scikit-learn: pip install 'finecut[train]'"
        ) from None


def fit_keep_trees(
    x: np.ndarray, y: np.ndarray, w: np.ndarray, threshold: float = 0.5, seed: int = 0
) -> KeepTrees:
    """Gradient-boosted trees for ``y`` on ``x`` with sample weights ``w`` (scikit-learn's
    ``HistGradientBoostingClassifier``: 300 rounds at most of 15-leaf trees, learning rate 0.05,
    at least 200 regions per leaf, L2 1.0, early stopping on a tenth of the regions), exported
    to :class:`KeepTrees`.

    Raises:
        ConfigError: scikit-learn is not installed.
    """
    require_scikit_learn()
    from sklearn.ensemble import HistGradientBoostingClassifier

    model = HistGradientBoostingClassifier(
        learning_rate=0.05,
        max_iter=300,
        max_leaf_nodes=15,
        min_samples_leaf=200,
        l2_regularization=1.0,
        early_stopping=True,
        random_state=seed,
    )
    model.fit(x, (y > 0.5).astype(np.int64), sample_weight=w / w.mean())
    return trees_from_sklearn(model, threshold)


def training_pairs(
    data: Path, exclude: Path | None, images: int, seed: int
) -> list[tuple[Path, Path]]:
    """``images`` (image, mask) pairs of ``data`` drawn with ``seed``, less ``exclude``'s stems.

    A folder named ``ecssd`` gives only its training stems 0001-0800, as for every other
    training command (:func:`finecut.train.embedding_data.mask_items`).
    """
    from finecut.train.embedding_data import mask_items

    pairs = [(item.image, item.label) for item in mask_items(data, exclude=exclude)]
    if not pairs:
        raise ValueError(f"no training pairs left in {str(data)!r}")
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(pairs), min(images, len(pairs)), replace=False)
    return [pairs[i] for i in pick]


def region_accuracy(model: KeepModel, d: dict[str, np.ndarray]) -> dict[str, float]:
    """Area-weighted share of regions the model decides rightly, and the base rate."""
    keep = model.probability(d["x"]) >= model.threshold
    w = d["w"] / d["w"].sum()
    return {
        "regions": int(len(d["y"])),
        "weighted_accuracy": float(w @ (keep == (d["y"] > 0.5))),
        "weighted_right_share": float(w @ d["y"]),
    }


def keep_output(out: Path, suffix: str) -> Path:
    """``out`` with ``suffix``: ``model`` or ``model.json`` -> ``model.safetensors``, but
    ``keep_v0.9`` -> ``keep_v0.9.safetensors`` (a dot in the name is not a suffix to replace)."""
    out = Path(out)
    if out.suffix in (".safetensors", ".json"):
        return out.with_suffix(suffix)
    return out.with_name(out.name + suffix)


def train_keep(
    data: Path,
    out: Path,
    refiner,
    cfg: KeepTrainConfig,
    *,
    exclude: Path | None = None,
    threshold: float = 0.5,
    cache: Path | None = None,
    manifest: dict | None = None,
) -> tuple[KeepModel, dict]:
    """Gather the regions of ``cfg.images`` training pairs, fit, and write ``out``.safetensors
    and its manifest ``out``.json (sha256, the data, the counts and the region accuracy)."""
    from finecut.weights import sha256_file

    pairs = training_pairs(data, exclude, cfg.images, cfg.seed)
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    d = gather_regions(pairs, refiner, cfg, cache)
    if len(d["y"]) == 0:
        raise ValueError("the refiner changed nothing on the training cases: nothing to fit")
    if cfg.form == "trees":
        model = replace(fit_keep_trees(d["x"], d["y"], d["w"], threshold, cfg.seed), tile=cfg.tile)
    else:
        model = replace(fit_keep(d["x"], d["y"], d["w"], cfg.l2, threshold), tile=cfg.tile)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    path = keep_output(out, ".safetensors")
    model.save(path)
    info = {
        "model": "refine_keep" if cfg.candidate == "finecut" else "refine_keep_snap",
        "features": list(FEATURES),
        "threshold": threshold,
        "train_config": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(cfg).items()},
        "data": str(data),
        "exclude": str(exclude) if exclude else None,
        "images": len(pairs),
        "cases": len(d["case_stem"]),
        "fit": region_accuracy(model, d),
        **(manifest or {}),
        "file": path.name,
        "sha256": sha256_file(path),
    }
    keep_output(out, ".json").write_text(json.dumps(info, indent=2) + "\n")
    return model, info
