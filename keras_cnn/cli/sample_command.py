"""``kcnn sample-data``: the built-in sample image set."""

from __future__ import annotations

import click

from keras_cnn.cli.common import debug_option, json_option, run_command
from keras_cnn.config import MAX_IMAGE_SIDE, MAX_SAMPLE_PER_CLASS, MAX_SEED


@click.command("sample-data")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--classes", type=click.IntRange(2, 8), default=3, show_default=True, help="Number of classes (shapes).")
@click.option("--per-class", type=click.IntRange(1, MAX_SAMPLE_PER_CLASS), default=120, show_default=True,
              help="Images per class.")
@click.option("--size", type=click.IntRange(16, MAX_IMAGE_SIDE), default=128, show_default=True,
              help="Image side in pixels.")
@click.option("--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True, help="Same seed, same files.")
@json_option
@debug_option
def sample_data(out_dir: str, classes: int, per_class: int, size: int, seed: int, as_json: bool) -> None:
    """Write a small, learnable image set into OUT_DIR.

    Coloured shapes (circle, square, triangle, ...) as JPEG files named by the SHA-1 of
    their bytes, plus OUT_DIR/label.csv (objectId,value): the layout `kcnn split` reads.
    """
    from keras_cnn.data.sample import write_sample_data

    def render(result):
        click.echo(f"wrote {result['count']} images ({', '.join(result['per_label'])}) "
                   f"to {result['images']}; labels in {result['label_csv']}")

    run_command(as_json, lambda: write_sample_data(out_dir, classes, per_class, size, seed), render)
