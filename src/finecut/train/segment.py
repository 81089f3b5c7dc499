"""``finecut train segment``: train a :class:`~finecut.models.segmenter.Segmenter` on CamVid.

Recipe (SparseMask's VOC recipe, METHODS.md section 3, as defaults): SGD with momentum 0.9,
weight decay 4e-5, lr 0.005 for the encoder and x10 for the decoder and heads, poly decay with
power 0.9, cross-entropy ignoring void (11) (``loss: mfb`` weighs it by median frequency
balancing, ``loss: ohem`` keeps the hard pixels: :mod:`finecut.train.segment_loss`). In the
decoder's search mode the SparseMask sparsity loss (weight 0.01) is added and the connection
weights are clamped to [0, 2] after every step. P-pooling exponents and connection weights get
no weight decay (decay would pull p towards average pooling and the weights towards 0 regardless
of the data).

Augmentation: random scale, crop and flip (:class:`~finecut.train.segment_data.SegmentDataset`).
bfloat16 autocast on CUDA only. Checkpoints (``OUT/last.pt``, written atomically every
``ckpt_every`` steps and at the end) resume the run exactly, data order included; a resume reads
no path stored in them, so ``OUT`` can move to another machine. ``stop_at`` ends a run at a step
of its ``iters``-long schedule, so a long schedule can be trained in stages, each resuming the
last. ``init`` starts a new run from trained weights (the model only: fresh optimiser and
schedule). The curve (with the validation mIoU and per-class IoU) goes to ``OUT/log.jsonl``
and, when TensorBoard is installed, to ``OUT/tb``. Multi-GPU (or multi-process on CPU with
gloo): ``torchrun --nproc_per_node N -m finecut train segment --config ...``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from finecut.errors import ConfigError
from finecut.layers import SPARSE_LOSS_WEIGHT
from finecut.models.segmenter import (
    Segmenter,
    SegmenterConfig,
    check_positive_ints,
    config_from_dict,
    load_config,
    save_config,
)
from finecut.train.common import (
    JsonlLogger,
    cleanup_distributed,
    resume,
    save_checkpoint,
    start_training_process,
)
from finecut.train.embedding import poly_lr
from finecut.train.embedding_data import EpochSampler
from finecut.train.segment_data import (
    CAMVID_VOID,
    SegmentDataset,
    SegmentItem,
    class_pixel_counts,
    segment_items,
)
from finecut.train.segment_loss import (
    LOSSES,
    median_frequency_weights,
    ohem_keep,
    segment_loss,
)

log = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_KIND",
    "SegmentTrainConfig",
    "class_weights",
    "load_train_config",
    "save_train_config",
    "segment_loss",
    "train_segment",
    "with_spn_head",
]

CHECKPOINT_KIND = "segment"
_OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class SegmentTrainConfig:
    """Everything a ``finecut train segment`` run needs; YAML via :func:`load_train_config`.

    Attributes:
        data: CamVid-layout folder (``{split}/images``, ``{split}/labels``, ``{split}.txt``).
        out: run folder (``last.pt``, ``log.jsonl``, ``tb/``, ``config.yaml``).
        model: the architecture.
        train_splits: splits trained on.
        val_split: split evaluated (mIoU and per-class IoU, whole images at their own size)
            every ``eval_every`` steps and at the end; None: never.
        iters: optimiser steps: the length of the lr schedule.
        stop_at: stop after this step (checkpoint and validation included) although the
            schedule runs to ``iters``; a later run with a larger ``stop_at`` (or none) resumes
            from ``OUT/last.pt``. Training in stages on a small machine. None: ``iters``.
        init: start a new run from trained weights: ``last.pt`` of a run, an exported
            ``.safetensors`` with its manifest, or the name of embedded weights
            (``segmenter_camvid``); the model only, with a fresh optimiser and schedule, and the
            run's model config is the weights' own. Not read when ``OUT/last.pt`` exists (a
            resume).
        loss: ``ce`` (cross-entropy), ``mfb`` (cross-entropy weighted by median frequency
            balancing over the training labels, cached in ``OUT/class_weights.json``) or
            ``ohem`` (online hard example mining: ``ohem_thresh``, ``ohem_min_kept`` pixels per
            step).
        batch_size: images per step, over all processes.
        crop: ``(height, width)`` of the training crops (CamVid frames are 360x480).
        scale_range: random resize factor before cropping.
        photometric: strength of the photometric augmentation (light, colour, blur, noise;
            :func:`~finecut.train.segment_data.photometric`); 0 (the default): none.
        optimizer: ``sgd`` (momentum) or ``adam``.
        lr: base learning rate (encoder); ``decoder_lr_mult`` x for decoder / head / SPN,
            ``pool_lr_mult`` x for the P-pooling parameters.
        poly_power: poly schedule ``lr * (1 - step / iters) ** power``.
        warmup: linear warm-up steps.
        sparse_weight: lambda of the SparseMask sparsity loss (search mode only).
        amp: bfloat16 autocast (CUDA only; ignored on CPU).
        sync_bn: SyncBatchNorm across processes (CUDA DDP only).
        tensorboard: also write TensorBoard scalars when ``tensorboard`` is installed.
    """

    data: str
    out: str = "runs/segment"
    model: SegmenterConfig = field(default_factory=SegmenterConfig)
    train_splits: tuple[str, ...] = ("train",)
    val_split: str | None = "val"
    iters: int = 10_000
    stop_at: int | None = None
    init: str | None = None
    batch_size: int = 8
    crop: tuple[int, int] = (360, 480)
    scale_range: tuple[float, float] = (0.5, 2.0)
    photometric: float = 0.0
    optimizer: str = "sgd"
    lr: float = 0.005
    momentum: float = 0.9
    weight_decay: float = 4e-5
    decoder_lr_mult: float = 10.0
    pool_lr_mult: float = 10.0
    poly_power: float = 0.9
    warmup: int = 0
    loss: str = "ce"
    ohem_thresh: float = 0.7
    ohem_min_kept: int = 100_000
    sparse_weight: float = SPARSE_LOSS_WEIGHT
    void: int = CAMVID_VOID
    workers: int = 2
    seed: int = 0
    device: str | None = None
    threads: int | None = None
    pretrained: bool = True
    amp: bool = True
    sync_bn: bool = False
    ckpt_every: int = 500
    log_every: int = 10
    eval_every: int = 0
    tensorboard: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            object.__setattr__(self, "model", SegmenterConfig.from_dict(self.model))
        for name in ("train_splits", "crop", "scale_range"):
            value = getattr(self, name)
            if isinstance(value, str) and name == "train_splits":
                value = (value,)
            object.__setattr__(self, name, tuple(value))
        if self.optimizer not in _OPTIMIZERS:
            raise ConfigError(
                f"optimizer must be one of {', '.join(_OPTIMIZERS)}; got {self.optimizer!r}"
            )
        if self.loss not in LOSSES:
            raise ConfigError(f"loss must be one of {', '.join(LOSSES)}; got {self.loss!r}")
        if not 0 < self.ohem_thresh <= 1 or self.ohem_min_kept < 0:
            raise ConfigError(
                f"ohem_thresh must be in (0, 1] and ohem_min_kept >= 0, got {self.ohem_thresh} "
                f"and {self.ohem_min_kept}"
            )
        check_positive_ints(self, ("iters", "batch_size", "ckpt_every", "log_every"))
        if self.stop_at is not None and not 0 < self.stop_at <= self.iters:
            raise ConfigError(f"stop_at must be in 1..iters ({self.iters}), got {self.stop_at}")
        if len(self.crop) != 2 or min(self.crop) < 32:
            raise ConfigError(f"crop must be (height, width) with sides >= 32, got {self.crop}")
        lo, hi = self.scale_range if len(self.scale_range) == 2 else (0, -1)
        if not 0 < lo <= hi:
            raise ConfigError(
                f"scale_range must be (min, max) with 0 < min <= max, got {self.scale_range}"
            )
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.photometric <= 2:
            raise ConfigError(f"photometric must be in [0, 2], got {self.photometric}")
        if 0 <= self.void < self.model.num_classes:
            raise ConfigError(
                f"void ({self.void}) must lie outside the classes 0..{self.model.num_classes - 1}"
            )

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["model"] = self.model.to_dict()
        for name in ("train_splits", "crop", "scale_range"):
            data[name] = list(data[name])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SegmentTrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are rejected by name."""
        if isinstance(data, dict) and "data" not in data:
            raise ConfigError("the training config needs 'data' (the CamVid-layout folder)")
        return config_from_dict(cls, data, "training")


