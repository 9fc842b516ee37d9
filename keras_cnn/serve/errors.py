"""The one error the server answers with: an HTTP status and a message, sent as ``{"error": "…"}``.

The statuses follow TF Serving's mapping of its error codes (invalid argument 400, not
found 404, deadline exceeded 504, unavailable 503) plus 413 for a body over the limit.
"""

from __future__ import annotations


class ServingError(Exception):
    """A request the server refuses or cannot answer; ``status`` is the HTTP status."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def bad_request(message: str) -> ServingError:
    """400: the request is malformed or names something the model cannot take."""
    return ServingError(400, message)


def not_found(message: str) -> ServingError:
    """404: no such model or version."""
    return ServingError(404, message)
