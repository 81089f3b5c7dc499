"""One-call mask refinement: ``finecut.refine(image, mask)`` and the ``Refiner`` that keeps a model.

Example:
    >>> import finecut
    >>> crisp = finecut.refine(image, rough_mask)            # uint8 0/255, full resolution
    >>> refiner = finecut.Refiner(device="cuda")              # keep the model loaded
    >>> alpha = refiner.refine(image, rough_mask, soft=True)  # float32 probability in [0, 1]
    >>> fast = finecut.Refiner(onnx="crm_onnx/")              # ONNX Runtime, no torch imported
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from finecut.data.masks import binary_mask
from finecut.errors import ConfigError, ImageError, WeightsError
from finecut.refine.inference import InferenceConfig, gate_changes, refine_probability
from finecut.refine.snap import snap_band, snap_to_edges
from finecut.refine.support import revert_unsupported
from finecut.weights import WEIGHTS_DIR, flush_subnormals, load_manifest, load_state_dict

# torch and the models are imported where they are used: the onnxruntime backend runs without
if TYPE_CHECKING:  # pragma: no cover
    import torch

    from finecut.models.crm import CRM
    from finecut.refine.instances import InstanceConfig

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_PRECISION",
    "DEFAULT_WEIGHTS",
    "Refiner",
    "as_mask",
    "as_rgb",
    "finish_probability",
    "gate_and_snap",
    "keep_step",
    "load_refiner_model",
    "refine",
    "snap_alone_probability",
    "wants_second_opinion",
    "without_keep",
]

DEFAULT_WEIGHTS = "crm_lite0"

#: The Refiner's default arithmetic of the CRM encoder (:func:`finecut.devices.resolve_precision`):
#: "auto", bfloat16 on a CPU with native bfloat16. Chosen in the eleventh session by a rule written
#: beforehand: on 60 DUTS-TR hold-out images (24 rows) the default finishing on bf16 CRM outputs
#: gains +1.57 IoU / +2.89 mBA over the input against +1.55 / +2.86 in float32 (worst row harmed
#: 3% against 5%), and the aeroplane (3492x2328) refines in about 1.2 s less (docs/benchmarks.md).
DEFAULT_PRECISION = "auto"


def load_refiner_model(
    weights: str | Path | None = None, device: torch.device | str = "cpu"
) -> CRM:
    """Build a CRM with trained weights.

    Args:
        weights: ``None`` for the embedded default, a name of embedded weights, a
            ``.safetensors`` file with a ``.json`` manifest beside it, or a training checkpoint
            (``.pt``) written by ``finecut train refine``.
    """
    from finecut.models.crm import CRM, CRMConfig

    if weights is None or (isinstance(weights, str) and not Path(weights).suffix):
        name = weights or DEFAULT_WEIGHTS
        manifest = load_manifest(name)
        path = WEIGHTS_DIR / manifest["file"]
        state = load_state_dict(path, manifest["sha256"])
        config = CRMConfig.from_dict(manifest["config"])
    else:
        path = Path(weights)
        if not path.is_file():
            raise WeightsError(f"weights file {str(path)!r} not found")
        if path.suffix == ".safetensors":
            manifest_path = path.with_suffix(".json")
            if not manifest_path.is_file():
                raise WeightsError(f"{path.name} needs its manifest {manifest_path.name} beside it")
            manifest = load_manifest(path.stem, path.parent)
            state = load_state_dict(path, manifest.get("sha256"))
            config = CRMConfig.from_dict(manifest["config"])
        else:
            from finecut.weights import load_checkpoint

            ckpt = load_checkpoint(path)
            if "model" not in ckpt or "config" not in ckpt:
                raise WeightsError(f"{str(path)!r} is not a finecut refine checkpoint")
            state = ckpt["model"]
            config = CRMConfig.from_dict(ckpt["config"]["model"])
    model = CRM(config, pretrained=False)
    try:
        model.load_state_dict(flush_subnormals(state))
    except RuntimeError as exc:
        # torch lists every mismatch on its own line; the CLI promises one line per error
        problems = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
        first = problems[0] if problems else " ".join(str(exc).split())
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise WeightsError(
            f"weights {str(path)!r} do not fit the CRM model: {first}{more}"
        ) from None
    return model.to(device).eval()


def as_rgb(image: np.ndarray) -> np.ndarray:
    """Accept (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8/uint16/float/bool; return uint8 RGB.

    Rules: uint16 is divided by 257; floats are taken as [0, 1]; alpha is dropped (composite before
    calling if the colour under transparent pixels is meaningless); grey is replicated.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or min(image.shape[:2]) < 1:
        raise ImageError(f"image must be (H, W), (H, W, 3) or (H, W, 4), got shape {image.shape}")
    if image.dtype == np.uint16:
        image = np.round(image / 257.0).astype(np.uint8)
    elif image.dtype.kind == "f":
        if not np.isfinite(image).all():
            raise ImageError("image contains NaN or infinite values")
        image = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    elif image.dtype == bool:
        image = image.astype(np.uint8) * 255
    elif image.dtype != np.uint8:
        raise ImageError(f"image dtype {image.dtype} is not supported (use uint8, uint16 or float)")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image[..., :3])


