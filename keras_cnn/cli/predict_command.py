"""``kcnn predict``: labels and probabilities of image files from an exported SavedModel."""

from __future__ import annotations

import json
from typing import Any

import click

from keras_cnn.cli.common import debug_option, run_command
from keras_cnn.errors import UserError
from keras_cnn.export_layout import read_export_labels, read_export_metadata, resolve_version_dir
from keras_cnn.runs import to_jsonable


@click.command()
@click.option("--model", "model_dir", required=True, type=click.Path(),
              help="Export directory (its highest version is used) or one version folder DIR/<version>.")
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("--top-k", type=click.IntRange(min=1), default=1, show_default=True,
              help="Show the K most likely labels per image (at most the number of classes).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Images per call of the model.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON list of predictions on stdout (failures and logs go to stderr).")
@debug_option
@click.pass_context
def predict(ctx: click.Context, model_dir: str, inputs: tuple[str, ...], top_k: int, batch_size: int,
            as_json: bool) -> None:
    """Classify images (files or directories of images) with an exported model.

    \b
    Needs only the export (kcnn export), not the run it came from.  Prints a table, or with
    --json one JSON list of {"path", "label", "class_index", "probability",
    "probabilities", "top_k"}; probabilities are in labels.txt order.  Files that cannot be
    read as images are listed on stderr and the exit status is 1 (the others are still
    classified); 2 when nothing could be classified or the model directory is wrong.

    Example: kcnn predict --model export/ photos/ cat.jpg --top-k 3
    """
    # A wrong folder or a damaged export is reported before TensorFlow's seconds of start-up.
    version_dir = resolve_version_dir(model_dir)
    read_export_labels(version_dir, read_export_metadata(version_dir))

    def work() -> dict[str, Any]:
        from keras_cnn.predict import load_exported_model, predict_files

        model = load_exported_model(model_dir)
        results, failures = predict_files(model, list(inputs), batch_size=batch_size, top_k=top_k)
        return {"predictions": results, "failures": failures}

    # Rendering is chosen here (the result is a list with --json, not run_command's object).
    outcome = run_command(False, work, lambda result: render(result, as_json, top_k))
    failures = outcome["failures"]
    for path, reason in failures:
        click.echo(f"kcnn: cannot predict {path}: {reason}", err=True)
    if not outcome["predictions"]:
        raise UserError(f"none of the {len(failures)} input(s) could be classified")
    if failures:
        click.echo(f"kcnn: {len(failures)} of {len(failures) + len(outcome['predictions'])} input(s) failed",
                   err=True)
        ctx.exit(1)


def render(result: dict[str, Any], as_json: bool, top_k: int) -> None:
    """Print the predictions: one JSON list, or a table (file, label, confidence[, top-k])."""
    predictions = result["predictions"]
    if as_json:
        click.echo(json.dumps(to_jsonable(predictions)))
        return
    if not predictions:
        return
    top_k = len(predictions[0]["top_k"])  # clipped to the number of classes
    header = ["file", "label", "confidence"] + ([f"top-{top_k}"] if top_k > 1 else [])
    rows = []
    for prediction in predictions:
        row = [prediction["path"], prediction["label"], f"{prediction['probability']:.4f}"]
        if top_k > 1:
            row.append(", ".join(f"{item['label']} {item['probability']:.3f}" for item in prediction["top_k"]))
        rows.append(row)
    widths = [max(len(row[column]) for row in [header] + rows) for column in range(len(header))]
    for row in [header] + rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
