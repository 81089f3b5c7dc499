"""``finecut train refine``: train the CRM refiner on a folder of binary masks.

Recipe (METHODS.md section 4): random crops, coarse masks synthesised to a target IoU in
U(0.8, 1.0), Adam (lr 2.25e-4, wd 1e-4), lr x0.1 at 50% and 83% of the iterations, loss BCE + L1 +
L2 + L1 of Sobel gradients. Checkpoints are written atomically every ``ckpt_every`` steps and the
run resumes from ``<out>/last.pt`` when it exists. The curve goes to ``<out>/log.jsonl``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from finecut.data.folders import find_pairs
from finecut.errors import ConfigError
from finecut.models.crm import CRM, CRMConfig, CRMLossWeights, crm_loss
from finecut.refine.perturb import PerturbConfig
from finecut.train.common import (
    JsonlLogger,
    cleanup_distributed,
    load_checkpoint,
    multistep_lr,
    save_checkpoint,
    start_training_process,
)
from finecut.train.refine_data import (
    MaskPairDataset,
    MixedRefineDataset,
    RefineSource,
    check_mix_options,
)

log = logging.getLogger(__name__)

__all__ = ["RefineTrainConfig", "train_refine"]


@dataclass(frozen=True)
class RefineTrainConfig:
    data: str | None = None
    out: str = "runs/refine"
    stems: tuple[str, ...] | None = None
    model: CRMConfig = field(default_factory=CRMConfig)
    iters: int = 45_000
    batch_size: int = 12
    crop: int = 224
    lr: float = 2.25e-4
    weight_decay: float = 1e-4
    warmup: int = 100
    loss: CRMLossWeights = field(default_factory=CRMLossWeights)
    workers: int = 2
    seed: int = 0
    device: str | None = None
    ckpt_every: int = 250
    log_every: int = 10
    pretrained: bool = True
    threads: int | None = None
    # share of batches whose input is encoded at a lower resolution (a side of crop / r, r drawn
    # from lowres_factor, rounded to a multiple of 32) while the loss is taken on the full crop:
    # the head then meets the query cell sizes of the coarse inference scales.
    lowres_prob: float = 0.5
    lowres_factor: tuple[float, float] = (1.25, 3.0)
    # start a new run from trained weights (a name of embedded weights, a .safetensors file with
    # its manifest, or a checkpoint): the model only, with a fresh optimizer and lr schedule.
    # The run's model config is then the weights' own. Ignored when resuming from last.pt.
    init: str | None = None
    # several sources at many scales with every coarse-mask family (MixedRefineDataset); when
    # given, ``data`` and ``stems`` are not used
    sources: tuple[RefineSource, ...] = ()
    epoch_size: int = 4000
    max_scale: float = 6.0
    # share of mixed items whose whole source image is blurred and JPEG-compressed at its own
    # size before resizing (video-like artefacts that upsampling then widens)
    native_artefacts: float = 0.0

    def __post_init__(self) -> None:
        check_mix_options(self.epoch_size, self.max_scale, self.native_artefacts)


def _make_loader(
    dataset: MaskPairDataset | MixedRefineDataset,
    cfg: RefineTrainConfig,
    info,
    device: torch.device,
) -> DataLoader:
    per_rank = max(1, cfg.batch_size // info.world_size)
    generator = torch.Generator().manual_seed(cfg.seed)
    sampler = (
        DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, seed=cfg.seed)
        if info.enabled
        else RandomSampler(dataset, generator=generator)
    )
    return DataLoader(
        dataset,
        batch_size=per_rank,
        sampler=sampler,
        num_workers=cfg.workers,
        drop_last=True,
        # not persistent: workers are re-made each epoch and so see the dataset's new epoch (a
        # persistent worker keeps the epoch-0 copy and would repeat the same crops and coarse masks)
        persistent_workers=False,
        pin_memory=device.type == "cuda",
    )


def _batches(loader: DataLoader, dataset, start_epoch: int):
    epoch = start_epoch
    while True:
        dataset.set_epoch(epoch)
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(epoch)
        for batch in loader:
            yield epoch, batch
        epoch += 1


def train_refine(cfg: RefineTrainConfig, *, progress: bool = False) -> Path:
    """Train (or resume) a CRM refiner; returns the path of the final checkpoint."""
    device, info = start_training_process(cfg.device, cfg.threads)
    out = Path(cfg.out)
    torch.manual_seed(cfg.seed + info.rank)

    dataset: MaskPairDataset | MixedRefineDataset
    if cfg.sources:
        dataset = MixedRefineDataset(
            cfg.sources,
            crop=cfg.crop,
            epoch_size=cfg.epoch_size,
            max_scale=cfg.max_scale,
            p_native_artefacts=cfg.native_artefacts,
            seed=cfg.seed,
        )
    else:
        if cfg.data is None:
            raise ConfigError("give a data folder or training sources")
        pairs = find_pairs(Path(cfg.data), list(cfg.stems) if cfg.stems else None)
        dataset = MaskPairDataset(pairs, crop=cfg.crop, perturb=PerturbConfig(), seed=cfg.seed)
    loader = _make_loader(dataset, cfg, info, device)

    last = out / "last.pt"
    state = load_checkpoint(last, map_location=device) if last.exists() else None
    if state is not None:
        # a resumed run keeps its own model (with --init, the init weights' config, which the
        # command line need not repeat)
        saved = CRMConfig.from_dict(state["config"]["model"])
        if saved != cfg.model and cfg.init is None:
            log.warning("resuming %s with its own model config, not the one given", last)
        cfg = replace(cfg, model=saved)
        model = CRM(cfg.model, pretrained=False).to(device)
    elif cfg.init is not None:
        from finecut.refine.api import load_refiner_model

        model = load_refiner_model(cfg.init, device)
        cfg = replace(cfg, model=model.config)
        log.info("initialised from %s", cfg.init)
    else:
        model = CRM(cfg.model, pretrained=cfg.pretrained).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, start_epoch = 0, 0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, start_epoch = state["step"], state["epoch"] + 1
        log.info("resumed from %s at step %d", last, step)
    net = DistributedDataParallel(model) if info.enabled else model
    scaler_enabled = device.type == "cuda"
    logger = JsonlLogger(out / "log.jsonl", enabled=info.is_main)

    bar = None
    if progress and info.is_main:
        from tqdm import tqdm

        bar = tqdm(total=cfg.iters, initial=step, unit="it", dynamic_ncols=True)
    net.train()
    t0, seen = time.time(), 0
    try:
        for epoch, (image, coarse, gt) in _batches(loader, dataset, start_epoch):
            if step >= cfg.iters:
                break
            lr = multistep_lr(step, cfg.iters, cfg.lr, warmup=cfg.warmup)
            for group in opt.param_groups:
                group["lr"] = lr
            image, coarse, gt = (t.to(device, non_blocking=True) for t in (image, coarse, gt))
            image_in, coarse_in = _lowres_input(image, coarse, step, cfg)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=scaler_enabled):
                logits = net(image_in, coarse_in, out_size=tuple(gt.shape[-2:]))
            loss, terms = crm_loss(logits.float(), gt, cfg.loss)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"loss is {float(loss)} at step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            seen += image.shape[0] * info.world_size
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}")
            if step % cfg.log_every == 0 or step == cfg.iters:
                with torch.no_grad():
                    pred = logits.detach() > 0
                    inter = (pred & (gt > 0.5)).sum().item()
                    union = (pred | (gt > 0.5)).sum().item()
                    cinter = ((coarse > 0.5) & (gt > 0.5)).sum().item()
                    cunion = ((coarse > 0.5) | (gt > 0.5)).sum().item()
                logger.write(
                    {
                        "step": step,
                        "epoch": epoch,
                        "lr": lr,
                        "loss": loss.item(),
                        **terms,
                        "iou": inter / max(union, 1),
                        "coarse_iou": cinter / max(cunion, 1),
                        "samples_per_s": seen / max(time.time() - t0, 1e-9),
                        "time": time.time(),
                    }
                )
            if info.is_main and (step % cfg.ckpt_every == 0 or step == cfg.iters):
                save_checkpoint(
                    last,
                    {
                        "model": model.state_dict(),
                        "optimizer": opt.state_dict(),
                        "step": step,
                        "epoch": epoch,
                        "config": _jsonable(cfg),
                    },
                )
    finally:
        if bar is not None:
            bar.close()
        cleanup_distributed()
    return last


def _lowres_input(image: torch.Tensor, coarse: torch.Tensor, step: int, cfg: RefineTrainConfig):
    """With probability ``lowres_prob`` (seeded by step): the input at a lower resolution."""
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    if cfg.lowres_prob <= 0 or float(torch.rand((), generator=g)) >= cfg.lowres_prob:
        return image, coarse
    lo, hi = cfg.lowres_factor
    r = lo + (hi - lo) * float(torch.rand((), generator=g))
    h, w = image.shape[-2:]
    size = (max(64, round(h / r / 32) * 32), max(64, round(w / r / 32) * 32))
    if size == (h, w):
        return image, coarse
    image_in = F.interpolate(image, size=size, mode="area")
    coarse_in = (F.interpolate(coarse, size=size, mode="area") > 0.5).to(coarse.dtype)
    return image_in, coarse_in


def _jsonable(cfg: RefineTrainConfig) -> dict:
    data = asdict(cfg)
    data["model"] = cfg.model.to_dict()
    return data
