"""load_segmenter / export_segmenter: checkpoints, exported files, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from finecut.errors import WeightsError
from finecut.models.segmenter import Segmenter, SegmenterConfig
from finecut.segment.predict import (
    DEFAULT_WEIGHTS,
    export_segmenter,
    load_segmenter,
    segment_image,
)
from finecut.weights import WEIGHTS_DIR


def _checkpoint(path: Path) -> Segmenter:
    torch.manual_seed(0)
    model = Segmenter(SegmenterConfig(downsample="avg", spn_head=True), pretrained=False)
    state = {"kind": "segment", "model": model.state_dict(), "step": 1,
             "config": {"model": model.config.to_dict()}}  # fmt: skip
    torch.save(state, path)
    return model.eval()


def test_checkpoint_and_export_round_trip(tmp_path: Path) -> None:
    model = _checkpoint(tmp_path / "last.pt")
    loaded = load_segmenter(tmp_path / "last.pt", device="cpu")
    assert not loaded.training and loaded.config == model.config
    exported = export_segmenter(tmp_path / "last.pt", tmp_path / "out" / "camvid.safetensors")
    assert exported.suffix == ".safetensors" and exported.with_suffix(".json").is_file()
    again = load_segmenter(exported, device="cpu")
    image = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(again(image), model(image))
        torch.testing.assert_close(loaded(image), model(image))
    photo = np.random.default_rng(0).integers(0, 255, (30, 50, 3), dtype=np.uint8)
    assert segment_image(again, photo).shape == (30, 50)


def test_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="not found"):
        load_segmenter(tmp_path / "missing.pt")
    torch.save({"kind": "embedding", "model": {}}, tmp_path / "other.pt")
    with pytest.raises(WeightsError, match="not a segmenter checkpoint"):
        load_segmenter(tmp_path / "other.pt")
    _checkpoint(tmp_path / "last.pt")
    exported = export_segmenter(tmp_path / "last.pt", tmp_path / "m.safetensors")
    exported.write_bytes(exported.read_bytes()[:-10])  # corrupt: sha256 no longer matches
    with pytest.raises(WeightsError, match="corrupt"):
        load_segmenter(exported)
    if not (WEIGHTS_DIR / f"{DEFAULT_WEIGHTS}.safetensors").is_file():
        with pytest.raises(WeightsError, match="--weights"):
            load_segmenter(None)


def test_export_command_records_provenance(tmp_path: Path) -> None:
    """`python -m finecut.train.export` tells a segment checkpoint apart and records its run."""
    import json

    from finecut.train.export import main as export_main

    model = _checkpoint(tmp_path / "last.pt")
    assert export_main([str(tmp_path / "last.pt"), "--name", "seg", "--dir", str(tmp_path),
                        "--command", "finecut train segment --config x.yaml",
                        "--machine", "2 CPU cores"]) == 0  # fmt: skip
    manifest = json.loads((tmp_path / "seg.json").read_text())
    assert manifest["model"] == "segmenter" and manifest["step"] == 1
    assert manifest["command"] == "finecut train segment --config x.yaml"
    assert manifest["machine"] == "2 CPU cores"
    loaded = load_segmenter(tmp_path / "seg.safetensors", device="cpu")
    image = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(loaded(image), model(image))
