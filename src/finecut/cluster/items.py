"""Which image/mask pairs a data set holds, where each one's output goes, which are done.

A data set is a folder tree (images and masks paired by stem in each folder, as
``finecut refine photos/ --mask masks/`` pairs them) or a manifest (CSV with a header, or JSON
lines, with ``image`` and ``mask`` and optionally ``output``). Every location is a local path or
an fsspec URL (``file://``, ``s3://`` with s3fs, ``gs://`` with gcsfs, ``memory://``, ...).
Each output is a mask file under an output prefix at the item's relative path, so the output
tree mirrors the input tree; an item is done when its output exists.

Pure listing: nothing here reads an image or loads a model.
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
from collections import defaultdict
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from finecut.data.io import MASK_WRITE_EXTENSIONS, is_image_name, match_by_stem
from finecut.errors import ImageError

__all__ = ["Item", "Listing", "is_local", "list_folder", "read_manifest", "split_done", "url_fs"]

#: Columns (CSV) or keys (JSON lines) of a manifest; others are ignored.
MANIFEST_COLUMNS = ("image", "mask", "output")


@dataclass(frozen=True)
class Item:
    """One pair to refine: full fsspec URLs of its image, mask and output.

    ``key`` is the output's path relative to the output prefix (``sub/photo.png``): it names the
    item in tables and decides, with the prefix, whether it is done.
    """

    image: str
    mask: str
    output: str
    key: str


@dataclass(frozen=True)
class Listing:
    """The items of a data set, sorted by key, and the images that have no mask (folder mode)."""

    items: list[Item]
    unmatched: list[str]


def url_fs(url: str) -> tuple[Any, str]:
    """``(file system, path)`` of a local path or fsspec URL; ImageError for a URL fsspec cannot
    open (unknown protocol, its package not installed)."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(str(url))
    except (ImportError, ValueError) as exc:
        why = " ".join(str(exc).split())
        raise ImageError(f"cannot open {str(url)!r}: {why}") from None


def is_local(fs: Any) -> bool:
    """Whether an fsspec file system is the local disk."""
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return "file" in protocols


def list_folder(
    images_url: str, output_url: str, *, masks_url: str | None = None, ext: str = ".png"
) -> Listing:
    """Pair the images under ``images_url`` with their masks, folder by folder, recursively.

    In each folder the mask of ``photo.jpg`` is ``photo.<ext>`` or ``photo_mask.<ext>`` in the
    same relative folder under ``masks_url`` (:func:`finecut.data.io.match_by_stem`, the rule of
    ``finecut refine``'s folder mode); with no ``masks_url`` the masks lie beside the images and
    only ``photo_mask.<ext>`` counts. Hidden files and folders are skipped. The output of
    ``sub/photo.jpg`` is ``<output_url>/sub/photo<ext>``.

    Raises:
        ImageError: a folder is missing, an image has two candidate masks, two images would
            write the same output, the output prefix lies inside an input folder, or no image
            has a mask.
    """
    ifs, iroot = _folder(images_url, "image folder")
    mfs, mroot = (ifs, iroot) if masks_url is None else _folder(masks_url, "mask folder")
    same_dir = type(ifs) is type(mfs) and iroot.rstrip("/") == mroot.rstrip("/")
    ofs, oroot = url_fs(output_url)
    for fs, root, url in ((ifs, iroot, images_url), (mfs, mroot, masks_url or images_url)):
        if type(fs) is type(ofs) and _inside(oroot, root):
            raise ImageError(
                f"output prefix {str(output_url)!r} lies inside the input folder {str(url)!r}: "
                "its masks would be listed as images on the next run; choose another prefix"
            )
    images = _find_images(ifs, iroot)
    masks = images if same_dir else _find_images(mfs, mroot)
    masks_by_dir: dict[PurePosixPath, list[PurePosixPath]] = defaultdict(list)
    for m in masks:
        masks_by_dir[m.parent].append(m)
    images_by_dir: dict[PurePosixPath, list[PurePosixPath]] = defaultdict(list)
    for i in images:
        images_by_dir[i.parent].append(i)
    items, unmatched = [], []
    for folder, in_folder in images_by_dir.items():
        where = posixpath.join(str(masks_url or images_url), str(folder))
        pairs, lone = match_by_stem(
            in_folder, masks_by_dir.get(folder, []), same_dir=same_dir, where=where
        )
        unmatched += [str(i) for i in lone]
        for image, mask in pairs:
            key = str(image.with_suffix(ext))
            items.append(
                Item(
                    image=ifs.unstrip_protocol(posixpath.join(iroot, str(image))),
                    mask=mfs.unstrip_protocol(posixpath.join(mroot, str(mask))),
                    output=ofs.unstrip_protocol(posixpath.join(oroot, key)),
                    key=key,
                )
            )
    if not items:
        where = "beside them" if masks_url is None else f"in {str(masks_url)!r}"
        raise ImageError(
            f"no image in {str(images_url)!r} has a mask of the same stem {where} "
            f"({len(images)} images)"
        )
    return Listing(_check_unique(items), sorted(unmatched))


