"""Export finecut's networks for other runtimes: ``finecut export onnx -o DIR``.

This package imports finecut's public API only (the refiner's loader, the BatchNorm folding, the
ONNX folder format of :mod:`finecut.refine.onnx_runner`) and nothing in finecut imports it.

==========  ======================================================================================
``onnx``    :func:`export_onnx`: the CRM refiner's encoder and implicit head as ONNX, + manifest
==========  ======================================================================================

Needs the ``onnx`` extras: ``pip install 'finecut[onnx]'`` (onnx and onnxscript, which torch's
exporter uses, and onnxruntime, which runs the result and checks it after the export).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["export_onnx"]

if TYPE_CHECKING:  # pragma: no cover
    from finecut.export.onnx import export_onnx  # noqa: F401


def __getattr__(name: str) -> Any:
    if name == "export_onnx":
        from finecut.export.onnx import export_onnx

        return export_onnx
    raise AttributeError(f"module 'finecut.export' has no attribute {name!r}")
