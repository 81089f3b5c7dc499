"""Continuous refinement of a coarse mask at any resolution (CRM, METHODS.md section 4).

``finecut.refine(image, mask)`` refines in one call: this package is itself callable (it is also
the home of ``finecut.refine.perturb`` and ``finecut.refine.baselines``: the name serves both).
``Refiner`` keeps a model loaded. Torch models load on first use; ``perturb`` and ``baselines`` are
plain numpy and import nothing heavy.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from finecut.refine.api import Refiner, refine
    from finecut.refine.inference import InferenceConfig
    from finecut.refine.instances import InstanceConfig

__all__ = ["InferenceConfig", "InstanceConfig", "Refiner", "refine"]


def __getattr__(name: str) -> Any:
    if name in ("Refiner", "refine", "as_mask", "as_rgb", "load_refiner_model"):
        from finecut.refine import api

        return getattr(api, name)
    if name == "InferenceConfig":
        from finecut.refine.inference import InferenceConfig

        return InferenceConfig
    if name == "InstanceConfig":
        from finecut.refine.instances import InstanceConfig

        return InstanceConfig
    raise AttributeError(f"module 'finecut.refine' has no attribute {name!r}")


class _CallableModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """``finecut.refine(image, mask, *, device=None, soft=False, weights=None, config=...)``."""
        from finecut.refine.api import refine

        return refine(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
