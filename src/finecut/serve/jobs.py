"""The work behind each endpoint, run on a worker thread: bytes in, PNG or zip bytes out.

Everything stays in memory: uploads are decoded from bytes (``finecut.data.io.decode_image``),
results are encoded into bytes. Each function takes ``report(step, fraction)`` for progress.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from finecut.data.io import decode_image, decode_mask
from finecut.errors import ImageError
from finecut.serve.hints import coarse_mask_from_hints, parse_box
from finecut.serve.models import Models
from finecut.serve.upload import Upload

__all__ = [
    "Result",
    "cutout_rgba",
    "grabcut_job",
    "png_bytes",
    "refine_job",
    "soft_job",
    "zip_bytes",
]

Report = Callable[[str, "float | None"], None]


@dataclass(frozen=True)
class Result:
    """An answer's body and what to say about it."""

    body: bytes
    media_type: str
    filename: str
    size: tuple[int, int]  # (width, height) of the photo
    warning: str | None = None


def png_bytes(array: np.ndarray) -> bytes:
    """(H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA uint8 -> PNG bytes (zlib level 3)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def zip_bytes(files: dict[str, bytes]) -> bytes:
    """A zip of ``name -> bytes``, entries stored (PNGs are compressed already)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def cutout_rgba(image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The photo with ``alpha`` ((H, W) uint8) as its alpha channel: (H, W, 4) uint8."""
    return np.concatenate([image, alpha[:, :, None]], axis=2)


def _stem(upload: Upload) -> str:
    """A safe file stem from an upload's name (for Content-Disposition)."""
    name = upload.filename.replace("\\", "/").rsplit("/", 1)[-1]
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name.rsplit(".", 1)[0]).strip("._")
    return stem[:60] or "image"


def _read_image(upload: Upload, max_pixels: int, report: Report) -> np.ndarray:
    report("reading the photo", None)
    return decode_image(upload.data, name=upload.filename or "image", max_pixels=max_pixels)


