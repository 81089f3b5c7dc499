"""Semantic soft segmentation in one call (Aksoy, Oh, Paris, Pollefeys, Matusik, "Semantic Soft
Segmentation", SIGGRAPH 2018; METHODS.md section 5): :func:`soft_segment`.

Two modes share every step function of :mod:`finecut.soft`:

``"faithful"`` (:data:`FAITHFUL`): the paper's steps and constants on the pixel graph. The
    100 smallest eigenvectors of the full-resolution Laplacian (matting + 0.01 semantic + 0.01
    nonlocal colour, superpixel affinities at centroid pixels as in the official code), 40 k-means
    segments on the features, 40 IRLS iterations, grouping, 20 x 100 CG iterations of relaxed
    sparsification and a 1000-iteration final solve. Minutes at 640x480 (the official MATLAB code
    takes 3-4 minutes), several GB of memory for the sparse LU of the eigensolver.

``"fast"`` (:data:`FAST`, the default): the same energy minimised on superpixels, then lifted
    to pixels. Every superpixel carries its constant and its colour-linear functions
    (:mod:`finecut.soft.basis`; the matting Laplacian is cheap on functions affine in colour, and
    a soft object edge inside a superpixel is one); the matting Laplacian is projected onto them
    (Galerkin, :func:`finecut.soft.laplacian.basis_laplacian`) and the semantic and colour
    affinities act on the superpixels' means, so the eigenproblem has about 8,000 unknowns
    instead of 307,200. The constrained and relaxed sparsifications measure sparsity on the
    superpixel means, every node weighted by its pixel count; :func:`finecut.soft.lift.
    lift_to_pixels` then re-solves the layer transitions at full resolution with the pixel
    matting Laplacian (closed-form matting with the superpixel result as a trimap). Other
    differences from ``"faithful"``: superpixels get at least 100 pixels each (fewer than 2500
    on images under 0.25 MP), colour affinities below 1e-3 are dropped, the relaxed step's CG is
    block-Jacobi preconditioned, raw features are projected to 16 dimensions before the guided
    filter. About 6 s at 640x480 on one core (``bench/soft_speed.py``).

    ``basis="constant"`` gives the earlier fast mode (one value per superpixel): its smallest
    eigenvectors are smooth spatial waves rather than objects, because superpixel-constant
    functions cannot hold the soft edges the matting Laplacian finds cheap
    (``bench/soft_eigenvectors.py``); on the DUTS-TR hold-out the colour-linear basis raised
    the best layer or pair from 0.800 to 0.832 IoU (60 images, +0.031 +- 0.011).

Where ``"faithful"`` departs from the official MATLAB code (none of these changes the energy):
SLIC from scikit-image with compactness 10 (see :mod:`finecut.soft.affinities`); ARPACK
shift-invert at -1e-5 for ``eigs(L, 100, 'SM')``; k-means++ with restarts instead of the code's
cluster-splitting k-means; grouping weighted by segment mass, with weak layers re-split
(:mod:`finecut.soft.grouping`); negative round-off eigenvalues clipped to 0 in the regulariser;
no pruning on the last IRLS iteration; the final layers clipped to [0, 1] and renormalised.

Output (both modes), :class:`SoftSegmentation`: ``alphas`` (H, W, K) float32, every value in
[0, 1], the K layers summing to 1 at every pixel (clipped and renormalised after the last solve),
K = ``n_layers`` unless the image does not hold that many: a layer whose max alpha stays below
``empty_threshold`` (0.05) is *empty*; grouping avoids weak layers by splitting groups (see
:func:`finecut.soft.grouping.group_segments`) and any layer still empty at the end is dropped
(logged as a warning), so fewer layers come back only from images with fewer distinct regions
than asked (e.g. a plain colour).

Features: pass the paper's raw per-pixel embedding (any D, preprocessed here: clip, guided
filter, PCA to 3, [0, 1]) or, with ``preprocessed=True``, features already reduced to 3 channels
in [0, 1] (e.g. the right half of the authors' ``docia.png``). Without features (``"auto"``, the
default, or None) the pipeline runs finecut's embedding network (``embedding_lite0``, shipped
in the package), like ``finecut soft --features auto``; ``features="none"`` is the explicit
choice of colour + position features (:mod:`finecut.soft.semantic`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
from threadpoolctl import threadpool_limits

from finecut.errors import ConfigError, ImageError
from finecut.soft import affinities, eigen, grouping, laplacian, sparsify
from finecut.soft import basis as basis_module
from finecut.soft._kmeans import weighted_kmeans
from finecut.soft.features import GUIDE_EPS, GUIDE_RADIUS, fallback_features, preprocess_features
from finecut.soft.lift import lift_to_pixels
from finecut.soft.semantic import FEATURE_CHOICES, semantic_features

log = logging.getLogger(__name__)

__all__ = ["FAITHFUL", "FAST", "SoftConfig", "SoftSegmentation", "soft_segment"]

Mode = Literal["fast", "faithful"]
#: ``progress(step, done, total)``: called after each step with the step's name.
Progress = Callable[[str, int, int], None]
_MIN_SIDE = 8


@dataclass(frozen=True)
class SoftConfig:
    """Every setting of the pipeline; the defaults are the paper's (``"faithful"``).

    Attributes:
        graph: ``"pixels"`` (the paper) or ``"superpixels"`` (fast: solve on superpixels, lift).
        basis: on the superpixel graph, the functions of each superpixel: ``"constant"`` (one
            value per superpixel, lifted to pixels by matting) or ``"colour_linear"`` (plus the
            superpixel's colour-linear functions, :mod:`finecut.soft.basis`: the spectral and
            sparsification steps see soft edges inside superpixels; the lift starts from the
            layers' superpixel means).
        basis_min_std: colour directions with a lower standard deviation get no function.
        n_superpixels: SLIC superpixels asked for (2500).
        min_superpixel_pixels: on the superpixel graph, ask for at most H W / this many
            superpixels (fast mode only; the paper keeps 2500 at any size).
        slic_compactness: SLIC compactness (see :mod:`finecut.soft.affinities`).
        matting_radius: matting window radius (1).
        matting_eps: matting regulariser (1e-7).
        semantic_weight: weight of the semantic affinity (0.01).
        semantic_steepness: erf steepness of the semantic affinity (20).
        semantic_center: erf centre of the semantic affinity (0.85).
        color_weight: weight of the nonlocal colour affinity (0.01).
        color_steepness: erf steepness of the colour affinity (50).
        color_center: erf centre of the colour affinity (0.95).
        color_max_distance: centroid distance limit of the colour affinity (0.2).
        color_min_affinity: colour affinities below are dropped (0: keep all, as the paper).
        n_eigenvectors: eigenvectors of the spectral step (100).
        n_initial_segments: k-means segments that start the constrained step (40).
        constrained_iterations: IRLS iterations (40).
        constrained_power: sparsity exponent of the constrained step (0.8).
        relaxed_outer: relaxed-sparsification reweighting steps (20).
        relaxed_cg: CG iterations per step (100).
        relaxed_final_cg: CG iterations of the last solve (1000).
        relaxed_precondition: block-Jacobi preconditioner in the relaxed step (the paper: none).
        lift_band: fast mode, unknown band half-width as a fraction of the mean superpixel side.
        lift_confidence: fast mode, superpixels with a lower top alpha are unknown.
        feature_radius: guided-filter radius of the feature preprocessing.
        feature_eps: guided-filter regulariser of the feature preprocessing.
        feature_filter_dims: project raw features to this many dimensions before the guided
            filter (None: filter every channel, the paper; fast: 16, see
            :func:`finecut.soft.features.preprocess_features`).
        grouping_dims: principal dimensions of the features that the k-means steps (initial
            segments, grouping) see (3, the paper); the affinities always use the first 3.
            More than 3 needs raw features (preprocessed ones have 3).
        grouping_weighting: weight of each segment in the grouping k-means: ``"uniform"`` (the
            official code), ``"mass"`` (its alpha mass, finecut's default until 2026-12-06) or
            ``"sqrt"``; see :func:`finecut.soft.grouping.group_segments`.
        empty_threshold: a layer whose max alpha is below this is empty.
        grouping_restarts: k-means restarts of the grouping.
        blas_threads: BLAS threads while the pipeline runs (1), None to leave them as they are.
            Every BLAS call here is small (100 x 100 solves, 2500 x 100 products) or one of
            thousands; with OpenBLAS's default of one thread per core, a machine whose cores are
            busy with other work makes each call wait for its worker threads to be scheduled:
            measured on 2 cores shared with a training run, the fast mode took 205 s instead of
            6.5 s and 40 ``syrk`` calls of 16000 x 100 took 20 s instead of 0.3 s.
    """

    graph: Literal["pixels", "superpixels"] = "pixels"
    basis: Literal["constant", "colour_linear"] = "constant"
    basis_min_std: float = basis_module.MIN_STD
    n_superpixels: int = 2500
    min_superpixel_pixels: int = 100
    slic_compactness: float = 10.0
    matting_radius: int = 1
    matting_eps: float = 1e-7
    semantic_weight: float = laplacian.SEMANTIC_WEIGHT
    semantic_steepness: float = 20.0
    semantic_center: float = 0.85
    color_weight: float = laplacian.COLOR_WEIGHT
    color_steepness: float = 50.0
    color_center: float = 0.95
    color_max_distance: float = 0.2
    color_min_affinity: float = 0.0
    n_eigenvectors: int = 100
    n_initial_segments: int = 40
    constrained_iterations: int = 40
    constrained_power: float = 0.8
    relaxed_outer: int = 20
    relaxed_cg: int = 100
    relaxed_final_cg: int = 1000
    relaxed_precondition: bool = False
    lift_band: float = 0.35
    lift_confidence: float = 0.8
    feature_radius: int = GUIDE_RADIUS
    feature_eps: float = GUIDE_EPS
    feature_filter_dims: int | None = None
    grouping_dims: int = 3
    grouping_weighting: Literal["mass", "sqrt", "uniform"] = "uniform"
    empty_threshold: float = 0.05
    grouping_restarts: int = 10
    blas_threads: int | None = 1

    def __post_init__(self) -> None:
        if self.graph not in ("pixels", "superpixels"):
            raise ConfigError(f"graph must be 'pixels' or 'superpixels', got {self.graph!r}")
        if self.basis not in ("constant", "colour_linear"):
            raise ConfigError(f"basis must be 'constant' or 'colour_linear', got {self.basis!r}")
        if self.grouping_weighting not in grouping.WEIGHTINGS:
            raise ConfigError(
                f"grouping_weighting must be one of {', '.join(grouping.WEIGHTINGS)}, "
                f"got {self.grouping_weighting!r}"
            )
        for name in (
            "n_superpixels",
            "n_eigenvectors",
            "n_initial_segments",
            "constrained_iterations",
            "min_superpixel_pixels",
            "grouping_dims",
        ):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")


#: The paper's pipeline at full resolution.
FAITHFUL = SoftConfig()
#: finecut's default: the paper's energy on superpixels, lifted to pixels by matting.
FAST = replace(
    FAITHFUL,
    graph="superpixels",
    basis="colour_linear",
    color_min_affinity=1e-3,
    relaxed_precondition=True,
    feature_filter_dims=16,
)
_MODES: dict[str, SoftConfig] = {"faithful": FAITHFUL, "fast": FAST}


@dataclass
class SoftSegmentation:
    """The result of :func:`soft_segment`.

    Attributes:
        alphas: (H, W, K) float32 soft layers in [0, 1] summing to 1 at every pixel.
        features: (H, W, 3) float32 preprocessed features the pipeline used.
        mode: ``"fast"``, ``"faithful"`` or ``"custom"`` (a config was given).
        timings: seconds per step, in the order run.
        n_segments: segments left after the constrained sparsification.
    """

    alphas: np.ndarray
    features: np.ndarray
    mode: str
    timings: dict[str, float] = field(default_factory=dict)
    n_segments: int = 0

    @property
    def n_layers(self) -> int:
        """K, the number of layers."""
        return int(self.alphas.shape[2])

    @property
    def seconds(self) -> float:
        """Total seconds over all steps."""
        return float(sum(self.timings.values()))


# --------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------


def _to_unit_float(array: np.ndarray, what: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array.astype(np.float64) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float64) / 65535.0
    if array.dtype.kind not in "fiu" or array.dtype == bool:
        raise ImageError(f"{what} dtype {array.dtype} is not supported (use uint8, uint16, float)")
    out = array.astype(np.float64)
    if not np.isfinite(out).all():
        raise ImageError(f"{what} contains NaN or infinite values")
    return out


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ImageError(f"image must be (H, W, 3) RGB, got shape {image.shape}")
    if min(image.shape[:2]) < _MIN_SIDE:
        raise ImageError(f"image must be at least {_MIN_SIDE}x{_MIN_SIDE}, got {image.shape[:2]}")
    out = _to_unit_float(image, "image")
    if image.dtype.kind == "f" and (out.min() < -1e-6 or out.max() > 1 + 1e-6):
        raise ImageError(
            f"float image must be in [0, 1], got values in [{out.min():.3g}, {out.max():.3g}]"
        )
    return np.clip(out, 0.0, 1.0)


def _check_features(
    features: np.ndarray | None, image: np.ndarray, preprocessed: bool, config: SoftConfig
) -> np.ndarray:
    if features is None:  # colour + position, chosen (features="none") or fallen back to
        return _preprocess(fallback_features(image), image, config)
    features = np.asarray(features)
    if features.ndim == 2:
        features = features[..., None]
    if features.ndim != 3 or features.shape[:2] != image.shape[:2] or features.shape[2] < 1:
        raise ImageError(
            f"features must be (H, W, D) with (H, W) = {image.shape[:2]} like the image, "
            f"got shape {features.shape}"
        )
    if preprocessed:
        if features.shape[2] != 3:
            raise ImageError(
                f"preprocessed features must have 3 channels, got {features.shape[2]} "
                "(pass preprocessed=False to reduce them)"
            )
        out = _to_unit_float(features, "features")
        if out.min() < -1e-6 or out.max() > 1 + 1e-6:
            raise ImageError(
                "preprocessed features must be in [0, 1], got values in "
                f"[{out.min():.3g}, {out.max():.3g}] (pass preprocessed=False to normalise them)"
            )
        return np.clip(out, 0.0, 1.0)
    raw = _to_unit_float(features, "features") if features.dtype.kind in "ui" else features
    if not np.isfinite(raw).all():
        raise ImageError("features contain NaN or infinite values")
    return _preprocess(raw, image, config)


def _preprocess(raw: np.ndarray, image: np.ndarray, config: SoftConfig) -> np.ndarray:
    """Raw features -> (H, W, max(3, grouping_dims)); the first 3 are the paper's features (each
    principal dimension is scaled on its own, so extra dimensions leave them unchanged)."""
    return preprocess_features(
        raw,
        image,
        radius=config.feature_radius,
        eps=config.feature_eps,
        filter_dims=config.feature_filter_dims,
        n_components=max(3, config.grouping_dims),
    )


# --------------------------------------------------------------------------------------------
# the pipeline
# --------------------------------------------------------------------------------------------


class _Clock:
    def __init__(self, progress: Progress | None, total: int) -> None:
        self.timings: dict[str, float] = {}
        self._progress = progress
        self._total = total
        self._start = time.perf_counter()

    def done(self, step: str) -> None:
        now = time.perf_counter()
        self.timings[step] = now - self._start
        log.debug("soft: %s %.2f s", step, self.timings[step])
        self._start = now
        if self._progress is not None:
            self._progress(step, len(self.timings), self._total)


def _finalise(alphas: np.ndarray, threshold: float) -> np.ndarray:
    """Clip to [0, 1], drop empty layers, renormalise to sum 1: (N, K) -> (N, K')."""
    clipped = np.clip(alphas, 0.0, 1.0)
    keep = clipped.max(0) >= threshold
    if not keep.any():
        keep = clipped.max(0) == clipped.max()
    if not keep.all():
        log.warning("soft: %d empty layer(s) dropped (max alpha < %g)", (~keep).sum(), threshold)
        clipped = clipped[:, keep]
    total = clipped.sum(1, keepdims=True)
    # A pixel whose every alpha clipped to 0 (cannot happen when the rows summed to one before
    # clipping, kept as a guard) goes wholly to its largest layer.
    empty = total[:, 0] <= 1e-12
    if empty.any():
        clipped[empty, alphas[empty][:, keep].argmax(1)] = 1.0
        total = clipped.sum(1, keepdims=True)
    return clipped / total


def _span_coefficients(
    segments: np.ndarray, node_vectors: np.ndarray, vectors: np.ndarray, one: np.ndarray
) -> np.ndarray:
    """Segments seen at the superpixel means -> their basis coefficients.

    The constrained step returns ``alpha_k = V_S y_k`` for all but the last segment, which is
    ``1 - sum(others)``; solving for ``y_k`` (exact: ``V_S`` has full column rank) gives every
    coefficient, ``V y_k``, and the last one is the constant function's coefficients minus the
    others, so the layers still sum to the function 1.

    Shape: segments (S, K), node_vectors (S, E), vectors (C, E), one (C,) -> (C, K).
    """
    k = segments.shape[1]
    out = np.empty((vectors.shape[0], k))
    if k > 1:
        y, *_ = np.linalg.lstsq(node_vectors, segments[:, : k - 1], rcond=None)
        out[:, : k - 1] = vectors @ y
    out[:, k - 1] = one - out[:, : k - 1].sum(1)
    return out


def soft_segment(
    image: np.ndarray,
    features: np.ndarray | str | None = "auto",
    n_layers: int = 5,
    mode: Mode = "fast",
    progress: Progress | None = None,
    *,
    preprocessed: bool = False,
    config: SoftConfig | None = None,
    seed: int = 0,
    embedding_weights: str | None = None,
    device: str | None = None,
) -> SoftSegmentation:
    """Semantic soft segmentation of an image (Aksoy et al., SIGGRAPH 2018).

    Shape:
        - image: (H, W, 3) uint8, uint16 or float in [0, 1], H, W >= 8.
        - features: (H, W, D) raw features (any D), or (H, W, 3) in [0, 1] with
          ``preprocessed=True``, or one of "auto", "embedding", "none".
        - output: ``SoftSegmentation.alphas`` (H, W, K) float32, K = ``n_layers`` when the
          image holds that many regions.

    Args:
        image: the RGB image.
        features: per-pixel semantic features, or how to get them: ``"auto"`` (default; None
            means the same) computes them with finecut's embedded embedding network, as
            ``finecut soft --features auto`` does (falling back to colour + position, with a
            warning, only if this finecut has no embedding weights); ``"embedding"`` never
            falls back; ``"none"`` uses colour + position features (layers follow colours).
        n_layers: layers wanted (5).
        mode: ``"fast"`` (default) or ``"faithful"`` (the paper's constants at full resolution;
            minutes per image).
        progress: ``progress(step, done, total)`` after each step.
        preprocessed: the features are already the paper's 3-D [0, 1] features.
        config: replaces the mode's settings (``mode`` is then ignored).
        seed: seeds k-means and the eigensolver; equal seeds give equal results.
        embedding_weights: weights of the embedding network instead of the embedded ones.
        device: device of the embedding network (None: CUDA when available).

    Returns:
        The layers and per-step timings.

    Raises:
        ImageError: an image or features of the wrong shape, dtype or range.
        ConfigError: an unknown mode, features name or a bad ``n_layers``.
        WeightsError: ``features="embedding"`` without embedding weights.
    """
    if config is None:
        if mode not in _MODES:
            raise ConfigError(f"mode must be 'fast' or 'faithful', got {mode!r}")
        config, mode_name = _MODES[mode], mode
    else:
        mode_name = "custom"
    if isinstance(n_layers, bool) or not isinstance(n_layers, int | np.integer) or n_layers < 1:
        raise ConfigError(f"n_layers must be an integer >= 1, got {n_layers!r}")
    n_layers = int(n_layers)
    source: _FeatureSource | np.ndarray
    if features is None or isinstance(features, str):
        choice = features or "auto"
        if choice not in FEATURE_CHOICES:
            raise ConfigError(
                f"features must be an (H, W, D) array or one of {', '.join(FEATURE_CHOICES)}; "
                f"got {choice!r}"
            )
        source = _FeatureSource(choice, embedding_weights, device)
    else:
        source = features
    args = (image, source, n_layers, mode_name, progress, preprocessed, config, seed)
    if config.blas_threads is None:
        return _soft_segment(*args)
    with threadpool_limits(limits=config.blas_threads, user_api="blas"):
        return _soft_segment(*args)


@dataclass(frozen=True)
class _FeatureSource:
    """Features named instead of given: computed once the image has passed its checks."""

    choice: str
    weights: str | None
    device: str | None

    def features(self, image: np.ndarray) -> np.ndarray | None:
        """``image`` is the checked float image in [0, 1]; the network takes uint8."""
        rgb = np.round(image * 255.0).astype(np.uint8)
        return semantic_features(rgb, self.choice, weights=self.weights, device=self.device)


def _soft_segment(
    image: np.ndarray,
    features: np.ndarray | _FeatureSource,
    n_layers: int,
    mode_name: str,
    progress: Progress | None,
    preprocessed: bool,
    config: SoftConfig,
    seed: int,
) -> SoftSegmentation:
    on_superpixels = config.graph == "superpixels"
    steps = 9 if on_superpixels else 8
    clock = _Clock(progress, steps)

    image = _check_image(image)
    h, w, _ = image.shape
    if isinstance(features, _FeatureSource):
        features, preprocessed = features.features(image), False  # raw embeddings, or None
    grouping_feats = _check_features(features, image, preprocessed, config)
    feats = grouping_feats[..., :3]  # the paper's 3-D features: affinities and output
    clock.done("features")

    n_sp = config.n_superpixels
    if on_superpixels:
        n_sp = max(1, min(n_sp, (h * w) // config.min_superpixel_pixels))
    superpixels = affinities.compute_superpixels(image, n_sp, config.slic_compactness)
    clock.done("superpixels")

    w_matting = affinities.matting_affinity(image, config.matting_radius, config.matting_eps)
    w_semantic = affinities.semantic_affinity(
        superpixels, feats, config.semantic_steepness, config.semantic_center
    )
    w_color = affinities.color_affinity(
        superpixels,
        image,
        config.color_steepness,
        config.color_center,
        config.color_max_distance,
        config.color_min_affinity,
    )
    clock.done("affinities")

    weights = {"semantic_weight": config.semantic_weight, "color_weight": config.color_weight}
    power = sparsify.sparsity_power(image)
    functions = None
    if on_superpixels:
        mass = superpixels.sizes
        node_features = superpixels.means(grouping_feats)
        node_power = superpixels.means(power[..., None])[:, 0]
        if config.basis == "colour_linear":
            functions = basis_module.colour_linear_basis(image, superpixels, config.basis_min_std)
            lap = laplacian.basis_laplacian(w_matting, w_semantic, w_color, functions, **weights)
        else:
            lap = laplacian.superpixel_laplacian(
                w_matting, w_semantic, w_color, superpixels, **weights
            )
    else:
        lap = laplacian.pixel_laplacian(w_matting, w_semantic, w_color, superpixels, **weights)
        mass = None
        node_features = grouping_feats.reshape(h * w, -1)
        node_power = power.ravel()
    clock.done("laplacian")

    unknown_mass = mass if functions is None else functions.mass
    values, vectors = eigen.smallest_eigenvectors(
        lap, config.n_eigenvectors, mass=unknown_mass, seed=seed
    )
    # With a basis, the sparsity steps see each eigenvector through its superpixel means (the
    # constant columns' coefficients); the segments are then carried back to every coefficient.
    node_vectors = vectors if functions is None else vectors[: functions.count]
    clock.done("eigenvectors")

    initial, _ = weighted_kmeans(
        node_features,
        config.n_initial_segments,
        weights=mass,
        n_init=3 if on_superpixels else 1,
        seed=seed,
    )
    segments = sparsify.constrained_sparsification(
        node_vectors,
        values,
        initial,
        mass=mass,
        n_iter=config.constrained_iterations,
        power=config.constrained_power,
    )
    clock.done("constrained")

    layers, groups = grouping.group_segments(
        segments,
        node_features,
        n_layers,
        mass=mass,
        n_init=config.grouping_restarts,
        seed=seed,
        weighting=config.grouping_weighting,
    )
    if functions is not None:
        full = _span_coefficients(segments, node_vectors, vectors, functions.constant())
        layers = full @ np.eye(layers.shape[1])[groups]
        node_power = node_power[functions.owner]
    clock.done("grouping")

    layers = sparsify.relaxed_sparsification(
        layers,
        lap,
        power=node_power,
        mass=unknown_mass,
        n_outer=config.relaxed_outer,
        cg_iter=config.relaxed_cg,
        final_cg_iter=config.relaxed_final_cg,
        precondition=config.relaxed_precondition,
        values=None if functions is None else functions.is_value,
    )
    clock.done("relaxed")

    if on_superpixels:
        node_layers = layers if functions is None else layers[: functions.count]
        nodes = _finalise(node_layers, 0.0)
        side = np.sqrt(h * w / superpixels.count)
        layers = lift_to_pixels(
            nodes,
            superpixels,
            laplacian.laplacian(w_matting),
            band=max(1, round(config.lift_band * side)),
            confidence=config.lift_confidence,
        )
        clock.done("lift")

    alphas = _finalise(layers, config.empty_threshold)
    if alphas.shape[1] < n_layers:
        log.warning("soft: %d layers asked, the image gave %d", n_layers, alphas.shape[1])
    return SoftSegmentation(
        alphas=alphas.reshape(h, w, -1).astype(np.float32),
        features=feats.astype(np.float32),
        mode=mode_name,
        timings=clock.timings,
        n_segments=int(segments.shape[1]),
    )
