"""Keras callbacks that keep a run directory honest and resumable.

- ``HistoryRecorder`` writes ``history.csv`` (one row per epoch, with the stage and the
  epoch's wall time) atomically after every epoch; on resume it drops rows of epochs that
  will be trained again.
- ``StageCheckpoint`` commits every epoch (training state, the model's random state and,
  when it improved, the best model) with one atomic rename, so a kill at any instant
  resumes from a consistent epoch, draws what the uninterrupted run would have drawn, and
  ``model.keras`` is always the best epoch the history records.
- ``EpochDraws`` numbers the input pipelines' passes by ``fit``'s epochs, so a resumed
  epoch gets the order and augmentations of its number (:mod:`keras_cnn.data.randomness`).
- ``NanGuard`` stops a run whose loss became NaN with a clear error instead of training on.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import time
from pathlib import Path

import keras

from keras_cnn.data.randomness import set_epoch
from keras_cnn.errors import RunFailure, UserError, first_line
from keras_cnn.progress import format_seconds, keras_verbose, metric_text, say
from keras_cnn.io import atomic_path, atomic_write_text
from keras_cnn.keras_internals import set_initial_epoch

HISTORY_LEAD_COLUMNS = ["stage", "epoch", "seconds"]


def read_history(path: str | Path) -> list[dict[str, str]]:
    """Rows of an existing ``history.csv`` as text (empty list if there is none or it is empty).

    Values stay as written (a missing value is ``""``), so a row written back is unchanged.
    """
    import pandas as pd

    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return []
    return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8").to_dict("records")


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


class StageCheckpoint(keras.callbacks.Callback):
    """Kill-safe checkpoints of one stage: the training state after every epoch, and the best model.

    Under ``backup_dir`` (``RUN/backup/<stage>/``)::

        epoch-0003/state.weights.h5   weights and optimizer state after epoch 3
        epoch-0003/random.json        the state of the model's random layers (Dropout...) after epoch 3
        epoch-0003/best.keras         the model to keep, when epoch 3 was the best so far
        latest.json                   {"epoch": 3, "directory": "epoch-0003", "best": ..., "best_epoch": ...}

    An epoch is written in full under a new name first; replacing ``latest.json`` (one atomic
    rename) commits it, and only then does its best model move to ``model_path`` (another
    rename).  A kill at any instant therefore leaves either the previous commit (the epoch
    is trained again, its history row dropped) or this one (whose best model
    :meth:`recover` moves into place at the next start): ``model_path`` always holds the
    best epoch that the history records.  ``HistoryRecorder`` must come before this
    callback, so an epoch's history row exists when it commits.

    ``monitor`` improves downwards (losses).  ``whole_model``: what is saved when the
    fitted model is only a part of it (a head on cached features, the top of a base on cached
    boundary tensors).  Such an epoch takes a fraction of a second and saving the whole model
    would cost more than the epoch, so then the best epoch is only named in ``latest.json``
    (``best_directory``, kept until the stage ends: its ``state.weights.h5`` holds the part's
    weights) and :meth:`assemble` writes the whole model with them to ``model_path`` once,
    when the fit ends, stops on an error or is interrupted; after a hard kill the resumed
    stage assembles it.  ``initial_best``: the best value of earlier stages, which this
    stage must beat to replace their model.
    """

    LATEST = "latest.json"
    STATE = "state.weights.h5"
    RANDOM = "random.json"
    BEST = "best.keras"

    def __init__(self, backup_dir: str | Path, model_path: str | Path, monitor: str = "val_loss",
                 whole_model: keras.Model | None = None, initial_best: float | None = None):
        super().__init__()
        self.backup_dir = Path(backup_dir)
        self.model_path = Path(model_path)
        self.monitor = monitor
        self.whole_model = whole_model
        self.best: float | None = initial_best
        self.best_epoch: int | None = None
        self.best_directory: str | None = None   # part-only: the epoch folder of the best part weights
        self.saved_last_epoch = False

    @classmethod
    def recover(cls, backup_dir: str | Path, model_path: str | Path) -> dict | None:
        """Finish what a kill interrupted; returns the last committed epoch's record (or ``None``).

        Removes epoch folders that were never committed (or are superseded) and moves a
        committed best model that was not yet in place to ``model_path``.
        """
        backup_dir = Path(backup_dir)
        latest_path = backup_dir / cls.LATEST
        latest = json.loads(latest_path.read_text(encoding="utf-8")) if latest_path.exists() else None
        keep = {latest["directory"], latest.get("best_directory")} if latest is not None else set()
        if backup_dir.is_dir():
            for child in backup_dir.iterdir():
                if child.is_dir() and child.name not in keep:
                    shutil.rmtree(child, ignore_errors=True)
        if latest is not None:
            candidate = backup_dir / latest["directory"] / cls.BEST
            if candidate.exists():
                os.replace(candidate, model_path)
        return latest

    def on_train_begin(self, logs=None):
        latest = self.recover(self.backup_dir, self.model_path)
        epoch = 0
        if latest is not None:
            if self.model.optimizer is not None and not self.model.optimizer.built:
                self.model.optimizer.build(self.model.trainable_variables)
            state = self.backup_dir / latest["directory"] / self.STATE
            try:
                self.model.load_weights(state)
            except ValueError as error:
                # A checkpoint written for another layout of the model (e.g. by an older kcnn).
                raise UserError(f"cannot resume from {state}: it does not fit this model ({first_line(error)}); "
                                "--overwrite starts the stage over") from None
            restore_random_state(self.model, state.parent / self.RANDOM)
            epoch = int(latest["epoch"])
            self.best, self.best_epoch = latest.get("best"), latest.get("best_epoch")
            self.best_directory = latest.get("best_directory")
        # fit (and kcnn's multi-worker loop) start from this epoch; 0 falls back to fit's own.
        set_initial_epoch(self.model, epoch)

    def on_epoch_end(self, epoch, logs=None):
        if any(value is not None and not math.isfinite(float(value))
               for value in ((logs or {}).get("loss"), (logs or {}).get("val_loss"))):
            # Not committed: the run resumes from its last good epoch (a first stage without one
            # leaves no run), and NanGuard, next, stops the stage saying why.
            self.saved_last_epoch = False
            return
        value = (logs or {}).get(self.monitor)
        improved = value is not None and math.isfinite(float(value)) and (self.best is None or float(value) < self.best)
        if improved:
            self.best, self.best_epoch = float(value), epoch + 1
        name = f"epoch-{epoch + 1:04d}"
        part_only = self.whole_model is not None
        with atomic_path(self.backup_dir / name, directory=True) as folder:
            self.model.save_weights(folder / self.STATE)
            atomic_write_text(folder / self.RANDOM, json.dumps({"seed_states": random_state(self.model)}))
            if improved and not part_only:
                self.model.save(folder / self.BEST)
        if improved and part_only:
            self.best_directory = name
        self._commit(epoch + 1, name)
        # Committed: the best model moves into place and older epochs go.
        self.recover(self.backup_dir, self.model_path)
        self.saved_last_epoch = improved and not part_only

    def _commit(self, epoch: int, directory: str) -> None:
        atomic_write_text(self.backup_dir / self.LATEST, json.dumps(
            {"epoch": epoch, "directory": directory, "best": self.best, "best_epoch": self.best_epoch,
             "best_directory": self.best_directory}))

    @classmethod
    def needs_assembly(cls, backup_dir: str | Path) -> bool:
        """Whether a part-only stage has best part weights not yet written as the whole model."""
        latest_path = Path(backup_dir) / cls.LATEST
        return latest_path.exists() and bool(json.loads(latest_path.read_text(encoding="utf-8")).get("best_directory"))

    def on_train_end(self, logs=None):
        self.assemble()

    def assemble(self) -> None:
        """Part-only: load the best part weights and save the whole model to ``model_path``; idempotent.

        Afterwards the model in memory is the best one (``saved_last_epoch``).
        """
        if self.whole_model is None or not self.best_directory:
            return
        state = self.backup_dir / self.best_directory / self.STATE
        if not state.exists():
            return
        self.model.load_weights(state)
        with atomic_path(self.model_path) as temporary:
            self.whole_model.save(temporary)
        self.best_directory = None
        latest_path = self.backup_dir / self.LATEST
        if latest_path.exists():
            latest = json.loads(latest_path.read_text(encoding="utf-8"))
            self._commit(int(latest["epoch"]), latest["directory"])
        self.saved_last_epoch = True


def _seed_states(model: keras.Model) -> list:
    """The state variables of the model's random layers (Dropout, GaussianNoise...), in the model's order.

    ``model.variables`` is ``model.weights`` plus these (Keras's own definition); weights
    files leave them out, so a resumed model would draw its first epoch's dropout masks again.
    """
    weights = {id(variable) for variable in model.weights}
    return [variable for variable in model.variables if id(variable) not in weights]


def random_state(model: keras.Model) -> list[list[int]]:
    """The values of the model's random-layer states, to store beside its weights."""
    return [[int(value) for value in keras.ops.convert_to_numpy(variable).reshape(-1)]
            for variable in _seed_states(model)]


def restore_random_state(model: keras.Model, path: Path) -> None:
    """Set the model's random-layer states to those stored at ``path`` (an older checkpoint has none)."""
    if not path.exists():
        return
    stored = json.loads(path.read_text(encoding="utf-8")).get("seed_states", [])
    variables = _seed_states(model)
    if len(stored) != len(variables):
        raise UserError(f"cannot resume from {path}: it holds {len(stored)} random state(s), the model has "
                        f"{len(variables)}; --overwrite starts the stage over")
    for variable, values in zip(variables, stored):
        variable.assign(keras.ops.reshape(keras.ops.convert_to_tensor(values, dtype=variable.dtype), variable.shape))


class EpochDraws(keras.callbacks.Callback):
    """At the start of every epoch of ``fit``: the input pipelines' next pass is that epoch.

    Their shuffles and augmentations are then those of the epoch's number, in a resumed
    fit too (:func:`keras_cnn.data.randomness.set_epoch`).  Not for kcnn's multi-worker
    loop, whose passes over the data do not start with its epochs (it positions them itself).
    """

    def on_epoch_begin(self, epoch, logs=None):
        set_epoch(epoch)


class NanGuard(keras.callbacks.Callback):
    """Raise a clear ``RunFailure`` as soon as the training or validation loss is NaN or infinite.

    ``advice`` names the options that most likely caused it.  An epoch whose validation loss
    is not a number is never the best one, so the model file keeps the last good epoch.
    """

    def __init__(self, advice: str = "try a lower --learning-rate"):
        super().__init__()
        self.advice = advice
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self._check((logs or {}).get("loss"), f"the loss became {{}} at epoch {self._epoch + 1}, batch {batch + 1}")

    def on_epoch_end(self, epoch, logs=None):
        for key, name in (("loss", "loss"), ("val_loss", "validation loss")):
            self._check((logs or {}).get(key), f"the {name} became {{}} at epoch {epoch + 1}")

    def _check(self, value, what: str) -> None:
        if value is not None and not math.isfinite(float(value)):
            self.model.stop_training = True
            raise RunFailure(f"{what.format(float(value))}; {self.advice} (the run is kept at its last good epoch; "
                             "--overwrite starts it over with other options)")