"""Turn a training checkpoint into shipped weights: ``<name>.safetensors`` + ``<name>.json``.

    python -m finecut.train.export runs/refine_lite0/last.pt --name crm_lite0 \
        --command "finecut train refine ..." --machine "2 CPU cores, no GPU"

The manifest records the model config, the sha256 of the weights, the step, the training config and
the command and machine given here, so the shipped file can be traced back to its run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from finecut.errors import WeightsError
from finecut.weights import WEIGHTS_DIR, write_weights

__all__ = ["export_refine_weights"]


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
    if "model" not in ckpt or "config" not in ckpt:
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--name", default="crm_lite0")
    p.add_argument("--dir", type=Path, default=WEIGHTS_DIR)
    p.add_argument("--command", default="")
    p.add_argument("--machine", default="")
    args = p.parse_args(argv)
    path = export_refine_weights(
        args.checkpoint, args.name, directory=args.dir, command=args.command, machine=args.machine
    )
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
