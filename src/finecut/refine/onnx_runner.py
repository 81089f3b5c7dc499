"""The :class:`~finecut.refine.runner.Runner` of CRM's networks in ONNX Runtime, without torch.

``finecut export onnx -o DIR`` (:mod:`finecut.export.onnx`) writes two networks and a manifest:

* ``encoder.onnx``: ``image`` (1, 3, H, W) float32 RGB in [0, 1] and ``mask`` (1, 1, H, W)
  float32 in {0, 1}, H and W any multiples of 32 -> ``features`` (1, H/2, W/2, D) float32, the
  per-cell first-layer features of :meth:`finecut.models.crm.CRM.encode`, channels last (the
  head gathers rows of D numbers from them);
* ``head.onnx``: ``features``, ``coords`` (1, Q, 2) and ``cell`` (1, Q, 2) float32 (y, x) in
  [-1, 1] of the encoded image, ``mask`` (the encoder's mask; absent for a model without
  ``coarse_skip``) -> ``logits`` (1, Q), :meth:`finecut.models.crm.CRM.query`, any Q;
* ``manifest.json``: the format and its version, the opset, each network's file, sha256, input
  and output names, the CRM config, the finecut version and the sha256 of the source weights.

:func:`read_onnx_manifest` checks a folder against its manifest (every file present, every sha256
equal) before anything is loaded; each failure is one :class:`finecut.WeightsError` line.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from finecut.errors import ConfigError, WeightsError
from finecut.refine.runner import Runner
from finecut.weights import sha256_file

log = logging.getLogger(__name__)

__all__ = [
    "ENCODER_INPUTS",
    "ENCODER_OUTPUTS",
    "FORMAT",
    "FORMAT_VERSION",
    "HEAD_INPUTS",
    "HEAD_OUTPUTS",
    "MANIFEST",
    "NETWORKS",
    "OnnxRunner",
    "read_onnx_manifest",
]

FORMAT = "finecut-crm-onnx"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
#: network name -> file name in the folder
NETWORKS = {"encoder": "encoder.onnx", "head": "head.onnx"}
ENCODER_INPUTS, ENCODER_OUTPUTS = ("image", "mask"), ("features",)
HEAD_INPUTS, HEAD_OUTPUTS = ("features", "coords", "cell", "mask"), ("logits",)
#: network name -> the (inputs, outputs) it may have (a head without coarse_skip takes no mask)
_INTERFACES = {
    "encoder": [(list(ENCODER_INPUTS), list(ENCODER_OUTPUTS))],
    "head": [(list(HEAD_INPUTS), list(HEAD_OUTPUTS)), (list(HEAD_INPUTS[:3]), list(HEAD_OUTPUTS))],
}
_INSTALL = "pip install 'finecut[onnx]'"


def read_onnx_manifest(directory: str | Path) -> dict:
    """The manifest of a ``finecut export onnx`` folder, after checking every file's sha256.

    Raises:
        WeightsError: the folder, the manifest or a network file is missing, the manifest is not
            one finecut reads, or a file's sha256 differs from the manifest's.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise WeightsError(f"ONNX folder {str(directory)!r} not found")
    path = directory / MANIFEST
    if not path.is_file():
        raise WeightsError(
            f"{str(directory)!r} has no {MANIFEST}: not a folder written by finecut export onnx"
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{str(path)!r} cannot be read: {' '.join(str(exc).split())}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise WeightsError(f"{str(path)!r} is not a finecut ONNX manifest (format {FORMAT!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise WeightsError(
            f"{str(path)!r} has format version {manifest.get('format_version')!r}; this finecut "
            f"reads version {FORMAT_VERSION} (export again with this finecut)"
        )
    networks = manifest.get("networks")
    if not isinstance(networks, dict) or set(networks) != set(NETWORKS):
        raise WeightsError(f"{str(path)!r} must list the networks {sorted(NETWORKS)}")
    for name, entry in networks.items():
        if not isinstance(entry, dict) or entry.get("file") != NETWORKS[name]:
            raise WeightsError(f"{str(path)!r}: network {name!r} must be in {NETWORKS[name]}")
        if (entry.get("inputs"), entry.get("outputs")) not in _INTERFACES[name]:
            raise WeightsError(
                f"{str(path)!r}: network {name!r} has inputs {entry.get('inputs')} and outputs "
                f"{entry.get('outputs')}, not what this finecut runs"
            )
        file = directory / entry["file"]
        if not file.is_file():
            raise WeightsError(f"{str(file)!r} not found (the manifest lists it)")
        actual, recorded = sha256_file(file), str(entry.get("sha256"))
        if actual != recorded:
            raise WeightsError(
                f"{str(file)!r} is corrupt or was replaced: sha256 {actual[:12]}... does not match "
                f"the manifest's {recorded[:12]}..."
            )
    return manifest


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError(f"the onnxruntime backend needs onnxruntime: {_INSTALL}") from None
    return onnxruntime


class OnnxRunner(Runner):
    """Runs a ``finecut export onnx`` folder's encoder and head in ONNX Runtime on the CPU.

    Args:
        directory: the folder (checked by :func:`read_onnx_manifest`).
        threads: ONNX Runtime's intra-op threads (None: its default, one per physical core).

    Raises:
        WeightsError: see :func:`read_onnx_manifest`; or a network ONNX Runtime cannot load,
            or whose inputs and outputs are not the manifest's.
        ConfigError: onnxruntime is not installed.
    """

    def __init__(self, directory: str | Path, *, threads: int | None = None) -> None:
        from scipy.special import expit

        directory = Path(directory)
        self.manifest = read_onnx_manifest(directory)
        ort = _import_onnxruntime()
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # idle pool threads sleep instead of spinning: on a CPU shared with other work, spinning
        # threads took the cores the running ones needed (a 320x320 tile took 0.16-0.56 s to
        # encode with 2 spinning threads, 0.105 s without, beside a training job on 2 cores)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # no memory arena or pattern planning: tiles, whole coarse scales and query chunks all
        # differ in size, and the arena kept the largest of each (aeroplane 3492x2328: 0.98 GB
        # peak RSS with them, 0.66-0.77 GB without, the same time)
        options.enable_cpu_mem_arena = False
        options.enable_mem_pattern = False
        sessions = {}
        for name, entry in self.manifest["networks"].items():
            file = directory / entry["file"]
            try:
                session = ort.InferenceSession(
                    str(file), options, providers=["CPUExecutionProvider"]
                )
            except Exception as exc:  # onnxruntime raises its own types for bad graphs
                why = " ".join(str(exc).split())
                raise WeightsError(f"ONNX Runtime cannot load {str(file)!r}: {why}") from None
            inputs = [i.name for i in session.get_inputs()]
            outputs = [o.name for o in session.get_outputs()]
            if inputs != entry.get("inputs") or outputs != entry.get("outputs"):
                raise WeightsError(
                    f"{str(file)!r} takes {inputs} and gives {outputs}, not the manifest's "
                    f"{entry.get('inputs')} and {entry.get('outputs')}"
                )
            sessions[name] = session
        self._encoder, self._head = sessions["encoder"], sessions["head"]
        self._head_takes_mask = "mask" in self.manifest["networks"]["head"]["inputs"]
        self._sigmoid = expit
        log.debug("onnxruntime %s, networks in %s", ort.__version__, directory)

    def encode(self, image: np.ndarray, mask: np.ndarray) -> Any:
        img = np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32)
        img /= np.float32(255.0)
        msk = np.ascontiguousarray(mask[None, None], dtype=np.float32)
        features = self._encoder.run(list(ENCODER_OUTPUTS), {"image": img, "mask": msk})[0]
        return features, msk

    def query(self, encoded: Any, coords: np.ndarray, cell: np.ndarray) -> np.ndarray:
        features, msk = encoded
        points = np.ascontiguousarray(coords[None], dtype=np.float32)
        feed = {
            "features": features,
            "coords": points,
            "cell": np.ascontiguousarray(np.broadcast_to(cell, points.shape), dtype=np.float32),
        }
        if self._head_takes_mask:
            feed["mask"] = msk
        logits = self._head.run(list(HEAD_OUTPUTS), feed)[0]
        return self._sigmoid(logits[0]).astype(np.float32, copy=False)
