"""Training data for the semantic embedding: image crops with per-pixel instance labels.

Two kinds of labelled folder are read:

* semantic label maps (CamVid layout): ``ROOT/{split}/images/*.jpg`` with
  ``ROOT/{split}/labels/*.png`` holding uint8 class ids; ``void`` (CamVid: 11) is ignored.
  Instances: ``"classes"`` (one instance per class), ``"components"`` (one per 8-connected
  component of each class) or ``"mixed"`` (default; COCO-Stuff's convention, which the paper
  trained on: "thing" classes split into connected components, "stuff" classes one instance
  each, so a road cut in two by a car stays one segment). Components smaller than
  ``min_component`` pixels are ignored.
* binary object masks (ECSSD layout): ``ROOT/images/*`` with ``ROOT/masks/*`` (0 / 255);
  background and object are two instances. For a folder named ``ecssd`` only the stems
  0001-0800 are used (by default those present): 0801-1000 are the held-out test set of another
  benchmark, and asking for any of them is a :class:`~finecut.errors.ConfigError`.

Several folders are mixed with :class:`EmbeddingSource` (kind, path, weight, stems, exclude):
:func:`source_items` lists one source's items and :func:`mixed_items` all of them with a
per-item sampling weight (the source's weight shared among its items), which
:class:`EpochSampler` draws by, so 10,553 DUTS-TR images do not drown 367 CamVid scenes.

With ``paste_prob`` > 0 a crop also receives, with that probability, one to ``paste_max``
objects cut out of other binary-mask items (their mask as alpha), shrunk so that the longer side
of the object is ``paste_size`` px, each a new instance (copy-paste augmentation, as in Ghiasi et
al., "Simple Copy-Paste is a Strong Data Augmentation Method for Instance Segmentation", CVPR
2021). Salient-object data hold one large object per image and the crop never shrinks an image
below the crop's side, so without it the only small objects the network sees are CamVid's.

Every item is deterministic given (seed, epoch, index).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from finecut.data.folders import find_pairs, parse_stems
from finecut.data.io import read_image, read_mask
from finecut.errors import ConfigError, ImageError

log = logging.getLogger(__name__)

__all__ = [
    "CAMVID_THINGS",
    "CAMVID_VOID",
    "ECSSD_HELD_OUT",
    "ECSSD_TRAIN_STEMS",
    "EmbeddingDataset",
    "EmbeddingSource",
    "EpochSampler",
    "LabelledImage",
    "check_paste",
    "excluded_stems",
    "instance_map",
    "is_number",
    "label_map_items",
    "mask_items",
    "mixed_items",
    "paste_object",
    "read_label_map",
    "source_items",
]

IGNORE = -1
CAMVID_VOID = 11
# Pole, SignSymbol, Car, Pedestrian, Bicyclist: countable objects ("things")
CAMVID_THINGS: tuple[int, ...] = (2, 6, 8, 9, 10)
ECSSD_TRAIN_STEMS: tuple[str, ...] = tuple(f"{i:04d}" for i in range(1, 801))
ECSSD_HELD_OUT: frozenset[str] = frozenset(f"{i:04d}" for i in range(801, 1001))
_INSTANCE_MODES = ("mixed", "classes", "components")
_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class LabelledImage:
    """One training image and how to read its labels.

    Attributes:
        image: the image file.
        label: the label file: class ids (``kind="labels"``) or a 0/255 mask (``kind="mask"``).
        kind: ``"labels"`` or ``"mask"``.
    """

    image: Path
    label: Path
    kind: str


@dataclass(frozen=True)
class EmbeddingSource:
    """One training source of the embedding (a ``--mix`` entry).

    Attributes:
        kind: ``"labels"`` (CamVid layout, class ids: :func:`label_map_items`) or ``"masks"``
            (``images/`` + ``masks/``, object vs background: :func:`mask_items`).
        path: the folder.
        weight: share of the drawn items that come from this source (normalised over sources).
        stems: for ``masks``: which stems (``"1-800"``, ``"a,b"``, ``"@file"``), None for all
            (for ECSSD: 0001-0800).
        exclude: a file of stems to leave out (e.g. a hold-out used to choose settings).
        splits: for ``labels``: the splits to read.
    """

    kind: str
    path: str
    weight: float = 1.0
    stems: str | None = None
    exclude: str | None = None
    splits: tuple[str, ...] = ("train",)

    def __post_init__(self) -> None:
        if self.kind not in ("labels", "masks"):
            raise ConfigError(f"source kind must be 'labels' or 'masks', got {self.kind!r}")
        if not self.weight > 0:  # also refuses NaN
            raise ConfigError(f"source weight must be > 0, got {self.weight}")
        if self.kind == "labels" and self.stems is not None:
            raise ConfigError("'stems' applies to mask sources; label sources take 'splits'")
        if isinstance(self.splits, str):
            object.__setattr__(self, "splits", (self.splits,))
        elif isinstance(self.splits, list):
            object.__setattr__(self, "splits", tuple(self.splits))


def source_items(src: EmbeddingSource) -> list[LabelledImage]:
    """The labelled images of one source, less the stems of its ``exclude`` file.

    Raises:
        ConfigError: the exclude file cannot be read, held-out ECSSD stems were asked for, or
            nothing is left.
        ImageError: the folder or a requested pair is missing.
    """
    if src.kind == "labels":
        items = label_map_items(src.path, tuple(src.splits))
        if src.exclude:
            drop = excluded_stems(src.exclude)
            items = [it for it in items if it.image.stem not in drop]
    else:
        try:
            stems = tuple(parse_stems(src.stems)) if src.stems else None
        except OSError as exc:
            raise ConfigError(
                f"source {src.path!r}: cannot read stems {src.stems!r}: {exc.strerror}"
            ) from None
        items = mask_items(src.path, stems, src.exclude)
    if not items:
        raise ConfigError(f"source {src.path!r} has no items left")
    return items


def mixed_items(
    sources: tuple[EmbeddingSource, ...] | list[EmbeddingSource],
) -> tuple[list[LabelledImage], np.ndarray]:
    """All sources' items and their sampling probabilities (each source's weight, normalised
    over the sources, shared equally among its items).

    Returns:
        items, and float64 probabilities summing to 1 (one per item).
    """
    if not sources:
        raise ConfigError("no training sources given")
    items: list[LabelledImage] = []
    probs: list[np.ndarray] = []
    total = float(sum(s.weight for s in sources))
    for src in sources:
        got = source_items(src)
        log.info(
            "source %s (%s): %d images, weight %.3g",
            src.path,
            src.kind,
            len(got),
            src.weight / total,
        )
        items += got
        probs.append(np.full(len(got), src.weight / total / len(got)))
    p = np.concatenate(probs)
    return items, p / p.sum()


def read_label_map(path: str | Path) -> np.ndarray:
    """Read a class-id PNG (mode ``L``, ``P`` as indices, or 16-bit) as an int32 (H, W) array.

    Raises:
        ImageError: the file is missing, unreadable or holds colour.
    """
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16", "I;16L", "I;16B"):
                raise ImageError(
                    f"label map '{path}' must be a gray or palette image, not {im.mode}"
                )
            return np.asarray(im, dtype=np.int32)
    except (OSError, ValueError) as exc:
        if isinstance(exc, ImageError):
            raise
        raise ImageError(f"cannot read label map '{path}': {exc}") from None


def instance_map(
    classes: np.ndarray,
    *,
    mode: str = "mixed",
    things: tuple[int, ...] = CAMVID_THINGS,
    void: int | None = CAMVID_VOID,
    min_component: int = 64,
) -> np.ndarray:
    """Instance labels from a class-id map (see the module docstring for the modes).

    Returns:
        (H, W) int32: instance ids >= 0, :data:`IGNORE` (-1) for void and tiny components.
    """
    if mode not in _INSTANCE_MODES:
        raise ConfigError(f"unknown instance mode {mode!r}; choose one of {_INSTANCE_MODES}")
    classes = np.asarray(classes)
    out = np.full(classes.shape, IGNORE, np.int32)
    next_id = 0
    for c in np.unique(classes):
        if void is not None and c == void:
            continue
        region = classes == c
        if mode == "classes" or (mode == "mixed" and int(c) not in things):
            out[region] = next_id
            next_id += 1
            continue
        n, comp = cv2.connectedComponents(region.astype(np.uint8), connectivity=8)
        sizes = np.bincount(comp.ravel(), minlength=n)
        for k in range(1, n):
            if sizes[k] >= min_component:
                out[comp == k] = next_id
                next_id += 1
    return out


def label_map_items(root: str | Path, splits: tuple[str, ...] = ("train",)) -> list[LabelledImage]:
    """Image / class-id pairs of a CamVid-style folder, ``ROOT/{split}/{images,labels}``.

    Raises:
        ImageError: a split folder is missing or has no pairs.
    """
    root = Path(root)
    items: list[LabelledImage] = []
    for split in splits:
        img_dir, lab_dir = root / split / "images", root / split / "labels"
        if not img_dir.is_dir() or not lab_dir.is_dir():
            raise ImageError(f"'{root / split}' must contain 'images/' and 'labels/' folders")
        labels = {p.stem: p for p in lab_dir.iterdir() if p.suffix.lower() == ".png"}
        images = {p.stem: p for p in img_dir.iterdir() if p.suffix.lower() in _IMAGE_EXTS}
        stems = sorted(set(labels) & set(images))
        if not stems:
            raise ImageError(f"no image/label pairs in '{root / split}'")
        items += [LabelledImage(images[s], labels[s], "labels") for s in stems]
    return items


def excluded_stems(path: str | Path) -> set[str]:
    """The stems listed in ``path`` (one per line), e.g. a hold-out kept out of training.

    Raises:
        ConfigError: the file cannot be read.
    """
    try:
        return set(parse_stems(f"@{path}"))
    except OSError as exc:
        raise ConfigError(f"cannot read exclude file {str(path)!r}: {exc.strerror}") from None


def mask_items(
    root: str | Path, stems: tuple[str, ...] | None = None, exclude: str | Path | None = None
) -> list[LabelledImage]:
    """Image / binary-mask pairs of a folder with ``images/`` and ``masks/``, less the stems
    listed in the file ``exclude`` (:func:`excluded_stems`).

    A folder named ``ecssd`` (any case) defaults to the stems present among
    :data:`ECSSD_TRAIN_STEMS` (0001-0800) and refuses the held-out stems 0801-1000.

    Raises:
        ConfigError: held-out ECSSD stems were asked for, or ``exclude`` cannot be read.
        ImageError: the folder or a requested pair is missing.
    """
    root = Path(root)
    if root.name.lower() == "ecssd" and stems is None:
        pairs = find_pairs(root)
        kept = [p for p in pairs if p[0].stem not in ECSSD_HELD_OUT]
        log.info(
            "ECSSD: training on %d files, %d held-out files left out",
            len(kept),
            len(pairs) - len(kept),
        )
        if not kept:
            raise ImageError(f"no ECSSD training files (0001-0800) in '{root}'")
        pairs = kept
    else:
        if root.name.lower() == "ecssd":
            held = sorted(set(stems) & ECSSD_HELD_OUT)
            if held:
                raise ConfigError(
                    f"ECSSD stems {held[0]}..{held[-1]} ({len(held)} files) are a held-out test "
                    "set and must not be trained on; use stems 0001-0800"
                )
        pairs = find_pairs(root, list(stems) if stems is not None else None)
    if exclude is not None:
        drop = excluded_stems(exclude)
        pairs = [p for p in pairs if p[0].stem not in drop]
    return [LabelledImage(img, mask, "mask") for img, mask in pairs]


class EmbeddingDataset(Dataset):
    """Random crops (scale, crop, horizontal flip) of images with instance labels.

    Args:
        items: the labelled images.
        crop: side of the square crop.
        scale_range: random resize factor, raised when needed so the short side covers the crop.
        instance_mode: how class-id maps become instances (:func:`instance_map`).
        void: the ignored class id of label maps.
        min_component: smallest connected component kept as an instance.
        seed: base seed; item ``i`` of epoch ``e`` uses ``default_rng([seed, e, i])``.
        paste_prob: probability that a crop receives pasted objects (0: none).
        paste_size: range of the pasted object's longer side in px (at most the crop).
        paste_max: most objects pasted into one crop (drawn uniformly from 1..paste_max).

    The key passed to ``dataset[key]`` encodes the epoch: ``key = tag * len(dataset) + i``
    (what :class:`EpochSampler` yields: the tag is the epoch, or with weighted sampling the
    draw's number), so the augmentation changes every epoch also inside persistent DataLoader
    workers, which never see attributes set on the main copy.

    Returns per item:
        image (3, S, S) float32 in [0, 1] and labels (S, S) int64 (-1 = ignore).
    """

    def __init__(
        self,
        items: list[LabelledImage],
        *,
        crop: int = 256,
        scale_range: tuple[float, float] = (0.6, 1.3),
        instance_mode: str = "mixed",
        void: int | None = CAMVID_VOID,
        min_component: int = 64,
        seed: int = 0,
        paste_prob: float = 0.0,
        paste_size: tuple[int, int] = (24, 128),
        paste_max: int = 2,
    ) -> None:
        if not items:
            raise ImageError("no labelled images to train on")
        if instance_mode not in _INSTANCE_MODES:
            raise ConfigError(f"unknown instance mode {instance_mode!r}")
        check_paste(paste_prob, paste_size, paste_max, crop)
        self.paste_prob = float(paste_prob)
        self.paste_size = (int(paste_size[0]), int(paste_size[1]))
        self.paste_max = int(paste_max)
        # objects to paste come from the binary-mask items (one object each)
        self.paste_pool = [i for i, it in enumerate(items) if it.kind == "mask"]
        if self.paste_prob > 0 and not self.paste_pool:
            raise ConfigError("paste_prob > 0 needs at least one binary-mask source to cut from")
        self.items = list(items)
        self.crop = crop
        self.scale_range = scale_range
        self.instance_mode = instance_mode
        self.void = void
        self.min_component = min_component
        self.seed = seed

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The full image (H, W, 3) uint8 and its instance map (H, W) int32."""
        item = self.items[index]
        image = read_image(item.image)
        if item.kind == "mask":
            mask = read_mask(item.label, shape=image.shape[:2], image_path=item.image)
            return image, (mask > 127).astype(np.int32)
        classes = read_label_map(item.label)
        if classes.shape != image.shape[:2]:
            raise ImageError(
                f"label map '{item.label}' is {classes.shape[1]}x{classes.shape[0]} but image "
                f"'{item.image}' is {image.shape[1]}x{image.shape[0]}"
            )
        inst = instance_map(
            classes, mode=self.instance_mode, void=self.void, min_component=self.min_component
        )
        return image, inst

    def __getitem__(self, key: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = divmod(int(key), len(self.items))
        rng = np.random.default_rng([self.seed, epoch, index])
        image, inst = self.load(index)
        s = self.crop
        h, w = inst.shape
        scale = max(rng.uniform(*self.scale_range), s / min(h, w))
        nh, nw = max(s, round(h * scale)), max(s, round(w * scale))
        if (nh, nw) != (h, w):
            interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
            image = cv2.resize(image, (nw, nh), interpolation=interp)
            inst = cv2.resize(inst, (nw, nh), interpolation=cv2.INTER_NEAREST)
        # prefer crops with at least two instances (the loss needs negative pairs)
        for _ in range(5):
            y = int(rng.integers(0, nh - s + 1))
            x = int(rng.integers(0, nw - s + 1))
            lab = inst[y : y + s, x : x + s]
            if np.unique(lab[lab >= 0]).size >= 2:
                break
        img = image[y : y + s, x : x + s]
        if rng.random() < 0.5:
            img, lab = img[:, ::-1], lab[:, ::-1]
        if self.paste_prob > 0 and rng.random() < self.paste_prob:
            img, lab = np.array(img), np.array(lab)
            for _ in range(int(rng.integers(1, self.paste_max + 1))):
                j = self.paste_pool[int(rng.integers(len(self.paste_pool)))]
                item = self.items[j]
                src = read_image(item.image)
                alpha = read_mask(item.label, shape=src.shape[:2], image_path=item.image)
                paste_object(img, lab, src, alpha, rng, self.paste_size)
        img_t = torch.from_numpy(np.ascontiguousarray(img).transpose(2, 0, 1).copy())
        return img_t.float() / 255.0, torch.from_numpy(np.ascontiguousarray(lab).astype(np.int64))


def is_number(value, kinds: type | tuple[type, ...] = (int, float)) -> bool:
    """Whether a setting read from YAML or given in Python is a number of ``kinds`` (not a bool,
    which Python counts as an int, nor a string)."""
    return isinstance(value, kinds) and not isinstance(value, bool)


def check_paste(prob: float, size: tuple[int, int], most: int, crop: int) -> None:
    """Refuse copy-paste settings that cannot work (:class:`EmbeddingDataset`); the sizes are
    checked only when pasting is on."""
    if not is_number(prob, (int, float)) or not 0.0 <= prob <= 1.0:  # also refuses NaN
        raise ConfigError(f"paste_prob must be a number in [0, 1], got {prob!r}")
    if prob > 0 and (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(is_number(v, int) for v in size)
        or not 4 <= size[0] <= size[1] <= crop
    ):
        raise ConfigError(
            f"paste_size must be (lo, hi) whole px with 4 <= lo <= hi <= crop ({crop}), "
            f"got {size!r}"
        )
    if not is_number(most, int) or most < 1:
        raise ConfigError(f"paste_max must be a whole number >= 1, got {most!r}")


def paste_object(
    image: np.ndarray,
    labels: np.ndarray,
    src: np.ndarray,
    alpha: np.ndarray,
    rng: np.random.Generator,
    size: tuple[int, int],
) -> bool:
    """Paste the object of ``src`` (``alpha``, uint8 0-255, the object's matte) into ``image`` /
    ``labels`` in place, as a new instance: the box of alpha > 0.1 is shrunk (area) so that
    the longer side is a random length in ``size``, flipped with probability one half, put at a
    random place inside the crop and alpha-blended. Label of the new instance: ``labels.max()
    + 1`` where the shrunk alpha is at least 0.5, ignored (-1) where it is in (0.1, 0.5) (mixed
    pixels of the seam); pixels under a lower alpha keep their label.

    Returns:
        False (nothing changed) when the mask holds no object of at least 16 px.
    """
    if np.count_nonzero(alpha >= 128) < 16:
        return False
    ys, xs = np.nonzero(alpha > 25)  # the box keeps a soft fringe (hair) outside the 0.5 line
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    obj = src[y0:y1, x0:x1]
    a = alpha[y0:y1, x0:x1].astype(np.float32) / 255.0
    s_h, s_w = labels.shape
    f = rng.uniform(size[0], size[1]) / max(y1 - y0, x1 - x0)
    nh = int(min(s_h, max(1, round((y1 - y0) * f))))
    nw = int(min(s_w, max(1, round((x1 - x0) * f))))
    interp = cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR
    obj = cv2.resize(obj, (nw, nh), interpolation=interp).astype(np.float32)
    a = np.clip(cv2.resize(a, (nw, nh), interpolation=interp), 0.0, 1.0)
    if rng.random() < 0.5:
        obj, a = obj[:, ::-1], a[:, ::-1]
    py = int(rng.integers(0, s_h - nh + 1))
    px = int(rng.integers(0, s_w - nw + 1))
    region = image[py : py + nh, px : px + nw].astype(np.float32)
    blended = a[..., None] * obj + (1.0 - a[..., None]) * region
    image[py : py + nh, px : px + nw] = np.clip(np.rint(blended), 0, 255).astype(image.dtype)
    new_id = max(int(labels.max()) + 1, 0)
    sub = labels[py : py + nh, px : px + nw]
    sub[a >= 0.5] = new_id
    sub[(a > 0.1) & (a < 0.5)] = IGNORE
    return True


class EpochSampler(Sampler[int]):
    """Endless shuffled keys ``epoch * n + i`` for :class:`EmbeddingDataset`.

    The order of epoch ``e`` is a permutation seeded by ``(seed, e)``, or, with ``weights``
    (one probability per item), ``n`` indices drawn with replacement by those probabilities
    from a generator seeded by ``(seed, e)``; with ``world_size`` > 1
    each rank takes every ``world_size``-th entry of it (equal shares of ``n // world_size``,
    the tail dropped), like ``DistributedSampler``. ``skip`` drops that many keys of this rank's
    sequence first, so a run resumed after ``step`` batches of ``b`` continues exactly where it
    stopped with ``skip = step * b``.
    """

    def __init__(
        self,
        n: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        skip: int = 0,
        weights: np.ndarray | None = None,
    ) -> None:
        if n < 1:
            raise ValueError("EpochSampler needs at least one item")
        if weights is not None:
            weights = np.asarray(weights, np.float64)
            if weights.shape != (n,) or not np.all(weights >= 0) or not weights.sum() > 0:
                raise ValueError("weights must be n non-negative numbers with a positive sum")
            weights = weights / weights.sum()
        self.weights = weights
        self.n = n
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.per_rank = max(1, n // world_size)
        self.skip = skip

    def epoch_of(self, position: int) -> int:
        """The epoch that this rank's ``position``-th key (counted from 0) belongs to."""
        return position // self.per_rank

    def __iter__(self):
        epoch, offset = divmod(self.skip, self.per_rank)
        while True:
            rng = np.random.default_rng([self.seed, epoch])
            if self.weights is None:
                perm = rng.permutation(self.n)
            else:
                perm = rng.choice(self.n, size=self.n, p=self.weights)
            share = perm[self.rank :: self.world_size][: self.per_rank]
            if share.size < self.per_rank:  # fewer items than ranks: wrap around
                share = np.resize(perm, self.per_rank)
            for pos, i in enumerate(share[offset:], start=offset):
                if self.weights is None:
                    yield epoch * self.n + int(i)
                else:
                    # drawn with replacement: an item drawn twice in one epoch must still get
                    # two different crops, so the tag is the draw's own number, not the epoch
                    draw = (epoch * self.per_rank + pos) * self.world_size + self.rank
                    yield draw * self.n + int(i)
            offset = 0
            epoch += 1
