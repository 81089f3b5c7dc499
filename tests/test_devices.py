"""Device and precision choice: auto picks by the machine, bad names are clear errors."""

from __future__ import annotations

import pytest
import torch

from finecut import devices
from finecut.devices import cpu_has_bf16, resolve_device, resolve_precision
from finecut.errors import ConfigError


def test_auto_device_is_cpu_without_cuda() -> None:
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None).type == want
    assert resolve_device("auto").type == want


def test_bad_device_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="invalid device"):
        resolve_device("tpu:7")


def test_precision_as_given() -> None:
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(ConfigError, match="unknown precision 'fp16'"):
        resolve_precision("fp16", cpu)


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_follows_the_cpu(monkeypatch, native: bool) -> None:
    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: native)
    want = "bf16" if native else "fp32"
    assert resolve_precision(None, torch.device("cpu")) == want
    assert resolve_precision("auto", torch.device("cpu")) == want
    # CUDA: not measured there, so float32 whatever the CPU has
    assert resolve_precision("auto", torch.device("cuda")) == "fp32"


def test_cpu_has_bf16_reads_torch_helpers(monkeypatch) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert cpu_has_bf16() is False
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert cpu_has_bf16() is torch.backends.mkldnn.is_available()
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    assert cpu_has_bf16() is False  # a torch without the helpers: no bf16