def read_manifest(manifest_url: str, output_url: str, *, ext: str = ".png") -> Listing:
    """The items of a manifest: a CSV file with a header or JSON lines (``.jsonl``, ``.ndjson``).

    Each row names an ``image`` and a ``mask`` (local paths or URLs; relative ones are relative
    to the manifest's folder) and may name its ``output`` (relative to the output prefix, with a
    lossless mask extension). Without ``output`` a relative image path is kept (``a/b.jpg`` ->
    ``a/b<ext>``); absolute images and URLs keep their path below the folder all of them share.

    Raises:
        ImageError: the manifest cannot be read, a row lacks an image or mask, an output leaves
            the prefix or has a lossy extension, or two rows write the same output.
    """
    fs, path = url_fs(manifest_url)
    name = str(manifest_url)
    try:
        text = fs.cat_file(path).decode("utf-8-sig")
    except FileNotFoundError:
        raise ImageError(f"manifest {name!r} not found") from None
    except IsADirectoryError:
        raise ImageError(f"manifest {name!r} is a folder; pass a CSV or JSON-lines file") from None
    except (OSError, UnicodeDecodeError) as exc:
        why = " ".join(str(exc).split())
        raise ImageError(f"cannot read manifest {name!r}: {why}") from None
    rows = _parse_manifest(text, name, PurePosixPath(path).suffix.lower())
    if not rows:
        raise ImageError(f"manifest {name!r} lists no items")
    base = posixpath.dirname(path)
    resolved = [
        (line, _resolve(row["image"], fs, base), _resolve(row["mask"], fs, base), row)
        for line, row in rows
    ]
    absolute = [url_fs(image)[1] for _, image, _, row in resolved if _is_absolute(row["image"])]
    common = posixpath.commonpath([posixpath.dirname(p) for p in absolute]) if absolute else ""
    ofs, oroot = url_fs(output_url)
    items = []
    for line, image, mask, row in resolved:
        if row.get("output"):
            key = _relative_key(row["output"], name, line)
            if PurePosixPath(key).suffix.lower() not in MASK_WRITE_EXTENSIONS:
                raise ImageError(
                    f"manifest {name!r} line {line}: output {row['output']!r} needs a lossless "
                    f"mask extension ({', '.join(MASK_WRITE_EXTENSIONS)})"
                )
        elif _is_absolute(row["image"]):
            rel = posixpath.relpath(url_fs(image)[1], common) if common else image
            key = str(PurePosixPath(_relative_key(rel, name, line)).with_suffix(ext))
        else:
            key = str(PurePosixPath(_relative_key(row["image"], name, line)).with_suffix(ext))
        output = ofs.unstrip_protocol(posixpath.join(oroot, key))
        items.append(Item(image=image, mask=mask, output=output, key=key))
    inputs = {url_fs(u)[1] for item in items for u in (item.image, item.mask)}
    for item in items:
        if url_fs(item.output)[1] in inputs:
            raise ImageError(
                f"manifest {name!r}: the output of {item.image!r} would overwrite the input "
                f"{item.output!r}; choose another output prefix"
            )
    return Listing(_check_unique(items), [])


