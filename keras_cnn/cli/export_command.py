"""``kcnn export``: a run's model as a SavedModel in TF Serving layout (+ ONNX / LiteRT)."""

from __future__ import annotations

from typing import Any

import click

from keras_cnn.choices import ExportFormatName, QuantizationMode, names
from keras_cnn.cli import options
from keras_cnn.cli.common import Choice, debug_option, json_option, run_command
from keras_cnn.export import TOLERANCE, check_export_options  # no TensorFlow at import time
from keras_cnn.export.quantize import DEFAULT_MAX_ACCURACY_DROP
from keras_cnn.export_layout import MAX_VERSION

# How the score a quantized file is judged by is printed.
_METRIC_NAMES = {"macro_map": "mAP", "accuracy": "accuracy"}


@click.command()
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False),
              help="The run directory (config.json, labels.txt, model.keras).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Export directory; the model goes to OUT/<version>/ (TF Serving layout).")
@click.option("--version", "version", type=click.IntRange(1, MAX_VERSION), default=1, show_default=True,
              help="Version folder number.")
@click.option("--format", "formats", type=Choice(names(ExportFormatName)), multiple=True,
              help="What to write (repeatable) [default: saved_model]. onnx and litert take "
                   "float32 pixels already at the model's size.")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help=f"Run each written format on a few images and fail if it differs from the "
                   f"Keras model by more than {TOLERANCE:g}.")
@click.option("--tta", type=click.IntRange(min=1), default=None,
              help="Add a serving_tta signature: serving_default with the probabilities averaged over N fixed "
                   "test-time augmentation views (as kcnn evaluate --tta N). serving_default is unchanged.")
@click.option("--quantize", type=Choice(names(QuantizationMode)), default=None,
              help="With --format litert, also write model_<mode>.tflite: dynamic (int8 weights), float16 "
                   "(float16 weights) or int8 (weights and activations, calibrated on training images). "
                   "Prints and records both files' size and test accuracy.")
@click.option("--max-accuracy-drop", type=click.FloatRange(0, 1), default=DEFAULT_MAX_ACCURACY_DROP,
              show_default=True,
              help="Refuse a quantized model whose test accuracy (a multi-label model: macro mAP) is lower than "
                   "the float one's by more than this.")
@click.option("--force", is_flag=True,
              help="Replace an existing version folder (only a kcnn export), and keep a quantized model that "
                   "lost more accuracy than --max-accuracy-drop.")
@options.allow_unfinished
@options.trust_hub
@options.accept_input_changes
@json_option
@debug_option
def export(run_dir: str, out_dir: str, version: int, formats: tuple[str, ...], verify: bool, tta: int | None,
           quantize: str | None, max_accuracy_drop: float, force: bool, allow_unfinished: bool, trust_hub: bool,
           accept_input_changes: bool,
           as_json: bool) -> None:
    """Export the model of a run for serving.

    \b
    OUT/<version>/ holds a SavedModel that plain TensorFlow loads (no kcnn needed):
      serving_default       image_bytes (encoded JPEG/PNG/GIF/BMP, any size) -> probabilities, class_index, label
      serving_images        images (float32 [batch, H, W, C], 0..255)       -> the same
      serving_images_uint8  images (uint8)                                   -> the same
      serving_explain       image_bytes -> the same + heatmap (Grad-CAM, [batch, H, W], 0..1)
    plus assets/labels.txt and assets.extra/kcnn.json (metadata); --format onnx adds
    model.onnx, --format litert model.tflite.  The probabilities of every format are
    calibrated when the run is (RUN/calibration.json); kcnn.json records the temperature
    and the "none of these" threshold of evaluate --target-accuracy (reject_below).
    serving_explain is left out for a model without a reachable spatial feature map
    (kcnn.json says why).  Written atomically: a failed export leaves no version folder.
    Only --quantize reads the run's images (int8 calibration and the accuracy check), and
    checks them against the run's record first; without it a run copied without its data
    exports as well.  A multi-label run's signatures also return above_threshold (one
    bool per label) and labels (those at or above their thresholds, joined by ';'), its
    probabilities being one per label; kcnn.json records multi_label and the thresholds.

    \b
    \b
    Examples:
      kcnn export --run runs/a --out export/ --format saved_model --format onnx
      kcnn export --run runs/a --out export/ --format saved_model --format litert --quantize int8 --tta 4
    """

    # Options that cannot go together, or that the run cannot take, are refused before TensorFlow starts.
    check_export_options(run_dir, formats or ("saved_model",), version, tta, quantize)

    def work() -> dict[str, Any]:
        from keras_cnn.export import export_run

        return export_run(run_dir, out_dir, version=version, formats=formats or ("saved_model",),
                          verify=verify, force=force, tta=tta, quantize=quantize,
                          max_accuracy_drop=max_accuracy_drop, allow_unfinished=allow_unfinished,
                          trust_hub=trust_hub, accept_input_changes=accept_input_changes)

    run_command(as_json, work, render)


