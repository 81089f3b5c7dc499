from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from finecut.cli import main
from finecut.models.crm import CRM, CRMConfig
from finecut.refine.api import Refiner
from finecut.viz import overlay_mask
from finecut.weights import write_weights

# Tiny images and random-init weights (``tiny_crm_weights``: untrained, so the refined mask is
# the input mask exactly). Every command that needs a model gets --weights: the embedded default
# weights may not exist.

H, W = 64, 80


def _scene(h: int = H, w: int = W, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = (rng.random((h, w, 3)) * 50).astype(np.uint8)
    cv2.circle(image, (w // 2, h // 2), min(h, w) // 3, (230, 210, 190), -1)
    mask = np.zeros((h, w), np.uint8)
    cv2.rectangle(mask, (w // 2 - 18, h // 2 - 20), (w // 2 + 20, h // 2 + 17), 255, -1)
    return image, mask


def _save(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


@pytest.fixture()
def pair(tmp_path: Path) -> tuple[Path, Path]:
    image, mask = _scene()
    return _save(tmp_path / "photo.png", image), _save(tmp_path / "photo_mask.png", mask)


@pytest.fixture(scope="module")
def noisy_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random weights whose head is not the identity (soft output has in-between values)."""
    torch.manual_seed(2)
    model = CRM(CRMConfig(), pretrained=False)
    with torch.no_grad():
        model.mlp[-1].weight.normal_(0.0, 1.0)
    return write_weights(
        model.state_dict(),
        "noisy",
        {"model": "crm", "config": model.config.to_dict()},
        directory=tmp_path_factory.mktemp("w"),
    )


def _run(capsys: pytest.CaptureFixture, *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _refine(capsys, image: Path, mask: Path, out: Path, weights: Path, *extra: object):
    return _run(
        capsys,
        "refine",
        image,
        "--mask",
        mask,
        "-o",
        out,
        "--weights",
        weights,
        "--device",
        "cpu",
        "--no-snap",  # the tiny weights then return the input mask exactly
        *extra,
    )


def _read(path: Path) -> tuple[Image.Image, np.ndarray]:
    with Image.open(path) as im:
        im.load()
        return im, np.asarray(im)


def _assert_one_error_line(err: str, *needles: str) -> None:
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("finecut: error:"), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, err)


# -------------------------------------------------------------------------------- single file


def test_refine_writes_the_mask(capsys, pair, tmp_path, tiny_crm_weights) -> None:
    image, mask = pair
    out = tmp_path / "out" / "refined.png"  # a missing folder is created
    code, _, err = _refine(capsys, image, mask, out, tiny_crm_weights)
    assert code == 0, err
    im, data = _read(out)
    assert im.format == "PNG" and im.mode == "L" and im.size == (W, H)
    assert set(np.unique(data)) <= {0, 255}
    np.testing.assert_array_equal(data, _scene()[1])  # untrained weights: the coarse mask


def test_refine_soft_writes_8bit_alpha(capsys, pair, tmp_path, noisy_weights) -> None:
    image, mask = pair
    out = tmp_path / "alpha.png"
    code, _, err = _refine(capsys, image, mask, out, noisy_weights, "--soft")
    assert code == 0, err
    im, data = _read(out)
    assert im.mode == "L" and data.dtype == np.uint8 and data.shape == (H, W)
    rgb, coarse = _scene()
    prob = Refiner(weights=noisy_weights, device="cpu").refine(rgb, coarse, soft=True, snap=False)
    np.testing.assert_array_equal(data, np.round(prob * 255.0).astype(np.uint8))
    assert ((data > 0) & (data < 255)).any()  # really soft, not a 0/255 mask


def test_refine_overlay_writes_an_rgb_picture(capsys, pair, tmp_path, tiny_crm_weights) -> None:
    image, mask = pair
    out, over = tmp_path / "m.png", tmp_path / "pics" / "over.png"
    code, _, err = _refine(capsys, image, mask, out, tiny_crm_weights, "--overlay", over)
    assert code == 0, err
    im, data = _read(over)
    assert im.mode == "RGB" and im.size == (W, H)
    rgb, coarse = _scene()
    np.testing.assert_array_equal(data, overlay_mask(rgb, coarse))


def test_existing_output_is_kept_without_overwrite(
    capsys, pair, tmp_path, tiny_crm_weights
) -> None:
    image, mask = pair
    out = tmp_path / "out.png"
    out.write_bytes(b"precious")
    code, _, err = _refine(capsys, image, mask, out, tiny_crm_weights)
    assert code == 2
    _assert_one_error_line(err, "out.png", "--overwrite")
    assert out.read_bytes() == b"precious"
    code, _, err = _refine(capsys, image, mask, out, tiny_crm_weights, "--overwrite")
    assert code == 0, err
    assert _read(out)[0].size == (W, H)


@pytest.mark.parametrize("which", ["image", "mask"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_output_equal_to_an_input_is_refused(
    capsys, pair, tiny_crm_weights, which: str, overwrite: bool
) -> None:
    image, mask = pair
    target = image if which == "image" else mask
    before = target.read_bytes()
    extra = ["--overwrite"] if overwrite else []
    code, _, err = _refine(capsys, image, mask, target, tiny_crm_weights, *extra)
    assert code == 2
    _assert_one_error_line(err, target.name)
    assert target.read_bytes() == before


def _truncated_jpeg(path: Path) -> Path:
    image, _ = _scene()
    Image.fromarray(image).save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _corrupt_jpeg(path: Path) -> Path:
    path.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    return path


BAD_FILES = {
    "truncated.jpg": _truncated_jpeg,
    "corrupt.jpg": _corrupt_jpeg,
    "empty.png": lambda p: (p.write_bytes(b""), p)[1],
    "notes.png": lambda p: (p.write_text("this is not a picture\n"), p)[1],
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
@pytest.mark.parametrize("role", ["image", "mask"])
def test_unreadable_input_is_one_error_line(
    capsys, pair, tmp_path, tiny_crm_weights, name: str, role: str
) -> None:
    image, mask = pair
    bad = BAD_FILES[name](tmp_path / name)
    out = tmp_path / "out.png"
    args = (bad, mask) if role == "image" else (image, bad)
    code, _, err = _refine(capsys, *args, out, tiny_crm_weights)
    assert code == 2
    _assert_one_error_line(err, name)
    assert not out.exists()


def test_unreadable_image_in_a_real_process(pair, tmp_path, tiny_crm_weights) -> None:
    # in-process runs send logging to pytest; a real process shows what a user sees on stderr
    _, mask = pair
    bad = _truncated_jpeg(tmp_path / "broken.jpg")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "finecut",
            "refine",
            str(bad),
            "--mask",
            str(mask),
            "-o",
            str(tmp_path / "o.png"),
            "--weights",
            str(tiny_crm_weights),
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert proc.returncode == 2
    _assert_one_error_line(proc.stderr, "broken.jpg", "truncated")
    assert proc.stdout == ""


def test_mask_of_another_size(capsys, tmp_path, tiny_crm_weights) -> None:
    image, mask = _scene()
    image_path = _save(tmp_path / "a.png", image)
    small = cv2.resize(mask, (W // 2, H // 2), interpolation=cv2.INTER_NEAREST)
    mask_path = _save(tmp_path / "a_small.png", small)
    out = tmp_path / "out.png"
    code, _, err = _refine(capsys, image_path, mask_path, out, tiny_crm_weights)
    assert code == 2
    _assert_one_error_line(err, "--resize-mask", f"{W // 2}x{H // 2}", f"{W}x{H}")
    assert not out.exists()
    code, _, err = _refine(capsys, image_path, mask_path, out, tiny_crm_weights, "--resize-mask")
    assert code == 0, err
    _, data = _read(out)
    assert data.shape == (H, W)
    upsized = cv2.resize(small, (W, H), interpolation=cv2.INTER_LINEAR) > 127
    np.testing.assert_array_equal(data > 127, upsized)


def _image_16bit_grey(image: np.ndarray, path: Path) -> None:
    grey = image[..., 0].astype(np.uint16) * 257
    Image.fromarray(grey).save(path)  # mode I;16


def _image_16bit_rgb(image: np.ndarray, path: Path) -> None:
    cv2.imwrite(str(path), image[..., ::-1].astype(np.uint16) * 257)


def _image_rgba(image: np.ndarray, path: Path) -> None:
    Image.fromarray(np.dstack([image, np.full(image.shape[:2], 200, np.uint8)])).save(path)


def _image_grey(image: np.ndarray, path: Path) -> None:
    Image.fromarray(image[..., 1]).save(path)


def _image_palette(image: np.ndarray, path: Path) -> None:
    Image.fromarray(image).quantize(16).save(path)


IMAGE_KINDS = {
    "16bit_grey": (_image_16bit_grey, "I;16"),
    "16bit_rgb": (_image_16bit_rgb, "RGB"),  # PIL reports 16-bit RGB PNGs as 8-bit RGB
    "rgba": (_image_rgba, "RGBA"),
    "grey": (_image_grey, "L"),
    "palette": (_image_palette, "P"),
}


@pytest.mark.parametrize("kind", sorted(IMAGE_KINDS))
def test_image_kinds_are_accepted(capsys, tmp_path, tiny_crm_weights, kind: str) -> None:
    image, mask = _scene()
    writer, mode = IMAGE_KINDS[kind]
    image_path = tmp_path / f"{kind}.png"
    writer(image, image_path)
    assert _read(image_path)[0].mode.startswith(mode)
    mask_path = _save(tmp_path / "mask.png", mask)
    out = tmp_path / "out.png"
    code, _, err = _refine(capsys, image_path, mask_path, out, tiny_crm_weights)
    assert code == 0, err
    np.testing.assert_array_equal(_read(out)[1], mask)


def test_missing_weights_file(capsys, pair, tmp_path) -> None:
    image, mask = pair
    code, _, err = _refine(capsys, image, mask, tmp_path / "o.png", "/nonexistent.safetensors")
    assert code == 2
    _assert_one_error_line(err, "/nonexistent.safetensors")


def test_weights_of_another_config_are_one_line(capsys, pair, tmp_path, tiny_crm_weights) -> None:
    image, mask = pair
    weights = tmp_path / "w" / tiny_crm_weights.name
    weights.parent.mkdir()
    shutil.copyfile(tiny_crm_weights, weights)
    manifest = json.loads(tiny_crm_weights.with_suffix(".json").read_text())
    manifest["config"]["hidden"] = [16, 16]
    weights.with_suffix(".json").write_text(json.dumps(manifest))
    code, _, err = _refine(capsys, image, mask, tmp_path / "o.png", weights)
    assert code == 2
    _assert_one_error_line(err, "do not fit")


def test_empty_mask_is_copied_with_a_warning(capsys, caplog, tmp_path, tiny_crm_weights) -> None:
    image, _ = _scene()
    image_path = _save(tmp_path / "a.png", image)
    mask_path = _save(tmp_path / "m.png", np.zeros((H, W), np.uint8))
    out = tmp_path / "out.png"
    with caplog.at_level(logging.WARNING):
        code, _, err = _refine(capsys, image_path, mask_path, out, tiny_crm_weights)
    assert code == 0, err
    np.testing.assert_array_equal(_read(out)[1], np.zeros((H, W), np.uint8))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("a.png" in r.getMessage() and "empty" in r.getMessage() for r in warnings)


# -------------------------------------------------------------------------------- folder mode


def _folder(tmp_path: Path) -> tuple[Path, Path]:
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for i, stem in enumerate(("a", "b", "c")):
        image, mask = _scene(seed=i)
        if stem == "c":
            _truncated_jpeg(images / "c.jpg")  # the bad one
        else:
            _save(images / f"{stem}.png", image)
        _save(masks / f"{stem}.png", mask)
    _save(images / "d.png", _scene(seed=9)[0])  # no mask
    return images, masks


def test_folder_mode(capsys, caplog, tmp_path, tiny_crm_weights) -> None:
    images, masks = _folder(tmp_path)
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        code, _, err = _refine(capsys, images, masks, out, tiny_crm_weights)
    assert code == 1
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]
    for stem in ("a", "b"):
        np.testing.assert_array_equal(_read(out / f"{stem}.png")[1], _scene()[1])
    assert "1 of 3 images failed" in err
    assert re.search(r"^  c\.jpg: .*c\.jpg", err, re.M), err
    assert "Traceback" not in err
    assert any(
        "no mask for d.png" in r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING
    )

    # a rerun keeps finished outputs (and retries the failed one)
    stats = {p.name: p.stat() for p in out.iterdir()}
    caplog.clear()
    with caplog.at_level(logging.INFO):
        code, _, err = _refine(capsys, images, masks, out, tiny_crm_weights)
    assert code == 1 and "1 of 1 images failed" in err
    for name, st in stats.items():
        now = (out / name).stat()
        assert (now.st_mtime_ns, now.st_ino) == (st.st_mtime_ns, st.st_ino), name
    assert any("2 outputs already exist" in r.getMessage() for r in caplog.records)

    # --overwrite redoes them (atomic replace: a new file)
    code, _, err = _refine(capsys, images, masks, out, tiny_crm_weights, "--overwrite")
    assert code == 1 and "1 of 3 images failed" in err
    for name, st in stats.items():
        assert (out / name).stat().st_ino != st.st_ino, name


def test_folder_mode_all_good_and_all_done(capsys, tmp_path, tiny_crm_weights) -> None:
    images, masks = _folder(tmp_path)
    (images / "c.jpg").unlink()
    out, over = tmp_path / "out", tmp_path / "over"
    code, _, err = _refine(capsys, images, masks, out, tiny_crm_weights, "--overlay", over)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]
    assert sorted(p.name for p in over.iterdir()) == ["a.png", "b.png"]
    code, _, err = _refine(capsys, images, masks, out, tiny_crm_weights)
    assert (code, err) == (0, "")


def test_image_file_with_mask_folder_is_refused(capsys, pair, tmp_path, tiny_crm_weights) -> None:
    image, _ = pair
    code, _, err = _refine(capsys, image, tmp_path, tmp_path / "o.png", tiny_crm_weights)
    assert code == 2
    _assert_one_error_line(err, "both")


# ----------------------------------------------------------------------- train / eval / export


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("discs")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        image = (rng.random((96, 96, 3)) * 60).astype(np.uint8)
        mask = np.zeros((96, 96), np.uint8)
        centre = (int(rng.integers(36, 60)), int(rng.integers(36, 60)))
        radius = int(rng.integers(20, 30))
        cv2.circle(image, centre, radius, (200, 180, 160), -1)
        cv2.circle(mask, centre, radius, 255, -1)
        _save(root / "images" / f"{i:04d}.png", image)
        _save(root / "masks" / f"{i:04d}.png", mask)
    return root


TRAIN_ARGS = (
    "--no-pretrained",
    "--batch-size",
    "2",
    "--crop",
    "64",
    "--workers",
    "0",
    "--ckpt-every",
    "1",
    "--device",
    "cpu",
)


@pytest.fixture(scope="module")
def trained_run(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("run")
    code = main(
        [
            "train",
            "refine",
            "--data",
            str(tiny_dataset),
            "--out",
            str(run),
            "--iters",
            "2",
            *TRAIN_ARGS,
        ]
    )
    assert code == 0
    return run


def _log_steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]


def test_train_refine_writes_a_checkpoint_and_resumes(
    capsys, trained_run, tiny_dataset, tmp_path
) -> None:
    assert (trained_run / "last.pt").is_file()
    assert _log_steps(trained_run) == [2]
    ckpt = torch.load(trained_run / "last.pt", map_location="cpu", weights_only=False)
    assert ckpt["step"] == 2
    assert ckpt["config"]["model"] == CRMConfig().to_dict()

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    code, _, err = _run(
        capsys, "train", "refine", "--data", tiny_dataset, "--out", run, "--iters", "3", *TRAIN_ARGS
    )
    assert code == 0, err
    assert _log_steps(run) == [2, 3]  # resumed at step 2, not restarted
    resumed = torch.load(run / "last.pt", map_location="cpu", weights_only=False)
    assert resumed["step"] == 3
    # the third step changed the weights it started from
    changed = [
        k
        for k, v in resumed["model"].items()
        if v.is_floating_point() and not torch.equal(v, ckpt["model"][k])
    ]
    assert changed


def _train_one_step_from(capsys, data: Path, out: Path, init: Path):
    """``finecut train refine`` for one step from ``--init`` weights."""
    args = ("train", "refine", "--data", data, "--out", out, "--iters", "1", "--init", init)
    return _run(capsys, *args, *TRAIN_ARGS)


def test_train_refine_init_starts_from_weights_with_a_fresh_schedule(
    capsys, trained_run, tiny_dataset, tmp_path
) -> None:
    run = tmp_path / "ft"
    code, _, err = _train_one_step_from(capsys, tiny_dataset, run, trained_run / "last.pt")
    assert code == 0, err
    start = torch.load(trained_run / "last.pt", map_location="cpu", weights_only=False)
    tuned = torch.load(run / "last.pt", map_location="cpu", weights_only=False)
    assert tuned["step"] == 1 and _log_steps(run) == [1]  # a new run, not a resume at step 2
    assert tuned["config"]["init"] == str(trained_run / "last.pt")
    # one step from the initial weights: close to them, far from a fresh random init
    torch.manual_seed(123)
    fresh = CRM(CRMConfig(), pretrained=False).state_dict()
    key = next(k for k, v in start["model"].items() if v.is_floating_point() and v.numel() > 100)
    near = (tuned["model"][key] - start["model"][key]).abs().max()
    far = (fresh[key] - start["model"][key]).abs().max()
    assert near < 0.1 * far


def test_train_refine_init_of_another_config_resumes_with_that_config(
    capsys, tiny_dataset, tmp_path
) -> None:
    source = tmp_path / "narrow"
    args = ("--iters", "1", "--latent-channels", "32", *TRAIN_ARGS)
    code, _, err = _run(capsys, "train", "refine", "--data", tiny_dataset, "--out", source, *args)
    assert code == 0, err
    run = tmp_path / "ft"
    code, _, err = _train_one_step_from(capsys, tiny_dataset, run, source / "last.pt")
    assert code == 0, err
    # resuming the fine-tuning run (no --latent-channels given) keeps the init weights' model
    more = ("--iters", "2", "--init", source / "last.pt", *TRAIN_ARGS)
    code, _, err = _run(capsys, "train", "refine", "--data", tiny_dataset, "--out", run, *more)
    assert code == 0, err
    resumed = torch.load(run / "last.pt", map_location="cpu", weights_only=False)
    assert resumed["step"] == 2 and _log_steps(run) == [1, 2]
    assert resumed["config"]["model"]["latent_channels"] == 32


def test_train_refine_init_missing_is_one_line(capsys, tiny_dataset, tmp_path) -> None:
    code, _, err = _train_one_step_from(
        capsys, tiny_dataset, tmp_path / "ft", tmp_path / "nope.safetensors"
    )
    assert code != 0
    assert "nope.safetensors" in err and "Traceback" not in err
    assert not (tmp_path / "ft" / "last.pt").exists()


def test_eval_refine_prints_a_table(capsys, tiny_dataset, tiny_crm_weights) -> None:
    code, out, err = _run(
        capsys,
        "eval",
        "refine",
        "--data",
        tiny_dataset,
        "--methods",
        "finecut-nosnap,finecut,guided",
        "--weights",
        tiny_crm_weights,
        "--device",
        "cpu",
    )
    assert code == 0, err
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0] not in ("method", "---"):
            rows[cells[0]] = cells
    assert list(rows) == ["coarse", "finecut-nosnap", "finecut", "guided"]
    assert "4 images" in out
    for name, (_, iou, mba, _) in rows.items():
        assert 0.0 < float(iou) <= 100.0 and 0.0 <= float(mba) <= 100.0, name
    # untrained weights return the coarse mask, so CRM alone scores exactly what coarse scores
    assert rows["finecut-nosnap"][1:3] == rows["coarse"][1:3]


def test_export_writes_loadable_weights(trained_run, tmp_path) -> None:
    dest = tmp_path / "exported"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "finecut.train.export",
            str(trained_run / "last.pt"),
            "--name",
            "x",
            "--dir",
            str(dest),
            "--command",
            "finecut train refine ...",
            "--machine",
            "test",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(dest / "x.safetensors")
    manifest = json.loads((dest / "x.json").read_text())
    assert manifest["step"] == 2 and manifest["machine"] == "test"
    assert manifest["config"] == CRMConfig().to_dict()
    assert manifest["train_config"]["iters"] == 2
    refiner = Refiner(weights=dest / "x.safetensors", device="cpu")
    ckpt = torch.load(trained_run / "last.pt", map_location="cpu", weights_only=False)
    for key, value in refiner.model.state_dict().items():
        assert torch.equal(value, ckpt["model"][key]), key
    image, mask = _scene()
    assert refiner.refine(image, mask).shape == (H, W)


# ---------------------------------------------------------------------------------- argparse


def test_help_in_a_subprocess() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "finecut", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0
    for command in ("refine", "train", "eval", "demo"):
        assert command in proc.stdout


def test_no_command_prints_help_and_exits_2(capsys) -> None:
    code, out, _ = _run(capsys)
    assert code == 2 and "usage: finecut" in out


def test_train_embedding_on_masks(capsys, tiny_dataset, tmp_path) -> None:
    out = tmp_path / "emb"
    code, _, err = _run(
        capsys, "train", "embedding", "--masks", tiny_dataset, "--out", out, "--no-pretrained",
        "--iters", 2, "--batch-size", 2, "--crop", 64, "--pixels", 20, "--workers", 0,
        "--ckpt-every", 1, "--device", "cpu",
    )
    assert code == 0, err
    assert (out / "last.pt").is_file() and (out / "log.jsonl").is_file()


def test_train_embedding_needs_data(capsys, tmp_path) -> None:
    code, _, err = _run(capsys, "train", "embedding", "--out", tmp_path / "emb")
    assert code == 2
    _assert_one_error_line(err, "--labels")


def test_train_embedding_on_a_mix(capsys, tiny_dataset, tmp_path) -> None:
    mix = tmp_path / "mix.yaml"
    mix.write_text(f"sources:\n  - {{kind: masks, path: '{tiny_dataset}', weight: 2}}\n")
    out = tmp_path / "emb"
    args = (
        "train", "embedding", "--mix", mix, "--out", out, "--no-pretrained", "--iters", 3,
        "--stop-at", 1, "--batch-size", 2, "--crop", 64, "--pixels", 20, "--workers", 0,
        "--device", "cpu",
    )
    code, _, err = _run(capsys, *args)
    assert code == 0, err
    import torch

    state = torch.load(out / "last.pt", weights_only=False)
    assert state["step"] == 1 and state["config"]["sources"][0]["weight"] == 2
    # a mix and a folder together, a bad key, a bad kind: one error line each
    code, _, err = _run(capsys, *args, "--masks", tiny_dataset)
    assert code == 2
    _assert_one_error_line(err, "not both")
    mix.write_text(f"sources:\n  - {{kind: masks, path: '{tiny_dataset}', wieght: 2}}\n")
    code, _, err = _run(capsys, *args)
    assert code == 2
    _assert_one_error_line(err, "bad source")
    mix.write_text(f"sources:\n  - {{kind: camvid, path: '{tiny_dataset}'}}\n")
    code, _, err = _run(capsys, *args)
    assert code == 2
    _assert_one_error_line(err, "'labels' or 'masks'")
