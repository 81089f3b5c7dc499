"""COCO instance annotations in and out, and the journal that lets an interrupted run resume.

* :func:`load_coco` reads and checks an annotation file (``images``, ``annotations``).
* :func:`decode_segmentation` turns one annotation's ``segmentation`` (polygons, uncompressed
  RLE with a list of counts, or compressed RLE with a string) into a bool mask;
  :func:`encode_mask` turns a mask into compressed RLE (``{"size": [H, W], "counts": str}``)
  with its ``area`` and ``bbox``.
* :class:`Journal` is the sidecar of ``finecut refine-coco``: one JSON line per finished image,
  appended and fsynced, so a re-run skips the images already done; a torn last line (a crash
  mid-write) is ignored.
* :func:`write_json` writes the result atomically (temporary file, fsync, rename).

Masks go through pycocotools, an optional dependency (``pip install 'finecut[coco]'``):
:func:`mask_api` raises :class:`finecut.errors.DependencyError` with that advice when it is
missing. Nothing here imports torch or model code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from finecut.errors import DependencyError, ImageError

log = logging.getLogger(__name__)

__all__ = [
    "Journal",
    "decode_segmentation",
    "encode_mask",
    "file_sha256",
    "image_key",
    "load_coco",
    "mask_api",
    "write_json",
]

JOURNAL_FORMAT = "finecut refine-coco journal"


def mask_api():
    """``pycocotools.mask``, or DependencyError saying how to install it."""
    try:
        from pycocotools import mask as mask_utils
    except ImportError:
        raise DependencyError(
            "COCO annotations need pycocotools, which is not installed: pip install "
            "'finecut[coco]' (or pip install pycocotools)"
        ) from None
    return mask_utils


def load_coco(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a COCO annotation file and check the fields finecut uses.

    Every image needs ``id`` and ``file_name``; every annotation ``image_id`` and
    ``segmentation``. Other fields are kept as they are.

    Raises:
        ImageError: missing, unreadable or invalid JSON, or a missing field (named).
    """
    name = f"'{os.fspath(path)}'"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ImageError(f"cannot read annotations {name}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ImageError(f"cannot read annotations {name}: {exc}") from None
    try:
        coco = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ImageError(f"cannot read annotations {name}: not valid JSON ({exc})") from None
    if not isinstance(coco, dict):
        raise ImageError(
            f"annotations {name} must be a JSON object with 'images' and 'annotations'"
        )
    for key in ("images", "annotations"):
        if not isinstance(coco.get(key), list):
            raise ImageError(f"annotations {name} have no '{key}' list")
    for i, image in enumerate(coco["images"]):
        if not isinstance(image, dict) or "id" not in image or "file_name" not in image:
            raise ImageError(f"annotations {name}: images[{i}] needs 'id' and 'file_name'")
    for i, ann in enumerate(coco["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann or "segmentation" not in ann:
            raise ImageError(
                f"annotations {name}: annotations[{i}] needs 'image_id' and 'segmentation'"
            )
    return coco


def decode_segmentation(
    segmentation: Any, height: int, width: int, api, what: str = "segmentation"
) -> np.ndarray:
    """One annotation's mask: polygons, uncompressed or compressed RLE -> (H, W) bool.

    Raises:
        ImageError: a malformed segmentation or an RLE of another size, naming ``what``.

    Shape:
        output: ``(height, width)``.
    """
    try:
        if isinstance(segmentation, list):
            polygons = [p for p in segmentation if len(p) >= 6]
            if len(polygons) < len(segmentation):
                log.warning("%s: polygons of fewer than 3 points ignored", what)
            if not polygons:
                return np.zeros((height, width), bool)
            rle = api.merge(api.frPyObjects(polygons, height, width))
        elif isinstance(segmentation, dict) and "counts" in segmentation:
            size = [int(s) for s in segmentation.get("size", ())]
            if size != [height, width]:
                shown = f"{size[1]}x{size[0]}" if len(size) == 2 else repr(size)
                raise ImageError(f"{what}: its RLE is {shown} but the image is {width}x{height}")
            counts = segmentation["counts"]
            if isinstance(counts, list):  # uncompressed RLE
                rle = api.frPyObjects(segmentation, height, width)
            else:
                rle = {"size": size, "counts": counts}
        else:
            raise ImageError(f"{what}: 'segmentation' must be polygons or an RLE")
        mask = api.decode(rle)
    except ImageError:
        raise
    except Exception as exc:  # pycocotools raises TypeError/ValueError/... on bad input
        raise ImageError(f"{what}: its segmentation cannot be decoded ({exc})") from None
    return np.asarray(mask, dtype=bool).reshape(height, width)


def encode_mask(mask: np.ndarray, api) -> dict[str, Any]:
    """``{"segmentation": compressed RLE, "area": float, "bbox": [x, y, w, h]}`` of a mask.

    Shape:
        mask: ``(H, W)`` bool.
    """
    rle = api.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    area = float(api.area(rle))
    bbox = [float(v) for v in api.toBbox(rle)]
    counts = rle["counts"]
    segmentation = {
        "size": [int(s) for s in rle["size"]],
        "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
    }
    return {"segmentation": segmentation, "area": area, "bbox": bbox}


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def image_key(image_id: Any) -> str:
    """An image id as a dict key: ``json.dumps`` (ids may be ints or strings)."""
    return json.dumps(image_id, sort_keys=True)


class Journal:
    """Append-only record of finished images: a header line, then one JSON line per image.

    Args:
        path: the journal file (``finecut refine-coco`` uses ``OUTPUT.partial``).
        header: what the run depends on (input digest, options); a journal whose header
            differs belongs to another run and is refused.
        restart: discard an existing journal instead of resuming it.

    Attributes:
        done: finished images, ``{image_key(image_id): results}`` where ``results`` is the list
            the run recorded for that image.
    """

    def __init__(
        self, path: str | os.PathLike[str], header: dict[str, Any], *, restart: bool = False
    ) -> None:
        self.path = Path(path)
        self.header = {"format": JOURNAL_FORMAT, **header}
        self.done: dict[str, Any] = {}
        if self.path.exists() and not restart:
            self._resume()
        else:
            self._start()

    def _start(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "w", encoding="utf-8") as fh:
                fh.write(json.dumps(self.header, sort_keys=True) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise ImageError(f"cannot write journal '{self.path}': {exc.strerror or exc}") from None

    def _resume(self) -> None:
        lines = self.path.read_text(encoding="utf-8", errors="replace").split("\n")
        try:
            header = json.loads(lines[0])
        except json.JSONDecodeError:
            header = None
        if header != json.loads(json.dumps(self.header, sort_keys=True)):
            raise ImageError(
                f"journal '{self.path}' is from another run (other annotations, weights or "
                "options); delete it or pass --overwrite to start over"
            )
        complete = lines[1:-1]  # the text after the last newline is a torn write, if anything
        for number, line in enumerate(complete, start=2):
            if not line:
                continue
            try:
                record = json.loads(line)
                self.done[image_key(record["image_id"])] = record["results"]
            except (json.JSONDecodeError, KeyError, TypeError):
                log.warning(
                    "journal '%s' line %d is damaged: that image is redone", self.path, number
                )
        if lines[-1]:
            log.warning("journal '%s' ends in a torn line: that image is redone", self.path)
            self._truncate_to(len("\n".join(lines[:-1])) + 1)
        log.info("resuming: %d images already done (%s)", len(self.done), self.path)

    def _truncate_to(self, size: int) -> None:
        with open(self.path, "r+b") as fh:
            fh.truncate(size)

    def is_done(self, image_id: Any) -> bool:
        return image_key(image_id) in self.done

    def add(self, image_id: Any, results: Any) -> None:
        """Record one finished image (appended, flushed and fsynced before returning)."""
        line = json.dumps({"image_id": image_id, "results": results}, separators=(",", ":"))
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.done[image_key(image_id)] = results

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def write_json(path: str | os.PathLike[str], data: Any, protect: Iterable[Path] = ()) -> Path:
    """Write JSON atomically: a temporary file in the same folder, fsync, then rename.

    Raises:
        ImageError: ``path`` is one of ``protect`` or the write failed (``path`` untouched).
    """
    dest = Path(path)
    for other in protect:
        if dest.resolve() == Path(other).resolve():
            raise ImageError(f"refusing to write '{dest}': it is the input '{other}'")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, separators=(",", ":"))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise ImageError(f"cannot write '{dest}': {exc.strerror or exc}") from None
        raise
    return dest
