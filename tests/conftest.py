from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ../shared/data; tests that need it skip when it is absent (a user's machine)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(
            f"real data not found at {SHARED_DATA} (only present on the project's machines)"
        )
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_crm_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random-init CRM weights written like shipped ones: ``tiny.safetensors`` + ``tiny.json``.

    The model is untrained, so with ``coarse_skip`` (the default) it returns the coarse mask
    exactly: the last MLP layer starts at zero.
    """
    from finecut.models.crm import CRM, CRMConfig
    from finecut.weights import write_weights

    torch.manual_seed(0)
    model = CRM(CRMConfig(), pretrained=False)
    directory = tmp_path_factory.mktemp("weights")
    return write_weights(
        model.state_dict(),
        "tiny",
        {"model": "crm", "config": model.config.to_dict()},
        directory=directory,
    )
