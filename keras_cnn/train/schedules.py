"""Learning-rate schedules of a training stage: constant, cosine and one-cycle, each with warm-up.

The rate changes every step (batch), not every epoch, so a fractional ``--warmup-epochs``
means what it says.  The schedule is a function of the optimizer's step counter, which
``BackupAndRestore`` saves with the optimizer: a resumed stage continues on the same curve.

- ``constant``: a linear warm-up to the peak rate, then the peak rate (kcnn's behaviour
  before schedules existed, when there is no warm-up).
- ``cosine``: a linear warm-up, then a half cosine from the peak down to zero at the last
  step (timm's ``--sched cosine``; the fall is Keras's ``CosineDecay``).
- ``onecycle``: fastai's ``fit_one_cycle``: a half cosine up from peak/25 to the peak over
  the warm-up (a quarter of the steps unless ``--warmup-epochs`` says otherwise), then a
  half cosine down to peak/(25 * 10^5) (``CosineDecay`` with that floor).  Momentum is not
  cycled.  Keras's own warm-up is not used: it starts at 0, where kcnn's first step already
  gets peak/warm-up steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras

from keras_cnn.errors import UserError


@dataclass(frozen=True)
class ScheduleSpec:
    """One schedule kind: what it is, and its default warm-up as a fraction of all steps."""

    description: str
    default_warmup_fraction: float = 0.0


# name on the command line -> spec; the shape of each curve is in LearningRateCurve.__call__.
SCHEDULES: dict[str, ScheduleSpec] = {
    "constant": ScheduleSpec("the same rate every step (after the warm-up, if any)"),
    "cosine": ScheduleSpec("half a cosine from the rate down to 0 at the last step"),
    "onecycle": ScheduleSpec("up from rate/25 to the rate, then down to nearly 0 (fastai's fit_one_cycle)",
                             default_warmup_fraction=0.25),
}

# fastai's fit_one_cycle: start at peak/div, end at peak/(div*div_final).
ONECYCLE_DIV = 25.0
ONECYCLE_FINAL_DIV = 1e5


def check_schedule(name: str) -> str:
    """The schedule name, lower-cased; an unknown one is a one-line ``UserError``."""
    key = str(name).strip().lower()
    if key not in SCHEDULES:
        raise UserError(f"unknown learning-rate schedule {name!r}; choose one of: {', '.join(SCHEDULES)}")
    return key


@keras.saving.register_keras_serializable(package="kcnn", name="LearningRateCurve")
class LearningRateCurve(keras.optimizers.schedules.LearningRateSchedule):
    """The rate at optimizer step ``step`` (0-based) for schedule ``kind``.

    ``total_steps``: steps of the whole stage; ``warmup_steps``: steps of the rise.
    """

    def __init__(self, kind: str, peak: float, total_steps: int, warmup_steps: int = 0):
        self.kind = check_schedule(kind)
        self.peak = float(peak)
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = max(0, min(int(warmup_steps), self.total_steps))
        # The falling half cosine after the warm-up: to 0 (cosine), to peak/(div * final div) (onecycle).
        final = 1.0 / (ONECYCLE_DIV * ONECYCLE_FINAL_DIV) if self.kind == "onecycle" else 0.0
        self._cosine_decay = keras.optimizers.schedules.CosineDecay(
            self.peak, decay_steps=max(1, self.total_steps - self.warmup_steps), alpha=final)

    def __call__(self, step):
        ops = keras.ops
        step = ops.cast(step, "float32")
        peak = ops.cast(self.peak, "float32")
        warmup = float(self.warmup_steps)
        falling = self._cosine_decay(ops.maximum(step - warmup, 0.0))
        if self.kind == "onecycle":
            start = peak / ONECYCLE_DIV
            rise = ops.clip(step / max(warmup, 1.0), 0.0, 1.0)
            rising = start + (peak - start) * 0.5 * (1.0 - ops.cos(math.pi * rise))
            return ops.where(step < warmup, rising, falling)
        # constant and cosine warm up linearly; step 0 already gets peak/warmup, not 0.
        warming = peak * ops.minimum(1.0, (step + 1.0) / max(warmup, 1.0))
        after = falling if self.kind == "cosine" else peak
        return ops.where(step < warmup, warming, after)

    def get_config(self):
        return {"kind": self.kind, "peak": self.peak, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps}


def warmup_step_count(kind: str, warmup_epochs: float | None, steps_per_epoch: int, total_steps: int) -> int:
    """Warm-up steps: ``warmup_epochs`` (fractions allowed) x steps per epoch, or the schedule's default."""
    spec = SCHEDULES[check_schedule(kind)]
    if warmup_epochs is None:
        return int(round(spec.default_warmup_fraction * total_steps))
    if warmup_epochs < 0:
        raise UserError(f"--warmup-epochs must be 0 or more, received: {warmup_epochs}")
    steps = int(round(float(warmup_epochs) * steps_per_epoch))
    if steps >= total_steps and total_steps > 1:
        raise UserError(f"--warmup-epochs {warmup_epochs} covers the whole stage ({total_steps} steps); "
                        "use fewer warm-up epochs or more --epochs")
    return steps


def learning_rate_for(kind: str, peak: float, epochs: int, steps_per_epoch: int,
                      warmup_epochs: float | None = None):
    """The ``learning_rate`` argument of an optimizer: a float for a plain constant rate, else a curve."""
    kind = check_schedule(kind)
    total_steps = max(1, int(epochs) * int(steps_per_epoch))
    warmup = warmup_step_count(kind, warmup_epochs, steps_per_epoch, total_steps)
    if kind == "constant" and warmup == 0:
        return float(peak)
    return LearningRateCurve(kind, peak, total_steps, warmup)


def steps_per_epoch(dataset, examples: int | None, batch_size: int) -> int:
    """Batches in one pass over ``dataset``: its cardinality when tf.data knows it, else from the sizes."""
    import tensorflow as tf

    if isinstance(dataset, tf.data.Dataset):
        cardinality = int(dataset.cardinality())
        if cardinality > 0:
            return cardinality
    elif hasattr(dataset, "__len__"):   # a Keras PyDataset / legacy generator
        return max(1, len(dataset))
    if not examples:
        raise UserError("cannot tell how many batches an epoch has, which a learning-rate schedule needs")
    return max(1, math.ceil(int(examples) / int(batch_size)))
