"""Train the per-pixel semantic embedding of semantic soft segmentation.

Recipe (Aksoy et al. 2018, supplementary section 1; METHODS.md section 5): for every image of a
batch, ``n_samplings`` (10) times draw ``n_instances`` (P_inst = 3) instances and ``n_pixels``
(P_pix) pixels in each (:func:`~finecut.models.embedding.sample_pixels`), evaluate the L2 N-pair
loss on their features (:func:`~finecut.models.embedding.npair_l2_loss`) and average; the
gradients of all samplings are accumulated into one update, as in the paper. The network runs
once per batch: its output map is detached, each sampling back-propagates into that map alone
(so at most one N x N distance matrix is alive at a time), and the summed map gradient then goes
through the network in a single backward (DDP reduces it as usual).

Optimiser: Adam, the encoder at ``encoder_lr_scale`` (0.1) of the new layers' rate (the paper:
5e-4 vs 5e-3 with SGD), poly decay with power 0.9 (the paper's) after a linear warm-up. Encoder
BatchNorm layers keep their ImageNet statistics by default (batches of 4 crops are too small to
estimate them). Checkpoints are written atomically to ``<out>/last.pt`` every ``ckpt_every``
steps and at the end; a run resumes from it exactly (data order and pixel sampling are functions
of the seed and the step). The curve goes to ``<out>/log.jsonl``: loss, and the mean scaled
squared distance within (``intra``) and between (``inter``) instances of the sampled pixels.

P_pix: the paper's 1000 per instance makes each sampling a 3000 x 3000 distance matrix; on a CPU
the 10 x batch matrices cost more than the network, so the CPU-friendly default here is 250.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from finecut.errors import ConfigError
from finecut.models.embedding import (
    EmbeddingConfig,
    SemanticEmbedding,
    gather_pixel_embeddings,
    npair_l2_loss,
    pair_distance_stats,
    sample_pixels,
)
from finecut.train.common import (
    JsonlLogger,
    cleanup_distributed,
    resume,
    save_checkpoint,
    start_training_process,
)
from finecut.train.embedding_data import (
    CAMVID_VOID,
    EmbeddingDataset,
    EmbeddingSource,
    EpochSampler,
    LabelledImage,
    check_paste,
    label_map_items,
    mask_items,
    mixed_items,
)

log = logging.getLogger(__name__)

__all__ = ["EmbeddingTrainConfig", "build_items", "poly_lr", "train_embedding"]


@dataclass(frozen=True)
class EmbeddingTrainConfig:
    """Settings of :func:`train_embedding`: ``sources`` (a weighted mix), or at least one of
    ``label_data`` / ``mask_data`` (all items drawn alike).

    Attributes:
        label_data: folder in CamVid layout, ``{split}/images`` + ``{split}/labels`` (class ids).
        label_splits: which splits of ``label_data`` to train on.
        mask_data: folder with ``images/`` + ``masks/`` (binary objects, e.g. ECSSD; for a
            folder named ``ecssd`` only stems 0001-0800 are allowed, the default).
        mask_stems: stems of ``mask_data`` to use (default: all, or 0001-0800 for ECSSD).
        sources: weighted training sources (:class:`EmbeddingSource`); excludes
            ``label_data`` / ``mask_data``.
        init: start from these weights (embedded name, ``.safetensors`` with manifest, or a
            ``.pt`` checkpoint) with a fresh optimiser and schedule; the model config is the
            weights'. Ignored when ``out/last.pt`` exists (the run resumes).
        out: run folder (``last.pt``, ``log.jsonl``).
        model: the network.
        iters: optimiser steps (the length of the lr schedule).
        stop_at: end this run after this step (checkpoint written) although the schedule runs
            to ``iters``; a later run with a larger ``stop_at`` (or none) resumes from there.
        batch_size: images per step, over all processes.
        crop: square crop side (a multiple of 32 keeps the feature cells aligned with pixels).
        scale_range: random resize factor before cropping (raised so the crop fits).
        lr: Adam learning rate of the new layers; the encoder gets ``lr * encoder_lr_scale``.
        encoder_lr_scale: see ``lr``.
        weight_decay: Adam's L2 penalty.
        warmup: linear warm-up steps.
        poly_power: exponent of the poly decay (the paper: 0.9).
        n_instances: P_inst (the paper: 3).
        n_pixels: P_pix, pixels per instance (the paper: 1000).
        n_samplings: samplings per image and step (the paper: 10).
        instance_mode: ``mixed`` / ``classes`` / ``components`` for label maps.
        void: ignored class id of label maps (CamVid: 11).
        min_component: smallest connected component used as an instance, in pixels.
        paste_prob: share of crops that receive objects cut from the binary-mask items, shrunk
            to ``paste_size`` px (copy-paste; :class:`EmbeddingDataset`). 0: off.
        paste_size: range of a pasted object's longer side, px.
        paste_max: most objects pasted into one crop.
        freeze_encoder_bn: keep the encoder's BatchNorm statistics (affine terms still train).
        workers: DataLoader worker processes.
        seed: seed of data order, augmentation, pixel sampling and initialisation.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``None`` (CUDA when available).
        ckpt_every: checkpoint period in steps.
        log_every: log period in steps.
        pretrained: ImageNet encoder weights (False: random init, for tests).
        threads: torch CPU threads (``None``: torch's default).
    """

    label_data: str | None = None
    label_splits: tuple[str, ...] = ("train",)
    mask_data: str | None = None
    mask_stems: tuple[str, ...] | None = None
    sources: tuple[EmbeddingSource, ...] = ()
    init: str | None = None
    out: str = "runs/embedding"
    model: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    iters: int = 2000
    stop_at: int | None = None
    batch_size: int = 4
    crop: int = 256
    scale_range: tuple[float, float] = (0.6, 1.3)
    lr: float = 1e-3
    encoder_lr_scale: float = 0.1
    weight_decay: float = 1e-4
    warmup: int = 50
    poly_power: float = 0.9
    n_instances: int = 3
    n_pixels: int = 250
    n_samplings: int = 10
    instance_mode: str = "mixed"
    void: int | None = CAMVID_VOID
    min_component: int = 64
    paste_prob: float = 0.0
    paste_size: tuple[int, int] = (24, 128)
    paste_max: int = 2
    freeze_encoder_bn: bool = True
    workers: int = 1
    seed: int = 0
    device: str | None = None
    ckpt_every: int = 100
    log_every: int = 10
    pretrained: bool = True
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.sources and (self.label_data or self.mask_data):
            raise ConfigError("give either sources (a mix) or label_data / mask_data, not both")
        if not self.sources and not self.label_data and not self.mask_data:
            raise ConfigError("give training data: label_data (CamVid layout) and/or mask_data")
        if self.stop_at is not None and not 0 < self.stop_at <= self.iters:
            raise ConfigError(f"stop_at must be in 1..iters ({self.iters}), got {self.stop_at}")
        positive = (
            "iters",
            "batch_size",
            "crop",
            "n_instances",
            "n_pixels",
            "n_samplings",
            "ckpt_every",
            "log_every",
        )
        bad = [k for k in positive if getattr(self, k) < 1]
        if bad:
            raise ConfigError(f"these settings must be >= 1: {', '.join(bad)}")
        if self.lr <= 0 or self.encoder_lr_scale < 0:
            raise ConfigError("lr must be > 0 and encoder_lr_scale >= 0")
        if isinstance(self.paste_size, list):
            object.__setattr__(self, "paste_size", tuple(self.paste_size))
        check_paste(self.paste_prob, self.paste_size, self.paste_max, self.crop)


def poly_lr(step: int, total: int, base_lr: float, power: float = 0.9, warmup: int = 0) -> float:
    """Poly decay ``base_lr * (1 - step / total) ** power`` after a linear warm-up."""
    lr = base_lr * max(0.0, 1.0 - step / total) ** power
    if warmup and step < warmup:
        lr *= (step + 1) / warmup
    return lr


def build_items(cfg: EmbeddingTrainConfig) -> tuple[list[LabelledImage], np.ndarray | None]:
    """The labelled images a config selects (label maps first, then masks, or the sources in
    order) and their sampling probabilities (None: uniform)."""
    if cfg.sources:
        return mixed_items(cfg.sources)
    items: list[LabelledImage] = []
    if cfg.label_data:
        items += label_map_items(cfg.label_data, tuple(cfg.label_splits))
    if cfg.mask_data:
        items += mask_items(cfg.mask_data, tuple(cfg.mask_stems) if cfg.mask_stems else None)
    return items, None


def _init_model(
    cfg: EmbeddingTrainConfig, last: Path, device: torch.device
) -> tuple[SemanticEmbedding, EmbeddingTrainConfig]:
    """The model a run starts from, and the config with the model config it trains (as
    :func:`finecut.train.segment._init_model` does for segmenters)."""
    if cfg.init is None:
        return SemanticEmbedding(cfg.model, pretrained=cfg.pretrained).to(device), cfg
    if last.exists():
        # a resume: the run's model config is the init weights' own, kept in its checkpoint
        # (the init file itself need not be on this machine any more); another kind of
        # checkpoint is left to resume() to refuse
        from finecut.weights import load_checkpoint

        log.info("%s exists: resuming it (--init is used only by a new run)", last)
        state = load_checkpoint(last, map_location="cpu")
        if isinstance(state, dict) and state.get("kind") == "embedding":
            cfg = replace(cfg, model=EmbeddingConfig.from_dict(state["config"]["model"]))
        return SemanticEmbedding(cfg.model, pretrained=False).to(device), cfg
    from finecut.models.embedding import load_embedding_model

    model = load_embedding_model(cfg.init, device)
    log.info("initialised from %s", cfg.init)
    return model, replace(cfg, model=model.config)


def _param_groups(model: SemanticEmbedding, cfg: EmbeddingTrainConfig) -> list[dict]:
    enc = list(model.encoder.parameters())
    enc_ids = {id(p) for p in enc}
    rest = [p for p in model.parameters() if id(p) not in enc_ids]
    return [
        {"params": enc, "lr": cfg.lr * cfg.encoder_lr_scale, "scale": cfg.encoder_lr_scale},
        {"params": rest, "lr": cfg.lr, "scale": 1.0},
    ]


def _train_mode(model: SemanticEmbedding, freeze_encoder_bn: bool) -> None:
    model.train()
    if freeze_encoder_bn:
        for m in model.encoder.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def _sampled_loss_backward(
    feat: torch.Tensor,
    labels: torch.Tensor,
    rng: np.random.Generator,
    cfg: EmbeddingTrainConfig,
) -> tuple[float, dict[str, float]]:
    """Average the N-pair loss over ``n_samplings`` per image and back-propagate it into
    ``feat`` (one sampling's graph alive at a time). Returns the loss and separation stats.

    Shape:
        feat (B, D, h, w) with its graph; labels (B, H, W) int64 on the CPU.
    """
    leaf = feat.detach().float().requires_grad_(True)
    size = tuple(labels.shape[-2:])
    terms = labels.shape[0] * cfg.n_samplings
    total, stats = 0.0, []
    for b in range(labels.shape[0]):
        label_map = labels[b].numpy()
        for k in range(cfg.n_samplings):
            index, lab = sample_pixels(label_map, rng, cfg.n_instances, cfg.n_pixels)
            if index.size == 0:
                continue
            index_t = torch.from_numpy(index).to(feat.device)
            lab_t = torch.from_numpy(lab).to(feat.device)
            emb = gather_pixel_embeddings(leaf[b], index_t, size)
            loss = npair_l2_loss(emb, lab_t)
            (loss / terms).backward()
            total += loss.item()
            if k == 0:
                stats.append(pair_distance_stats(emb.detach(), lab_t))
    grad = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
    feat.backward(grad.to(feat.dtype))
    summary = {
        key: float(np.nanmean([s[key] for s in stats])) if stats else float("nan")
        for key in ("intra", "inter", "ratio")
    }
    return total / terms, summary


def train_embedding(cfg: EmbeddingTrainConfig, *, progress: bool = False) -> Path:
    """Train (or resume) the semantic embedding; returns the path of the final checkpoint.

    Single process, or data-parallel under ``torchrun`` (each rank takes
    ``batch_size // world_size`` images).
    """
    device, info = start_training_process(cfg.device, cfg.threads)
    out = Path(cfg.out)
    torch.manual_seed(cfg.seed)  # same initial weights on every rank

    items, weights = build_items(cfg)
    dataset = EmbeddingDataset(
        items,
        crop=cfg.crop,
        scale_range=tuple(cfg.scale_range),
        instance_mode=cfg.instance_mode,
        void=cfg.void,
        min_component=cfg.min_component,
        seed=cfg.seed,
        paste_prob=cfg.paste_prob,
        paste_size=tuple(cfg.paste_size),
        paste_max=cfg.paste_max,
    )
    per_rank = max(1, cfg.batch_size // info.world_size)

    last = out / "last.pt"
    model, cfg = _init_model(cfg, last, device)
    opt = torch.optim.Adam(_param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step = resume(
        last,
        model,
        opt,
        kind="embedding",
        what="an embedding",
        model_config=cfg.model.to_dict(),
        device=device,
    )

    sampler = EpochSampler(
        len(dataset),
        seed=cfg.seed,
        rank=info.rank,
        world_size=info.world_size,
        skip=step * per_rank,
        weights=weights,
    )
    loader = DataLoader(
        dataset,
        batch_size=per_rank,
        sampler=sampler,
        num_workers=cfg.workers,
        drop_last=True,
        persistent_workers=cfg.workers > 0,
        pin_memory=device.type == "cuda",
    )
    net = DistributedDataParallel(model) if info.enabled else model
    autocast = device.type == "cuda"
    logger = JsonlLogger(out / "log.jsonl", enabled=info.is_main)

    stop = cfg.iters if cfg.stop_at is None else cfg.stop_at
    bar = None
    if progress and info.is_main and step < stop:
        from tqdm import tqdm

        bar = tqdm(total=stop, initial=step, unit="it", dynamic_ncols=True)
    _train_mode(model, cfg.freeze_encoder_bn)
    t0, seen = time.time(), 0
    try:
        batches = iter(loader) if step < stop else iter(())
        for image, labels in batches:
            lr = poly_lr(step, cfg.iters, cfg.lr, cfg.poly_power, cfg.warmup)
            for group in opt.param_groups:
                group["lr"] = lr * group["scale"]
            rng = np.random.default_rng([cfg.seed, step, info.rank])
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                feat = net(image.to(device, non_blocking=True))
            opt.zero_grad(set_to_none=True)
            loss, stats = _sampled_loss_backward(feat, labels, rng, cfg)
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss is {loss} at step {step}")
            opt.step()
            step += 1
            seen += image.shape[0] * info.world_size
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", ratio=f"{stats['ratio']:.2f}")
            if step % cfg.log_every == 0 or step == stop:
                logger.write(
                    {
                        "step": step,
                        "epoch": sampler.epoch_of((step - 1) * per_rank),
                        "lr": lr,
                        "loss": loss,
                        **stats,
                        "samples_per_s": seen / max(time.time() - t0, 1e-9),
                        "time": time.time(),
                    }
                )
            if info.is_main and (step % cfg.ckpt_every == 0 or step == stop):
                save_checkpoint(
                    last,
                    {
                        "kind": "embedding",
                        "model": model.state_dict(),
                        "optimizer": opt.state_dict(),
                        "step": step,
                        "epoch": sampler.epoch_of((step - 1) * per_rank),
                        "config": _jsonable(cfg),
                    },
                )
            if step >= stop:
                break
    finally:
        if bar is not None:
            bar.close()
        cleanup_distributed()
    return last


def _jsonable(cfg: EmbeddingTrainConfig) -> dict:
    data = asdict(cfg)
    data["model"] = cfg.model.to_dict()
    return data
