"""Export the CRM refiner as two ONNX networks and a manifest (``finecut export onnx -o DIR``).

What is exported is what :class:`finecut.Refiner` runs in torch: the model with BatchNorm folded
into its convolutions (:func:`finecut.models.fold.fold_batchnorm`), split where
:mod:`finecut.refine.inference` splits it:

* ``encoder.onnx`` is :meth:`CRM.encode <finecut.models.crm.CRM.encode>` (image and coarse mask
  -> per-cell first-layer features of the stride-2 latent), its output permuted to channels last;
* ``head.onnx`` is :meth:`CRM.query <finecut.models.crm.CRM.query>` (the implicit MLP at any
  number of query points: the gathers of the 4 nearest cells, the position term, the MLP, the
  area weights and the coarse-mask skip, sampled with ``GridSample``), taking those features.

Both have dynamic sizes (image height and width any multiples of 32, any number of queries),
exported with torch's ``torch.export``-based exporter (the TorchScript tracer fixes the sizes
that the encoder's "same" padding and the head's gathers compute from shapes). The folder's
format (file names, input and output names, manifest) is :mod:`finecut.refine.onnx_runner`'s,
which runs it without torch. After writing, both networks are run in ONNX Runtime at sizes other
than the export's and compared with torch.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from finecut import __version__
from finecut.errors import ConfigError
from finecut.models.crm import CRM
from finecut.models.fold import fold_batchnorm
from finecut.refine.api import DEFAULT_WEIGHTS, load_refiner_model
from finecut.refine.onnx_runner import (
    ENCODER_INPUTS,
    ENCODER_OUTPUTS,
    FORMAT,
    FORMAT_VERSION,
    HEAD_INPUTS,
    HEAD_OUTPUTS,
    MANIFEST,
    NETWORKS,
    OnnxRunner,
)
from finecut.refine.torch_runner import TorchRunner
from finecut.weights import load_manifest, sha256_file

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_OPSET", "REQUIREMENTS", "export_onnx", "missing_requirements"]

#: ONNX opset of the export (GridSample needs 16; onnxruntime runs 18 since 1.14).
DEFAULT_OPSET = 18
#: import name -> pip name of what the export needs beyond finecut.
REQUIREMENTS = {"onnx": "onnx", "onnxscript": "onnxscript", "onnxruntime": "onnxruntime"}


def missing_requirements() -> list[str]:
    """pip names of the export's packages that are not installed."""
    return [pip for mod, pip in REQUIREMENTS.items() if importlib.util.find_spec(mod) is None]


class _Encoder(nn.Module):
    """``CRM.encode`` with channels-last output: (1, H/2, W/2, D) rows for the head's gathers."""

    def __init__(self, crm: CRM) -> None:
        super().__init__()
        self.crm = crm

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.crm.encode(image, mask).permute(0, 2, 3, 1)


class _Head(nn.Module):
    """``CRM.query`` on channels-last features (the exporter cancels the two permutes)."""

    def __init__(self, crm: CRM) -> None:
        super().__init__()
        self.crm = crm

    def forward(
        self, features: torch.Tensor, coords: torch.Tensor, cell: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        return self.crm.query(features.permute(0, 3, 1, 2), coords, cell, mask)


def _source_weights(weights: str | Path | None) -> dict:
    """What the export was made from: the embedded weights' name or the file, and its sha256."""
    if weights is None or (isinstance(weights, str) and not Path(weights).suffix):
        name = weights or DEFAULT_WEIGHTS
        return {"name": name, "sha256": load_manifest(name)["sha256"]}
    path = Path(weights)
    return {"file": path.name, "sha256": sha256_file(path)}


#: loggers of the exporter that report each optimisation step at INFO and missing torchvision
#: operators at WARNING: quiet during the export (errors still show)
_CHATTY = ("torch.onnx", "onnxscript", "onnx_ir")


@contextlib.contextmanager
def _quiet():
    loggers = [logging.getLogger(name) for name in _CHATTY]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            # notes on axis names and deprecations are the exporter's business, not the user's
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@dataclass(frozen=True)
class _Network:
    """What one ``torch.onnx.export`` call needs, and the labels of the file's axes."""

    module: nn.Module
    args: tuple
    dynamic: tuple
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    axes: dict[str, list[str | int | None]]


def _networks(net: CRM) -> dict[str, _Network]:
    """The two networks, with example inputs and their dynamic axes.

    The examples' values do not matter (nothing is traced from them), their sizes do not either
    (every size is dynamic); they are kept away from 1, which torch.export specialises.
    """
    dim = torch.export.Dim
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 64, 96, generator=gen)
    mask = (torch.rand(1, 1, 64, 96, generator=gen) > 0.5).float()
    encoder = _Encoder(net).eval()
    with torch.no_grad():
        features = encoder(image, mask)
    coords = torch.rand(1, 10, 2, generator=gen) * 2.0 - 1.0
    cell = torch.full((1, 10, 2), 2.0 / 64)
    # image sides are multiples of 32: the features are then exactly half of them
    ky, kx, q = dim("ky", min=1), dim("kx", min=1), dim("Q", min=1)
    by_32 = {2: 32 * ky, 3: 32 * kx}
    image_axes = [1, None, "H", "W"]
    return {
        "encoder": _Network(
            encoder,
            (image, mask),
            (by_32, by_32),
            ENCODER_INPUTS,
            ENCODER_OUTPUTS,
            {"image": image_axes, "mask": image_axes, "features": [1, "h", "w", None]},
        ),
        "head": _Network(
            _Head(net).eval(),
            (features, coords, cell, mask),
            ({1: dim("h"), 2: dim("w")}, {1: q}, {1: q}, {2: dim("H"), 3: dim("W")}),
            HEAD_INPUTS,
            HEAD_OUTPUTS,
            {
                "features": [1, "h", "w", None],
                "coords": [1, "Q", None],
                "cell": [1, "Q", None],
                "mask": image_axes,
                "logits": [1, "Q"],
            },
        ),
    }