def render(result: dict[str, Any]) -> None:
    """Human-readable summary of :func:`keras_cnn.export.export_run`'s result."""
    click.echo(f"exported version {result['version']} to {result['path']}")
    for name, path in result["files"].items():
        click.echo(f"  {name:<12} {path}  ({_check_of(name, result)})")
    if result.get("tta"):
        click.echo(f"  serving_tta  averages {len(result['tta']['views'])} views: {', '.join(result['tta']['views'])}")
    quantization = result.get("quantization")
    if quantization:
        float_part, quantized = quantization["float"], quantization["quantized"]
        part = quantization.get("accuracy_part")
        metric = quantization.get("metric", "accuracy")
        shown = _METRIC_NAMES.get(metric, metric)
        for name, entry in (("float", float_part), (quantization["mode"], quantized)):
            score = (f"{part} {shown} {entry[metric]:.4f}" if metric in entry
                     else f"{shown} not measured (no test or validation images)")
            click.echo(f"  litert {name:<7} {entry['file']}: {entry['bytes'] / 1e6:.3f} MB, {score}")
        change = quantization.get(f"{metric}_change")
        click.echo(f"  quantized file is {quantization['size_ratio']:.0%} of the float one"
                   + (f", {shown} change {change:+.4f}" if change is not None else ""))
    calibration = result.get("calibration")
    if calibration:
        click.echo(f"  calibrated   temperature {calibration['temperature']:.3g} (fitted on "
                   f"{calibration['fitted_on']['images']} validation images)")
    if result.get("reject_below") is not None:
        click.echo(f"  unknown      below a top probability of {result['reject_below']:.4g}")
    explain = result.get("explain") or {}
    if explain.get("signature"):
        click.echo(f"  heat maps    {explain['signature']} (feature map {explain['feature_layer']})")
    click.echo(f"  labels       {', '.join(result['labels'])}")
    click.echo(f"  metadata     {result['metadata']}")


def _check_of(name: str, result: dict[str, Any]) -> str:
    """How a written file was checked: against the Keras model, by its accuracy, or (only then) not at all."""
    difference = result["max_abs_diff"].get(name)
    if difference is not None:
        return f"max abs diff {difference:.2g} on {result['verified_on_images']} images"
    quantization = result.get("quantization")
    if quantization and name == f"litert_{quantization['mode']}":
        # A quantized model differs from the float one by design: its score on labelled images is its check.
        metric = quantization.get("metric", "accuracy")
        if metric in quantization["quantized"]:
            return (f"checked by its {quantization['accuracy_part']} {_METRIC_NAMES.get(metric, metric)} "
                    f"{quantization['quantized'][metric]:.4f}, compared with the float file's below")
        return "not verified: no test or validation images to score it on"
    return "not verified: --no-verify" if not result["verified_on_images"] else "not verified"
