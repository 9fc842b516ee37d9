"""``kcnn train``: a from-scratch network on MNIST / CIFAR-10 or on a split CSV + image folder."""

from __future__ import annotations

import click

from keras_cnn.cli.common import (FiniteFloatRange, data_edit_options, debug_option, execution_options,
                                  image_folder_options,
                                  import_tensorflow_quietly, json_option, overwrite_option, parse_cache,
                                  regularization_config, regularization_options, run_command, training_options)


@click.command()
@click.argument("architecture")
@click.option("--dataset", type=click.Choice(["mnist", "cifar10"]), default=None,
              help="Train on a keras.datasets dataset (downloaded once, or read from --dataset-path).")
@click.option("--dataset-path", type=click.Path(exists=True), default=None,
              help="The dataset archive on disk: mnist.npz, cifar-10-python.tar.gz or cifar-10-batches-py/.")
@click.option("--split", "split_csv", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Split CSV (objectId,value,type) from `kcnn split`.")
@click.option("--images", type=click.Path(exists=True, file_okay=False), default=None,
              help="Image folder: a folder per class (DIR/<label>/…), a train/val/test tree, or DIR/label.csv; "
                   "without --split it is split by SHA-1 into RUN/split.csv. With --split: the folder it names.")
@training_options()
@click.option("--optimizer", type=click.Choice(["adam", "adamw", "rmsprop", "sgd"]), default=None,
              help="Optimizer [default: the architecture's reference recipe].")
@click.option("--augment/--no-augment", default=False, show_default=True,
              help="Augment training images (the Keras book's CIFAR-10 recipe: shifts 0.1, horizontal flip).")
@click.option("--augment-engine", type=click.Choice(["layers", "legacy"]), default="layers", show_default=True,
              help="layers = Keras preprocessing layers in tf.data; legacy = ImageDataGenerator (--dataset only).")
@click.option("--api", type=click.Choice(["functional", "sequential"]), default="functional", show_default=True,
              help="Keras API used to build the network (same layers either way).")
@click.option("--validation-split", type=FiniteFloatRange(0, 1, max_open=True), default=0.2, show_default=True,
              help="Fraction of the --dataset training images held out for validation (the last ones).")
@regularization_options
@image_folder_options
@data_edit_options
@execution_options
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Run directory [default: runs/ARCHITECTURE-TIMESTAMP] (its files: see above). "
                   "Re-running into it resumes.")
@overwrite_option
@json_option
@debug_option
def train(architecture, dataset, dataset_path, split_csv, images, epochs, batch_size, learning_rate, seed,
          optimizer, augment, augment_engine, api, validation_split, class_weight, resize_mode, cache,
          skip_bad_images, layout, allow_labels, exclude, relabel, mixed_precision, xla, strategy, out_dir, overwrite,
          as_json, **recipe):
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
    """
    import_tensorflow_quietly()
    from keras_cnn.config import DataConfig, ModelConfig, RunConfig, TrainingConfig
    from keras_cnn.errors import UserError
    from keras_cnn.models.scratch import get_architecture

    get_architecture(architecture)  # unknown names fail before any work
    if dataset_path and not dataset:
        raise UserError("--dataset-path needs --dataset mnist|cifar10 to say what the file holds")
    regularization = regularization_config(recipe)  # takes its options out of recipe
    config = RunConfig(
        command="train",
        model=ModelConfig(kind="scratch", name=architecture, api=api),
        data=DataConfig(dataset=dataset, dataset_path=dataset_path, split=split_csv, images=images,
                        resize_mode=resize_mode, augment=augment, augment_engine=augment_engine,
                        cache=parse_cache(cache), skip_bad_images=skip_bad_images, layout=layout,
                        allow_labels=list(allow_labels), exclude=exclude, relabel=relabel,
                        regularization=regularization,
                        validation_split=validation_split),
        training=TrainingConfig(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                                optimizer=optimizer, seed=seed, class_weight=class_weight,
                                mixed_precision=mixed_precision, xla=xla, strategy=strategy, **recipe),
    )

    def work():
        from keras_cnn.train.fit import train_scratch

        return train_scratch(config, out_dir, overwrite=overwrite)

    def render(result):
        accuracy = result.get("test_accuracy")
        shown = f"test accuracy {accuracy:.4f}" if accuracy is not None else "no test part"
        click.echo(f"{result['architecture']}: {shown} after {result['epochs']} epochs "
                   f"({result['seconds']:.0f} s); run in {result['run']}")

    run_command(as_json, work, render)
