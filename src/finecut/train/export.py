"""Turn a training checkpoint into shipped weights: ``<name>.safetensors`` + ``<name>.json``.

    python -m finecut.train.export runs/refine_lite0/last.pt --name crm_lite0 \
        --command "finecut train refine ..." --machine "2 CPU cores, no GPU"
    python -m finecut.train.export runs/embedding/last.pt --kind embedding \
        --name embedding_lite0 --command "..." --machine "..."

``--kind auto`` (the default) tells the two apart: embedding checkpoints carry
``"kind": "embedding"``.

The manifest records the model config, the sha256 of the weights, the step, the training config and
the command and machine given here, so the shipped file can be traced back to its run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from finecut.errors import WeightsError
from finecut.weights import WEIGHTS_DIR, write_weights

__all__ = ["export_embedding_weights", "export_refine_weights"]

_DEFAULT_NAMES = {"refine": "crm_lite0", "embedding": "embedding_lite0"}


def export_refine_weights(
    checkpoint: str | Path,
    name: str,
    *,
    directory: Path = WEIGHTS_DIR,
    command: str = "",
    machine: str = "",
) -> Path:
    """Write the model weights of a ``finecut train refine`` checkpoint as embedded weights."""
    from finecut.train.common import load_checkpoint

    ckpt = load_checkpoint(Path(checkpoint))
    if "model" not in ckpt or "config" not in ckpt or ckpt.get("kind", "refine") != "refine":
        raise WeightsError(f"{str(checkpoint)!r} is not a finecut refine checkpoint")
    train_cfg = dict(ckpt["config"])
    manifest = {
        "model": "crm",
        "config": train_cfg.pop("model"),
        "step": int(ckpt["step"]),
        "train_config": train_cfg,
        "command": command,
        "machine": machine,
    }
    return write_weights(ckpt["model"], name, manifest, directory)


def export_embedding_weights(
    checkpoint: str | Path,
    name: str = "embedding_lite0",
    *,
    directory: Path = WEIGHTS_DIR,
    command: str = "",
    machine: str = "",
) -> Path:
    """Write the weights of a ``train_embedding`` checkpoint as embedded weights, loadable by
    :func:`finecut.models.embedding.load_embedding_model`."""
    from finecut.models.embedding import MANIFEST_MODEL
    from finecut.train.common import load_checkpoint

    ckpt = load_checkpoint(Path(checkpoint))
    if ckpt.get("kind") != "embedding" or "model" not in ckpt or "config" not in ckpt:
        raise WeightsError(f"{str(checkpoint)!r} is not a finecut embedding checkpoint")
    train_cfg = dict(ckpt["config"])
    manifest = {
        "model": MANIFEST_MODEL,
        "config": train_cfg.pop("model"),
        "step": int(ckpt["step"]),
        "train_config": train_cfg,
        "command": command,
        "machine": machine,
    }
    return write_weights(ckpt["model"], name, manifest, directory)


def _checkpoint_kind(checkpoint: Path) -> str:
    from finecut.train.common import load_checkpoint

    return "embedding" if load_checkpoint(checkpoint).get("kind") == "embedding" else "refine"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--kind", choices=("auto", "refine", "embedding"), default="auto")
    p.add_argument("--name", default=None, help="default: crm_lite0 / embedding_lite0")
    p.add_argument("--dir", type=Path, default=WEIGHTS_DIR)
    p.add_argument("--command", default="")
    p.add_argument("--machine", default="")
    args = p.parse_args(argv)
    kind = _checkpoint_kind(args.checkpoint) if args.kind == "auto" else args.kind
    export = export_embedding_weights if kind == "embedding" else export_refine_weights
    path = export(
        args.checkpoint,
        args.name or _DEFAULT_NAMES[kind],
        directory=args.dir,
        command=args.command,
        machine=args.machine,
    )
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
