"""Data set folders: ``DIR/images/*`` with ``DIR/masks/*`` paired by file stem."""

from __future__ import annotations

from pathlib import Path

from finecut.errors import ImageError

__all__ = ["find_pairs", "parse_stems"]


def find_pairs(root: Path, stems: list[str] | None = None) -> list[tuple[Path, Path]]:
    """(image, mask) file pairs of a folder with ``images/`` and ``masks/``, paired by stem."""
    root = Path(root)
    img_dir, mask_dir = root / "images", root / "masks"
    if not img_dir.is_dir() or not mask_dir.is_dir():
        raise ImageError(f"{str(root)!r} must contain 'images/' and 'masks/' folders")
    masks = {p.stem: p for p in mask_dir.iterdir() if p.suffix.lower() in (".png", ".bmp", ".tif")}
    images = {
        p.stem: p
        for p in img_dir.iterdir()
        if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
    }
    keys = sorted(set(images) & set(masks)) if stems is None else list(stems)
    missing = [k for k in keys if k not in images or k not in masks]
    if missing:
        raise ImageError(f"no image/mask pair for stems {missing[:5]} in {str(root)!r}")
    if not keys:
        raise ImageError(f"no image/mask pairs found in {str(root)!r}")
    return [(images[k], masks[k]) for k in keys]


def parse_stems(text: str) -> list[str]:
    """'1-800' -> ['0001', ..., '0800']; 'a,b,c' -> ['a', 'b', 'c']; '@file' -> lines of file."""
    if text.startswith("@"):
        return [s.strip() for s in Path(text[1:]).read_text().splitlines() if s.strip()]
    if "-" in text and "," not in text:
        lo, hi = text.split("-", 1)
        if lo.isdigit() and hi.isdigit():
            width = max(len(lo), 4)
            return [f"{i:0{width}d}" for i in range(int(lo), int(hi) + 1)]
    return [s for s in text.split(",") if s]
