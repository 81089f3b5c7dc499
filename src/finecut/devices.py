"""Device choice shared by inference and training: CUDA when there is one, else the CPU."""

from __future__ import annotations

import torch

__all__ = ["PRECISIONS", "cpu_has_bf16", "resolve_device", "resolve_precision"]

#: Precisions of the refiner's encoder: "auto" (:func:`resolve_precision`), "fp32", "bf16".
PRECISIONS = ("auto", "fp32", "bf16")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/"auto" picks CUDA when available, else CPU; a bad name is a clear error."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        from finecut.errors import ConfigError

        raise ConfigError(f"invalid device {device!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        from finecut.errors import ConfigError

        raise ConfigError(f"device {device!r} requested but CUDA is not available on this machine")
    return dev


def cpu_has_bf16() -> bool:
    """Whether this CPU has native bfloat16 arithmetic (AVX-512 BF16 or AMX), where oneDNN runs
    bfloat16 convolutions faster than float32; elsewhere bfloat16 is emulated and slower."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    # private torch helpers (the public API has none); absent in some builds -> no bf16
    return bool(torch.backends.mkldnn.is_available()) and any(
        bool(getattr(cpu, name, lambda: False)()) for name in checks
    )


def resolve_precision(precision: str | None, device: torch.device) -> str:
    """``None``/"auto": "bf16" on a CPU with native bfloat16 (:func:`cpu_has_bf16`), "fp32"
    elsewhere (CUDA included: not measured there); "fp32" and "bf16" as given."""
    if precision is None or precision == "auto":
        return "bf16" if device.type == "cpu" and cpu_has_bf16() else "fp32"
    if precision not in PRECISIONS:
        from finecut.errors import ConfigError

        raise ConfigError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return precision
