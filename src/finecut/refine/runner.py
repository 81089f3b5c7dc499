"""The two calls that coarse-to-fine inference makes of a refiner network, as one small interface.

:func:`finecut.refine.inference.refine_probability` decides what to encode and where to query
(bands, tiles, sentinels) on numpy arrays; a :class:`Runner` runs the network for it. Two exist:
:class:`finecut.refine.torch_runner.TorchRunner` (a :class:`~finecut.models.crm.CRM` in torch)
and :class:`finecut.refine.onnx_runner.OnnxRunner` (the networks ``finecut export onnx`` writes,
in ONNX Runtime, without torch). This module imports neither.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

__all__ = ["Runner"]


class Runner(ABC):
    """Runs CRM's encoder on a region and its implicit head at query points (numpy in and out)."""

    @abstractmethod
    def encode(self, image: np.ndarray, mask: np.ndarray) -> Any:
        """Encode one region; the result is opaque and only passed back to :meth:`query`.

        Args:
            image: (H, W, 3) uint8 RGB; H and W are multiples of 32 (the caller pads).
            mask: (H, W) float32 coarse mask, 0 or 1.
        """

    @abstractmethod
    def query(self, encoded: Any, coords: np.ndarray, cell: np.ndarray) -> np.ndarray:
        """Foreground probabilities at query points of an encoded region.

        Args:
            encoded: what :meth:`encode` returned.
            coords: (Q, 2) float32 (y, x) in [-1, 1] of the encoded (padded) region.
            cell: (2,) float32 size of one query pixel in the same units, (y, x).

        Returns:
            (Q,) float32 in [0, 1].
        """