def load_train_config(path: str | Path, **overrides: Any) -> SegmentTrainConfig:
    """Read a YAML training config; ``overrides`` (not None) replace its values."""
    data = load_config(path)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return SegmentTrainConfig.from_dict(data)


def save_train_config(path: str | Path, cfg: SegmentTrainConfig) -> Path:
    """Write a training config as YAML (what :func:`load_train_config` reads)."""
    return save_config(path, cfg.to_dict())


def class_weights(
    items: list[SegmentItem], num_classes: int, void: int, cache: Path | None = None
) -> list[float]:
    """Median-frequency weights of the classes of ``items`` (:func:`median_frequency_weights`).

    With ``cache``, the counts and weights are written there as JSON and read back by a later
    call on the same items (same stems, classes and void), so a resumed run does not count again.
    """
    stems = sorted(item.stem for item in items)
    key = {"num_classes": num_classes, "void": void, "images": len(stems), "stems": stems}
    if cache is not None and cache.is_file():
        try:
            saved = json.loads(cache.read_text())
            if {k: saved.get(k) for k in key} == key:
                return [float(w) for w in saved["weights"]]
        except (OSError, ValueError, KeyError, TypeError):
            pass
        log.warning("%s does not match the training labels: counting again", cache)
    class_pixels, present_pixels = class_pixel_counts(items, num_classes, void)
    weights = [float(w) for w in median_frequency_weights(class_pixels, present_pixels)]
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        record = {
            **key,
            "class_pixels": class_pixels.tolist(),
            "present_pixels": present_pixels.tolist(),
            "weights": weights,
        }
        cache.write_text(json.dumps(record, indent=1) + "\n")
    return weights


