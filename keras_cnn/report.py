"""Pictures and the HTML page of an evaluation.

Every picture is drawn with matplotlib's "Agg" backend (no display needed) and written
atomically. :func:`write_html_report` embeds the pictures as base64 ``data:`` URIs, so
``report.html`` is one file that can be mailed or archived; every piece of text on it
goes through :func:`html.escape`.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from keras_cnn.data.split import SMALL_PART_ROWS
from keras_cnn.io import atomic_path, atomic_write_text, to_jsonable
from keras_cnn.messages import summarize_items

TICK_LABEL_CHARACTERS = 24      # longer class names are shortened on the axes (the page's tables have them whole)
ANNOTATE_CELLS_UP_TO = 20       # beyond this many classes the cell numbers become unreadable
CAPTION_CHARACTERS = 30         # a mistake's file name is wrapped at this width ...
CAPTION_LINES = 3               # ... onto at most this many lines (the page's table has it whole)
LOSS_HEADROOM = 1.08            # the loss axis runs from 0 to this times the highest loss shown


def _pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (chosen before pyplot loads)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def _save(figure, output_png: str | os.PathLike) -> Path:
    pyplot = _pyplot()
    try:
        with atomic_path(output_png) as temporary:
            figure.savefig(temporary, format="png", dpi=100, bbox_inches="tight")
    finally:
        pyplot.close(figure)
    return Path(output_png)


def _short(text: str, limit: int = TICK_LABEL_CHARACTERS) -> str:
    """``text`` cut to ``limit`` characters in the middle: names often differ only at the end."""
    text = str(text)
    if len(text) <= limit:
        return text
    head = (limit - 1) // 2 + (limit - 1) % 2
    return text[:head] + "…" + text[len(text) - (limit - 1 - head):]


def _plain_numbers(axis) -> None:
    """Tick labels that say the value: no "+1.098" offset above the axis, no scientific notation.

    An offset turns differences in the fourth decimal into a curve that fills the plot.
    """
    axis.ticklabel_format(axis="y", useOffset=False, style="plain")


def _tick_spacing(axis, which: str) -> float:
    """The smallest distance in pixels between neighbouring ticks of ``axis``'s x or y axis."""
    ticks = axis.get_xticks() if which == "x" else axis.get_yticks()
    points = [(tick, 0) if which == "x" else (0, tick) for tick in ticks]
    positions = np.sort(axis.transData.transform(points)[:, 0 if which == "x" else 1])
    return float(np.min(np.diff(positions))) if len(positions) > 1 else math.inf


def _fit_tick_labels(figure, axis, room: float = 1.2) -> None:
    """Keep the class names on ``axis`` apart: upright when they fit, else slanted by 45 degrees,
    else vertical, and smaller only when even vertical ones would touch (many classes).

    Measured, not drawn: neighbouring upright labels fit when half their widths add up to
    less than the distance between their ticks; slanted ones are parallel strips
    ``spacing x sin(45)`` apart, which fit when that exceeds the text's height (with ``room``).
    """
    renderer = figure.canvas.get_renderer()
    labels = axis.get_xticklabels()
    if len(labels) > 1:
        boxes = [label.get_window_extent(renderer) for label in labels]
        spacing = _tick_spacing(axis, "x")
        widths = [box.width for box in boxes]
        if any((left + right) / 2 * room > spacing for left, right in zip(widths, widths[1:])):
            height = max(box.height for box in boxes)
            slanted = spacing * math.sin(math.radians(45)) >= room * height
            for label in labels:
                label.set(rotation=45 if slanted else 90, ha="right" if slanted else "center",
                          va="top", rotation_mode="anchor" if slanted else "default")
    for which, labels in (("x", axis.get_xticklabels()), ("y", axis.get_yticklabels())):
        if not labels:
            continue
        size = labels[0].get_fontsize()
        spacing = _tick_spacing(axis, which)
        # A vertical or a horizontal label is as thick as its font is high.
        thickness = size * figure.dpi / 72 * 1.2
        if spacing < room * thickness:
            for label in labels:
                label.set_fontsize(max(4.0, size * spacing / (room * thickness)))


# --------------------------------------------------------------------------- training history


def _history_frame(history_csv_or_rows: Any):
    import pandas as pd

    if isinstance(history_csv_or_rows, pd.DataFrame):
        return history_csv_or_rows.reset_index(drop=True)
    if isinstance(history_csv_or_rows, (str, os.PathLike)):
        path = Path(history_csv_or_rows)
        if not path.exists() or path.stat().st_size == 0:
            return pd.DataFrame()
        return pd.read_csv(path)
    return pd.DataFrame(list(history_csv_or_rows))


def _stage_boundaries(stages: Sequence[str]) -> list[tuple[int, str]]:
    """(row index where a new stage starts, its name) for every change of stage."""
    return [(index, str(stages[index])) for index in range(1, len(stages))
            if stages[index] != stages[index - 1]]


def _stage_spans(stages: Sequence[str]) -> list[tuple[int, int, str]]:
    """(first epoch, last epoch, name) of each stage, epochs numbered 1..n."""
    starts = [0] + [index for index, _ in _stage_boundaries(stages)]
    ends = starts[1:] + [len(stages)]
    return [(start + 1, end, str(stages[start])) for start, end in zip(starts, ends)]


