"""train segment: data, config files, a 3-step run, resume, prune, the CLI handlers."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from finecut.errors import ConfigError, ImageError, WeightsError
from finecut.models.segmenter import CAMVID_CLASSES, SegmenterConfig
from finecut.segment.commands import add_parsers
from finecut.train.segment import (
    SegmentTrainConfig,
    load_train_config,
    save_train_config,
    segment_loss,
    train_segment,
)
from finecut.train.segment_data import SegmentDataset, photometric, segment_items
from tests.segment._synthetic import VOID, write_camvid


@pytest.fixture
def camvid(tmp_path: Path) -> Path:
    return write_camvid(tmp_path / "camvid", {"train": 4, "val": 2}, size=(48, 64))


def _cfg(data: Path, out: Path, **changes) -> SegmentTrainConfig:
    base = SegmentTrainConfig(
        data=str(data),
        out=str(out),
        model=SegmenterConfig(downsample="poly", search=True),
        iters=3,
        batch_size=2,
        crop=(48, 48),
        scale_range=(0.75, 1.25),
        workers=0,
        pretrained=False,
        ckpt_every=2,
        log_every=1,
        device="cpu",
        threads=1,
    )
    return replace(base, **changes)


def _steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]


def test_dataset_items_and_augmentation(camvid: Path) -> None:
    items = segment_items(camvid, "train")
    assert [i.stem for i in items] == [f"train_{k:03d}" for k in range(4)]
    data = SegmentDataset(items, crop=(40, 56), scale_range=(0.5, 0.6), seed=1)
    image, labels = data[2]
    assert image.shape == (3, 40, 56) and image.dtype == torch.float32
    assert labels.shape == (40, 56) and labels.dtype == torch.int64
    assert 0 <= float(image.min()) and float(image.max()) <= 1
    assert (labels == VOID).any()  # padding (scaled image smaller than the crop) is void
    again, same = data[2]
    torch.testing.assert_close(image, again)
    torch.testing.assert_close(labels, same)
    other, _ = data[2 + len(data)]  # same image, next epoch
    assert not torch.equal(image, other)
    whole, whole_labels = SegmentDataset(items, crop=None)[0]
    assert whole.shape == (3, 48, 64) and whole_labels.shape == (48, 64)


def test_photometric_changes_light_not_geometry() -> None:
    rng = np.random.default_rng(0)
    image = np.zeros((40, 60, 3), np.uint8)
    image[:, 30:] = (200, 120, 40)  # an orange right half, a black left one
    image[10:20, 5:25] = 90
    assert photometric(image, 0.0, rng) is image  # strength 0: untouched, nothing drawn
    assert rng.random() == np.random.default_rng(0).random()
    outs = [photometric(image, 1.0, np.random.default_rng([3, k])) for k in range(40)]
    for out in outs:
        assert out.shape == image.shape and out.dtype == np.uint8
    # deterministic given the generator's state
    np.testing.assert_array_equal(outs[5], photometric(image, 1.0, np.random.default_rng([3, 5])))
    # it varies light and colour: the orange half's mean moves by several grey levels ...
    means = np.array([o[:, 40:].reshape(-1, 3).mean(0) for o in outs])
    assert means.std(0).min() > 5
    # ... and keeps the geometry: the edge between the halves stays at column 30 on average
    grad = np.mean([np.abs(np.diff(o.astype(float).mean(2), axis=1)).mean(0) for o in outs], 0)
    assert int(np.argmax(grad[26:34])) + 26 == 29
    # a stronger setting moves the light further
    strong = [photometric(image, 2.0, np.random.default_rng([3, k])) for k in range(40)]
    assert np.array([o[:, 40:].mean() for o in strong]).std() > means.mean(1).std()
    with pytest.raises(ValueError, match="strength must be >= 0"):
        photometric(image, -0.1, rng)


def test_dataset_photometric_keeps_crops_and_labels(camvid: Path) -> None:
    items = segment_items(camvid, "train")
    plain = SegmentDataset(items, crop=(40, 56), scale_range=(0.8, 1.2), seed=1)
    lit = SegmentDataset(items, crop=(40, 56), scale_range=(0.8, 1.2), seed=1, photometric=1.0)
    changed = 0
    for k in range(8):
        (a, la), (b, lb) = plain[k], lit[k]
        torch.testing.assert_close(la, lb)  # the same crop and flip: only the light differs
        changed += int(not torch.equal(a, b))
    assert changed >= 6
    with pytest.raises(ValueError, match="photometric must be >= 0"):
        SegmentDataset(items, photometric=-1.0)


def test_missing_listed_stem(camvid: Path) -> None:
    (camvid / "val.txt").write_text("val_000\nnope\n")
    with pytest.raises(ImageError, match="nope"):
        segment_items(camvid, "val")


def test_loss_ignores_void() -> None:
    logits = torch.randn(1, 11, 4, 4, requires_grad=True)
    labels = torch.full((1, 4, 4), VOID)
    loss = segment_loss(logits, labels)
    assert float(loss.detach()) == 0.0
    loss.backward()
    labels[0, 0, 0] = 3
    expected = torch.nn.functional.cross_entropy(logits[:, :, 0, 0], torch.tensor([3]))
    torch.testing.assert_close(segment_loss(logits, labels), expected)


def test_train_config_yaml_round_trip(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path / "d", tmp_path / "o")
    path = save_train_config(tmp_path / "train.yaml", cfg)
    assert load_train_config(path) == cfg
    assert load_train_config(path, iters=7, out=None).iters == 7
    path.write_text(path.read_text() + "epochs: 3\n")
    with pytest.raises(ConfigError, match="unknown training config keys: epochs"):
        load_train_config(path)
    with pytest.raises(ConfigError, match="unknown segmenter config keys: pooling"):
        SegmentTrainConfig.from_dict({"data": "x", "model": {"pooling": "max"}})
    with pytest.raises(ConfigError, match="optimizer"):
        replace(cfg, optimizer="lbfgs")


def test_three_steps_checkpoint_and_resume(camvid: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    last = train_segment(_cfg(camvid, out))
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["kind"] == "segment" and state["step"] == 3
    assert _steps(out) == [1, 2, 3]
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) and "sparse_loss" in r for r in records)
    assert 0 <= records[-1]["val_miou"] <= 1  # evaluated on val at the end
    assert (out / "config.yaml").is_file()
    weights = [v for k, v in state["model"].items() if k.endswith("connection_weights")]
    assert weights and all(float(w.min()) >= 0 and float(w.max()) <= 2 for w in weights)

    train_segment(_cfg(camvid, out, iters=5))  # resumes at step 3
    assert torch.load(last, map_location="cpu", weights_only=True)["step"] == 5
    assert _steps(out) == [1, 2, 3, 4, 5]

    other = _cfg(camvid, out, iters=6, model=SegmenterConfig(downsample="max"))
    with pytest.raises(ConfigError, match="another model config"):
        train_segment(other)


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_config_rejects_bad_loss_and_stop_at(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="loss must be one of ce, mfb, ohem"):
        _cfg(tmp_path, tmp_path / "o", loss="focal")
    with pytest.raises(ConfigError, match="stop_at must be in 1..iters"):
        _cfg(tmp_path, tmp_path / "o", stop_at=4)
    with pytest.raises(ConfigError, match="ohem_thresh"):
        _cfg(tmp_path, tmp_path / "o", ohem_thresh=1.5)
    with pytest.raises(ConfigError, match="photometric must be in"):
        _cfg(tmp_path, tmp_path / "o", photometric=3.0)


def test_stages_of_one_schedule_and_a_resume_on_another_machine(
    camvid: Path, tmp_path: Path
) -> None:
    from finecut.train.embedding import poly_lr

    out = tmp_path / "a" / "run"
    cfg = _cfg(camvid, out, iters=4, stop_at=2, model=SegmenterConfig())
    train_segment(cfg)  # stage 1: steps 1-2 of a 4-step schedule, validated at its end
    records = _records(out)
    assert [r["step"] for r in records] == [1, 2]
    assert records[-1]["lr"] == pytest.approx(poly_lr(1, 4, cfg.lr, cfg.poly_power))
    assert 0 <= records[-1]["val_miou"] <= 1
    assert set(records[-1]["val_iou"]) == {
        "Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
        "Pedestrian", "Bicyclist",
    }  # fmt: skip
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 2

    # "another machine": the run and the data folders moved; stage 2 resumes from the copy
    moved_out, moved_data = tmp_path / "b" / "run", tmp_path / "b" / "camvid"
    shutil.copytree(out, moved_out)
    shutil.copytree(camvid, moved_data)
    shutil.rmtree(out)
    shutil.rmtree(camvid)
    train_segment(replace(cfg, data=str(moved_data), out=str(moved_out), stop_at=None))
    assert _steps(moved_out) == [1, 2, 3, 4]
    assert torch.load(moved_out / "last.pt", weights_only=True)["step"] == 4


def test_init_from_weights_model_only(camvid: Path, tmp_path: Path, caplog) -> None:
    from finecut.segment.predict import export_segmenter

    first = _cfg(camvid, tmp_path / "first", iters=2, model=SegmenterConfig(downsample="max"))
    source = train_segment(first)
    trained = torch.load(source, weights_only=True)["model"]
    exported = export_segmenter(source, tmp_path / "exported" / "seg")

    # the init weights' model config wins over the one given, with a warning
    second = _cfg(camvid, tmp_path / "second", iters=3, stop_at=1, init=str(exported),
                  val_split=None, lr=1e-12)  # fmt: skip
    with caplog.at_level("WARNING"):
        train_segment(second)
    assert "its own model config" in caplog.text
    state = torch.load(tmp_path / "second" / "last.pt", weights_only=True)
    assert state["step"] == 1  # a fresh schedule
    assert state["config"]["model"]["downsample"] == "max"
    assert load_train_config(tmp_path / "second" / "config.yaml").model.downsample == "max"
    key = "encoder.stem.conv.layer.weight"
    assert key in trained
    torch.testing.assert_close(state["model"][key], trained[key], atol=1e-6, rtol=0)
    assert len(state["optimizer"]["state"]) > 0  # the optimiser started anew: one step of state

    # resuming needs no init file any more (another machine may not have it)
    shutil.rmtree(tmp_path / "exported")
    train_segment(replace(second, stop_at=None))
    assert _steps(tmp_path / "second") == [1, 2, 3]

    # an embedded name
    from finecut.train.segment import _init_model

    model, cfg = _init_model(replace(second, init="segmenter_camvid"), tmp_path / "x.pt", "cpu")
    assert cfg.model == model.config and cfg.model.downsample == "strided"


def test_init_adds_an_spn_head_that_starts_as_the_identity(
    camvid: Path, tmp_path: Path, caplog
) -> None:
    from finecut.segment.predict import export_segmenter, load_segmenter
    from finecut.train.segment import _init_model, with_spn_head

    plain = SegmenterConfig(downsample="max")
    source = train_segment(_cfg(camvid, tmp_path / "first", iters=2, model=plain))
    exported = export_segmenter(source, tmp_path / "exported" / "seg")
    init = load_segmenter(str(exported), device="cpu")

    headed = replace(init.config, spn_head=True, spn_channels=8)
    assert with_spn_head(init.config, headed) == headed
    assert with_spn_head(init.config, init.config) is None  # no head asked for
    assert with_spn_head(headed, headed) is None  # the init has one already
    assert with_spn_head(init.config, replace(headed, decoder_channels=32)) is None

    cfg = _cfg(camvid, tmp_path / "second", iters=2, init=str(exported), model=headed,
               val_split=None)  # fmt: skip
    model, run_cfg = _init_model(cfg, tmp_path / "second" / "last.pt", torch.device("cpu"))
    assert run_cfg.model == headed and model.spn is not None
    old = init.state_dict()
    for key, value in model.state_dict().items():
        if key.startswith("spn."):
            assert key not in old
        else:
            torch.testing.assert_close(value, old[key], atol=0, rtol=0)
    model.eval()
    image = torch.rand(1, 3, 48, 64)
    with torch.no_grad():  # the new head's last conv is zero: the same logits
        torch.testing.assert_close(model(image), init(image), atol=1e-5, rtol=0)

    # a run trains the head and keeps it on resume, with no init file any more
    train_segment(replace(cfg, stop_at=1))
    shutil.rmtree(tmp_path / "exported")
    train_segment(cfg)
    state = torch.load(tmp_path / "second" / "last.pt", weights_only=True)
    assert state["step"] == 2 and state["config"]["model"]["spn_head"] is True
    assert any(key.startswith("spn.") for key in state["model"])

    # any other change of architecture still trains the init's own config, with a warning
    other = replace(cfg, out=str(tmp_path / "third"), init=str(source),
                    model=replace(headed, downsample="avg"))  # fmt: skip
    with caplog.at_level("WARNING"):
        model, run_cfg = _init_model(other, tmp_path / "third" / "last.pt", torch.device("cpu"))
    assert "its own model config" in caplog.text
    assert model.spn is None and run_cfg.model == init.config


def test_mfb_loss_trains_and_caches_weights(camvid: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "mfb"
    train_segment(_cfg(camvid, out, iters=1, loss="mfb", val_split=None))
    cache = json.loads((out / "class_weights.json").read_text())
    assert len(cache["weights"]) == 11 and cache["images"] == 4
    assert np.isfinite(_records(out)[-1]["loss"])

    import finecut.train.segment as segment_module

    def no_counting(*args, **kwargs):
        raise AssertionError("the cached weights should be used")

    monkeypatch.setattr(segment_module, "class_pixel_counts", no_counting)
    train_segment(_cfg(camvid, out, iters=2, loss="mfb", val_split=None))
    assert _steps(out) == [1, 2]


def test_ohem_loss_trains(camvid: Path, tmp_path: Path) -> None:
    out = tmp_path / "ohem"
    train_segment(_cfg(camvid, out, iters=1, loss="ohem", ohem_min_kept=500, val_split=None))
    assert np.isfinite(_records(out)[-1]["loss"])


def test_real_camvid_class_weights(shared_data: Path) -> None:
    from finecut.train.segment import class_weights

    items = segment_items(shared_data / "camvid", "train")
    weights = dict(zip(CAMVID_CLASSES, class_weights(items, 11, VOID), strict=True))
    for thin in ("Pole", "SignSymbol", "Pedestrian", "Bicyclist"):
        assert weights[thin] > 1 > max(weights["Road"], weights["Sky"], weights["Building"])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="finecut")
    sub = parser.add_subparsers(dest="command")
    train = sub.add_parser("train").add_subparsers(dest="what")
    evaluate = sub.add_parser("eval").add_subparsers(dest="what")
    add_parsers(train, evaluate, sub)
    return parser


def _run(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    return args.func(args)


def test_cli_handlers_train_eval_segment_prune(camvid: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "search"
    config = save_train_config(tmp_path / "search.yaml", _cfg(camvid, out, iters=2))
    assert _run(["train", "segment", "--config", str(config), "--no-pretrained"]) == 0
    last = out / "last.pt"

    assert _run(["eval", "segment", "--data", str(camvid), "--split", "val",
                 "--weights", str(last), "--device", "cpu"]) == 0  # fmt: skip
    assert "mIoU" in capsys.readouterr().out

    image = camvid / "val" / "images" / "val_000.png"
    label_path = tmp_path / "pred" / "val_000.png"
    assert _run(["segment", str(image), "-o", str(label_path), "--weights", str(last),
                 "--device", "cpu"]) == 0  # fmt: skip
    from finecut.data.io import read_image, read_mask

    assert read_mask(label_path).shape == (48, 64) and read_mask(label_path).max() <= 10
    assert read_image(tmp_path / "pred" / "val_000_overlay.png").shape == (48, 64, 3)

    # prune: zero most connection weights of the searched decoder first
    state = torch.load(last, map_location="cpu", weights_only=True)
    for key, w in state["model"].items():
        if key.endswith("connection_weights"):
            w.zero_()
            w[:2] = 1.0
    torch.save(state, last)
    pruned_yaml = tmp_path / "pruned.yaml"
    assert _run(["prune", "--checkpoint", str(last), "-o", str(pruned_yaml)]) == 0
    pruned = load_train_config(pruned_yaml)
    assert pruned.model.decoder == "pruned" and not pruned.model.search
    assert pruned.out == f"{out}_pruned"
    assert len(pruned.model.graph.stages) < 5

    # retrain the pruned decoder from its config for one step
    assert _run(["train", "segment", "--config", str(pruned_yaml), "--iters", "1"]) == 0
    assert torch.load(Path(pruned.out) / "last.pt", weights_only=True)["step"] == 1

    with pytest.raises(WeightsError, match="weights file .*nope.pt' not found"):
        _run(["train", "segment", "--config", str(pruned_yaml), "--out", str(tmp_path / "new"),
              "--init", str(tmp_path / "nope.pt")])  # fmt: skip
    with pytest.raises(WeightsError, match="no embedded segmenter named 'nope'"):
        _run(["train", "segment", "--config", str(pruned_yaml), "--out", str(tmp_path / "new"),
              "--init", "nope"])  # fmt: skip

    with pytest.raises(ConfigError, match="not trained in search mode"):
        _run(["prune", "--checkpoint", str(Path(pruned.out) / "last.pt"), "-o",
              str(tmp_path / "x.yaml")])  # fmt: skip


DDP_SCRIPT = """
import sys
from finecut.train.segment import load_train_config, train_segment
train_segment(load_train_config(sys.argv[1]))
"""


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_torchrun_two_cpu_processes(camvid: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    config = save_train_config(tmp_path / "ddp.yaml", _cfg(camvid, out, iters=2, batch_size=4))
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_port", str(29600 + os.getpid() % 1000), str(script), str(config),
    ]  # fmt: skip
    # keep a PYTHONPATH given to pytest (a checkout's src/ ahead of an installed finecut)
    paths = [str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(filter(None, paths)))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert torch.load(out / "last.pt", map_location="cpu", weights_only=True)["step"] == 2
    assert _steps(out) == [1, 2]  # rank 0 only


def test_real_camvid_layout(shared_data: Path) -> None:
    from finecut.train.segment_data import load_pair

    root = shared_data / "camvid"
    counts = {split: len(segment_items(root, split)) for split in ("train", "val", "test")}
    assert counts == {"train": 367, "val": 101, "test": 233}
    image, labels = load_pair(segment_items(root, "test")[0], num_classes=11)
    assert image.shape == (360, 480, 3) and labels.shape == (360, 480)
    assert labels.min() >= 0 and labels.max() <= VOID


@pytest.mark.parametrize(
    "path",
    sorted((Path(__file__).parents[2] / "configs" / "segment").glob("*.yaml")),
    ids=lambda p: p.name,
)
def test_shipped_configs_load(path: Path) -> None:
    cfg = load_train_config(path)
    assert cfg.data.endswith("camvid") and cfg.out.startswith("runs/camvid/")


def test_shipped_configs_load_and_the_restart_config_continues_the_schedule() -> None:
    """Every configs/segment/*.yaml loads. camvid_from_shipped.yaml starts from the shipped
    weights: while the shipped weights are a step inside the stage-1 schedule (read from the
    manifest: that schedule's run folder, a step before its end), its lr is that schedule's from
    the shipped step on; once the schedule has run out or a later cycle is shipped, it is a new
    cycle (warm-up, a lower peak lr than the first cycle's, its own run folder)."""
    from finecut.train.embedding import poly_lr
    from finecut.weights import load_manifest

    root = Path(__file__).resolve().parents[2] / "configs" / "segment"
    configs = {p.name: load_train_config(p) for p in sorted(root.glob("*.yaml"))}
    assert "camvid_stage1.yaml" in configs and "camvid_from_shipped.yaml" in configs
    full, restart = configs["camvid_stage1.yaml"], configs["camvid_from_shipped.yaml"]
    manifest = load_manifest("segmenter_camvid")
    shipped = manifest["step"]
    assert restart.init == "segmenter_camvid"
    in_first_schedule = manifest["train_config"]["out"] == full.out and shipped < full.iters
    if not in_first_schedule:
        assert restart.warmup > 0 and 0 < restart.lr < full.lr
        assert restart.out != full.out, "a new cycle must not resume the first one's last.pt"
        assert poly_lr(restart.iters - 1, restart.iters, restart.lr, restart.poly_power, 0) < 1e-4
        return
    assert restart.warmup == 0
    assert restart.iters == full.iters - shipped
    for t in (0, 100, 500, restart.iters - 1):
        expected = poly_lr(shipped + t, full.iters, full.lr, full.poly_power, full.warmup)
        got = poly_lr(t, restart.iters, restart.lr, restart.poly_power, restart.warmup)
        assert got == pytest.approx(expected, rel=2e-3), t
