"""Keras callbacks that keep a run directory honest and resumable.

- ``HistoryRecorder`` writes ``history.csv`` (one row per epoch, with the stage and the
  epoch's wall time) atomically after every epoch; on resume it drops rows of epochs that
  will be trained again.
- ``BestModelCheckpoint`` saves the best model so far to ``model.keras`` atomically, so a
  kill never leaves a half-written model; on resume it remembers the best value already
  reached.
- ``NanGuard`` stops a run whose loss became NaN with a clear error instead of training on.
"""

from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path

import keras

from keras_cnn.errors import RunFailure
from keras_cnn.progress import format_seconds, keras_verbose, metric_text, say
from keras_cnn.runs import atomic_path, atomic_write_text

HISTORY_LEAD_COLUMNS = ["stage", "epoch", "seconds"]


def read_history(path: str | Path) -> list[dict[str, str]]:
    """Rows of an existing ``history.csv`` (empty list if there is none)."""
    path = Path(path)
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def write_history(path: str | Path, rows: list[dict]) -> None:
    """Write history rows atomically; columns = stage, epoch, seconds, then metrics in order seen."""
    columns = list(HISTORY_LEAD_COLUMNS)
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


class HistoryRecorder(keras.callbacks.Callback):
    """Append one row per finished epoch of ``stage`` to ``history.csv``."""

    def __init__(self, path: str | Path, stage: str):
        super().__init__()
        self.path = Path(path)
        self.stage = stage
        self.rows: list[dict] = []
        self._epoch_started = 0.0
        self._first_epoch_seen = False

    def on_train_begin(self, logs=None):
        self.rows = read_history(self.path)
        self._first_epoch_seen = False

    def on_epoch_begin(self, epoch, logs=None):
        if not self._first_epoch_seen:
            self._first_epoch_seen = True
            if epoch == 0:
                # A fresh start of this stage: its old rows, and those of any stage that
                # followed it (a fine-tune of the model being retrained), no longer hold.
                first = next((index for index, row in enumerate(self.rows) if row.get("stage") == self.stage),
                             len(self.rows))
                self.rows = self.rows[:first]
            else:
                # Resuming at `epoch` (0-based): rows of this stage from that epoch on are redone.
                self.rows = [row for row in self.rows
                             if row.get("stage") != self.stage or int(row["epoch"]) <= epoch]
        self._epoch_started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        row = {"stage": self.stage, "epoch": epoch + 1,
               "seconds": round(time.perf_counter() - self._epoch_started, 3)}
        for key, value in (logs or {}).items():
            row[key] = float(value)
        self.rows.append(row)
        write_history(self.path, self.rows)

    def stage_rows(self) -> list[dict]:
        return [row for row in self.rows if row.get("stage") == self.stage]


class RunProgress(keras.callbacks.Callback):
    """One line per epoch on stderr: the epoch's time and when the stage should end.

    Keras's progress bar shows the time left in the current epoch; this adds the time left
    for the whole stage, which is what matters on a long CPU run.  On a terminal the line
    is printed once Keras has closed the epoch's bar (at the next epoch or at the end), so
    the two never share a line.  Off a terminal there is no Keras bar
    (:func:`keras_cnn.progress.keras_verbose`): the line also carries the epoch's metrics
    and is printed at once, the one line a log gets per epoch.  ``--quiet``: nothing.
    """

    def __init__(self, stage: str, epochs: int):
        super().__init__()
        self.stage = stage
        self.epochs = epochs
        self._seconds: list[float] = []
        self._started = 0.0
        self._pending: str | None = None

    def on_epoch_begin(self, epoch, logs=None):
        self._flush()
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self._seconds.append(time.perf_counter() - self._started)
        remaining = self.epochs - (epoch + 1)
        live_bar = keras_verbose() != 0
        line = f"[{self.stage}] epoch {epoch + 1}/{self.epochs}"
        if logs and not live_bar:
            line += ": " + ", ".join(f"{name} {metric_text(value)}" for name, value in logs.items()) + ";"
        line += f" took {format_seconds(self._seconds[-1])}"
        if remaining > 0:
            # The first epoch includes tracing; later ones predict the rest better.
            recent = self._seconds[1:] or self._seconds
            line += f", about {format_seconds(remaining * sum(recent) / len(recent))} left"
        self._pending = line
        if not live_bar:
            self._flush()

    def on_train_end(self, logs=None):
        self._flush()

    def _flush(self) -> None:
        if self._pending is not None:
            say(self._pending)
            self._pending = None


class BestModelCheckpoint(keras.callbacks.Callback):
    """Save the whole model to ``path`` whenever ``monitor`` improves (atomic write)."""

    def __init__(self, path: str | Path, monitor: str = "val_loss", history: HistoryRecorder | None = None,
                 whole_model: keras.Model | None = None, initial_best: float | None = None):
        super().__init__()
        self.path = Path(path)
        self.monitor = monitor
        self.mode = "max" if "acc" in monitor or "auc" in monitor else "min"
        self.history = history
        # When only a head is fitted on cached features, the whole model (base + head,
        # sharing the head's weights) is what gets saved.
        self.whole_model = whole_model
        # A later stage only replaces the saved model when it beats the earlier stages.
        self.best: float | None = initial_best
        self._resumed_best_read = False

    def _better(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def on_epoch_begin(self, epoch, logs=None):
        if not self._resumed_best_read and self.history is not None and epoch > 0:
            # A resumed run: start from the best value already reached, not from scratch.
            self._resumed_best_read = True
            earlier = [float(row[self.monitor]) for row in self.history.stage_rows()
                       if row.get(self.monitor) not in (None, "")]
            for value in earlier:
                if self._better(value):
                    self.best = value

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or math.isnan(float(value)):
            return
        if self._better(float(value)):
            self.best = float(value)
            self.save(self.whole_model or self.model)

    def save(self, model: keras.Model) -> None:
        with atomic_path(self.path) as temporary:
            model.save(temporary)


class NanGuard(keras.callbacks.Callback):
    """Raise a clear ``RunFailure`` as soon as the training loss is NaN or infinite."""

    def __init__(self):
        super().__init__()
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.model.stop_training = True
            raise RunFailure(
                f"the loss became {float(loss)} at epoch {self._epoch + 1}, batch {batch + 1}; "
                "try a lower --learning-rate (the run stopped; the best model so far is kept)"
            )
