"""``kcnn models`` and ``kcnn summary``: what can be built, and how big it is."""

from __future__ import annotations

from itertools import groupby

import click

from keras_cnn.cli import options
from keras_cnn.cli.common import debug_option, import_tensorflow_quietly, json_option, run_command
from keras_cnn.models.parameters import parameter_counts


def _all_models() -> dict:
    import_tensorflow_quietly()
    from keras_cnn.models.factory import describe_models

    return {"models": describe_models()}


def _render(result: dict) -> None:
    """Scratch architectures first, then the transfer bases family by family."""
    rows = result["models"]
    click.echo("From-scratch architectures (kcnn train NAME):")
    click.echo(f"  {'name':<20} {'input':<10} {'params':>12}  source")
    for row in (row for row in rows if row["kind"] == "scratch"):
        shape = "x".join(str(size) for size in row["input_shape"])
        click.echo(f"  {row['name']:<20} {shape:<10} {row['params']:>12,}  {row['source']}")
    bases = [row for row in rows if row["kind"] == "transfer"]
    click.echo("")
    click.echo(f"Transfer bases (kcnn transfer --base NAME): {len(bases)} keras.applications bases by family; "
               "params without top, ImageNet top-1 % (Keras applications table):")
    click.echo(f"  {'name':<22} {'size':>5} {'params':>12} {'top-1':>6}  unfreeze from")
    for family, members in groupby(bases, key=lambda row: row["family"]):
        click.echo(f"  {family}")
        for row in members:
            top1 = f"{row['top1']:.1f}" if row.get("top1") is not None else "-"
            click.echo(f"    {row['name']:<20} {row['input_shape'][0]:>5} {row['params']:>12,} {top1:>6}  "
                       f"{row['default_unfreeze']}")
    click.echo("")
    click.echo("Also: --base hub:URL_OR_DIR (a TF Hub module) and --base keras_hub:PRESET_OR_DIR "
               "(a keras-hub preset; pip install 'kcnn[keras-hub]').")


@click.command()
@json_option
@debug_option
def models(as_json: bool) -> None:
    """List the from-scratch architectures and the transfer bases, grouped by family.

    For each base: default input size, parameters without top, ImageNet top-1 accuracy
    (the Keras applications table) and the layer fine-tuning starts from by default.
    Transfer bases also accept `hub:URL_OR_DIR` (a TF Hub module) and
    `keras_hub:PRESET_OR_DIR` (a keras-hub preset). `--json` gives the same fields.
    """
    run_command(as_json, _all_models, _render)


def _layer_rows(model) -> list[dict]:
    """One row per layer: name, class, output shape (batch axis as None) and parameters."""
    rows = []
    for layer in model.layers:
        try:
            output = layer.output
        except (AttributeError, ValueError):  # a layer called more than once has no single output
            output_shape = None
        else:
            output_shape = ([list(tensor.shape) for tensor in output] if isinstance(output, (list, tuple))
                            else list(output.shape))
        rows.append({"name": layer.name, "class": type(layer).__name__, "output_shape": output_shape,
                     "params": parameter_counts(layer)["total_params"], "trainable": bool(layer.trainable)})
    return rows


@click.command()
@click.argument("name")
@options.api()
@click.option("--num-classes", type=click.IntRange(min=2), default=None,
              help="Number of classes [default: the architecture's reference; 2 for a transfer base].")
@options.image_size(shown_default="a transfer base's own")
@json_option
@debug_option
def summary(name: str, api: str, num_classes: int | None, image_size: int | None, as_json: bool) -> None:
    """Print the Keras summary of architecture or transfer base NAME.

    For a from-scratch architecture this is the reference network; for a transfer base
    it is the frozen base with a new head, built with random weights (nothing is
    downloaded; a TF Hub module brings its own).  `--json` gives the input shape, the
    parameter counts and one row per layer (name, class, output shape, parameters).
    """
    built = {}

    def build() -> dict:
        from keras_cnn.models.bases import get_base_spec
        from keras_cnn.models.factory import DEFAULT_WEIGHTS, create_model, is_architecture

        if is_architecture(name):
            model = create_model(name, num_classes, api=api, input_scaling=False)
        else:
            # A TF Hub module cannot be re-initialised; every other base needs no download here.
            weights = DEFAULT_WEIGHTS if get_base_spec(name).kind == "hub" else "none"
            model = create_model(name, num_classes or 2, image_size=image_size, weights=weights, api=api)
        built["model"] = model
        return {"name": name, "api": api, "input_shape": list(model.input_shape[1:]),
                "num_classes": int(model.output_shape[-1]), **parameter_counts(model),
                "layers": _layer_rows(model)}

    run_command(as_json, build, lambda _result: built["model"].summary(print_fn=lambda line, **_: click.echo(line)))
