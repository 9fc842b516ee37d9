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
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from keras_cnn.io import atomic_path, atomic_write_text, to_jsonable

TICK_LABEL_CHARACTERS = 18      # longer class names are shortened on the axes
ANNOTATE_CELLS_UP_TO = 20       # beyond this many classes the cell numbers become unreadable


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


def plot_training_history(history_csv_or_rows: Any, output_png: str | os.PathLike) -> Path:
    """Loss and accuracy per epoch (train and validation) across every training stage.

    ``history_csv_or_rows``: the path of ``history.csv``, a pandas DataFrame, or a list of
    row dicts with the columns stage, epoch, loss, accuracy, val_loss, val_accuracy (any
    of them may be missing). Epochs are numbered 1..n across stages; a dashed vertical
    line marks where the ``stage`` column changes (e.g. head training → fine-tuning).
    """
    pyplot = _pyplot()
    frame = _history_frame(history_csv_or_rows)
    figure, axes = pyplot.subplots(1, 2, figsize=(11, 4))
    if frame.empty:
        for axis in axes:
            axis.axis("off")
        axes[0].text(0.5, 0.5, "no epochs recorded", ha="center", va="center", fontsize=14)
        return _save(figure, output_png)

    epochs = np.arange(1, len(frame) + 1)
    stages = frame["stage"].astype(str).tolist() if "stage" in frame.columns else [""] * len(frame)
    boundaries = _stage_boundaries(stages)
    for axis, metric, title in ((axes[0], "loss", "Loss"), (axes[1], "accuracy", "Accuracy")):
        plotted = False
        for column, name, style in ((metric, "train", "o-"), (f"val_{metric}", "validation", "s--")):
            if column in frame.columns and frame[column].notna().any():
                axis.plot(epochs, frame[column].astype(float), style, label=name, markersize=4)
                plotted = True
        if not plotted:
            axis.text(0.5, 0.5, f"no {metric} recorded", ha="center", va="center", transform=axis.transAxes)
        for start, stage in boundaries:
            axis.axvline(start + 0.5, color="grey", linestyle=":", linewidth=1.2)
            axis.text(start + 0.6, 0.98, stage, transform=axis.get_xaxis_transform(),
                      va="top", ha="left", fontsize=9, color="dimgrey")
        axis.set_title(title)
        axis.set_xlabel("epoch (all stages)" if boundaries else "epoch")
        axis.set_ylabel(metric)
        axis.grid(True, alpha=0.3)
        if plotted:
            axis.legend(loc="best")
        # Whole epochs only on the x axis.
        axis.xaxis.get_major_locator().set_params(integer=True)
    figure.tight_layout()
    return _save(figure, output_png)


# --------------------------------------------------------------------------- learning-rate range test


def plot_learning_rate_sweep(learning_rates: Sequence[float], losses: Sequence[float],
                             smoothed: Sequence[float], suggestions: Mapping[str, float],
                             output_png: str | os.PathLike) -> Path:
    """Loss against learning rate (log axis) from ``kcnn lr-find``, with the suggested rates marked.

    The raw per-batch loss is drawn faintly behind the smoothed curve the suggestions are
    read from.
    """
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
        # The blow-up at the end would squash the interesting part of the curve.
        low, first = min(finite), finite[0]
        axis.set_ylim(low - 0.1 * abs(first - low) - 1e-6, max(first, low) + 0.5 * abs(first - low) + 1e-6)
    axis.set_xscale("log")
    axis.set_xlabel("learning rate")
    axis.set_ylabel("training loss")
    axis.set_title("Learning-rate range test")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(loc="best")
    figure.tight_layout()
    return _save(figure, output_png)


# --------------------------------------------------------------------------- confusion matrix


