"""Training pairs for mask refinement: image crops, ground truth, and a synthesised coarse mask."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from finecut.data.folders import parse_stems
from finecut.data.io import read_image, read_mask
from finecut.errors import ConfigError
from finecut.refine.perturb import PerturbConfig, perturb_mask
from finecut.train.embedding_data import is_number, mask_items

__all__ = [
    "MaskPairDataset",
    "MixedRefineDataset",
    "RefineSource",
    "check_mix_options",
    "jpeg_roundtrip",
    "native_artefacts",
]


class MaskPairDataset(Dataset):
    """Random crops of (image, gt mask) with a coarse mask synthesised by ``perturb_mask``.

    Each item is deterministic given (seed, epoch, index): call :meth:`set_epoch` each epoch.
    Images are decoded once and kept in memory (ECSSD-sized data sets fit easily).

    Returns:
        image (3, S, S) float in [0, 1], coarse (1, S, S) float {0, 1}, gt (1, S, S) float {0, 1}.
    """

    def __init__(
        self,
        pairs: list[tuple[Path, Path]],
        *,
        crop: int = 224,
        scale_range: tuple[float, float] = (0.6, 1.2),
        perturb: PerturbConfig = PerturbConfig(),  # noqa: B008 - frozen dataclass
        seed: int = 0,
    ) -> None:
        self.pairs = list(pairs)
        self.crop = crop
        self.scale_range = scale_range
        self.perturb = perturb
        self.seed = seed
        self.epoch = 0
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if index not in self._cache:
            img_path, mask_path = self.pairs[index]
            image = read_image(img_path)
            mask = read_mask(mask_path, shape=image.shape[:2], image_path=img_path) > 127
            self._cache[index] = (image, mask)
        return self._cache[index]

    def __getitem__(self, index: int):
        rng = np.random.default_rng([self.seed, self.epoch, index])
        image, mask = self._load(index)
        s = self.crop
        h, w = mask.shape
        # random scale, but never smaller than the crop on the short side
        scale = rng.uniform(*self.scale_range)
        scale = max(scale, s / min(h, w))
        nh, nw = max(s, round(h * scale)), max(s, round(w * scale))
        if (nh, nw) != (h, w):
            image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1
                               else cv2.INTER_LINEAR)
            mask = cv2.resize(mask.astype(np.uint8), (nw, nh), interpolation=cv2.INTER_NEAREST) > 0
        # prefer crops that contain some boundary: try a few, keep the first with both classes
        for _ in range(5):
            y = int(rng.integers(0, nh - s + 1))
            x = int(rng.integers(0, nw - s + 1))
            gt = mask[y : y + s, x : x + s]
            if 0 < gt.mean() < 1:
                break
        img = image[y : y + s, x : x + s]
        if rng.random() < 0.5:
            img, gt = img[:, ::-1], gt[:, ::-1]
        gt = np.ascontiguousarray(gt)
        coarse = perturb_mask(gt, rng, self.perturb)
        to_t = torch.from_numpy
        return (
            to_t(np.ascontiguousarray(img).transpose(2, 0, 1).astype(np.float32) / 255.0),
            to_t(coarse.astype(np.float32)[None]),
            to_t(gt.astype(np.float32)[None]),
        )


# ------------------------------------------------------------------------------------------------
# Many sources, many scales, many kinds of coarse mask (issue 13)
# ------------------------------------------------------------------------------------------------

#: CamVid classes whose connected components are objects with thin parts (poles, signs, cars,
#: pedestrians, cyclists); see ``../shared/data/README.md`` for the class ids
CAMVID_OBJECT_CLASSES = (2, 6, 8, 9, 10)


@dataclass(frozen=True)
class RefineSource:
    """One training source of :class:`MixedRefineDataset`.

    Attributes:
        kind: ``"masks"`` (a folder with ``images/`` and ``masks/``, 8-bit masks whose grey
            levels are soft targets, e.g. DUTS-TR or ECSSD) or ``"camvid"`` (CamVid's layout;
            each connected component of an object class, of at least ``min_area`` px, is one
            binary target).
        path: the folder.
        weight: share of the items drawn from this source (normalised over the sources).
        stems: which stems (``"1-800"``, ``"a,b"``, ``"@file"``), or None for all (a folder
            named ``ecssd``: 0001-0800; its held-out 0801-1000 are refused).
        exclude: a file of stems to leave out (a held-out selection set).
        split: CamVid split.
        min_area: smallest CamVid component, px.
    """

    kind: str
    path: str
    weight: float = 1.0
    stems: str | None = None
    exclude: str | None = None
    split: str = "train"
    min_area: int = 150

    def __post_init__(self) -> None:
        if self.kind not in ("masks", "camvid"):
            raise ConfigError(f"source kind must be 'masks' or 'camvid', got {self.kind!r}")
        if not self.weight > 0:
            raise ConfigError(f"source weight must be > 0, got {self.weight}")


def _camvid_objects(root: Path, split: str, min_area: int) -> list[tuple[Path, Path, int, int]]:
    """(image, label, class, component index) of every CamVid object component."""
    stems = (root / f"{split}.txt").read_text().split()
    out = []
    for stem in stems:
        label_path = root / split / "labels" / f"{stem}.png"
        labels = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
        for cls in CAMVID_OBJECT_CLASSES:
            _, stats = _components(labels == cls)
            for k in np.flatnonzero(stats[:, cv2.CC_STAT_AREA] >= min_area):
                out.append((root / split / "images" / f"{stem}.jpg", label_path, cls, int(k)))
    return out


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n, comp, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return comp, stats[1:n]


def _scaled_region(
    image: np.ndarray, gt: np.ndarray, scale: float, box: tuple[int, int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """``box`` (y0, y1, x0, x1, in the image resized by ``scale``) of the resized image and gt.

    Upscaling resamples only the box (bicubic for the photo, as photo editors upsample; linear
    for the soft target); downscaling resizes the whole (small) image with area averaging.
    """
    y0, y1, x0, x1 = box
    if scale <= 1.0:
        h, w = gt.shape
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        img = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        g = cv2.resize(gt, size, interpolation=cv2.INTER_AREA)
        return img[y0:y1, x0:x1], g[y0:y1, x0:x1]
    inv = 1.0 / scale
    # output pixel (u, v) of the box samples the source at ((x0 + u + 0.5) / s - 0.5, ...)
    m = np.array([[inv, 0, (x0 + 0.5) * inv - 0.5], [0, inv, (y0 + 0.5) * inv - 0.5]])
    size = (x1 - x0, y1 - y0)
    flags = cv2.WARP_INVERSE_MAP
    img = cv2.warpAffine(image, m, size, flags=flags | cv2.INTER_CUBIC,
                         borderMode=cv2.BORDER_REFLECT)
    g = cv2.warpAffine(gt, m, size, flags=flags | cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return img, np.clip(g, 0.0, 1.0)


def jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    """An RGB uint8 image through JPEG at ``quality`` and back (a contiguous copy); the image
    itself if OpenCV cannot encode it."""
    bgr = np.ascontiguousarray(image[..., ::-1])
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]) if ok else image


def native_artefacts(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A video frame's or a small JPEG's artefacts, at the image's own size: a Gaussian blur of
    sigma U(0.5, 1.5) px, then JPEG at quality 25-80 (uint8 RGB in, uint8 RGB out)."""
    sigma = rng.uniform(0.5, 1.5)
    out = cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, sigmaY=sigma)
    return jpeg_roundtrip(out, int(rng.integers(25, 81)))


