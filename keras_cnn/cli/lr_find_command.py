"""``kcnn lr-find``: the learning-rate range test (fastai's lr_find) for train, transfer or finetune."""

from __future__ import annotations

import click

from keras_cnn.cli.common import (FiniteFloatRange, data_edit_options, data_source_options, debug_option,
                                  import_tensorflow_quietly, json_option,
                                  parse_cache, run_command, transfer_model_options)


def _render(result):
    suggestions = result["suggestions"]
    click.echo(f"[{result['stage']}] {result['optimizer']}: suggested learning rate "
               f"{suggestions['valley']:.2e} (valley), {suggestions['steepest']:.2e} (steepest) "
               f"after {result['steps']} steps{' (stopped: the loss diverged)' if result['diverged'] else ''}")
    click.echo(f"plot: {result['plot']}  table: {result['table']}")


@click.command("lr-find")
@click.option("--architecture", default=None, help="A from-scratch network (see `kcnn models`), as `kcnn train`.")
@click.option("--base", default=None, help="A transfer base, as `kcnn transfer --base`: the head is swept.")
@click.option("--run", "run_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="A stage-1 run from `kcnn transfer`: sweep stage 2 (the base unfrozen from --unfreeze-from).")
@click.option("--unfreeze-from", default=None,
              help="With --run: first base layer to train, as `kcnn finetune` [default: the base's own].")
@click.option("--train-bn", is_flag=True, help="With --run: also train BatchNorm layers.")
@data_source_options
@data_edit_options
@transfer_model_options
@click.option("--augment/--no-augment", default=False, show_default=True,
              help="Augment training images during the sweep (a head then trains on images, not cached features).")
@click.option("--resize-mode", type=click.Choice(["stretch", "pad", "crop"]), default="stretch", show_default=True,
              help="How image-folder pictures are fitted to the input size.")
@click.option("--cache", default="memory", show_default=True,
              help="Cache decoded images: memory, none, or a file path prefix (large sets).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Batch size [default: what the stage would use].")
@click.option("--optimizer", type=click.Choice(["adam", "adamw", "rmsprop", "sgd"]), default=None,
              help="Optimizer [default: what the stage would use].")
@click.option("--seed", type=int, default=1234, show_default=True, help="Random seed.")
@click.option("--start-lr", type=FiniteFloatRange(min=0, min_open=True), default=1e-7, show_default=True,
              help="First learning rate of the sweep.")
@click.option("--end-lr", type=FiniteFloatRange(min=0, min_open=True), default=10.0, show_default=True,
              help="Last learning rate of the sweep (it stops earlier when the loss diverges).")
@click.option("--steps", type=click.IntRange(10, 1000), default=100, show_default=True,
              help="Batches in the sweep, one learning rate each (100-300 is usual).")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Picture to write [default: RUN/lr_find.png with --run, else ./lr_find.png]; "
                   "the CSV of the sweep goes beside it, and lr_find_split.csv when --images comes without --split.")
@json_option
@debug_option
def lr_find(architecture, base, run_dir, unfreeze_from, train_bn, dataset, dataset_path, split_csv, images,
            exclude, relabel, image_size, weights, head_units, dropout, binary, augment, resize_mode, cache,
            batch_size, optimizer, seed, start_lr, end_lr, steps, out, as_json):
    """Find a learning rate: train briefly while it grows from --start-lr to --end-lr.

    The loss is recorded at every step (one batch each, smoothed) and the sweep stops
    when it diverges. Two suggestions are printed, as fastai names them: valley (where
    the loss has made half of its longest fall; usually the safer pick) and steepest (where the
    loss falls fastest). lr_find.png shows the curve. No run's weights change: the model
    is restored after the sweep and the run's model.keras is only read.

    \b
    One of:
      --architecture NAME  + the data options of `kcnn train`     (from scratch)
      --base NAME          + the data options of `kcnn transfer`  (stage 1: the head)
      --run RUN [--unfreeze-from LAYER]                            (stage 2: fine-tuning)

    \b
    Examples:
      kcnn lr-find --architecture cifar10_net --dataset cifar10
      kcnn lr-find --base efficientnet_b0 --images photos/   (splits photos/ as transfer would)
      kcnn lr-find --run runs/effnet --unfreeze-from block6a --json
    """
    from keras_cnn.errors import UserError

    if sum(bool(choice) for choice in (architecture, base, run_dir)) != 1:
        raise UserError("give exactly one of --architecture NAME, --base NAME or --run RUN")
    if (run_dir or dataset) and (exclude or relabel):
        raise UserError("--exclude and --relabel work on image folders (--images [--split]); "
                        "with --run the run's own split is used")
    import_tensorflow_quietly()
    from keras_cnn.config import DataConfig, ModelConfig, RunConfig, TrainingConfig

    config = None
    if not run_dir:
        if base:
            model = ModelConfig(kind="transfer", name=base, weights=weights, head_units=list(head_units),
                                dropout=dropout, binary=binary)
        else:
            from keras_cnn.models.scratch import get_architecture

            get_architecture(architecture)  # unknown names fail before any work
            model = ModelConfig(kind="scratch", name=architecture)
        config = RunConfig(
            command="lr-find", model=model,
            data=DataConfig(dataset=dataset, dataset_path=dataset_path, split=split_csv, images=images,
                            exclude=exclude, relabel=relabel,
                            image_size=(image_size, image_size) if image_size and base else None,
                            resize_mode=resize_mode, augment=augment,
                            cache=parse_cache(cache)),
            training=TrainingConfig(seed=seed))

    def work():
        from keras_cnn.train.lr_find import lr_find as find

        return find(config, run_dir=run_dir, unfreeze_from=unfreeze_from, train_bn=train_bn, out=out,
                    start=start_lr, end=end_lr, steps=steps, batch_size=batch_size, optimizer=optimizer)

    run_command(as_json, work, _render)
