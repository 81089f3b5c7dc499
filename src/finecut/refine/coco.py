"""Refine every mask of a COCO annotation file (``finecut refine-coco``).

For each image, the masks of its annotations (polygons or RLE) are decoded and refined together
with :meth:`finecut.refine.api.Refiner.refine_instances` (each in its box plus a margin; a pixel
claimed by two goes to the more probable). Each refined annotation gets a compressed RLE
``segmentation`` and the matching ``area`` and ``bbox``; every other field (``id``,
``category_id``, ``image_id``, ``score``, ...) and every top-level key is kept. Not refined, kept
exactly as given: crowd annotations (``iscrowd: 1``), annotations whose refined mask is empty
(logged), and annotations of images not listed in ``images``.

Finished images are recorded in a :class:`finecut.data.coco.Journal`, so an interrupted run
resumes where it stopped.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from finecut.data.coco import Journal, decode_segmentation, encode_mask, image_key
from finecut.data.io import read_image
from finecut.errors import FinecutError, ImageError

if TYPE_CHECKING:  # pragma: no cover
    from finecut.refine.api import Refiner

log = logging.getLogger(__name__)

__all__ = [
    "annotations_by_image",
    "apply_results",
    "pending_images",
    "refine_coco",
    "refine_coco_image",
]


def annotations_by_image(coco: dict[str, Any]) -> dict[str, list[int]]:
    """``{image_key(image_id): [indices into coco["annotations"]]}``, in file order."""
    groups: dict[str, list[int]] = {}
    for index, ann in enumerate(coco["annotations"]):
        groups.setdefault(image_key(ann["image_id"]), []).append(index)
    return groups


def refine_coco_image(
    refiner: Refiner,
    image: np.ndarray,
    annotations: list[dict[str, Any]],
    api,
    *,
    full_query: bool | None = None,
    snap: bool | None = None,
) -> list[dict[str, Any] | None]:
    """Refined ``{"segmentation", "area", "bbox"}`` per annotation of one image, None where kept.

    Args:
        refiner: a loaded Refiner.
        image: the image, (H, W, 3).
        annotations: its COCO annotations.
        api: ``pycocotools.mask`` (:func:`finecut.data.coco.mask_api`).
        full_query: passed to the refiner.
        snap: passed to the refiner.
    """
    h, w = image.shape[:2]
    todo = [i for i, ann in enumerate(annotations) if not ann.get("iscrowd")]
    results: list[dict[str, Any] | None] = [None] * len(annotations)
    if not todo:
        return results
    masks = np.stack(
        [
            decode_segmentation(
                annotations[i]["segmentation"], h, w, api, f"annotation {annotations[i].get('id')}"
            )
            for i in todo
        ]
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        refined = refiner.refine_instances(image, masks, full_query=full_query, snap=snap)
    for message in {str(c.message) for c in caught}:
        log.warning("%s", message)
    for k, i in enumerate(todo):
        if refined[k].any():
            results[i] = encode_mask(refined[k], api)
        elif masks[k].any():
            log.warning(
                "annotation %s: refined to nothing; kept as given", annotations[i].get("id")
            )
    return results


def refine_coco(
    refiner: Refiner,
    coco: dict[str, Any],
    image_dir: str | Path,
    journal: Journal,
    api,
    *,
    full_query: bool | None = None,
    snap: bool | None = None,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> list[tuple[str, str]]:
    """Refine every image of ``coco`` not yet in ``journal``; record each one there when done.

    Args:
        refiner: a loaded Refiner.
        coco: the annotation file's content (:func:`finecut.data.coco.load_coco`).
        image_dir: folder the images' ``file_name`` are relative to.
        journal: where finished images are recorded (and which ones to skip).
        api: ``pycocotools.mask``.
        full_query: passed to the refiner.
        snap: passed to the refiner.
        progress: wraps the list of images to do (e.g. ``tqdm``).

    Returns:
        ``[(file_name, error message)]`` of the images that failed (they are not recorded, so a
        re-run tries them again); the others are in ``journal``.
    """
    groups = annotations_by_image(coco)
    todo = pending_images(coco, journal, groups)
    failures: list[tuple[str, str]] = []
    for entry in progress(todo) if progress is not None else todo:
        name = str(entry["file_name"])
        try:
            image = _read_entry(Path(image_dir), entry)
            indices = groups[image_key(entry["id"])]
            results = refine_coco_image(
                refiner,
                image,
                [coco["annotations"][i] for i in indices],
                api,
                full_query=full_query,
                snap=snap,
            )
        except FinecutError as exc:
            failures.append((name, str(exc)))
            log.error("%s: %s", name, exc)
            continue
        journal.add(entry["id"], [[i, r] for i, r in zip(indices, results, strict=True) if r])
    return failures


def pending_images(
    coco: dict[str, Any], journal: Journal, groups: dict[str, list[int]] | None = None
) -> list[dict[str, Any]]:
    """The entries of ``coco["images"]`` that have annotations and are not in ``journal``."""
    groups = annotations_by_image(coco) if groups is None else groups
    listed = {image_key(entry["id"]) for entry in coco["images"]}
    orphans = sum(len(v) for k, v in groups.items() if k not in listed)
    if orphans:
        log.warning("%d annotations refer to images not in 'images': kept as given", orphans)
    return [
        entry
        for entry in coco["images"]
        if image_key(entry["id"]) in groups and not journal.is_done(entry["id"])
    ]


def apply_results(coco: dict[str, Any], done: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``coco`` whose refined annotations carry their new segmentation, area, bbox.

    Args:
        coco: the input annotation file's content (left unchanged).
        done: :attr:`finecut.data.coco.Journal.done`: per image, ``[[index, result], ...]``.
    """
    annotations = list(coco["annotations"])
    for results in done.values():
        for index, result in results:
            annotations[index] = {**annotations[index], **result}
    return {**coco, "annotations": annotations}


def _read_entry(image_dir: Path, entry: dict[str, Any]) -> np.ndarray:
    image = read_image(image_dir / str(entry["file_name"]))
    h, w = image.shape[:2]
    want = (entry.get("height"), entry.get("width"))
    if None not in want and (int(want[0]), int(want[1])) != (h, w):
        raise ImageError(
            f"image '{entry['file_name']}' is {w}x{h} but its entry in the annotations says "
            f"{want[1]}x{want[0]}"
        )
    return image
