"""Uvicorn's log lines in kcnn's shape: one plain ``kcnn: …`` line each, none under ``--quiet``.

The access log becomes ``kcnn: 127.0.0.1:52814 POST /v1/models/NAME:predict 200``;
uvicorn's own lifecycle lines (``Started server process``, ``Waiting for application
startup`` …) are left out because kcnn prints its own start and stop lines, and its
warnings and errors become one ``kcnn: warning: …`` line (never a traceback unless
``--debug``).  With ``--quiet`` nothing from uvicorn is printed.
"""

from __future__ import annotations

import logging

from keras_cnn.errors import first_line
from keras_cnn.progress import emit, quiet, say, warn
from keras_cnn.library_chatter import debugging

UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "keras_cnn.serve")


class KcnnLogHandler(logging.Handler):
    """Prints uvicorn's records (and the server's own) as kcnn lines on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        if quiet():
            return
        if record.name == "uvicorn.access":
            say(f"kcnn: {access_line(record)}")
        elif record.levelno >= logging.WARNING:
            warn(first_line(record.getMessage()))
            if debugging() and record.exc_info:
                emit(logging.Formatter().formatException(record.exc_info))
        elif debugging():
            say(f"kcnn: {first_line(record.getMessage())}")


def access_line(record: logging.LogRecord) -> str:
    """``CLIENT METHOD PATH STATUS`` from uvicorn's access record."""
    if isinstance(record.args, tuple) and len(record.args) == 5:
        client, method, path, _, status = record.args
        return f"{client} {method} {path} {status}"
    return first_line(record.getMessage())


def route_server_logs() -> None:
    """Send uvicorn's loggers (and ``keras_cnn.serve``'s) through :class:`KcnnLogHandler` only."""
    handler = KcnnLogHandler()
    for name in UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(logging.INFO)
        logger.propagate = False
