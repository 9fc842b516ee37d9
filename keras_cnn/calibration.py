"""Temperature scaling (Guo et al., 2017): one number, fitted on held-out data, that makes probabilities honest.

A network's logits ``z`` become probabilities ``softmax(z / T)`` (independent sigmoid units:
``sigmoid(z / T)``).  ``T > 1`` softens an overconfident model, ``T < 1`` sharpens an
underconfident one, and the order of the scores never changes, so neither does any
prediction or the accuracy.  ``T`` is the value that minimises the negative log-likelihood
of the true labels on data the model did not train on (a run's validation part); that
likelihood is convex in ``1 / T``, so a bounded one-dimensional search finds it.  A standard
normal prior on ``log T`` keeps the fit finite when the data cannot decide (a validation part
without a single mistake would send ``T`` to 0 and round every probability to 0 or 1); with
n images it weighs ``1 / n`` of one image's likelihood, nothing beside real evidence.

Two kinds of heads, one API (numpy only; cheap to test by hand):

``"softmax"``
    ``logits`` (n, classes), ``targets`` class indices (n,);
``"sigmoid"``
    independent sigmoid units: ``logits`` (n, units), ``targets`` 0/1 of the same shape (a
    binary head has one unit, the probability of class 1; a multi-label head one per label).

:func:`fit_temperature` fits, :func:`apply_temperature` applies, :func:`class_probabilities`
gives the (n, classes) table every other part of kcnn reads (a binary unit ``p`` becomes
``[1 - p, p]``), :func:`logits_from_probabilities` recovers logits from probabilities when
only those are known, and :func:`out_of_distribution_scores` are the scores compared for
telling images of unknown classes apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

SOFTMAX, SIGMOID = "softmax", "sigmoid"
KINDS = (SOFTMAX, SIGMOID)
# The search range of T: wide enough for a model trained to memorise wrong labels, narrow
# enough that a validation part without a single mistake cannot send T to zero.
TEMPERATURE_BOUNDS = (0.01, 100.0)


@dataclass(frozen=True)
class TemperatureFit:
    """A fitted temperature and the mean negative log-likelihood before (T = 1) and after it."""

    temperature: float
    nll_before: float
    nll_after: float
    count: int

    @property
    def at_bound(self) -> bool:
        """Whether the search stopped at an end of :data:`TEMPERATURE_BOUNDS` (the data wanted more)."""
        return any(abs(np.log(self.temperature / bound)) < 1e-3 for bound in TEMPERATURE_BOUNDS)


def _check(logits: Any, targets: Any, kind: str) -> tuple[np.ndarray, np.ndarray]:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, received {kind!r}")
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim == 1:
        logits = logits[:, None]
    if logits.ndim != 2 or len(logits) == 0:
        raise ValueError(f"logits must have shape (n, k) with n > 0, received shape {logits.shape}")
    if not np.all(np.isfinite(logits)):
        raise ValueError("logits must be finite numbers")
    targets = np.asarray(targets)
    if kind == SOFTMAX:
        targets = targets.reshape(-1).astype(np.int64)
        if len(targets) != len(logits) or targets.min() < 0 or targets.max() >= logits.shape[1]:
            raise ValueError(f"targets must be {len(logits)} class indices in 0..{logits.shape[1] - 1}")
    else:
        targets = targets.reshape(logits.shape).astype(np.float64)
    return logits, targets


def negative_log_likelihood(logits: Any, targets: Any, kind: str = SOFTMAX, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``targets`` under ``logits / temperature`` (computed stably)."""
    logits, targets = _check(logits, targets, kind)
    scaled = logits / float(temperature)
    if kind == SOFTMAX:
        rows = np.arange(len(scaled))
        largest = scaled.argmax(axis=1)
        others = np.exp(scaled - scaled[rows, largest][:, None])
        others[rows, largest] = 0.0
        # -log p = (largest - target) + log(1 + the others' share): log1p keeps the tiny NLL of a
        # confident right answer, which log(1 + tiny), or adding it to the largest logit, rounds to 0.
        gap = scaled[rows, largest] - scaled[rows, targets]
        return float(np.mean(gap + np.log1p(others.sum(axis=1))))
    # Binary cross-entropy with logits: max(x, 0) - x y + log(1 + exp(-|x|)), summed over units.
    per_unit = np.maximum(scaled, 0) - scaled * targets + np.log1p(np.exp(-np.abs(scaled)))
    return float(np.mean(per_unit.sum(axis=1)))


