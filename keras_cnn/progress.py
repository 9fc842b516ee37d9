"""What kcnn prints while it works: progress that fits where it goes.

- A terminal gets live Keras progress bars; a pipe or a file gets plain lines (one per
  epoch, one per progress step of kcnn's own work, never an escape code or a carriage
  return); ``--quiet`` (``KCNN_QUIET=1``) prints nothing but the result, warnings and
  errors.
- kcnn's own lines always start on a fresh line: the command line wraps ``sys.stderr``
  in a :class:`LineTrackingStream`, so :func:`fresh_line` knows when a live bar left the
  cursor in the middle of a line.
- Every line goes through :func:`keras_cnn.messages.bound_line` (about 300 characters).

All progress goes to stderr: stdout carries the result (``--json``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from typing import Any

from keras_cnn.messages import bound_line

# A plain (non-terminal) progress line is printed at most this often during long work.
PLAIN_PROGRESS_SECONDS = 30.0


def quiet() -> bool:
    """Whether the user asked for the result only (``--quiet`` sets ``KCNN_QUIET``)."""
    return os.environ.get("KCNN_QUIET", "") not in ("", "0")


def interactive(stream: Any = None) -> bool:
    """Whether ``stream`` (default: stderr, where progress goes) is a terminal that can redraw a bar."""
    stream = sys.stderr if stream is None else stream
    try:
        is_terminal = bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or tty-less streams
        return False
    return is_terminal and os.environ.get("TERM", "") != "dumb"


def keras_verbose() -> int:
    """The ``verbose`` value for ``model.fit``: live bars on a terminal, else none.

    Off a terminal ``keras_cnn.train.callbacks.RunProgress`` prints the one plain line per epoch instead of
    Keras's redrawn bar (which writes ``\\r`` and colour codes even into a file).
    """
    return 1 if interactive() and not quiet() else 0


class LineTrackingStream:
    """A text stream wrapper that remembers whether the last character written ended a line."""

    def __init__(self, stream: Any):
        self.stream = stream
        self.at_line_start = True

    def write(self, text: str) -> int:
        if text:
            self.at_line_start = text.endswith("\n")
        return self.stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def track_stderr() -> None:
    """Wrap ``sys.stderr`` so :func:`fresh_line` can end a line a progress bar left open."""
    if not isinstance(sys.stderr, LineTrackingStream):
        sys.stderr = LineTrackingStream(sys.stderr)


def fresh_line() -> None:
    """End the current stderr line if something (a live bar) left it unfinished."""
    if isinstance(sys.stderr, LineTrackingStream) and not sys.stderr.at_line_start:
        sys.stderr.write("\n")
        sys.stderr.flush()


def emit(message: str) -> None:
    """Print ``message`` on stderr on a fresh line, each line bounded; even with ``--quiet``."""
    fresh_line()
    print(bound_line(message), file=sys.stderr, flush=True)


def say(message: str) -> None:
    """One progress message on stderr (on a fresh line, bounded); nothing with ``--quiet``."""
    if not quiet():
        emit(message)


def warn(message: str) -> None:
    """``kcnn: warning: MESSAGE`` on stderr; shown even with ``--quiet``."""
    emit(f"kcnn: warning: {message}")


def format_seconds(seconds: float) -> str:
    """``75`` -> ``1m15s``; ``3700`` -> ``1h01m``."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class ProgressBar:
    """Progress of kcnn's own long work (checking images, extracting features, evaluating).

    Use as a context manager and call :meth:`update` with the number done so far.  On a
    terminal: a live Keras bar.  Elsewhere: the title line, a plain line at most every
    ``PLAIN_PROGRESS_SECONDS``, and one closing line with the time taken.  With
    ``--quiet``: nothing.
    """

    def __init__(self, total: int, title: str, unit: str = "image"):
        self.total = int(total)
        self.title = title
        self.unit = unit
        self.done = 0
        self._bar = None  # a keras.utils.Progbar on a terminal
        self._started = self._last_line = 0.0
        self._enabled = self.total > 0 and not quiet()

    def __enter__(self) -> "ProgressBar":
        self._started = self._last_line = time.perf_counter()
        if self._enabled:
            say(self.title)
            if interactive():
                import keras  # here, not at the top: the command line starts without TensorFlow

                self._bar = keras.utils.Progbar(self.total, unit_name=self.unit)
        return self

    def update(self, done: int) -> None:
        self.done = int(done)
        if not self._enabled:
            return
        if self._bar is not None:
            # Progbar writes to sys.stdout, which may carry a --json result.
            with contextlib.redirect_stdout(sys.stderr):
                self._bar.update(self.done)
            return
        now = time.perf_counter()
        if self.done < self.total and now - self._last_line >= PLAIN_PROGRESS_SECONDS:
            self._last_line = now
            left = (now - self._started) / max(self.done, 1) * (self.total - self.done)
            say(f"  {self.done}/{self.total} {self.unit}s, about {format_seconds(left)} left")

    def __exit__(self, *exc_info) -> None:
        if self._enabled and self._bar is None and exc_info[0] is None:
            seconds = time.perf_counter() - self._started
            say(f"  {self.done}/{self.total} {self.unit}s in {format_seconds(seconds)}")


def metric_text(value: Any) -> str:
    """A metric as Keras's bar shows it: 4 decimals, or scientific notation for tiny values."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{number:.4f}" if abs(number) > 1e-3 or number == 0 else f"{number:.4e}"


class _WarningHandler(logging.Handler):
    """Shows a ``keras_cnn`` log record as ``kcnn: warning: MESSAGE``."""

    def emit(self, record: logging.LogRecord) -> None:
        warn(record.getMessage())


def route_kcnn_logs() -> None:
    """Print kcnn's own log warnings (``logging.getLogger("keras_cnn.…")``) as kcnn warnings."""
    logger = logging.getLogger("keras_cnn")
    if not any(isinstance(handler, _WarningHandler) for handler in logger.handlers):
        logger.addHandler(_WarningHandler(logging.WARNING))
        logger.propagate = False
