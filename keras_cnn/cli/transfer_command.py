"""``kcnn transfer`` (stage 1: new head on a frozen base) and ``kcnn finetune`` (stage 2)."""

from __future__ import annotations

import click

from keras_cnn.cli import options
from keras_cnn.cli.common import (debug_option, import_tensorflow_quietly, json_option, overwrite_option, run_command,
                                  test_result)
from keras_cnn.errors import UserError
from keras_cnn.messages import frozen_random_base_warning
from keras_cnn.progress import warn
from keras_cnn.runs import RunDirectory


def _render(result):
    click.echo(f"{result['base']} [{result['stage']}]: {test_result(result)}; trainable "
               f"{result['trainable_params']:,} of {result['total_params']:,} parameters; {result['epochs']} epochs in "
               f"{result['seconds']:.0f} s; run in {result['run']}")


@click.command()
@click.option("--base", required=True,
              help="A keras.applications base (resnet50, mobilenet_v3_small, efficientnet_b0, convnext_tiny ...; "
                   "`kcnn models` lists all 40), keras_hub:PRESET_OR_DIR for a keras-hub preset (a Kaggle handle "
                   "or a local preset folder), or hub:URL_OR_DIR for a TF Hub module (a tfhub.dev / Kaggle URL, "
                   "or a local SavedModel folder).")
@options.images(required=True)
@options.split(shown_default="split --images into RUN/split.csv")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Run directory [default: runs/BASE-TIMESTAMP]: config.json, labels.txt, history.csv, "
                   "model.keras (best), training.png, logs/, metrics.json. Re-running into it resumes.")
@options.transfer_model_options()
@options.training_options("10", "32", "1e-3", "adam")
@options.seed()
@options.recipe_options()
@options.augment()
@options.cache_features()
@options.api()
@options.regularization_options()
@options.image_folder_options()
@options.data_edit_options()
@options.multi_label_options()
@options.execution_options(shown_default="auto")
@overwrite_option
@json_option
@debug_option
def transfer(base, out_dir, overwrite, as_json, **option_values):
    """Stage 1: train a new head on a frozen pretrained base.

    The base runs in inference mode with its weights frozen; the head is global average
    pooling, optional Dense layers, dropout and the classifier. The preprocessing the
    base's weights expect is part of the model, so it takes raw images. Follow with
    `kcnn finetune --run RUN`.

    \b
    Example:
      kcnn transfer --base efficientnet_b0 --images photos/ --out runs/effnet
      kcnn transfer --base efficientnet_b0 --split split.csv --images data/ --out runs/effnet
    """
    values = options.config_values(option_values)
    if values["model"]["weights"] == "none":
        warn(frozen_random_base_warning(base))
    import_tensorflow_quietly()
    from keras_cnn.config import DataConfig, ModelConfig, RunConfig, TrainingConfig

    config = RunConfig(command="transfer", model=ModelConfig(kind="transfer", name=base, **values["model"]),
                       data=DataConfig(**values["data"], channels=3), training=TrainingConfig(**values["training"]))

    def work():
        from keras_cnn.train.two_stage import train_head

        return train_head(config, out_dir, overwrite=overwrite)

    run_command(as_json, work, _render)


@click.command()
@click.option("--run", "run_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="A stage-1 run directory from `kcnn transfer`.")
@options.unfreeze_from()
@options.train_bn()
@options.base_dropout()
@options.training_options("5", "stage 1's", "the base's, 1e-5", "adam")
@options.recipe_options()
@options.lr_mult()
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Write stage 2 into a copy of the run here instead of updating RUN's model.keras, "
                   "history.csv, training.png and metrics.json.")
@options.execution_options(shown_default="stage 1's")
@options.cache_frozen()
@overwrite_option
@json_option
@debug_option
def finetune(run_dir, out_dir, overwrite, as_json, **option_values):
    """Stage 2: unfreeze the base from a layer on and train at a low learning rate.

    Reads the base, data and head from the stage-1 RUN. The named layer and every later
    layer of the base become trainable; BatchNorm layers stay frozen unless --train-bn, and
    frozen layers always run in inference mode.
    The model is recompiled; the best model (validation loss over both stages) is kept.

    \b
    Examples:
      kcnn finetune --run runs/effnet --unfreeze-from block7a
      kcnn finetune --run runs/inception --unfreeze-from mixed8 --optimizer sgd --learning-rate 1e-4
    """
    values = options.config_values(option_values)
    _warn_if_random_base_stays_frozen(run_dir, values["finetune"]["unfreeze_from"])
    import_tensorflow_quietly()
    from keras_cnn.config import FineTuneConfig, TrainingConfig

    config = FineTuneConfig(**values["finetune"], training=TrainingConfig(**values["training"]))

    def work():
        from keras_cnn.train.two_stage import fine_tune_run

        return fine_tune_run(config, run_dir, out_dir, overwrite=overwrite)

    run_command(as_json, work, _render)


def _warn_if_random_base_stays_frozen(run_dir: str, unfreeze_from: str | None) -> None:
    """A stage-1 run with random base weights keeps its layers before ``unfreeze_from`` useless."""
    if unfreeze_from == "all":
        return
    try:
        model = RunDirectory(run_dir).read_config().get("model", {})
    except (UserError, OSError, ValueError):
        return  # the fine-tune itself reports a broken run
    if model.get("weights") == "none":
        boundary = f"before {unfreeze_from}" if unfreeze_from else "below the default unfreeze point"
        warn(frozen_random_base_warning(model.get("name", "the base"), frozen=f"frozen layers {boundary}"))
