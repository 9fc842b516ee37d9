"""The learning-rate range test (Leslie Smith; fastai's ``lr_find``).

Train for up to ``steps`` batches while the learning rate grows exponentially from
``start`` to ``end``; record the loss, smoothed by a debiased exponential moving average;
stop once the smoothed loss exceeds ``divergence`` times its best value.  The model's
weights (and its optimizer, if it had one) are put back afterwards: the sweep is a
measurement, not training.

Two suggestions are read off the smoothed curve, as fastai names them:
- ``valley``: the longest stretch over which the loss keeps falling, and in it the rate
  at which the loss has made half of that fall (fastai's default suggestion takes the
  stretch's middle step instead; on a long, slowly sinking plateau that lands on the
  plateau, so the middle is measured by the loss here);
- ``steepest``: where the loss falls fastest per decade of learning rate.
Like fastai, the first tenth of the points and the last five are ignored when suggesting
(the start is noise, the end the blow-up), and so is everything after the lowest loss:
a rate there is already past the point where training breaks down.

Unlike fastai, no rate is suggested from a curve that says nothing (:class:`NoSuggestion`
says why): one that stays flat (the smoothed loss falls by less than 1 % of its level, as
a model that cannot learn does), one whose fall is within the batch-to-batch noise of the
loss (its robust standard deviation, from the median absolute difference of consecutive
batches), or one that diverged before enough points were recorded.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from keras_cnn.errors import UserError

DEFAULT_START = 1e-7
DEFAULT_END = 10.0
DEFAULT_STEPS = 100
SMOOTHING = 0.98           # fastai's beta
DIVERGENCE = 4.0           # stop when smoothed loss > 4 x best (fastai's stop_div)
TRAILING_POINTS_IGNORED = 5
FLAT_FALL = 0.01           # a fall under 1 % of the loss's level is a flat curve
NOISE_MULTIPLE = 1.5       # a fall under 1.5 x the per-batch noise could be noise alone


class NoSuggestion(UserError):
    """The sweep's curve does not support a suggestion; the message says why."""


@dataclass
class LearningRateSweep:
    """What a range test recorded: one learning rate, raw loss and smoothed loss per step."""

    learning_rates: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    diverged: bool = False
    planned_steps: int = 0

    def suggestions(self) -> dict[str, float]:
        """``{"valley": lr, "steepest": lr}`` from the smoothed losses; :class:`NoSuggestion` if the curve
        is flat, within its noise, or too short."""
        return suggest_learning_rates(self.learning_rates, self.smoothed, self.losses, self.diverged,
                                      self.planned_steps)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sweep_rates(start: float, end: float, steps: int) -> np.ndarray:
    """``steps`` learning rates growing exponentially from ``start`` to ``end``."""
    if not (0 < start < end):
        raise UserError(f"the sweep needs 0 < start < end, received start={start}, end={end}")
    if steps < 10:
        raise UserError(f"the sweep needs at least 10 steps, received: {steps}")
    return np.geomspace(start, end, int(steps))


