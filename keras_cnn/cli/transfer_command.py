"""``kcnn transfer`` (stage 1: new head on a frozen base) and ``kcnn finetune`` (stage 2)."""

from __future__ import annotations

import click

from keras_cnn.cli.common import (FiniteFloatRange, data_edit_options, debug_option, execution_options,
                                  image_folder_options,
                                  import_tensorflow_quietly, json_option, overwrite_option, parse_cache, recipe_options,
                                  regularization_config, regularization_options,
                                  run_command, training_options)
from keras_cnn.errors import UserError
from keras_cnn.messages import frozen_random_base_warning
from keras_cnn.progress import warn
from keras_cnn.runs import RunDirectory


def _render(result):
    accuracy = result.get("test_accuracy")
    shown = f"test accuracy {accuracy:.4f}" if accuracy is not None else "no test part"
    click.echo(f"{result['base']} [{result['stage']}]: {shown}; trainable {result['trainable_params']:,} of "
               f"{result['total_params']:,} parameters; {result['epochs']} epochs in {result['seconds']:.0f} s; "
               f"run in {result['run']}")


@click.command()
@click.option("--base", required=True,
              help="A keras.applications base (resnet50, mobilenet_v3_small, efficientnet_b0, convnext_tiny ...; "
                   "`kcnn models` lists all 40), keras_hub:PRESET_OR_DIR for a keras-hub preset (a Kaggle handle "
                   "or a local preset folder), or hub:URL_OR_DIR for a TF Hub module (a tfhub.dev / Kaggle URL, "
                   "or a local SavedModel folder).")
@click.option("--images", required=True, type=click.Path(exists=True, file_okay=False),
              help="Image folder: a folder per class (DIR/<label>/…), a train/val/test tree, or DIR/label.csv; "
                   "without --split it is split by SHA-1 into RUN/split.csv. With --split: the folder it names.")
@click.option("--split", "split_csv", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Split CSV (objectId,value,type) from `kcnn split` [default: split --images in the run].")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Run directory [default: runs/BASE-TIMESTAMP]: config.json, labels.txt, history.csv, "
                   "model.keras (best), training.png, logs/, metrics.json. Re-running into it resumes.")
@click.option("--image-size", type=click.IntRange(min=32), default=None,
              help="Input side in pixels [default: the base's own, e.g. 224; smaller is faster].")
@click.option("--weights", default="imagenet", show_default=True,
              help="imagenet (downloaded once into the Keras cache), none (random), or a weights file PATH.")
@click.option("--head-units", type=click.IntRange(min=1), multiple=True,
              help="Hidden Dense layer(s) of the head, e.g. --head-units 1024 (repeatable) [default: none].")
@click.option("--dropout", type=FiniteFloatRange(0, 1, max_open=True), default=0.2, show_default=True,
              help="Dropout before the classifier.")
@click.option("--binary", is_flag=True, help="Two labels: one sigmoid unit instead of a 2-way softmax.")
@training_options("10 epochs, batch 32, Adam 1e-3")
@click.option("--optimizer", type=click.Choice(["adam", "adamw", "rmsprop", "sgd"]), default=None,
              help="Optimizer for the head [default: adam].")
@click.option("--augment/--no-augment", default=False, show_default=True,
              help="Augment training images (flips, small rotations, shifts, zoom) in the tf.data pipeline.")
@click.option("--cache-features/--no-cache-features", default=None,
              help="Run the frozen base once and train the head on its features [default: on unless --augment "
                   "or a regularisation option is given].")
@click.option("--api", type=click.Choice(["functional", "sequential"]), default="functional", show_default=True,
              help="Keras API used to assemble base and head (same layers either way).")
