"""Semantic segmentation with the detail-sensitive segmenter: evaluate, predict, prune.

``finecut.segment.predict``: :func:`segment_image` on a uint8 photo, colours, overlays, loading;
``finecut.segment.evaluate``: per-class IoU / mIoU on a CamVid-layout split;
``finecut.segment.prune``: the pruned-decoder config of a SparseMask search run;
``finecut.segment.commands``: the ``train segment``, ``eval segment``, ``segment`` and ``prune``
subcommands of the CLI.

The names below load on first use (as in ``finecut``): the CLI imports
``finecut.segment.commands`` to build its parser, and that must not pull in torch, or
``finecut --help`` would take seconds.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from finecut.segment.evaluate import (  # noqa: F401
        SegmentEvalResult,
        evaluate_segment,
        format_segment_table,
    )
    from finecut.segment.predict import (  # noqa: F401
        colorize,
        load_segmenter,
        overlay,
        segment_image,
    )

_WHERE = {
    "SegmentEvalResult": "evaluate",
    "evaluate_segment": "evaluate",
    "format_segment_table": "evaluate",
    "colorize": "predict",
    "load_segmenter": "predict",
    "overlay": "predict",
    "segment_image": "predict",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"finecut.segment.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'finecut.segment' has no attribute {name!r}")
