"""Tests for finecut.data.io: conversion rules, bad inputs, atomic and protected writes."""

from __future__ import annotations

import logging
import os
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from finecut import ImageError
from finecut.data import io as fio
from finecut.data import (
    list_images,
    pair_by_stem,
    read_image,
    read_mask,
    write_image,
    write_mask,
)

RNG = np.random.default_rng(1234)


# ----------------------------------------------------------------------------- helpers


def _chunk(tag: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(tag + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)


def png_bytes(
    arr: np.ndarray,
    color_type: int,
    bit_depth: int = 16,
    *,
    size: tuple[int, int] | None = None,
    extra: bytes = b"",
) -> bytes:
    """A PNG written by hand: any bit depth / colour type; ``size`` may lie about the pixels."""
    h, w = arr.shape[:2]
    dtype = ">u2" if bit_depth == 16 else "u1"
    rows = arr.astype(dtype).reshape(h, -1)
    raw = b"".join(b"\x00" + r.tobytes() for r in rows)
    width, height = size if size is not None else (w, h)
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + extra
        + _chunk(b"IDAT", zlib.compress(raw))
        + _chunk(b"IEND", b"")
    )


def exif_bytes(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def save(path: Path, im: Image.Image, **params) -> Path:
    im.save(path, **params)
    return path


def round257(x: np.ndarray) -> np.ndarray:
    return np.round(x.astype(np.float64) / 257.0).astype(np.uint8)


def over_white(c: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Float reference of compositing over white."""
    a = a.astype(np.float64)[..., None] / 255.0
    return np.round(c.astype(np.float64) * a + 255.0 * (1.0 - a)).astype(np.uint8)


# Values that straddle every rounding boundary of x / 257.
U16 = np.array([0, 1, 128, 129, 256, 257, 385, 386, 1000, 32767, 32896, 65279, 65535], np.uint16)


# ----------------------------------------------------------------------------- read_image


def test_rgb_png_exact(tmp_path):
    rgb = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    out = read_image(save(tmp_path / "a.png", Image.fromarray(rgb)))
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, rgb)


def test_gray_replicated(tmp_path):
    gray = RNG.integers(0, 256, (4, 6), dtype=np.uint8)
    out = read_image(save(tmp_path / "g.png", Image.fromarray(gray)))
    np.testing.assert_array_equal(out, np.repeat(gray[:, :, None], 3, axis=2))


def test_one_bit(tmp_path):
    bits = np.array([[0, 1, 1], [1, 0, 0]], dtype=bool)
    path = save(tmp_path / "b.png", Image.fromarray(bits))
    assert Image.open(path).mode == "1"
    np.testing.assert_array_equal(read_image(path)[:, :, 1], bits * 255)


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_16bit_gray(tmp_path, ext):
    g = U16.reshape(1, -1)
    path = tmp_path / f"g16.{ext}"
    assert cv2.imwrite(str(path), g)
    assert Image.open(path).mode.startswith("I;16")
    out = read_image(path)
    np.testing.assert_array_equal(out[:, :, 0], round257(g))
    np.testing.assert_array_equal(out[0, :, 0][[0, 2, 3, 5, -1]], [0, 0, 1, 1, 255])


def test_16bit_big_endian_tiff(tmp_path):
    g = U16.reshape(1, -1)
    path = save(tmp_path / "g.tif", Image.fromarray(g.astype(">u2")))
    assert Image.open(path).mode == "I;16B"
    np.testing.assert_array_equal(read_image(path)[:, :, 2], round257(g))


def test_int32_within_16bit_range(tmp_path):
    values = U16.astype(np.int32).reshape(1, -1)
    path = save(tmp_path / "i.tif", Image.fromarray(values))
    assert Image.open(path).mode == "I"
    np.testing.assert_array_equal(read_image(path)[:, :, 0], round257(values))


@pytest.mark.parametrize("bad", [70000, -1])
def test_int32_out_of_range_refused(tmp_path, bad):
    path = save(tmp_path / "i.tif", Image.fromarray(np.array([[0, bad]], np.int32)))
    with pytest.raises(ImageError, match=r"i\.tif.*outside 0\.\.65535"):
        read_image(path)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0.0, 0.2, 0.5, 1.0], [0, 51, 128, 255]),  # max <= 1: scaled
        ([-0.5, 0.0, 0.25, 1.0], [0, 0, 64, 255]),  # negatives clipped
        ([-5.0, 100.4, 254.6, 300.0], [0, 100, 255, 255]),  # max > 1: clipped to 0..255
        ([np.nan, 0.5, 1.0, 0.0], [0, 128, 255, 0]),  # NaN -> 0
    ],
)
def test_float_image(tmp_path, values, expected):
    path = save(tmp_path / "f.tif", Image.fromarray(np.array([values], np.float32)))
    assert Image.open(path).mode == "F"
    np.testing.assert_array_equal(read_image(path)[0, :, 0], expected)


def test_la_composited_over_white(tmp_path):
    la = np.array([[[100, 0], [100, 255], [100, 128], [0, 1]]], np.uint8)
    path = save(
        tmp_path / "la.png",
        Image.fromarray(
            la,
        ),
    )
    assert Image.open(path).mode == "LA"
    out = read_image(path)[0, :, 0]
    # round(100 * 128 / 255 + 127) = round(177.196) = 177; round(0 + 254) = 254
    np.testing.assert_array_equal(out, [255, 100, 177, 254])


def test_rgba_composited_over_white(tmp_path):
    rgba = RNG.integers(0, 256, (8, 9, 4), dtype=np.uint8)
    rgba[0, 0] = [10, 20, 30, 0]
    rgba[0, 1] = [10, 20, 30, 255]
    out = read_image(save(tmp_path / "c.png", Image.fromarray(rgba)))
    np.testing.assert_array_equal(out, over_white(rgba[:, :, :3], rgba[:, :, 3]))
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])
    np.testing.assert_array_equal(out[0, 1], [10, 20, 30])


def test_composite_exhaustive_against_float():
    c, a = np.meshgrid(np.arange(256, dtype=np.uint8), np.arange(256, dtype=np.uint8))
    got = fio._composite_over_white(c, a)
    ref = np.round(c * (a / 255.0) + 255.0 * (1.0 - a / 255.0)).astype(np.uint8)
    np.testing.assert_array_equal(got, ref)


def test_to8_from16_exhaustive():
    x = np.arange(65536, dtype=np.uint16)
    np.testing.assert_array_equal(fio._to8_from16(x), round257(x))


def test_palette_via_rgba(tmp_path):
    im = Image.fromarray(np.array([[0, 1, 2]], np.uint8), "P")
    im.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255])
    im.info["transparency"] = 2  # index 2 transparent -> white
    path = save(tmp_path / "p.png", im, transparency=2)
    assert Image.open(path).mode == "P"
    np.testing.assert_array_equal(read_image(path)[0], [[255, 0, 0], [0, 255, 0], [255] * 3])


def test_cmyk(tmp_path):
    cmyk = np.array([[[0, 0, 0, 0], [255, 0, 0, 0], [0, 0, 0, 255], [0, 255, 255, 0]]], np.uint8)
    path = save(tmp_path / "k.tif", Image.fromarray(cmyk, "CMYK"))
    assert Image.open(path).mode == "CMYK"
    expected = [[255, 255, 255], [0, 255, 255], [0, 0, 0], [255, 0, 0]]
    np.testing.assert_array_equal(read_image(path)[0], expected)


def test_ycbcr(tmp_path):
    ycc = np.array([[[255, 128, 128], [0, 128, 128], [128, 128, 128]]], np.uint8)
    path = save(tmp_path / "y.tif", Image.fromarray(ycc, "YCbCr"))
    assert Image.open(path).mode == "YCbCr"
    out = read_image(path)[0]
    np.testing.assert_array_equal(out, np.asarray(Image.open(path).convert("RGB"))[0])
    np.testing.assert_array_equal(out[:, 0], [255, 0, 128])
    assert (out == out[:, :1]).all()  # neutral chroma stays gray


def _bgr16(rgb16: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rgb16[:, :, [2, 1, 0, 3][: rgb16.shape[2]]])


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_16bit_rgb_keeps_precision(tmp_path, ext):
    planes = [np.resize(U16, (3, 13)), np.resize(U16[::-1], (3, 13)), np.full((3, 13), 385)]
    rgb16 = np.stack(planes, axis=2).astype(np.uint16)
    path = tmp_path / f"rgb16.{ext}"
    assert cv2.imwrite(str(path), _bgr16(rgb16))
    assert Image.open(path).mode == "RGB"  # PIL alone would drop the low byte
    out = read_image(path)
    np.testing.assert_array_equal(out, round257(rgb16))
    # PIL's own decoding is x >> 8, which differs (e.g. 385 -> 1, not 2): proves we did better.
    assert not np.array_equal(np.asarray(Image.open(path).convert("RGB")), out)


def test_16bit_rgba_composited(tmp_path):
    rgba16 = RNG.integers(0, 65536, (4, 5, 4)).astype(np.uint16)
    rgba16[0, 0, 3] = 0
    path = tmp_path / "rgba16.png"
    assert cv2.imwrite(str(path), _bgr16(rgba16))
    eight = round257(rgba16)
    np.testing.assert_array_equal(read_image(path), over_white(eight[:, :, :3], eight[:, :, 3]))
    np.testing.assert_array_equal(read_image(path)[0, 0], [255, 255, 255])


def test_16bit_gray_alpha(tmp_path):
    la16 = np.array([[[1000, 65535], [60000, 0], [385, 32896]]], np.uint16)
    path = tmp_path / "la16.png"
    path.write_bytes(png_bytes(la16, color_type=4))
    eight = round257(la16)
    expected = over_white(eight[:, :, :1], eight[:, :, 1])[:, :, 0]
    np.testing.assert_array_equal(read_image(path)[:, :, 0], expected)
    np.testing.assert_array_equal(read_mask(path), eight[:, :, 1])  # alpha is the mask


# The image, after orientation, must look like ImageOps.exif_transpose's result.
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pil(tmp_path, orientation):
    rgb = RNG.integers(0, 256, (3, 5, 3), dtype=np.uint8)
    path = save(tmp_path / "o.png", Image.fromarray(rgb), exif=exif_bytes(orientation))
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    assert (expected.shape[:2] == (5, 3)) == (orientation >= 5)
    np.testing.assert_array_equal(read_image(path), expected)
    np.testing.assert_array_equal(read_mask(path), expected.max(axis=2))


def _quadrant_photo() -> np.ndarray:
    """64x96 photo: top-left red, top-right green, bottom-left blue, bottom-right white."""
    img = np.zeros((64, 96, 3), np.uint8)
    img[:32, :48] = [255, 0, 0]
    img[:32, 48:] = [0, 255, 0]
    img[32:, :48] = [0, 0, 255]
    img[32:, 48:] = [255, 255, 255]
    return img


def _corners(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    return img[[h // 4, h // 4, 3 * h // 4, 3 * h // 4], [w // 4, 3 * w // 4, w // 4, 3 * w // 4]]


@pytest.mark.parametrize(
    ("orientation", "shape", "corner_colors"),
    [
        # 6: rotate 90 degrees clockwise: blue comes to the top-left.
        (6, (96, 64, 3), [[0, 0, 255], [255, 0, 0], [255, 255, 255], [0, 255, 0]]),
        # 3: rotate 180 degrees.
        (3, (64, 96, 3), [[255, 255, 255], [0, 0, 255], [0, 255, 0], [255, 0, 0]]),
    ],
)
def test_exif_rotated_jpeg(tmp_path, orientation, shape, corner_colors):
    path = save(
        tmp_path / "r.jpg", Image.fromarray(_quadrant_photo()), exif=exif_bytes(orientation)
    )
    out = read_image(path)
    assert out.shape == shape
    np.testing.assert_allclose(_corners(out), corner_colors, atol=6)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    np.testing.assert_array_equal(out, expected)


def test_exif_orientation_on_16bit_png(tmp_path):
    rgb16 = RNG.integers(0, 65536, (2, 3, 3)).astype(np.uint16)
    bgr = _bgr16(rgb16)
    encoded = png_bytes(bgr[:, :, ::-1], color_type=2, extra=_chunk(b"eXIf", exif_bytes(6)))
    path = tmp_path / "o16.png"
    path.write_bytes(encoded)
    np.testing.assert_array_equal(read_image(path), np.rot90(round257(rgb16), -1))


def test_multiframe_gif_first_frame_logged(tmp_path, caplog):
    frames = [Image.new("RGB", (4, 3), c) for c in [(255, 0, 0), (0, 0, 255)]]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    with caplog.at_level(logging.INFO, logger="finecut.data.io"):
        out = read_image(path)
    np.testing.assert_array_equal(out, np.broadcast_to([255, 0, 0], (3, 4, 3)))
    assert "first" in caplog.text and "anim.gif" in caplog.text


def test_multipage_tiff_first_page(tmp_path):
    pages = [Image.new("L", (3, 2), v) for v in (40, 200)]
    path = tmp_path / "pages.tif"
    pages[0].save(path, save_all=True, append_images=pages[1:])
    assert (read_image(path) == 40).all()


def test_real_jpeg(shared_data):
    path = sorted((shared_data / "ecssd" / "images").glob("*.jpg"))[0]
    out = read_image(path)
    np.testing.assert_array_equal(out, np.asarray(Image.open(path).convert("RGB")))
    assert out.shape[2] == 3 and max(out.shape[:2]) <= 400


def test_8k_photo_passes_default_limit(tmp_path):
    path = save(tmp_path / "8k.png", Image.new("1", (7680, 4320), 1))
    out = read_image(path)
    assert out.shape == (4320, 7680, 3) and out[0, 0, 0] == 255 and out[-1, -1, 2] == 255


# ----------------------------------------------------------------------------- bad inputs


def _valid_png(tmp_path: Path) -> bytes:
    path = save(tmp_path / "ok.png", Image.fromarray(RNG.integers(0, 256, (64, 64, 3), np.uint8)))
    return path.read_bytes()


def _valid_jpeg(tmp_path: Path) -> bytes:
    path = save(tmp_path / "ok.jpg", Image.fromarray(RNG.integers(0, 256, (64, 64, 3), np.uint8)))
    return path.read_bytes()


def _make_bad(kind: str, tmp_path: Path) -> Path:
    """Return the path of a bad input of the given kind."""
    if kind == "missing":
        return tmp_path / "missing.png"
    if kind == "folder":
        (tmp_path / "folder.png").mkdir()
        return tmp_path / "folder.png"
    path = tmp_path / f"bad_{kind}.png"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not an image\n")
    elif kind == "truncated_jpeg":
        data = _valid_jpeg(tmp_path)
        path = tmp_path / "bad_truncated.jpg"
        path.write_bytes(data[: len(data) // 2])
    elif kind == "truncated_png":
        data = _valid_png(tmp_path)
        path.write_bytes(data[: len(data) // 2])
    elif kind == "corrupt_header":
        data = bytearray(_valid_png(tmp_path))
        data[29] ^= 0xFF  # the IHDR checksum
        path.write_bytes(bytes(data))
    elif kind == "corrupt_jpeg_header":
        data = bytearray(_valid_jpeg(tmp_path))
        path = tmp_path / "bad_header.jpg"
        path.write_bytes(bytes(data[:4]) + b"\x00" * 200)
    elif kind == "zero_width":
        path.write_bytes(png_bytes(np.zeros((1, 1), np.uint8), 0, 8, size=(0, 1)))
    elif kind == "random_bytes":
        path.write_bytes(b"\x00\x01" + RNG.integers(0, 256, 500, np.uint8).tobytes())
    else:  # pragma: no cover
        raise AssertionError(kind)
    return path


BAD = {
    "missing": "no such file",
    "folder": "folder",
    "empty": "empty",
    "text": "text file",
    "truncated_jpeg": "truncated",
    "truncated_png": "truncated",
    "corrupt_header": "corrupt header",
    "corrupt_jpeg_header": "JPEG file with a corrupt header",
    "zero_width": "0x1",
    "random_bytes": "not an image",
}


@pytest.mark.parametrize("kind", sorted(BAD))
@pytest.mark.parametrize("reader", ["image", "mask"])
def test_bad_inputs_raise_image_error(tmp_path, kind, reader):
    path = _make_bad(kind, tmp_path)
    read = read_image if reader == "image" else read_mask
    with pytest.raises(ImageError, match=re.escape(f"{reader} '{path}'")) as info:
        read(path)
    message = str(info.value)
    assert BAD[kind] in message
    assert "\n" not in message  # one line for the CLI


def test_image_error_is_a_value_error(tmp_path):
    with pytest.raises(ValueError):
        read_image(tmp_path / "nope.jpg")


def test_size_checked_from_header_before_decoding(tmp_path):
    # The header claims 5000x5000 but holds 1 pixel of data: decoding would fail as truncated.
    path = tmp_path / "liar.png"
    path.write_bytes(png_bytes(np.zeros((1, 1), np.uint8), 0, 8, size=(5000, 5000)))
    with pytest.raises(ImageError, match=r"liar\.png.*5000x5000 = 25,000,000 pixels.*1,000,000"):
        read_image(path, max_pixels=1_000_000)
    with pytest.raises(ImageError, match="truncated"):  # allowed size: now decoding fails
        read_image(path, max_pixels=25_000_000)


def test_decompression_bomb_becomes_image_error(tmp_path):
    # 150 MP: over our default limit, under PIL's hard limit (179 MP): our check speaks.
    path = tmp_path / "big.png"
    path.write_bytes(png_bytes(np.zeros((1, 1), np.uint8), 0, 8, size=(15000, 10000)))
    with pytest.raises(ImageError, match=r"big\.png.*too large: 15000x10000.*134,217,728"):
        read_image(path)
    # 400 MP: PIL's DecompressionBombError comes first, whatever max_pixels says.
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bytes(np.zeros((1, 1), np.uint8), 0, 8, size=(20000, 20000)))
    for limit in (fio.DEFAULT_MAX_PIXELS, 10**12):
        with pytest.raises(ImageError, match=r"image '.*bomb\.png': it is too large \(PIL: "):
            read_image(path, max_pixels=limit)


def test_max_pixels_argument_checked(tmp_path):
    with pytest.raises(ValueError, match="max_pixels"):
        read_image(tmp_path / "a.png", max_pixels=0)


def test_default_limit_between_8k_and_pil_hard_limit():
    assert 7680 * 4320 * 4 <= fio.DEFAULT_MAX_PIXELS <= 2 * Image.MAX_IMAGE_PIXELS


# ----------------------------------------------------------------------------- read_mask


def test_mask_alpha_is_the_mask(tmp_path):
    rgba = RNG.integers(0, 256, (6, 5, 4), dtype=np.uint8)
    rgba[..., 3] = RNG.integers(0, 256, (6, 5))
    rgba[0, 0, 3] = 0
    out = read_mask(save(tmp_path / "cut.png", Image.fromarray(rgba)))
    assert out.shape == (6, 5) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, rgba[..., 3])


def test_mask_opaque_alpha_uses_colour(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[0, 0, :3] = [0, 200, 0]
    np.testing.assert_array_equal(
        read_mask(save(tmp_path / "m.png", Image.fromarray(rgba))), [[200, 0], [0, 0]]
    )


def test_mask_la_alpha(tmp_path):
    la = np.array([[[255, 0], [255, 77], [0, 255]]], np.uint8)
    np.testing.assert_array_equal(
        read_mask(save(tmp_path / "m.png", Image.fromarray(la))), [[0, 77, 255]]
    )


def test_mask_gray_soft_values_kept(tmp_path):
    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    np.testing.assert_array_equal(read_mask(save(tmp_path / "m.png", Image.fromarray(gray))), gray)


def test_mask_zero_one_kept_without_warning(tmp_path, caplog):
    # a 0/1 mask is kept as is; finecut.data.masks reads it as binary (1 is foreground)
    gray = np.array([[0, 1], [1, 0]], np.uint8)
    with caplog.at_level(logging.WARNING, logger="finecut.data.io"):
        out = read_mask(save(tmp_path / "m01.png", Image.fromarray(gray)))
    np.testing.assert_array_equal(out, gray)
    assert caplog.text == ""


def test_mask_rgb_equal_channels(tmp_path):
    gray = RNG.integers(0, 256, (4, 4), dtype=np.uint8)
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    np.testing.assert_array_equal(read_mask(save(tmp_path / "m.png", Image.fromarray(rgb))), gray)


def test_mask_rgb_coloured_max(tmp_path):
    rgb = np.array([[[200, 0, 0], [0, 0, 90], [10, 60, 30], [0, 0, 0]]], np.uint8)
    out = read_mask(save(tmp_path / "m.png", Image.fromarray(rgb)))
    np.testing.assert_array_equal(out, [[200, 90, 60, 0]])


def test_mask_16bit(tmp_path):
    path = tmp_path / "m16.png"
    assert cv2.imwrite(str(path), U16.reshape(1, -1))
    np.testing.assert_array_equal(read_mask(path), round257(U16.reshape(1, -1)))


def test_mask_one_bit(tmp_path):
    bits = np.array([[1, 0, 1]], bool)
    np.testing.assert_array_equal(
        read_mask(save(tmp_path / "m.png", Image.fromarray(bits))), [[255, 0, 255]]
    )


def test_mask_float(tmp_path):
    path = save(tmp_path / "m.tif", Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32)))
    np.testing.assert_array_equal(read_mask(path), [[0, 128, 255]])


def _voc_palette() -> list[int]:
    pal = [0] * 768
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[3 * i : 3 * i + 3] = [r, g, b]
    return pal


def test_mask_voc_palette_index_rule(tmp_path):
    idx = np.array([[0, 1, 15, 255]], np.uint8)
    im = Image.fromarray(idx, "P")
    im.putpalette(_voc_palette())
    path = save(tmp_path / "voc.png", im)
    assert Image.open(path).mode == "P"
    np.testing.assert_array_equal(read_mask(path), [[0, 255, 255, 255]])
    # read_image still shows the palette colours: index 1 is VOC's dark red.
    np.testing.assert_array_equal(read_image(path)[0, 1], [128, 0, 0])


def test_mask_gray_palette_reads_like_gray(tmp_path):
    idx = np.array([[0, 1, 2]], np.uint8)
    im = Image.fromarray(idx, "P")
    im.putpalette([0, 0, 0, 128, 128, 128, 255, 255, 255] + [255, 0, 0])  # red entry unused
    np.testing.assert_array_equal(read_mask(save(tmp_path / "g.png", im)), [[0, 128, 255]])


def test_mask_palette_transparency_is_alpha(tmp_path):
    im = Image.fromarray(np.array([[0, 1, 1]], np.uint8), "P")
    im.putpalette([255, 255, 255, 0, 0, 0])
    path = save(tmp_path / "t.gif", im, transparency=0)
    np.testing.assert_array_equal(read_mask(path), [[0, 255, 255]])


def test_mask_size_mismatch_names_both(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save(tmp_path / "m.png", Image.new("L", (320, 240)))
    message = "mask 'm.png' is 320x240 but image 'a.jpg' is 640x480"
    with pytest.raises(ImageError, match=f"^{re.escape(message)}$"):
        read_mask("m.png", shape=(480, 640), image_path="a.jpg")
    with pytest.raises(ImageError, match=re.escape("mask 'm.png' is 320x240 but 640x480 is")):
        read_mask("m.png", shape=(480, 640))
    assert read_mask("m.png", shape=(240, 320)).shape == (240, 320)


def test_mask_size_checked_after_orientation(tmp_path):
    path = save(tmp_path / "m.png", Image.new("L", (4, 2)), exif=exif_bytes(6))
    assert read_mask(path, shape=(4, 2)).shape == (4, 2)
    with pytest.raises(ImageError, match="is 2x4 but 4x2"):
        read_mask(path, shape=(2, 4))


@pytest.mark.parametrize("shape", [(0, 5), (5,), "ab", (2.5, -1)])
def test_mask_shape_argument_checked(tmp_path, shape):
    path = save(tmp_path / "m.png", Image.new("L", (4, 2)))
    with pytest.raises(ValueError, match=r"shape must be \(H, W\)"):
        read_mask(path, shape=shape)


# ----------------------------------------------------------------------------- writing


@pytest.mark.parametrize("ext", [".png", ".tif", ".tiff", ".bmp", ".webp", ".PNG"])
def test_mask_round_trip(tmp_path, ext):
    mask = RNG.integers(0, 256, (13, 17), dtype=np.uint8)
    out = write_mask(tmp_path / f"m{ext}", mask)
    assert out == tmp_path / f"m{ext}"
    np.testing.assert_array_equal(read_mask(out), mask)


@pytest.mark.parametrize("ext", [".png", ".tif", ".bmp", ".webp"])
@pytest.mark.parametrize("channels", [None, 3, 4])
def test_image_round_trip_lossless(tmp_path, ext, channels):
    shape = (9, 11) if channels is None else (9, 11, channels)
    image = RNG.integers(0, 256, shape, dtype=np.uint8)
    path = tmp_path / f"i{ext}"
    if channels == 4 and ext == ".bmp":
        with pytest.raises(ImageError, match="transparency"):
            write_image(path, image)
        return
    write_image(path, image)
    back = np.asarray(Image.open(path))
    if channels is None and back.ndim == 3:  # WebP stores gray as RGB
        back = back[:, :, 0]
    np.testing.assert_array_equal(back, image)


@pytest.mark.parametrize("ext", [".jpg", ".jpeg", ".JPG"])
def test_image_jpeg(tmp_path, ext):
    image = _quadrant_photo()
    path = write_image(tmp_path / f"i{ext}", image)
    assert Image.open(path).format == "JPEG"
    assert np.abs(read_image(path).astype(int) - image).mean() < 2.0


def test_rgba_to_jpeg_refused(tmp_path):
    with pytest.raises(ImageError, match=r"i\.jpg.*transparency"):
        write_image(tmp_path / "i.jpg", np.zeros((2, 2, 4), np.uint8))


def test_mask_to_jpeg_refused(tmp_path):
    with pytest.raises(ImageError, match=r"m\.jpg.*lossy.*\.png"):
        write_mask(tmp_path / "m.jpg", np.zeros((2, 2), np.uint8))
    assert not (tmp_path / "m.jpg").exists()


@pytest.mark.parametrize("name", ["m.gif", "m.xyz", "m"])
def test_unknown_extension_lists_allowed(tmp_path, name):
    with pytest.raises(ImageError, match=r"unknown extension.*\.png, \.tif, \.tiff, \.bmp, \.webp"):
        write_mask(tmp_path / name, np.zeros((2, 2), np.uint8))
    with pytest.raises(ImageError, match=r"unknown extension.*\.webp, \.jpg, \.jpeg"):
        write_image(tmp_path / name, np.zeros((2, 2, 3), np.uint8))


def test_float_and_bool_masks_converted(tmp_path):
    path = write_mask(tmp_path / "f.png", np.array([[0.0, 0.2, 0.5, 1.0]], np.float32))
    np.testing.assert_array_equal(read_mask(path), [[0, 51, 128, 255]])
    path = write_mask(tmp_path / "b.png", np.array([[True, False]]))
    np.testing.assert_array_equal(read_mask(path), [[255, 0]])


@pytest.mark.parametrize(
    ("array", "error", "match"),
    [
        (np.zeros((2, 2), np.int64), ValueError, "uint8, bool or float"),
        (np.zeros((2, 2), np.uint16), ValueError, "uint8, bool or float"),
        (
            np.zeros((2, 2, 3), np.uint8),
            ValueError,
            r"shape \(H, W\) with H, W >= 1; got \(2, 2, 3\)",
        ),
        (np.zeros((0, 3), np.uint8), ValueError, r"got \(0, 3\)"),
        (np.zeros(4, np.uint8), ValueError, r"shape \(H, W\)"),
        (np.array([[0.5, 1.5]]), ValueError, r"in \[0, 1\]"),
        (np.array([[0.5, np.nan]]), ValueError, r"finite"),
        ([[0, 1]], TypeError, "numpy array"),
    ],
)
def test_write_mask_bad_arrays(tmp_path, array, error, match):
    with pytest.raises(error, match=match):
        write_mask(tmp_path / "m.png", array)
    assert not any(tmp_path.iterdir())


def test_write_image_bad_shape(tmp_path):
    with pytest.raises(ValueError, match=r"\(H, W\) or \(H, W, 3\) or \(H, W, 4\).*\(2, 2, 2\)"):
        write_image(tmp_path / "i.png", np.zeros((2, 2, 2), np.uint8))


def _failing_save(self, fp, *args, **kwargs):
    fp.write(b"half an image")
    raise OSError(28, "No space left on device")


def test_failed_write_leaves_old_file_untouched(tmp_path, monkeypatch):
    path = write_mask(tmp_path / "m.png", np.full((3, 3), 7, np.uint8))
    before = path.read_bytes()
    monkeypatch.setattr(Image.Image, "save", _failing_save)
    with pytest.raises(ImageError, match=r"cannot write mask '.*m\.png': No space left"):
        write_mask(path, np.full((3, 3), 200, np.uint8))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.png"]  # no temporary file left


def test_failed_replace_leaves_old_file_untouched(tmp_path, monkeypatch):
    path = write_image(tmp_path / "i.png", np.zeros((3, 3, 3), np.uint8))
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(fio.os, "replace", broken_replace)
    with pytest.raises(ImageError, match=r"i\.png.*Permission denied"):
        write_image(path, np.full((3, 3, 3), 255, np.uint8))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i.png"]


def test_interrupted_write_cleans_up_and_propagates(tmp_path, monkeypatch):
    def interrupted(self, fp, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_mask(tmp_path / "m.png", np.zeros((2, 2), np.uint8))
    assert not any(tmp_path.iterdir())


def test_protect_refuses_input(tmp_path, monkeypatch):
    src = write_image(tmp_path / "photo.png", np.zeros((2, 2, 3), np.uint8))
    before = src.read_bytes()
    (tmp_path / "sub").mkdir()
    os.symlink(src, tmp_path / "link.png")
    monkeypatch.chdir(tmp_path)
    for dest in [src, "photo.png", "./sub/../photo.png", tmp_path / "link.png"]:
        with pytest.raises(ImageError, match=r"refusing to write mask .*photo\.png"):
            write_mask(dest, np.ones((2, 2), np.uint8), protect=[src])
    # the protected path given relative, the destination absolute; and a single str, not a list
    with pytest.raises(ImageError, match="refusing"):
        write_mask(src, np.ones((2, 2), np.uint8), protect="photo.png")
    with pytest.raises(ImageError, match="refusing"):
        write_image("link.png", np.ones((2, 2), np.uint8), protect=(Path("photo.png"),))
    assert src.read_bytes() == before
    # a different file is fine
    write_mask("other.png", np.ones((2, 2), np.uint8), protect=[src])


def test_protect_compares_paths_that_do_not_exist_yet(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ImageError, match="refusing"):
        write_mask(tmp_path / "new.png", np.zeros((2, 2), np.uint8), protect=["./new.png"])
    assert not (tmp_path / "new.png").exists()


def test_overwrite_false(tmp_path):
    path = write_mask(tmp_path / "m.png", np.zeros((2, 2), np.uint8), overwrite=False)
    before = path.read_bytes()
    with pytest.raises(ImageError, match=r"m\.png.*already exists"):
        write_mask(path, np.ones((2, 2), np.uint8), overwrite=False)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.png"]


def test_overwrite_false_loses_race_cleanly(tmp_path, monkeypatch):
    # Another process creates the file between our check and the move: still refused.
    path = tmp_path / "m.png"
    real_save = Image.Image.save

    def save_then_race(self, fp, *args, **kwargs):
        real_save(self, fp, *args, **kwargs)
        path.write_bytes(b"theirs")

    monkeypatch.setattr(Image.Image, "save", save_then_race)
    with pytest.raises(ImageError, match="already exists"):
        write_mask(path, np.zeros((2, 2), np.uint8), overwrite=False)
    assert path.read_bytes() == b"theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.png"]


def test_overwrite_true_replaces(tmp_path):
    path = write_mask(tmp_path / "m.png", np.zeros((2, 2), np.uint8))
    write_mask(path, np.full((2, 2), 9, np.uint8))
    assert (read_mask(path) == 9).all()


def test_write_creates_parent_folders(tmp_path):
    path = write_mask(tmp_path / "a" / "b" / "m.png", np.zeros((2, 2), np.uint8))
    assert path.is_file()


def test_write_onto_folder_refused(tmp_path):
    (tmp_path / "m.png").mkdir()
    with pytest.raises(ImageError, match=r"m\.png.*folder"):
        write_mask(tmp_path / "m.png", np.zeros((2, 2), np.uint8))


def test_parent_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ImageError, match="cannot create folder"):
        write_mask(tmp_path / "f" / "m.png", np.zeros((2, 2), np.uint8))


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_written_file_follows_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_mask(tmp_path / "m.png", np.zeros((2, 2), np.uint8))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


# ----------------------------------------------------------------------------- folders


def _touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"x")


def test_list_images(tmp_path):
    _touch(tmp_path, "b.JPG", "a.png", "c.tiff", "d.webp", ".hidden.png", "._a.png", "notes.txt")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.png", "b.JPG", "c.tiff", "d.webp"]


def test_list_images_missing_folder(tmp_path):
    with pytest.raises(ImageError, match=r"nope.*no such folder"):
        list_images(tmp_path / "nope")
    _touch(tmp_path, "file.png")
    with pytest.raises(ImageError, match="not a folder"):
        list_images(tmp_path / "file.png")


def test_pair_by_stem(tmp_path):
    images, masks = tmp_path / "img", tmp_path / "msk"
    _touch(images, "a.jpg", "b.jpg", "c.png")
    _touch(masks, "a.png", "b_mask.png", "z.png")
    pairs, unmatched = pair_by_stem(images, masks)
    assert pairs == [(images / "a.jpg", masks / "a.png"), (images / "b.jpg", masks / "b_mask.png")]
    assert unmatched == [images / "c.png"]


def test_pair_by_stem_ambiguous(tmp_path):
    images, masks = tmp_path / "img", tmp_path / "msk"
    _touch(images, "a.jpg")
    _touch(masks, "a.png", "a_mask.png")
    with pytest.raises(ImageError, match=r"a\.jpg.*several masks.*'a\.png', 'a_mask\.png'"):
        pair_by_stem(images, masks)


def test_pair_by_stem_same_folder(tmp_path):
    _touch(tmp_path, "a.jpg", "a_mask.png", "b.jpg", "c.jpg", "c.png")
    pairs, unmatched = pair_by_stem(tmp_path, tmp_path)
    assert pairs == [(tmp_path / "a.jpg", tmp_path / "a_mask.png")]
    assert unmatched == [tmp_path / "b.jpg", tmp_path / "c.jpg", tmp_path / "c.png"]


def test_import_is_light():
    code = "import sys, finecut.data; print('torch' in sys.modules, 'cv2' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# ----------------------------------------------------------------------------- label maps


def test_read_labels_gray_keeps_values(tmp_path):
    labels = np.array([[0, 1, 2], [3, 200, 0]], np.uint8)
    out = fio.read_labels(save(tmp_path / "l.png", Image.fromarray(labels)))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, labels)


def test_read_labels_palette_gives_indices(tmp_path):
    index = np.array([[0, 1], [2, 2]], np.uint8)
    im = Image.fromarray(index, mode="P")
    im.putpalette([0, 0, 0, 200, 10, 10, 10, 200, 10])
    np.testing.assert_array_equal(fio.read_labels(save(tmp_path / "p.png", im)), index)


def test_read_labels_16bit(tmp_path):
    labels = np.array([[0, 300], [65535, 7]], np.uint16)
    path = tmp_path / "l16.png"
    cv2.imwrite(str(path), labels)
    out = fio.read_labels(path)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, labels)


def test_read_labels_colour_coded(tmp_path):
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0, 1] = (255, 0, 0)
    rgb[1, 2] = (0, 0, 255)
    rgb[1, 0] = (255, 0, 0)
    out = fio.read_labels(save(tmp_path / "c.png", Image.fromarray(rgb)))
    # black is 0; the others by their 0xRRGGBB value: blue (0x0000ff) 1, red (0xff0000) 2
    np.testing.assert_array_equal(out, [[0, 2, 0], [2, 0, 1]])


def test_read_labels_refuses_float_and_photos(tmp_path):
    path = tmp_path / "f.tif"
    Image.fromarray(np.zeros((4, 4), np.float32), mode="F").save(path)
    with pytest.raises(ImageError, match="not integer labels"):
        fio.read_labels(path)
    photo = RNG.integers(0, 256, (80, 80, 3), dtype=np.uint8)
    with pytest.raises(ImageError, match="colours, more than 4096"):
        fio.read_labels(save(tmp_path / "photo.png", Image.fromarray(photo)))


def test_read_labels_size_checked(tmp_path):
    path = save(tmp_path / "l.png", Image.fromarray(np.zeros((4, 5), np.uint8)))
    with pytest.raises(ImageError, match=r"label map .* is 5x4 but image 'a.jpg' is 6x4"):
        fio.read_labels(path, shape=(4, 6), image_path="a.jpg")


@pytest.mark.parametrize(("top", "dtype"), [(9, np.uint8), (1000, np.uint16)])
def test_write_labels_round_trip(tmp_path, top, dtype):
    labels = np.array([[0, 1], [top, 2]], np.int64)
    path = fio.write_labels(tmp_path / "out" / "l.png", labels)
    out = fio.read_labels(path)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, labels)


def test_write_labels_refusals(tmp_path):
    with pytest.raises(ImageError, match="cannot hold labels above 255"):
        fio.write_labels(tmp_path / "l.bmp", np.full((2, 2), 300))
    with pytest.raises(ImageError, match="JPEG is lossy"):
        fio.write_labels(tmp_path / "l.jpg", np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match="0..65535"):
        fio.write_labels(tmp_path / "l.png", np.full((2, 2), -1))


# ----------------------------------------------------------------------------- check_output


def test_check_output_passes_a_new_file(tmp_path):
    assert fio.check_output(tmp_path / "new" / "deeper" / "m.png") == tmp_path / "new/deeper/m.png"
    assert not (tmp_path / "new").exists()  # nothing created


@pytest.mark.parametrize(
    ("name", "what", "match"),
    [
        ("out.txt", "mask", r"unknown extension \(\.txt\)"),
        ("out.jpg", "mask", "JPEG is lossy"),
        ("out.txt", "overlay", r"cannot write overlay .*unknown extension"),
        ("folder", "mask", "it is a folder"),
        ("exists.png", "mask", "already exists"),
        ("input.png", "mask", "it is the input"),
        ("afile/m.png", "mask", "is a file, not a folder"),
    ],
)
def test_check_output_refusals(tmp_path, name, what, match):
    (tmp_path / "folder").mkdir()
    (tmp_path / "exists.png").write_bytes(b"x")
    (tmp_path / "input.png").write_bytes(b"x")
    (tmp_path / "afile").write_bytes(b"x")
    with pytest.raises(ImageError, match=match):
        fio.check_output(
            tmp_path / name, what, overwrite=False, protect=[tmp_path / "input.png"]
        )


def test_check_output_any_extension(tmp_path):
    assert fio.check_output(tmp_path / "a.json", "annotations", any_extension=True)
