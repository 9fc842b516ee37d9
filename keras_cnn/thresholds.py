"""A multi-label run's per-label thresholds: chosen on the validation part, kept in ``RUN/thresholds.json``.

A multi-label model gives each label its own probability; a label is predicted when its
probability is at or above the label's threshold.  At the end of every training stage the
threshold of each label is the one that maximises that label's F1 on the validation part
(:func:`keras_cnn.metrics.best_f1_thresholds`; 0.5 for a label without a positive there),
on the probabilities the run answers with: calibrated ones when the run is calibrated
(:mod:`keras_cnn.run_calibration` fits the temperature first, then chooses; ``temperature``
in the record says which).
``kcnn evaluate`` scores the test part at these thresholds and ``kcnn export`` writes them
into the model's signatures and ``kcnn.json``::

    {"format": 1, "stage": "train", "chosen_on": {"part": "validation", "images": n},
     "rule": "best F1 per label; 0.5 without positives", "temperature": T or null,
     "thresholds": {label: t}, "validation_f1": {label: F1 at t}}

numpy only.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from keras_cnn.errors import UserError
from keras_cnn.io import atomic_write_json, read_json
from keras_cnn.metrics import DEFAULT_THRESHOLD, best_f1_thresholds, compute_multi_label_metrics
from keras_cnn.runs import RunDirectory

THRESHOLDS_FORMAT = 1
RULE = f"best F1 per label on the validation part; {DEFAULT_THRESHOLD} without positives there"


def thresholds_record(targets: Any, probabilities: Any, labels: Sequence[str], stage: str,
                      part: str = "validation", temperature: float | None = None) -> dict[str, Any]:
    """Choose each label's threshold on ``part``'s predictions; the record ``RUN/thresholds.json`` holds.

    ``temperature``: the run's, when ``probabilities`` are calibrated ones (recorded, so the
    record says which probabilities its thresholds apply to)."""
    labels = [str(label) for label in labels]
    thresholds = best_f1_thresholds(targets, probabilities)
    scored = compute_multi_label_metrics(targets, probabilities, labels, thresholds)
    return {
        "format": THRESHOLDS_FORMAT,
        "stage": stage,
        "chosen_on": {"part": part, "images": int(len(np.asarray(targets)))},
        "rule": RULE,
        "temperature": temperature,
        "thresholds": {label: float(value) for label, value in zip(labels, thresholds)},
        "validation_f1": {label: values["f1"] for label, values in scored["per_label"].items()},
    }


def default_record(labels: Sequence[str], stage: str) -> dict[str, Any]:
    """The record of a run without a validation part: 0.5 for every label."""
    return {"format": THRESHOLDS_FORMAT, "stage": stage, "chosen_on": None,
            "rule": f"{DEFAULT_THRESHOLD} for every label (no validation part to choose on)",
            "thresholds": {str(label): DEFAULT_THRESHOLD for label in labels}}


def write_thresholds(run: RunDirectory, record: dict[str, Any] | None) -> None:
    """Write ``RUN/thresholds.json`` (None removes it: the model it was chosen for is gone)."""
    if record is None:
        run.thresholds_path.unlink(missing_ok=True)
    else:
        atomic_write_json(run.thresholds_path, record)


def read_thresholds(run: RunDirectory, labels: Sequence[str]) -> np.ndarray:
    """The run's thresholds in ``labels`` order; 0.5 each when the run has none (chosen by an older kcnn)."""
    if not run.thresholds_path.exists():
        return np.full(len(labels), DEFAULT_THRESHOLD)
    return thresholds_in_order(read_json(run.thresholds_path).get("thresholds") or {}, labels, run.thresholds_path)


def thresholds_in_order(thresholds: dict[str, float], labels: Sequence[str], source: Any) -> np.ndarray:
    """``{label: t}`` as an array in ``labels`` order; a label without a threshold is refused."""
    missing = [label for label in labels if label not in thresholds]
    if missing:
        raise UserError(f"{source} has no threshold for label(s) {', '.join(map(repr, missing[:5]))}; "
                        "train the stage again (or --overwrite) to choose them")
    values = np.asarray([float(thresholds[label]) for label in labels], dtype=np.float64)
    if not np.all((values >= 0) & (values <= 1)):
        raise UserError(f"{source}: thresholds must lie in 0..1")
    return values