def split_done(items: list[Item], output_url: str) -> tuple[list[Item], int]:
    """``(items whose output does not exist yet, how many do)``, from one listing of the
    output prefix (not one request per item: on an object store that is millions of requests)."""
    ofs, oroot = url_fs(output_url)
    try:
        existing = set(ofs.find(oroot)) if ofs.exists(oroot) else set()
    except OSError as exc:
        why = " ".join(str(exc).split())
        raise ImageError(f"cannot list the output prefix {str(output_url)!r}: {why}") from None
    todo = [item for item in items if posixpath.join(oroot, item.key) not in existing]
    return todo, len(items) - len(todo)


# ---------------------------------------------------------------------------------- helpers
def _folder(url: str, what: str) -> tuple[Any, str]:
    fs, root = url_fs(url)
    if not fs.isdir(root):
        problem = "it is not a folder" if fs.exists(root) else "no such folder"
        raise ImageError(f"{what} {str(url)!r}: {problem}")
    return fs, root


def _inside(path: str, root: str) -> bool:
    path, root = path.rstrip("/"), root.rstrip("/")
    return path == root or path.startswith(root + "/")


def _find_images(fs: Any, root: str) -> list[PurePosixPath]:
    """Image files below ``root`` (relative, sorted), skipping hidden files and folders."""
    found = []
    for path in fs.find(root):
        rel = PurePosixPath(posixpath.relpath(path, root))
        if is_image_name(rel.name) and not any(p.startswith(".") for p in rel.parts[:-1]):
            found.append(rel)
    return sorted(found)


def _check_unique(items: list[Item]) -> list[Item]:
    items = sorted(items, key=lambda item: item.key)
    for a, b in zip(items, items[1:], strict=False):
        if a.key == b.key:
            raise ImageError(
                f"{a.image!r} and {b.image!r} would both be written to {a.key!r}; rename one "
                "(or give each its own output in a manifest)"
            )
    return items


def _parse_manifest(text: str, name: str, suffix: str) -> list[tuple[int, dict[str, str]]]:
    """``(line number, row)`` of each item, every row with a non-empty image and mask."""
    rows: list[tuple[int, dict[str, str]]] = []
    if suffix in (".jsonl", ".ndjson"):
        for line, raw in enumerate(text.splitlines(), 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ImageError(f"manifest {name!r} line {line}: not JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise ImageError(f"manifest {name!r} line {line}: not a JSON object")
            rows.append((line, row))
    else:
        reader = csv.DictReader(io.StringIO(text))
        missing = [c for c in ("image", "mask") if c not in (reader.fieldnames or [])]
        if missing:
            raise ImageError(
                f"manifest {name!r} needs a header with the columns image and mask (and "
                f"optionally output); it has {reader.fieldnames or 'none'} (a CSV file, or JSON "
                "lines named .jsonl)"
            )
        rows = [(reader.line_num, row) for row in reader]
    for line, row in rows:
        for column in ("image", "mask"):
            value = row.get(column)
            if not isinstance(value, str) or not value.strip():
                raise ImageError(f"manifest {name!r} line {line}: no {column}")
        if row.get("output") is not None and not isinstance(row["output"], str):
            raise ImageError(f"manifest {name!r} line {line}: output must be a string")
    return rows


def _is_absolute(entry: str) -> bool:
    return "://" in entry or entry.startswith("/")


def _resolve(entry: str, fs: Any, base: str) -> str:
    """A manifest entry as a full URL: URLs and absolute paths as given, the others joined to
    the manifest's folder (in the manifest's file system)."""
    entry = entry.strip()
    if "://" in entry:
        return entry
    if entry.startswith("/"):
        return url_fs(entry)[0].unstrip_protocol(entry)
    return fs.unstrip_protocol(posixpath.normpath(posixpath.join(base, entry)))


def _relative_key(path: str, name: str, line: int) -> str:
    """``path`` normalised, refused if it would leave the output prefix."""
    key = posixpath.normpath(path.strip().replace("\\", "/"))
    if "://" in path or key.startswith("/") or key == "." or key.split("/")[0] == "..":
        raise ImageError(
            f"manifest {name!r} line {line}: output {path!r} must be a relative path inside "
            "the output prefix"
        )
    return key
