"""Robust image and mask I/O: any photo or mask a user has in, plain uint8 arrays out.

Every unusable input raises :class:`finecut.ImageError` (one exception type) whose message names
the file and the problem in plain words; writes are atomic and never replace an input.

Reading an image (:func:`read_image`) always returns ``(H, W, 3)`` uint8 RGB:

==========================  ===============================================================
file holds                  what ``read_image`` returns
==========================  ===============================================================
EXIF/XMP orientation        applied first, as ``PIL.ImageOps.exif_transpose`` would
8-bit RGB                   as is
grayscale ``L``             value replicated to R, G, B
1-bit ``1``                 0 -> 0, 1 -> 255, replicated
16-bit gray (``I;16*``)     ``round(x / 257)`` (65535 -> 255), replicated
32-bit int ``I``            ``round(x / 257)`` when all values are in 0..65535, else ImageError
32-bit float ``F``          NaN -> 0; if max <= 1: ``round(clip(x, 0, 1) * 255)``,
                            else ``round(clip(x, 0, 255))``; replicated
16-bit RGB/RGBA/LA PNG,     decoded at full precision with OpenCV (PIL would drop the low
TIFF                        byte), then ``round(x / 257)`` per channel, alpha included
RGBA, LA (with alpha)       composited over WHITE: ``round(c * a / 255 + 255 - a)``; a
                            transparent pixel becomes white, an opaque one keeps its colour
palette ``P``, ``PA``       converted through the palette to RGBA, then composited as above
CMYK, YCbCr, HSV            converted to RGB by PIL
multi-frame GIF/TIFF        first frame only (logged at INFO)
==========================  ===============================================================

Reading a mask (:func:`read_mask`) returns ``(H, W)`` uint8 in 0..255; soft values are kept
(binarising is the caller's choice). Orientation is applied as for images. Then, in order:

====================================  =========================================================
file holds                            what ``read_mask`` returns
====================================  =========================================================
alpha channel not all opaque          the alpha IS the mask (a cut-out PNG); colour ignored
(RGBA, LA, PA, palette transparency)
grayscale ``L``                       as is (a 0/1 mask stays 0/1: :mod:`finecut.data.masks`
                                      reads it as binary, 1 is foreground)
1-bit ``1``                           0 / 255
16-bit / ``I`` / ``F``                the image rules above (``round(x / 257)`` etc.)
RGB, all channels equal               that channel
RGB, channels differ                  maximum over channels (any coloured annotation counts as
                                      foreground; a soft red mask keeps its strength)
palette ``P`` whose used entries      the gray value of the entry (a gray mask stored as a
are all gray                          palette reads like ``L``)
palette ``P`` with coloured entries   index 0 -> 0, any other index -> 255 (VOC-style class
                                      masks: every labelled class, and VOC's 255 'void'
                                      outline, counts as foreground)
====================================  =========================================================

A mask holding only 0 and 1 keeps those values; :mod:`finecut.data.masks` is the rule every
consumer (CLI, ``Refiner``, metrics) then binarises it by (0/1 is binary, a label map is refused,
8-bit masks are foreground above 127). Label maps, with one integer per object, are read with
their raw values by :func:`read_labels` and written, 8- or 16-bit, by :func:`write_labels`.
:func:`check_output` and :func:`check_output_folder` make the writers' checks on a destination
before any work is done.

Size limit: images with more than ``max_pixels`` pixels are refused from the header alone,
before any pixel is decoded. The default, ``DEFAULT_MAX_PIXELS = 2**27`` (134,217,728, e.g.
16384x8192), passes an 8K frame (7680x4320 = 33 MP) with a 4x margin and 100-MP medium-format
photos (11648x8736), while a refused image would need at least 400 MB as RGB uint8 and several
GB as the float copies refinement makes. PIL's own decompression-bomb guard still applies above
``2 * PIL.Image.MAX_IMAGE_PIXELS`` (178,956,970 by default): a larger ``max_pixels`` cannot lift
it (finecut never changes PIL's global settings); its error is reported as ImageError too.

Writing (:func:`write_mask`, :func:`write_image`) picks the format from the extension: ``.png``,
``.tif``/``.tiff`` (LZW), ``.bmp``, ``.webp`` (lossless, exact) for both; ``.jpg``/``.jpeg``
(quality 95, 4:4:4) for images only, since JPEG would change mask values along every edge.
Missing parent folders are created. The bytes go to a hidden temporary file in the destination
folder, are fsynced, then ``os.replace``-d onto the destination: on any failure the temporary
file is removed and an existing destination is left untouched. A destination that is the same
file as any path in ``protect`` (``os.path.samefile`` when both exist, resolved paths otherwise;
the CLI passes its inputs) is refused, and so is an existing one when ``overwrite=False``.
"""

from __future__ import annotations

import logging
import os
import secrets
import struct
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import IO, Any, TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError, features

from finecut.errors import ImageError, ImageTooLargeError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "IMAGE_WRITE_EXTENSIONS",
    "MASK_WRITE_EXTENSIONS",
    "decode_image",
    "decode_mask",
    "check_output",
    "check_output_folder",
    "encode_mask",
    "is_image_name",
    "list_images",
    "match_by_stem",
    "pair_by_stem",
    "read_image",
    "read_labels",
    "read_mask",
    "write_image",
    "write_labels",
    "write_mask",
]

log = logging.getLogger(__name__)

StrPath = str | os.PathLike[str]

