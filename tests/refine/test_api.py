from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import finecut
from finecut.errors import ConfigError, ImageError, WeightsError
from finecut.models.crm import CRM, CRMConfig
from finecut.refine.api import Refiner, as_mask, as_rgb, load_refiner_model
from finecut.refine.inference import InferenceConfig
from finecut.train.common import save_checkpoint
from finecut.weights import write_weights

# ------------------------------------------------------------------------------------- as_rgb


def test_as_rgb_uint8_rgb_is_kept() -> None:
    image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    out = as_rgb(image)
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
    np.testing.assert_array_equal(out, image)


@pytest.mark.parametrize("shape", [(5, 7), (5, 7, 1)])
def test_as_rgb_grey_is_replicated(shape) -> None:
    grey = np.arange(35, dtype=np.uint8).reshape(shape)
    out = as_rgb(grey)
    assert out.shape == (5, 7, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey.reshape(5, 7))


def test_as_rgb_drops_alpha() -> None:
    rgba = np.random.default_rng(1).integers(0, 256, (4, 6, 4), dtype=np.uint8)
    rgba[..., 3] = 0  # fully transparent: the colour is still what comes back
    out = as_rgb(rgba)
    assert out.shape == (4, 6, 3)
    np.testing.assert_array_equal(out, rgba[..., :3])
    assert out.flags.c_contiguous


def test_as_rgb_uint16_is_divided_by_257() -> None:
    image = np.array([[0, 128, 129, 257, 32896, 65535]], dtype=np.uint16)
    out = as_rgb(image)
    np.testing.assert_array_equal(out[0, :, 0], [0, 0, 1, 1, 128, 255])


def test_as_rgb_float_is_taken_as_unit_range() -> None:
    image = np.array([[0.0, 0.5, 1.0, -0.3, 2.0, 0.2]], dtype=np.float32)
    out = as_rgb(image)
    np.testing.assert_array_equal(out[0, :, 0], [0, 128, 255, 0, 255, 51])
    np.testing.assert_array_equal(as_rgb(image.astype(np.float64)), out)


def test_as_rgb_bool() -> None:
    np.testing.assert_array_equal(as_rgb(np.array([[True, False]]))[0, :, 1], [255, 0])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_as_rgb_non_finite_is_refused(bad) -> None:
    image = np.zeros((3, 3, 3), np.float32)
    image[1, 1, 1] = bad
    with pytest.raises(ImageError, match="NaN or infinite"):
        as_rgb(image)


@pytest.mark.parametrize("dtype", [np.int32, np.int8, np.complex64])
def test_as_rgb_bad_dtype_is_refused(dtype) -> None:
    with pytest.raises(ImageError, match="dtype"):
        as_rgb(np.zeros((3, 3, 3), dtype=dtype))


@pytest.mark.parametrize("shape", [(3, 3, 2), (3, 3, 5), (3,), (2, 3, 3, 3), (0, 4, 3)])
def test_as_rgb_bad_shape_is_refused(shape) -> None:
    with pytest.raises(ImageError, match="shape"):
        as_rgb(np.zeros(shape, np.uint8))


# ------------------------------------------------------------------------------------ as_mask


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (np.array([[0, 127, 128, 255]], np.uint8), [False, False, True, True]),
        (np.array([[0, 32767, 32768, 65535]], np.uint16), [False, False, True, True]),
        (np.array([[0.0, 0.4999, 0.5, 1.0]], np.float32), [False, False, True, True]),
        (np.array([[0.0, 0.4999, 0.5, 7.0]], np.float64), [False, False, True, True]),
        (np.array([[0, -1, 100, 300]], np.int64), [False, False, True, True]),
        (np.array([[0, 1, 1, 0]], np.uint8), [False, True, True, False]),
        (np.array([[0, 1, 1, 0]], np.uint16), [False, True, True, False]),
        (np.array([[0, 1, 1, 0]], np.int32), [False, True, True, False]),
        (np.array([[False, True, False, True]]), [False, True, False, True]),
    ],
)
def test_as_mask_binarises_by_dtype(values, expected) -> None:
    out = as_mask(values)
    assert out.dtype == bool and out.shape == (1, 4)
    np.testing.assert_array_equal(out[0], expected)


