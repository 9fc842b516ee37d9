"""A run's calibration: the temperature fitted on its validation part, and the threshold of "none of these".

``RUN/calibration.json`` describes how the run's model answers, beside ``model.keras``::

    {"format": 1, "temperature": T or null, "kind": "softmax" | "sigmoid", "stage": "train",
     "fitted_on": {"part": "validation", "images": n},
     "validation": {"temperature", "ece_before", "ece_after", "nll_before", ..., "brier_after"},
     "test": {... the same on the test part, when the run has one},
     "reject_below": {"threshold": P, "target_accuracy": A, "validation": {...}} or absent}

The temperature is fitted at the end of every training stage (``--calibrate``, the default)
and again by ``kcnn calibrate --run RUN``; ``evaluate`` applies it, ``export`` bakes it into
every exported format and records it in ``kcnn.json``.  A multi-label run's record says
``"multi_label": true``: one temperature divides every label's logit, fitted on the binary
cross-entropy over all labels, and its numbers score every (image, label) pair as one yes/no
decision (:func:`keras_cnn.metrics.multi_label_calibration_block`); the labels' thresholds
(:mod:`keras_cnn.thresholds`) are chosen after it, on the calibrated probabilities, so
``kcnn calibrate`` chooses them again.  ``reject_below`` is chosen by
``kcnn evaluate --target-accuracy A`` on calibrated probabilities; a new temperature makes it
stale, so fitting one removes it.  Everything here works from the logits of
:class:`keras_cnn.models.opened.OpenedModel` (one pass gives the model's own output too).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from keras_cnn.calibration import (SIGMOID, apply_temperature, class_probabilities, fit_temperature, head_kind,
                                   single_label_targets)
from keras_cnn.errors import RunFailure, UserError
from keras_cnn.io import atomic_write_json, read_json
from keras_cnn.metrics import (binary_cross_entropy, calibration_block, compute_multi_label_metrics,
                               multi_label_calibration_block)
from keras_cnn.progress import ProgressBar, say, warn
from keras_cnn.runs import RunDirectory, RunLock, RunState
from keras_cnn.thresholds import default_record, thresholds_in_order, thresholds_record, write_thresholds

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

    def fit_targets(self) -> np.ndarray:
        """What :func:`keras_cnn.calibration.fit_temperature` takes as the truth."""
        return single_label_targets(self.true_indices, self.kind)

    def scores(self, before: np.ndarray, after: np.ndarray, temperature: float | None) -> dict[str, Any]:
        """ECE, NLL and Brier of the probabilities ``before`` and ``after`` the temperature."""
        return calibration_block(before, after, self.true_indices, temperature)


@dataclass
class LabelPredictions:
    """One pass of a multi-label model over a part: its own outputs, its logits (one per label) and the
    0/1 targets, in order."""

    outputs: np.ndarray        # (n, labels): the model's sigmoid outputs
    logits: np.ndarray         # (n, labels), float64
    targets: np.ndarray        # (n, labels) 0/1
    kind: str = SIGMOID

    def probabilities(self, temperature: float | None) -> np.ndarray:
        """(n, labels) probabilities at ``temperature`` (None: the model's own)."""
        return apply_temperature(self.logits, temperature, SIGMOID)

    def fit_targets(self) -> np.ndarray:
        return self.targets

    def scores(self, before: np.ndarray, after: np.ndarray, temperature: float | None) -> dict[str, Any]:
        return multi_label_calibration_block(before, after, self.targets, temperature)

    def loss(self) -> float:
        """The model's own binary cross-entropy (as ``val_loss``)."""
        return binary_cross_entropy(self.outputs, self.targets)


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


def predict_part(opened, dataset, truth: Any = None, title: str | None = None,
                 multi_label: bool = False) -> PartPredictions | LabelPredictions:
    """Run the opened model over ``dataset`` (batches of images, or of (images, targets)) once.

    ``truth``: the part's classes (multi-label: its 0/1 targets) when the dataset gives images
    only.  ``multi_label``: the targets are 0/1 rows, one per label (:class:`LabelPredictions`).
    """
    outputs, logits, batches = [], [], []
    # Without a title (the end of a training stage) nothing is shown.
    count = len(truth) if (title and truth is not None) else 0
    with ProgressBar(count, title or "") as progress:
        seen = 0
        for batch in dataset:
            images = batch
            if isinstance(batch, (tuple, list)):
                images, targets = batch[0], batch[1]
                batches.append(np.asarray(targets, dtype=np.float64) if multi_label else _class_indices(targets))
            batch_outputs, batch_logits = batch_outputs_and_logits(opened, images)
            outputs.append(batch_outputs)
            logits.append(batch_logits)
            seen += len(batch_outputs)
            progress.update(seen)
    if not outputs:
        raise RunFailure("the part gave no images")
    outputs_array = np.concatenate(outputs)
    if batches:
        truth_array = np.concatenate(batches)
    else:
        truth_array = np.asarray(truth, dtype=np.float64 if multi_label else np.int64)
        truth_array = truth_array if multi_label else truth_array.reshape(-1)
    if len(truth_array) != len(outputs_array):
        raise RunFailure(f"the data gave {len(outputs_array)} images but the split lists {len(truth_array)}")
    if multi_label:
        return LabelPredictions(outputs_array, np.concatenate(logits), truth_array.reshape(outputs_array.shape))
    return PartPredictions(outputs_array, np.concatenate(logits), truth_array,
                           head_kind(opened.activation, outputs_array.shape[1]))


def check_finite(predictions: Predictions, part: str, advice: str) -> None:
    """Stop with one line when the model's outputs on ``part`` are not finite numbers (its weights overflowed).

    A loss can stay finite while the logits behind it are infinite; no probability, metric
    or temperature can be had from them.  ``advice``: what to do about it.
    """
    if not (np.isfinite(predictions.logits).all() and np.isfinite(predictions.outputs).all()):
        raise RunFailure(f"the model's outputs on the {part} part are not finite numbers (its weights overflowed); "
                         f"{advice}")


Predictions = PartPredictions | LabelPredictions


def fit_record(validation: Predictions, test: Predictions | None, stage: str | None) -> dict[str, Any]:
    """Fit the temperature on ``validation``; the calibration record (see the module docstring)."""
    fit = fit_temperature(validation.logits, validation.fit_targets(), validation.kind)
    record: dict[str, Any] = {"format": CALIBRATION_FORMAT, "temperature": fit.temperature, "kind": validation.kind,
                              "stage": stage, "fitted_on": {"part": "validation", "images": fit.count},
                              "validation": part_block(validation, fit.temperature)}
    if isinstance(validation, LabelPredictions):
        record["multi_label"] = True
    if test is not None:
        record["test"] = part_block(test, fit.temperature)
    if fit.at_bound:
        record["note"] = (f"the temperature reached the end of its range ({fit.temperature:.3g}): the "
                          f"{fit.count} validation images have too few mistakes (or too many) to fit it well")
    return record


def part_block(predictions: Predictions, temperature: float | None) -> dict[str, Any]:
    """``"calibration"`` of ``metrics.json`` for one part: ECE, NLL and Brier before and after ``temperature``."""
    own = predictions.probabilities(None)
    if temperature is None:
        block = predictions.scores(own, own, None)
        return {**{key: (None if key.endswith("_after") else value) for key, value in block.items()},
                "note": "not calibrated (kcnn calibrate --run RUN fits a temperature)"}
    return predictions.scores(own, predictions.probabilities(temperature), temperature)


def multi_label_answers(validation: LabelPredictions | None, test: LabelPredictions | None, labels: list[str],
                        stage: str | None, calibrate: bool = True) -> dict[str, Any]:
    """How a multi-label run answers, in order: the temperature fitted on ``validation`` (when
    ``calibrate``), each label's threshold chosen on the calibrated validation probabilities,
    and the test part scored at both.

    Returns ``{"calibration": record or None, "thresholds": RUN/thresholds.json's record,
    "test": metrics or None}``; without a validation part nothing is fitted and every
    threshold is 0.5.  The test ``loss`` is the model's own binary cross-entropy (as ``val_loss``).
    """
    calibration = fit_record(validation, test, stage) if calibrate and validation is not None else None
    temperature = calibration["temperature"] if calibration else None
    if validation is not None:
        thresholds = thresholds_record(validation.targets, validation.probabilities(temperature), labels, stage,
                                       temperature=temperature)
    else:
        thresholds = default_record(labels, stage)
    scored = None
    if test is not None:
        scored = compute_multi_label_metrics(test.targets, test.probabilities(temperature), labels,
                                             thresholds_in_order(thresholds["thresholds"], labels, "the thresholds"),
                                             loss=test.loss())
    return {"calibration": calibration, "thresholds": thresholds, "test": scored}


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
    with a line saying so) and returns the record, plus ``run``.  A multi-label run's labels'
    thresholds depend on the temperature: they are chosen again on the calibrated validation
    probabilities (``RUN/thresholds.json``, and ``thresholds`` in the result) and metrics.json's
    numbers of the run's last stage follow.  A run without a validation part is refused, and
    so is one whose last stage has not finished (its resumed stage fits its own temperature
    when it ends).  As ``kcnn evaluate``, under the run's lock, the run's labels and inputs
    are checked first (changed images refused unless ``accept_input_changes``), and a TF Hub
    base loads only with ``trust_hub``.
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
        labels = run_labels(run, config)
        check_run_inputs(run, config, accept=accept_input_changes, command="kcnn calibrate")
        try:
            validation_part = load_part(run, config, "validation", batch_size)
        except EmptyPart:
            raise UserError(f"{run.root} has no validation part to fit a temperature on") from None
        trusted = hub_base_of(config.model.name) if trust_hub else None
        opened = open_model(load_model(run.model_path, trust_hub=trusted))
        multi_label = validation_part.multi_label
        validation = predict_part(opened, validation_part.images(), validation_part.targets,
                                  f"predicting {len(validation_part.targets)} validation images", multi_label)
        check_finite(validation, "validation", "no temperature fits them: train the run again with a lower "
                                               "--learning-rate")
        test = None
        try:
            test_part = load_part(run, config, "test", batch_size)
            test = predict_part(opened, test_part.images(), test_part.targets,
                                f"predicting {len(test_part.targets)} test images", multi_label)
        except EmptyPart:
            pass
        previous = read_calibration(run)
        stages = list(run.read_metrics().get("stages") or {})
        stage = stages[-1] if stages else previous.get("stage")
        answers = multi_label_answers(validation, test, labels, stage) if multi_label else None
        record = answers["calibration"] if answers else fit_record(validation, test, stage)
        if previous.get("reject_below"):
            warn(f"the threshold {previous['reject_below']['threshold']:.4g} chosen for the old temperature no "
                 "longer applies; kcnn evaluate --target-accuracy A chooses one again")
        write_calibration(run, record)
        if answers:
            # After the temperature they were chosen for: a stop in between leaves the old thresholds,
            # whose record names the temperature they belong to.
            _store_multi_label_answers(run, stage, answers)
            return {"run": str(run.root), **record, "thresholds": answers["thresholds"]["thresholds"]}
    return {"run": str(run.root), **record}