def as_mask(mask: np.ndarray) -> np.ndarray:
    """Binarise a mask -> bool (H, W); the rule is :mod:`finecut.data.masks`'.

    bool as is; integer masks whose values are all 0 or 1 are 0/1 masks (1 is foreground);
    integer masks holding other values, none above 64, are label maps and raise ImageError
    (refine them with :meth:`Refiner.refine_instances`); otherwise uint8 > 127, uint16 > 32767,
    other integers > 0; float >= 0.5.
    """
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise ImageError(f"mask must be (H, W), got shape {mask.shape}")
    return binary_mask(mask)


class Refiner:
    """Keeps a CRM model loaded and refines masks at any resolution.

    Args:
        device: "cpu", "cuda", "cuda:1", or None for CUDA when available (torch backend).
        weights: see :func:`load_refiner_model` (torch backend).
        config: inference settings (scales, band, tiles).
        threads: CPU threads of torch, or of ONNX Runtime (None keeps the library's default).
        precision: the CRM encoder's arithmetic on the torch backend: "fp32", "bf16" (bfloat16
            autocast, :class:`~finecut.refine.torch_runner.TorchRunner`) or "auto"
            (:func:`finecut.devices.resolve_precision`: bf16 on a CPU with native bfloat16);
            None takes :data:`DEFAULT_PRECISION`.
        backend: "torch", or "onnxruntime" to run the networks that ``finecut export onnx``
            wrote to the folder ``onnx`` (CPU; torch is not imported). None: "onnxruntime" when
            ``onnx`` is given, else "torch".
        onnx: the folder of ``finecut export onnx`` (onnxruntime backend).
        keep_model: the keep step's model (``InferenceConfig.keep_learned``): a
            :class:`finecut.refine.keep.KeepModel` or ``KeepTrees``, or the ``.safetensors``
            file of ``finecut train keep``; None takes the embedded default
            (:data:`finecut.refine.keep.DEFAULT_KEEP_MODEL`).
        snap_keep_model: the second opinion's model (``InferenceConfig.keep_snap_threshold``),
            as ``keep_model`` (``finecut train keep --candidate snap``); None takes the embedded
            ``refine_keep_snap``.
    """

    def __init__(
        self,
        device: str | torch.device | None = None,
        *,
        weights: str | Path | None = None,
        config: InferenceConfig | None = None,
        threads: int | None = None,
        precision: str | None = None,
        backend: str | None = None,
        onnx: str | Path | None = None,
        keep_model=None,
        snap_keep_model=None,
    ) -> None:
        from finecut.refine.keep import load_keep_model

        self.config = config or InferenceConfig()
        if isinstance(keep_model, (str, Path)):
            keep_model = load_keep_model(keep_model)
        if isinstance(snap_keep_model, (str, Path)):
            snap_keep_model = load_keep_model(snap_keep_model)
        self.keep_model = keep_model
        self.snap_keep_model = snap_keep_model
        self.backend = backend or ("torch" if onnx is None else "onnxruntime")
        if self.backend == "onnxruntime":
            from finecut.refine.onnx_runner import OnnxRunner

            if onnx is None:
                raise ConfigError("backend 'onnxruntime' needs onnx=DIR (see finecut export onnx)")
            if precision not in (None, "auto", "fp32"):
                raise ConfigError(
                    f"the onnxruntime backend runs in float32, not {precision!r}: pass "
                    "precision='fp32' or None"
                )
            if weights is not None or device not in (None, "cpu"):
                raise ConfigError(
                    "the onnxruntime backend runs on the CPU with the weights exported to its "
                    "folder: pass neither weights nor a device (export other weights with "
                    "finecut export onnx --weights)"
                )
            self.device = self.model = None
            self.precision = "fp32"
            self._runner = OnnxRunner(onnx, threads=threads)
            return
        if self.backend != "torch":
            raise ConfigError(f"unknown backend {self.backend!r}; choose torch or onnxruntime")
        if onnx is not None:
            raise ConfigError("onnx=DIR runs on the onnxruntime backend, not on torch")
        import torch

        from finecut.devices import resolve_device, resolve_precision
        from finecut.models.fold import fold_batchnorm
        from finecut.refine.torch_runner import TorchRunner

        self.device = resolve_device(device)
        self.precision = resolve_precision(precision or DEFAULT_PRECISION, self.device)
        if threads:
            torch.set_num_threads(threads)
        self.model = load_refiner_model(weights, self.device)
        # What refine() runs: a copy with BatchNorm folded into the convolutions, its weights
        # channels-last like the inputs finecut.refine.inference gives it (oneDNN then need not
        # reorder them on every call). ``model`` stays the network as loaded.
        self._net = fold_batchnorm(self.model).to(memory_format=torch.channels_last)
        self._runner = TorchRunner(self._net, self.device, self.precision)

    def refine(
        self,
        image: np.ndarray,
        mask: np.ndarray,
        *,
        soft: bool = False,
        full_query: bool | None = None,
        snap: bool | None = None,
        progress=None,
    ) -> np.ndarray:
        """Refine ``mask`` for ``image`` at full resolution.

        Args:
            image: (H, W, 3) RGB (uint8, uint16 or float in [0, 1]; grey and RGBA accepted).
            mask: (H, W) coarse mask: bool, 0/1 integers, uint8 > 127 (0/255 or soft 8-bit),
                or float >= 0.5 is foreground; a label map is refused (see :func:`as_mask`).
            soft: return the float32 probability instead of a uint8 0/255 mask.
            full_query: override the config's ``full_query`` (CRM's query-everything inference).
            snap: override the config's ``snap`` (edge snapping after CRM, on by default).

        Returns:
            (H, W) uint8 mask in {0, 255}, or float32 probability in [0, 1] if ``soft``.
        """
        rgb = as_rgb(image)
        coarse = as_mask(mask)
        if coarse.shape != rgb.shape[:2]:
            h, w = rgb.shape[:2]
            mh, mw = coarse.shape
            raise ImageError(f"mask is {mw}x{mh} but image is {w}x{h} (width x height)")
        cfg = self.config if full_query is None else replace(self.config, full_query=full_query)
        if snap is not None:
            cfg = replace(cfg, snap=snap)
        ys, xs = np.nonzero(coarse)
        if len(ys) == 0 or len(ys) == coarse.size:
            warnings.warn(
                f"the mask is {'empty' if len(ys) == 0 else 'full'}: nothing to refine, "
                "returned unchanged",
                stacklevel=2,
            )
            prob = coarse.astype(np.float32)
        elif (ys.max() - ys.min() + 1) < cfg.min_object and (
            xs.max() - xs.min() + 1
        ) < cfg.min_object:
            log.info("object smaller than %d px: copied through", cfg.min_object)
            prob = coarse.astype(np.float32)
        else:
            crm = self._crm_probability(rgb, coarse, cfg, progress)
            prob = finish_probability(
                rgb, coarse, crm, cfg, self.keep_model, self.snap_keep_model
            )
        if soft:
            return prob
        return np.where(prob > 0.5, np.uint8(255), np.uint8(0))

    def refine_instances(
        self,
        image: np.ndarray,
        masks: np.ndarray,
        *,
        config: InstanceConfig | None = None,
        full_query: bool | None = None,
        snap: bool | None = None,
    ) -> np.ndarray:
        """Refine many instances at once: (N, H, W) bool stack or (H, W) label map in, same out.

        Each instance is refined in its bounding box plus a margin (``soft=True``); a pixel
        claimed by several goes to the highest refined probability if above 0.5, else to the
        background. See :func:`finecut.refine.instances.refine_instances` (``config`` is its
        :class:`~finecut.refine.instances.InstanceConfig`).
        """
        from finecut.refine.instances import refine_instances

        return refine_instances(self, image, masks, config=config, full_query=full_query, snap=snap)

    def _crm_probability(
        self, rgb: np.ndarray, coarse: np.ndarray, cfg: InferenceConfig, progress=None
    ) -> np.ndarray:
        """The CRM's probability alone, before the gate and the snapping."""
        return refine_probability(self._runner, rgb, coarse, cfg, progress=progress)


