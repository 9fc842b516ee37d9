"""``kcnn demo``: the whole kcnn flow on generated sample data."""

from __future__ import annotations

import click

from keras_cnn.cli import options
from keras_cnn.cli.common import debug_option, json_option, run_command
from keras_cnn.config import MAX_EPOCHS, MAX_SAMPLE_PER_CLASS


@click.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="kcnn-demo", show_default=True,
              help="Folder for the sample data, the run, the report and the export.")
@click.option("--per-class", type=click.IntRange(30, MAX_SAMPLE_PER_CLASS),
              default=100, show_default=True,
              help="Sample images per class (3 classes).")
@click.option("--head-epochs", type=click.IntRange(1, MAX_EPOCHS), default=8, show_default=True,
              help="Stage-1 epochs (head on cached features).")
@click.option("--finetune-epochs", type=click.IntRange(1, MAX_EPOCHS), default=3, show_default=True,
              help="Stage-2 epochs (base unfrozen from block7a).")
@options.weights(shown_default="imagenet when downloadable or cached, else none, said clearly", default=None,
                 show_default=False)
@json_option
@debug_option
def demo(out_dir, per_class, head_epochs, finetune_epochs, weights, as_json):
    """Run the whole flow on built-in sample data, in a few minutes on a laptop CPU.

    \b
    sample-data → split → transfer --base efficientnet_b0 → finetune → evaluate
    → export → predict, printing each step and where its results are.
    """

    def work():
        from keras_cnn.demo import run_demo

        return run_demo(out_dir, per_class=per_class, head_epochs=head_epochs,
                        finetune_epochs=finetune_epochs, weights=weights)

    def render(result):
        click.echo(f"\ndemo finished: {result['evaluated_subset']} accuracy {result['accuracy']:.3f} "
                   f"({'ImageNet' if result['weights'] == 'imagenet' else 'random'} initial weights)")
        if result["weights"] == "none":
            click.echo("  (a frozen base with random weights learns next to nothing: expect accuracy near "
                       "chance, as the warning above and the first lines of the report say)")
        click.echo(f"  report:  {result['report']}")
        click.echo(f"  model:   {result['export']}")
        click.echo(f"  predict: kcnn predict --model {result['export']} {result['out']}/data/")

    run_command(as_json, work, render)