def training_history_figure(history_csv_or_rows: Any):
    """The figure of :func:`plot_training_history` (not saved; the caller closes it)."""
    pyplot = _pyplot()
    frame = _history_frame(history_csv_or_rows)
    figure, axes = pyplot.subplots(1, 2, figsize=(11, 4.3))
    if frame.empty:
        for axis in axes:
            axis.axis("off")
        axes[0].text(0.5, 0.5, "no epochs recorded", ha="center", va="center", fontsize=14)
        return figure

    epochs = np.arange(1, len(frame) + 1)
    stages = frame["stage"].astype(str).tolist() if "stage" in frame.columns else [""] * len(frame)
    spans = _stage_spans(stages) if _stage_boundaries(stages) else []
    handles = {}
    for axis, metric, title in ((axes[0], "loss", "Loss"), (axes[1], "accuracy", "Accuracy")):
        shown = []
        for column, name, style in ((metric, "train", "o-"), (f"val_{metric}", "validation", "s--")):
            if column in frame.columns and frame[column].notna().any():
                values = frame[column].astype(float)
                (handles[name],) = axis.plot(epochs, values, style, label=name, markersize=4)
                shown.append(values)
        if not shown:
            axis.text(0.5, 0.5, f"no {metric} recorded", ha="center", va="center", transform=axis.transAxes)
        # Honest scales: accuracy from 0 to 1, the loss from 0, so a loss that does not move looks flat.
        if metric == "accuracy":
            axis.set_ylim(0, 1.02)
        elif shown:
            highest = max(float(np.nanmax(values)) for values in shown)
            lowest = min(0.0, min(float(np.nanmin(values)) for values in shown))
            if math.isfinite(highest) and highest > lowest:
                axis.set_ylim(lowest, highest * LOSS_HEADROOM)
        _plain_numbers(axis)
        if spans:
            for first, _, _ in spans[1:]:
                axis.axvline(first - 0.5, color="grey", linestyle=":", linewidth=1.2)
            # The stages are named above the plot, where no curve can run into the names.
            stage_axis = axis.secondary_xaxis("top")
            stage_axis.set_xticks([(first + last) / 2 for first, last, _ in spans],
                                  [name for _, _, name in spans], fontsize=9, color="dimgrey")
            stage_axis.tick_params(length=0)
        axis.set_title(title)
        axis.set_xlabel("epoch (all stages)" if spans else "epoch")
        axis.set_ylabel(metric)
        axis.grid(True, alpha=0.3)
        # Whole epochs only on the x axis.
        axis.xaxis.get_major_locator().set_params(integer=True)
    figure.tight_layout(rect=(0, 0.07, 1, 1))
    if handles:
        # One legend for both panels, below them: never over a curve.
        figure.legend(list(handles.values()), list(handles), loc="lower center", ncol=len(handles), frameon=False)
    return figure


def plot_training_history(history_csv_or_rows: Any, output_png: str | os.PathLike) -> Path:
    """Loss and accuracy per epoch (train and validation) across every training stage.

    ``history_csv_or_rows``: the path of ``history.csv``, a pandas DataFrame, or a list of
    row dicts with the columns stage, epoch, loss, accuracy, val_loss, val_accuracy (any
    of them may be missing). Epochs are numbered 1..n across stages; a dotted vertical
    line marks where the ``stage`` column changes (e.g. head training → fine-tuning) and
    the stages are named above the plot.  Accuracy is drawn on 0..1 and the loss from 0,
    with plain tick labels (no offset), so noise does not look like a trend.
    """
    return _save(training_history_figure(history_csv_or_rows), output_png)


# --------------------------------------------------------------------------- learning-rate range test


def learning_rate_sweep_figure(learning_rates: Sequence[float], losses: Sequence[float],
                               smoothed: Sequence[float], suggestions: Mapping[str, float],
                               no_suggestion: bool = False):
    """The figure of :func:`plot_learning_rate_sweep` (not saved; the caller closes it)."""
    pyplot = _pyplot()
    figure, axis = pyplot.subplots(figsize=(7, 4.5))
    axis.plot(learning_rates, losses, color="lightgrey", linewidth=1, label="loss (per batch)")
    axis.plot(learning_rates, smoothed, color="tab:blue", linewidth=2, label="loss (smoothed)")
    curve = dict(zip(learning_rates, smoothed))
    for (name, rate), marker in zip(suggestions.items(), ("o", "s", "^", "D")):
        nearest = min(curve, key=lambda value: abs(math.log(value) - math.log(rate)))
        axis.plot([rate], [curve[nearest]], marker, markersize=9, label=f"{name}: {rate:.2e}")
    finite = [value for value in smoothed if math.isfinite(value)]
    if finite:
        # The blow-up at the end would squash the interesting part of the curve; a curve that
        # hardly moves keeps a span of a tenth of its level, so it looks as flat as it is.
        low, first = min(finite), finite[0]
        top = max(first, low) + 0.5 * abs(first - low)
        bottom = low - 0.1 * abs(first - low)
        room = 0.1 * max(abs(first), abs(low), 1e-6) - (top - bottom)
        if room > 0:
            bottom, top = bottom - room / 2, top + room / 2
        axis.set_ylim(bottom, top)
    _plain_numbers(axis)
    axis.set_xscale("log")
    axis.set_xlabel("learning rate")
    axis.set_ylabel("training loss")
    axis.set_title("Learning-rate range test" + (": no rate suggested" if no_suggestion else ""))
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(loc="best")
    figure.tight_layout()
    return figure


