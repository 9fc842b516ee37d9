"""Silencing the libraries' chatter a kcnn user cannot act on.

TensorFlow's C++ side prints INFO/ERROR lines (CUDA probing on a machine without a GPU,
oneDNN notes) straight to fd 2 while it loads and while it first lists devices, before
any log-level setting applies; LiteRT's interpreter announces its XNNPACK delegate the
same way.  They would bury the one-line messages kcnn promises, so those moments run
with fd 2 pointed at /dev/null.  Other native lines come at any moment: libjpeg warns
about every damaged JPEG it still decodes ("Corrupt JPEG data: 3 extraneous bytes before
marker 0xd9", once per epoch and image), the LiteRT converter reports its settings
("fully_quantize: 0, ..."); while a command runs, :func:`native_noise_filtered` drops those
lines from fd 2 and passes every other one.  On the Python side the command line keeps warnings and
log records of other packages (numpy ``FutureWarning``, Keras ``UserWarning``, TensorFlow
and absl logs) out of its output.  ``--debug`` / ``KCNN_DEBUG=1`` keeps everything.

This is about other libraries' output; the user's ``--quiet``, which silences kcnn's own
progress, is :mod:`keras_cnn.progress`'s.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import threading
from typing import Iterator

# Native lines that say nothing a kcnn user can act on (kcnn reports what matters itself).
NATIVE_NOISE = re.compile(
    # libjpeg's warnings about a damaged JPEG it still decodes (a truly broken one fails the check)
    r"(Corrupt JPEG data|Premature end of JPEG file|Invalid SOS parameters|Inconsistent progression sequence"
    r"|Warning: (unknown JFIF|thumbnail image)"
    # the LiteRT converter's report of its settings and of the model's size
    r"|fully_quantize: |Estimated count of arithmetic ops"
    # absl's INFO and WARNING lines (TF_CPP_MIN_LOG_LEVEL does not reach every C++ library), and its notice
    r"|[IW]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] |WARNING: All log messages before absl::InitializeLog)")


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


@contextlib.contextmanager
def native_noise_filtered() -> Iterator[None]:
    """For the duration, drop :data:`NATIVE_NOISE` lines that native code writes to fd 2; pass every other line.

    fd 2 becomes a pipe read by a thread that forwards what is not noise to the real
    stderr, line by line.  Python's own ``sys.stderr`` (kcnn's messages, progress bars)
    writes to the real stderr directly, so it is neither delayed nor filtered.  After a
    crash inside a native library its last lines may be lost: ``--debug`` keeps fd 2 as it is.
    """
    if debugging():
        yield
        return
    sys.stderr.flush()
    real_fd = os.dup(2)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    python_stderr = sys.stderr
    if _writes_to_fd(python_stderr, 2):
        sys.stderr = io.TextIOWrapper(io.FileIO(real_fd, "w", closefd=False), encoding=python_stderr.encoding,
                                      errors=python_stderr.errors, line_buffering=True, write_through=True)
    forwarder = threading.Thread(target=_forward_lines, args=(read_fd, real_fd), daemon=True,
                                 name="kcnn-native-stderr")
    forwarder.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        sys.stderr = python_stderr
        os.dup2(real_fd, 2)          # closes the pipe's writing end: the forwarder reads its last lines
        forwarder.join(timeout=5)    # (a child process still holding it would keep it open)
        if not forwarder.is_alive():
            os.close(read_fd)
        os.close(real_fd)


def _writes_to_fd(stream, fd: int) -> bool:
    try:
        return stream.fileno() == fd
    except (AttributeError, OSError, ValueError):   # io.UnsupportedOperation is an OSError
        return False


def _forward_lines(read_fd: int, out_fd: int) -> None:
    """Copy lines from ``read_fd`` to ``out_fd`` until the pipe closes, leaving out :data:`NATIVE_NOISE`."""
    pending = b""
    while True:
        try:
            chunk = os.read(read_fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        *lines, pending = (pending + chunk).split(b"\n")
        kept = b"".join(line + b"\n" for line in lines if not NATIVE_NOISE.match(line.decode("utf-8", "replace")))
        if len(pending) > 65536:    # a very long line without an end: pass it on as it is
            kept, pending = kept + pending, b""
        if kept:
            os.write(out_fd, kept)
    if pending and not NATIVE_NOISE.match(pending.decode("utf-8", "replace")):
        os.write(out_fd, pending)


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
