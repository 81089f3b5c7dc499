"""Pieces every training loop shares: distributed set-up, checkpoints, schedules, logging.

``torchrun --nproc_per_node N -m finecut train ...`` runs data-parallel (DDP): gloo on CPU, NCCL on
CUDA. A single process needs no launcher.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from finecut.devices import resolve_device
from finecut.weights import load_checkpoint

log = logging.getLogger(__name__)

__all__ = [
    "DistInfo",
    "JsonlLogger",
    "cleanup_distributed",
    "load_checkpoint",
    "multistep_lr",
    "resolve_device",
    "resume",
    "save_checkpoint",
    "setup_distributed",
    "start_training_process",
]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: torch.device) -> DistInfo:
    """Initialise torch.distributed from torchrun's environment variables, if present."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank)


def start_training_process(
    device_name: str | None, threads: int | None
) -> tuple[torch.device, DistInfo]:
    """Resolve the device, join the process group under ``torchrun`` (one GPU per local rank on
    CUDA) and set torch's CPU threads: the first lines of every ``finecut train`` loop."""
    device = resolve_device(device_name)
    info = setup_distributed(device)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    if threads:
        torch.set_num_threads(threads)
    return device, info


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def resume(
    last: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    kind: str,
    what: str,
    model_config: dict,
    device: torch.device,
) -> int:
    """Load ``last`` (a ``kind`` checkpoint of the same model config) into model and optimizer.

    ``what`` names the kind in the error message ("an embedding", "a segmenter").

    Returns the step to continue from; 0 when ``last`` does not exist.

    Raises:
        ConfigError: ``last`` is another kind of run, or was trained with another model config.
    """
    from finecut.errors import ConfigError

    if not last.exists():
        return 0
    state = load_checkpoint(last, map_location=device)
    if state.get("kind") != kind:
        raise ConfigError(f"{last} is not {what} checkpoint; use another out folder")
    if state["config"]["model"] != model_config:
        raise ConfigError(
            f"{last} was trained with another model config; resume with the same one or use "
            "another out folder"
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    step = int(state["step"])
    log.info("resumed from %s at step %d", last, step)
    return step


def save_checkpoint(path: Path, state: dict) -> None:
    """Atomically write a checkpoint (temp file + rename): a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def multistep_lr(step: int, total: int, base_lr: float, milestones=(0.5, 0.83), gamma=0.1,
                 warmup: int = 0) -> float:
    """CRM's schedule: lr x ``gamma`` at each milestone fraction of ``total``, optional warm-up."""
    lr = base_lr * (gamma ** sum(step >= m * total for m in milestones))
    if warmup and step < warmup:
        lr *= (step + 1) / warmup
    return lr


class JsonlLogger:
    """Append one JSON object per line: a training curve that survives restarts (resume appends)."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
