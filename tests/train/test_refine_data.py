"""Training pairs for refinement: deterministic per (seed, epoch, index), new crops every epoch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from finecut.data.folders import find_pairs
from finecut.train.common import DistInfo
from finecut.train.refine import RefineTrainConfig, _batches, _make_loader
from finecut.train.refine_data import MaskPairDataset
from tests.train.test_refine_ddp import _tiny_folder


def _epoch_items(root: Path, workers: int, epochs: int = 2) -> list[torch.Tensor]:
    pairs = find_pairs(root)
    dataset = MaskPairDataset(pairs, crop=64, seed=0)
    cfg = RefineTrainConfig(data=str(root), batch_size=len(pairs), workers=workers, crop=64)
    loader = _make_loader(dataset, cfg, DistInfo(), torch.device("cpu"))
    out = []
    for epoch, (image, coarse, _gt) in _batches(loader, dataset, 0):
        if epoch >= epochs:
            break
        # sort the batch by content so that the sampler's order does not matter
        key = image.flatten(1).sum(1)
        out.append(torch.cat([image.flatten(1), coarse.flatten(1)], 1)[key.argsort()])
    return out


def test_every_epoch_draws_new_crops_with_worker_processes(tmp_path: Path) -> None:
    root = _tiny_folder(tmp_path / "data", n=4)
    first, second = _epoch_items(root, workers=1)
    assert not torch.equal(first, second)


def test_items_are_deterministic_given_seed_epoch_index(tmp_path: Path) -> None:
    root = _tiny_folder(tmp_path / "data", n=3)
    a = MaskPairDataset(find_pairs(root), crop=64, seed=0)
    b = MaskPairDataset(find_pairs(root), crop=64, seed=0)
    a.set_epoch(3)
    b.set_epoch(3)
    for x, y in zip(a[1], b[1], strict=True):
        assert torch.equal(x, y)
    b.set_epoch(4)
    assert not all(torch.equal(x, y) for x, y in zip(a[1], b[1], strict=True))
    image, coarse, gt = a[0]
    assert image.shape == (3, 64, 64) and coarse.shape == gt.shape == (1, 64, 64)
    assert set(np.unique(gt.numpy())) <= {0.0, 1.0}
