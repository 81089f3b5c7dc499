"""`torchrun` data-parallel training of the refiner: CPU, gloo backend, 2 processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


def _tiny_folder(root: Path, n: int = 4, size: int = 96) -> Path:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        cy, cx, r = rng.uniform(35, 60), rng.uniform(35, 60), rng.uniform(18, 30)
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2) < r**2
        image = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
        image[mask] += 150
        Image.fromarray(image).save(root / "images" / f"{i:04d}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"{i:04d}.png")
    return root


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_torchrun_two_cpu_processes_train_and_checkpoint(tmp_path: Path) -> None:
    data = _tiny_folder(tmp_path / "data")
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_port", str(29500 + os.getpid() % 1000), "-m", "finecut",
        "train", "refine", "--data", str(data), "--out", str(out), "--no-pretrained",
        "--iters", "2", "--batch-size", "4", "--crop", "64", "--workers", "0",
        "--ckpt-every", "1", "--device", "cpu", "--threads", "1",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
    assert state["step"] == 2
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    # only rank 0 logs; with 2 ranks x 2 samples each, throughput counts both ranks' samples
    assert [r["step"] for r in records] == [2]
    assert all(np.isfinite(r["loss"]) for r in records)
