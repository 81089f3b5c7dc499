"""Listing a data set, output paths and skip-done, on the local disk and on memory://."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import fsspec
import pytest

from finecut.cluster.items import list_folder, read_manifest, split_done
from finecut.errors import ImageError


def _touch(fs, path: str, data: bytes = b"x") -> None:
    fs.pipe_file(path, data)


@pytest.fixture(params=["local", "memory"])
def root(request, tmp_path: Path) -> str:
    """An empty folder URL: a local path, or a fresh memory:// folder."""
    if request.param == "local":
        return str(tmp_path)
    return f"memory://ds-{uuid.uuid4().hex}"


def _fs(root: str):
    return fsspec.core.url_to_fs(root)


def _make_tree(root: str) -> None:
    fs, base = _fs(root)
    for rel in (
        "images/a.jpg",
        "images/b.png",
        "images/c.jpg",  # no mask
        "images/sub/d.jpg",
        "images/.hidden/e.jpg",  # hidden folder: skipped
        "images/notes.txt",  # not an image
        "masks/a.png",
        "masks/b_mask.png",
        "masks/sub/d.png",
        "masks/.hidden/e.png",
    ):
        fs.makedirs(f"{base}/{rel}".rsplit("/", 1)[0], exist_ok=True)
        _touch(fs, f"{base}/{rel}")


def test_list_folder_pairs_by_stem_and_keeps_relative_paths(root: str) -> None:
    _make_tree(root)
    listing = list_folder(f"{root}/images", f"{root}/out", masks_url=f"{root}/masks")
    assert [i.key for i in listing.items] == ["a.png", "b.png", "sub/d.png"]
    assert listing.unmatched == ["c.jpg"]
    d = listing.items[2]
    assert d.image.endswith("/images/sub/d.jpg") and d.mask.endswith("/masks/sub/d.png")
    assert d.output.endswith("/out/sub/d.png")
    fs, path = _fs(d.output)
    assert path.endswith("/out/sub/d.png")  # a URL each worker can open


def test_list_folder_masks_beside_images(root: str) -> None:
    fs, base = _fs(root)
    fs.makedirs(f"{base}/all", exist_ok=True)
    for name in ("a.jpg", "a_mask.png", "b.jpg"):
        _touch(fs, f"{base}/all/{name}")
    listing = list_folder(f"{root}/all", f"{root}/out")
    assert [(i.key, i.mask.rsplit("/", 1)[1]) for i in listing.items] == [("a.png", "a_mask.png")]
    assert listing.unmatched == ["b.jpg"]


def test_skip_done(root: str) -> None:
    _make_tree(root)
    listing = list_folder(f"{root}/images", f"{root}/out", masks_url=f"{root}/masks")
    todo, done = split_done(listing.items, f"{root}/out")  # the prefix does not exist yet
    assert (len(todo), done) == (3, 0)
    fs, base = _fs(root)
    fs.makedirs(f"{base}/out/sub", exist_ok=True)
    _touch(fs, f"{base}/out/sub/d.png")
    todo, done = split_done(listing.items, f"{root}/out")
    assert [i.key for i in todo] == ["a.png", "b.png"] and done == 1


def test_two_images_one_output_is_refused(tmp_path: Path) -> None:
    for rel in ("im/a.jpg", "im/a.png", "m/a.png"):
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    with pytest.raises(ImageError, match="both be written to 'a.png'"):
        list_folder(str(tmp_path / "im"), str(tmp_path / "out"), masks_url=str(tmp_path / "m"))


def test_output_inside_the_input_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "a_mask.png").write_bytes(b"x")
    with pytest.raises(ImageError, match="lies inside the input folder"):
        list_folder(str(tmp_path), str(tmp_path / "refined"))


@pytest.mark.parametrize("problem", ["missing", "file", "no pairs", "protocol"])
def test_bad_folder(tmp_path: Path, problem: str) -> None:
    (tmp_path / "file.jpg").write_bytes(b"x")
    (tmp_path / "im").mkdir()
    (tmp_path / "im" / "a.jpg").write_bytes(b"x")
    source, match = {
        "missing": (str(tmp_path / "nope"), "no such folder"),
        "file": (str(tmp_path / "file.jpg"), "not a folder"),
        "no pairs": (str(tmp_path / "im"), r"no image .* has a mask .*\(1 images\)"),
        "protocol": ("nosuchproto://x/y", "cannot open 'nosuchproto://x/y'"),
    }[problem]
    with pytest.raises(ImageError, match=match):
        list_folder(source, str(tmp_path / "out"))


# ---------------------------------------------------------------------------------- manifests
def test_manifest_csv_and_jsonl(root: str) -> None:
    fs, base = _fs(root)
    csv_text = "image,mask,output,extra\nimg/a.jpg,msk/a.png,,1\nimg/x/b.jpg,msk/b.png,o/b.png,2\n"
    fs.pipe_file(f"{base}/m.csv", csv_text.encode())
    listing = read_manifest(f"{root}/m.csv", f"{root}/out")
    assert [i.key for i in listing.items] == ["img/a.png", "o/b.png"]
    assert listing.items[0].image.endswith("/img/a.jpg")  # relative to the manifest's folder
    assert listing.items[0].output.endswith("/out/img/a.png")

    rows = [
        {"image": f"{root}/p/q/a.jpg", "mask": "m/a.png"},
        {"image": f"{root}/p/b.jpg", "mask": "m/b.png"},
    ]
    fs.pipe_file(f"{base}/m.jsonl", "\n".join(json.dumps(r) for r in rows).encode())
    listing = read_manifest(f"{root}/m.jsonl", f"{root}/out")
    # absolute images keep their path below the folder they share
    assert [i.key for i in listing.items] == ["b.png", "q/a.png"]


@pytest.mark.parametrize(
    ("text", "name", "match"),
    [
        ("path,mask\na,b\n", "m.csv", "needs a header with the columns image and mask"),
        ("image,mask\na.jpg,\n", "m.csv", "line 2: no mask"),
        ("image,mask\n", "m.csv", "lists no items"),
        ('{"image": "a.jpg"\n', "m.jsonl", "line 1: not JSON"),
        ('["a.jpg", "a.png"]\n', "m.jsonl", "line 1: not a JSON object"),
        ("image,mask,output\na.jpg,a.png,../a.png\n", "m.csv", "must be a relative path"),
        ("image,mask,output\na.jpg,a.png,a.jpg\n", "m.csv", "lossless mask extension"),
        ("image,mask,output\na.jpg,a.png,x.png\nb.jpg,b.png,x.png\n", "m.csv", "both be written"),
        ("image,mask,output\na.jpg,x.png,x.png\n", "m.csv", "would overwrite the input"),
    ],
)
def test_bad_manifest(tmp_path: Path, text: str, name: str, match: str) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(ImageError, match=match):
        read_manifest(str(tmp_path / name), str(tmp_path))


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="manifest .* not found"):
        read_manifest(str(tmp_path / "nope.csv"), str(tmp_path / "out"))
