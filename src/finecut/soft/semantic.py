"""Which semantic features :func:`finecut.soft.soft_segment` uses when it is not given an array.

``features="auto"`` (the default, also what ``None`` means) runs finecut's embedding network
(``embedding_lite0``, shipped in the package; :mod:`finecut.models.embedding`), as
``finecut soft --features auto`` does; when this finecut has no embedded embedding weights it
warns and falls back to colour + position features. ``"embedding"`` is the same but refuses to
fall back. ``"none"`` is the explicit choice of colour + position features (layers then follow
colours, not objects).

This is the only module of :mod:`finecut.soft` that reaches model code, and only when called:
``import finecut.soft`` stays free of torch, and arrays of features never load it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from finecut.errors import ConfigError, WeightsError

__all__ = ["FEATURE_CHOICES", "embedding_features", "has_embedded_embedding", "semantic_features"]

#: The names ``soft_segment(features=...)`` takes instead of an array.
FEATURE_CHOICES = ("auto", "embedding", "none")

#: The embedded embedding weights (``finecut.models.embedding.DEFAULT_EMBEDDING_WEIGHTS``, named
#: here so that checking for them does not import torch).
DEFAULT_EMBEDDING = "embedding_lite0"


def has_embedded_embedding() -> bool:
    """True when this finecut ships the default embedding weights."""
    from finecut.weights import WEIGHTS_DIR

    return (WEIGHTS_DIR / f"{DEFAULT_EMBEDDING}.json").is_file()


def embedding_features(
    image: np.ndarray, *, weights: str | Path | None = None, device: str | None = None
) -> np.ndarray:
    """Per-pixel embeddings of ``image`` by finecut's embedding network.

    Args:
        image: (H, W, 3) uint8 RGB.
        weights: None for the embedded ``embedding_lite0``; see
            :func:`finecut.models.embedding.load_embedding_model`.
        device: where the network runs (None: CUDA when available).

    Shape:
        image (H, W, 3) -> (H, W, D) float32 (D = 128 for the shipped weights).
    """
    from finecut.devices import resolve_device
    from finecut.models.embedding import load_embedding_model

    return load_embedding_model(weights, resolve_device(device)).embed(image)


def semantic_features(
    image: np.ndarray,
    choice: str | None = "auto",
    *,
    weights: str | Path | None = None,
    device: str | None = None,
) -> np.ndarray | None:
    """The features ``choice`` names for ``image``; None means colour + position features.

    Args:
        image: (H, W, 3) uint8 RGB.
        choice: "auto" (or None), "embedding" or "none"; see the module docstring.
        weights: embedding weights instead of the embedded ones.
        device: where the network runs.

    Raises:
        ConfigError: an unknown choice.
        WeightsError: "embedding" without embedding weights.
    """
    choice = "auto" if choice is None else choice
    if choice not in FEATURE_CHOICES:
        raise ConfigError(
            f"features must be an (H, W, D) array or one of {', '.join(FEATURE_CHOICES)}; "
            f"got {choice!r}"
        )
    if choice == "none":
        return None
    if weights is None and not has_embedded_embedding():
        if choice == "embedding":
            raise WeightsError(
                "this finecut has no embedded embedding weights; pass embedding weights, your "
                "own features, or features='none'"
            )
        warnings.warn(
            "soft_segment: this finecut has no embedded embedding network; using colour + "
            "position features, so layers follow colours rather than objects",
            UserWarning,
            stacklevel=2,
        )
        return None
    return embedding_features(image, weights=weights, device=device)
