"""Turn a training checkpoint into shipped weights: ``<name>.safetensors`` + ``<name>.json``.

    python -m finecut.train.export runs/refine_lite0/last.pt --name crm_lite0 \
        --command "finecut train refine ..." --machine "2 CPU cores, no GPU"
    python -m finecut.train.export runs/embedding/last.pt --kind embedding \
        --name embedding_lite0 --command "..." --machine "..."
    python -m finecut.train.export runs/camvid/poly_pruned/last.pt --name segmenter_camvid \
        --command "..." --machine "..."

``--kind auto`` (the default) tells them apart by the checkpoint's ``"kind"`` (``embedding``,
``segment``; refine checkpoints carry ``refine`` or none).

The manifest records the model config, the sha256 of the weights, the step, the training config and
the command and machine given here, so the shipped file can be traced back to its run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from finecut.errors import WeightsError
from finecut.weights import WEIGHTS_DIR, write_weights

__all__ = ["export_embedding_weights", "export_refine_weights", "export_segment_weights"]

_DEFAULT_NAMES = {
    "refine": "crm_lite0",
    "embedding": "embedding_lite0",
    "segment": "segmenter_camvid",
}


def _export(
    checkpoint: str | Path,
    name: str,
    kind: str,
    not_this: str,
    manifest: dict,
    directory: Path,
    command: str,
    machine: str,
    config=None,
) -> Path:
    """Write checkpoint ``kind``'s weights as ``name`` with ``manifest`` + step, training config,
    command and machine; ``not_this`` is the error for another file. ``config`` maps the saved
    model config to the manifest's (default: as saved)."""
    from finecut.train.common import load_checkpoint

    ckpt = load_checkpoint(Path(checkpoint))
    if ckpt.get("kind", "refine") != kind or "model" not in ckpt or "config" not in ckpt:
        raise WeightsError(not_this)
    train_cfg = dict(ckpt["config"])
    model_cfg = train_cfg.pop("model")
    manifest = {
        **manifest,
        "config": model_cfg if config is None else config(model_cfg),
        "step": int(ckpt["step"]),
        "train_config": train_cfg,
        "command": command,
        "machine": machine,
    }
    return write_weights(ckpt["model"], name, manifest, directory)


def export_refine_weights(
    checkpoint: str | Path,
    name: str,
    *,
    directory: Path = WEIGHTS_DIR,
    command: str = "",
    machine: str = "",
) -> Path:
    """Write the model weights of a ``finecut train refine`` checkpoint as embedded weights."""
    not_this = f"{str(checkpoint)!r} is not a finecut refine checkpoint"
    return _export(
        checkpoint, name, "refine", not_this, {"model": "crm"}, directory, command, machine
    )


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

    not_this = f"{str(checkpoint)!r} is not a finecut embedding checkpoint"
    return _export(
        checkpoint, name, "embedding", not_this, {"model": MANIFEST_MODEL}, directory, command,
        machine,
    )  # fmt: skip


def export_segment_weights(
    checkpoint: str | Path,
    name: str = "segmenter_camvid",
    *,
    directory: Path = WEIGHTS_DIR,
    command: str = "",
    machine: str = "",
) -> Path:
    """Write a ``finecut train segment`` checkpoint as weights that
    :func:`finecut.segment.predict.load_segmenter` reads (the embedded default when ``name`` is
    ``segmenter_camvid`` in the package's weights folder)."""
    from finecut.models.segmenter import SegmenterConfig

    not_this = f"{checkpoint} is not a segmenter checkpoint (written by `train segment`)"
    return _export(
        checkpoint, name, "segment", not_this,
        {"model": "segmenter", "source": str(checkpoint)}, directory, command, machine,
        config=lambda cfg: SegmenterConfig.from_dict(cfg).to_dict(),
    )  # fmt: skip


def _checkpoint_kind(checkpoint: Path) -> str:
    from finecut.train.common import load_checkpoint

    kind = load_checkpoint(checkpoint).get("kind")
    return kind if kind in ("embedding", "segment") else "refine"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--kind", choices=("auto", "refine", "embedding", "segment"), default="auto")
    p.add_argument(
        "--name", default=None, help="default: crm_lite0 / embedding_lite0 / segmenter_camvid"
    )
    p.add_argument("--dir", type=Path, default=WEIGHTS_DIR)
    p.add_argument("--command", default="")
    p.add_argument("--machine", default="")
    args = p.parse_args(argv)
    kind = _checkpoint_kind(args.checkpoint) if args.kind == "auto" else args.kind
    export = {
        "embedding": export_embedding_weights,
        "segment": export_segment_weights,
        "refine": export_refine_weights,
    }[kind]
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