def _suggestion_window(count: int) -> slice:
    return slice(count // 10, count - TRAILING_POINTS_IGNORED)


def suggest_learning_rates(learning_rates, smoothed_losses, losses=None, diverged: bool = False,
                           planned_steps: int | None = None) -> dict[str, float]:
    """The ``valley`` and ``steepest`` suggestions (see the module docstring).

    ``losses``: the raw per-batch losses, to tell a fall from noise (without them only
    flatness is checked); ``diverged`` and ``planned_steps`` word the message of a sweep that
    stopped early.  Raises :class:`NoSuggestion` when the curve supports no suggestion.
    """
    count = len(smoothed_losses)
    window = _suggestion_window(count)
    rates = np.asarray(learning_rates, dtype="float64")[window]
    curve = np.asarray(smoothed_losses, dtype="float64")[window]
    finite = np.isfinite(curve)
    if finite.sum() >= 3:
        # The loss diverges only at the end, so the finite points come first; past the lowest, training
        # breaks down.
        lowest = int(np.argmin(np.where(finite, curve, np.inf)))
        rates, curve = rates[:lowest + 1], curve[:lowest + 1]
        fall = float(curve.max() - curve[-1])
        noise = batch_noise(losses) if losses is not None else 0.0
        if len(curve) < 3 or fall < FLAT_FALL * float(np.max(np.abs(curve))):
            reason = _flat_reason(learning_rates, smoothed_losses, window)
        elif fall < NOISE_MULTIPLE * noise:
            reason = (f"the smoothed loss fell by {fall:.3g}, within the batch-to-batch noise of the loss "
                      f"({noise:.3g}), so no rate stands out; use a larger --batch-size or more --steps")
        else:
            return {"valley": float(rates[valley_index(curve)]),
                    "steepest": float(rates[steepest_index(rates, curve)])}
    else:
        reason = f"only {count} steps were recorded, too few to suggest a rate; use more --steps"
    # Divergence is the reason only when it came early: before half of the sweep was done.
    if diverged and (finite.sum() < 3 or (planned_steps is not None and count < planned_steps / 2)):
        of_planned = f" of {planned_steps}" if planned_steps else ""
        reason = (f"the loss diverged after {count}{of_planned} steps, too early to suggest a rate; start the "
                  "sweep lower (--start-lr) or use a smaller --batch-size")
    raise NoSuggestion(reason)


def _flat_reason(learning_rates, smoothed_losses, window: slice) -> str:
    """Why a curve that does not fall gets no suggestion, with the range it covered."""
    rates = np.asarray(learning_rates, dtype="float64")[window]
    curve = np.asarray(smoothed_losses, dtype="float64")[window]
    return (f"the loss did not fall (smoothed {curve[0]:.4f} at learning rate {rates[0]:.1e}, lowest "
            f"{np.nanmin(curve):.4f}, up to {learning_rates[-1]:.1e}), so no rate can be suggested: the model learnt "
            f"nothing at any of these rates in {len(smoothed_losses)} steps")


def batch_noise(losses) -> float:
    """Robust standard deviation of the per-batch loss around its trend: 1.4826 x the median absolute
    deviation of consecutive differences, over sqrt(2) (a difference holds two batches' noise)."""
    values = np.asarray(losses, dtype="float64")
    differences = np.diff(values[np.isfinite(values)])
    if len(differences) < 2:
        return 0.0
    deviation = np.median(np.abs(differences - np.median(differences)))
    return float(1.4826 * deviation / math.sqrt(2.0))


def valley_index(losses) -> int:
    """Index in the longest run of ever-lower losses (not necessarily consecutive points) where
    the loss has made half of the run's fall.

    ``longest[i]`` is the length of the longest decreasing sequence ending at point i and
    ``first[i]`` where it starts; the longest of them is the valley.
    """
    losses = np.asarray(losses, dtype="float64")
    count = len(losses)
    longest = np.ones(count, dtype=int)
    first = np.arange(count)
    for end in range(1, count):
        # Earlier points with a higher loss can be continued by this one.
        earlier = np.flatnonzero(losses[:end] > losses[end])
        if len(earlier):
            best = earlier[np.argmax(longest[earlier])]
            longest[end] = longest[best] + 1
            first[end] = first[best]
    end = int(np.argmax(longest))
    start = int(first[end])
    halfway = (losses[start] + losses[end]) / 2.0
    return start + int(np.argmax(losses[start:end + 1] <= halfway))


def steepest_index(learning_rates, losses) -> int:
    """Index of the most negative slope of loss against log(learning rate)."""
    slopes = np.diff(np.asarray(losses, dtype="float64")) / np.diff(np.log(np.asarray(learning_rates)))
    return int(np.argmin(slopes))


def run_sweep(train_step: Callable[[float], float], rates: np.ndarray, smoothing: float = SMOOTHING,
              divergence: float = DIVERGENCE, progress: Callable[[int, float, float], None] | None = None
              ) -> LearningRateSweep:
    """Call ``train_step(lr)`` (one batch, returns its loss) for each rate until the loss diverges."""
    sweep = LearningRateSweep(planned_steps=len(rates))
    average, best = 0.0, math.inf
    for step, rate in enumerate(rates):
        loss = float(train_step(float(rate)))
        average = smoothing * average + (1.0 - smoothing) * loss
        smoothed = average / (1.0 - smoothing ** (step + 1))   # debiased, as fastai does
        sweep.learning_rates.append(float(rate))
        sweep.losses.append(loss)
        sweep.smoothed.append(smoothed)
        if progress is not None:
            progress(step, float(rate), smoothed)
        if not math.isfinite(smoothed) or smoothed > divergence * best:
            sweep.diverged = True
            break
        best = min(best, smoothed)
    return sweep


def find_learning_rate(model, dataset, loss: str, optimizer: str = "adam", start: float = DEFAULT_START,
                       end: float = DEFAULT_END, steps: int = DEFAULT_STEPS, jit_compile: bool = False,
                       progress: Callable[[int, float, float], None] | None = None) -> LearningRateSweep:
    """Range test of ``model`` on batches of ``dataset`` (repeated as needed); the weights are restored.

    ``model`` is (re)compiled here with ``optimizer`` (a kcnn optimizer name) and ``loss``;
    its weights, BatchNorm statistics included, are put back when the sweep ends or fails.
    """
    from keras_cnn.optimizers import make_optimizer

    rates = sweep_rates(start, end, steps)
    weights = model.get_weights()
    sweep_optimizer = make_optimizer(optimizer, float(rates[0]))
    model.compile(optimizer=sweep_optimizer, loss=loss, jit_compile=jit_compile)
    batches = iter(dataset.repeat())

    def train_step(rate: float) -> float:
        sweep_optimizer.learning_rate.assign(rate)
        images, targets = next(batches)
        model.reset_metrics()   # the loss must be this batch's, not a running mean
        return float(model.train_on_batch(images, targets, return_dict=True)["loss"])

    try:
        return run_sweep(train_step, rates, progress=progress)
    finally:
        model.set_weights(weights)
