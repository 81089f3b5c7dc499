"""The embedded refinement weights: present, checked by sha256, traceable, and still good.

The quality test runs the shipped model on held-out ECSSD images (801-1000 are never trained on)
with the benchmark's fixed-seed coarse masks and holds it to the values recorded in
docs/benchmarks.md, minus a small margin for float differences between machines.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from finecut.refine.api import DEFAULT_WEIGHTS, load_refiner_model
from finecut.weights import WEIGHTS_DIR, load_manifest, sha256_file

# ECSSD 801-830, seed 0, native resolution, embedded crm_lite0 (docs/benchmarks.md)
RECORDED = {"coarse_iou": 0.891724, "coarse_mba": 0.649775, "iou": 0.941820, "mba": 0.772218}
MARGIN = 0.005


def test_manifest_names_its_file_sha_config_and_command() -> None:
    manifest = load_manifest(DEFAULT_WEIGHTS)
    path = WEIGHTS_DIR / manifest["file"]
    assert path.is_file()
    assert sha256_file(path) == manifest["sha256"]
    assert manifest["config"]["encoder"] == "efficientnet_lite0"
    assert "finecut train refine" in manifest["command"]
    assert "ecssd" in json.dumps(manifest["train_config"]).lower()
    stems = manifest["train_config"]["stems"]
    assert stems and max(int(s) for s in stems) <= 800, "ECSSD 801-1000 must never be trained on"


def test_embedded_model_loads_on_cpu() -> None:
    model = load_refiner_model(None, "cpu")
    assert not model.training
    assert all(np.isfinite(p.detach().numpy()).all() for p in model.parameters())


def test_quality_held_on_heldout_ecssd(shared_data) -> None:
    from finecut.refine.evaluate import evaluate_refine

    rows = evaluate_refine(
        shared_data / "ecssd", methods=["finecut"], stems=[f"{i:04d}" for i in range(801, 831)],
        seed=0, device="cpu",
    )
    coarse, finecut = rows
    assert coarse.iou == pytest.approx(RECORDED["coarse_iou"], abs=1e-6)
    assert coarse.mba == pytest.approx(RECORDED["coarse_mba"], abs=1e-6)
    assert finecut.iou >= RECORDED["iou"] - MARGIN
    assert finecut.mba >= RECORDED["mba"] - MARGIN
    assert finecut.iou > coarse.iou and finecut.mba > coarse.mba