def finish_probability(
    rgb: np.ndarray,
    coarse: np.ndarray,
    crm: np.ndarray,
    cfg: InferenceConfig,
    keep_model=None,
    snap_keep_model=None,
) -> np.ndarray:
    """The do-no-harm gate, edge snapping and keep step applied to a CRM probability, per ``cfg``.

    With ``crm`` equal to the coarse mask the gate changes nothing and this is snapping alone
    (the keep step then judges the snapping's changes).

    Shape:
        rgb: (H, W, 3) uint8; coarse: (H, W) bool; crm: (H, W) float -> (H, W) float32.
    """
    prob = gate_and_snap(rgb, coarse, crm, cfg)
    return keep_step(rgb, coarse, prob, crm, cfg, keep_model, snap_model=snap_keep_model)


def gate_and_snap(
    rgb: np.ndarray, coarse: np.ndarray, crm: np.ndarray, cfg: InferenceConfig
) -> np.ndarray:
    """The first part of :func:`finish_probability`: the gate, then the snapping."""
    prob = crm
    h, w = coarse.shape
    if cfg.keep_reach > 0 or cfg.keep_confidence > 0:
        prob = gate_changes(crm, coarse, cfg.keep_reach * (h + w), cfg.keep_confidence)
    if cfg.snap:
        prob = _snap(rgb, prob, cfg)
    return prob


