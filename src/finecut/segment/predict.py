"""Run a trained segmenter on a photo: class-id label map, CamVid colours and an overlay.

``segment_image(model, image)`` takes a plain ``(H, W, 3)`` uint8 RGB array and returns the
``(H, W)`` uint8 label map; :func:`colorize` and :func:`overlay` turn it into pictures.
:func:`load_segmenter` reads a model from a training checkpoint (``last.pt``), from a
``.safetensors`` file with its ``.json`` manifest (:func:`export_segmenter`), or the embedded
default.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from finecut.devices import resolve_device
from finecut.errors import ImageError, WeightsError
from finecut.models.resize import resize_by
from finecut.models.segmenter import (
    CAMVID_CLASSES,
    Segmenter,
    SegmenterConfig,
    multiscale_probs,
)
from finecut.segment.defaults import DEFAULT_FLIP, DEFAULT_SCALES

log = logging.getLogger(__name__)

__all__ = [
    "CAMVID_PALETTE",
    "DEFAULT_FLIP",
    "DEFAULT_SCALES",
    "DEFAULT_WEIGHTS",
    "colorize",
    "export_segmenter",
    "load_segmenter",
    "overlay",
    "segment_image",
]

DEFAULT_WEIGHTS = "segmenter_camvid"
"""Name of the embedded default model in :mod:`finecut.weights` (once one is shipped)."""

CAMVID_PALETTE: np.ndarray = np.array(
    [
        [128, 128, 128],  # Sky
        [128, 0, 0],  # Building
        [192, 192, 128],  # Pole
        [128, 64, 128],  # Road
        [60, 40, 222],  # Pavement
        [128, 128, 0],  # Tree
        [192, 128, 128],  # SignSymbol
        [64, 64, 128],  # Fence
        [64, 0, 128],  # Car
        [64, 64, 0],  # Pedestrian
        [0, 128, 192],  # Bicyclist
        [0, 0, 0],  # void
    ],
    dtype=np.uint8,
)
"""SegNet's CamVid colours, class ids 0..10 and void (11)."""
assert len(CAMVID_PALETTE) == len(CAMVID_CLASSES) + 1


