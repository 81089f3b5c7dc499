"""Answers that refuse a request: an HTTP status and one line of reason, as ``{"error": "..."}``."""

from __future__ import annotations

from finecut.errors import FinecutError, ImageTooLargeError, WeightsError

__all__ = ["Problem", "problem_from_error"]


class Problem(Exception):
    """A request the server refuses: ``status`` (4xx/5xx), a one-line ``message``, headers.

    Raised anywhere in request handling; the app turns it into a JSON answer.
    """

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = one_line(message)
        self.headers = dict(headers or {})


def one_line(text: str, limit: int = 400) -> str:
    """``text`` on one line (whitespace runs become one space), at most ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def problem_from_error(exc: FinecutError) -> Problem:
    """finecut's own errors as answers: too large -> 413, weights -> 500, the rest -> 400."""
    if isinstance(exc, ImageTooLargeError):
        return Problem(413, str(exc))
    if isinstance(exc, WeightsError):
        return Problem(500, f"the model cannot be loaded: {exc}")
    return Problem(400, str(exc))