def _store_multi_label_answers(run: RunDirectory, stage: str | None, answers: dict[str, Any]) -> None:
    """The thresholds chosen again for a new temperature into RUN/thresholds.json, and into metrics.json
    (the stage's thresholds, calibration and test numbers, so they describe how the run answers now)."""
    write_thresholds(run, answers["thresholds"])
    say(f"{run.root}: each label's threshold was chosen again on the calibrated validation probabilities "
        f"(written to {run.thresholds_path.name})")
    metrics = run.read_metrics()
    entry = (metrics.get("stages") or {}).get(stage)
    if entry is None:
        return
    entry.update(thresholds=answers["thresholds"], calibration=answers["calibration"])
    if answers["test"] is not None:
        entry["test"] = metrics["test"] = answers["test"]
    run.write_metrics(metrics)


def describe_calibration(summary: dict[str, Any] | None) -> str:
    """One line about a stage's or a run's calibration (:func:`summary_of`)."""
    if not summary:
        return "not calibrated"
    line = (f"calibrated on {summary['fitted_on']['images']} validation images: temperature "
            f"{summary['temperature']:.3g}; {summary['part']} ECE {summary['ece_before']:.4f} -> "
            f"{summary['ece_after']:.4f}, NLL {summary['nll_before']:.4f} -> {summary['nll_after']:.4f}")
    return f"{line} ({summary['note']})" if summary.get("note") else line
