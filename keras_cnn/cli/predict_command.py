"""``kcnn predict``: labels and probabilities of image files from an exported SavedModel."""

from __future__ import annotations

from typing import Any

import click

from keras_cnn.cli import options
from keras_cnn.cli.common import FiniteFloatRange, debug_option, json_option, run_command
from keras_cnn.config import MAX_BATCH_SIZE
from keras_cnn.errors import UserError
from keras_cnn.export_layout import check_answer_options, read_export_labels, read_export_metadata, resolve_version_dir
from keras_cnn.io import check_output_path
from keras_cnn.messages import MAX_ITEMS
from keras_cnn.progress import emit


@click.command()
@click.option("--model", "model_dir", required=True, type=click.Path(),
              help="Export directory (its highest version is used) or one version folder DIR/<version>.")
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@options.max_image_pixels(note="Such a file is listed as failed; the others are still classified.")
@click.option("--top-k", type=click.IntRange(min=1), default=1, show_default=True,
              help="Show the K most likely labels per image (at most the number of classes).")
@click.option("--batch-size", type=click.IntRange(1, MAX_BATCH_SIZE), default=32, show_default=True,
              help="Images per call of the model.")
@click.option("--tta", type=click.IntRange(min=1), default=None,
              help="Average each image's probabilities over N test-time augmentation views (as kcnn evaluate "
                   "--tta N; an export made with --tta N answers through its serving_tta signature).")
@click.option("--reject-below", type=FiniteFloatRange(0, 1), default=None, metavar="P",
              help="Answer 'unknown' (none of these) when the top probability is below P: printed as "
                   "'unknown (top: LABEL 0.41)', in --json \"rejected\": true beside the top label [default: the "
                   "export's reject_below, chosen by kcnn evaluate --target-accuracy; none without it].")
@click.option("--explain", "explain_dir", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Write one PNG per image into DIR: the image with where the model looked (Grad-CAM, from the "
                   "export's serving_explain signature; at most 1024 px on the longer side), and add \"heatmap\" "
                   "(its path) and \"peak\" ([y, x] of the map's maximum, 0..1 from the image's top-left corner) "
                   "to each prediction. Existing files are never replaced.")
@json_option
@debug_option
@click.pass_context
def predict(ctx: click.Context, model_dir: str, inputs: tuple[str, ...], max_image_pixels: int, top_k: int,
            batch_size: int, tta: int | None, reject_below: float | None, explain_dir: str | None,
            as_json: bool) -> None:
    """Classify images (files or directories of images) with an exported model; writes files only with --explain.

    \b
    Needs only the export (kcnn export), not the run it came from.  Prints a table, or with
    --json one JSON object {"predictions": [...], "failures": [...]}: each prediction has
    "path", "label", "class_index", "probability", "probabilities" (labels.txt order) and
    "top_k" (with a threshold also "rejected" and "reject_below"; with --explain "heatmap"
    and "peak"; a multi-label model's also "above_threshold": every label at or above its
    threshold, with "probability" and "threshold", and the table then lists those labels);
    each failure has "path" and "reason".  The probabilities are calibrated when the run
    was.  Files that cannot be read as images are named on stderr and the exit status is 1
    (the others are still classified); 2 when nothing could be classified or the model
    directory is wrong.

    Example: kcnn predict --model export/ photos/ cat.jpg --top-k 3 --explain heatmaps/
    """
    # A wrong folder, a damaged export or an option it cannot answer with is reported before TensorFlow's
    # seconds of start-up.
    version_dir = resolve_version_dir(model_dir)
    metadata = read_export_metadata(version_dir)
    read_export_labels(version_dir, metadata)
    check_answer_options(version_dir, metadata, tta=tta, reject_below=reject_below, explain=explain_dir is not None)
    if explain_dir is not None:
        check_output_path(explain_dir, directory=True, option="--explain")

    def work() -> dict[str, Any]:
        from keras_cnn.predict import load_exported_model, predict_files

        model = load_exported_model(model_dir)
        results, failures = predict_files(model, list(inputs), batch_size=batch_size, top_k=top_k, tta=tta,
                                          max_image_pixels=max_image_pixels, reject_below=reject_below,
                                          explain_dir=explain_dir)
        return {"predictions": results,
                "failures": [{"path": path, "reason": reason} for path, reason in failures]}

    outcome = run_command(as_json, work, lambda result: render(result, top_k))
    failures = outcome["failures"]
    for failure in failures[:MAX_ITEMS]:
        emit(f"kcnn: cannot predict {failure['path']}: {failure['reason']}")
    if len(failures) > MAX_ITEMS:
        emit(f"kcnn: and {len(failures) - MAX_ITEMS} more input(s) that cannot be predicted "
             "(--json lists every one)")
    if not outcome["predictions"]:
        raise UserError(f"none of the {len(failures)} input(s) could be classified")
    if failures:
        emit(f"kcnn: {len(failures)} of {len(failures) + len(outcome['predictions'])} input(s) failed")
        ctx.exit(1)


def _labels_cell(prediction: dict[str, Any]) -> str:
    """A multi-label prediction: every label at or above its threshold with its probability."""
    found = prediction["above_threshold"]
    if not found:
        return f"(none above its threshold; top: {prediction['label']} {prediction['probability']:.3f})"
    return ", ".join(f"{item['label']} {item['probability']:.3f}" for item in found)


def render(result: dict[str, Any], top_k: int) -> None:
    """Print the predictions as a table (file, label, confidence[, top-k]); a multi-label model's as
    (file, labels at or above their thresholds with their probabilities[, top-k])."""
    predictions = result["predictions"]
    if not predictions:
        return
    top_k = len(predictions[0]["top_k"])  # clipped to the number of classes
    multi_label = "above_threshold" in predictions[0]
    explained = "heatmap" in predictions[0]
    header = ["file", *(["labels"] if multi_label else ["label", "confidence"])] + \
        ([f"top-{top_k}"] if top_k > 1 else []) + (["heat map", "peak (y, x)"] if explained else [])
    rows = []
    for prediction in predictions:
        row = [prediction["path"], *([_labels_cell(prediction)] if multi_label
                                     else [answer_text(prediction), f"{prediction['probability']:.4f}"])]
        if top_k > 1:
            row.append(", ".join(f"{item['label']} {item['probability']:.3f}" for item in prediction["top_k"]))
        if explained:
            row += [prediction["heatmap"], "{:.2f}, {:.2f}".format(*prediction["peak"])]
        rows.append(row)
    widths = [max(len(row[column]) for row in [header] + rows) for column in range(len(header))]
    for row in [header] + rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def answer_text(prediction: dict[str, Any]) -> str:
    """The label, or ``unknown (top: LABEL 0.41)`` for an answer below the threshold."""
    if prediction.get("rejected"):
        return f"unknown (top: {prediction['label']} {prediction['probability']:.2f})"
    return prediction["label"]