def row_normalised(matrix: Any) -> np.ndarray:
    """Each row divided by its sum (a row with no samples stays 0)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    totals = matrix.sum(axis=1, keepdims=True)
    result = np.zeros_like(matrix)
    np.divide(matrix, totals, out=result, where=totals != 0)
    return result


def plot_confusion_matrix(matrix: Any, labels: Sequence[str], output_png: str | os.PathLike) -> Path:
    """Two heat maps: counts and row-normalised fractions (row = true label, column = predicted)."""
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
        (axes[0], matrix, "Counts", lambda value: f"{int(value)}", None),
        (axes[1], fractions, "Row-normalised (recall on the diagonal)", lambda value: f"{value:.2f}", 1.0),
    )
    for axis, values, title, formatter, maximum in panels:
        shown = axis.imshow(values, cmap="Blues", vmin=0, vmax=maximum, interpolation="nearest")
        figure.colorbar(shown, ax=axis, fraction=0.046, pad=0.04)
        axis.set_title(title)
        axis.set_xlabel("predicted label")
        axis.set_ylabel("true label")
        slanted = size > 4   # a few short names fit upright; more overlap unless slanted
        axis.set_xticks(range(size), tick_labels, rotation=45 if slanted else 0,
                        ha="right" if slanted else "center")
        axis.set_yticks(range(size), tick_labels)
        if size <= ANNOTATE_CELLS_UP_TO:
            threshold = (values.max() if maximum is None else maximum) / 2.0
            for row in range(size):
                for column in range(size):
                    value = values[row, column]
                    axis.text(column, row, formatter(value), ha="center", va="center", fontsize=font_size,
                              color="white" if value > threshold else "black")
    figure.tight_layout()
    return _save(figure, output_png)


# --------------------------------------------------------------------------- misclassified images


def _displayable(image: Any) -> tuple[np.ndarray, str | None]:
    """uint8 image for imshow and the colour map it needs (grey images use "gray")."""
    image = np.asarray(image)
    image = np.clip(np.round(image.astype(np.float64)), 0, 255).astype(np.uint8)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    return image, ("gray" if image.ndim == 2 else None)


def plot_misclassified(images: Sequence[Any], true_indices: Sequence[int], predicted_indices: Sequence[int],
                       confidences: Sequence[float], labels: Sequence[str], output_png: str | os.PathLike,
                       max_images: int = 25, object_ids: Sequence[str] | None = None) -> Path:
    """A grid of the most confident mistakes: each tile shows true and predicted label and confidence.

    ``images``: pixel arrays 0..255 (uint8 or float; grey (H, W) / (H, W, 1) or RGB), one
    per entry of the index lists; entries whose prediction is right are left out. With no
    mistakes the picture says so. ``object_ids`` (optional) are printed above each tile.
    """
    pyplot = _pyplot()
    labels = [str(label) for label in labels]
    mistakes = [
        index for index in range(len(images))
        if int(true_indices[index]) != int(predicted_indices[index])
    ]
    mistakes.sort(key=lambda index: -float(confidences[index]))
    mistakes = mistakes[:max_images]
    if not mistakes:
        figure, axis = pyplot.subplots(figsize=(5, 2))
        axis.axis("off")
        axis.text(0.5, 0.5, "No misclassified images", ha="center", va="center", fontsize=14)
        return _save(figure, output_png)

    columns = min(5, math.ceil(math.sqrt(len(mistakes))))
    rows = math.ceil(len(mistakes) / columns)
    figure, axes = pyplot.subplots(rows, columns, figsize=(2.6 * columns, 3.0 * rows), squeeze=False,
                                   layout="constrained")
    for axis in axes.flat:
        axis.axis("off")
    for axis, index in zip(axes.flat, mistakes):
        image, colour_map = _displayable(images[index])
        axis.imshow(image, cmap=colour_map, vmin=0, vmax=255, interpolation="nearest")
        caption = (
            f"true: {_short(labels[int(true_indices[index])])}\n"
            f"pred: {_short(labels[int(predicted_indices[index])])} ({float(confidences[index]):.2f})"
        )
        if object_ids is not None:
            caption = f"{_short(str(object_ids[index]), 20)}\n{caption}"
        axis.set_title(caption, fontsize=8, color="firebrick")
    figure.suptitle("Most confident mistakes (confidence = predicted probability)", fontsize=11)
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
"""

SUMMARY_KEYS = (
    ("num_samples", "samples"), ("accuracy", "accuracy"), ("loss", "loss"),
    ("top_2_accuracy", "top-2 accuracy"), ("top_3_accuracy", "top-3 accuracy"),
    ("top_5_accuracy", "top-5 accuracy"),
    ("macro_precision", "macro precision"), ("macro_recall", "macro recall"), ("macro_f1", "macro F1"),
    ("weighted_precision", "weighted precision"), ("weighted_recall", "weighted recall"),
    ("weighted_f1", "weighted F1"), ("roc_auc", "ROC AUC"),
)


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


def write_html_report(run_dir: str | os.PathLike, metrics: Mapping[str, Any], config: Mapping[str, Any],
                      pictures: Mapping[str, Any] | Sequence[Any], output_html: str | os.PathLike,
                      links: Mapping[str, Any] | None = None) -> Path:
    """Write one self-contained HTML page about an evaluated run and return its path.

    ``metrics``: the dict of :func:`keras_cnn.metrics.compute_metrics` (plus run/subset);
    ``config``: the run's config.json contents; ``pictures``: {caption: png path} or a list
    of png paths, embedded as base64 data URIs (missing files are left out); ``links``:
    optional {text: path} of files to link to (e.g. predictions.csv), written as paths
    relative to the page and only when the file exists.
    """
    output_html = Path(output_html)
    run_name = Path(run_dir).resolve().name or str(run_dir)
    labels = [str(label) for label in metrics.get("labels", [])]
    sections = [
        f"<h1>kcnn evaluation: {html.escape(run_name)}</h1>",
        "<p>Run directory: <code>{}</code>; part evaluated: <b>{}</b>.</p>".format(
            html.escape(str(run_dir)), html.escape(str(metrics.get("subset", "test")))
        ),
    ]

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
