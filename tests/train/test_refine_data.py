"""Training pairs for refinement: deterministic per (seed, epoch, index), new crops every epoch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
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


def _tiny_camvid(root: Path, n: int = 2, h: int = 72, w: int = 96) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train",):
        (root / split / "images").mkdir(parents=True)
        (root / split / "labels").mkdir(parents=True)
        stems = [f"f{i}" for i in range(n)]
        (root / f"{split}.txt").write_text("\n".join(stems))
        for stem in stems:
            labels = np.zeros((h, w), np.uint8)
            labels[10:60, 20:23] = 2  # a pole
            labels[40:65, 50:90] = 8  # a car
            Image.fromarray(labels).save(root / split / "labels" / f"{stem}.png")
            img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
            Image.fromarray(img).save(root / split / "images" / f"{stem}.jpg")
    return root


def test_mixed_dataset_is_deterministic_and_keeps_soft_targets(tmp_path: Path) -> None:
    from PIL import Image

    from finecut.train.refine_data import MixedRefineDataset, RefineSource

    root = _tiny_folder(tmp_path / "data", n=3)
    # a soft edge, as DUTS-TR masks have
    soft = np.array(Image.open(root / "masks" / "0000.png")).astype(np.float32)
    soft = (np.clip(soft, 0, 255) * 0.5 + 60).astype(np.uint8)
    soft[soft == 60] = 0
    Image.fromarray(soft).save(root / "masks" / "0000.png")
    camvid = _tiny_camvid(tmp_path / "camvid")
    sources = [RefineSource("masks", str(root), 0.5), RefineSource("camvid", str(camvid), 0.5)]
    a = MixedRefineDataset(sources, crop=64, epoch_size=12, seed=0)
    b = MixedRefineDataset(sources, crop=64, epoch_size=12, seed=0)
    assert len(a) == 12 and len(a.items[1]) == 4  # two components in each of two frames
    values = set()
    for i in range(12):
        for x, y in zip(a[i], b[i], strict=True):
            assert torch.equal(x, y)
        image, coarse, gt = a[i]
        assert image.shape == (3, 64, 64) and coarse.shape == gt.shape == (1, 64, 64)
        assert set(np.unique(coarse.numpy())) <= {0.0, 1.0}
        assert 0 <= gt.min() and gt.max() <= 1
        values |= set(np.unique(gt.numpy()).round(3))
    assert len(values) > 2  # soft targets stay soft
    b.set_epoch(1)
    assert not torch.equal(a[0][0], b[0][0])


def test_mix_yaml_rejects_unknown_keys(tmp_path: Path) -> None:
    from finecut.cli import _read_mix
    from finecut.errors import ConfigError
    from finecut.train.refine_data import RefineSource

    path = tmp_path / "mix.yaml"
    path.write_text("sources:\n  - {kind: masks, path: x, wieght: 1}\n")
    with pytest.raises(ConfigError, match="bad source"):
        _read_mix(path, RefineSource, ("epoch_size", "max_scale"))
    path.write_text("sources: []\nepochs: 3\n")
    with pytest.raises(ConfigError, match="unknown keys"):
        _read_mix(path, RefineSource, ("epoch_size", "max_scale"))


def test_missing_source_files_are_one_config_error(tmp_path: Path) -> None:
    from finecut.errors import ConfigError, ImageError
    from finecut.train.refine_data import MixedRefineDataset, RefineSource

    root = _tiny_folder(tmp_path / "data", n=2)
    with pytest.raises(ConfigError, match="no-such-list"):
        missing = str(tmp_path / "no-such-list")
        MixedRefineDataset([RefineSource("masks", str(root), exclude=missing)])
    with pytest.raises(ConfigError, match="train.txt"):
        MixedRefineDataset([RefineSource("camvid", str(tmp_path / "nowhere"))])
    with pytest.raises(ImageError, match="must contain"):
        MixedRefineDataset([RefineSource("masks", str(tmp_path / "nowhere"))])


def test_masks_source_uses_the_shared_reader_ecssd_held_out_and_exclude(tmp_path: Path) -> None:
    from finecut.errors import ConfigError
    from finecut.train.refine_data import MixedRefineDataset, RefineSource

    root = _tiny_folder(tmp_path / "ecssd", n=3)  # stems 0000-0002, renamed to 0799-0801
    for old, new in (("0002", "0801"), ("0001", "0800"), ("0000", "0799")):
        for sub in ("images", "masks"):
            (root / sub / f"{old}.png").rename(root / sub / f"{new}.png")
    stems = lambda ds: sorted(p[0].stem for p in ds.items[0])  # noqa: E731
    assert stems(MixedRefineDataset([RefineSource("masks", str(root))])) == ["0799", "0800"]
    with pytest.raises(ConfigError, match="held-out"):
        MixedRefineDataset([RefineSource("masks", str(root), stems="799-801")])
    (tmp_path / "hold.txt").write_text("0800\n")
    ds = MixedRefineDataset([RefineSource("masks", str(root), exclude=str(tmp_path / "hold.txt"))])
    assert stems(ds) == ["0799"]


def test_mix_options_of_the_wrong_type_or_range_are_one_config_error(tmp_path: Path) -> None:
    """epoch_size and max_scale, from a --mix YAML or Python, are refused by name (the twin of
    check_paste), not a TypeError deep in the data loader."""
    from finecut.errors import ConfigError
    from finecut.train.refine import RefineTrainConfig
    from finecut.train.refine_data import MixedRefineDataset, RefineSource, check_mix_options

    check_mix_options(4000, 6.0)
    check_mix_options(1, 1.5)
    for epoch_size, max_scale, name in (
        (1.5, 6.0, "epoch_size"),
        (0, 6.0, "epoch_size"),
        ("4000", 6.0, "epoch_size"),
        (True, 6.0, "epoch_size"),
        (4000, "big", "max_scale"),
        (4000, 1.0, "max_scale"),
        (4000, float("nan"), "max_scale"),
        (4000, 100, "max_scale"),
    ):
        with pytest.raises(ConfigError, match=name):
            check_mix_options(epoch_size, max_scale)
        with pytest.raises(ConfigError, match=name):
            RefineTrainConfig(epoch_size=epoch_size, max_scale=max_scale)
    source = RefineSource(kind="masks", path=str(tmp_path / "none"))
    with pytest.raises(ConfigError, match="max_scale"):  # checked before the sources are read
        MixedRefineDataset([source], max_scale=0.5)


def test_cli_mix_option_of_the_wrong_type_is_one_line(tmp_path: Path, capsys) -> None:
    from finecut.cli import main

    mix = tmp_path / "mix.yaml"
    mix.write_text(f"sources:\n  - {{kind: masks, path: {tmp_path}}}\nmax_scale: big\n")
    code = main(["train", "refine", "--mix", str(mix), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code != 0
    assert "max_scale must be a number" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_native_artefacts_blur_and_compress_the_source_before_resizing(tmp_path: Path) -> None:
    """native_artefacts=1 degrades every item's source image at its own size; 0 (the default)
    draws nothing extra, so older mixes keep their exact crops and coarse masks."""
    from finecut.train.refine_data import MixedRefineDataset, RefineSource, native_artefacts

    rng = np.random.default_rng(0)
    image = np.zeros((64, 64, 3), np.uint8)
    image[:, 32:] = 255
    out = native_artefacts(image, rng)
    assert out.shape == image.shape and out.dtype == np.uint8
    row = out[32].astype(int).mean(axis=1)
    assert 0 < row[31] < 255 and 0 < row[32] < 255  # the step edge is soft now
    assert abs(row[:20].mean()) < 8 and abs(row[44:].mean() - 255) < 8  # flat parts stay

    root = _tiny_folder(tmp_path / "data", n=2)
    sources = [RefineSource("masks", str(root))]
    plain = MixedRefineDataset(sources, crop=64, epoch_size=6, seed=0)
    off = MixedRefineDataset(sources, crop=64, epoch_size=6, seed=0, p_native_artefacts=0.0)
    on = MixedRefineDataset(sources, crop=64, epoch_size=6, seed=0, p_native_artefacts=1.0)
    on2 = MixedRefineDataset(sources, crop=64, epoch_size=6, seed=0, p_native_artefacts=1.0)
    for i in range(6):
        assert all(torch.equal(x, y) for x, y in zip(plain[i], off[i], strict=True))
        assert all(torch.equal(x, y) for x, y in zip(on[i], on2[i], strict=True))
    # rough images (the tiny folder's are noise) lose most of their pixel-to-pixel variation
    tv = lambda t: (t[0][:, :, 1:] - t[0][:, :, :-1]).abs().mean().item()  # noqa: E731
    assert np.mean([tv(on[i]) for i in range(6)]) < 0.7 * np.mean([tv(off[i]) for i in range(6)])


def test_native_artefacts_out_of_range_is_one_config_error(tmp_path: Path) -> None:
    from finecut.cli import main
    from finecut.errors import ConfigError
    from finecut.train.refine import RefineTrainConfig
    from finecut.train.refine_data import check_mix_options

    check_mix_options(4000, 6.0, 0.35)
    for bad in (-0.1, 1.5, "some", float("nan"), True):
        with pytest.raises(ConfigError, match="native_artefacts"):
            RefineTrainConfig(native_artefacts=bad)
    mix = tmp_path / "mix.yaml"
    mix.write_text(f"sources:\n  - {{kind: masks, path: {tmp_path}}}\nnative_artefacts: 2\n")
    assert main(["train", "refine", "--mix", str(mix), "--out", str(tmp_path / "run")]) != 0
    assert not (tmp_path / "run").exists()
