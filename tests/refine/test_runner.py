"""The Runner interface: the torch runner feeds CRM exactly what inference fed it before runners
existed, any Runner drives the same inference, and the inference modules import no torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from finecut.models.crm import CRM, CRMConfig
from finecut.refine.inference import InferenceConfig, _pad_to, refine_probability
from finecut.refine.runner import Runner
from finecut.refine.torch_runner import TorchRunner

from .test_inference import _scene


@pytest.fixture(scope="module")
def model() -> CRM:
    torch.manual_seed(0)
    net = CRM(CRMConfig(), pretrained=False)
    with torch.no_grad():
        net.mlp[-1].weight.normal_(0.0, 1.0)  # not the identity
    return net.eval()


def _torch_pad(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """What inference did before the runners: F.pad of (B, C, H, W) tensors."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if (ph < h and pw < w) else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x


@pytest.mark.parametrize("size", [(64, 96), (45, 70), (10, 70), (33, 5), (1, 1)])
def test_numpy_padding_equals_torch_padding(size) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    mask = (rng.random(size) > 0.5).astype(np.float32)
    got_image, got_mask = _pad_to(image, 32), _pad_to(mask, 32)
    assert got_image.shape[:2] == got_mask.shape == tuple(-(-s // 32) * 32 for s in size)
    want_image = _torch_pad(torch.from_numpy(image).permute(2, 0, 1)[None].float(), 32)
    want_mask = _torch_pad(torch.from_numpy(mask)[None, None], 32)
    np.testing.assert_array_equal(got_image.transpose(2, 0, 1)[None], want_image.numpy())
    np.testing.assert_array_equal(got_mask[None, None], want_mask.numpy())


@pytest.mark.parametrize("size", [(45, 70), (10, 70)])
def test_torch_runner_feeds_the_model_what_inference_fed_it(model: CRM, size) -> None:
    """Same features and probabilities, bit for bit, as the code before the runners."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    mask = (rng.random(size) > 0.5).astype(np.float32)
    runner = TorchRunner(model)
    encoded = runner.encode(_pad_to(image, 32), _pad_to(mask, 32))
    coords = (rng.random((300, 2)) * 2.0 - 1.0).astype(np.float32)
    cell = np.array([2.0 / 64, 2.0 / 96], np.float32)
    got = runner.query(encoded, coords, cell)

    img = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
    msk = torch.from_numpy(mask)[None, None]
    img, msk = _torch_pad(img, 32), _torch_pad(msk, 32)
    with torch.no_grad():
        cell_feat = model.encode(img.contiguous(memory_format=torch.channels_last), msk)
        points = torch.from_numpy(coords).unsqueeze(0)
        sizes = torch.tensor([float(cell[0]), float(cell[1])]).expand_as(points)
        want = torch.sigmoid(model.query(cell_feat, points, sizes, msk)[0]).numpy()
    assert torch.equal(encoded[0], cell_feat)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.float32 and got.shape == (300,)


def test_a_model_and_its_runner_give_the_same_refinement(model: CRM) -> None:
    image, coarse = _scene(90, 120, seed=3)
    cfg = InferenceConfig(min_side=8, tile_area=48 * 48, tile=32, margin=8)  # tiles too
    want = refine_probability(model, image, coarse, cfg)
    got = refine_probability(TorchRunner(model), image, coarse, cfg)
    np.testing.assert_array_equal(got, want)


class _Recorder(Runner):
    """A runner that says 'foreground' inside a disk and records what it is given."""

    def __init__(self) -> None:
        self.regions: list[tuple[tuple[int, ...], np.dtype, np.dtype]] = []

    def encode(self, image, mask):
        self.regions.append((image.shape, image.dtype, mask.dtype))
        return mask.shape

    def query(self, encoded, coords, cell):
        assert coords.dtype == np.float32 and cell.dtype == np.float32 and cell.shape == (2,)
        return (np.hypot(coords[:, 0], coords[:, 1]) < 0.5).astype(np.float32)


def test_any_runner_drives_the_inference() -> None:
    image, coarse = _scene(64, 64, seed=4)
    runner = _Recorder()
    prob = refine_probability(runner, image, coarse, InferenceConfig(scales=(1.0,)))
    assert prob.shape == (64, 64) and prob.dtype == np.float32
    for shape, image_dtype, mask_dtype in runner.regions:
        assert shape[0] % 32 == 0 and shape[1] % 32 == 0 and shape[2] == 3
        assert image_dtype == np.uint8 and mask_dtype == np.float32
    # band pixels took the runner's disk, the image's centre is inside it
    assert prob[32, 32] == 1.0


def test_the_inference_path_imports_no_torch() -> None:
    code = (
        "import sys\n"
        "import finecut.refine.api, finecut.refine.inference, finecut.refine.onnx_runner\n"
        "from finecut.refine import Refiner, InferenceConfig\n"
        "print('torch' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "False"


def test_bf16_runner_encodes_in_bfloat16_and_queries_in_float32(model: CRM) -> None:
    """precision="bf16": the encoder's features are those of the encoder under bfloat16
    autocast, handed on as float32, and they stay close to float32's (the head is float32)."""
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    mask = (rng.random((64, 96)) > 0.5).astype(np.float32)
    fp32, bf16 = TorchRunner(model), TorchRunner(model, precision="bf16")
    feat32, _ = fp32.encode(image, mask)
    feat16, _ = bf16.encode(image, mask)
    assert feat16.dtype == torch.float32
    img = torch.from_numpy(image).permute(2, 0, 1)[None].float().div(255.0)
    img = img.contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = model.encode(img, torch.from_numpy(mask)[None, None])
    assert want.dtype == torch.bfloat16
    assert torch.equal(feat16, want.float())
    assert not torch.equal(feat16, feat32)  # it did run in bfloat16
    scale = float(feat32.abs().max())
    assert float((feat16 - feat32).abs().max()) < 0.05 * scale
    coords = (rng.random((200, 2)) * 2.0 - 1.0).astype(np.float32)
    cell = np.array([2.0 / 64, 2.0 / 96], np.float32)
    p32 = fp32.query(fp32.encode(image, mask), coords, cell)
    p16 = bf16.query(bf16.encode(image, mask), coords, cell)
    assert p16.dtype == np.float32
    assert np.abs(p16 - p32).max() < 0.05


def test_runner_rejects_an_unknown_precision(model: CRM) -> None:
    with pytest.raises(ValueError, match="precision"):
        TorchRunner(model, precision="fp16")
