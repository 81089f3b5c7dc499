"""A tiny CamVid-layout folder: images whose colour encodes the class, labels with void."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

VOID = 11
CLASS_STEP = 20  # red channel = class id * CLASS_STEP, so a stub model can read the class back


def label_pattern(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Vertical bands of random classes 0..10, a void square in one corner."""
    bands = rng.integers(0, 11, size=4)
    labels = np.repeat(bands, -(-width // 4))[:width][None, :].repeat(height, 0)
    labels[: height // 4, : width // 4] = VOID
    return labels.astype(np.uint8)


def write_camvid(
    root: Path,
    splits: dict[str, int] | None = None,
    size: tuple[int, int] = (48, 64),
    *,
    image_ext: str = ".png",
    seed: int = 0,
) -> Path:
    """``root/{split}/images``, ``root/{split}/labels`` and ``root/{split}.txt``."""
    splits = splits or {"train": 4, "val": 2}
    rng = np.random.default_rng(seed)
    height, width = size
    for split, count in splits.items():
        (root / split / "images").mkdir(parents=True)
        (root / split / "labels").mkdir(parents=True)
        stems = [f"{split}_{i:03d}" for i in range(count)]
        for stem in stems:
            labels = label_pattern(rng, height, width)
            image = rng.integers(0, 40, (height, width, 3), dtype=np.uint8)
            image[..., 0] = np.minimum(labels, 10) * CLASS_STEP
            Image.fromarray(image).save(root / split / "images" / f"{stem}{image_ext}")
            Image.fromarray(labels).save(root / split / "labels" / f"{stem}.png")
        (root / f"{split}.txt").write_text("\n".join(stems) + "\n")
    return root
