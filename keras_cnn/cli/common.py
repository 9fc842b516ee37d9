"""Options and output helpers shared by the ``kcnn`` commands.

A command parses its options, calls one API function inside :func:`run_command`, and
prints the result: a human-readable rendering, or with ``--json`` exactly one JSON object
on stdout (every command, the same contract).  While the work runs, stdout is redirected
to stderr so Keras progress bars and logs never mix with the result; how progress looks
(live bars, plain lines, nothing with ``--quiet``) is ``keras_cnn.progress``'s job.
"""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any, Callable

import click

from keras_cnn.cli import QUIET_HELP, enable_debug, enable_quiet
from keras_cnn.progress import say
from keras_cnn.quiet import import_tensorflow_quietly
from keras_cnn.runs import to_jsonable

json_option = click.option(
    "--json", "as_json", is_flag=True,
    help="Print the result as one JSON object on stdout (progress and logs go to stderr).",
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


debug_option = option_group(
    click.option("--quiet", "-q", is_flag=True, expose_value=False, is_eager=True, callback=enable_quiet,
                 help=QUIET_HELP),
    click.option("--debug", is_flag=True, expose_value=False, is_eager=True, callback=enable_debug,
                 help="Show the full traceback on errors."),
)
"""``--quiet`` and ``--debug``, which every command takes (under this one name every command imports)."""


def training_options(defaults_note: str = "the architecture's reference recipe") -> Callable:
    """Options every training command shares: epochs, batch size, learning rate, seed, and the recipe options."""
    return option_group(
        click.option("--epochs", type=click.IntRange(min=1), default=None,
                     help=f"Number of epochs [default: {defaults_note}]."),
        click.option("--batch-size", type=click.IntRange(min=1), default=None,
                     help=f"Batch size (global across replicas) [default: {defaults_note}]."),
        click.option("--learning-rate", type=FiniteFloatRange(min=0, min_open=True), default=None,
                     help=f"Learning rate [default: {defaults_note}]."),
        click.option("--seed", type=int, default=1234, show_default=True,
                     help="Random seed for weights, shuffling and augmentation."),
        recipe_options,
    )


data_source_options = option_group(
    click.option("--dataset", type=click.Choice(["mnist", "cifar10"]), default=None,
                 help="Train on a keras.datasets dataset (downloaded once, or read from --dataset-path)."),
    click.option("--dataset-path", type=click.Path(exists=True), default=None,
                 help="The dataset archive on disk: mnist.npz, cifar-10-python.tar.gz or cifar-10-batches-py/."),
    click.option("--split", "split_csv", type=click.Path(exists=True, dir_okay=False), default=None,
                 help="Split CSV (objectId,value,type) from `kcnn split`."),
    click.option("--images", type=click.Path(exists=True, file_okay=False), default=None,
                 help="Folder of the images named in --split (flat or ab/cd/ sharded)."),
)
"""``--dataset``, ``--dataset-path``, ``--split``, ``--images``: where training images come from."""

base_input_options = option_group(
    click.option("--image-size", type=click.IntRange(min=32), default=None,
                 help="Input side in pixels [default: the base's own, e.g. 224; smaller is faster]."),
    click.option("--weights", default="imagenet", show_default=True,
                 help="imagenet (downloaded once into the Keras cache), none (random), or a weights file PATH."),
)
"""``--image-size``, ``--weights``: the input and the weights of a transfer base."""

transfer_model_options = option_group(
    base_input_options,
    click.option("--head-units", type=click.IntRange(min=1), multiple=True,
                 help="Hidden Dense layer(s) of the head, e.g. --head-units 1024 (repeatable) [default: none]."),
    click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=0.2, show_default=True,
                 help="Dropout before the classifier."),
    click.option("--binary", is_flag=True, help="Two labels: one sigmoid unit instead of a 2-way softmax."),
)
"""``--image-size``, ``--weights``, ``--head-units``, ``--dropout``, ``--binary``: a base + new head."""

recipe_options = option_group(
    click.option("--schedule", type=click.Choice(["constant", "cosine", "onecycle"]), default="constant",
                 show_default=True,
                 help="How the learning rate moves during the stage, batch by batch: constant; cosine (down to "
                      "0 by the last batch); onecycle (fastai's fit_one_cycle: up from rate/25 to the rate during "
                      "the warm-up, then down to nearly 0). --learning-rate is the peak. The default keeps the "
                      "reference recipes as published, and in a measurement on scikit-learn's digits "
                      "(benchmarks/schedules.py) cosine and onecycle did not beat it over 12 epochs; they "
                      "tend to pay off on longer runs."),
    click.option("--warmup-epochs", type=FiniteFloatRange(min=0), default=None,
                 help="Epochs (fractions allowed) over which the rate rises to --learning-rate, batch by batch "
                      "[default: none; onecycle: a quarter of the stage]."),
    click.option("--ema", type=FiniteFloatRange(0, 1, min_open=True, max_open=True), default=None, metavar="DECAY",
                 help="Keep an exponential moving average of the weights with this decay (e.g. 0.999: about "
                      "the last 1,000 batches); validation, the saved model, evaluate and export use the "
                      "averaged weights [default: off]."),
    click.option("--early-stopping", type=click.IntRange(min=1), default=None, metavar="PATIENCE",
                 help="Stop after PATIENCE epochs without a better validation loss; the best epoch's model is "
                      "the one kept [default: train every epoch]."),
)
"""``--schedule``, ``--warmup-epochs``, ``--ema``, ``--early-stopping``: a stage's training recipe."""