DEFAULT_MAX_PIXELS: int = 2**27
"""Largest image (width * height) read by default; see the module docstring for why."""

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".bmp",
    ".gif",
    ".jpeg",
    ".jpg",
    ".png",
    ".tif",
    ".tiff",
    ".webp",
)
"""Extensions :func:`list_images` collects (compared case-insensitively)."""

_MASK_FORMATS: dict[str, str] = {
    ".png": "PNG",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".bmp": "BMP",
    ".webp": "WEBP",
}
_IMAGE_FORMATS: dict[str, str] = {**_MASK_FORMATS, ".jpg": "JPEG", ".jpeg": "JPEG"}
_NO_ALPHA_FORMATS = ("JPEG", "BMP")  # PIL reads a 32-bit BMP back without its alpha

MASK_WRITE_EXTENSIONS: tuple[str, ...] = tuple(_MASK_FORMATS)
IMAGE_WRITE_EXTENSIONS: tuple[str, ...] = tuple(_IMAGE_FORMATS)

_ORIENTATION_TAG = 0x0112
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def _q(path: StrPath) -> str:
    return f"'{os.fspath(path)}'"


@dataclass
class _Pixels:
    """Decoded pixels before the image / mask rules; every array is uint8 and oriented."""

    color: np.ndarray  # (H, W) gray or (H, W, 3) RGB
    alpha: np.ndarray | None = None  # (H, W)
    index: np.ndarray | None = None  # (H, W) palette indices, palette images only
    palette: np.ndarray | None = None  # (256, 3) RGB entries, palette images only

    @property
    def size(self) -> tuple[int, int]:
        return self.color.shape[1], self.color.shape[0]


# ----------------------------------------------------------------------------- reading