def fit_temperature(logits: Any, targets: Any, kind: str = SOFTMAX) -> TemperatureFit:
    """The temperature that minimises the negative log-likelihood of ``targets`` (see the module docstring)."""
    from scipy.optimize import minimize_scalar

    logits, targets = _check(logits, targets, kind)
    low, high = np.log(TEMPERATURE_BOUNDS)
    prior_weight = 1.0 / (2.0 * len(logits))

    def objective(log_t: float) -> float:
        # The mean NLL plus a standard normal prior on log T (per image): negligible beside the data
        # unless they cannot decide, as when the validation part has no mistake at all (then the NLL
        # alone falls towards T = 0 and every probability would round to 0 or 1).
        return negative_log_likelihood(logits, targets, kind, float(np.exp(log_t))) + prior_weight * log_t ** 2

    # Both terms are unimodal in log T (the NLL is convex in 1/T): a bounded Brent search finds the minimum.
    result = minimize_scalar(objective, bounds=(low, high), method="bounded", options={"xatol": 1e-6})
    temperature = float(np.exp(result.x))
    before = negative_log_likelihood(logits, targets, kind)
    after = negative_log_likelihood(logits, targets, kind, temperature)
    if after > before:   # the search ends within its tolerance of the optimum; never do worse than T = 1
        temperature, after = 1.0, before
    return TemperatureFit(temperature, before, after, len(logits))


def apply_temperature(logits: Any, temperature: float | None, kind: str = SOFTMAX) -> np.ndarray:
    """Probabilities of ``logits / temperature`` (``None``: T = 1), float64, the shape of ``logits``."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim == 1:
        logits = logits[:, None]
    scaled = logits / float(temperature or 1.0)
    if kind == SOFTMAX:
        shifted = np.exp(scaled - scaled.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)
    if kind == SIGMOID:
        # exp of a negative number only: no overflow for large logits of either sign.
        positive = scaled >= 0
        result = np.empty_like(scaled)
        result[positive] = 1.0 / (1.0 + np.exp(-scaled[positive]))
        exponent = np.exp(scaled[~positive])
        result[~positive] = exponent / (1.0 + exponent)
        return result
    raise ValueError(f"kind must be one of {KINDS}, received {kind!r}")


def head_kind(activation: str, outputs: int) -> str:
    """The kind of a model's head from its output activation and width (one linear unit: a sigmoid's logit)."""
    if activation == SIGMOID or (activation not in KINDS and outputs == 1):
        return SIGMOID
    return SOFTMAX


def class_probabilities(logits: Any, temperature: float | None, kind: str) -> np.ndarray:
    """(n, classes) probabilities of a single-label head: a binary sigmoid unit ``p`` becomes ``[1 - p, p]``."""
    probabilities = apply_temperature(logits, temperature, kind)
    if kind == SIGMOID:
        if probabilities.shape[1] != 1:
            raise ValueError(f"a single-label sigmoid head has one unit, received {probabilities.shape[1]}")
        return np.concatenate([1.0 - probabilities, probabilities], axis=1)
    return probabilities


def single_label_targets(true_indices: Any, kind: str) -> np.ndarray:
    """What :func:`fit_temperature` takes for class indices: themselves, or ``index == 1`` for a binary unit."""
    true_indices = np.asarray(true_indices).reshape(-1)
    return (true_indices == 1).astype(np.float64)[:, None] if kind == SIGMOID else true_indices


def logits_from_probabilities(probabilities: Any, kind: str = SOFTMAX) -> np.ndarray:
    """Logits that give ``probabilities`` back (log p for a softmax, log(p / (1 - p)) for sigmoid units).

    Probabilities rounded to exactly 0 or 1 are clipped first (float32's smallest normal
    number), so the result is finite but no more precise than what was rounded.
    """
    tiny = float(np.finfo(np.float32).tiny)
    probabilities = np.clip(np.asarray(probabilities, dtype=np.float64), tiny, 1.0 - 1e-7)
    if kind == SIGMOID:
        return np.log(probabilities) - np.log1p(-probabilities)
    return np.log(probabilities)


def out_of_distribution_scores(logits: Any, temperature: float | None, kind: str = SOFTMAX) -> dict[str, np.ndarray]:
    """Per image, higher = more like the training classes: the scores an unknown-class filter can threshold.

    ``max_probability`` (the top calibrated probability, Hendrycks and Gimpel 2017),
    ``max_logit`` (Hendrycks et al. 2022) and ``energy`` (the negative free energy
    ``T log sum exp(z / T)``, Liu et al. 2020; for one sigmoid unit, over the logits (0, z)).
    """
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim == 1:
        logits = logits[:, None]
    if kind == SIGMOID and logits.shape[1] == 1:
        logits = np.concatenate([np.zeros_like(logits), logits], axis=1)
    temperature = float(temperature or 1.0)
    scaled = logits / temperature
    top = scaled.max(axis=1)
    energy = temperature * (top + np.log(np.exp(scaled - top[:, None]).sum(axis=1)))
    probabilities = apply_temperature(logits, temperature, SOFTMAX)
    return {"max_probability": probabilities.max(axis=1), "max_logit": logits.max(axis=1), "energy": energy}
