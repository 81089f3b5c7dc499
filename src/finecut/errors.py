"""Exceptions finecut raises for bad input; the CLI turns them into one clear line and exit 2."""

from __future__ import annotations


class FinecutError(Exception):
    """Base class of every error finecut reports to a user (never a bug)."""


class ImageError(FinecutError, ValueError):
    """An image or mask file cannot be used: corrupt, truncated, empty, wrong size, not an image."""


class WeightsError(FinecutError):
    """A weight file is missing, corrupt (sha256 mismatch) or does not fit the model."""


class ConfigError(FinecutError, ValueError):
    """A configuration file or option is invalid (unknown key, wrong type, out of range)."""


class ImageTooLargeError(ImageError):
    """An image has more pixels than the reader's ``max_pixels`` (or PIL's decompression-bomb
    limit): refused from its header, before any pixel is decoded."""


class DependencyError(FinecutError, ImportError):
    """An optional dependency a feature needs is not installed (the message says how to get it)."""