@torch.no_grad()
def segment_image(
    model: nn.Module,
    image: np.ndarray,
    *,
    device: str | torch.device | None = None,
    max_side: int | None = 1024,
    scales: tuple[float, ...] = DEFAULT_SCALES,
    flip: bool = DEFAULT_FLIP,
) -> np.ndarray:
    """Class ids of every pixel of an RGB photo.

    Args:
        model: a segmenter (any module mapping (B, 3, H, W) in [0, 1] to (B, K, H, W) logits);
            run in eval mode on ``device`` (default: the model's device).
        image: ``(H, W, 3)`` uint8 RGB.
        device: where to run; the model is moved there.
        max_side: images with a longer side are segmented at that size and the logits
            upsampled back (None: always at full size).
        scales: input scales (relative to the size segmented) whose class probabilities are
            averaged, test-time augmentation (:func:`~finecut.models.segmenter.multiscale_probs`).
        flip: also average the mirrored pass of every scale.

    Returns:
        ``(H, W)`` uint8 class ids.

    Raises:
        ImageError: ``image`` is not an (H, W, 3) uint8 array.
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", type(image).__name__)
        raise ImageError(f"image must be an (H, W, 3) uint8 RGB array, got {shape}")
    if image.dtype != np.uint8:
        raise ImageError(f"image must be uint8 RGB, got dtype {image.dtype}")
    if device is not None:
        dev = resolve_device(device)
        model = model.to(dev)
    else:
        dev = next(iter(model.parameters()), torch.empty(0)).device
    model.eval()
    h, w = image.shape[:2]
    x = torch.from_numpy(np.ascontiguousarray(image).transpose(2, 0, 1).copy()).to(dev)
    x = x.float().div_(255.0).unsqueeze(0)
    if max_side is not None and max(h, w) > max_side:
        x = resize_by(x, max_side / max(h, w))
    if tuple(scales) == (1.0,) and not flip:
        logits = model(x)
    else:
        logits = multiscale_probs(model, x, tuple(scales), flip)
    if tuple(logits.shape[-2:]) != (h, w):
        logits = F.interpolate(logits.float(), size=(h, w), mode="bilinear", align_corners=False)
    return logits.argmax(1)[0].to(torch.uint8).cpu().numpy()


def colorize(labels: np.ndarray, palette: np.ndarray = CAMVID_PALETTE) -> np.ndarray:
    """RGB picture of a label map; ids beyond the palette are drawn black.

    Shape:
        labels: (H, W) integer. Output: (H, W, 3) uint8.
    """
    labels = np.asarray(labels)
    safe = np.where(labels < len(palette), labels, len(palette) - 1).astype(np.intp)
    return palette[safe]


def overlay(
    image: np.ndarray, labels: np.ndarray, alpha: float = 0.5, palette: np.ndarray = CAMVID_PALETTE
) -> np.ndarray:
    """The photo blended with the colours of its label map: ``(1 - alpha) image + alpha colour``.

    Shape:
        image: (H, W, 3) uint8; labels: (H, W). Output: (H, W, 3) uint8.
    """
    if image.shape[:2] != np.asarray(labels).shape:
        raise ImageError(
            f"labels {np.asarray(labels).shape} do not match the image {image.shape[:2]}"
        )
    blend = (1.0 - alpha) * image.astype(np.float32) + alpha * colorize(labels, palette)
    return np.clip(np.rint(blend), 0, 255).astype(np.uint8)


def _from_checkpoint(path: Path) -> tuple[SegmenterConfig, dict]:
    from finecut.weights import load_checkpoint

    state = load_checkpoint(path)
    if not isinstance(state, dict) or state.get("kind") != "segment":
        raise WeightsError(f"{path} is not a segmenter checkpoint (written by `train segment`)")
    return SegmenterConfig.from_dict(state["config"]["model"]), state["model"]


def _from_safetensors(path: Path, sha256: str | None = None) -> tuple[SegmenterConfig, dict]:
    import json

    from finecut.weights import load_state_dict

    manifest_path = path.with_suffix(".json")
    if not manifest_path.is_file():
        raise WeightsError(f"{path} needs its manifest {manifest_path} (model config)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(f"cannot read {manifest_path}: {exc}") from None
    if manifest.get("model") != "segmenter":
        raise WeightsError(f"{manifest_path} does not describe a segmenter")
    state = load_state_dict(path, sha256 or manifest.get("sha256"))
    return SegmenterConfig.from_dict(manifest["config"]), state


def load_segmenter(
    weights: str | Path | None = None, *, device: str | torch.device | None = None
) -> Segmenter:
    """A segmenter in eval mode from a checkpoint, an exported file or the embedded default.

    Args:
        weights: ``last.pt`` of ``finecut train segment``, a ``.safetensors`` file with its
            ``.json`` manifest (:func:`export_segmenter`), the name of embedded weights
            (``segmenter_camvid``: a name without a suffix that is no file), or None for the
            embedded default.
        device: where to put it (default: CUDA when available).

    Raises:
        WeightsError: missing, corrupt or mismatched weights, or no embedded default.
    """
    embedded = weights is None or (
        isinstance(weights, str) and not Path(weights).suffix and not Path(weights).exists()
    )
    if embedded:
        from finecut.weights import WEIGHTS_DIR

        name = weights or DEFAULT_WEIGHTS
        path = WEIGHTS_DIR / f"{name}.safetensors"
        if not path.is_file():
            raise WeightsError(
                f"no embedded segmenter named {name!r} ships with this finecut; pass a weights "
                "file (a last.pt of `finecut train segment` or an exported .safetensors)"
            )
        cfg, state = _from_safetensors(path)
    else:
        path = Path(weights)
        if not path.is_file():
            raise WeightsError(f"weights file {str(path)!r} not found")
        if path.suffix == ".safetensors":
            cfg, state = _from_safetensors(path)
        else:
            cfg, state = _from_checkpoint(path)
    from finecut.weights import flush_subnormals

    model = Segmenter(cfg, pretrained=False)
    try:
        model.load_state_dict(flush_subnormals(state))
    except RuntimeError as exc:
        raise WeightsError(f"{path} does not fit its segmenter config: {exc}") from None
    return model.to(resolve_device(device)).eval()


def export_segmenter(
    checkpoint: str | Path, out: str | Path, *, command: str = "", machine: str = ""
) -> Path:
    """Write a checkpoint's model as ``OUT.safetensors`` + ``OUT.json``.

    The manifest holds the model config, the sha256, the step and training config of the
    checkpoint, and the training ``command`` and ``machine`` given here (provenance).
    """
    from finecut.train.export import export_segment_weights

    out = Path(out)
    name = out.stem if out.suffix else out.name
    return export_segment_weights(
        checkpoint, name, directory=out.parent, command=command, machine=machine
    )
