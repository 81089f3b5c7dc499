"""The server's settings: one frozen dataclass, checked when built (no fastapi import)."""

from __future__ import annotations

from dataclasses import dataclass

from finecut.errors import ConfigError

__all__ = ["ServeConfig"]


@dataclass(frozen=True)
class ServeConfig:
    """What ``finecut serve`` runs with; every limit the server enforces is here.

    Attributes:
        host: address to listen on; loopback unless told otherwise (``0.0.0.0`` opens the
            server to the network, which has no authentication).
        port: TCP port; 0 picks a free one (the address printed at start is the real one).
        max_upload_mb: largest request body, in MB (10**6 bytes), counted while it streams in;
            a larger body is refused with 413 before it is all read.
        max_pixels: largest image (width * height) decoded, checked from the header first.
        queue: requests that may wait for a worker; more are refused at once with 503 and
            Retry-After. At most ``workers + queue`` requests are admitted at a time (uploading,
            waiting or running), which bounds memory.
        workers: requests computed at once (threads sharing one loaded model). On a CPU one
            refinement already uses every core, so 1 is the default.
        device: ``cpu``, ``cuda``, ``cuda:N``, or None for CUDA when available.
        weights: refiner weights (None: the embedded ``crm_lite0``).
        threads: torch CPU threads (None keeps torch's default).
        soft_max_side: ``/api/soft`` solves at most at this longer side and upsamples the
            layers to the photo's size (soft segmentation costs seconds per 0.3 MP).
        upload_timeout_s: a request body must arrive within this time (else 408), so a slow
            client cannot hold a queue slot for ever.
        preload: load the refiner before listening (``finecut serve`` does); False loads it on
            first use (tests). The soft-segmentation embedding network is always loaded on the
            first ``/api/soft`` request.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_mb: float = 50.0
    max_pixels: int = 40_000_000
    queue: int = 8
    workers: int = 1
    device: str | None = None
    weights: str | None = None
    threads: int | None = None
    soft_max_side: int = 640
    upload_timeout_s: float = 120.0
    preload: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in 0..65535, got {self.port}")
        if not self.max_upload_mb > 0:
            raise ConfigError(f"max upload must be > 0 MB, got {self.max_upload_mb}")
        if self.max_pixels < 64:
            raise ConfigError(f"max pixels must be >= 64, got {self.max_pixels}")
        if self.queue < 0:
            raise ConfigError(f"queue must be >= 0, got {self.queue}")
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")
        if self.soft_max_side < 64:
            raise ConfigError(f"soft max side must be >= 64, got {self.soft_max_side}")
        if not self.upload_timeout_s > 0:
            raise ConfigError(f"upload timeout must be > 0 s, got {self.upload_timeout_s}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")

    @property
    def max_upload_bytes(self) -> int:
        """``max_upload_mb`` in bytes."""
        return int(self.max_upload_mb * 1_000_000)

    @property
    def capacity(self) -> int:
        """Requests admitted at once: ``workers + queue``."""
        return self.workers + self.queue
