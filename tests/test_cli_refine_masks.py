"""`finecut refine` with masks as users have them: 0/1 masks, label maps, --instances, bad
outputs refused before any work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from finecut.cli import main
from finecut.viz import overlay_labels

H, W = 64, 80


def _scene() -> tuple[np.ndarray, np.ndarray]:
    """An image with two discs and a label map of rough boxes around them (labels 1 and 2)."""
    rng = np.random.default_rng(0)
    image = (rng.random((H, W, 3)) * 50).astype(np.uint8)
    labels = np.zeros((H, W), np.uint8)
    for label, (cx, cy, r) in ((1, (22, 30, 14)), (2, (56, 34, 13))):
        cv2.circle(image, (cx, cy), r, (230, 200 - 40 * label, 190), -1)
        labels[cy - r - 2 : cy + r + 2, cx - r - 2 : cx + r + 2] = label
    return image, labels


def _save(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def _run(capsys, *argv: object) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def _refine(capsys, image: Path, flag: str, mask: Path, out: Path, weights: Path, *extra):
    common = ("--weights", weights, "--device", "cpu", "--no-snap")
    return _run(capsys, "refine", image, flag, mask, "-o", out, *common, *extra)


def _one_error_line(err: str, *needles: str) -> str:
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1 and lines[0].startswith("finecut: error:"), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, err)
    return lines[0]


@pytest.fixture()
def files(tmp_path: Path) -> tuple[Path, Path]:
    image, labels = _scene()
    return _save(tmp_path / "photo.png", image), _save(tmp_path / "labels.png", labels)


# ------------------------------------------------------------------------------ binary masks


def test_zero_one_png_mask_is_a_binary_mask(capsys, tmp_path, tiny_crm_weights) -> None:
    image, labels = _scene()
    image_path = _save(tmp_path / "a.png", image)
    m01 = _save(tmp_path / "m01.png", (labels > 0).astype(np.uint8))
    m255 = _save(tmp_path / "m255.png", (labels > 0).astype(np.uint8) * 255)
    for mask, out in ((m01, tmp_path / "o01.png"), (m255, tmp_path / "o255.png")):
        code, err = _refine(capsys, image_path, "--mask", mask, out, tiny_crm_weights)
        assert code == 0, err
        assert "empty" not in err
    np.testing.assert_array_equal(_read(tmp_path / "o01.png"), _read(tmp_path / "o255.png"))
    np.testing.assert_array_equal(_read(tmp_path / "o01.png"), (labels > 0) * 255)


def test_soft_8bit_mask_is_thresholded_at_127(capsys, tmp_path, tiny_crm_weights) -> None:
    image, labels = _scene()
    soft = cv2.GaussianBlur((labels > 0).astype(np.uint8) * 255, (7, 7), 2)  # grey edges
    assert len(np.unique(soft)) > 30
    image_path = _save(tmp_path / "a.png", image)
    out = tmp_path / "o.png"
    code, err = _refine(
        capsys, image_path, "--mask", _save(tmp_path / "s.png", soft), out, tiny_crm_weights
    )
    assert code == 0, err
    np.testing.assert_array_equal(_read(out), (soft > 127) * 255)


def test_label_map_as_mask_is_refused_with_a_hint(capsys, files, tmp_path) -> None:
    image, labels = files
    four_labels = np.where(np.eye(H, W, dtype=bool), 3, _read(labels)).astype(np.uint8)
    four = _save(tmp_path / "four.png", four_labels)
    out = tmp_path / "o.png"
    code, err = _refine(capsys, image, "--mask", four, out, tmp_path / "unused.safetensors")
    assert code == 2
    _one_error_line(err, "four.png", "(0, 1, 2, 3)", "label map", "--instances")
    assert not out.exists()


# -------------------------------------------------------------------------------- --instances


def test_instances_writes_a_label_map_and_an_overlay(
    capsys, files, tmp_path, tiny_crm_weights
) -> None:
    image, labels = files
    out, over = tmp_path / "refined.png", tmp_path / "over.png"
    code, err = _refine(
        capsys, image, "--instances", labels, out, tiny_crm_weights, "--overlay", over
    )
    assert code == 0, err
    np.testing.assert_array_equal(_read(out), _scene()[1])  # untrained weights: as given
    np.testing.assert_array_equal(_read(over), overlay_labels(_scene()[0], _scene()[1]))


def test_instances_keeps_16bit_labels(capsys, files, tmp_path, tiny_crm_weights) -> None:
    image, labels = files
    wide = _read(labels).astype(np.uint16) * 1000
    wide_path = tmp_path / "wide.png"
    cv2.imwrite(str(wide_path), wide)
    out = tmp_path / "refined.png"
    code, err = _refine(capsys, image, "--instances", wide_path, out, tiny_crm_weights)
    assert code == 0, err
    assert cv2.imread(str(out), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    np.testing.assert_array_equal(cv2.imread(str(out), cv2.IMREAD_UNCHANGED), wide)


def test_instances_folder_mode(capsys, tmp_path, tiny_crm_weights) -> None:
    images, labels, out = tmp_path / "images", tmp_path / "labels", tmp_path / "out"
    images.mkdir()
    labels.mkdir()
    image, label_map = _scene()
    for stem in ("a", "b"):
        _save(images / f"{stem}.png", image)
        _save(labels / f"{stem}.png", label_map)
    code, err = _refine(capsys, images, "--instances", labels, out, tiny_crm_weights)
    assert code == 0, err
    for stem in ("a", "b"):
        np.testing.assert_array_equal(_read(out / f"{stem}.png"), label_map)


def test_instances_with_soft_is_refused(capsys, files, tmp_path) -> None:
    image, labels = files
    code, err = _refine(
        capsys,
        image,
        "--instances",
        labels,
        tmp_path / "o.png",
        tmp_path / "w.safetensors",
        "--soft",
    )
    assert code == 2
    _one_error_line(err, "--soft", "--instances")


def test_mask_and_instances_are_exclusive(capsys, files, tmp_path) -> None:
    image, labels = files
    with pytest.raises(SystemExit) as info:
        main(
            [
                "refine",
                str(image),
                "--mask",
                str(labels),
                "--instances",
                str(labels),
                "-o",
                str(tmp_path / "o.png"),
            ]
        )
    assert info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


# --------------------------------------------------------------------- outputs checked first

# Each case is a `finecut refine` command line that must fail with exit status 2 before the
# refiner is built: in a fresh interpreter, torch must still not be imported afterwards.
_OUT = ["IMG", "--mask", "MASK", "-o", "T/out.png"]
_KEEP = [*_OUT, "--keep-model"]
FAIL_FAST = {
    "txt output": (["IMG", "--mask", "MASK", "-o", "T/out.txt"], "unknown extension (.txt)"),
    "jpeg mask output": (["IMG", "--mask", "MASK", "-o", "T/out.jpg"], "JPEG is lossy"),
    "txt overlay": (
        ["IMG", "--mask", "MASK", "-o", "T/out.png", "--overlay", "T/over.txt"],
        "cannot write overlay",
    ),
    "overlay is the output": (
        ["IMG", "--mask", "MASK", "-o", "T/out.png", "--overlay", "T/out.png"],
        "is the output file",
    ),
    "output is a folder": (["IMG", "--mask", "MASK", "-o", "T"], "it is a folder"),
    "output under a file": (["IMG", "--mask", "MASK", "-o", "T/photo.png/x.png"], "is a file"),
    "output is the mask": (["IMG", "--mask", "MASK", "-o", "MASK", "--overwrite"], "the input"),
    "label map as mask": (["IMG", "--mask", "LABELS", "-o", "T/out.png"], "--instances"),
    "instances to txt": (["IMG", "--instances", "LABELS", "-o", "T/out.txt"], "(.txt)"),
    "folder mode output is a file": (["T/imgs", "--mask", "T/masks", "-o", "IMG"], "is a file"),
    "folder mode overlay is a file": (
        ["T/imgs", "--mask", "T/masks", "-o", "T/out", "--overlay", "IMG"],
        "is a file",
    ),
    "folder mode output is the mask folder": (
        ["T/imgs", "--mask", "T/masks", "-o", "T/masks"],
        "the input",
    ),
    "keep model missing": ([*_KEEP, "T/none.safetensors"], "keep model"),
    "keep model not safetensors": ([*_KEEP, "IMG"], "cannot be read"),
    "keep model and edge check": ([*_KEEP, "IMG", "--edge-margin", "1"], "not both"),
    "keep threshold out of range": ([*_OUT, "--keep-threshold", "1.5"], "must be in [0, 1]"),
    "folder mode keep model missing": (
        ["T/imgs", "--mask", "T/masks", "-o", "T/out", "--keep-model", "T/none.safetensors"],
        "not found",
    ),
}


def test_bad_outputs_fail_before_the_refiner_is_built(tmp_path) -> None:
    image, labels = _scene()
    img = _save(tmp_path / "photo.png", image)
    mask = _save(tmp_path / "mask.png", (labels > 0).astype(np.uint8) * 255)
    label_path = _save(tmp_path / "labels.png", labels)
    (tmp_path / "imgs").mkdir()
    (tmp_path / "masks").mkdir()
    _save(tmp_path / "imgs" / "a.png", image)
    _save(tmp_path / "masks" / "a.png", labels)
    subst = {"IMG": str(img), "MASK": str(mask), "LABELS": str(label_path)}

    def expand(arg: str) -> str:
        if arg == "T":
            return str(tmp_path)
        if arg.startswith("T/"):
            return str(tmp_path / arg[2:])
        return subst.get(arg, arg)

    commands = [["refine", *map(expand, argv)] for argv, _ in FAIL_FAST.values()]
    code = (
        "import sys\n"
        "from finecut.cli import main\n"
        f"for argv in {commands!r}:\n"
        "    print(main(argv))\n"
        "print('torch' in sys.modules, 'finecut.refine.api' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    *codes, loaded = proc.stdout.split("\n")[:-1]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("finecut: error:")]
    assert "Traceback" not in proc.stderr
    assert len(errors) == len(FAIL_FAST), proc.stderr
    for (name, (_, needle)), rc, error in zip(FAIL_FAST.items(), codes, errors, strict=True):
        assert rc == "2", name
        assert needle in error, (name, error)
    assert loaded == "False False"  # neither torch nor the refiner was ever imported
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "imgs",
        "labels.png",
        "mask.png",
        "masks",
        "photo.png",
    ]  # nothing written
    assert (tmp_path / "mask.png").read_bytes() == mask.read_bytes()


def _refine_with_a_fake_refiner(capsys, tmp_path, monkeypatch, flags) -> dict:
    """Run ``finecut refine`` with ``flags`` on a stand-in Refiner; the keyword arguments it was
    built with (the output must be the input mask: the stand-in changes nothing)."""
    import finecut.refine as refine_pkg

    seen = {}

    class FakeRefiner:
        def __init__(self, *args, **kwargs) -> None:
            seen.update(kwargs)

        def refine(self, image, mask, **kwargs):
            return np.where(mask, np.uint8(255), np.uint8(0))

    monkeypatch.setattr(refine_pkg, "Refiner", FakeRefiner)
    image, labels = _scene()
    img = _save(tmp_path / "img.png", image)
    mask = _save(tmp_path / "mask.png", np.where(labels == 1, 255, 0).astype(np.uint8))
    code, err = _run(capsys, "refine", img, "--mask", mask, "-o", tmp_path / "out.png", *flags)
    assert code == 0, err
    assert np.array_equal(_read(tmp_path / "out.png") > 127, labels == 1)
    return seen


@pytest.mark.parametrize(
    ("flags", "want"),
    [
        (("--edge-margin", "2"), {"keep_learned": False, "keep_edges": True,
                                  "keep_edge_margin": 2.0}),
        (("--edge-margin", "-1"), {"keep_learned": False, "keep_edges": False}),
        (("--keep-threshold", "0.7"), {"keep_learned": True, "keep_threshold": 0.7,
                                       "keep_snap_threshold": -1.0}),
        (("--snap-opinion", "0.8"), {"keep_learned": True, "keep_threshold": -1.0,
                                     "keep_snap_threshold": 0.8}),
        (("--snap-opinion", "-1", "--keep-threshold", "0.9"),
         {"keep_learned": True, "keep_threshold": 0.9, "keep_snap_threshold": -1.0}),
        (("--snap-opinion", "-5"), {"keep_snap_threshold": -1.0}),
    ],
)  # fmt: skip
def test_keep_flags_reach_the_refiner(capsys, tmp_path, monkeypatch, flags, want):
    cfg = _refine_with_a_fake_refiner(capsys, tmp_path, monkeypatch, flags)["config"]
    assert {k: getattr(cfg, k) for k in want} == want


@pytest.mark.parametrize("name", [None, "refine_keep", "refine_keep_trees"])
def test_keep_model_reaches_the_refiner(capsys, tmp_path, monkeypatch, name):
    from finecut.refine.keep import load_keep_model
    from finecut.weights import WEIGHTS_DIR

    flags = () if name is None else ("--keep-model", WEIGHTS_DIR / f"{name}.safetensors")
    got = _refine_with_a_fake_refiner(capsys, tmp_path, monkeypatch, flags)["keep_model"]
    if name is None:
        assert got is None  # the Refiner takes the embedded default
    else:
        want = load_keep_model(WEIGHTS_DIR / f"{name}.safetensors")
        assert type(got) is type(want) and got.threshold == want.threshold


@pytest.mark.parametrize("margin", ["nan", "inf", "abc"])
def test_edge_margin_must_be_a_finite_number(capsys, tmp_path, margin) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["refine", "a.jpg", "--mask", "b.png", "-o", str(tmp_path / "o.png"),
              "--edge-margin", margin])  # fmt: skip
    assert exc.value.code == 2
    assert f"--edge-margin: {margin!r} is not a finite number" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--keep-threshold", "1.5"), "--keep-threshold must be in [0, 1]"),
        (("--keep-threshold", "0.5", "--edge-margin", "1"), "not both"),
        (("--snap-opinion", "1.5"), "--snap-opinion must be in [0, 1]"),
        (("--snap-opinion", "0.5", "--edge-margin", "1"), "not both"),
    ],
)
def test_bad_keep_flags_are_one_error_line(capsys, tmp_path, flags, message) -> None:
    image, labels = _scene()
    img = _save(tmp_path / "img.png", image)
    mask = _save(tmp_path / "mask.png", np.where(labels == 1, 255, 0).astype(np.uint8))
    code, err = _run(capsys, "refine", img, "--mask", mask, "-o", tmp_path / "out.png", *flags)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize(
    ("command", "flags", "want"),
    [
        ("refine", (), {"precision": None}),  # None: the Refiner's own default
        ("refine", ("--precision", "bf16"), {"precision": "bf16"}),
        ("refine", ("--precision", "fp32"), {"precision": "fp32"}),
        ("refine", ("--precision", "auto"), {"precision": "auto"}),
        ("refine-coco", ("--precision", "bf16"), {"precision": "bf16"}),
    ],
)
def test_precision_reaches_the_refiner(monkeypatch, command, flags, want):
    import finecut.refine as refine_pkg
    from finecut.cli import _refiner, build_parser

    seen = {}

    class FakeRefiner:
        def __init__(self, *args, config=None, **kwargs) -> None:
            seen.update(kwargs)

    monkeypatch.setattr(refine_pkg, "Refiner", FakeRefiner)
    if command == "refine":
        argv = ["refine", "a.png", "--mask", "b.png", "-o", "c.png", *flags]
    else:
        argv = ["refine-coco", "a.json", "--images", "imgs", "-o", "out.json", *flags]
    _refiner(build_parser().parse_args(argv))
    assert {k: v for k, v in seen.items() if k == "precision"} == want


def test_an_unknown_precision_is_one_error_line(capsys, tmp_path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["refine", "a.jpg", "--mask", "b.png", "-o", str(tmp_path / "o.png"),
              "--precision", "fp16"])  # fmt: skip
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --precision: invalid choice: 'fp16'" in err
