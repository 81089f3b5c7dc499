from __future__ import annotations

import numpy as np
import pytest

from tests.serve._live import coffee, encode


@pytest.fixture(scope="session")
def photo() -> tuple[np.ndarray, np.ndarray]:
    """The coffee photo at 300x200 and its coarse mask (uint8 0/255)."""
    return coffee(300)


@pytest.fixture(scope="session")
def photo_png(photo) -> bytes:
    return encode(photo[0])


@pytest.fixture(scope="session")
def photo_jpeg(photo) -> bytes:
    return encode(photo[0], "JPEG")


@pytest.fixture(scope="session")
def mask_png(photo) -> bytes:
    return encode(photo[1])


@pytest.fixture(scope="module")
def client():
    """A TestClient on an app with small limits (2 MB uploads, 4 MP images, queue 2); the
    refiner loads on first use, once per module."""
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from finecut.serve import ServeConfig, create_app

    config = ServeConfig(max_upload_mb=2, max_pixels=4_000_000, queue=2, preload=False)
    with TestClient(create_app(config), base_url="http://localhost") as test_client:
        yield test_client
