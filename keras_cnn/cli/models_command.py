"""``kcnn models`` and ``kcnn summary``: what can be built, and how big it is."""

from __future__ import annotations

import click

from keras_cnn.cli.common import debug_option, import_tensorflow_quietly, json_option, run_command


def _all_models() -> list[dict]:
    from keras_cnn.models.scratch import describe_architectures

    rows = describe_architectures()
    try:
        from keras_cnn.models.bases import describe_bases
    except ImportError:  # transfer bases are optional for listing
        return rows
    return rows + describe_bases()


@click.command()
@json_option
@debug_option
def models(as_json: bool) -> None:
    """List the from-scratch architectures and transfer bases.

    Shows each model's kind, default input shape and parameter count (transfer bases
    without their top). Transfer bases also accept `hub:URL_OR_DIR` (a TF Hub module).
    """

    def render(result):
        click.echo(f"{'name':<18} {'kind':<9} {'input':<13} {'params':>12}  notes")
        for row in result["models"]:
            shape = "x".join(str(size) for size in row["input_shape"])
            note = row.get("source") or f"unfreeze from {row.get('default_unfreeze', '')}"
            click.echo(f"{row['name']:<18} {row['kind']:<9} {shape:<13} {row['params']:>12,}  {note}")

    run_command(as_json, lambda: {"models": _all_models()}, render)


@click.command()
@click.argument("name")
@click.option("--api", type=click.Choice(["functional", "sequential"]), default="functional",
              show_default=True, help="Which Keras API builds the model (same layers either way).")
@click.option("--num-classes", type=click.IntRange(min=2), default=None,
              help="Number of classes [default: the architecture's reference].")
@debug_option
def summary(name: str, api: str, num_classes: int | None) -> None:
    """Print the Keras summary of architecture or transfer base NAME.

    For a from-scratch architecture this is the network of its source (see `kcnn models`);
    for a transfer base it is the frozen base with a new head, built without ImageNet
    weights (no download needed).
    """
    import_tensorflow_quietly()
    from keras_cnn.models.scratch import ARCHITECTURES, build_architecture

    if name in ARCHITECTURES:
        model = build_architecture(name, num_classes=num_classes, api=api)
    else:
        from keras_cnn.models.bases import get_base_spec
        from keras_cnn.models.transfer import build_transfer_model

        spec = get_base_spec(name)
        # A hub module brings its own weights; keras.applications bases need no download here.
        weights = "imagenet" if spec.kind == "hub" else "none"
        model = build_transfer_model(spec, num_classes or 2, weights=weights, api=api)
    model.summary(print_fn=lambda line, **_: click.echo(line))
