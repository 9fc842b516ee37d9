"""Early stopping that survives a resumed run.

Keras's ``EarlyStopping`` forgets its patience counter when a killed run resumes; this one
replays the stage's earlier epochs from ``history.csv`` first.  The best epoch's model is
what the stage keeps (the best-model checkpoint watches the same value), and the weights
in memory are set back to the best epoch's when training stops.
"""

from __future__ import annotations

import math
from typing import Callable

import keras

from keras_cnn.progress import say


def monitor_mode(monitor: str) -> str:
    """``"max"`` for accuracy-like values, ``"min"`` for losses."""
    return "max" if "acc" in monitor or "auc" in monitor else "min"


class ResumableEarlyStopping(keras.callbacks.Callback):
    """Stop after ``patience`` epochs without a better ``monitor`` value; restore the best weights.

    ``earlier_values()`` returns the monitored value of each epoch this stage already
    finished (from ``history.csv``); it is read once, when a resumed fit starts past epoch 0.
    """

    def __init__(self, patience: int, monitor: str = "val_loss", stage: str = "",
                 earlier_values: Callable[[], list[float]] | None = None):
        super().__init__()
        if int(patience) < 1:
            raise ValueError(f"patience must be at least 1 epoch, received: {patience}")
        self.patience = int(patience)
        self.monitor = monitor
        self.stage = stage
        self.mode = monitor_mode(monitor)
        self.earlier_values = earlier_values
        self.best: float | None = None
        self.best_epoch: int | None = None     # 1-based
        self.wait = 0
        self.stopped_epoch: int | None = None  # 1-based epoch after which training stopped
        self._best_weights = None
        self._started = False

    def _better(self, value: float) -> bool:
        return self.best is None or (value > self.best if self.mode == "max" else value < self.best)

    def _record(self, epoch: int, value: float) -> bool:
        """Account for epoch ``epoch`` (1-based); True when it is the best so far."""
        if self._better(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            return True
        self.wait += 1
        return False

    def on_train_begin(self, logs=None):
        self._started = False
        self.stopped_epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        if self._started:
            return
        self._started = True
        if epoch > 0 and self.earlier_values is not None:
            # Resumed: the epochs before `epoch` were trained by an earlier process.
            for number, value in enumerate(self.earlier_values()[:epoch], start=1):
                if value is not None and math.isfinite(value):
                    self._record(number, float(value))

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return
        if self._record(epoch + 1, float(value)):
            self._best_weights = self.model.get_weights()
        elif self.wait >= self.patience:
            self.stopped_epoch = epoch + 1
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch is None:
            return
        if self._best_weights is not None:
            self.model.set_weights(self._best_weights)
        prefix = f"[{self.stage}] " if self.stage else ""
        say(f"{prefix}early stopping after epoch {self.stopped_epoch}: no better {self.monitor} for "
            f"{self.patience} epoch(s); keeping epoch {self.best_epoch} ({self.monitor} {self.best:.4g})")