image_folder_options = option_group(
    click.option("--class-weight", type=click.Choice(["none", "balanced"]), default="none", show_default=True,
                 help="Weight classes inversely to their frequency in the training part."),
    click.option("--resize-mode", type=click.Choice(["stretch", "pad", "crop"]), default="stretch",
                 show_default=True, help="How image-folder pictures are fitted to the input size."),
    click.option("--cache", default="memory", show_default=True,
                 help="Cache decoded images: memory, none, or a file path prefix (large sets; "
                      "writes PREFIX-<part>-<hash>* files)."),
    click.option("--skip-bad-images", is_flag=True,
                 help="Train on the readable images and list the others in RUN/skipped_images.csv (refused "
                      "if a label would lose all its images in a part)."),
    click.option("--layout", type=click.Choice(["csv", "folders", "split-folders"]), default=None,
                 help="How --images is organised when no --split is given [default: detected]: folders = "
                      "DIR/<label>/…, split-folders = DIR/{train,val,test}/<label>/…, csv = DIR/label.csv."),
    click.option("--allow-label", "allow_labels", multiple=True, metavar="LABEL",
                 help="Accept LABEL (nan, None, null, NA) as a real class (repeatable)."),
)
"""``--class-weight``, ``--resize-mode``, ``--cache``, ``--skip-bad-images``, ``--layout``, ``--allow-label``."""


collection_options = option_group(
    click.option("--images", default=None, metavar="DIR",
                 help="Folder of the files a label CSV names, when they are not named by their SHA-1 "
                      "(any names or relative paths; their bytes are hashed)."),
    click.option("--layout", type=click.Choice(["csv", "folders", "split-folders"]), default=None,
                 help="How the data is organised [default: detected]: csv = label CSV; folders = DIR/<label>/…; "
                      "split-folders = DIR/{train,val,test}/<label>/…."),
    click.option("--id-column", default="objectId", show_default=True, help="Column holding the file names."),
    click.option("--label-column", default="value", show_default=True, help="Column holding the labels."),
    click.option("--allow-label", "allow_labels", multiple=True, metavar="LABEL",
                 help="Accept LABEL (nan, None, null, NA...) as a real class (repeatable); refused by default "
                      "as it usually means missing data."),
)
"""``--images``, ``--layout``, ``--id-column``, ``--label-column``, ``--allow-label``: how labelled images are read."""

split_rule_options = option_group(
    click.option("--test-keys", default="0-24", show_default=True, metavar="FIRST-LAST",
                 help="Keys (last byte of the SHA-1, 0..255) that go to the test part; 'none' for no test part."),
    click.option("--validation-keys", default="25-49", show_default=True, metavar="FIRST-LAST",
                 help="Keys that go to the validation part; 'none' for no validation part."),
    click.option("--balance/--no-balance", default=True, show_default=True,
                 help="Keep the same number of rows per label in test and validation (the rest go to train)."),
)
"""``--test-keys``, ``--validation-keys``, ``--balance``: the SHA-1 split rule."""

data_edit_options = option_group(
    click.option("--exclude", type=click.Path(exists=True, dir_okay=False), default=None, metavar="FILE",
                 help="Leave the images FILE lists out of every part: one path under the image folder per line "
                      "(`kcnn doctor`'s exclude.txt); counted in the 'found' line, recorded in a run's "
                      "config.json. The files themselves are not touched."),
    click.option("--relabel", type=click.Path(exists=True, dir_okay=False), default=None, metavar="CSV",
                 help="New labels for the images an objectId,value CSV names (a label CSV); counted in the "
                      "'found' line, recorded in a run's config.json."),
)
"""``--exclude`` and ``--relabel``: recorded changes to the images a command reads."""


regularization_options = option_group(
    click.option("--label-smoothing", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
                 help="Train on targets (1 - E) x one-hot + E / classes (Inception-v3's label smoothing). "
                      "Off so the reference recipes stay reproducible; 0.1 gave the best test accuracy of "
                      "these options on the digits benchmark (benchmarks/RESULTS.md)."),
    click.option("--mixup", type=click.FloatRange(min=0), default=0.0, show_default=True,
                 help="MixUp: blend image pairs and their labels by Beta(ALPHA, ALPHA) weights; 0 = off "
                      "(timm uses 0.8 for ImageNet, 0.2 is milder)."),
    click.option("--cutmix", type=click.FloatRange(0, 1), default=0.0, show_default=True,
                 help="CutMix: paste a box of another image, labels mixed by its area, Beta(ALPHA, ALPHA); "
                      "0 = off. With --mixup too, each batch gets one of the two."),
    click.option("--randaugment", default=None, metavar="N,M",
                 help="RandAugment: N operations per image (of 11) at magnitude M of 10, e.g. 2,9 (timm's rand-m9)."),
    click.option("--random-erasing", type=click.FloatRange(0, 1), default=0.0, show_default=True,
                 help="Erase one random rectangle (2-33 % of the image) with noise in this fraction of images."),
)
"""Training-part regularisation in the tf.data pipeline (validation and test stay untouched)."""


def regularization_config(options: dict[str, Any]) -> dict[str, Any] | None:
    """Take the regularisation options out of ``options`` (the command's extra keyword
    arguments) and return the ``DataConfig.regularization`` dict (validated), None when all are off."""
    from keras_cnn.data.regularize import RegularizationSpec

    names = ("label_smoothing", "mixup", "cutmix", "randaugment", "random_erasing")
    spec = RegularizationSpec(**{name: options.pop(name) for name in names})
    return None if spec.is_identity else spec.to_dict()


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
    """One line of progress on stderr (on a fresh line; nothing with --quiet)."""
    say(message)


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
