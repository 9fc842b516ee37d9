"""Silencing the libraries' chatter a kcnn user cannot act on.

TensorFlow's C++ side prints INFO/ERROR lines (CUDA probing on a machine without a GPU,
oneDNN notes) straight to fd 2 while it loads and while it first lists devices, before
any log-level setting applies; LiteRT's interpreter announces its XNNPACK delegate the
same way.  They would bury the one-line messages kcnn promises, so those moments run
with fd 2 pointed at /dev/null.  On the Python side the command line keeps warnings and
log records of other packages (numpy ``FutureWarning``, Keras ``UserWarning``, TensorFlow
and absl logs) out of its output.  ``--debug`` / ``KCNN_DEBUG=1`` keeps everything.

This is about other libraries' output; the user's ``--quiet``, which silences kcnn's own
progress, is :mod:`keras_cnn.progress`'s.
"""

from __future__ import annotations

import contextlib
import logging
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
        import tensorflow

        # The first device listing probes CUDA ("failed call to cuInit" on every machine
        # without a GPU); doing it here keeps that line out of every command's output.
        tensorflow.config.list_physical_devices()


def quiet_library_messages() -> None:
    """Python warnings from kcnn's own code only; other packages' log records from ERROR up.

    The command line calls this once at start (a library's import leaves global filters
    alone).  Deprecations inside numpy, Keras or TensorFlow and their INFO/WARNING logs say
    nothing a user of kcnn can act on.
    """
    if debugging():
        return
    import warnings

    warnings.filterwarnings("ignore")
    warnings.filterwarnings("default", module=r"keras_cnn(\.|$)")
    for name in ("tensorflow", "absl", "tf2onnx", "h5py", "jax"):
        logging.getLogger(name).setLevel(logging.ERROR)