def check_mix_options(epoch_size: int, max_scale: float, native_artefacts: float = 0.0) -> None:
    """Refuse a mix's ``epoch_size``, ``max_scale`` or ``native_artefacts`` (a share in [0, 1])
    that cannot work (:class:`MixedRefineDataset`;
    the twin of :func:`finecut.train.embedding_data.check_paste`): the upscale factors are drawn
    log-uniform in [1.5, ``max_scale``], and past 64 a 400 px source would be resized to 25,600 px
    and more, which only runs out of memory."""
    if not is_number(epoch_size, int) or epoch_size < 1:
        raise ConfigError(f"epoch_size must be a whole number >= 1, got {epoch_size!r}")
    if not is_number(max_scale) or not 1.5 <= max_scale <= 64:  # also refuses NaN
        raise ConfigError(f"max_scale must be a number in [1.5, 64], got {max_scale!r}")
    if not is_number(native_artefacts) or not 0.0 <= native_artefacts <= 1.0:
        raise ConfigError(f"native_artefacts must be a number in [0, 1], got {native_artefacts!r}")


class MixedRefineDataset(Dataset):
    """Training crops from several sources, at scales from half to ``max_scale`` times the
    source's size, with coarse masks of every family of :mod:`finecut.train.coarse`.

    Each item: a source drawn by weight, an image of it, a scale (with probability
    ``p_upscale`` log-uniform in [1.5, ``max_scale``], otherwise uniform in [0.5, 1.5]; never so
    small that the image is smaller than the crop), a crop centred near the object's boundary
    (with probability ``p_boundary``) in the resized image, a coarse mask drawn by
    :func:`finecut.train.coarse.sample_coarse` on the crop and a margin around it (its errors
    scale with the upsampling), then blur and JPEG compression of the photo (the artefacts of
    upsampled and compressed photos). With probability ``p_native_artefacts`` the whole source
    image is first blurred and JPEG-compressed at its own size, before any resizing: the soft,
    blocky edges of a video frame or a small JPEG that a user upsamples (DAVIS at 2x and 4x), which
    artefacts added after the upscale do not show. Targets keep the sources' soft edges.

    Deterministic given (seed, epoch, index); :meth:`set_epoch` draws new items. ``len`` is
    ``epoch_size`` (the sources are sampled, not enumerated).

    Returns:
        image (3, S, S) float in [0, 1], coarse (1, S, S) float {0, 1}, gt (1, S, S) float [0, 1].
    """

    def __init__(
        self,
        sources: Sequence[RefineSource],
        *,
        crop: int = 192,
        epoch_size: int = 4000,
        max_scale: float = 6.0,
        p_upscale: float = 0.6,
        p_boundary: float = 0.85,
        margin: int = 48,
        p_blur: float = 0.25,
        p_jpeg: float = 0.4,
        p_native_artefacts: float = 0.0,
        seed: int = 0,
    ) -> None:
        if not sources:
            raise ConfigError("no training sources given")
        check_mix_options(epoch_size, max_scale, p_native_artefacts)
        self.crop, self.epoch_size, self.max_scale = crop, epoch_size, max_scale
        self.p_upscale, self.p_boundary, self.margin = p_upscale, p_boundary, margin
        self.p_blur, self.p_jpeg = p_blur, p_jpeg
        self.p_native_artefacts = p_native_artefacts
        self.seed, self.epoch = seed, 0
        self.items: list[list] = []
        for src in sources:
            try:
                items = self._source_items(src)
            except OSError as exc:  # a missing folder, split list or stems file
                raise ConfigError(f"training source {src.path!r}: {exc.strerror}: "
                                  f"{exc.filename!r}") from None
            if not items:
                raise ConfigError(f"source {src.path!r} has no items")
            self.items.append(items)
        w = np.array([s.weight for s in sources], dtype=np.float64)
        self.weights = w / w.sum()
        self.kinds = [s.kind for s in sources]

    @staticmethod
    def _source_items(src: RefineSource) -> list:
        """A source's items: CamVid object components, or (image, mask) pairs less ``exclude``."""
        root = Path(src.path)
        if src.kind == "camvid":
            return _camvid_objects(root, src.split, src.min_area)
        # the shared reader: ECSSD's held-out 0801-1000 refused, the exclude file dropped
        stems = tuple(parse_stems(src.stems)) if src.stems else None
        return [(it.image, it.label) for it in mask_items(root, stems, src.exclude)]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.epoch_size

    def _load(self, source: int, item) -> tuple[np.ndarray, np.ndarray]:
        if self.kinds[source] == "camvid":
            img_path, label_path, cls, k = item
            labels = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
            comp, _ = _components(labels == cls)
            return read_image(img_path), (comp == k + 1).astype(np.float32)
        img_path, mask_path = item
        image = read_image(img_path)
        mask = read_mask(mask_path, shape=image.shape[:2], image_path=img_path)
        return image, mask.astype(np.float32) / 255.0

    def __getitem__(self, index: int):
        from finecut.train.coarse import sample_coarse

        rng = np.random.default_rng([self.seed, self.epoch, index])
        source = int(rng.choice(len(self.items), p=self.weights))
        items = self.items[source]
        image, gt = self._load(source, items[int(rng.integers(len(items)))])
        # no draw when off, so mixes without it keep their crops and coarse masks
        if self.p_native_artefacts > 0 and rng.random() < self.p_native_artefacts:
            image = native_artefacts(image, rng)
        s_crop, h, w = self.crop, *gt.shape
        if rng.random() < self.p_upscale:
            scale = math.exp(rng.uniform(math.log(1.5), math.log(self.max_scale)))
        else:
            scale = rng.uniform(0.5, 1.5)
        scale = max(scale, s_crop / min(h, w))
        hs, ws = max(s_crop, round(h * scale)), max(s_crop, round(w * scale))
        # the crop's centre: near the boundary, or anywhere
        edge = cv2.morphologyEx((gt > 0.5).astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3)))
        ys, xs = np.nonzero(edge)
        if len(ys) and rng.random() < self.p_boundary:
            k = int(rng.integers(len(ys)))
            jitter = rng.uniform(-0.35, 0.35, size=2) * s_crop
            cy, cx = (ys[k] + 0.5) * scale + jitter[0], (xs[k] + 0.5) * scale + jitter[1]
        else:
            cy, cx = rng.uniform(0, hs), rng.uniform(0, ws)
        y = int(np.clip(round(cy - s_crop / 2), 0, hs - s_crop))
        x = int(np.clip(round(cx - s_crop / 2), 0, ws - s_crop))
        m = self.margin
        box = (max(0, y - m), min(hs, y + s_crop + m), max(0, x - m), min(ws, x + s_crop + m))
        img, g = _scaled_region(image, gt, scale, box)
        cut = np.s_[y - box[0] : y - box[0] + s_crop, x - box[2] : x - box[2] + s_crop]
        coarse, _ = sample_coarse(g > 0.5, rng, scale=max(scale, 0.5))
        if (g[cut] > 0.5).any() and not coarse[cut].any():
            # the family lost the whole object in this crop (a thin pole under a coarse
            # segmenter): no refiner can find it from nothing, and learning to try paints
            # objects where the input has none; use a near-perfect mask instead
            coarse, _ = sample_coarse(g > 0.5, rng, scale=max(scale, 0.5), family="sam")
        img, g, coarse = img[cut], g[cut], coarse[cut]
        if rng.random() < 0.5:
            img, g, coarse = img[:, ::-1], g[:, ::-1], coarse[:, ::-1]
        img = np.ascontiguousarray(img)
        if rng.random() < self.p_blur:
            sigma = rng.uniform(0.3, 1.2)
            img = cv2.GaussianBlur(img, (0, 0), sigmaX=sigma, sigmaY=sigma)
        if rng.random() < self.p_jpeg:
            img = jpeg_roundtrip(img, int(rng.integers(30, 96)))
        to_t = torch.from_numpy
        return (
            to_t(np.ascontiguousarray(img).transpose(2, 0, 1).astype(np.float32) / 255.0),
            to_t(np.ascontiguousarray(coarse, dtype=np.float32)[None]),
            to_t(np.ascontiguousarray(g, dtype=np.float32)[None]),
        )