def _snap(rgb: np.ndarray, prob: np.ndarray, cfg: InferenceConfig) -> np.ndarray:
    """Edge snapping of ``prob`` with ``cfg``'s band, regulariser and passes."""
    h, w = prob.shape
    band = snap_band(h, w, cfg.snap_fraction, cfg.snap_min_band, cfg.snap_max_band)
    return snap_to_edges(rgb, prob, band, epsilon=cfg.snap_epsilon, passes=cfg.snap_passes)


def snap_alone_probability(
    rgb: np.ndarray, coarse: np.ndarray, cfg: InferenceConfig
) -> np.ndarray:
    """The snapping of ``cfg`` applied to the input mask itself (no CRM, no gate, no keep step).

    Shape: (H, W, 3) uint8, (H, W) bool -> (H, W) float32.
    """
    return _snap(rgb, coarse.astype(np.float32), cfg)


def wants_second_opinion(cfg: InferenceConfig) -> bool:
    """Whether :func:`keep_step` adds snapping alone's trusted changes (``keep_snap_threshold``
    >= 0, with the learned keep model and snapping on): then it needs
    :func:`snap_alone_probability`."""
    return cfg.keep_learned and cfg.snap and cfg.keep_snap_threshold >= 0


def without_keep(cfg: InferenceConfig) -> InferenceConfig:
    """``cfg`` with no keep step (neither the learned model nor the edge check), its keep
    settings reset, so configs that differ only in the keep step compare equal: they share the
    gate and snapping (:func:`gate_and_snap`)."""
    return replace(
        cfg,
        keep_edges=False,
        keep_edge_margin=0.0,
        keep_learned=False,
        keep_threshold=-1.0,
        keep_snap_threshold=-1.0,
    )


def keep_step(
    rgb: np.ndarray,
    coarse: np.ndarray,
    prob: np.ndarray,
    crm: np.ndarray,
    cfg: InferenceConfig,
    keep_model=None,
    snapped: np.ndarray | None = None,
    snap_model=None,
) -> np.ndarray:
    """The last part of :func:`finish_probability`: undo the changed regions not to be trusted,
    by the learned keep model (``cfg.keep_learned``; ``keep_model`` or the embedded one) or by
    edge support (``cfg.keep_edges``). With ``cfg.keep_snap_threshold`` >= 0 (and ``cfg.snap``)
    then add the changes of snapping alone (``snapped``: :func:`snap_alone_probability`,
    computed when None) that ``snap_model`` (or the embedded ``refine_keep_snap``) trusts,
    where the kept mask left the input as it was."""
    if cfg.keep_learned:
        from finecut.refine.keep import (
            apply_keep,
            default_keep_model,
            default_snap_keep_model,
            keep_probabilities,
            left_to_input,
            second_opinion,
        )

        model = keep_model if keep_model is not None else default_keep_model()
        threshold = cfg.keep_threshold if cfg.keep_threshold >= 0 else None
        kept = apply_keep(rgb, coarse, prob, crm, model, threshold)
        if not wants_second_opinion(cfg):
            return kept  # off, or no snapping asked for (the second opinion is snapping's)
        if snapped is None:
            snapped = snap_alone_probability(rgb, coarse, cfg)
        if snap_model is None:
            snap_model = default_snap_keep_model()
        residual = left_to_input(kept, coarse, snapped)
        box, labels, p = keep_probabilities(rgb, coarse, residual, crm, snap_model)
        return second_opinion(kept, coarse, snapped, box, labels, p, cfg.keep_snap_threshold)
    if cfg.keep_edges:
        return revert_unsupported(rgb, coarse, prob, cfg.keep_edge_margin)
    return prob


def refine(
    image: np.ndarray,
    mask: np.ndarray,
    *,
    device: str | torch.device | None = None,
    soft: bool = False,
    weights: str | Path | None = None,
    config: InferenceConfig | None = None,
    precision: str | None = None,
) -> np.ndarray:
    """Refine a coarse mask in one call (loads the model; :class:`Refiner` keeps it loaded)."""
    refiner = Refiner(device, weights=weights, config=config, precision=precision)
    return refiner.refine(image, mask, soft=soft)
