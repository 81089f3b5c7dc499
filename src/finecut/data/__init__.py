"""finecut.data: robust image and mask I/O (datasets and transforms live in their own modules).

Importing this package is light (numpy and PIL only; no torch).
"""

from __future__ import annotations

from finecut.data.io import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    IMAGE_WRITE_EXTENSIONS,
    MASK_WRITE_EXTENSIONS,
    check_output,
    decode_image,
    decode_mask,
    encode_mask,
    is_image_name,
    list_images,
    match_by_stem,
    pair_by_stem,
    read_image,
    read_labels,
    read_mask,
    write_image,
    write_labels,
    write_mask,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "IMAGE_WRITE_EXTENSIONS",
    "MASK_WRITE_EXTENSIONS",
    "decode_image",
    "decode_mask",
    "check_output",
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