def plot_learning_rate_sweep(learning_rates: Sequence[float], losses: Sequence[float],
                             smoothed: Sequence[float], suggestions: Mapping[str, float],
                             output_png: str | os.PathLike, no_suggestion: bool = False) -> Path:
    """Loss against learning rate (log axis) from ``kcnn lr-find``, with the suggested rates marked.

    The raw per-batch loss is drawn faintly behind the smoothed curve the suggestions are
    read from; ``no_suggestion`` says in the title that the curve supported none.
    """
    return _save(learning_rate_sweep_figure(learning_rates, losses, smoothed, suggestions, no_suggestion),
                 output_png)


# --------------------------------------------------------------------------- confusion matrix


def row_normalised(matrix: Any) -> np.ndarray:
    """Each row divided by its sum (a row with no samples stays 0)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    totals = matrix.sum(axis=1, keepdims=True)
    result = np.zeros_like(matrix)
    np.divide(matrix, totals, out=result, where=totals != 0)
    return result


def confusion_matrix_figure(matrix: Any, labels: Sequence[str]):
    """The figure of :func:`plot_confusion_matrix` (not saved; the caller closes it)."""
    from matplotlib.ticker import MaxNLocator

    pyplot = _pyplot()
    matrix = np.asarray(matrix, dtype=np.int64)
    labels = [str(label) for label in labels]
    size = len(labels)
    if matrix.shape != (size, size):
        raise ValueError(f"matrix must be {size}x{size} for {size} labels, received shape {matrix.shape}")
    side = min(max(4.5, 0.5 * size + 2.5), 16)
    figure, axes = pyplot.subplots(1, 2, figsize=(2 * side + 1, side))
    fractions = row_normalised(matrix)
    font_size = max(5, 12 - size // 3)
    tick_labels = [_short(label) for label in labels]
    panels = (
        (axes[0], matrix, "Counts", lambda value: f"{int(value)}", max(1, int(matrix.max(initial=0)))),
        (axes[1], fractions, "Row-normalised (recall on the diagonal)", lambda value: f"{value:.2f}", 1.0),
    )
    for axis, values, title, formatter, maximum in panels:
        shown = axis.imshow(values, cmap="Blues", vmin=0, vmax=maximum, interpolation="nearest")
        colour_bar = figure.colorbar(shown, ax=axis, fraction=0.046, pad=0.04)
        if values is matrix:
            colour_bar.locator = MaxNLocator(integer=True)   # counts: no 0.5 steps
            colour_bar.update_ticks()
        axis.set_title(title)
        axis.set_xlabel("predicted label")
        axis.set_ylabel("true label")
        axis.set_xticks(range(size), tick_labels)
        axis.set_yticks(range(size), tick_labels)
        if size <= ANNOTATE_CELLS_UP_TO:
            threshold = maximum / 2.0
            for row in range(size):
                for column in range(size):
                    value = values[row, column]
                    axis.text(column, row, formatter(value), ha="center", va="center", fontsize=font_size,
                              color="white" if value > threshold else "black")
    figure.tight_layout()
    for axis in axes:
        _fit_tick_labels(figure, axis)
    figure.tight_layout()
    return figure


def plot_confusion_matrix(matrix: Any, labels: Sequence[str], output_png: str | os.PathLike) -> Path:
    """Two heat maps: counts and row-normalised fractions (row = true label, column = predicted).

    Tick labels are slanted (and, with many classes, made smaller) when they would run
    into each other; the colour bar of the counts has whole numbers only.
    """
    return _save(confusion_matrix_figure(matrix, labels), output_png)


# --------------------------------------------------------------------------- misclassified images


def _displayable(image: Any) -> tuple[np.ndarray, str | None]:
    """uint8 image for imshow and the colour map it needs (grey images use "gray")."""
    image = np.asarray(image)
    image = np.clip(np.round(image.astype(np.float64)), 0, 255).astype(np.uint8)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    return image, ("gray" if image.ndim == 2 else None)


def wrap_caption(text: str, width: int = CAPTION_CHARACTERS, lines: int = CAPTION_LINES) -> str:
    """``text`` (a file name or path) on up to ``lines`` lines of ``width`` characters, broken
    after a ``/``, a space, ``_`` or ``-`` where it can be, anywhere in a longer run; only what
    still does not fit is cut, in the middle."""
    pieces = [""]
    for token in re.split(r"(?<=[/ _-])", str(text)):
        if pieces[-1] and len(pieces[-1]) + len(token) > width:
            pieces.append("")
        pieces[-1] += token
        while len(pieces[-1]) > width:   # a run longer than a line is cut where the line ends
            pieces[-1:] = [pieces[-1][:width], pieces[-1][width:]]
    pieces = [piece.rstrip() for piece in pieces if piece.strip()]
    if len(pieces) > lines:
        pieces = pieces[:lines - 1] + [_short("".join(pieces[lines - 1:]), width)]
    return "\n".join(pieces)


def mistake_indices(true_indices: Sequence[int], predicted_indices: Sequence[int], confidences: Sequence[float],
                    max_images: int) -> list[int]:
    """Positions of the mistakes, most confident first, at most ``max_images``: the tiles in order."""
    mistakes = [index for index in range(len(true_indices))
                if int(true_indices[index]) != int(predicted_indices[index])]
    mistakes.sort(key=lambda index: -float(confidences[index]))
    return mistakes[:max_images]


def misclassified_figure(images: Sequence[Any], true_indices: Sequence[int], predicted_indices: Sequence[int],
                         confidences: Sequence[float], labels: Sequence[str], max_images: int = 25,
                         object_ids: Sequence[str] | None = None, heatmaps: Sequence[Any] | None = None):
    """The figure of :func:`plot_misclassified` (not saved; the caller closes it)."""
    pyplot = _pyplot()
    labels = [str(label) for label in labels]
    mistakes = mistake_indices(true_indices, predicted_indices, confidences, max_images)
    if not mistakes:
        figure, axis = pyplot.subplots(figsize=(5, 2))
        axis.axis("off")
        axis.text(0.5, 0.5, "No misclassified images", ha="center", va="center", fontsize=14)
        return figure

    columns = min(5, math.ceil(math.sqrt(len(mistakes))))
    rows = math.ceil(len(mistakes) / columns)
    caption_lines = 2 + (CAPTION_LINES if object_ids is not None else 0)
    figure, axes = pyplot.subplots(rows, columns, figsize=(2.8 * columns, (2.4 + 0.14 * caption_lines) * rows),
                                   squeeze=False, layout="constrained")
    for axis in axes.flat:
        axis.axis("off")
    for number, (axis, index) in enumerate(zip(axes.flat, mistakes), start=1):
        image, colour_map = _displayable(images[index])
        axis.imshow(image, cmap=colour_map, vmin=0, vmax=255, interpolation="nearest")
        if heatmaps is not None:
            height, width = image.shape[:2]
            axis.imshow(np.asarray(heatmaps[index], dtype=np.float64), cmap="jet", alpha=0.45, vmin=0, vmax=1,
                        extent=(-0.5, width - 0.5, height - 0.5, -0.5), interpolation="bilinear")
        caption = (
            f"true: {_short(labels[int(true_indices[index])])}\n"
            f"pred: {_short(labels[int(predicted_indices[index])])} ({float(confidences[index]):.2f})"
        )
        if object_ids is not None:
            caption = f"{number}. {wrap_caption(object_ids[index])}\n{caption}"
        axis.set_title(caption, fontsize=8, color="firebrick")
    title = "Most confident mistakes (confidence = predicted probability)"
    if heatmaps is not None:
        title += "; colour: where the model looked (Grad-CAM)"
    figure.suptitle(title, fontsize=11)
    return figure


def plot_misclassified(images: Sequence[Any], true_indices: Sequence[int], predicted_indices: Sequence[int],
                       confidences: Sequence[float], labels: Sequence[str], output_png: str | os.PathLike,
                       max_images: int = 25, object_ids: Sequence[str] | None = None,
                       heatmaps: Sequence[Any] | None = None) -> Path:
    """A grid of the most confident mistakes: each tile shows true and predicted label and confidence.

    ``images``: pixel arrays 0..255 (uint8 or float; grey (H, W) / (H, W, 1) or RGB), one
    per entry of the index lists; entries whose prediction is right are left out. With no
    mistakes the picture says so. ``object_ids`` (optional): each tile's file, numbered and
    wrapped whole above it (the report's table of mistakes uses the same numbers).
    ``heatmaps`` (optional, one 0..1 map per image, any size): drawn over each tile (where
    the model looked for the class it predicted).
    """
    return _save(misclassified_figure(images, true_indices, predicted_indices, confidences, labels, max_images,
                                      object_ids, heatmaps), output_png)


# --------------------------------------------------------------------------- calibration and selective answers


def _bins_ece(bins: Sequence[Mapping[str, float]]) -> float:
    total = sum(row["count"] for row in bins) or 1
    return sum(abs(row["accuracy"] - row["confidence"]) * row["count"] for row in bins) / total


def plot_reliability_diagram(before: Sequence[Mapping[str, float]], after: Sequence[Mapping[str, float]] | None,
                             output_png: str | os.PathLike, temperature: float | None = None) -> Path:
    """The reliability diagram: accuracy against confidence per bin, before and after the temperature.

    ``before`` / ``after``: the rows of :func:`keras_cnn.metrics.reliability_bins` (``after``
    None: the model is not calibrated, one panel).  A calibrated model's bars follow the
    diagonal; bars below it are overconfidence.
    """
    pyplot = _pyplot()
    panels = [("model's own probabilities", before)]
    if after is not None:
        panels.append((f"calibrated (temperature {temperature:.3g})", after))
    figure, axes = pyplot.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.4), squeeze=False)
    for axis, (title, bins) in zip(axes[0], panels):
        lower = [row["lower"] for row in bins]
        width = bins[0]["upper"] - bins[0]["lower"]
        used = [row["count"] > 0 for row in bins]
        axis.bar(lower, [row["accuracy"] if keep else 0 for row, keep in zip(bins, used)], width=width,
                 align="edge", color="#4a7bd0", edgecolor="white", label="accuracy")
        axis.bar(lower, [row["confidence"] - row["accuracy"] if keep else 0 for row, keep in zip(bins, used)],
                 bottom=[row["accuracy"] for row in bins], width=width, align="edge", color="#e8a0a0",
                 alpha=0.7, edgecolor="#c04040", label="gap to the mean confidence")
        axis.plot([0, 1], [0, 1], color="black", linestyle="--", linewidth=1)
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1)
        axis.set_xlabel("confidence (top-class probability)")
        axis.set_ylabel("accuracy")
        axis.set_title(f"{title}\nECE {_bins_ece(bins):.4f}", fontsize=10)
        axis.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    return _save(figure, output_png)


def plot_coverage_accuracy(curve: Mapping[str, Any], output_png: str | os.PathLike,
                           selection: Mapping[str, Any] | None = None) -> Path:
    """Accuracy of the answers given against the share of images answered, for every threshold.

    ``curve``: :func:`keras_cnn.metrics.coverage_accuracy_curve`; ``selection`` (optional):
    metrics.json's ``"selective"``, drawn as the target accuracy and the point at its threshold.
    """
    pyplot = _pyplot()
    figure, axis = pyplot.subplots(figsize=(6, 4.2))
    axis.plot(np.asarray(curve["coverage"]), np.asarray(curve["accuracy"]), color="#4a7bd0", linewidth=1.5)
    if selection and selection.get("target_accuracy") is not None:
        axis.axhline(selection["target_accuracy"], color="grey", linestyle="--", linewidth=1,
                     label=f"target accuracy {selection['target_accuracy']:g}")
    if selection and selection.get("threshold") is not None and selection.get("accuracy") is not None:
        axis.plot([selection["coverage"]], [selection["accuracy"]], "o", color="firebrick",
                  label=f"threshold {selection['threshold']:.3g}: coverage {selection['coverage']:.3f}, "
                        f"accuracy {selection['accuracy']:.3f}")
    axis.set_xlim(0, 1.02)
    axis.set_xlabel("coverage (share of images answered)")
    axis.set_ylabel("accuracy of the answered images")
    axis.set_title("Answering only above a confidence threshold", fontsize=11)
    if selection:
        axis.legend(loc="lower left", fontsize=8)
    figure.tight_layout()
    return _save(figure, output_png)


# --------------------------------------------------------------------------- HTML page

PAGE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; } td.name, th.name { text-align: left; }
td.diagonal { font-weight: bold; outline: 2px solid #4a7; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; font-size: 0.85em; }
figure { margin: 1em 0; } img { max-width: 100%; border: 1px solid #ddd; }
figcaption { color: #555; font-size: 0.9em; }
p.headline { font-size: 1.1em; }
div.notes { background: #fff6dd; border: 1px solid #e0b84a; padding: 0.2em 1em; margin: 1em 0; }
div.notes ul { padding-left: 1.2em; } div.notes li { margin: 0.3em 0; }
"""

SUMMARY_KEYS = (
    ("num_samples", "samples"), ("accuracy", "accuracy"), ("loss", "loss"),
    ("top_2_accuracy", "top-2 accuracy"), ("top_3_accuracy", "top-3 accuracy"),
    ("top_5_accuracy", "top-5 accuracy"),
    ("macro_precision", "macro precision"), ("macro_recall", "macro recall"), ("macro_f1", "macro F1"),
    ("weighted_precision", "weighted precision"), ("weighted_recall", "weighted recall"),
    ("weighted_f1", "weighted F1"), ("roc_auc", "ROC AUC"),
)


# Names in a note are cut to this, so that `kcnn evaluate` prints each note as one line of at most ~300 characters.
NOTE_NAME_CHARACTERS = 32


def reading_notes(metrics: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    """Why the numbers of an evaluation mean little, when they do; the first lines of its report.

    Said for: a transfer base with random weights (``--weights none``, as the demo has offline),
    accuracy within the noise of always answering the most common label, a model that answers
    one label for every image, a part too small for its accuracy to be precise, and labels
    with no images in the part.
    """
    notes = []
    subset = str(metrics.get("subset", "test"))
    model = config.get("model") or {}
    if model.get("kind") == "transfer" and str(model.get("weights")).lower() == "none":
        base = _short(model.get("name", "the base"), NOTE_NAME_CHARACTERS)
        finetune = ((config.get("extra") or {}).get("stages") or {}).get("finetune") or {}
        if str(finetune.get("unfreeze_from", "")).lower() == "all":
            notes.append(f"The base, {base}, started from random weights (--weights none), not ImageNet weights, "
                         "and every layer was trained from them: expect far lower accuracy than a pretrained base "
                         "gives on the same images.")
        else:
            notes.append(f"The base, {base}, has random weights (--weights none: no ImageNet weights at hand); its "
                         "frozen layers give the head almost nothing to learn from, so accuracy near chance is "
                         "expected, not a fault of the data or training. With ImageNet weights the same run learns.")
    labels = [str(label) for label in metrics.get("labels", [])]
    matrix = np.asarray(metrics.get("confusion_matrix") or [], dtype=np.int64)
    if matrix.ndim != 2 or matrix.size == 0 or len(labels) != len(matrix):
        return notes
    support, answered = matrix.sum(axis=1), matrix.sum(axis=0)
    total = int(support.sum())
    accuracy = float(metrics.get("accuracy", np.trace(matrix) / max(total, 1)))
    common = int(np.argmax(support))
    chance = float(support[common]) / max(total, 1)
    present = support[support > 0]
    if np.count_nonzero(answered) == 1 and len(labels) > 1:
        answer = _short(labels[int(np.argmax(answered))], NOTE_NAME_CHARACTERS)
        notes.append(f"Every {subset} image was predicted as '{answer}': the model "
                     f"answers one label whatever the image shows, which scores {accuracy:.3f} here.")
    # Within two standard deviations of what a constant answer scores on this many images.
    elif len(labels) > 1 and total and accuracy <= chance + 2 * math.sqrt(chance * (1 - chance) / total):
        answer = ("any one label" if present.min() == present.max()
                  else f"'{_short(labels[common], NOTE_NAME_CHARACTERS)}', the most common label,")
        notes.append(f"Accuracy {accuracy:.3f} is not clearly above chance: always answering {answer} scores "
                     f"{chance:.3f} on these {total} images.")
    if total and (present.min() < SMALL_PART_ROWS or total < 5 * SMALL_PART_ROWS):
        notes.append(f"The {subset} part is small: {total} images, {int(present.min())} of the rarest label. One "
                     f"image more or less right moves accuracy by {100 / total:.1f} points, so differences of a "
                     "few points mean nothing.")
    missing = [label for label, count in zip(labels, support) if count == 0]
    if missing:
        notes.append(f"No {subset} images of {summarize_items(_short(label, NOTE_NAME_CHARACTERS) for label in missing)}: "
                     "nothing here says how well "
                     f"{'it is' if len(missing) == 1 else 'they are'} recognised.")
    return notes


def _text(value: Any) -> str:
    """A value as escaped HTML text; floats with 4 decimals, None as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape(str(value))


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], name_columns: int = 1) -> str:
    """An HTML table; cells in ``rows`` must already be escaped HTML."""
    head = "".join(
        (f'<th class="name">{html.escape(cell)}</th>' if index < name_columns
         else f"<th>{html.escape(cell)}</th>")
        for index, cell in enumerate(header)
    )
    body = "".join(
        "<tr>" + "".join(
            f'<td class="name">{cell}</td>' if index < name_columns else f"<td>{cell}</td>"
            for index, cell in enumerate(row)
        ) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _confusion_table(matrix: Sequence[Sequence[int]], labels: Sequence[str]) -> str:
    fractions = row_normalised(matrix)
    head = '<th class="name">true \\ predicted</th>' + "".join(
        f"<th>{html.escape(label)}</th>" for label in labels
    )
    rows = []
    for row_index, (label, row) in enumerate(zip(labels, matrix)):
        cells = []
        for column_index, count in enumerate(row):
            # Shade by the row fraction so the pattern is visible without the picture.
            shade = int(round(255 - 120 * fractions[row_index][column_index]))
            css = ' class="diagonal"' if row_index == column_index else ""
            cells.append(f'<td{css} style="background: rgb({shade},{shade},255)">{int(count)}</td>')
        rows.append(f'<tr><th class="name">{html.escape(label)}</th>{"".join(cells)}</tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _picture_items(pictures: Mapping[str, Any] | Sequence[Any]) -> list[tuple[str, Path]]:
    if isinstance(pictures, Mapping):
        items = [(str(caption), Path(path)) for caption, path in pictures.items() if path is not None]
    else:
        items = [(Path(path).stem.replace("_", " "), Path(path)) for path in pictures if path is not None]
    return items


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _calibration_sections(metrics: Mapping[str, Any]) -> list[str]:
    """The calibration table (before and after the temperature) and the selective answers, when present."""
    sections = []
    calibration = metrics.get("calibration")
    if calibration:
        rows = [(html.escape(title), _text(calibration.get(f"{key}_before")), _text(calibration.get(f"{key}_after")))
                for key, title in (("ece", "expected calibration error (15 bins)"),
                                   ("nll", "negative log-likelihood"), ("brier", "Brier score"))]
        temperature = calibration.get("temperature")
        note = (f"Temperature {temperature:.4g}, fitted on the validation part; the probabilities of this report "
                "are the calibrated ones." if temperature is not None else calibration.get("note", ""))
        if calibration.get("scored_on"):   # multi-label: what the numbers are over
            note += f" Scored on {calibration['scored_on']}."
        sections += ["<h2>Calibration</h2>", _table(("metric", "model's own", "calibrated"), rows),
                     f"<p>{html.escape(note)}</p>"]
    selective = metrics.get("selective")
    if selective:
        if selective.get("threshold") is None:
            text = (f"No threshold reaches accuracy {selective.get('target_accuracy')} on the validation part.")
            sections += ["<h2>Answering only when confident</h2>", f"<p>{html.escape(text)}</p>"]
        else:
            rows = [(html.escape(title), _text(selective.get(key))) for key, title in (
                ("target_accuracy", "target accuracy (validation)"), ("threshold", "threshold (top probability)"),
                ("coverage", "coverage"), ("accuracy", "accuracy of the answered"), ("accepted", "answered"),
                ("num_samples", "images"))]
            sections += ["<h2>Answering only when confident</h2>", _table(("", "value"), rows),
                         "<p>Images whose top probability is below the threshold are answered as unknown "
                         "(kcnn predict, kcnn serve).</p>"]
    return sections


def write_html_report(run_dir: str | os.PathLike, metrics: Mapping[str, Any], config: Mapping[str, Any],
                      pictures: Mapping[str, Any] | Sequence[Any], output_html: str | os.PathLike,
                      links: Mapping[str, Any] | None = None,
                      mistakes: Sequence[Mapping[str, Any]] | None = None) -> Path:
    """Write one self-contained HTML page about an evaluated run and return its path.

    ``metrics``: the dict of :func:`keras_cnn.metrics.compute_metrics` (plus run/subset);
    ``config``: the run's config.json contents; ``pictures``: {caption: png path} or a list
    of png paths, embedded as base64 data URIs (missing files are left out); ``links``:
    optional {text: path} of files to link to (e.g. predictions.csv), written as paths
    relative to the page and only when the file exists; ``mistakes``: the tiles of the
    mistakes picture in order, as dicts with file, true, predicted and confidence, listed
    whole in a table.  The page opens with the headline numbers and, when there are any,
    :func:`reading_notes`: why the numbers mean little.
    """
    output_html = Path(output_html)
    run_name = Path(run_dir).resolve().name or str(run_dir)
    labels = [str(label) for label in metrics.get("labels", [])]
    subset = str(metrics.get("subset", "test"))
    sections = [f"<h1>kcnn evaluation: {html.escape(run_name)}</h1>"]
    if "accuracy" in metrics:
        sections.append(f'<p class="headline">Accuracy <b>{_text(metrics["accuracy"])}</b> on '
                        f'{_text(metrics.get("num_samples"))} {html.escape(subset)} images of {len(labels)} labels.</p>')
    notes = reading_notes(metrics, config)
    if notes:
        items = "".join(f"<li>{html.escape(note)}</li>" for note in notes)
        sections.append(f'<div class="notes"><p><b>Read this first</b></p><ul>{items}</ul></div>')
    sections.append("<p>Run directory: <code>{}</code>; part evaluated: <b>{}</b>.</p>".format(
        html.escape(str(run_dir)), html.escape(subset)))

    tta = metrics.get("tta")
    summary_keys = MULTI_LABEL_SUMMARY_KEYS if metrics.get("multi_label") else SUMMARY_KEYS
    if tta:
        # Plain and test-time-augmented predictions side by side.
        summary_rows = [(html.escape(title), _text(metrics[key]), _text(tta.get(key)))
                        for key, title in summary_keys if key in metrics]
        views = ", ".join(str(view) for view in tta.get("views", []))
        sections += ["<h2>Summary</h2>",
                     _table(("metric", "plain", f"TTA ({len(tta.get('views', []))} views)"), summary_rows),
                     f"<p>TTA views: {html.escape(views)}; probabilities averaged over the views.</p>"]
    else:
        summary_rows = [(html.escape(title), _text(metrics[key]))
                        for key, title in summary_keys if key in metrics]
        sections += ["<h2>Summary</h2>", _table(("metric", "value"), summary_rows)]

    sections += _calibration_sections(metrics)

    per_class = metrics.get("per_class", {})
    if per_class:
        rows = [
            (html.escape(label), _text(values.get("precision")), _text(values.get("recall")),
             _text(values.get("f1")), _text(values.get("support")), _text(values.get("accuracy")))
            for label, values in per_class.items()
        ]
        sections += ["<h2>Per class</h2>",
                     _table(("label", "precision", "recall", "F1", "support", "accuracy"), rows)]

    if metrics.get("confusion_matrix"):
        sections += [
            "<h2>Confusion matrix</h2>",
            "<p>Rows: true label; columns: predicted label (labels.txt order).</p>",
            _confusion_table(metrics["confusion_matrix"], labels),
        ]

    confused = metrics.get("most_confused", [])
    if metrics.get("multi_label"):
        sections += multi_label_sections(metrics)
    else:
        sections.append("<h2>Most confused pairs</h2>")
    if confused:
        rows = [(html.escape(str(pair["true"])), html.escape(str(pair["predicted"])), _text(pair["count"]))
                for pair in confused]
        sections.append(_table(("true", "predicted as", "count"), rows, name_columns=2))
    elif not metrics.get("multi_label"):
        sections.append("<p>No mistakes.</p>")

    figures = [
        f'<figure><img src="{_data_uri(path)}" alt="{html.escape(caption, quote=True)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for caption, path in _picture_items(pictures)
        if path.is_file()
    ]
    if figures:
        sections += ["<h2>Pictures</h2>", *figures]
    if mistakes:
        rows = [(str(number), html.escape(str(mistake["file"])), html.escape(str(mistake["true"])),
                 html.escape(str(mistake["predicted"])), _text(float(mistake["confidence"])))
                for number, mistake in enumerate(mistakes, start=1)]
        sections += ["<h2>Most confident mistakes</h2>",
                     "<p>The tiles of the picture above, by number, with their whole file names.</p>",
                     _table(("#", "file", "true", "predicted", "confidence"), rows, name_columns=4)]

    existing_links = []
    for text, path in (links or {}).items():
        if path is not None and Path(path).is_file():
            target = Path(os.path.relpath(Path(path).resolve(), output_html.resolve().parent)).as_posix()
            existing_links.append(
                f'<li><a href="{html.escape(target, quote=True)}">{html.escape(str(text))}</a></li>'
            )
    if existing_links:
        sections += ["<h2>Files</h2>", f"<ul>{''.join(existing_links)}</ul>"]

    config_text = json.dumps(to_jsonable(config), indent=2, sort_keys=True)
    sections += ["<h2>Run configuration</h2>", f"<pre>{html.escape(config_text)}</pre>"]

    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>kcnn evaluation: {html.escape(run_name)}</title><style>{PAGE_STYLE}</style></head>"
        f"<body>\n{chr(10).join(sections)}\n</body></html>\n"
    )
    return atomic_write_text(output_html, page)


# --------------------------------------------------------------------------- multi-label

PR_CURVES_SHOWN = 12            # labels drawn on the precision-recall picture (the most frequent)
MULTI_LABEL_SUMMARY_KEYS = (
    ("num_samples", "samples"), ("macro_map", "mAP (macro)"), ("micro_map", "mAP (micro)"),
    ("macro_f1", "macro F1"), ("micro_f1", "micro F1"), ("macro_precision", "macro precision"),
    ("macro_recall", "macro recall"), ("micro_precision", "micro precision"), ("micro_recall", "micro recall"),
    ("exact_match", "exact match"), ("hamming_loss", "Hamming loss"), ("loss", "loss"),
)


def plot_precision_recall_curves(targets: Any, probabilities: Any, labels: Sequence[str], thresholds: Sequence[float],
                                 output_png: str | os.PathLike, shown: int = PR_CURVES_SHOWN) -> Path:
    """Each label's precision-recall curve (the ``shown`` labels with the most positives), its
    operating point at its threshold marked, and the micro-averaged curve of all labels dashed."""
    from keras_cnn.metrics import average_precision, precision_recall_curve

    pyplot = _pyplot()
    targets = np.asarray(targets) > 0.5
    probabilities = np.asarray(probabilities, dtype=np.float64)
    support = targets.sum(axis=0)
    drawn = [index for index in np.argsort(-support, kind="stable")[:shown] if support[index] > 0]
    figure, axis = pyplot.subplots(figsize=(7, 5.5))
    for index in drawn:
        precision, recall, cuts = precision_recall_curve(targets[:, index], probabilities[:, index])
        area = average_precision(targets[:, index], probabilities[:, index])
        line, = axis.step(recall, precision, where="post", linewidth=1.3,
                          label=f"{_short(labels[index])} (AP {area:.2f})")
        at = int(np.flatnonzero(cuts >= thresholds[index])[-1]) if (cuts >= thresholds[index]).any() else 0
        axis.plot(recall[at], precision[at], "o", color=line.get_color(), markersize=6)
    if targets.any():
        precision, recall, _ = precision_recall_curve(targets.reshape(-1), probabilities.reshape(-1))
        area = average_precision(targets.reshape(-1), probabilities.reshape(-1))
        axis.step(recall, precision, where="post", color="black", linestyle="--", linewidth=1.5,
                  label=f"all labels (micro AP {area:.2f})")
    else:
        axis.text(0.5, 0.5, "no label has a positive image here", ha="center", va="center")
    hidden = int((support > 0).sum()) - len(drawn)
    axis.set_title("Precision-recall per label (dots: the stored thresholds)"
                   + (f"; {hidden} rarer labels not drawn" if hidden > 0 else ""), fontsize=10)
    axis.set_xlabel("recall")
    axis.set_ylabel("precision")
    axis.set_xlim(0, 1.02)
    axis.set_ylim(0, 1.02)
    axis.grid(True, alpha=0.3)
    if targets.any():
        axis.legend(loc="lower left", fontsize=8)
    return _save(figure, output_png)


def plot_label_mistakes(rows: Sequence[tuple[str, Sequence[Any], Sequence[str]]], output_png: str | os.PathLike,
                        per_row: int = 4) -> Path:
    """Example images of the labels most often missed or added: one row per ``(title, images, captions)``."""
    pyplot = _pyplot()
    rows = [row for row in rows if len(row[1])]
    if not rows:
        figure, axis = pyplot.subplots(figsize=(5, 2))
        axis.axis("off")
        axis.text(0.5, 0.5, "No label missed or added", ha="center", va="center", fontsize=14)
        return _save(figure, output_png)
    figure, axes = pyplot.subplots(len(rows), per_row, figsize=(2.4 * per_row, 2.9 * len(rows)), squeeze=False,
                                   layout="constrained")
    for axis in axes.flat:
        axis.axis("off")
    for row_axes, (title, images, captions) in zip(axes, rows):
        row_axes[0].text(-0.15, 0.5, _short(title, 28), transform=row_axes[0].transAxes, rotation=90,
                         ha="right", va="center", fontsize=9, color="firebrick")
        for axis, image, caption in zip(row_axes, images[:per_row], captions[:per_row]):
            picture, colour_map = _displayable(image)
            axis.imshow(picture, cmap=colour_map, vmin=0, vmax=255, interpolation="nearest")
            axis.set_title(caption, fontsize=7)
    figure.suptitle("Labels most often missed (a true label below its threshold) or added (a false one above it)",
                    fontsize=11)
    return _save(figure, output_png)


def multi_label_sections(metrics: Mapping[str, Any]) -> list[str]:
    """The HTML of a multi-label evaluation's tables: per label, and the labels most often missed or added."""
    per_label = metrics.get("per_label", {})
    rows = [(html.escape(label), _text(values.get("precision")), _text(values.get("recall")), _text(values.get("f1")),
             _text(values.get("ap")), _text(values.get("support")), _text(values.get("threshold")))
            for label, values in per_label.items()]
    sections = ["<h2>Per label</h2>",
                "<p>A label is predicted when its probability is at or above its threshold (chosen on the "
                "validation part to maximise the label's F1). AP: average precision, the area under its "
                "precision-recall curve; support: images that have the label.</p>",
                _table(("label", "precision", "recall", "F1", "AP", "support", "threshold"), rows)]
    for key, title, meaning in (("most_missed", "Labels most often missed", "true label below its threshold"),
                                ("most_added", "Labels most often added", "label above its threshold, not true")):
        sections.append(f"<h2>{title}</h2>")
        listed = metrics.get(key, [])
        if listed:
            sections.append(_table(("label", f"images ({meaning})"),
                                   [(html.escape(str(item["label"])), _text(item["count"])) for item in listed]))
        else:
            sections.append("<p>None.</p>")
    return sections