def _param_groups(model: Segmenter, cfg: SegmentTrainConfig) -> list[dict]:
    pool = {id(p) for p in model.pool_parameters()}
    conn = {id(p) for p in model.decoder.connection_weights().values()}
    groups: dict[str, list[nn.Parameter]] = {"encoder": [], "decoder": [], "pool": [], "conn": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in pool:
            groups["pool"].append(p)
        elif id(p) in conn:
            groups["conn"].append(p)
        elif name.startswith("encoder."):
            groups["encoder"].append(p)
        else:
            groups["decoder"].append(p)
    settings = {
        "encoder": (1.0, cfg.weight_decay),
        "decoder": (cfg.decoder_lr_mult, cfg.weight_decay),
        "pool": (cfg.pool_lr_mult, 0.0),
        "conn": (cfg.decoder_lr_mult, 0.0),
    }
    return [
        {"params": params, "scale": settings[k][0], "weight_decay": settings[k][1], "name": k}
        for k, params in groups.items()
        if params
    ]


def _make_optimizer(model: Segmenter, cfg: SegmentTrainConfig) -> torch.optim.Optimizer:
    groups = _param_groups(model, cfg)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.Adam(groups, lr=cfg.lr)


def _tensorboard(cfg: SegmentTrainConfig, out: Path, enabled: bool):
    if not (cfg.tensorboard and enabled):
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.info("tensorboard is not installed: the curve is in log.jsonl only")
        return None
    return SummaryWriter(str(out / "tb"))


def _evaluate(model: Segmenter, cfg: SegmentTrainConfig, device: torch.device) -> dict:
    from finecut.train.segment_eval import evaluate_model

    assert cfg.val_split is not None
    was_training = model.training
    result = evaluate_model(
        model, cfg.data, cfg.val_split, device=device, void=cfg.void, amp=cfg.amp
    )
    model.train(was_training)
    per_class = {
        name: (None if math.isnan(iou) else iou)
        for name, iou in zip(result.class_names, result.per_class, strict=True)
    }
    return {"val_miou": result.miou, "val_iou": per_class}


def _init_model(
    cfg: SegmentTrainConfig, last: Path, device: torch.device
) -> tuple[Segmenter, SegmentTrainConfig]:
    """The model a run starts from, and the config with the model config it trains."""
    if cfg.init is None:
        return Segmenter(cfg.model, pretrained=cfg.pretrained).to(device), cfg
    if last.exists():
        # a resume: the run's model config is the init weights' own, kept in its checkpoint
        # (the init file itself need not be on this machine any more)
        from finecut.train.common import load_checkpoint

        state = load_checkpoint(last, map_location="cpu")
        saved = state.get("config", {}).get("model") if isinstance(state, dict) else None
        if saved is not None:
            cfg = replace(cfg, model=SegmenterConfig.from_dict(saved))
        return Segmenter(cfg.model, pretrained=False).to(device), cfg
    from finecut.segment.predict import load_segmenter

    model = load_segmenter(cfg.init, device=device)
    grown = with_spn_head(model.config, cfg.model)
    if grown is not None:
        return _add_spn_head(model, grown, cfg, device), replace(cfg, model=grown)
    if cfg.model != model.config and cfg.model != SegmenterConfig():
        log.warning("--init %s: training its own model config, not the one given", cfg.init)
    log.info("initialised from %s", cfg.init)
    return model, replace(cfg, model=model.config)


def with_spn_head(init: SegmenterConfig, given: SegmenterConfig) -> SegmenterConfig | None:
    """``given`` when it is ``init`` plus an SPN head (``spn_head`` on, with any ``spn_channels``
    and ``spn_normalize``, every other field equal), else None: the one change of architecture an
    ``--init`` run may make, since the head starts as the identity (:class:`SPNHead`)."""
    if init.spn_head or not given.spn_head:
        return None
    same = replace(
        given, spn_head=False, spn_channels=init.spn_channels, spn_normalize=init.spn_normalize
    )
    return given if same == init else None


def _add_spn_head(
    model: Segmenter, grown: SegmenterConfig, cfg: SegmentTrainConfig, device: torch.device
) -> Segmenter:
    """``model``'s weights in a segmenter of config ``grown`` whose SPN head is new."""
    bigger = Segmenter(grown, pretrained=False).to(device)
    missing, unexpected = bigger.load_state_dict(model.state_dict(), strict=False)
    if unexpected or any(not key.startswith("spn.") for key in missing):  # pragma: no cover
        raise ConfigError(f"--init {cfg.init}: its weights do not fit the config with an SPN head")
    log.info("initialised from %s, with a new SPN head (it starts as the identity)", cfg.init)
    return bigger


def train_segment(cfg: SegmentTrainConfig, *, progress: bool = False) -> Path:
    """Train (or resume) a segmenter; returns the path of the final checkpoint ``OUT/last.pt``.

    Raises:
        ConfigError: ``OUT/last.pt`` belongs to another kind of run or another architecture.
        ImageError: the data folder is unusable.
        FloatingPointError: the loss became NaN or infinite.
    """
    device, info = start_training_process(cfg.device, cfg.threads)
    out = Path(cfg.out)
    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    last = out / "last.pt"
    resuming = last.exists()
    model, cfg = _init_model(cfg, last, device)
    opt = _make_optimizer(model, cfg)

    items = [item for split in cfg.train_splits for item in segment_items(cfg.data, split)]
    if cfg.val_split is not None:
        segment_items(cfg.data, cfg.val_split)  # fail now, not after training
    dataset = SegmentDataset(
        items,
        num_classes=cfg.model.num_classes,
        crop=cfg.crop,
        scale_range=cfg.scale_range,
        photometric=cfg.photometric,
        void=cfg.void,
        seed=cfg.seed,
    )
    per_rank = max(1, cfg.batch_size // info.world_size)
    weight = None
    if cfg.loss == "mfb":
        cache = out / "class_weights.json"
        weight = torch.tensor(
            class_weights(items, cfg.model.num_classes, cfg.void, cache if info.is_main else None)
        )
        log.info("median-frequency class weights: %s", ", ".join(f"{w:.3f}" for w in weight))
    step = resume(
        last, model, opt, kind=CHECKPOINT_KIND, what="a segmenter",
        model_config=cfg.model.to_dict(), device=device,
    )
    if not resuming and info.is_main:
        save_train_config(out / "config.yaml", cfg)

    sampler = EpochSampler(
        len(dataset), seed=cfg.seed, rank=info.rank, world_size=info.world_size,
        skip=step * per_rank,
    )  # fmt: skip
    loader = DataLoader(
        dataset,
        batch_size=per_rank,
        sampler=sampler,
        num_workers=cfg.workers,
        drop_last=True,
        persistent_workers=cfg.workers > 0,
        pin_memory=device.type == "cuda",
    )
    net: nn.Module = model
    if info.enabled:
        if cfg.sync_bn and device.type == "cuda":
            net = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        net = DistributedDataParallel(net)
    autocast = cfg.amp and device.type == "cuda"
    logger = JsonlLogger(out / "log.jsonl", enabled=info.is_main)
    writer = _tensorboard(cfg, out, info.is_main)
    search = cfg.model.search

    stop = cfg.iters if cfg.stop_at is None else cfg.stop_at
    bar = None
    if progress and info.is_main and step < stop:
        from tqdm import tqdm

        bar = tqdm(total=stop, initial=step, unit="it", dynamic_ncols=True)
    net.train()
    t0, seen = time.time(), 0
    try:
        batches = iter(loader) if step < stop else iter(())
        for image, labels in batches:
            lr = poly_lr(step, cfg.iters, cfg.lr, cfg.poly_power, cfg.warmup)
            for group in opt.param_groups:
                group["lr"] = lr * group["scale"]
            image = image.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                logits = net(image)
            keep = None
            if cfg.loss == "ohem":
                keep = ohem_keep(logits, labels, cfg.void, cfg.ohem_thresh, cfg.ohem_min_kept)
            task = segment_loss(logits, labels, cfg.void, weight, keep)
            loss = task
            record: dict[str, float] = {}
            if search:
                sparse = model.sparse_loss()
                loss = task + cfg.sparse_weight * sparse
                record["sparse_loss"] = sparse.item()
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"loss is {loss.item()} at step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if search:
                model.clamp_connections_()
            step += 1
            seen += image.shape[0] * info.world_size
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}")
            evaluate = cfg.val_split is not None and (
                step == stop or (cfg.eval_every > 0 and step % cfg.eval_every == 0)
            )
            if step % cfg.log_every == 0 or step == stop or evaluate:
                with torch.no_grad():
                    valid = labels != cfg.void
                    pred = logits.detach().argmax(1)
                    acc = (pred[valid] == labels[valid]).float().mean().item() if valid.any() else 0
                record.update(
                    step=step,
                    epoch=sampler.epoch_of((step - 1) * per_rank),
                    lr=lr,
                    loss=loss.item(),
                    ce=task.item(),
                    pixel_acc=acc,
                    samples_per_s=seen / max(time.time() - t0, 1e-9),
                )
                if evaluate and info.is_main:
                    record.update(_evaluate(model, cfg, device))
                logger.write({**record, "time": time.time()})
                if writer is not None:
                    for key, value in record.items():
                        if key == "val_iou":
                            for name, iou in value.items():
                                if iou is not None:
                                    writer.add_scalar(f"val_iou/{name}", iou, step)
                        elif key not in ("step", "epoch"):
                            writer.add_scalar(key, value, step)
            if info.is_main and (step % cfg.ckpt_every == 0 or step == stop):
                save_checkpoint(
                    last,
                    {
                        "kind": CHECKPOINT_KIND,
                        "model": model.state_dict(),
                        "optimizer": opt.state_dict(),
                        "step": step,
                        "epoch": sampler.epoch_of((step - 1) * per_rank),
                        "config": cfg.to_dict(),
                    },
                )
            if step >= stop:
                break
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
        cleanup_distributed()
    return last