@regularization_options
@image_folder_options
@data_edit_options
@execution_options
@overwrite_option
@json_option
@debug_option
def transfer(base, images, split_csv, out_dir, image_size, weights, head_units, dropout, binary, epochs,
             batch_size, learning_rate, seed, optimizer, augment, cache_features, class_weight, api, resize_mode,
             cache, skip_bad_images, layout, allow_labels, exclude, relabel, mixed_precision, xla, strategy, overwrite,
             as_json, **recipe):
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
    if weights == "none":
        warn(frozen_random_base_warning(base))
    import_tensorflow_quietly()
    from keras_cnn.config import DataConfig, ModelConfig, RunConfig, TrainingConfig

    regularization = regularization_config(recipe)  # takes its options out of recipe
    config = RunConfig(
        command="transfer",
        model=ModelConfig(kind="transfer", name=base, api=api, weights=weights, head_units=list(head_units),
                          dropout=dropout, binary=binary),
        data=DataConfig(split=split_csv, images=images, image_size=(image_size, image_size) if image_size else None,
                        channels=3, resize_mode=resize_mode, augment=augment,
                        cache=parse_cache(cache), skip_bad_images=skip_bad_images, layout=layout,
                        allow_labels=list(allow_labels), exclude=exclude, relabel=relabel,
                        regularization=regularization),
        training=TrainingConfig(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                                optimizer=optimizer, seed=seed, class_weight=class_weight,
                                cache_features=cache_features, mixed_precision=mixed_precision, xla=xla,
                                strategy=strategy, **recipe),
    )

    def work():
        from keras_cnn.train.two_stage import train_head

        return train_head(config, out_dir, overwrite=overwrite)

    run_command(as_json, work, _render)


@click.command()
@click.option("--run", "run_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="A stage-1 run directory from `kcnn transfer`.")
@click.option("--unfreeze-from", default=None,
              help="First base layer to train: a layer name (mixed8), a block prefix (block7a), or all "
                   "[default: the base's own, see `kcnn models`].")
@click.option("--train-bn", is_flag=True, help="Also train BatchNorm layers (frozen by default, as advised).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Fine-tuning epochs [default: 5].")
@click.option("--learning-rate", type=FiniteFloatRange(min=0, min_open=True), default=None,
              help="Learning rate [default: the base's, 1e-5].")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Batch size [default: stage 1's].")
@click.option("--optimizer", type=click.Choice(["adam", "adamw", "rmsprop", "sgd"]), default=None,
              help="Optimizer [default: adam]; sgd uses momentum 0.9 like the Keras InceptionV3 recipe.")
@recipe_options
@click.option("--lr-mult", type=FiniteFloatRange(min=1), default=None, metavar="K",
              help="Discriminative learning rates (fastai's lr_mult): the head trains at --learning-rate, the "
                   "first unfrozen block of the base at --learning-rate/K, the blocks between at rates growing "
                   "geometrically [default: 1, one rate for all]. `kcnn lr-find --run RUN` helps pick the rate.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Write stage 2 into a copy of the run here instead of updating RUN's model.keras, "
                   "history.csv, training.png and metrics.json.")
@click.option("--mixed-precision", type=click.Choice(["auto", "on", "off"]), default=None,
              help="Mixed precision (auto, on, off) [default: stage 1's].")
@click.option("--xla", type=click.Choice(["auto", "on", "off"]), default=None,
              help="XLA compilation (auto, on, off) [default: stage 1's].")
@click.option("--strategy", type=click.Choice(["auto", "default", "mirrored", "multiworker"]), default=None,
              help="tf.distribute strategy [default: stage 1's].")
@click.option("--cache-frozen/--no-cache-frozen", default=None,
              help="Run the frozen layers below --unfreeze-from once per image and train only the layers "
                   "above on their cached output; same results, several times faster per epoch "
                   "[default: on unless stage 1 augmented; where the boundary is not a single tensor the "
                   "whole model trains and a line says why].")
@overwrite_option
@json_option
@debug_option
def finetune(run_dir, unfreeze_from, train_bn, epochs, learning_rate, batch_size, optimizer, out_dir,
             mixed_precision, xla, strategy, cache_frozen, overwrite, as_json, lr_mult, **recipe):
    """Stage 2: unfreeze the base from a layer on and train at a low learning rate.

    Reads the base, data and head from the stage-1 RUN. The named layer and every later
    layer of the base become trainable; BatchNorm layers stay frozen unless --train-bn.
    The model is recompiled; the best model (validation loss over both stages) is kept.

    \b
    Examples:
      kcnn finetune --run runs/effnet --unfreeze-from block7a
      kcnn finetune --run runs/inception --unfreeze-from mixed8 --optimizer sgd --learning-rate 1e-4
    """
    _warn_if_random_base_stays_frozen(run_dir, unfreeze_from)
    import_tensorflow_quietly()
    from keras_cnn.config import FineTuneConfig

    config = FineTuneConfig(unfreeze_from=unfreeze_from, train_bn=train_bn, epochs=epochs,
                            learning_rate=learning_rate, optimizer=optimizer, batch_size=batch_size,
                            mixed_precision=mixed_precision, xla=xla, strategy=strategy, lr_mult=lr_mult,
                            cache_frozen=cache_frozen, **recipe)

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
