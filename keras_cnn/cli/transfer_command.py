"""``kcnn transfer`` (stage 1: new head on a frozen base) and ``kcnn finetune`` (stage 2)."""

from __future__ import annotations

import click

from keras_cnn.cli import options
from keras_cnn.cli.common import (debug_option, echo_calibration, holding_run, import_tensorflow_quietly, json_option,
                                  overwrite_option, resumable, resumable_run, run_command, test_result)
from keras_cnn.errors import UserError
from keras_cnn.messages import RANDOM_BASE_RATE, frozen_random_base_warning, slow_random_base_warning
from keras_cnn.models.applications import check_base_name
from keras_cnn.progress import warn
from keras_cnn.runs import RunDirectory


def _render(result):
    click.echo(f"{result['base']} [{result['stage']}]: {test_result(result)}; trainable "
               f"{result['trainable_params']:,} of {result['total_params']:,} parameters; {result['epochs']} epochs in "
               f"{result['seconds']:.0f} s; run in {result['run']}")
    echo_calibration(result)


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
@options.calibrate()
@options.augment()
@options.cache_features()
@options.api()
@options.regularization_options()
@options.image_folder_options()
@options.data_edit_options()
@options.multi_label_options()
@options.execution_options(shown_default="auto")
@overwrite_option
@options.accept_input_changes
@json_option
@debug_option
def transfer(base, out_dir, overwrite, accept_input_changes, as_json, **option_values):
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
    check_base_name(base)  # a misspelt name fails at once, before TensorFlow, a run folder or any warning
    out_dir = resumable_run(out_dir, base)
    with holding_run(out_dir, overwrite, values["training"]["strategy"], values["data"]):
        import_tensorflow_quietly()
        from keras_cnn.config import DataConfig, ModelConfig, RunConfig, TrainingConfig

        if values["model"]["weights"] == "none":
            warn(frozen_random_base_warning(base))
        config = RunConfig(command="transfer", model=ModelConfig(kind="transfer", name=base, **values["model"]),
                           data=DataConfig(**values["data"], channels=3), training=TrainingConfig(**values["training"]))

        def work():
            from keras_cnn.train.two_stage import train_head

            return train_head(config, out_dir, overwrite=overwrite, accept_input_changes=accept_input_changes)

        run_command(as_json, work, _render)


@click.command()
@click.option("--run", "run_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="A stage-1 run directory from `kcnn transfer`.")
@options.unfreeze_from()
@options.train_bn()
@options.base_dropout()
@options.training_options("5", "stage 1's", "the base's, 1e-5", "adam")
@options.recipe_options()
@options.calibrate()
@options.lr_mult()
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Write stage 2 into a copy of the run here instead of updating RUN's model.keras, "
                   "history.csv, training.png and metrics.json.")
@options.execution_options(shown_default="stage 1's")
@options.cache_frozen()
@options.trust_hub
@overwrite_option
@options.accept_input_changes
@json_option
@debug_option
def finetune(run_dir, out_dir, overwrite, trust_hub, accept_input_changes, as_json, **option_values):
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
    with holding_run(out_dir or run_dir, overwrite, values["training"]["strategy"]):
        import_tensorflow_quietly()
        warn_about_random_base(run_dir, values["finetune"]["unfreeze_from"], values["training"]["learning_rate"])
        from keras_cnn.config import FineTuneConfig, TrainingConfig

        config = FineTuneConfig(**values["finetune"], training=TrainingConfig(**values["training"]))
        resumable()

        def work():
            from keras_cnn.train.two_stage import fine_tune_run

            return fine_tune_run(config, run_dir, out_dir, overwrite=overwrite, trust_hub=trust_hub,
                                 accept_input_changes=accept_input_changes)

        run_command(as_json, work, _render)


def warn_about_random_base(run_dir: str, unfreeze_from: str | None, learning_rate: float | None) -> None:
    """Warn when stage 2 of a run whose base has random weights cannot do much.

    Layers kept frozen pass on nothing useful; layers trained at a fine-tuning rate (made
    for pretrained weights) barely move.  Said by ``kcnn finetune`` and ``kcnn lr-find --run``.
    """
    from keras_cnn.models.bases import build_base, get_base_spec, is_hub_name
    from keras_cnn.models.transfer import UNFREEZE_ALL, find_boundary

    try:
        config = RunDirectory(run_dir).read_config()
    except (UserError, OSError, ValueError):
        return  # the fine-tune itself reports a broken run
    model = config.get("model", {})
    if model.get("weights") != "none":
        return
    name = model.get("name", "the base")
    if str(unfreeze_from).lower() != UNFREEZE_ALL:
        if unfreeze_from and not is_hub_name(name):
            # A misspelt layer is refused (with the closest names) before a warning names it: the base,
            # built without weights in a second or two, says which layers it has (a TF Hub module is
            # opened only by the fine-tune, with the run's --trust-hub).
            find_boundary(build_base(name, (config.get("data") or {}).get("image_size"), weights="none"),
                          unfreeze_from)
        boundary = f"before {unfreeze_from}" if unfreeze_from else "below the default unfreeze point"
        warn(frozen_random_base_warning(name, frozen=f"frozen layers {boundary}"))
        return
    if learning_rate is None:
        try:
            learning_rate = get_base_spec(name).finetune_learning_rate
        except UserError:
            return
    if learning_rate < RANDOM_BASE_RATE / 10:
        warn(slow_random_base_warning(name, learning_rate))
