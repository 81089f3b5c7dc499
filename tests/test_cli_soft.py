"""`finecut soft`: outputs, their invariants, and bad input as one line with exit status 2."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from finecut.cli import SOFT_MAX_PIXELS, main


def _scene(h: int = 48, w: int = 64) -> np.ndarray:
    """Three flat regions with a soft vertical edge between two of them."""
    image = np.zeros((h, w, 3), np.uint8)
    image[:, : w // 2] = (200, 40, 30)
    image[:, w // 2 :] = (30, 60, 210)
    cv2.circle(image, (w // 4, h // 2), h // 5, (240, 230, 60), -1)
    return cv2.GaussianBlur(image, (5, 5), 0)


@pytest.fixture()
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    Image.fromarray(_scene()).save(path)
    return path


def _run(capsys, *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("finecut:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_soft_writes_layers_composite_and_npy(capsys, photo, tmp_path) -> None:
    out = tmp_path / "layers"
    code, _, err = _run(capsys, "soft", photo, "-o", out, "--layers", 3, "--features", "none")
    assert code == 0, err
    alphas = np.load(out / "alphas.npy")
    assert alphas.shape == (48, 64, 3) and alphas.dtype == np.float32
    assert alphas.min() >= 0.0 and alphas.max() <= 1.0
    np.testing.assert_allclose(alphas.sum(2), 1.0, atol=1e-3)
    image = np.asarray(Image.open(photo).convert("RGB"))
    for k in range(3):
        rgba = np.asarray(Image.open(out / f"layer_{k}.png"))
        assert rgba.shape == (48, 64, 4)
        np.testing.assert_array_equal(rgba[..., :3], image)
        np.testing.assert_allclose(rgba[..., 3] / 255.0, alphas[..., k], atol=0.5 / 255 + 1e-6)
    composite = np.asarray(Image.open(out / "composite.png"))
    assert composite.shape == (48, 64, 3)
    assert len(np.unique(composite.reshape(-1, 3), axis=0)) >= 3


def test_existing_outputs_are_kept_without_overwrite(capsys, photo, tmp_path) -> None:
    out = tmp_path / "layers"
    out.mkdir()
    keep = out / "composite.png"
    keep.write_bytes(b"mine")
    code, _, err = _run(capsys, "soft", photo, "-o", out, "--layers", 2, "--features", "none")
    assert code == 2
    assert "--overwrite" in _one_error_line(err)
    assert keep.read_bytes() == b"mine"
    code, _, err = _run(
        capsys, "soft", photo, "-o", out, "--layers", 2, "--features", "none", "--overwrite"
    )
    assert code == 0, err
    assert keep.read_bytes() != b"mine"


def test_user_features_npy_of_another_size_is_one_line(capsys, photo, tmp_path) -> None:
    feats = tmp_path / "feats.npy"
    np.save(feats, np.zeros((10, 10, 8), np.float32))
    code, _, err = _run(capsys, "soft", photo, "-o", tmp_path / "o", "--features", feats)
    assert code == 2
    assert "(48, 64)" in _one_error_line(err)


def test_user_features_npy_are_used(capsys, photo, tmp_path) -> None:
    """Raw D-dimensional features that split the image left/right give layers that follow them."""
    h, w = 48, 64
    feats = np.zeros((h, w, 8), np.float32)
    feats[:, : w // 2, 0] = 1.0
    feats[:, w // 2 :, 1] = 1.0
    path = tmp_path / "feats.npy"
    np.save(path, feats)
    out = tmp_path / "o"
    code, _, err = _run(capsys, "soft", photo, "-o", out, "--layers", 2, "--features", path)
    assert code == 0, err
    alphas = np.load(out / "alphas.npy")
    left, right = alphas[:, : w // 4].mean((0, 1)), alphas[:, -w // 4 :].mean((0, 1))
    assert np.argmax(left) != np.argmax(right)


def test_corrupt_image_is_one_line(capsys, tmp_path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    code, _, err = _run(capsys, "soft", bad, "-o", tmp_path / "o", "--features", "none")
    assert code == 2
    assert "bad.jpg" in _one_error_line(err)
    assert not (tmp_path / "o").exists()


def test_unknown_features_choice_is_one_line(capsys, photo, tmp_path) -> None:
    code, _, err = _run(capsys, "soft", photo, "-o", tmp_path / "o", "--features", "sift")
    assert code == 2
    assert "sift" in _one_error_line(err)


def test_too_large_for_the_mode_asks_for_max_side(capsys, tmp_path) -> None:
    h, w = 500, 700
    assert h * w > SOFT_MAX_PIXELS["faithful"]
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(path)
    code, _, err = _run(
        capsys, "soft", path, "-o", tmp_path / "o", "--mode", "faithful", "--features", "none"
    )
    assert code == 2
    assert "--max-side" in _one_error_line(err)


def test_max_side_solves_small_and_writes_full_size(capsys, tmp_path) -> None:
    path = tmp_path / "photo.png"
    Image.fromarray(cv2.resize(_scene(), (128, 96), interpolation=cv2.INTER_NEAREST)).save(path)
    out = tmp_path / "o"
    code, _, err = _run(
        capsys, "soft", path, "-o", out, "--layers", 2, "--features", "none", "--max-side", 64
    )
    assert code == 0, err
    alphas = np.load(out / "alphas.npy")
    assert alphas.shape == (96, 128, 2)
    np.testing.assert_allclose(alphas.sum(2), 1.0, atol=1e-3)


def test_embedding_without_weights_is_one_line(capsys, photo, tmp_path) -> None:
    from finecut.models.embedding import DEFAULT_EMBEDDING_WEIGHTS
    from finecut.weights import WEIGHTS_DIR

    if (WEIGHTS_DIR / f"{DEFAULT_EMBEDDING_WEIGHTS}.json").is_file():
        pytest.skip("this finecut ships embedding weights")
    code, _, err = _run(capsys, "soft", photo, "-o", tmp_path / "o", "--features", "embedding")
    assert code == 2
    assert "--features none" in _one_error_line(err)


def test_max_side_resizes_user_features_too(capsys, tmp_path) -> None:
    """Full-size features are brought to the solving size with the image."""
    h, w = 96, 128
    path = tmp_path / "photo.png"
    Image.fromarray(cv2.resize(_scene(), (w, h), interpolation=cv2.INTER_NEAREST)).save(path)
    feats = np.zeros((h, w, 8), np.float32)
    feats[:, : w // 2, 0] = 1.0
    feats[:, w // 2 :, 1] = 1.0
    np.save(tmp_path / "feats.npy", feats)
    out = tmp_path / "o"
    code, _, err = _run(
        capsys, "soft", path, "-o", out, "--layers", 2, "--features", tmp_path / "feats.npy",
        "--max-side", 64,
    )
    assert code == 0, err
    alphas = np.load(out / "alphas.npy")
    assert alphas.shape == (h, w, 2)
    left, right = alphas[:, : w // 4].mean((0, 1)), alphas[:, -w // 4 :].mean((0, 1))
    assert np.argmax(left) != np.argmax(right)