def read_image(path: StrPath, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read any photo as RGB uint8, following the conversion table of the module docstring.

    Args:
        path: the image file.
        max_pixels: refuse images with more pixels than this (checked on the header, before
            decoding).

    Returns:
        The image, ``(H, W, 3)`` uint8 RGB, C-contiguous.

    Raises:
        ImageError: the file is missing, a folder, empty, not an image, truncated, corrupt,
            too large, or in a colour mode that cannot be converted; the message names the file.

    Shape:
        Output: ``(H, W, 3)`` where H, W are the size after the EXIF orientation is applied.
    """
    px = _decode(path, "image", max_pixels)
    color = px.color
    if px.alpha is not None:
        color = _composite_over_white(color, px.alpha)
    if color.ndim == 2:
        color = np.repeat(color[:, :, None], 3, axis=2)
    return np.ascontiguousarray(color, dtype=np.uint8)


def read_mask(
    path: StrPath,
    *,
    shape: tuple[int, int] | None = None,
    image_path: StrPath | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Read a mask as uint8 0..255, following the mask table of the module docstring.

    Args:
        path: the mask file.
        shape: ``(H, W)`` the mask must have (usually the image's); None skips the check.
        image_path: the image the mask belongs to, only to name it in the size-mismatch message.
        max_pixels: as for :func:`read_image`.

    Returns:
        The mask, ``(H, W)`` uint8 with soft values kept.

    Raises:
        ImageError: unreadable file (see :func:`read_image`) or a size different from ``shape``,
            e.g. ``mask 'm.png' is 320x240 but image 'a.jpg' is 640x480``.
        ValueError: ``shape`` is not two positive integers.

    Shape:
        Output: ``(H, W)``, equal to ``shape`` when given.
    """
    if shape is not None:
        shape = _check_shape_arg(shape)
    px = _decode(path, "mask", max_pixels)
    mask = _mask_from_pixels(px, path)
    _check_size(mask, shape, path, image_path, "mask")
    return np.ascontiguousarray(mask, dtype=np.uint8)


def read_labels(
    path: StrPath,
    *,
    shape: tuple[int, int] | None = None,
    image_path: StrPath | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Read a label map (one integer per object or class; 0 is background) with its raw values.

    ============================  ============================================================
    file holds                    labels
    ============================  ============================================================
    grayscale ``L``               the values (uint8)
    1-bit ``1``                   0 / 1
    palette ``P``, ``PA``         the palette indices (the colours are ignored)
    16-bit gray, 32-bit ``I``     the values as uint16 (``I`` must lie in 0..65535)
    ``LA``                        the grey values; the alpha is ignored
    RGB(A), channels equal        the channel (uint8)
    RGB(A), coloured              each distinct colour one label: black is 0, the others
                                  1..N in the order of their ``0xRRGGBB`` value (uint8, or
                                  uint16 above 255 colours); more than 4096 colours is
                                  refused (a photo or a lossy file, not a label map)
    float ``F``, 16-bit colour    refused
    ============================  ============================================================

    Args:
        path: the label file (PNG, TIFF, BMP, WebP, GIF; any lossless format).
        shape: ``(H, W)`` it must have; None skips the check.
        image_path: the image it belongs to, for the size-mismatch message.
        max_pixels: as for :func:`read_image`.

    Returns:
        ``(H, W)`` uint8 or uint16 labels.

    Raises:
        ImageError: unreadable file, a mode that holds no labels, or a size other than
            ``shape``.

    Shape:
        Output: ``(H, W)``.
    """
    if shape is not None:
        shape = _check_shape_arg(shape)
    labels = _decode(path, "label map", max_pixels, convert=_labels_from_pil).color
    _check_size(labels, shape, path, image_path, "label map")
    return np.ascontiguousarray(labels)


#: Most colours a colour-coded label map may hold.
MAX_LABEL_COLOURS = 4096


def _labels_from_pil(im: Image.Image, path: StrPath, kind: str) -> _Pixels:
    mode = im.mode
    if mode == "1":
        return _Pixels(np.asarray(im, dtype=bool).astype(np.uint8))
    if mode in ("L", "P"):
        return _Pixels(np.asarray(im, dtype=np.uint8))
    if mode in ("LA", "PA"):
        return _Pixels(np.asarray(im, dtype=np.uint8)[:, :, 0])
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        values = np.asarray(im).astype(np.int64)
        if values.size and (int(values.min()) < 0 or int(values.max()) > 65535):
            raise ImageError(f"cannot read {kind} {_q(path)}: labels must lie in 0..65535")
        return _Pixels(values.astype(np.uint16))
    if mode in ("RGB", "RGBA"):
        rgb = np.asarray(im, dtype=np.uint8)[:, :, :3]
        if np.array_equal(rgb[:, :, 0], rgb[:, :, 1]) and np.array_equal(
            rgb[:, :, 1], rgb[:, :, 2]
        ):
            return _Pixels(np.ascontiguousarray(rgb[:, :, 0]))
        return _Pixels(_labels_from_colours(rgb, path, kind))
    raise ImageError(
        f"cannot read {kind} {_q(path)}: its pixels ({mode}) are not integer labels; save the "
        "label map as an 8- or 16-bit grey or palette PNG"
    )


def _labels_from_colours(rgb: np.ndarray, path: StrPath, kind: str) -> np.ndarray:
    packed = (rgb[:, :, 0].astype(np.uint32) << 16) | (rgb[:, :, 1].astype(np.uint32) << 8)
    packed |= rgb[:, :, 2]
    colours, inverse = np.unique(packed, return_inverse=True)
    if len(colours) > MAX_LABEL_COLOURS:
        raise ImageError(
            f"cannot read {kind} {_q(path)}: it holds {len(colours):,} colours, more than "
            f"{MAX_LABEL_COLOURS} (a photo or a lossy file, not a colour-coded label map)"
        )
    # colours are sorted, so black (0) is first when present and takes label 0
    ids = inverse.reshape(packed.shape) + (0 if colours[0] == 0 else 1)
    log.info("%s %s: %d colours read as labels", kind, _q(path), len(colours))
    return ids.astype(np.uint8 if ids.max() <= 255 else np.uint16)


def _check_size(
    array: np.ndarray,
    shape: tuple[int, int] | None,
    path: StrPath,
    image_path: StrPath | None,
    kind: str,
) -> None:
    if shape is not None and array.shape[:2] != shape:
        h, w = array.shape[:2]
        want = f"{shape[1]}x{shape[0]}"
        other = f"{want} is expected" if image_path is None else f"image {_q(image_path)} is {want}"
        raise ImageError(f"{kind} {_q(path)} is {w}x{h} but {other}")


def _check_shape_arg(shape: Any) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be (H, W), two positive integers; got {shape!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"shape must be (H, W), two positive integers; got {shape!r}")
    return h, w


def _mask_from_pixels(px: _Pixels, path: StrPath) -> np.ndarray:
    if px.alpha is not None and int(px.alpha.min()) < 255:
        return px.alpha
    if px.index is not None and px.palette is not None:
        used = np.flatnonzero(np.bincount(px.index.ravel(), minlength=256))
        entries = px.palette[used]
        if np.all(entries == entries[:, :1]):
            return px.palette[:, 0][px.index]
        return np.where(px.index > 0, np.uint8(255), np.uint8(0))
    color = px.color
    if color.ndim == 3:
        if np.array_equal(color[:, :, 0], color[:, :, 1]) and np.array_equal(
            color[:, :, 1], color[:, :, 2]
        ):
            color = color[:, :, 0]
        else:
            color = color.max(axis=2)
    return color


def decode_image(
    data: bytes, *, name: str = "upload", max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """:func:`read_image` for bytes held in memory (an upload), with the same rules and errors.

    Args:
        data: the file's bytes.
        name: what messages call the file (e.g. the upload's file name).
        max_pixels: as for :func:`read_image`; a larger image raises
            :class:`finecut.errors.ImageTooLargeError` from its header, before decoding.

    Returns:
        ``(H, W, 3)`` uint8 RGB.

    Raises:
        ImageError: empty, not an image, truncated, corrupt or too large.
    """
    px = _decode_bytes(data, name, "image", max_pixels)
    color = px.color
    if px.alpha is not None:
        color = _composite_over_white(color, px.alpha)
    if color.ndim == 2:
        color = np.repeat(color[:, :, None], 3, axis=2)
    return np.ascontiguousarray(color, dtype=np.uint8)


def decode_mask(
    data: bytes,
    *,
    name: str = "mask",
    shape: tuple[int, int] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """:func:`read_mask` for bytes held in memory, with the same rules and errors.

    Args:
        data: the file's bytes.
        name: what messages call the file.
        shape: ``(H, W)`` the mask must have; None skips the check.
        max_pixels: as for :func:`read_image`.

    Returns:
        ``(H, W)`` uint8 with soft values kept.

    Raises:
        ImageError: unreadable bytes, or a size other than ``shape``
            (``mask 'm.png' is 320x240 but the image is 640x480``).
    """
    if shape is not None:
        shape = _check_shape_arg(shape)
    mask = _mask_from_pixels(_decode_bytes(data, name, "mask", max_pixels), name)
    if shape is not None and mask.shape != shape:
        h, w = mask.shape
        raise ImageError(f"mask {_q(name)} is {w}x{h} but the image is {shape[1]}x{shape[0]}")
    return np.ascontiguousarray(mask, dtype=np.uint8)


def _decode_bytes(data: bytes, name: str, kind: str, max_pixels: int) -> _Pixels:
    """:func:`_decode` for an in-memory file."""
    import io

    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels <= 0:
        raise ValueError(f"max_pixels must be a positive int; got {max_pixels!r}")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"data must be bytes; got {type(data).__name__}")
    if len(data) == 0:
        raise ImageError(f"cannot read {kind} {_q(name)}: the file is empty (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return _decode_open(io.BytesIO(data), name, kind, max_pixels)


def _decode(path: StrPath, kind: str, max_pixels: int, convert=None) -> _Pixels:
    """Open, check and fully decode one file into oriented uint8 planes; ImageError on failure.

    ``convert(im, path, kind) -> _Pixels`` replaces the image/mask conversion (label maps keep
    their raw values)."""
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels <= 0:
        raise ValueError(f"max_pixels must be a positive int; got {max_pixels!r}")
    name = _q(path)
    fh = _open_file(path, kind)
    try:
        if os.fstat(fh.fileno()).st_size == 0:
            raise ImageError(f"cannot read {kind} {name}: the file is empty (0 bytes)")
        with warnings.catch_warnings():
            # Our own max_pixels check below is the one that decides; PIL's warning would only
            # frighten users of large (but allowed) photos.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return _decode_open(fh, path, kind, max_pixels, convert)
    finally:
        fh.close()


def _open_file(path: StrPath, kind: str) -> IO[bytes]:
    name = _q(path)
    if os.path.isdir(path):
        raise ImageError(f"cannot read {kind} {name}: it is a folder, not a file")
    try:
        return open(path, "rb")  # noqa: SIM115 - closed by the caller
    except FileNotFoundError:
        raise ImageError(f"cannot read {kind} {name}: no such file") from None
    except PermissionError:
        raise ImageError(f"cannot read {kind} {name}: permission denied") from None
    except OSError as exc:
        raise ImageError(f"cannot read {kind} {name}: {exc.strerror or exc}") from exc


def _decode_open(
    fh: IO[bytes], path: StrPath, kind: str, max_pixels: int, convert=None
) -> _Pixels:
    name = _q(path)
    try:
        im = Image.open(fh)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(
            f"cannot read {kind} {name}: it is too large (PIL: {exc})"
        ) from None
    except UnidentifiedImageError:
        fh.seek(0)
        reason = _why_unidentified(fh.read(4096))
        raise ImageError(f"cannot read {kind} {name}: {reason}") from None
    except Exception as exc:  # PIL raises many types (SyntaxError, struct.error, ...) on junk
        raise ImageError(f"cannot read {kind} {name}: its header is corrupt ({exc})") from exc
    with im:
        w, h = im.size
        if w <= 0 or h <= 0:
            raise ImageError(f"cannot read {kind} {name}: it is {w}x{h} (zero width or height)")
        if w * h > max_pixels:
            raise ImageTooLargeError(
                f"cannot read {kind} {name}: it is too large: {w}x{h} = {w * h:,} pixels, more "
                f"than the limit of {max_pixels:,} (max_pixels)"
            )
        _note_frames(im, path, kind)
        high_precision = _is_16bit_color(im)
        if high_precision and convert is not None:
            raise ImageError(
                f"cannot read {kind} {name}: 16-bit colour pixels are not integer labels; save "
                "the label map as an 8- or 16-bit grey or palette PNG"
            )
        try:
            im.load()
            px = (convert or _pixels_from_pil)(im, path, kind)
        except ImageError:
            raise
        except Image.DecompressionBombError as exc:
            raise ImageTooLargeError(
                f"cannot read {kind} {name}: it is too large (PIL: {exc})"
            ) from None
        except MemoryError:
            raise ImageError(
                f"cannot read {kind} {name}: not enough memory to decode {w}x{h} pixels"
            ) from None
        except Exception as exc:
            raise ImageError(
                f"cannot read {kind} {name}: the file is truncated or corrupt ({exc})"
            ) from exc
        orientation = _orientation(im, path)
    if high_precision:
        fh.seek(0)
        px = _decode_16bit_color(fh.read(), path, kind, (h, w))
    return _orient(px, orientation)


def _why_unidentified(head: bytes) -> str:
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        if len(head) >= 24 and head[12:16] == b"IHDR":
            w, h = struct.unpack(">II", head[16:24])
            if w == 0 or h == 0:
                return f"its PNG header says it is {w}x{h} (zero width or height)"
        return "it is a PNG file with a corrupt header"
    if head.startswith(b"\xff\xd8\xff"):
        return "it is a JPEG file with a corrupt header"
    if head and b"\x00" not in head:
        try:
            head.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            return "it is a text file, not an image"
    return "it is not an image, or not in a format finecut reads (PNG, JPEG, TIFF, BMP, WebP, GIF)"


def _note_frames(im: Image.Image, path: StrPath, kind: str) -> None:
    try:
        animated = bool(getattr(im, "is_animated", False))
        if animated:
            im.seek(0)
    except Exception:  # a broken later frame does not matter: we only read the first one
        animated = False
    if animated:
        log.info("%s %s has several frames; using the first", kind, _q(path))


def _is_16bit_color(im: Image.Image) -> bool:
    """True for 16-bit RGB(A)/LA files: PIL would decode them to 8 bits by dropping the low byte."""
    if im.mode not in ("RGB", "RGBA", "LA") or not im.tile:
        return False
    args = im.tile[0].args
    rawmode = args if isinstance(args, str) else (args[0] if args else "")
    return isinstance(rawmode, str) and ";16" in rawmode


def _orientation(im: Image.Image, path: StrPath) -> int:
    try:
        value = int(im.getexif().get(_ORIENTATION_TAG, 1))
    except Exception as exc:
        log.warning("%s: unreadable EXIF metadata, orientation ignored (%s)", _q(path), exc)
        return 1
    if value not in range(1, 9):
        log.warning("%s: invalid EXIF orientation %d ignored", _q(path), value)
        return 1
    return value


def _orient_array(a: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1..8) to ``(H, W, ...)`` as ``ImageOps.exif_transpose`` does."""
    if orientation == 2:
        return a[:, ::-1]
    if orientation == 3:
        return a[::-1, ::-1]
    if orientation == 4:
        return a[::-1]
    if orientation == 5:
        return a.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(a, -1)
    if orientation == 7:
        return a[::-1, ::-1].swapaxes(0, 1)
    if orientation == 8:
        return np.rot90(a, 1)
    return a


def _orient(px: _Pixels, orientation: int) -> _Pixels:
    if orientation == 1:
        return px

    def turn(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else np.ascontiguousarray(_orient_array(a, orientation))

    color = np.ascontiguousarray(_orient_array(px.color, orientation))
    return _Pixels(color, turn(px.alpha), turn(px.index), px.palette)


def _to8_from16(a: np.ndarray) -> np.ndarray:
    """``round(x / 257)`` for 0..65535 integers; exact (ties cannot occur since 257 is odd)."""
    return ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _float_to8(a: np.ndarray) -> np.ndarray:
    a = np.nan_to_num(a.astype(np.float64, copy=False), nan=0.0)
    if a.size and float(a.max()) <= 1.0:
        a = np.clip(a, 0.0, 1.0) * 255.0
    else:
        a = np.clip(a, 0.0, 255.0)
    return np.round(a).astype(np.uint8)


def _pixels_from_pil(im: Image.Image, path: StrPath, kind: str) -> _Pixels:
    mode = im.mode
    if mode == "1":
        return _Pixels(np.asarray(im, dtype=bool).astype(np.uint8) * np.uint8(255))
    if mode == "L":
        return _Pixels(np.asarray(im, dtype=np.uint8))
    if mode in ("LA", "La"):
        la = np.asarray(im.convert("LA") if mode == "La" else im, dtype=np.uint8)
        return _Pixels(la[:, :, 0], alpha=la[:, :, 1])
    if mode == "RGB":
        return _Pixels(np.asarray(im, dtype=np.uint8))
    if mode in ("RGBA", "RGBa"):
        rgba = np.asarray(im.convert("RGBA") if mode == "RGBa" else im, dtype=np.uint8)
        return _Pixels(rgba[:, :, :3], alpha=rgba[:, :, 3])
    if mode in ("P", "PA"):
        return _palette_pixels(im)
    if mode in _SIXTEEN_BIT_MODES:
        return _Pixels(_to8_from16(np.asarray(im)))
    if mode == "I":
        values = np.asarray(im, dtype=np.int64)
        lo, hi = (int(values.min()), int(values.max())) if values.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise ImageError(
                f"cannot read {kind} {_q(path)}: 32-bit integer pixels range {lo}..{hi}, "
                "outside 0..65535; save it as 8 or 16 bit"
            )
        return _Pixels(_to8_from16(values))
    if mode == "F":
        return _Pixels(_float_to8(np.asarray(im, dtype=np.float32)))
    try:
        rgb = im.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageError(
            f"cannot read {kind} {_q(path)}: its colour mode {mode!r} cannot be converted to RGB"
        ) from exc
    log.debug("%s %s: converted colour mode %s to RGB", kind, _q(path), mode)
    return _Pixels(np.asarray(rgb, dtype=np.uint8))


def _palette_pixels(im: Image.Image) -> _Pixels:
    raw = np.asarray(im, dtype=np.uint8)
    index = raw[:, :, 0] if raw.ndim == 3 else raw
    palette = np.zeros((256, 3), np.uint8)
    entries = np.asarray(im.getpalette("RGB") or [], dtype=np.uint8).reshape(-1, 3)[:256]
    palette[: len(entries)] = entries
    rgba = np.asarray(im.convert("RGBA"), dtype=np.uint8)
    return _Pixels(rgba[:, :, :3], alpha=rgba[:, :, 3], index=index, palette=palette)


def _decode_16bit_color(data: bytes, path: StrPath, kind: str, hw: tuple[int, int]) -> _Pixels:
    import cv2  # only needed for this rare case; keeps `import finecut.data` light

    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if decoded is None or decoded.shape[:2] != hw or decoded.dtype != np.uint16:
        raise ImageError(f"cannot read {kind} {_q(path)}: its 16-bit colour data cannot be decoded")
    px8 = _to8_from16(decoded)
    if px8.ndim == 2:
        return _Pixels(px8)
    channels = px8.shape[2]
    if channels == 2:  # gray + alpha
        return _Pixels(px8[:, :, 0], alpha=px8[:, :, 1])
    rgb = px8[:, :, 2::-1]  # OpenCV's BGR(A) -> RGB
    return _Pixels(rgb, alpha=px8[:, :, 3] if channels == 4 else None)


def _composite_over_white(color: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``round(c * a / 255 + 255 - a)`` in exact integer arithmetic (no ties: 255 is odd)."""
    a = alpha.astype(np.uint16)
    if color.ndim == 3:
        a = a[:, :, None]
    # c*a + 255*(255 - a) = 65025 - a*(255 - c) <= 65025, so uint16 cannot overflow.
    total = color.astype(np.uint16) * a + np.uint16(255) * (np.uint16(255) - a)
    return ((total + np.uint16(127)) // np.uint16(255)).astype(np.uint8)


# ----------------------------------------------------------------------------- writing


def write_mask(
    path: StrPath,
    mask: np.ndarray,
    *,
    overwrite: bool = True,
    protect: Iterable[StrPath] = (),
) -> Path:
    """Write a mask atomically as a lossless ``.png``, ``.tif``/``.tiff``, ``.bmp`` or ``.webp``.

    Args:
        path: destination; its extension picks the format. Missing parent folders are created.
        mask: ``(H, W)`` uint8 (as is), bool (-> 0/255) or float in [0, 1] (-> ``round(x*255)``,
            numpy rounding: halves to even).
        overwrite: False refuses an existing destination.
        protect: paths the destination must not be (the inputs); compared as the same file.

    Returns:
        ``Path(path)``.

    Raises:
        ImageError: lossy or unknown extension, a protected or (with ``overwrite=False``)
            existing destination, or the write failed (the destination is then untouched).
        ValueError: wrong shape, dtype or float range.

    Shape:
        mask: ``(H, W)``.
    """
    data = _to_uint8(mask, "mask", channels=(None,))
    fmt = _format_for(path, "mask")
    return _atomic_write(path, Image.fromarray(data), fmt, overwrite, protect, "mask")


def encode_mask(mask: np.ndarray, name: StrPath = "mask.png") -> bytes:
    """The bytes :func:`write_mask` would write to a file called ``name``, held in memory (for
    a destination that is not a local file, e.g. an ``s3://`` object).

    Raises:
        ImageError: lossy or unknown extension of ``name``.
        ValueError: as for :func:`write_mask`.

    Shape:
        mask: ``(H, W)``.
    """
    import io

    data = _to_uint8(mask, "mask", channels=(None,))
    fmt = _format_for(name, "mask")
    buf = io.BytesIO()
    Image.fromarray(data).save(buf, format=fmt, **_save_params(fmt))
    return buf.getvalue()


def write_image(
    path: StrPath,
    image: np.ndarray,
    *,
    overwrite: bool = True,
    protect: Iterable[StrPath] = (),
) -> Path:
    """Write an image, a cut-out or an overlay atomically; see :func:`write_mask` for the rules.

    JPEG (``.jpg``/``.jpeg``, quality 95, no chroma subsampling) is allowed here; JPEG and BMP
    cannot hold an alpha channel, so 4-channel images must go to ``.png``, ``.tif`` or ``.webp``.

    Args:
        path: destination; its extension picks the format.
        image: ``(H, W)`` gray, ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA; uint8, bool or float in
            [0, 1] (converted as for masks).
        overwrite: False refuses an existing destination.
        protect: paths the destination must not be.

    Returns:
        ``Path(path)``.

    Raises:
        ImageError: as for :func:`write_mask`.
        ValueError: wrong shape, dtype or float range.

    Shape:
        image: ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)``.
    """
    data = _to_uint8(image, "image", channels=(None, 3, 4))
    fmt = _format_for(path, "image")
    mode = "L" if data.ndim == 2 else ("RGB" if data.shape[2] == 3 else "RGBA")
    if mode == "RGBA" and fmt in _NO_ALPHA_FORMATS:
        raise ImageError(
            f"cannot write image {_q(path)}: {fmt} cannot store transparency (the image has 4 "
            "channels); use .png, .tif or .webp"
        )
    return _atomic_write(path, Image.fromarray(data), fmt, overwrite, protect, "image")


def write_labels(
    path: StrPath,
    labels: np.ndarray,
    *,
    overwrite: bool = True,
    protect: Iterable[StrPath] = (),
) -> Path:
    """Write a label map atomically, 8-bit when every label is <= 255, else 16-bit.

    Args:
        path: destination: ``.png`` or ``.tif``/``.tiff`` (``.bmp``/``.webp`` only for 8-bit
            labels).
        labels: ``(H, W)`` bool or integer labels in 0..65535.
        overwrite: False refuses an existing destination.
        protect: paths the destination must not be.

    Returns:
        ``Path(path)``.

    Raises:
        ImageError: as for :func:`write_mask`, or 16-bit labels for a format without 16-bit.
        ValueError: wrong shape, dtype or range.

    Shape:
        labels: ``(H, W)``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or 0 in labels.shape:
        raise ValueError(f"labels must have shape (H, W) with H, W >= 1; got {labels.shape}")
    if labels.dtype != np.bool_ and labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be bool or integer; got dtype {labels.dtype}")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi > 65535:
        raise ValueError(f"labels must lie in 0..65535; got {lo}..{hi}")
    fmt = _format_for(path, "label map")
    if hi <= 255:
        im = Image.fromarray(labels.astype(np.uint8))
    elif fmt in ("PNG", "TIFF"):
        im = Image.fromarray(labels.astype(np.uint16))
    else:
        raise ImageError(
            f"cannot write label map {_q(path)}: {fmt} cannot hold labels above 255 (the "
            f"largest is {hi}); use .png or .tif"
        )
    return _atomic_write(path, im, fmt, overwrite, protect, "label map")


def check_output(
    path: StrPath,
    what: str = "mask",
    *,
    overwrite: bool = True,
    protect: Iterable[StrPath] = (),
    any_extension: bool = False,
) -> Path:
    """Check, before any work, that a file could be written to ``path`` as the writers would.

    Catches what would otherwise fail only after the work: an extension the writer refuses
    (``what`` "image" or "overlay": the image formats of :func:`write_image`; anything else:
    the lossless formats of :func:`write_mask`; ``any_extension=True``: no rule, e.g. for a
    JSON file), an output that is an input (``protect``), a folder, an existing file with
    ``overwrite=False``, and a parent that is a file or a folder that is not writable.
    Nothing is created.

    Args:
        path: the output file.
        what: its name in messages ("mask", "label map", "image", "overlay", ...).
        overwrite: False refuses an existing file.
        protect: paths it must not be (the inputs).
        any_extension: skip the extension rule.

    Returns:
        ``Path(path)``.

    Raises:
        ImageError: the reason, naming the path.
    """
    dest = Path(path)
    _check_destination(dest, protect, overwrite, what)
    if not any_extension:
        _format_for(dest, what)
    _check_creatable(dest.parent, dest, what)
    return dest


def check_output_folder(folder: StrPath, what: str = "output") -> Path:
    """Check, before any work, that files can be written into ``folder`` (made if missing).

    Raises:
        ImageError: ``folder`` is a file, or it or its nearest existing parent is not a
            writable folder.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ImageError(f"{what} {_q(folder)} is a file; folder mode writes into a folder")
    _check_creatable(folder, folder, what)
    return folder


def _check_creatable(folder: Path, dest: Path, what: str) -> None:
    """``folder`` exists as a writable folder, or could be made in its nearest existing parent."""
    ancestor = folder
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if ancestor.exists() and not ancestor.is_dir():
        raise ImageError(f"cannot write {what} {_q(dest)}: {_q(ancestor)} is a file, not a folder")
    if ancestor.is_dir() and not os.access(ancestor, os.W_OK | os.X_OK):
        raise ImageError(f"cannot write {what} {_q(dest)}: folder {_q(ancestor)} is not writable")


def _check_destination(
    dest: Path, protect: Iterable[StrPath], overwrite: bool, what: str
) -> None:
    _check_protect(dest, protect, what)
    if dest.is_dir():
        raise ImageError(f"cannot write {what} {_q(dest)}: it is a folder")
    if not overwrite and os.path.lexists(dest):
        raise ImageError(
            f"refusing to write {what} {_q(dest)}: the file already exists (overwrite is off)"
        )


def _to_uint8(array: np.ndarray, what: str, channels: tuple[int | None, ...]) -> np.ndarray:
    shapes = " or ".join("(H, W)" if c is None else f"(H, W, {c})" for c in channels)
    if not isinstance(array, np.ndarray):
        kind = type(array).__name__
        raise TypeError(f"{what} must be a numpy array of shape {shapes}; got {kind}")
    ok_shape = (array.ndim == 2 and None in channels) or (
        array.ndim == 3 and array.shape[2] in channels
    )
    if not ok_shape or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{what} must have shape {shapes} with H, W >= 1; got {array.shape}")
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * np.uint8(255)
    if np.issubdtype(array.dtype, np.floating):
        finite = np.isfinite(array)
        if not finite.all() or float(array.min()) < 0.0 or float(array.max()) > 1.0:
            raise ValueError(f"a float {what} must hold finite values in [0, 1]")
        return np.round(array.astype(np.float64) * 255.0).astype(np.uint8)
    raise ValueError(f"{what} must be uint8, bool or float in [0, 1]; got dtype {array.dtype}")


def _format_for(path: StrPath, what: str) -> str:
    """The format of ``path``'s extension; ``what`` "image" or "overlay" allow JPEG, the others
    (mask, label map) only lossless formats."""
    ext = Path(path).suffix.lower()
    lossless = what not in ("image", "overlay")
    formats = _MASK_FORMATS if lossless else _IMAGE_FORMATS
    if ext in formats:
        return formats[ext]
    if lossless and ext in _IMAGE_FORMATS:
        raise ImageError(
            f"cannot write {what} {_q(path)}: JPEG is lossy and would change mask values along "
            f"every edge; use one of {', '.join(MASK_WRITE_EXTENSIONS)}"
        )
    shown = ext or "no extension"
    raise ImageError(
        f"cannot write {what} {_q(path)}: unknown extension ({shown}); use one of "
        f"{', '.join(formats)}"
    )


def _save_params(fmt: str) -> dict[str, Any]:
    if fmt == "JPEG":
        return {"quality": 95, "subsampling": 0}
    if fmt == "WEBP":
        return {"lossless": True, "exact": True}
    if fmt == "TIFF" and features.check("libtiff"):
        return {"compression": "tiff_lzw"}
    return {}


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def _check_protect(dest: Path, protect: Iterable[StrPath], what: str) -> None:
    if isinstance(protect, str | bytes | os.PathLike):
        protect = [protect]  # one path, not an iterable of characters
    for other in protect:
        if _same_file(dest, Path(os.fsdecode(other))):
            raise ImageError(
                f"refusing to write {what} {_q(dest)}: it is the input {_q(other)}, which would "
                "be lost; choose another output path"
            )


def _atomic_write(
    path: StrPath,
    im: Image.Image,
    fmt: str,
    overwrite: bool,
    protect: Iterable[StrPath],
    what: str,
) -> Path:
    dest = Path(path)
    _check_destination(dest, protect, overwrite, what)
    parent = dest.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImageError(
            f"cannot write {what} {_q(dest)}: cannot create folder {_q(parent)} "
            f"({exc.strerror or exc})"
        ) from exc
    tmp, fd = _make_temp(dest, what)
    try:
        with os.fdopen(fd, "wb") as fh:
            im.save(fh, format=fmt, **_save_params(fmt))
            fh.flush()
            os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp, dest)
        else:
            _move_no_clobber(tmp, dest, what)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        except OSError as cleanup_exc:  # pragma: no cover - only on a broken file system
            log.warning("could not remove temporary file %s: %s", _q(tmp), cleanup_exc)
        if isinstance(exc, ImageError) or not isinstance(exc, Exception):
            raise
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ImageError(f"cannot write {what} {_q(dest)}: {detail or type(exc).__name__}") from exc
    _fsync_dir(parent)
    log.debug("wrote %s %s", what, _q(dest))
    return dest


def _make_temp(dest: Path, what: str) -> tuple[Path, int]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.tmp")
        try:
            return tmp, os.open(tmp, flags, 0o666)  # the umask applies, like any new file
        except FileExistsError:
            continue
        except OSError as exc:
            raise ImageError(f"cannot write {what} {_q(dest)}: {exc.strerror or exc}") from exc
    raise ImageError(f"cannot write {what} {_q(dest)}: no free temporary name")  # pragma: no cover


def _move_no_clobber(tmp: Path, dest: Path, what: str) -> None:
    """Move ``tmp`` onto ``dest`` only if ``dest`` does not exist, atomically where possible."""
    try:
        os.link(tmp, dest)
    except FileExistsError:
        raise ImageError(
            f"refusing to write {what} {_q(dest)}: the file already exists (overwrite is off)"
        ) from None
    except OSError:  # no hard links on this file system: check, then replace
        if os.path.lexists(dest):
            raise ImageError(
                f"refusing to write {what} {_q(dest)}: the file already exists (overwrite is off)"
            ) from None
        os.replace(tmp, dest)
    else:
        os.unlink(tmp)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- folders


def list_images(folder: StrPath) -> list[Path]:
    """The image files directly in ``folder``, sorted by name.

    Files are kept by extension (:data:`IMAGE_EXTENSIONS`, case-insensitive); hidden files (name
    starting with ``.``, which includes macOS ``._*`` resource forks and finecut's own temporary
    files) and sub-folders are skipped. Nothing is opened: a bad file fails later, when read.

    Raises:
        ImageError: ``folder`` does not exist or is not a folder.
    """
    root = Path(folder)
    if not root.is_dir():
        problem = "it is not a folder" if root.exists() else "no such folder"
        raise ImageError(f"cannot list images in {_q(folder)}: {problem}")
    found = [p for p in root.iterdir() if is_image_name(p.name) and p.is_file()]
    return sorted(found, key=lambda p: p.name)


def is_image_name(name: str) -> bool:
    """Whether :func:`list_images` would collect a file of this name: an extension of
    :data:`IMAGE_EXTENSIONS` (any case) and not hidden (no leading ``.``)."""
    return not name.startswith(".") and PurePath(name).suffix.lower() in IMAGE_EXTENSIONS


def pair_by_stem(
    image_dir: StrPath, mask_dir: StrPath
) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """Pair each image with its mask by file stem, for the CLI's folder mode.

    The mask of ``photo.jpg`` is ``photo.<ext>`` or ``photo_mask.<ext>`` in ``mask_dir`` (any
    extension of :data:`IMAGE_EXTENSIONS`; stems compare case-sensitively). When both folders are
    the same folder only ``photo_mask.<ext>`` counts, and those mask files are not images.

    Returns:
        ``(pairs, unmatched_images)``: ``pairs`` is a list of ``(image, mask)`` sorted by image
        name, ``unmatched_images`` the images without a mask. Masks without an image are ignored.

    Raises:
        ImageError: a folder is missing, or an image has more than one candidate mask (e.g.
            ``photo.png`` and ``photo_mask.png``), which finecut will not guess between.
    """
    images = list_images(image_dir)
    masks = list_images(mask_dir)
    same_dir = os.path.samefile(image_dir, mask_dir)
    return match_by_stem(images, masks, same_dir=same_dir, where=mask_dir)


P = TypeVar("P", bound=PurePath)


def match_by_stem(
    images: Sequence[P], masks: Sequence[P], *, same_dir: bool, where: StrPath
) -> tuple[list[tuple[P, P]], list[P]]:
    """:func:`pair_by_stem`'s rule on paths already listed: the images of one folder and the
    masks of one folder (the same folder when ``same_dir``), in any file system.

    Args:
        images: image paths, in the order the pairs should come.
        masks: candidate mask paths.
        same_dir: the masks lie in the images' folder: only ``<stem>_mask.<ext>`` counts, and
            a file taken as a mask is not an image.
        where: the masks' folder, for the message of an ambiguous pair.

    Returns:
        ``(pairs, unmatched_images)`` as :func:`pair_by_stem`.

    Raises:
        ImageError: an image with more than one candidate mask.
    """
    by_stem: dict[str, list[P]] = {}
    for m in masks:
        by_stem.setdefault(m.stem, []).append(m)

    pairs: list[tuple[P, P]] = []
    unmatched: list[P] = []
    used_as_mask: set[P] = set()
    for img in images:
        candidates = list(by_stem.get(img.stem + "_mask", []))
        if not same_dir:
            candidates = by_stem.get(img.stem, []) + candidates
        if len(candidates) > 1:
            names = ", ".join(_q(c.name) for c in candidates)
            raise ImageError(
                f"image {_q(img)} has several masks in {_q(where)} ({names}); keep only one"
            )
        if candidates:
            pairs.append((img, candidates[0]))
            used_as_mask.add(candidates[0])
        else:
            unmatched.append(img)
    if same_dir:
        pairs = [pair for pair in pairs if pair[0] not in used_as_mask]
        unmatched = [img for img in unmatched if img not in used_as_mask]
    return pairs, unmatched
