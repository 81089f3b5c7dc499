"""finecut: segmentation that gets the details right.

Importing ``finecut`` is cheap: heavy submodules (torch models, refinement) load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from finecut.errors import ConfigError, FinecutError, ImageError, WeightsError

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "FinecutError",
    "ImageError",
    "WeightsError",
    "__version__",
    "refine",
    "Refiner",
]

if TYPE_CHECKING:  # pragma: no cover
    from finecut.refine import Refiner, refine  # noqa: F401


def __getattr__(name: str) -> Any:
    # Lazy access keeps `import finecut` light; the refine package pulls in torch models.
    # `finecut.refine` is a callable package (see finecut/refine/__init__.py), so
    # `finecut.refine(image, mask)` works whether or not the package was imported before.
    if name in ("refine", "Refiner"):
        import importlib

        module = importlib.import_module("finecut.refine")
        return module if name == "refine" else getattr(module, name)
    raise AttributeError(f"module 'finecut' has no attribute {name!r}")
