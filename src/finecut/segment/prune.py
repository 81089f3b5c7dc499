"""``finecut prune``: turn a SparseMask search run into the config of its pruned decoder.

Reads the ``last.pt`` of a ``finecut train segment`` run whose decoder was in search mode, applies
the pruning rule of SparseMask (keep a connection when ``clip(|w|, 0, 2) / 2 > 1e-3``, then drop
stages without inputs or outputs, duplicates and subsets; :func:`finecut.layers.prune`) and writes
a training config for retraining the pruned network with the task loss only (METHODS.md section
3): the same run settings, ``model.decoder: pruned`` with the kept graph, ``model.search: false``.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from finecut.errors import ConfigError, WeightsError
from finecut.layers import PRUNE_THRESHOLD, PruneResult, prune
from finecut.models.segmenter import Segmenter
from finecut.train.segment import CHECKPOINT_KIND, SegmentTrainConfig, save_train_config

log = logging.getLogger(__name__)

__all__ = ["prune_checkpoint"]


def prune_checkpoint(
    checkpoint: str | Path,
    output: str | Path,
    *,
    threshold: float = PRUNE_THRESHOLD,
    out_dir: str | None = None,
) -> tuple[SegmentTrainConfig, PruneResult]:
    """Prune the searched decoder of a checkpoint; write the retraining config to ``output``.

    Args:
        checkpoint: ``last.pt`` of a search run (``model.search: true``).
        output: YAML file to write (``finecut train segment --config OUTPUT`` retrains).
        threshold: pruning threshold on ``clip(|w|, 0, 2) / 2``.
        out_dir: run folder of the retraining (default: the search run's folder + ``_pruned``).

    Returns:
        The written training config and the prune result.

    Raises:
        WeightsError: the checkpoint cannot be read or is not a segmenter's.
        ConfigError: its decoder was not in search mode, or pruning removed the final stage's
            every input.
    """
    from finecut.weights import load_checkpoint

    state = load_checkpoint(Path(checkpoint))
    if not isinstance(state, dict) or state.get("kind") != CHECKPOINT_KIND:
        raise WeightsError(f"{checkpoint} is not a segmenter checkpoint (from `train segment`)")
    cfg = SegmentTrainConfig.from_dict(state["config"])
    if not cfg.model.search:
        raise ConfigError(
            f"{checkpoint} was not trained in search mode (model.search: true); nothing to prune"
        )
    model = Segmenter(cfg.model, pretrained=False)
    model.load_state_dict(state["model"])
    try:
        result = prune(model.decoder.graph, model.decoder.connection_weights(), threshold=threshold)
    except ValueError as exc:
        raise ConfigError(f"cannot prune {checkpoint}: {exc}") from None
    pruned_model = replace(cfg.model, decoder="pruned", graph=result.graph, search=False)
    pruned_model_params = Segmenter(pruned_model, pretrained=False).decoder_num_parameters()
    new_cfg = replace(cfg, model=pruned_model, out=out_dir or f"{cfg.out.rstrip('/')}_pruned")
    save_train_config(output, new_cfg)
    log.info(
        "pruned decoder: %d stages, %d connections, %d parameters (removed %s); wrote %s",
        len(result.graph.stages),
        sum(len(s.inputs) for s in result.graph.stages),
        pruned_model_params,
        ", ".join(result.removed) or "no stage",
        output,
    )
    return new_cfg, result
