"""The models the server keeps: loaded once, on first use or at start, shared by the workers."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from finecut.serve.config import ServeConfig

log = logging.getLogger(__name__)

__all__ = ["Models"]


class Models:
    """Holds the refiner (CRM, ``finecut.Refiner``) and the soft-segmentation embedding network.

    Each is built once, under a lock, the first time it is asked for; ``finecut serve`` asks for
    the refiner before it listens (``ServeConfig.preload``), so a broken weights file stops the
    server at start with one line and the first request is not slow. Inference on one loaded
    model from several worker threads is safe (eval mode, no gradients, no state changes).
    """

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._refiner: Any = None
        self._embedder: Any = None
        self.load_seconds: dict[str, float] = {}

    def refiner(self) -> Any:
        """The ``finecut.Refiner`` (built on first call)."""
        with self._lock:
            if self._refiner is None:
                from finecut import Refiner

                t0 = time.perf_counter()
                self._refiner = Refiner(
                    self.config.device, weights=self.config.weights, threads=self.config.threads
                )
                self.load_seconds["refiner"] = round(time.perf_counter() - t0, 2)
                log.info("refiner loaded in %.1f s", self.load_seconds["refiner"])
            return self._refiner

    def embedder(self) -> Any:
        """The embedding network of soft segmentation (built on first call)."""
        with self._lock:
            if self._embedder is None:
                from finecut.devices import resolve_device
                from finecut.models.embedding import load_embedding_model

                t0 = time.perf_counter()
                self._embedder = load_embedding_model(None, resolve_device(self.config.device))
                self.load_seconds["embedding"] = round(time.perf_counter() - t0, 2)
                log.info("embedding network loaded in %.1f s", self.load_seconds["embedding"])
            return self._embedder

    def status(self) -> dict[str, str]:
        """``{"refiner": "loaded" | "not loaded", "embedding": ...}``."""
        return {
            "refiner": "loaded" if self._refiner is not None else "not loaded",
            "embedding": "loaded" if self._embedder is not None else "not loaded",
        }
