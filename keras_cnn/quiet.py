"""Silencing the native libraries' start-up chatter on file descriptor 2.

TensorFlow's C++ side prints INFO/ERROR lines (CUDA probing on a machine without a GPU,
oneDNN notes) straight to fd 2 while it loads and while it first lists devices, before
any log-level setting applies.  They would bury the one-line messages kcnn promises, so
those two moments run with fd 2 pointed at /dev/null.  ``--debug`` / ``KCNN_DEBUG=1``
keeps them.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator


def debugging() -> bool:
    """Whether the user asked to see everything (``--debug`` sets ``KCNN_DEBUG``)."""
    return os.environ.get("KCNN_DEBUG", "") not in ("", "0")


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Send fd 2 to /dev/null for the duration (Python's own exceptions still propagate)."""
    if debugging():
        yield
        return
    sys.stderr.flush()
    saved_stderr = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved_stderr, 2)
        os.close(saved_stderr)
        os.close(devnull)


def import_tensorflow_quietly() -> None:
    """Import TensorFlow and Keras with their native start-up lines silenced."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules:
        return
    with native_stderr_silenced():
        import keras  # noqa: F401
        import tensorflow  # noqa: F401