def test_as_mask_zero_one_uint8_is_binary_even_when_full() -> None:
    assert as_mask(np.ones((2, 3), np.uint8)).all()
    assert not as_mask(np.zeros((2, 3), np.uint8)).any()


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32])
def test_as_mask_label_map_is_refused(dtype) -> None:
    labels = np.array([[0, 1], [2, 3]], dtype)
    with pytest.raises(ImageError, match=r"4 values \(0, 1, 2, 3\).*label map.*refine_instances"):
        as_mask(labels)


def test_as_mask_soft_8bit_mask_is_thresholded_at_127() -> None:
    soft = np.arange(256, dtype=np.uint8).reshape(16, 16)  # anti-aliased edge: every grey level
    np.testing.assert_array_equal(as_mask(soft), soft > 127)
    faint_edges = np.array([[0, 3, 60, 200, 255]], np.uint8)  # few grey levels, max > 64
    np.testing.assert_array_equal(as_mask(faint_edges), [[False, False, False, True, True]])


def test_as_mask_accepts_a_trailing_channel() -> None:
    mask = np.array([[0, 200], [255, 3]], np.uint8)[..., None]
    np.testing.assert_array_equal(as_mask(mask), [[False, True], [True, False]])


@pytest.mark.parametrize("shape", [(3, 3, 3), (9,), (2, 3, 3, 1)])
def test_as_mask_bad_shape_is_refused(shape) -> None:
    with pytest.raises(ImageError, match="mask must be"):
        as_mask(np.zeros(shape, np.uint8))


def test_as_mask_bad_dtype_is_refused() -> None:
    with pytest.raises(ImageError, match="dtype"):
        as_mask(np.zeros((3, 3), np.complex64))


# ------------------------------------------------------------------------------------ Refiner


