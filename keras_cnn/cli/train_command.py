"""``kcnn train``: a from-scratch network on MNIST / CIFAR-10 or on a split CSV + image folder."""

from __future__ import annotations

import click

from keras_cnn.cli import options
from keras_cnn.cli.common import (debug_option, echo_calibration, holding_run, import_tensorflow_quietly, json_option,
                                  overwrite_option, resumable_run, run_command, test_result)

RECIPE = "the architecture's reference recipe"


@click.command()
@click.argument("architecture")
@options.data_source_options(split_default="split --images into RUN/split.csv")
@options.training_options(RECIPE, RECIPE, RECIPE, RECIPE)
@options.seed()
@options.recipe_options()
@options.calibrate()
@options.augment()
@options.augment_engine()
@options.api()
@options.validation_split()
@options.regularization_options()
@options.image_folder_options()
@options.data_edit_options()
@options.multi_label_options()
@options.execution_options(shown_default="auto")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Run directory [default: runs/ARCHITECTURE-TIMESTAMP] (its files: see above). "
                   "Re-running into it resumes.")
@overwrite_option
@options.accept_input_changes
@json_option
@debug_option
def train(architecture, out_dir, overwrite, accept_input_changes, as_json, **option_values):
    """Train from-scratch ARCHITECTURE (see `kcnn models`).

    \b
    Data, one of:
      --dataset mnist|cifar10 [--dataset-path FILE]   20 % of the training images validate
      --images DIR                                     a folder per class, split by SHA-1 in the run
      --split SPLIT_CSV --images DIR                   train / validation / test parts as given
    Defaults reproduce the reference recipe of the architecture (optimizer, learning rate,
    batch size, epochs). The run directory gets config.json, labels.txt, history.csv,
    model.keras (best by validation loss), training.png, logs/ and metrics.json (test part).

    \b
    Examples:
      kcnn train lenet --dataset mnist --dataset-path mnist.npz
      kcnn train cifar10_deep_net --dataset cifar10 --augment
      kcnn train lenet --images digits/          # digits/0/*.png … digits/9/*.png
      kcnn train cifar10_net --split split.csv --images data/
      kcnn train lenet --images tagged/ --multi-label   # a picture may sit in several label folders
    """
    from keras_cnn.errors import UserError

    values = options.config_values(option_values)
    if values["data"]["dataset_path"] and not values["data"]["dataset"]:
        raise UserError("--dataset-path needs --dataset mnist|cifar10 to say what the file holds")
    out_dir = resumable_run(out_dir, architecture)
    with holding_run(out_dir, overwrite, values["training"]["strategy"], values["data"]):
        import_tensorflow_quietly()
        from keras_cnn.config import DataConfig, ModelConfig, RunConfig, TrainingConfig
        from keras_cnn.models.scratch import get_architecture

        get_architecture(architecture)  # unknown names fail before any work
        config = RunConfig(command="train", model=ModelConfig(kind="scratch", name=architecture, **values["model"]),
                           data=DataConfig(**values["data"]), training=TrainingConfig(**values["training"]))

        def work():
            from keras_cnn.train.fit import train_scratch

            return train_scratch(config, out_dir, overwrite=overwrite, accept_input_changes=accept_input_changes)

        run_command(as_json, work, _render)


def _render(result):
    click.echo(f"{result['architecture']}: {test_result(result)} after {result['epochs']} epochs "
               f"({result['seconds']:.0f} s); run in {result['run']}")
    echo_calibration(result)