def _read_mask(upload: Upload, shape: tuple[int, int], resize: bool, max_pixels: int) -> np.ndarray:
    name = upload.filename or "mask"
    if resize:
        mask = decode_mask(upload.data, name=name, max_pixels=max_pixels)
        if mask.shape != shape:
            mask = cv2.resize(mask, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
        return mask
    try:
        return decode_mask(upload.data, name=name, shape=shape, max_pixels=max_pixels)
    except ImageError as exc:
        if "but the image is" in str(exc):
            raise ImageError(f"{exc} (send resize_mask=true to resize it)") from None
        raise


def _refine_alpha(
    models: Models, image: np.ndarray, mask: np.ndarray, snap: bool, report: Report
) -> tuple[np.ndarray, str | None]:
    """Refined probability as uint8 alpha (0..255), and a warning for an empty or full mask."""
    coarse = mask > 127
    if not coarse.any() or coarse.all():
        which = "empty" if not coarse.any() else "full"
        return coarse.astype(np.uint8) * np.uint8(255), (
            f"the mask is {which}: nothing to refine, returned unchanged"
        )
    refiner = models.refiner()
    scales = list(getattr(refiner.config, "scales", ()))

    def progress(step: str) -> None:
        try:
            done = scales.index(float(step.split()[-1])) + 1
        except (ValueError, IndexError):
            done = None
        report(f"CRM at {step}", done / (len(scales) + 1) if done else None)

    prob = refiner.refine(image, coarse, soft=True, snap=snap, progress=progress)
    return np.round(np.clip(prob, 0.0, 1.0) * 255.0).astype(np.uint8), None


def refine_job(
    models: Models,
    image_upload: Upload,
    mask_upload: Upload,
    *,
    output: str,
    snap: bool,
    resize_mask: bool,
    max_pixels: int,
    report: Report,
) -> Result:
    """Refine an uploaded mask; ``output`` picks the answer.

    Outputs: ``mask`` (grey PNG, 0/255), ``alpha`` (grey PNG, the soft alpha), ``cutout``
    (RGBA PNG, binary alpha), ``cutout_soft`` (RGBA PNG, soft alpha), ``zip`` (all four as
    ``mask.png``, ``alpha.png``, ``cutout.png``, ``cutout_soft.png``). The mask is the
    refiner's probability > 0.5, the alpha ``round(255 * probability)``.
    """
    image = _read_image(image_upload, max_pixels, report)
    h, w = image.shape[:2]
    report("reading the mask", None)
    mask = _read_mask(mask_upload, (h, w), resize_mask, max_pixels)
    alpha, warning = _refine_alpha(models, image, mask, snap, report)
    report("encoding the result", None)
    stem = _stem(image_upload)
    binary = np.where(alpha > 127, np.uint8(255), np.uint8(0)) if warning is None else alpha
    makers: dict[str, Callable[[], np.ndarray]] = {
        "mask": lambda: binary,
        "alpha": lambda: alpha,
        "cutout": lambda: cutout_rgba(image, binary),
        "cutout_soft": lambda: cutout_rgba(image, alpha),
    }
    if output == "zip":
        body = zip_bytes({f"{name}.png": png_bytes(make()) for name, make in makers.items()})
        return Result(body, "application/zip", f"{stem}_refined.zip", (w, h), warning)
    if output not in makers:
        raise ImageError(f"unknown output {output!r}")
    return Result(png_bytes(makers[output]()), "image/png", f"{stem}_{output}.png", (w, h), warning)


def grabcut_job(
    image_upload: Upload,
    *,
    box: str | None,
    fg: Upload | None,
    bg: Upload | None,
    method: str,
    max_pixels: int,
    report: Report,
) -> Result:
    """A coarse mask (grey PNG, 0/255) from a box and/or strokes (:mod:`finecut.serve.hints`)."""
    image = _read_image(image_upload, max_pixels, report)
    h, w = image.shape[:2]
    box_px = parse_box(box, w, h) if box else None
    strokes = {}
    for key, upload in (("fg", fg), ("bg", bg)):
        if upload is not None:
            strokes[key] = decode_mask(
                upload.data, name=upload.filename or key, max_pixels=max_pixels
            )
    report("running GrabCut" if method == "grabcut" else "painting the mask", None)
    mask = coarse_mask_from_hints(image, box=box_px, method=method, **strokes)
    return Result(png_bytes(mask), "image/png", f"{_stem(image_upload)}_coarse.png", (w, h))


def soft_job(
    models: Models,
    image_upload: Upload,
    *,
    layers: int,
    max_side: int,
    max_pixels: int,
    report: Report,
) -> Result:
    """Soft layers of a photo as a zip: ``layer_K.png`` (RGBA, the photo with layer K's alpha)
    and ``composite.png`` (the layers colour-coded), all at the photo's size.

    Semantic soft segmentation (``finecut.soft.soft_segment``, fast mode, finecut's embedding
    network) runs on the photo resized to ``max_side`` at most; the alphas are upsampled
    (bilinear) and renormalised to sum to one.
    """
    from finecut.soft import soft_segment
    from finecut.viz import soft_composite

    image = _read_image(image_upload, max_pixels, report)
    h, w = image.shape[:2]
    work = image
    if max(h, w) > max_side:
        scale = max_side / max(h, w)
        size = (max(16, round(w * scale)), max(16, round(h * scale)))
        work = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    report("semantic features", None)
    features = models.embedder().embed(work)
    result = soft_segment(
        work,
        features,
        n_layers=layers,
        mode="fast",
        progress=lambda step, done, total: report(f"soft layers ({step})", done / total),
    )
    alphas = result.alphas
    if alphas.shape[:2] != (h, w):
        alphas = cv2.resize(alphas, (w, h), interpolation=cv2.INTER_LINEAR)
        if alphas.ndim == 2:
            alphas = alphas[:, :, None]
        alphas = np.clip(alphas, 0.0, 1.0)
        alphas /= np.maximum(alphas.sum(2, keepdims=True), 1e-12)
    report("encoding the layers", None)
    files = {}
    for k in range(alphas.shape[2]):
        alpha = np.round(alphas[:, :, k] * 255.0).astype(np.uint8)
        files[f"layer_{k}.png"] = png_bytes(cutout_rgba(image, alpha))
    files["composite.png"] = png_bytes(soft_composite(alphas))
    warning = None
    if alphas.shape[2] < layers:
        warning = f"{layers} layers asked, the photo gave {alphas.shape[2]}"
    return Result(
        zip_bytes(files), "application/zip", f"{_stem(image_upload)}_layers.zip", (w, h), warning
    )
