"""Property tests of the image and mask readers (finecut.data.io) on hostile bytes, which is
what the server feeds them: random bytes and mutations (flipped, cut, spliced, header fields
rewritten) of real PNG, JPEG, GIF, BMP, TIFF and WebP files. Whatever the bytes, a reader
returns a well-formed uint8 array or raises finecut's own error (FinecutError), quickly.
"""

from __future__ import annotations

import io
import struct
import time

import numpy as np
import pytest

from finecut.data.io import decode_image, decode_mask, read_image, read_mask
from finecut.errors import FinecutError

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

# PIL warns about the corrupt metadata it reads past; expected here
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

MAX_PIXELS = 1 << 20  # what a hostile header may make the reader allocate, in these tests
SECONDS = 2.0  # per example
FUZZ = settings(
    max_examples=150,
    deadline=None,  # timed below, with a bound that a slow shared machine still meets
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True,
    database=None,  # derandomized: nothing to replay, nothing to store
)


def _samples() -> dict[str, bytes]:
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    grey = rgb[:, :, 0]
    rgba = np.dstack([rgb, grey])
    out = {}
    for name, array, fmt, kwargs in [
        ("rgb.png", rgb, "PNG", {}),
        ("grey.png", grey, "PNG", {}),
        ("rgba.png", rgba, "PNG", {}),
        ("rgb.jpg", rgb, "JPEG", {"quality": 80}),
        ("p.gif", rgb, "GIF", {}),
        ("rgb.bmp", rgb, "BMP", {}),
        ("rgb.tif", rgb, "TIFF", {}),
        ("rgba.webp", rgba, "WEBP", {"lossless": True}),
    ]:
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, format=fmt, **kwargs)
        out[name] = buf.getvalue()
    buf = io.BytesIO()
    Image.fromarray(np.zeros((24, 32), np.uint16) + 1000).save(buf, format="PNG")
    out["grey16.png"] = buf.getvalue()
    return out


SAMPLES = _samples()


@st.composite
def mutated(draw) -> bytes:
    """A real image file with a few mutations."""
    data = bytearray(SAMPLES[draw(st.sampled_from(sorted(SAMPLES)))])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "splice", "dup", "int32"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "cut":
            del data[pos:]
        elif kind == "splice":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "dup":
            data[pos:pos] = data[pos : pos + draw(st.integers(1, 256))]
        elif kind == "int32" and pos + 4 <= len(data):  # sizes and lengths in headers
            value = draw(
                st.sampled_from(
                    [
                        0,
                        1,
                        0x7FFF,
                        0xFFFF,
                        0x10000,
                        0x7FFFFFFF,
                        0xFFFFFFFF,
                        draw(st.integers(0, 2**32 - 1)),
                    ]
                )
            )
            data[pos : pos + 4] = struct.pack(">I", value)
    return bytes(data)


def _check_image(data: bytes) -> None:
    t0 = time.perf_counter()
    try:
        image = decode_image(data, name="fuzz", max_pixels=MAX_PIXELS)
    except FinecutError as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert image.shape[0] * image.shape[1] <= MAX_PIXELS
        assert image.flags.c_contiguous
    assert time.perf_counter() - t0 < SECONDS


def _check_mask(data: bytes, shape=None) -> None:
    t0 = time.perf_counter()
    try:
        mask = decode_mask(data, name="fuzz", shape=shape, max_pixels=MAX_PIXELS)
    except FinecutError as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        assert mask.dtype == np.uint8 and mask.ndim == 2
        assert shape is None or mask.shape == shape
    assert time.perf_counter() - t0 < SECONDS


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes_image(data):
    _check_image(data)


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes_mask(data):
    _check_mask(data)


@FUZZ
@given(mutated())
def test_mutated_files_image(data):
    _check_image(data)


@FUZZ
@given(mutated())
def test_mutated_files_mask(data):
    _check_mask(data, shape=(24, 32))


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,  # derandomized: nothing to replay, nothing to store
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(mutated())
def test_path_readers_agree_with_the_byte_readers(tmp_path, data):
    """read_image / read_mask (files) fail or succeed like decode_image / decode_mask."""
    path = tmp_path / "fuzz.bin"
    path.write_bytes(data)
    for by_path, by_bytes in ((read_image, decode_image), (read_mask, decode_mask)):
        try:
            expected = by_bytes(data, max_pixels=MAX_PIXELS)
        except FinecutError:
            with pytest.raises(FinecutError):
                by_path(path, max_pixels=MAX_PIXELS)
        else:
            np.testing.assert_array_equal(by_path(path, max_pixels=MAX_PIXELS), expected)


def test_samples_decode():
    """The unmutated samples are valid (the mutations start from real files)."""
    for name, data in SAMPLES.items():
        assert decode_image(data, name=name).shape == (24, 32, 3), name
        assert decode_mask(data, name=name).shape == (24, 32), name
