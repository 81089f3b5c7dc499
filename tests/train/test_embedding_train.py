"""Training data, loop, resume and export of the semantic embedding (tiny synthetic folders)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from finecut.errors import ConfigError, ImageError, WeightsError
from finecut.models.embedding import EmbeddingConfig, SemanticEmbedding, load_embedding_model
from finecut.train.embedding import EmbeddingTrainConfig, poly_lr, train_embedding
from finecut.train.embedding_data import (
    ECSSD_TRAIN_STEMS,
    EmbeddingDataset,
    EmbeddingSource,
    EpochSampler,
    check_paste,
    instance_map,
    label_map_items,
    mask_items,
    mixed_items,
    paste_object,
    source_items,
)
from finecut.train.export import export_embedding_weights, export_refine_weights
from finecut.train.export import main as export_main

TINY_MODEL = EmbeddingConfig(
    branch_channels=(4, 4, 4, 4, 4), head_channels=8, out_dim=16, dropout=0.0
)


def _label_folder(root: Path, n: int = 3, size: tuple[int, int] = (72, 96)) -> Path:
    """CamVid layout: train/images/*.png + train/labels/*.png (class ids, 11 = void)."""
    rng = np.random.default_rng(0)
    (root / "train" / "images").mkdir(parents=True)
    (root / "train" / "labels").mkdir(parents=True)
    h, w = size
    for i in range(n):
        labels = np.zeros((h, w), np.uint8)  # sky
        labels[h // 2 :] = 3  # road
        y, x = int(rng.integers(10, 30)), int(rng.integers(5, 40))
        labels[y : y + 25, x : x + 20] = 8  # a car
        labels[y : y + 25, x + 30 : x + 45] = 8  # a second car
        labels[:, -3:] = 11  # void
        image = np.zeros((h, w, 3), np.uint8)
        image[labels == 0] = (90, 140, 230)
        image[labels == 3] = (70, 70, 70)
        image[labels == 8] = (200, 30, 30)
        image = np.clip(image + rng.integers(0, 20, image.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / "train" / "images" / f"f{i:03d}.png")
        Image.fromarray(labels).save(root / "train" / "labels" / f"f{i:03d}.png")
    return root


def _mask_folder(root: Path, stems: list[str], size: int = 64) -> Path:
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    yy, xx = np.mgrid[:size, :size]
    for stem in stems:
        cy, cx, r = rng.uniform(25, 40), rng.uniform(25, 40), rng.uniform(12, 20)
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2) < r**2
        image = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
        image[mask] += 150
        Image.fromarray(image).save(root / "images" / f"{stem}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"{stem}.png")
    return root


def _config(tmp_path: Path, **kwargs) -> EmbeddingTrainConfig:
    base = dict(
        label_data=str(_label_folder(tmp_path / "labels")),
        mask_data=str(_mask_folder(tmp_path / "masks", ["a", "b"])),
        out=str(tmp_path / "run"),
        model=TINY_MODEL,
        iters=2,
        batch_size=2,
        crop=64,
        n_pixels=20,
        n_samplings=3,
        workers=0,
        ckpt_every=1,
        log_every=1,
        pretrained=False,
        device="cpu",
        threads=1,
    )
    base.update(kwargs)
    return EmbeddingTrainConfig(**base)


# ---------------------------------------------------------------------------------------- data


def test_instance_map_modes() -> None:
    classes = np.zeros((10, 12), np.uint8)  # sky
    classes[:, 6:] = 3  # road ...
    classes[:, 9] = 0  # ... crossed by a strip of sky: sky has two components
    classes[1:4, 1:3] = 8  # two cars of 6 pixels
    classes[6:9, 1:3] = 8
    classes[0, 11] = 11  # void
    mixed = instance_map(classes, mode="mixed", min_component=1)
    assert mixed[0, 11] == -1
    assert len(np.unique(mixed[mixed >= 0])) == 4  # sky, road (stuff: one each), car, car
    assert mixed[2, 2] != mixed[7, 2]
    assert mixed[0, 0] == mixed[0, 9]
    by_class = instance_map(classes, mode="classes")
    assert len(np.unique(by_class[by_class >= 0])) == 3
    assert by_class[2, 2] == by_class[7, 2]
    comps = instance_map(classes, mode="components", min_component=1)
    assert len(np.unique(comps[comps >= 0])) == 6  # sky x2, road x2, car x2
    assert comps[0, 0] != comps[0, 9]
    # components smaller than min_component are ignored
    assert (instance_map(classes, mode="mixed", min_component=7)[classes == 8] == -1).all()
    with pytest.raises(ConfigError):
        instance_map(classes, mode="panoptic")


def test_ecssd_held_out_stems_are_refused(tmp_path: Path) -> None:
    root = _mask_folder(tmp_path / "ECSSD", ["0799", "0800", "0801", "0802"])
    items = mask_items(root)  # default: the stems present among 0001-0800
    assert [it.image.stem for it in items] == ["0799", "0800"]
    assert len(ECSSD_TRAIN_STEMS) == 800
    with pytest.raises(ConfigError, match="held-out"):
        mask_items(root, ("0800", "0801"))
    # other folders have no such rule
    assert len(mask_items(_mask_folder(tmp_path / "other", ["0801", "0900"]))) == 2


def test_label_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="images/"):
        label_map_items(tmp_path, ("train",))
    root = _label_folder(tmp_path / "cv", n=1)
    with pytest.raises(ImageError):
        label_map_items(root, ("val",))
    with pytest.raises(ConfigError, match="label_data"):
        EmbeddingTrainConfig()
    with pytest.raises(ConfigError, match="n_pixels"):
        EmbeddingTrainConfig(label_data=str(root), n_pixels=0)


def test_dataset_items_are_deterministic_and_change_with_the_epoch(tmp_path: Path) -> None:
    items = label_map_items(_label_folder(tmp_path / "cv"))
    items += mask_items(_mask_folder(tmp_path / "m", ["a"]))
    ds = EmbeddingDataset(items, crop=64, seed=3)
    n = len(ds)
    assert n == 4
    for key in range(n):
        image, labels = ds[key]
        assert image.shape == (3, 64, 64) and image.dtype == torch.float32
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        assert labels.shape == (64, 64) and labels.dtype == torch.int64
        assert len(torch.unique(labels[labels >= 0])) >= 2
    a, b = ds[1], ds[1]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    later = [ds[1 + e * n] for e in range(1, 6)]  # same item, later epochs
    assert any(not torch.equal(a[0], c[0]) for c in later)
    assert int(ds[n - 1][1].max()) == 1  # mask items: background 0, object 1


def test_paste_object_known_answer() -> None:
    """A 20x20 object shrunk to a longer side of 10 px: 100 new-instance pixels of its colour,
    everything else untouched; a soft seam is ignored; an empty mask changes nothing."""
    image = np.zeros((64, 64, 3), np.uint8)
    labels = np.zeros((64, 64), np.int64)
    labels[:, 32:] = 1
    src = np.zeros((40, 40, 3), np.uint8)
    src[10:30, 10:30] = (200, 100, 50)
    alpha = np.zeros((40, 40), np.uint8)
    alpha[10:30, 10:30] = 255
    rng = np.random.default_rng(0)
    assert paste_object(image, labels, src, alpha, rng, (10, 10))
    new = labels == 2
    assert new.sum() == 100 and (labels >= 0).all()
    ys, xs = np.nonzero(new)
    assert ys.max() - ys.min() == 9 and xs.max() - xs.min() == 9  # one 10x10 square
    assert (image[new] == (200, 100, 50)).all() and (image[~new] == 0).all()

    soft = np.zeros((40, 40), np.uint8)
    soft[10:30, 10:30] = 255
    soft[10:30, 30:32] = 80  # a seam of alpha 0.31
    image2, labels2 = np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64), np.int64)
    src2 = np.full((40, 40, 3), 250, np.uint8)
    assert paste_object(image2, labels2, src2, soft, np.random.default_rng(1), (22, 22))
    assert (labels2 == 1).sum() == 20 * 20 and (labels2 == -1).sum() == 2 * 20
    assert set(np.unique(image2[labels2 == -1])) == {round(250 * 80 / 255)}

    before = image.copy(), labels.copy()
    assert not paste_object(image, labels, src, np.zeros_like(alpha), rng, (10, 10))
    assert (image == before[0]).all() and (labels == before[1]).all()


def test_dataset_paste_adds_a_small_instance_and_checks_its_settings(tmp_path: Path) -> None:
    labels = label_map_items(_label_folder(tmp_path / "cv"))
    masks = mask_items(_mask_folder(tmp_path / "m", ["a", "b"]))
    plain = EmbeddingDataset(labels + masks, crop=64, seed=3)
    pasted = EmbeddingDataset(
        labels + masks, crop=64, seed=3, paste_prob=1.0, paste_size=(8, 16), paste_max=1
    )
    for key in range(len(plain)):
        la, lb = plain[key][1], pasted[key][1]
        assert int(lb.max()) > int(la.max())  # a new instance on top of the crop's own
        extra = lb > la.max()
        assert 8 <= int(extra.sum()) <= 16 * 16
        assert torch.equal(pasted[key][1], lb)  # deterministic
    with pytest.raises(ConfigError, match="binary-mask"):
        EmbeddingDataset(labels, crop=64, paste_prob=0.5, paste_size=(8, 16))
    for bad in (dict(prob=1.5), dict(size=(2, 10)), dict(size=(40, 30)), dict(size=(8, 99))):
        args = dict(prob=0.5, size=(8, 16), most=1, crop=64) | bad
        with pytest.raises(ConfigError, match="paste"):
            check_paste(args["prob"], args["size"], args["most"], args["crop"])
    with pytest.raises(ConfigError, match="paste_max"):
        check_paste(0.5, (8, 16), 0, 64)
    for prob, size, most in (
        ("high", (8, 16), 1),
        (0.5, 5, 1),
        (0.5, (8.5, 16), 1),
        (0.5, (8, 16), 1.5),
    ):
        with pytest.raises(ConfigError, match="paste"):
            check_paste(prob, size, most, 64)
    with pytest.raises(ConfigError, match="paste_prob"):
        EmbeddingTrainConfig(mask_data="x", paste_prob=float("nan"))


def test_epoch_sampler_resumes_and_shards() -> None:
    full = EpochSampler(7, seed=1)
    it = iter(full)
    seq = [next(it) for _ in range(20)]
    assert sorted(k % 7 for k in seq[:7]) == list(range(7))
    assert [k // 7 for k in seq[:14]] == [0] * 7 + [1] * 7
    it = iter(EpochSampler(7, seed=1, skip=9))
    assert [next(it) for _ in range(11)] == seq[9:]
    r0, r1 = (
        iter(EpochSampler(7, seed=1, rank=0, world_size=2)),
        iter(EpochSampler(7, seed=1, rank=1, world_size=2)),
    )
    a, b = [next(r0) for _ in range(3)], [next(r1) for _ in range(3)]
    assert not set(a) & set(b)
    assert EpochSampler(7, world_size=2).epoch_of(3) == 1


def test_embedding_source_checks() -> None:
    with pytest.raises(ConfigError, match="'labels' or 'masks'"):
        EmbeddingSource("camvid", "x")
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ConfigError, match="weight must be > 0"):
            EmbeddingSource("masks", "x", weight=bad)
    with pytest.raises(ConfigError, match="splits"):
        EmbeddingSource("labels", "x", stems="1-10")
    assert EmbeddingSource("labels", "x", splits=["train", "val"]).splits == ("train", "val")
    assert EmbeddingSource("labels", "x", splits="val").splits == ("val",)


def test_mixed_items_weights_sources_not_items(tmp_path: Path) -> None:
    labels = _label_folder(tmp_path / "camvid", n=3)
    masks = _mask_folder(tmp_path / "duts", [f"m{i}" for i in range(9)])
    (tmp_path / "hold.txt").write_text("m0\nm1\n")
    items, p = mixed_items(
        (
            EmbeddingSource("masks", str(masks), weight=3.0, exclude=str(tmp_path / "hold.txt")),
            EmbeddingSource("labels", str(labels), weight=1.0),
        )
    )
    stems = [it.image.stem for it in items]
    assert len(items) == 7 + 3 and "m0" not in stems and "m1" not in stems
    assert p.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(p[:7], 0.75 / 7)  # the masks' 3 / 4 shared by 7 images
    np.testing.assert_allclose(p[7:], 0.25 / 3)
    assert [it.kind for it in items] == ["mask"] * 7 + ["labels"] * 3
    # stems, and the errors a mix file can cause, each one line
    assert len(source_items(EmbeddingSource("masks", str(masks), stems="m3,m4"))) == 2
    with pytest.raises(ConfigError, match="exclude file"):
        source_items(EmbeddingSource("masks", str(masks), exclude=str(tmp_path / "nope.txt")))
    everything = tmp_path / "all.txt"
    everything.write_text("\n".join(f"m{i}" for i in range(9)))
    with pytest.raises(ConfigError, match="no items left"):
        source_items(EmbeddingSource("masks", str(masks), exclude=str(everything)))
    with pytest.raises(ConfigError, match="no training sources"):
        mixed_items(())
    with pytest.raises(ImageError):
        source_items(EmbeddingSource("labels", str(tmp_path / "missing")))


def test_weighted_sampler_follows_the_weights_resumes_and_shards() -> None:
    n = 10
    w = np.array([0.5] + [0.5 / 9] * 9)
    it = iter(EpochSampler(n, seed=3, weights=w))
    keys = [next(it) for _ in range(4000)]
    index = np.array([k % n for k in keys])
    assert abs((index == 0).mean() - 0.5) < 0.03  # item 0 holds half of the weight
    # every draw gets its own tag, so an item drawn twice gets two different crops
    assert len(set(k // n for k in keys)) == len(keys)
    it = iter(EpochSampler(n, seed=3, weights=w, skip=17))
    assert [next(it) for _ in range(30)] == keys[17:47]
    r0 = iter(EpochSampler(n, seed=3, weights=w, rank=0, world_size=2))
    r1 = iter(EpochSampler(n, seed=3, weights=w, rank=1, world_size=2))
    a, b = [next(r0) for _ in range(50)], [next(r1) for _ in range(50)]
    assert not {k // n for k in a} & {k // n for k in b}
    assert sorted({k // n for k in a} | {k // n for k in b}) == list(range(100))
    with pytest.raises(ValueError, match="weights"):
        EpochSampler(3, weights=np.array([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="weights"):
        EpochSampler(3, weights=np.ones(4))


def test_poly_lr() -> None:
    assert poly_lr(0, 100, 1.0) == 1.0
    assert poly_lr(50, 100, 1.0) == pytest.approx(0.5**0.9)
    assert poly_lr(100, 100, 1.0) == 0.0
    assert poly_lr(0, 100, 1.0, warmup=10) == pytest.approx(0.1)


# ---------------------------------------------------------------------------------------- loop


def test_train_two_iters_writes_checkpoint_and_log_then_resumes(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    last = train_embedding(cfg)
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert state["kind"] == "embedding" and state["step"] == 2
    assert EmbeddingConfig.from_dict(state["config"]["model"]) == TINY_MODEL
    records = [json.loads(line) for line in (Path(cfg.out) / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    for r in records:
        assert np.isfinite(r["loss"]) and r["loss"] > 0
        assert {"intra", "inter", "ratio", "lr", "epoch", "samples_per_s"} <= set(r)
    # a finished run is not trained further
    assert train_embedding(cfg) == last
    assert torch.load(last, weights_only=False)["step"] == 2
    # asking for more resumes from step 2
    train_embedding(replace(cfg, iters=3))
    assert torch.load(last, weights_only=False)["step"] == 3
    records = [json.loads(line) for line in (Path(cfg.out) / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]


def test_resumed_run_equals_an_uninterrupted_one(tmp_path: Path, monkeypatch) -> None:
    straight = _config(tmp_path, out=str(tmp_path / "a"), iters=3)
    train_embedding(straight)

    import finecut.train.embedding as module

    real_save = module.save_checkpoint

    def save_then_crash(path, state):
        real_save(path, state)
        if state["step"] == 2:
            raise KeyboardInterrupt("simulated crash after the step-2 checkpoint")

    crashed = replace(straight, out=str(tmp_path / "b"))
    monkeypatch.setattr(module, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train_embedding(crashed)
    monkeypatch.setattr(module, "save_checkpoint", real_save)
    train_embedding(crashed)
    sa = torch.load(tmp_path / "a" / "last.pt", weights_only=False)
    sb = torch.load(tmp_path / "b" / "last.pt", weights_only=False)
    assert sa["step"] == sb["step"] == 3
    for key in sa["model"]:
        torch.testing.assert_close(sa["model"][key], sb["model"][key], msg=key)
    log_a = [json.loads(x) for x in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    log_b = [json.loads(x) for x in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in log_a] == pytest.approx([r["loss"] for r in log_b], rel=1e-5)


def test_training_lowers_the_loss_on_a_tiny_folder(tmp_path: Path) -> None:
    cfg = _config(
        tmp_path,
        iters=30,
        log_every=1,
        ckpt_every=30,
        lr=3e-3,
        warmup=0,
        mask_data=None,
        n_samplings=2,
    )
    train_embedding(cfg)
    records = [json.loads(line) for line in (Path(cfg.out) / "log.jsonl").read_text().splitlines()]
    first = np.mean([r["loss"] for r in records[:5]])
    final = np.mean([r["loss"] for r in records[-5:]])
    assert final < 0.8 * first


def test_per_sampling_backward_equals_one_backward_of_the_mean_loss() -> None:
    from finecut.models.embedding import gather_pixel_embeddings, npair_l2_loss, sample_pixels
    from finecut.train.embedding import _sampled_loss_backward

    torch.manual_seed(0)
    model = SemanticEmbedding(TINY_MODEL, pretrained=False).eval()
    image = torch.rand(2, 3, 32, 32)
    labels = torch.zeros(2, 32, 32, dtype=torch.long)
    labels[0, :, 16:] = 1
    labels[1, 8:20, 8:20] = 2
    labels[1, :4] = -1
    cfg = EmbeddingTrainConfig(label_data="unused", n_pixels=7, n_samplings=3)

    loss, stats = _sampled_loss_backward(model(image), labels, np.random.default_rng(4), cfg)
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    rng = np.random.default_rng(4)
    feat = model(image)
    losses = []
    for b in range(2):
        for _ in range(3):
            index, lab = sample_pixels(labels[b].numpy(), rng, 3, 7)
            emb = gather_pixel_embeddings(feat[b], torch.from_numpy(index), (32, 32))
            losses.append(npair_l2_loss(emb, torch.from_numpy(lab)))
    want_loss = torch.stack(losses).mean()
    want_loss.backward()
    assert loss == pytest.approx(float(want_loss.detach()), rel=1e-6)
    assert stats["inter"] > 0 and stats["intra"] > 0
    for name, p in model.named_parameters():
        torch.testing.assert_close(got[name], p.grad, rtol=1e-4, atol=1e-7, msg=name)


def test_refine_checkpoint_folder_is_not_resumed(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    Path(cfg.out).mkdir()
    torch.save({"model": {}, "step": 1}, Path(cfg.out) / "last.pt")
    with pytest.raises(ConfigError, match="not an embedding checkpoint"):
        train_embedding(cfg)
    # also with --init: the init is not read, the folder is refused the same way
    torch.save(
        {"kind": "refine", "model": {}, "step": 1, "config": {"model": {"x": 1}}},
        Path(cfg.out) / "last.pt",
    )
    with pytest.raises(ConfigError, match="not an embedding checkpoint"):
        train_embedding(replace(cfg, init="embedding_lite0"))


def test_mix_stop_at_and_resume(tmp_path: Path) -> None:
    sources = (
        EmbeddingSource("masks", str(_mask_folder(tmp_path / "m", ["a", "b", "c"])), weight=2),
        EmbeddingSource("labels", str(_label_folder(tmp_path / "l"))),
    )
    cfg = _config(
        tmp_path,
        label_data=None,
        mask_data=None,
        sources=sources,
        iters=4,
        stop_at=2,
        ckpt_every=100,
        log_every=100,
    )
    last = train_embedding(cfg)
    state = torch.load(last, weights_only=False)
    assert state["step"] == 2  # stopped, checkpoint and log written at the stop
    assert state["config"]["sources"][0]["weight"] == 2
    records = [json.loads(x) for x in (Path(cfg.out) / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2]
    train_embedding(replace(cfg, stop_at=None))
    assert torch.load(last, weights_only=False)["step"] == 4
    with pytest.raises(ConfigError, match="stop_at"):
        replace(cfg, stop_at=5)
    with pytest.raises(ConfigError, match="not both"):
        replace(cfg, mask_data="x")


def test_init_starts_a_new_run_from_trained_weights(tmp_path: Path) -> None:
    first = train_embedding(_config(tmp_path / "one", out=str(tmp_path / "a"), iters=1))
    weights = export_embedding_weights(first, "tiny", directory=tmp_path / "w")
    start = dict(load_embedding_model(weights).named_parameters())  # BN statistics move
    # a model config that differs from the weights' is taken from the weights
    cfg = _config(
        tmp_path / "two",
        out=str(tmp_path / "b"),
        iters=1,
        lr=1e-12,
        warmup=0,
        init=str(weights),
        model=EmbeddingConfig(),
    )
    state = torch.load(train_embedding(cfg), weights_only=False)
    assert EmbeddingConfig.from_dict(state["config"]["model"]) == TINY_MODEL
    for key, value in start.items():  # one step at lr 1e-12 stays at the init weights
        torch.testing.assert_close(state["model"][key], value.detach(), atol=1e-6, rtol=0, msg=key)
    # with last.pt present the run resumes it; the init is not read again
    train_embedding(replace(cfg, iters=2, init=str(tmp_path / "gone.safetensors")))
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=False)["step"] == 2


def test_resume_with_another_model_config_is_refused(tmp_path: Path) -> None:
    cfg = _config(tmp_path, iters=1)
    train_embedding(cfg)
    with pytest.raises(ConfigError, match="another model config"):
        train_embedding(replace(cfg, iters=2, model=replace(TINY_MODEL, out_dim=8)))


# -------------------------------------------------------------------------------------- export


def test_export_and_load(tmp_path: Path) -> None:
    cfg = _config(tmp_path, iters=1)
    last = train_embedding(cfg)
    path = export_embedding_weights(last, "tiny_embed", directory=tmp_path / "w", command="cmd")
    manifest = json.loads(path.with_suffix(".json").read_text())
    assert manifest["model"] == "semantic_embedding" and manifest["step"] == 1
    assert manifest["command"] == "cmd" and len(manifest["sha256"]) == 64
    model = load_embedding_model(path)
    assert isinstance(model, SemanticEmbedding) and not model.training
    ref = load_embedding_model(last)  # the checkpoint loads too
    image = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    np.testing.assert_allclose(model.embed(image), ref.embed(image), atol=1e-6)
    assert model.embed(image).shape == (40, 50, 16)

    # a corrupted file is refused by its sha256
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="sha256"):
        load_embedding_model(path)


def test_load_errors(tmp_path: Path, tiny_crm_weights: Path) -> None:
    with pytest.raises(WeightsError, match="not found"):
        load_embedding_model(tmp_path / "nope.safetensors")
    with pytest.raises(WeightsError, match="no embedded weights"):
        load_embedding_model("no_such_weights_name")
    with pytest.raises(WeightsError, match="semantic_embedding"):
        load_embedding_model(tiny_crm_weights)  # CRM weights are not an embedding
    lonely = tmp_path / "lonely.safetensors"
    lonely.write_bytes(tiny_crm_weights.read_bytes())
    with pytest.raises(WeightsError, match="manifest"):
        load_embedding_model(lonely)
    # weights that do not fit the config
    model = SemanticEmbedding(TINY_MODEL, pretrained=False)
    from finecut.weights import write_weights

    bad = write_weights(
        model.state_dict(),
        "bad",
        {"model": "semantic_embedding", "config": replace(TINY_MODEL, out_dim=8).to_dict()},
        tmp_path / "bad",
    )
    with pytest.raises(WeightsError, match="do not fit"):
        load_embedding_model(bad)
    with pytest.raises(WeightsError, match="embedding checkpoint"):
        torch.save({"model": {}, "step": 1, "config": {}}, tmp_path / "refine.pt")
        load_embedding_model(tmp_path / "refine.pt")


def test_export_cli_tells_the_kinds_apart(tmp_path: Path, capsys) -> None:
    last = train_embedding(_config(tmp_path, iters=1))
    assert export_main([str(last), "--dir", str(tmp_path / "w")]) == 0
    written = Path(capsys.readouterr().out.strip())
    assert written.name == "embedding_lite0.safetensors"
    assert load_embedding_model(written).config == TINY_MODEL
    with pytest.raises(WeightsError, match="refine checkpoint"):
        export_refine_weights(last, "x", directory=tmp_path)
    with pytest.raises(WeightsError, match="embedding checkpoint"):
        torch.save({"model": {}, "step": 1, "config": {"model": {}}}, tmp_path / "r.pt")
        export_embedding_weights(tmp_path / "r.pt", "x", directory=tmp_path)


# ------------------------------------------------------------------------------------ torchrun


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_torchrun_two_cpu_processes(tmp_path: Path) -> None:
    cfg = _config(tmp_path, iters=2, batch_size=2, n_samplings=2)
    script = tmp_path / "run.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import json
            from finecut.models.embedding import EmbeddingConfig
            from finecut.train.embedding import EmbeddingTrainConfig, train_embedding
            data = json.loads({json.dumps(json.dumps(_cfg_dict(cfg)))})
            data["model"] = EmbeddingConfig.from_dict(data["model"])
            train_embedding(EmbeddingTrainConfig(**data))
            """
        )
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(30500 + os.getpid() % 1000),
        str(script),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = torch.load(Path(cfg.out) / "last.pt", map_location="cpu", weights_only=False)
    assert state["step"] == 2
    records = [json.loads(line) for line in (Path(cfg.out) / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]  # only rank 0 logs


def _cfg_dict(cfg: EmbeddingTrainConfig) -> dict:
    from dataclasses import asdict

    data = asdict(cfg)
    data["model"] = cfg.model.to_dict()
    return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}


# ----------------------------------------------------------------------------------- real data


def test_real_data_crops(shared_data: Path) -> None:
    items = label_map_items(shared_data / "camvid", ("train",))
    assert len(items) == 367
    ecssd = mask_items(shared_data / "ecssd")
    assert len(ecssd) == 800 and ecssd[-1].image.stem == "0800"
    ds = EmbeddingDataset(items[:3] + ecssd[:2], crop=256, seed=0)
    for key in range(len(ds)):
        image, labels = ds[key]
        assert image.shape == (3, 256, 256)
        assert len(torch.unique(labels[labels >= 0])) >= 2