def _scene(h: int = 64, w: int = 80) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = (rng.random((h, w, 3)) * 50).astype(np.uint8)
    cv2.circle(image, (w // 2, h // 2), min(h, w) // 3, (230, 210, 190), -1)
    mask = np.zeros((h, w), np.uint8)
    cv2.rectangle(mask, (w // 2 - 18, h // 2 - 20), (w // 2 + 20, h // 2 + 17), 255, -1)
    return image, mask


@pytest.fixture(scope="module")
def refiner(tiny_crm_weights: Path) -> Refiner:
    # no snapping: these tests check the CRM path, which returns the coarse mask for the tiny
    # weights; snapping is tested in tests/refine/test_snap.py
    return Refiner(weights=tiny_crm_weights, device="cpu", config=InferenceConfig(snap=False))


def test_refine_returns_a_binary_mask_of_the_image_size(refiner: Refiner) -> None:
    image, mask = _scene()
    out = refiner.refine(image, mask)
    assert out.dtype == np.uint8 and out.shape == mask.shape
    assert set(np.unique(out)) <= {0, 255}
    # the tiny weights are untrained with coarse_skip: the coarse mask comes back exactly
    np.testing.assert_array_equal(out, mask)


def test_refine_soft_is_a_probability(refiner: Refiner) -> None:
    image, mask = _scene(48, 72)
    prob = refiner.refine(image, mask > 0, soft=True)
    assert prob.dtype == np.float32 and prob.shape == (48, 72)
    assert prob.min() >= 0.0 and prob.max() <= 1.0
    np.testing.assert_array_equal(prob > 0.5, mask > 0)
    # band pixels were queried: sigmoid(+-3), not the 0 / 1 of the input
    assert ((prob > 0.0) & (prob < 1.0)).any()


def test_refine_accepts_every_image_and_mask_form(refiner: Refiner) -> None:
    image, mask = _scene()
    ref = refiner.refine(image, mask)
    np.testing.assert_array_equal(
        refiner.refine(image.astype(np.float32) / 255.0, mask / 255.0), ref
    )
    np.testing.assert_array_equal(refiner.refine(image.astype(np.uint16) * 257, mask > 127), ref)
    rgba = np.dstack([image, np.full(mask.shape, 255, np.uint8)])
    np.testing.assert_array_equal(refiner.refine(rgba, mask[..., None]), ref)
    np.testing.assert_array_equal(refiner.refine(image[..., 0], mask), ref)


def test_refine_reads_a_zero_one_mask_like_0_255(refiner: Refiner) -> None:
    image, mask = _scene()
    ref = refiner.refine(image, mask)
    np.testing.assert_array_equal(refiner.refine(image, (mask > 0).astype(np.uint8)), ref)
    assert ref.any()


@pytest.mark.parametrize("fill", [0, 255])
def test_empty_and_full_masks_are_returned_unchanged(refiner: Refiner, fill: int) -> None:
    image, _ = _scene()
    mask = np.full(image.shape[:2], fill, np.uint8)
    with pytest.warns(UserWarning, match="empty" if fill == 0 else "full"):
        out = refiner.refine(image, mask)
    np.testing.assert_array_equal(out, mask)
    with pytest.warns(UserWarning):
        soft = refiner.refine(image, mask, soft=True)
    np.testing.assert_array_equal(soft, mask / 255.0)
    assert soft.dtype == np.float32


def test_mask_of_another_size_is_refused(refiner: Refiner) -> None:
    image, _ = _scene(64, 80)
    with pytest.raises(ImageError) as info:
        refiner.refine(image, np.zeros((50, 60), np.uint8))
    assert "60x50" in str(info.value) and "80x64" in str(info.value)


def test_one_call_refine(tiny_crm_weights: Path) -> None:
    image, mask = _scene()
    assert callable(finecut.refine)
    crm_only = InferenceConfig(snap=False)
    out = finecut.refine(image, mask, weights=tiny_crm_weights, device="cpu", config=crm_only)
    np.testing.assert_array_equal(out, mask)
    snapped = finecut.refine(image, mask, weights=tiny_crm_weights, device="cpu")
    assert snapped.shape == mask.shape and set(np.unique(snapped)) <= {0, 255}
    soft = finecut.refine(image, mask, weights=str(tiny_crm_weights), device="cpu", soft=True)
    bf16 = finecut.refine(image, mask, weights=tiny_crm_weights, device="cpu", precision="bf16")
    assert bf16.shape == mask.shape and set(np.unique(bf16)) <= {0, 255}
    assert soft.dtype == np.float32
    assert isinstance(finecut.Refiner(weights=tiny_crm_weights, device="cpu"), Refiner)


def test_refiner_precision(tiny_crm_weights: Path) -> None:
    """precision picks the encoder's arithmetic; bf16 refines too (the tiny weights give the
    coarse mask back either way), an unknown name is a clear error."""
    image, mask = _scene()
    crm_only = InferenceConfig(snap=False)
    bf16 = Refiner(weights=tiny_crm_weights, device="cpu", config=crm_only, precision="bf16")
    assert bf16.precision == "bf16" and bf16._runner.precision == "bf16"
    np.testing.assert_array_equal(bf16.refine(image, mask), mask)
    fp32 = Refiner(weights=tiny_crm_weights, device="cpu", precision="fp32")
    assert fp32._runner.precision == "fp32"
    with pytest.raises(ConfigError, match="unknown precision 'half'"):
        Refiner(weights=tiny_crm_weights, device="cpu", precision="half")


# ------------------------------------------------------------------------------------ weights


def _copy_weights(src: Path, dest_dir: Path, *, manifest: bool = True) -> Path:
    dest = dest_dir / src.name
    shutil.copyfile(src, dest)
    if manifest:
        shutil.copyfile(src.with_suffix(".json"), dest.with_suffix(".json"))
    return dest


def test_loaded_weights_are_the_written_ones(tiny_crm_weights: Path) -> None:
    torch.manual_seed(0)
    original = CRM(CRMConfig(), pretrained=False)
    loaded = load_refiner_model(tiny_crm_weights)
    assert not loaded.training
    for (name, a), (_, b) in zip(
        original.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_corrupted_weights_are_refused(tiny_crm_weights: Path, tmp_path: Path) -> None:
    path = _copy_weights(tiny_crm_weights, tmp_path)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=r"corrupt: sha256"):
        Refiner(weights=path, device="cpu")


def test_truncated_weights_are_refused(tiny_crm_weights: Path, tmp_path: Path) -> None:
    path = _copy_weights(tiny_crm_weights, tmp_path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(WeightsError, match="corrupt"):
        load_refiner_model(path)


def test_missing_manifest_is_refused(tiny_crm_weights: Path, tmp_path: Path) -> None:
    path = _copy_weights(tiny_crm_weights, tmp_path, manifest=False)
    with pytest.raises(WeightsError, match=r"manifest tiny\.json"):
        Refiner(weights=path, device="cpu")


def test_missing_weights_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="not found"):
        Refiner(weights=tmp_path / "nothing.safetensors", device="cpu")


def test_unknown_embedded_name_is_refused() -> None:
    with pytest.raises(WeightsError, match="no embedded weights named 'no_such_model'"):
        Refiner(weights="no_such_model", device="cpu")


def test_weights_that_do_not_fit_the_config_are_refused(
    tiny_crm_weights: Path, tmp_path: Path
) -> None:
    path = _copy_weights(tiny_crm_weights, tmp_path)
    manifest = json.loads(path.with_suffix(".json").read_text())
    manifest["config"]["latent_channels"] = 32
    path.with_suffix(".json").write_text(json.dumps(manifest))
    with pytest.raises(WeightsError, match="do not fit") as info:
        load_refiner_model(path)
    message = str(info.value)
    assert "\n" not in message  # one line: the CLI prints it as is
    assert "size mismatch for fuse.0.weight" in message and "more)" in message


def test_a_training_checkpoint_works(tiny_crm_weights: Path, tmp_path: Path) -> None:
    torch.manual_seed(1)
    cfg = CRMConfig(latent_channels=48, hidden=(16, 16))
    model = CRM(cfg, pretrained=False)
    with torch.no_grad():
        model.mlp[-1].weight.normal_(0.0, 1.0)  # not the identity, so the result is its own
    ckpt = tmp_path / "run" / "last.pt"
    save_checkpoint(
        ckpt, {"model": model.state_dict(), "step": 7, "config": {"model": cfg.to_dict()}}
    )
    refiner = Refiner(weights=ckpt, device="cpu", precision="fp32")  # as the model below
    assert refiner.model.config == cfg
    image, mask = _scene()
    from finecut.refine.inference import refine_probability

    want = refine_probability(model.eval(), image, mask > 127, refiner.config)
    got = refiner.refine(image, mask, soft=True, snap=False)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_a_foreign_checkpoint_is_refused(tmp_path: Path) -> None:
    ckpt = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, ckpt)
    with pytest.raises(WeightsError, match="not a finecut refine checkpoint"):
        Refiner(weights=ckpt, device="cpu")
    ckpt.write_bytes(b"not a pickle at all")
    with pytest.raises(WeightsError, match="cannot be read"):
        Refiner(weights=ckpt, device="cpu")


def test_write_weights_manifest_records_the_sha256(tiny_crm_weights: Path, tmp_path: Path) -> None:
    from finecut.weights import sha256_file

    manifest = json.loads(tiny_crm_weights.with_suffix(".json").read_text())
    assert manifest["file"] == "tiny.safetensors"
    assert manifest["sha256"] == sha256_file(tiny_crm_weights)
    path = write_weights({"w": torch.ones(2)}, "x", {"model": "crm"}, directory=tmp_path / "new")
    assert path == tmp_path / "new" / "x.safetensors" and path.with_suffix(".json").is_file()


def test_refiner_precision_none_is_the_default(tiny_crm_weights: Path, monkeypatch) -> None:
    """precision=None (what the CLI passes when --precision is not given) resolves
    DEFAULT_PRECISION, whatever that is."""
    import finecut.refine.api as api

    monkeypatch.setattr(api, "DEFAULT_PRECISION", "bf16")
    assert Refiner(weights=tiny_crm_weights, device="cpu").precision == "bf16"
    monkeypatch.setattr(api, "DEFAULT_PRECISION", "fp32")
    assert Refiner(weights=tiny_crm_weights, device="cpu", precision=None).precision == "fp32"
