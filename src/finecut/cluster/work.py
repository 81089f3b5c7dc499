"""One item's work, and the callable class Ray Data runs on each worker.

:func:`refine_item` reads an image and its mask through fsspec, refines with a loaded
:class:`finecut.Refiner` exactly as ``finecut refine`` does (the same readers, the same mask
rule, the same options) and writes the mask: atomically through :func:`finecut.data.io.write_mask`
on a local disk, as one PUT of the same PNG bytes on an object store.

:class:`RefineBatch` is for ``Dataset.map_batches``: it loads the refiner once in ``__init__``
and returns one status row per input row; a failing item is a row with its error, never an
exception that would stop the job.

Example:
    >>> ds = ray.data.from_items([{"image": ..., "mask": ..., "output": ...}, ...])
    >>> rows = ds.map_batches(RefineBatch, fn_constructor_kwargs={"threads": 1},
    ...                       compute=ray.data.ActorPoolStrategy(size=2), batch_size=4)
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from finecut.data.io import decode_image, decode_mask, encode_mask, write_mask
from finecut.data.masks import binary_mask
from finecut.errors import FinecutError, ImageError

__all__ = ["RESULT_COLUMNS", "RefineBatch", "RefineOptions", "load_pair", "refine_item"]

log = logging.getLogger(__name__)

#: What the refusal of a label map given as a mask suggests.
LABELS_HINT = "refine label maps with finecut refine --instances or Refiner.refine_instances"

#: The columns a :class:`RefineBatch` returns, one value per input row.
RESULT_COLUMNS = ("image", "output", "ok", "error", "warning", "seconds", "finished")


@dataclass(frozen=True)
class RefineOptions:
    """How each worker refines: the options of ``finecut refine``.

    Args:
        soft: write the probability as 8-bit alpha instead of a 0/255 mask.
        snap: edge snapping after CRM (``--no-snap`` turns it off).
        full_query: CRM's own query-every-pixel inference.
        resize_mask: resize a mask of another size to its image instead of failing.
        weights: weights file or embedded name (None: the embedded model); a file must be
            readable at the same path on every worker.
        device: "cpu", "cuda", ... (None: CUDA when available).
        threads: torch threads per worker (None: torch's default).
    """

    soft: bool = False
    snap: bool = True
    full_query: bool = False
    resize_mask: bool = False
    weights: str | None = None
    device: str | None = None
    threads: int | None = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def make_refiner(self):
        """The :class:`finecut.Refiner` these options describe (loads the model)."""
        from finecut.refine import Refiner

        return Refiner(self.device, weights=self.weights, threads=self.threads)


def read_bytes(url: str, kind: str) -> bytes:
    """The bytes of the file at ``url`` (any fsspec URL); ImageError naming it when unreadable."""
    from finecut.cluster.items import url_fs

    fs, path = url_fs(url)
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        raise ImageError(f"cannot read {kind} {url!r}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"cannot read {kind} {url!r}: it is a folder, not a file") from None
    except OSError as exc:
        why = " ".join(str(exc).split())
        raise ImageError(f"cannot read {kind} {url!r}: {why}") from None


def load_pair(image_url: str, mask_url: str, resize_mask: bool = False) -> tuple[np.ndarray, ...]:
    """The image as RGB uint8 and its coarse mask as bool, read as ``finecut refine`` reads them.

    Shape:
        ``(H, W, 3)`` uint8 and ``(H, W)`` bool.
    """
    import cv2

    image = decode_image(read_bytes(image_url, "image"), name=image_url)
    mask = decode_mask(read_bytes(mask_url, "mask"), name=mask_url)
    h, w = image.shape[:2]
    if mask.shape != (h, w):
        if not resize_mask:
            raise ImageError(
                f"mask {mask_url!r} is {mask.shape[1]}x{mask.shape[0]} but image {image_url!r} "
                f"is {w}x{h} (pass --resize-mask to resize it)"
            )
        mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_LINEAR)
    return image, binary_mask(mask, name=f"mask {mask_url!r}", hint=LABELS_HINT)


def refine_item(
    refiner, image_url: str, mask_url: str, output_url: str, options: RefineOptions
) -> list[str]:
    """Refine one pair and write its output; returns the warnings (e.g. an empty mask).

    Raises:
        FinecutError: the pair cannot be read or refined, or the output cannot be written.
    """
    from finecut.cluster.items import is_local, url_fs

    image, coarse = load_pair(image_url, mask_url, options.resize_mask)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = refiner.refine(
            image, coarse, soft=options.soft, full_query=options.full_query, snap=options.snap
        )
    if options.soft:
        result = (result * 255.0).round().astype(np.uint8)
    fs, path = url_fs(output_url)
    if is_local(fs):
        inputs = [url_fs(u) for u in (image_url, mask_url)]
        write_mask(path, result, protect=[p for f, p in inputs if is_local(f)])
    else:  # an object store: one PUT is atomic (the object appears whole or not at all)
        data = encode_mask(result, path)
        try:
            fs.pipe_file(path, data)
        except OSError as exc:
            why = " ".join(str(exc).split())
            raise ImageError(f"cannot write mask {output_url!r}: {why}") from None
    return [str(w.message) for w in caught]


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, FinecutError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class RefineBatch:
    """A callable class for ``ray.data.Dataset.map_batches``: the refiner is loaded once per
    worker, then every row ``{image, mask, output}`` (fsspec URLs) is refined and written.

    Args:
        **options: the fields of :class:`RefineOptions` (``fn_constructor_kwargs``).

    Returns (per call): a dict of :data:`RESULT_COLUMNS` arrays, one entry per input row:
    ``ok`` (bool), ``error`` (one line, empty when ok), ``warning`` (empty when none),
    ``seconds`` (the item's wall time), ``finished`` (when it ended, Unix time). Any exception
    of one item becomes its row; a refiner that cannot be loaded (a weights file missing on this
    node) fails every row with the reason, so the job ends with a failure table instead of Ray's
    retries and tracebacks.
    """

    def __init__(self, **options: Any) -> None:
        self.options = RefineOptions(**options)
        self.refiner = None
        self.start_error = ""
        try:
            self.refiner = self.options.make_refiner()
        except FinecutError as exc:  # e.g. weights missing on this node: every row says so
            self.start_error = f"the worker could not load the refiner: {_one_line(exc)}"
            log.error("%s", self.start_error)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows: dict[str, list] = {name: [] for name in RESULT_COLUMNS}
        for image, mask, output in zip(batch["image"], batch["mask"], batch["output"], strict=True):
            start = time.perf_counter()
            error, warning = self.start_error, ""
            try:
                if error:
                    raise FinecutError(error)
                warning = "; ".join(
                    refine_item(self.refiner, str(image), str(mask), str(output), self.options)
                )
            except Exception as exc:  # one bad item must not stop millions of others
                error = _one_line(exc)
                log.debug("%s failed: %s", image, error)
            rows["image"].append(str(image))
            rows["output"].append(str(output))
            rows["ok"].append(not error)
            rows["error"].append(error)
            rows["warning"].append(warning)
            rows["seconds"].append(time.perf_counter() - start)
            rows["finished"].append(time.time())
        return {
            "image": np.array(rows["image"], dtype=object),
            "output": np.array(rows["output"], dtype=object),
            "ok": np.array(rows["ok"], dtype=bool),
            "error": np.array(rows["error"], dtype=object),
            "warning": np.array(rows["warning"], dtype=object),
            "seconds": np.array(rows["seconds"], dtype=np.float64),
            "finished": np.array(rows["finished"], dtype=np.float64),
        }
