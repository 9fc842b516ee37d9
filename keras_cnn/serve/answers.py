"""What kcnn's own endpoint and page say about a model and about each image.

Each image's answer is ``kcnn predict``'s record (``label``, ``class_index``,
``probability``, ``probabilities`` in ``labels.txt`` order, ``top_k``) with ``file`` (the
uploaded name) in place of ``path``.  What an export adds beyond that shows up as optional
fields, each computed by one entry of :data:`ANSWER_EXTRAS` and absent when the export does
not carry what it needs:

``rejected``, ``reject_below``
    when ``kcnn.json`` has ``"reject_below": P``: ``rejected`` is true when the top
    probability is below P (the label stays the top label; a page shows "unknown").
``above_threshold``
    when ``kcnn.json`` has ``"thresholds": {label: t}`` (multi-label exports): every label
    whose probability is at least its threshold, as ``{"label", "probability", "threshold"}``.
``heatmap``
    when the signature used returns a ``heatmap`` output ([batch, height, width], 0..1,
    e.g. a ``serving_explain`` signature, which the endpoint then prefers over
    ``serving_default``): ``{"png": base64 PNG of the coloured map, "peak": [y, x]}``, the
    peak in relative coordinates (0..1 from the top-left corner).

:func:`model_description` lists, the same way, ``calibration``, ``reject_below``,
``thresholds`` and ``multi_label`` from ``kcnn.json`` when present.
"""

from __future__ import annotations

import base64
import io
from typing import Any, Callable

import numpy as np
from PIL import Image

from keras_cnn.export_layout import EXPLAIN_SIGNATURE
from keras_cnn.predict import labels_above_threshold, prediction_records, rejection
from keras_cnn.serve.models import DEFAULT_SIGNATURE, ModelRepository, ServedVersion

IMAGE_INPUT = "image_bytes"
# kcnn.json fields the page shows when an export has them (absent in exports that predate them).
OPTIONAL_METADATA = ("calibration", "temperature", "reject_below", "thresholds", "multi_label")


def answer_signature(version: ServedVersion, requested: str | None = None) -> str:
    """The signature kcnn's endpoint uses: the one asked for, else ``serving_explain`` when the export has it."""
    if requested:
        return requested
    return EXPLAIN_SIGNATURE if EXPLAIN_SIGNATURE in version.signatures else DEFAULT_SIGNATURE


def image_answers(version: ServedVersion, names: list[str], outputs: dict[str, np.ndarray],
                  top_k: int) -> list[dict[str, Any]]:
    """One answer per row of ``outputs`` (see the module docstring)."""
    top_k = min(top_k, len(version.model.labels)) if version.model.labels else top_k
    answers = []
    for row, record in enumerate(prediction_records(version.model, names, outputs, top_k)):
        answer = {"file": record.pop("path"), **record}
        for extra in ANSWER_EXTRAS:
            extra(version, outputs, row, answer)
        answers.append(answer)
    return answers


def add_rejection(version: ServedVersion, outputs: dict[str, np.ndarray], row: int, answer: dict[str, Any]) -> None:
    threshold = version.model.metadata.get("reject_below")
    if threshold is None or "rejected" in answer:
        return
    answer.update(rejection(answer["probability"], float(threshold)))


def add_labels_above_threshold(version: ServedVersion, outputs: dict[str, np.ndarray], row: int,
                               answer: dict[str, Any]) -> None:
    thresholds = version.model.thresholds
    if thresholds is None or "above_threshold" in answer:
        return
    answer["above_threshold"] = labels_above_threshold(version.model.labels, answer["probabilities"], thresholds)


def add_heatmap(version: ServedVersion, outputs: dict[str, np.ndarray], row: int, answer: dict[str, Any]) -> None:
    if "heatmap" not in outputs or "heatmap" in answer:
        return
    heatmap = np.asarray(outputs["heatmap"][row], dtype=np.float32)
    if heatmap.ndim == 3:          # [height, width, 1]
        heatmap = heatmap[..., 0]
    height, width = heatmap.shape
    peak_y, peak_x = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    answer["heatmap"] = {"png": heatmap_png(heatmap),
                         "peak": [(peak_y + 0.5) / height, (peak_x + 0.5) / width]}


def heatmap_png(heatmap: np.ndarray) -> str:
    """A heat map (0..1) as a base64 PNG, coloured blue (0) -> red (1), transparent where it is near 0."""
    values = np.clip(np.nan_to_num(heatmap), 0.0, 1.0)
    red = np.clip(2.0 * values, 0, 1)
    blue = np.clip(2.0 * (1.0 - values), 0, 1)
    green = 1.0 - np.abs(2.0 * values - 1.0)
    alpha = np.clip(values * 1.5, 0, 1)
    pixels = (np.stack([red, green, blue, alpha], axis=-1) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGBA").save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# Each entry adds its optional fields to an answer when the export carries what it needs.
ANSWER_EXTRAS: tuple[Callable[[ServedVersion, dict[str, np.ndarray], int, dict[str, Any]], None], ...] = (
    add_rejection, add_labels_above_threshold, add_heatmap)


def model_description(repository: ModelRepository, version: ServedVersion) -> dict[str, Any]:
    """What the page shows about a model: name, versions, labels, input, metrics and the optional fields."""
    metadata = version.model.metadata
    description = {
        "name": repository.name,
        "version": version.number,
        "versions": sorted(repository.versions, reverse=True),
        "labels": list(version.model.labels),
        "signatures": sorted(version.signatures),
        "answer_signature": answer_signature(version),
        "input": metadata.get("input"),
        "base": metadata.get("base"),
        "exported_at": metadata.get("exported_at"),
        "metrics": _scalar_metrics(metadata.get("metrics") or {}),
        "explain": EXPLAIN_SIGNATURE in version.signatures,
    }
    description.update({key: metadata[key] for key in OPTIONAL_METADATA if metadata.get(key) is not None})
    return description


def _scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The numbers among a run's metrics, one level of nesting spelled out (``test accuracy``,
    ``parameters total_params``); per-class tables and the per-stage history are for the report."""
    shown = {}
    for name, value in metrics.items():
        if _is_number(value):
            shown[name] = value
        elif isinstance(value, dict) and name != "stages":
            shown.update({f"{name} {inner}": number for inner, number in value.items() if _is_number(number)})
    return shown


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