def _export(network: _Network, path: Path, opset: int) -> None:
    """One ``torch.onnx.export`` (torch.export based) into a single self-contained file."""
    with _quiet(), torch.no_grad():
        torch.onnx.export(
            network.module,
            network.args,
            str(path),
            input_names=list(network.inputs),
            output_names=list(network.outputs),
            opset_version=opset,
            dynamo=True,
            dynamic_shapes=network.dynamic,
            external_data=False,
            verbose=False,
        )


def _name_axes(path: Path, axes: dict[str, list[str | int | None]]) -> dict[str, list[str]]:
    """Give the dynamic axes readable names (H, W, Q) in the saved file; its input and output
    names (an input the network does not use is not in the file)."""
    import onnx

    model = onnx.load(str(path))
    for value in [*model.graph.input, *model.graph.output]:
        for dim, label in zip(value.type.tensor_type.shape.dim, axes[value.name], strict=True):
            if isinstance(label, str):
                dim.dim_param = label
    onnx.save(model, str(path))
    return {
        "inputs": [v.name for v in model.graph.input],
        "outputs": [v.name for v in model.graph.output],
    }


def _check(net: CRM, directory: Path, tolerance: float = 1e-3) -> float:
    """Run both runners on a random image of another size than the export's; max |p difference|."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (96, 160, 3), dtype=np.uint8)
    mask = np.zeros((96, 160), np.float32)
    mask[20:70, 30:120] = 1.0
    coords = (rng.random((777, 2)) * 2.0 - 1.0).astype(np.float32)
    cell = np.array([2.0 / 96, 2.0 / 160], np.float32)
    reference, exported = TorchRunner(net, "cpu"), OnnxRunner(directory)
    want = reference.query(reference.encode(image, mask), coords, cell)
    got = exported.query(exported.encode(image, mask), coords, cell)
    error = float(np.abs(got - want).max())
    if not error <= tolerance:
        raise RuntimeError(
            f"the exported networks differ from torch by {error:.3g} in probability (> "
            f"{tolerance:g}); please report this with your torch and onnx versions"
        )
    return error


def export_onnx(
    directory: str | Path,
    *,
    weights: str | Path | None = None,
    opset: int = DEFAULT_OPSET,
    overwrite: bool = False,
) -> Path:
    """Write ``encoder.onnx``, ``head.onnx`` and ``manifest.json`` of the refiner into a folder.

    Args:
        directory: the folder (created if needed).
        weights: the refiner's weights, as for :func:`finecut.refine.api.load_refiner_model`
            (None: the embedded default).
        opset: ONNX opset (at least 16, for GridSample).
        overwrite: replace the files of an earlier export in ``directory``.

    Returns:
        The manifest's path.

    Raises:
        ConfigError: a package is missing, the opset is too old, or the files exist.
        WeightsError: the weights cannot be loaded.
    """
    missing = missing_requirements()
    if missing:
        needs = ", ".join(missing)
        raise ConfigError(f"the ONNX export needs {needs}: pip install 'finecut[onnx]'")
    if opset < 16:
        raise ConfigError(f"the ONNX export needs opset 16 or later (GridSample), got {opset}")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{str(directory)!r} exists and is not a folder")
    names = [*NETWORKS.values(), MANIFEST]
    existing = [directory / n for n in names if (directory / n).exists()]
    if existing and not overwrite:
        raise ConfigError(f"{str(existing[0])!r} exists (pass --overwrite to replace the export)")
    model = load_refiner_model(weights, "cpu")
    source = _source_weights(weights)
    net = fold_batchnorm(model)
    config = model.config
    directory.mkdir(parents=True, exist_ok=True)
    entries = {}
    with tempfile.TemporaryDirectory(dir=directory, prefix=".export-") as tmp:
        tmp = Path(tmp)
        for name, network in _networks(net).items():
            path = tmp / NETWORKS[name]
            log.info("exporting the %s%s", name, " (a minute or two)" if name == "encoder" else "")
            _export(network, path, opset)
            io = _name_axes(path, network.axes)
            entries[name] = {"file": path.name, "sha256": sha256_file(path), **io}
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "opset": opset,
            "networks": entries,
            "shapes": {
                "image": "(1, 3, H, W) float32 RGB in [0, 1]; H, W multiples of 32",
                "mask": "(1, 1, H, W) float32 coarse mask in {0, 1}",
                "features": f"(1, H/2, W/2, {config.hidden[0]}) float32",
                "coords": "(1, Q, 2) float32 (y, x) in [-1, 1] of the encoded image",
                "cell": "(1, Q, 2) float32 size of one query pixel, same units",
                "logits": "(1, Q) float32 mask logits",
            },
            "model": "crm",
            "config": config.to_dict(),
            "batchnorm_folded": True,
            "source_weights": source,
            "finecut_version": __version__,
            "torch_version": torch.__version__,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        error = _check(net, tmp)
        log.info("checked against torch: max probability difference %.2g", error)
        for name in names:  # the manifest last: it vouches for the networks beside it
            os.replace(tmp / name, directory / name)
    return directory / MANIFEST
