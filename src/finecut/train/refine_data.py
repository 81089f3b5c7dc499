"""Training pairs for mask refinement: image crops, ground truth, and a synthesised coarse mask."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from finecut.data.io import read_image, read_mask
from finecut.refine.perturb import PerturbConfig, perturb_mask

__all__ = ["MaskPairDataset"]


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
