"""finecut export onnx and the onnxruntime backend: same networks, same masks, no torch at run
time, one clear line for every broken folder.

The shipped refiner is exported once per module (1-2 minutes on 2 shared CPU cores).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytest.importorskip("onnx")

from finecut.cli import main  # noqa: E402
from finecut.errors import ConfigError, WeightsError  # noqa: E402
from finecut.models.crm import CRMConfig  # noqa: E402
from finecut.refine import Refiner  # noqa: E402
from finecut.refine.onnx_runner import MANIFEST, NETWORKS, OnnxRunner  # noqa: E402
from finecut.refine.torch_runner import TorchRunner  # noqa: E402
from finecut.weights import load_manifest, sha256_file  # noqa: E402


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped refiner exported by the command line."""
    out = tmp_path_factory.mktemp("onnx") / "crm"
    assert main(["export", "onnx", "-o", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def refiners(onnx_dir: Path) -> tuple[Refiner, Refiner]:
    # the ONNX networks are float32: compare with torch in float32 (the default may be bf16)
    return Refiner("cpu", precision="fp32"), Refiner(onnx=onnx_dir)


def _scene(h: int = 96, w: int = 128) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = (rng.random((h, w, 3)) * 60).astype(np.uint8)
    cv2.ellipse(image, (w // 2, h // 2), (w // 4, h // 4), 0, 0, 360, (220, 200, 180), -1)
    mask = np.zeros((h, w), np.uint8)
    cv2.rectangle(mask, (w // 4, h // 4), (3 * w // 4, 3 * h // 4), 255, -1)
    return image, mask


def test_the_manifest_records_the_export(onnx_dir: Path) -> None:
    manifest = json.loads((onnx_dir / MANIFEST).read_text())
    assert sorted(p.name for p in onnx_dir.iterdir()) == sorted([*NETWORKS.values(), MANIFEST])
    assert manifest["opset"] == 18
    for name, file in NETWORKS.items():
        entry = manifest["networks"][name]
        assert entry["file"] == file
        assert entry["sha256"] == sha256_file(onnx_dir / file)
    assert manifest["networks"]["encoder"]["inputs"] == ["image", "mask"]
    assert manifest["networks"]["encoder"]["outputs"] == ["features"]
    assert manifest["networks"]["head"]["inputs"] == ["features", "coords", "cell", "mask"]
    assert manifest["networks"]["head"]["outputs"] == ["logits"]
    shipped = load_manifest("crm_lite0")
    assert CRMConfig.from_dict(manifest["config"]) == CRMConfig.from_dict(shipped["config"])
    assert manifest["source_weights"] == {"name": "crm_lite0", "sha256": shipped["sha256"]}
    assert manifest["finecut_version"] == __import__("finecut").__version__
    assert manifest["batchnorm_folded"] is True


@pytest.mark.parametrize(("size", "queries"), [((32, 32), 1), ((64, 224), 5000), ((160, 96), 33)])
def test_the_networks_take_any_size(onnx_dir: Path, refiners, size, queries: int) -> None:
    """Image sides any multiple of 32, any number of queries: the same as torch's folded net."""
    rng = np.random.default_rng(size[0])
    image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    mask = np.zeros(size, np.float32)
    mask[size[0] // 4 : size[0] // 2, size[1] // 3 :] = 1.0
    coords = (rng.random((queries, 2)) * 2.2 - 1.1).astype(np.float32)  # a few outside [-1, 1]
    cell = np.array([2.0 / size[0], 2.0 / size[1]], np.float32)
    torch_refiner, onnx_refiner = refiners
    reference, runner = TorchRunner(torch_refiner._net, "cpu"), onnx_refiner._runner
    want_features = reference.encode(image, mask)[0].permute(0, 2, 3, 1).numpy()
    encoded = runner.encode(image, mask)
    assert encoded[0].shape == (1, size[0] // 2, size[1] // 2, 32)
    np.testing.assert_allclose(encoded[0], want_features, atol=1e-4, rtol=1e-4)
    want = reference.query(reference.encode(image, mask), coords, cell)
    got = runner.query(encoded, coords, cell)
    assert got.shape == (queries,) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-4)


def _real_cases(shared_data: Path):
    high = shared_data / "highres"
    from finecut.data.io import read_image, read_mask

    yield "motorbike", read_image(high / "motorbike.jpg"), read_mask(high / "motorbike_coarse.png")
    for stem in ("0801", "0877", "0950"):
        image = read_image(shared_data / "ecssd" / "images" / f"{stem}.jpg")
        truth = read_mask(shared_data / "ecssd" / "masks" / f"{stem}.png") > 127
        # a coarse mask: the ground truth at 1/8 resolution, upsampled and dilated
        h, w = truth.shape
        small = cv2.resize(truth.astype(np.uint8), (w // 8, h // 8), interpolation=cv2.INTER_AREA)
        big = cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)
        yield stem, image, cv2.dilate(big, np.ones((5, 5), np.uint8)) > 0


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def test_onnx_masks_match_torch_on_real_images(shared_data: Path, refiners) -> None:
    torch_refiner, onnx_refiner = refiners
    for name, image, coarse in _real_cases(shared_data):
        for snap in (False, True):
            want = torch_refiner.refine(image, coarse, snap=snap) > 127
            got = onnx_refiner.refine(image, coarse, snap=snap) > 127
            assert _iou(got, want) >= 0.999, (name, snap, _iou(got, want))


def test_the_onnx_path_imports_no_torch(onnx_dir: Path, tmp_path: Path) -> None:
    image, mask = _scene()
    cv2.imwrite(str(tmp_path / "photo.png"), image[..., ::-1])
    cv2.imwrite(str(tmp_path / "rough.png"), mask)
    code = (
        "import sys\n"
        "import numpy as np\n"
        "from finecut.cli import main\n"
        "from finecut.refine import Refiner\n"
        f"d = {str(tmp_path)!r}\n"
        f"refiner = Refiner(backend='onnxruntime', onnx={str(onnx_dir)!r})\n"
        "image = np.zeros((96, 128, 3), np.uint8); image[24:72, 32:96] = 200\n"
        "mask = np.zeros((96, 128), bool); mask[20:70, 30:90] = True\n"
        "out = refiner.refine(image, mask)\n"
        "assert out.shape == (96, 128) and out.dtype == np.uint8\n"
        "rc = main(['refine', d + '/photo.png', '--mask', d + '/rough.png', '-o', d + '/out.png',"
        f" '--onnx', {str(onnx_dir)!r}])\n"
        "print(rc, 'torch' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    assert done.stdout.strip().splitlines()[-1] == "0 False"
    assert (tmp_path / "out.png").is_file()


def test_cli_refine_with_onnx_writes_the_torch_mask(onnx_dir: Path, tmp_path: Path) -> None:
    image, mask = _scene()
    cv2.imwrite(str(tmp_path / "photo.png"), image[..., ::-1])
    cv2.imwrite(str(tmp_path / "rough.png"), mask)
    for name, extra in (("torch.png", []), ("onnx.png", ["--onnx", str(onnx_dir)])):
        argv = ["refine", str(tmp_path / "photo.png"), "--mask", str(tmp_path / "rough.png")]
        assert main([*argv, "-o", str(tmp_path / name), *extra]) == 0
    want = cv2.imread(str(tmp_path / "torch.png"), cv2.IMREAD_GRAYSCALE) > 127
    got = cv2.imread(str(tmp_path / "onnx.png"), cv2.IMREAD_GRAYSCALE) > 127
    assert _iou(got, want) >= 0.999


def _broken(onnx_dir: Path, tmp_path: Path, how: str) -> Path:
    """A copy of the export, broken in one way."""
    if how == "no folder":
        return tmp_path / "nowhere"
    bad = tmp_path / "bad"
    shutil.copytree(onnx_dir, bad)
    manifest = json.loads((bad / MANIFEST).read_text())
    if how == "no manifest":
        (bad / MANIFEST).unlink()
    elif how == "manifest not JSON":
        (bad / MANIFEST).write_text("{not json")
    elif how == "another format":
        (bad / MANIFEST).write_text(json.dumps(dict(manifest, format_version=99)))
    elif how == "missing network":
        (bad / NETWORKS["head"]).unlink()
    elif how == "corrupt network":
        with (bad / NETWORKS["encoder"]).open("ab") as fh:
            fh.write(b"\0")
    elif how == "manifest sha edited":
        manifest["networks"]["head"]["sha256"] = "0" * 64
        (bad / MANIFEST).write_text(json.dumps(manifest))
    return bad


BROKEN = {
    "no folder": "not found",
    "no manifest": "has no manifest.json",
    "manifest not JSON": "cannot be read",
    "another format": "format version 99",
    "missing network": "head.onnx' not found",
    "corrupt network": "encoder.onnx' is corrupt or was replaced: sha256",
    "manifest sha edited": "head.onnx' is corrupt or was replaced: sha256",
}


@pytest.mark.parametrize("how", list(BROKEN))
def test_a_broken_folder_is_one_clear_error(onnx_dir, tmp_path, capsys, how: str) -> None:
    bad = _broken(onnx_dir, tmp_path, how)
    with pytest.raises(WeightsError, match=BROKEN[how]):
        OnnxRunner(bad)
    image, mask = _scene()
    cv2.imwrite(str(tmp_path / "photo.png"), image)
    cv2.imwrite(str(tmp_path / "rough.png"), mask)
    argv = ["refine", str(tmp_path / "photo.png"), "--mask", str(tmp_path / "rough.png")]
    capsys.readouterr()
    assert main([*argv, "-o", str(tmp_path / "out.png"), "--onnx", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("finecut: error: ") and BROKEN[how] in err[0]
    assert not (tmp_path / "out.png").exists()


def test_a_missing_onnxruntime_is_one_clear_error(onnx_dir: Path, tmp_path: Path) -> None:
    image, mask = _scene()
    cv2.imwrite(str(tmp_path / "photo.png"), image)
    cv2.imwrite(str(tmp_path / "rough.png"), mask)
    code = (
        "import sys\n"
        "sys.modules['onnxruntime'] = None  # as if it were not installed\n"
        "from finecut.errors import ConfigError\n"
        "from finecut.refine import Refiner\n"
        "try:\n"
        f"    Refiner(onnx={str(onnx_dir)!r})\n"
        "except ConfigError as exc:\n"
        "    print('raised:', exc)\n"
        "from finecut.cli import main\n"
        f"d = {str(tmp_path)!r}\n"
        "print('rc', main(['refine', d + '/photo.png', '--mask', d + '/rough.png', '-o',"
        f" d + '/out.png', '--onnx', {str(onnx_dir)!r}]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "raised: the onnxruntime backend needs onnxruntime: pip install 'finecut[onnx]'" in (
        done.stdout
    )
    assert "rc 2" in done.stdout
    err = done.stderr.strip().splitlines()
    assert err == [
        "finecut: error: the onnxruntime backend needs onnxruntime: pip install 'finecut[onnx]'"
    ]


def test_refiner_arguments_are_checked(onnx_dir: Path) -> None:
    with pytest.raises(ConfigError, match="needs onnx=DIR"):
        Refiner(backend="onnxruntime")
    with pytest.raises(ConfigError, match="pass neither weights nor a device"):
        Refiner(onnx=onnx_dir, weights="crm_lite0")
    with pytest.raises(ConfigError, match="pass neither weights nor a device"):
        Refiner("cuda", onnx=onnx_dir)
    with pytest.raises(ConfigError, match="not on torch"):
        Refiner(backend="torch", onnx=onnx_dir)
    with pytest.raises(ConfigError, match="unknown backend 'tensorflow'"):
        Refiner(backend="tensorflow")
    with pytest.raises(ConfigError, match="runs in float32, not 'bf16'"):
        Refiner(onnx=onnx_dir, precision="bf16")
    assert Refiner(onnx=onnx_dir, precision="auto").precision == "fp32"


def test_cli_refuses_onnx_with_weights(onnx_dir: Path, tmp_path: Path, capsys) -> None:
    image, mask = _scene()
    cv2.imwrite(str(tmp_path / "photo.png"), image)
    cv2.imwrite(str(tmp_path / "rough.png"), mask)
    argv = ["refine", str(tmp_path / "photo.png"), "--mask", str(tmp_path / "rough.png")]
    argv += ["-o", str(tmp_path / "out.png"), "--onnx", str(onnx_dir), "--weights", "crm_lite0"]
    assert main(argv) == 2
    assert "drop --weights and --device" in capsys.readouterr().err
    argv[-2:] = ["--precision", "bf16"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["finecut: error: --onnx runs in float32: drop --precision"]
    assert not (tmp_path / "out.png").exists()


def test_export_refuses_to_overwrite(onnx_dir: Path, capsys) -> None:
    before = {p.name: sha256_file(p) for p in onnx_dir.iterdir()}
    assert main(["export", "onnx", "-o", str(onnx_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exists (pass --overwrite" in err[0]
    assert {p.name: sha256_file(p) for p in onnx_dir.iterdir()} == before


def test_export_names_missing_packages(tmp_path: Path, monkeypatch, capsys) -> None:
    from finecut.export import onnx as export_onnx_module

    monkeypatch.setattr(export_onnx_module, "missing_requirements", lambda: ["onnxscript"])
    assert main(["export", "onnx", "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "finecut: error: the ONNX export needs onnxscript: pip install 'finecut[onnx]'"
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_export_of_other_weights_without_coarse_skip(tmp_path: Path) -> None:
    """--weights: a model of another config (no coarse skip: the head does not use the mask)."""
    import torch

    from finecut.export import export_onnx
    from finecut.models.crm import CRM
    from finecut.weights import write_weights

    torch.manual_seed(0)
    config = CRMConfig(latent_channels=48, hidden=(16, 16), coarse_skip=False)
    model = CRM(config, pretrained=False)
    with torch.no_grad():
        model.mlp[-1].weight.normal_(0.0, 1.0)
    weights = write_weights(model.state_dict(), "mine", {"config": config.to_dict()}, tmp_path)
    manifest = json.loads(export_onnx(tmp_path / "onnx", weights=weights).read_text())
    # torch 2.13's exporter keeps the unused mask input; the runner feeds it either way
    assert manifest["networks"]["head"]["inputs"][:3] == ["features", "coords", "cell"]
    assert manifest["source_weights"] == {
        "file": "mine.safetensors",
        "sha256": sha256_file(weights),
    }
    image, mask = _scene()
    torch_fp32 = Refiner("cpu", weights=weights, precision="fp32")
    want = torch_fp32.refine(image, mask, soft=True, snap=False)
    got = Refiner(onnx=tmp_path / "onnx").refine(image, mask, soft=True, snap=False)
    np.testing.assert_allclose(got, want, atol=1e-4)
