"""``kcnn lr-find``: the learning-rate range test (fastai's lr_find) for train, transfer or finetune."""

from __future__ import annotations

import contextlib

import click

from keras_cnn.cli import options
from keras_cnn.cli.common import FiniteFloatRange, debug_option, import_tensorflow_quietly, json_option, run_command
from keras_cnn.cli.transfer_command import warn_about_random_base
from keras_cnn.messages import frozen_random_base_warning
from keras_cnn.models.applications import check_base_name
from keras_cnn.progress import warn
from keras_cnn.runs import RunLock


def _render(result):
    suggestions = result["suggestions"]
    stopped = " (stopped: the loss diverged)" if result["diverged"] else ""
    if suggestions:
        click.echo(f"[{result['stage']}] {result['optimizer']}: suggested learning rate "
                   f"{suggestions['valley']:.2e} (valley), {suggestions['steepest']:.2e} (steepest) "
                   f"after {result['steps']} steps{stopped}")
    else:
        click.echo(f"[{result['stage']}] {result['optimizer']}: no learning rate suggested after {result['steps']} "
                   f"steps{stopped}: {result['no_suggestion']}")
    written = f"plot: {result['plot']}  table: {result['table']}"
    click.echo(written + (f"  split: {result['split']} (reuse it with --split)" if result.get("split") else ""))


@click.command("lr-find")
@click.option("--architecture", default=None, help="A from-scratch network (see `kcnn models`), as `kcnn train`.")
@click.option("--base", default=None, help="A transfer base, as `kcnn transfer --base`: the head is swept.")
@click.option("--run", "run_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="A stage-1 run from `kcnn transfer`: sweep stage 2 (the base unfrozen from --unfreeze-from).")
@options.unfreeze_from(note="With --run, as `kcnn finetune`.")
@options.train_bn(note="With --run.")
@options.base_dropout(note="With --run.")
@options.data_source_options(split_default="split --images into lr_find_split.csv beside the picture",
                             images_note="Without --split it is split as `kcnn transfer` would split it, into "
                                         "lr_find_split.csv beside the picture.")
@options.data_edit_options()
@options.multi_label_options()
@options.transfer_model_options()
@options.augment(note="During the sweep a head then trains on images, not cached features.")
@options.resize_mode()
@options.cache()
@options.batch_size(shown_default="what the stage would use")
@options.optimizer(shown_default="what the stage would use")
@options.seed()
@click.option("--start-lr", type=FiniteFloatRange(min=0, min_open=True), default=1e-7, show_default=True,
              help="First learning rate of the sweep.")
@click.option("--end-lr", type=FiniteFloatRange(min=0, min_open=True), default=10.0, show_default=True,
              help="Last learning rate of the sweep (it stops earlier when the loss diverges).")
@click.option("--steps", type=click.IntRange(10, 1000), default=100, show_default=True,
              help="Batches in the sweep, one learning rate each (100-300 is usual).")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Picture to write [default: RUN/lr_find.png with --run, else ./lr_find.png]; "
                   "the CSV of the sweep goes beside it, and lr_find_split.csv when --images comes without --split.")
@options.trust_hub
@options.accept_input_changes
@json_option
@debug_option
def lr_find(architecture, base, run_dir, start_lr, end_lr, steps, out, trust_hub, accept_input_changes, as_json,
            **option_values):
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
    values = options.config_values(option_values)
    if (run_dir or values["data"]["dataset"]) and (values["data"]["exclude"] or values["data"]["relabel"]):
        raise UserError("--exclude and --relabel work on image folders (--images [--split]); "
                        "with --run the run's own split is used")
    if base:
        check_base_name(base)  # a misspelt name fails at once, before TensorFlow or any warning
    with contextlib.ExitStack() as holding:
        if run_dir:
            # The run's lock before TensorFlow loads: a second writer is refused at once (--run exists).
            holding.enter_context(RunLock(run_dir, reentrant=True))
        import_tensorflow_quietly()
        from keras_cnn.config import DataConfig, ModelConfig, RunConfig, TrainingConfig

        config = None
        if run_dir:
            warn_about_random_base(run_dir, values["finetune"]["unfreeze_from"], learning_rate=end_lr)
        else:
            if base:
                model = ModelConfig(kind="transfer", name=base, **values["model"])
                if model.weights == "none":
                    warn(frozen_random_base_warning(base))
            else:
                from keras_cnn.models.scratch import get_architecture

                get_architecture(architecture)  # unknown names fail before any work
                model = ModelConfig(kind="scratch", name=architecture)
                values["data"]["image_size"] = None   # a from-scratch network has its own input size
            config = RunConfig(command="lr-find", model=model, data=DataConfig(**values["data"]),
                               training=TrainingConfig(seed=values["training"]["seed"]))

        def work():
            from keras_cnn.train.lr_find import lr_find as find

            return find(config, run_dir=run_dir, **values["finetune"], out=out, start=start_lr, end=end_lr,
                        steps=steps, batch_size=values["training"]["batch_size"],
                        optimizer=values["training"]["optimizer"], trust_hub=trust_hub,
                        accept_input_changes=accept_input_changes)

        run_command(as_json, work, _render)
