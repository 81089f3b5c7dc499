"""CamVid-layout semantic segmentation data: image / class-id pairs, augmented crops.

Layout: ``ROOT/{split}/images/*.jpg`` (any image extension) with ``ROOT/{split}/labels/*.png``
holding uint8 class ids (CamVid: 0..10, 11 = void, ignored by the loss and the metric);
``ROOT/{split}.txt`` lists the stems of the split (when absent, every image with a label is used).

Training items are augmented as is usual on CamVid: random scale, random crop (padded with void
where the scaled image is smaller than the crop) and horizontal flip; optionally photometric changes
(:func:`photometric`: brightness, contrast, saturation, hue, gamma, white balance, blur, noise) so
that the model sees other light and cameras than those of its few training sequences. Every item is
deterministic given (seed, epoch, index): the key ``epoch * len(dataset) + index`` carries the
epoch (what :class:`~finecut.train.embedding_data.EpochSampler` yields), so persistent DataLoader
workers see new augmentations every epoch and a resumed run repeats nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from finecut.data.io import read_image
from finecut.errors import ImageError
from finecut.train.embedding_data import CAMVID_VOID, read_label_map

log = logging.getLogger(__name__)

__all__ = [
    "CAMVID_VOID",
    "SegmentDataset",
    "SegmentItem",
    "class_pixel_counts",
    "load_pair",
    "photometric",
    "segment_items",
]

_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class SegmentItem:
    """One image and its class-id label map."""

    image: Path
    label: Path

    @property
    def stem(self) -> str:
        return self.image.stem


def segment_items(root: str | Path, split: str = "train") -> list[SegmentItem]:
    """The image / label pairs of one split of a CamVid-layout folder.

    Raises:
        ImageError: the split folder is missing, a listed stem has no image or label, or the
            split is empty.
    """
    root = Path(root)
    img_dir, lab_dir = root / split / "images", root / split / "labels"
    if not img_dir.is_dir() or not lab_dir.is_dir():
        raise ImageError(f"'{root / split}' must contain 'images/' and 'labels/' folders")
    images = {p.stem: p for p in img_dir.iterdir() if p.suffix.lower() in _IMAGE_EXTS}
    labels = {p.stem: p for p in lab_dir.iterdir() if p.suffix.lower() == ".png"}
    listing = root / f"{split}.txt"
    if listing.is_file():
        stems = [s.strip() for s in listing.read_text().splitlines() if s.strip()]
        missing = [s for s in stems if s not in images or s not in labels]
        if missing:
            raise ImageError(
                f"{listing} lists stems without an image or label in '{root / split}': "
                f"{missing[:5]}{' ...' if len(missing) > 5 else ''}"
            )
    else:
        stems = sorted(set(images) & set(labels))
    if not stems:
        raise ImageError(f"no image/label pairs in '{root / split}'")
    return [SegmentItem(images[s], labels[s]) for s in stems]


def load_pair(
    item: SegmentItem, num_classes: int, void: int = CAMVID_VOID
) -> tuple[np.ndarray, ...]:
    """Read an image ``(H, W, 3)`` uint8 and its labels ``(H, W)`` int64, checked.

    Raises:
        ImageError: unreadable files, a size mismatch, or class ids that are neither a class
            (``0 .. num_classes - 1``) nor ``void``.
    """
    image = read_image(item.image)
    labels = read_label_map(item.label)
    if labels.shape != image.shape[:2]:
        raise ImageError(
            f"label map '{item.label}' is {labels.shape[1]}x{labels.shape[0]} but image "
            f"'{item.image}' is {image.shape[1]}x{image.shape[0]}"
        )
    bad = (labels >= num_classes) & (labels != void)
    if labels.min() < 0 or bad.any():
        values = sorted(set(np.unique(labels[bad | (labels < 0)]).tolist()))[:5]
        raise ImageError(
            f"label map '{item.label}' holds ids {values}, neither a class (0..{num_classes - 1}) "
            f"nor void ({void})"
        )
    return image, labels.astype(np.int64)


def class_pixel_counts(
    items: list[SegmentItem], num_classes: int, void: int = CAMVID_VOID
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class pixel counts of the label maps, what median frequency balancing needs.

    Only the label PNGs are read (367 CamVid training maps: a few seconds).

    Returns:
        ``(class_pixels, present_pixels)``, both ``(K,)`` int64: the pixels of each class, and
        the non-void pixels of the images in which that class is present.

    Raises:
        ImageError: an unreadable label map, or ids that are neither a class nor ``void``.
    """
    class_pixels = np.zeros(num_classes, dtype=np.int64)
    present_pixels = np.zeros(num_classes, dtype=np.int64)
    for item in items:
        labels = read_label_map(item.label)
        ids = labels[labels != void]
        if ids.size and (ids.min() < 0 or ids.max() >= num_classes):
            raise ImageError(
                f"label map '{item.label}' holds ids that are neither a class "
                f"(0..{num_classes - 1}) nor void ({void})"
            )
        counts = np.bincount(ids, minlength=num_classes)
        class_pixels += counts
        present_pixels[counts > 0] += counts.sum()
    return class_pixels, present_pixels


