"""A run's calibration: the temperature fitted on its validation part, and the threshold of "none of these".

``RUN/calibration.json`` describes how the run's model answers, beside ``model.keras``::

    {"format": 1, "temperature": T or null, "kind": "softmax" | "sigmoid", "stage": "train",
     "fitted_on": {"part": "validation", "images": n},
     "validation": {"temperature", "ece_before", "ece_after", "nll_before", ..., "brier_after"},
     "test": {... the same on the test part, when the run has one},
     "reject_below": {"threshold": P, "target_accuracy": A, "validation": {...}} or absent}

The temperature is fitted at the end of every training stage (``--calibrate``, the default)
and again by ``kcnn calibrate --run RUN``; ``evaluate`` applies it, ``export`` bakes it into
every exported format and records it in ``kcnn.json``.  ``reject_below`` is chosen by
``kcnn evaluate --target-accuracy A`` on calibrated probabilities; a new temperature makes it
stale, so fitting one removes it.  Everything here works from the logits of
:class:`keras_cnn.models.opened.OpenedModel` (one pass gives the model's own output too).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from keras_cnn.calibration import class_probabilities, fit_temperature, head_kind, single_label_targets
from keras_cnn.errors import RunFailure, UserError
from keras_cnn.io import atomic_write_json, read_json
from keras_cnn.metrics import calibration_block
from keras_cnn.progress import ProgressBar, warn
from keras_cnn.runs import RunDirectory, RunLock, RunState

CALIBRATION_FORMAT = 1


@dataclass
class PartPredictions:
    """One pass of a model over a part: its own outputs, its logits and the true classes, in order."""

    outputs: np.ndarray        # (n, units): what the model outputs (softmax, or one sigmoid unit)
    logits: np.ndarray         # (n, units), float64
    true_indices: np.ndarray   # (n,) class indices
    kind: str                  # softmax or sigmoid (keras_cnn.calibration)

    def probabilities(self, temperature: float | None) -> np.ndarray:
        """(n, classes) class probabilities at ``temperature`` (None: the model's own)."""
        return class_probabilities(self.logits, temperature, self.kind)


def _class_indices(targets: Any) -> np.ndarray:
    """Class indices from a batch's targets: indices, or one-hot / soft rows (their largest entry)."""
    targets = np.asarray(targets)
    if targets.ndim == 2 and targets.shape[1] > 1:
        return targets.argmax(axis=1).astype(np.int64)
    return targets.reshape(-1).astype(np.int64)


def batch_outputs_and_logits(opened, images) -> tuple[np.ndarray, np.ndarray]:
    """One batch through the opened model: (its own outputs, float32 (batch, units); logits, float64)."""
    result = opened.graph.predict_on_batch(images)
    outputs = np.asarray(result["output"], dtype=np.float32)
    return outputs.reshape(len(outputs), -1), np.asarray(opened.logits(result["penultimate"]), dtype=np.float64)


def predict_part(opened, dataset, true_indices: Any = None, title: str | None = None) -> PartPredictions:
    """Run the opened model over ``dataset`` (batches of images, or of (images, targets)) once.

    ``true_indices``: the part's classes when the dataset gives images only.
    """
    outputs, logits, truth = [], [], []
    # Without a title (the end of a training stage) nothing is shown.
    count = len(true_indices) if (title and true_indices is not None) else 0
    with ProgressBar(count, title or "") as progress:
        seen = 0
        for batch in dataset:
            images = batch
            if isinstance(batch, (tuple, list)):
                images, targets = batch[0], batch[1]
                truth.append(_class_indices(targets))
            batch_outputs, batch_logits = batch_outputs_and_logits(opened, images)
            outputs.append(batch_outputs)
            logits.append(batch_logits)
            seen += len(batch_outputs)
            progress.update(seen)
    if not outputs:
        raise RunFailure("the part gave no images")
    outputs_array = np.concatenate(outputs)
    truth_array = np.concatenate(truth) if truth else np.asarray(true_indices, dtype=np.int64).reshape(-1)
    if len(truth_array) != len(outputs_array):
        raise RunFailure(f"the data gave {len(outputs_array)} images but the split lists {len(truth_array)}")
    return PartPredictions(outputs_array, np.concatenate(logits), truth_array,
                           head_kind(opened.activation, outputs_array.shape[1]))


def check_finite(predictions: PartPredictions, part: str, advice: str) -> None:
    """Stop with one line when the model's outputs on ``part`` are not finite numbers (its weights overflowed).

    A loss can stay finite while the logits behind it are infinite; no probability, metric
    or temperature can be had from them.  ``advice``: what to do about it.
    """
    if not (np.isfinite(predictions.logits).all() and np.isfinite(predictions.outputs).all()):
        raise RunFailure(f"the model's outputs on the {part} part are not finite numbers (its weights overflowed); "
                         f"{advice}")


def fit_record(validation: PartPredictions, test: PartPredictions | None, stage: str | None) -> dict[str, Any]:
    """Fit the temperature on ``validation``; the calibration record (see the module docstring)."""
    fit = fit_temperature(validation.logits, single_label_targets(validation.true_indices, validation.kind),
                          validation.kind)
    record: dict[str, Any] = {"format": CALIBRATION_FORMAT, "temperature": fit.temperature, "kind": validation.kind,
                              "stage": stage, "fitted_on": {"part": "validation", "images": fit.count},
                              "validation": part_block(validation, fit.temperature)}
    if test is not None:
        record["test"] = part_block(test, fit.temperature)
    if fit.at_bound:
        record["note"] = (f"the temperature reached the end of its range ({fit.temperature:.3g}): the "
                          f"{fit.count} validation images have too few mistakes (or too many) to fit it well")
    return record


def part_block(predictions: PartPredictions, temperature: float | None) -> dict[str, Any]:
    """``"calibration"`` of ``metrics.json`` for one part: ECE, NLL and Brier before and after ``temperature``."""
    if temperature is None:
        block = calibration_block(predictions.probabilities(None), predictions.probabilities(None),
                                  predictions.true_indices, None)
        return {**{key: (None if key.endswith("_after") else value) for key, value in block.items()},
                "note": "not calibrated (kcnn calibrate --run RUN fits a temperature)"}
    return calibration_block(predictions.probabilities(None), predictions.probabilities(temperature),
                             predictions.true_indices, temperature)


def summary_of(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """The stage result's ``"calibration"``: the temperature and the numbers of the test part (else validation)."""
    if not record:
        return None
    part = "test" if "test" in record else "validation"
    summary = {**record[part], "part": part, "fitted_on": record["fitted_on"]}
    if record.get("note"):
        summary["note"] = record["note"]
    return summary


# --------------------------------------------------------------------------- RUN/calibration.json


def read_calibration(run: RunDirectory) -> dict[str, Any]:
    """The run's calibration record, or ``{}`` when it has none."""
    return read_json(run.calibration_path) if run.calibration_path.exists() else {}


def run_temperature(run: RunDirectory) -> float | None:
    """The run's temperature, None when it is not calibrated."""
    temperature = read_calibration(run).get("temperature")
    return None if temperature is None else float(temperature)


def write_calibration(run: RunDirectory, record: dict[str, Any] | None) -> None:
    """Write ``record`` as the run's calibration; ``None`` or ``{}`` removes it."""
    if record:
        atomic_write_json(run.calibration_path, record)
    else:
        run.calibration_path.unlink(missing_ok=True)


def store_reject_below(run: RunDirectory, selection: dict[str, Any] | None) -> None:
    """Keep (or with None, forget) the threshold ``evaluate --target-accuracy`` chose, beside the temperature."""
    record = read_calibration(run)
    if selection is None:
        record.pop("reject_below", None)
    else:
        record = {"format": CALIBRATION_FORMAT, "temperature": None, **record, "reject_below": selection}
    write_calibration(run, record if record.get("temperature") is not None or "reject_below" in record else None)


def stored_reject_below(run: RunDirectory) -> dict[str, Any] | None:
    """The stored threshold choice (``{"threshold", "target_accuracy", ...}``), None when there is none."""
    return read_calibration(run).get("reject_below")


# --------------------------------------------------------------------------- kcnn calibrate


def calibrate_run(run_dir: str | os.PathLike, batch_size: int | None = None, trust_hub: bool = False,
                  accept_input_changes: bool = False) -> dict[str, Any]:
    """Fit (again) the temperature of a finished run on its validation part (``kcnn calibrate``).

    Writes ``RUN/calibration.json`` (a threshold chosen for the old temperature is dropped,
    with a line saying so) and returns the record, plus ``run``.  A run without a
    validation part is refused, and so is one whose last stage has not finished (its
    resumed stage fits its own temperature when it ends).  As ``kcnn evaluate``, under the
    run's lock, the run's labels and inputs are checked first (changed images refused
    unless ``accept_input_changes``), and a TF Hub base loads only with ``trust_hub``.
    """
    from keras_cnn.config import RunConfig
    from keras_cnn.data.pipeline import EmptyPart
    from keras_cnn.models.loading import hub_base_of, load_model
    from keras_cnn.models.opened import open_model
    from keras_cnn.run_data import check_run_inputs, load_part, run_labels

    run = RunDirectory(run_dir).require()
    config = RunConfig.from_dict(run.read_config())
    batch_size = int(batch_size or config.training.batch_size or 32)
    with RunLock(run.root):
        run.check_ownership()
        unfinished = RunState.read(run).unfinished()
        if unfinished:
            raise UserError(f"{run.root}: {unfinished}; calibrate it once it has finished (a stage fits its "
                            "temperature when it ends)")
        run.claim()
        run_labels(run, config)
        check_run_inputs(run, config, accept=accept_input_changes, command="kcnn calibrate")
        try:
            validation_part = load_part(run, config, "validation", batch_size)
        except EmptyPart:
            raise UserError(f"{run.root} has no validation part to fit a temperature on") from None
        trusted = hub_base_of(config.model.name) if trust_hub else None
        opened = open_model(load_model(run.model_path, trust_hub=trusted))
        validation = predict_part(opened, validation_part.images(), validation_part.true_indices,
                                  f"predicting {len(validation_part.true_indices)} validation images")
        check_finite(validation, "validation", "no temperature fits them: train the run again with a lower "
                                               "--learning-rate")
        test = None
        try:
            test_part = load_part(run, config, "test", batch_size)
            test = predict_part(opened, test_part.images(), test_part.true_indices,
                                f"predicting {len(test_part.true_indices)} test images")
        except EmptyPart:
            pass
        previous = read_calibration(run)
        stages = list(run.read_metrics().get("stages") or {})
        record = fit_record(validation, test, stages[-1] if stages else previous.get("stage"))
        if previous.get("reject_below"):
            warn(f"the threshold {previous['reject_below']['threshold']:.4g} chosen for the old temperature no "
                 "longer applies; kcnn evaluate --target-accuracy A chooses one again")
        write_calibration(run, record)
    return {"run": str(run.root), **record}


def describe_calibration(summary: dict[str, Any] | None) -> str:
    """One line about a stage's or a run's calibration (:func:`summary_of`)."""
    if not summary:
        return "not calibrated"
    line = (f"calibrated on {summary['fitted_on']['images']} validation images: temperature "
            f"{summary['temperature']:.3g}; {summary['part']} ECE {summary['ece_before']:.4f} -> "
            f"{summary['ece_after']:.4f}, NLL {summary['nll_before']:.4f} -> {summary['nll_after']:.4f}")
    return f"{line} ({summary['note']})" if summary.get("note") else line
