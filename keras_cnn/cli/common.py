"""Options and output helpers shared by the ``kcnn`` commands.

A command parses its options, calls one API function inside :func:`run_command`, and
prints the result: a human-readable rendering, or with ``--json`` exactly one JSON object
on stdout.  While the work runs, stdout is redirected to stderr so Keras progress bars
and logs never mix with the result.
"""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any, Callable

import click

from keras_cnn.cli import enable_debug
from keras_cnn.quiet import import_tensorflow_quietly
from keras_cnn.runs import to_jsonable

json_option = click.option(
    "--json", "as_json", is_flag=True,
    help="Print one JSON object on stdout (progress and logs go to stderr).",
)
debug_option = click.option(
    "--debug", is_flag=True, expose_value=False, is_eager=True, callback=enable_debug,
    help="Show the full traceback on errors.",
)


def option_group(*options: Callable) -> Callable:
    """One decorator applying several click options, in the order listed (as --help shows them)."""

    def decorate(function: Callable) -> Callable:
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


class FiniteFloatRange(click.FloatRange):
    """``click.FloatRange`` that also refuses NaN and infinity (every comparison with NaN is false)."""

    def convert(self, value, param, ctx):
        import math

        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


overwrite_option = click.option(
    "--overwrite", is_flag=True,
    help="Start this stage over: removes its epochs, checkpoints, logs and eval/ (and any later stage's).",
)


def training_options(defaults_note: str = "the architecture's reference recipe") -> Callable:
    """Options every training command shares (epochs, batch size, learning rate, seed)."""
    return option_group(
        click.option("--epochs", type=click.IntRange(min=1), default=None,
                     help=f"Number of epochs [default: {defaults_note}]."),
        click.option("--batch-size", type=click.IntRange(min=1), default=None,
                     help=f"Batch size (global across replicas) [default: {defaults_note}]."),
        click.option("--learning-rate", type=FiniteFloatRange(min=0, min_open=True), default=None,
                     help=f"Learning rate [default: {defaults_note}]."),
        click.option("--seed", type=int, default=1234, show_default=True,
                     help="Random seed for weights, shuffling and augmentation."),
    )


image_folder_options = option_group(
    click.option("--class-weight", type=click.Choice(["none", "balanced"]), default="none", show_default=True,
                 help="Weight classes inversely to their frequency in the training part."),
    click.option("--resize-mode", type=click.Choice(["stretch", "pad", "crop"]), default="stretch",
                 show_default=True, help="How image-folder pictures are fitted to the input size."),
    click.option("--cache", default="memory", show_default=True,
                 help="Cache decoded images: memory, none, or a file path prefix (large sets)."),
    click.option("--skip-bad-images", is_flag=True,
                 help="Train on the readable images and record the others (refused if a label would lose "
                      "all its images in a part)."),
    click.option("--layout", type=click.Choice(["csv", "folders", "split-folders"]), default=None,
                 help="How --images is organised when no --split is given [default: detected]: folders = "
                      "DIR/<label>/…, split-folders = DIR/{train,val,test}/<label>/…, csv = DIR/label.csv."),
    click.option("--allow-label", "allow_labels", multiple=True, metavar="LABEL",
                 help="Accept LABEL (nan, None, null, NA) as a real class (repeatable)."),
)
"""``--class-weight``, ``--resize-mode``, ``--cache``, ``--skip-bad-images``, ``--layout``, ``--allow-label``."""


def run_command(as_json: bool, work: Callable[[], dict[str, Any]],
                render: Callable[[dict[str, Any]], None] | None = None,
                needs_tensorflow: bool = True) -> dict[str, Any]:
    """Run ``work`` with stdout sent to stderr, then print its result.

    ``render`` prints the human form (to stdout); without it, a compact
    ``key: value`` listing is printed.  Returns the result.
    """
    if needs_tensorflow:
        import_tensorflow_quietly()
    with contextlib.redirect_stdout(sys.stderr):
        result = work()
    if as_json:
        click.echo(json.dumps(to_jsonable(result)))
    elif render is not None:
        render(result)
    else:
        for key, value in result.items():
            click.echo(f"{key}: {value}")
    return result


def progress(message: str) -> None:
    """One line of progress on stderr."""
    click.echo(message, err=True)


execution_options = option_group(
    click.option("--mixed-precision", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
                 help="Mixed precision; auto = on for GPUs with compute capability >= 7.0, off on CPU."),
    click.option("--xla", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
                 help="XLA compilation (jit_compile); auto = on with GPUs, off on CPU (slower there)."),
    click.option("--strategy", type=click.Choice(["auto", "default", "mirrored", "multiworker"]),
                 default="auto", show_default=True,
                 help="tf.distribute strategy; auto = mirrored with several GPUs, multiworker when "
                      "TF_CONFIG names several workers. --batch-size is global across replicas."),
)
"""``--mixed-precision``, ``--xla`` and ``--strategy`` (GPU and multi-device switches)."""


def parse_cache(value: str) -> bool | str:
    """``--cache memory|none|PATH`` -> True / False / a file path prefix."""
    return {"memory": True, "none": False}.get(value, value)