def photometric(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """A random change of light, colour and sharpness of an RGB image; geometry is untouched.

    Written here rather than taken from a library: torchvision is a 5.5 GB install here and
    albumentations pulls pydantic and more for what is a dozen lines of OpenCV.

    At ``strength`` 1 (ranges scale linearly with it; 0 returns the image unchanged, without
    drawing from ``rng``): brightness x[0.65, 1.35], contrast about the mean grey x[0.65, 1.35],
    saturation x[0.5, 1.5], hue +-15 degrees, gamma in [0.7, 1.43], per-channel gains x[0.9, 1.1]
    (white balance), each applied with probability 0.8 in random order; then with probability 0.25
    a Gaussian blur (sigma up to 1.2 px) and with probability 0.25 Gaussian noise (sd up to 5
    grey levels).

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        strength: >= 0.
        rng: the item's generator (the change is deterministic given its state).

    Returns:
        ``(H, W, 3)`` uint8.
    """
    if strength < 0:
        raise ValueError(f"strength must be >= 0, got {strength}")
    if strength == 0:
        return image
    x = image.astype(np.float32) / 255.0
    s = float(strength)

    def factor(spread: float) -> float:
        return float(1.0 + rng.uniform(-spread, spread) * s)

    ops = ["brightness", "contrast", "saturation", "hue", "gamma", "balance"]
    for k in rng.permutation(len(ops)):
        if rng.random() >= 0.8:
            continue
        op = ops[int(k)]
        if op == "brightness":
            x = x * factor(0.35)
        elif op == "contrast":
            mean = float(cv2.cvtColor(x, cv2.COLOR_RGB2GRAY).mean())  # BT.601 luma
            x = (x - mean) * factor(0.35) + mean
        elif op == "saturation":
            grey = cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)[..., None]
            x = (x - grey) * factor(0.5) + grey
        elif op == "hue":
            hsv = cv2.cvtColor(np.clip(x, 0, 1), cv2.COLOR_RGB2HSV)  # float: H in degrees
            hsv[..., 0] = np.mod(hsv[..., 0] + rng.uniform(-15, 15) * s, 360.0)
            x = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        elif op == "gamma":
            x = np.power(np.clip(x, 0, 1), float(np.exp(rng.uniform(-0.36, 0.36) * s)))
        else:
            x = x * (1.0 + rng.uniform(-0.1, 0.1, size=3) * s).astype(np.float32)
        x = np.clip(x, 0.0, 1.0)
    if rng.random() < 0.25:
        sigma = float(rng.uniform(0.3, 0.3 + 0.9 * s))
        x = cv2.GaussianBlur(x, (0, 0), sigma)
    if rng.random() < 0.25:
        x = x + rng.normal(0.0, rng.uniform(0, 5.0 * s) / 255.0, size=x.shape).astype(np.float32)
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


class SegmentDataset(Dataset):
    """CamVid-layout items, augmented (training) or whole (evaluation).

    Args:
        items: the pairs (:func:`segment_items`).
        num_classes: class ids ``0 .. num_classes - 1``; every other id must be ``void``.
        crop: ``(height, width)`` of training crops; ``None`` returns whole, unaugmented images.
        scale_range: random resize factor of training items.
        flip: random horizontal flips in training.
        photometric: strength of :func:`photometric` in training (0: none).
        void: the ignored label (also what padding gets).
        seed: base seed; item ``i`` of epoch ``e`` uses ``default_rng([seed, e, i])``.
        cache: keep decoded images in memory (per worker process).

    Returns per item:
        image ``(3, h, w)`` float32 in [0, 1] and labels ``(h, w)`` int64.
    """

    def __init__(
        self,
        items: list[SegmentItem],
        *,
        num_classes: int = 11,
        crop: tuple[int, int] | None = (360, 480),
        scale_range: tuple[float, float] = (0.5, 2.0),
        flip: bool = True,
        photometric: float = 0.0,
        void: int = CAMVID_VOID,
        seed: int = 0,
        cache: bool = True,
    ) -> None:
        if not items:
            raise ImageError("no labelled images")
        self.items = list(items)
        self.num_classes = num_classes
        self.crop = None if crop is None else (int(crop[0]), int(crop[1]))
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.flip = flip
        if photometric < 0:
            raise ValueError(f"photometric must be >= 0, got {photometric}")
        self.photometric = float(photometric)
        self.void = void
        self.seed = seed
        self.cache = cache
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if index in self._cache:
            return self._cache[index]
        pair = load_pair(self.items[index], self.num_classes, self.void)
        if self.cache:
            self._cache[index] = pair
        return pair

    def __getitem__(self, key: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = divmod(int(key), len(self.items))
        image, labels = self.load(index)
        if self.crop is not None:
            rng = np.random.default_rng([self.seed, epoch, index])
            image, labels = self._augment(image, labels, rng)
        img_t = torch.from_numpy(np.ascontiguousarray(image).transpose(2, 0, 1).copy())
        return img_t.float().div_(255.0), torch.from_numpy(np.ascontiguousarray(labels))

    def _augment(
        self, image: np.ndarray, labels: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        assert self.crop is not None
        ch, cw = self.crop
        h, w = labels.shape
        scale = float(rng.uniform(*self.scale_range))
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        if (nh, nw) != (h, w):
            interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
            image = cv2.resize(image, (nw, nh), interpolation=interp)
            labels = cv2.resize(labels.astype(np.uint8), (nw, nh), interpolation=cv2.INTER_NEAREST)
        labels = labels.astype(np.int64)
        if nh < ch or nw < cw:  # pad the bottom / right: black image, void labels
            ph, pw = max(0, ch - nh), max(0, cw - nw)
            image = np.pad(image, ((0, ph), (0, pw), (0, 0)))
            labels = np.pad(labels, ((0, ph), (0, pw)), constant_values=self.void)
            nh, nw = labels.shape
        y = int(rng.integers(0, nh - ch + 1))
        x = int(rng.integers(0, nw - cw + 1))
        image, labels = image[y : y + ch, x : x + cw], labels[y : y + ch, x : x + cw]
        if self.flip and rng.random() < 0.5:
            image, labels = image[:, ::-1], labels[:, ::-1]
        if self.photometric > 0:  # drawn last, so that crops match a run without it
            image = photometric(np.ascontiguousarray(image), self.photometric, rng)
        return image, labels
