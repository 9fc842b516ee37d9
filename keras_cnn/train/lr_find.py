"""``kcnn lr-find``: the learning-rate range test on exactly what a stage would train.

The stage is built by the function its training command uses (``scratch_stage``,
``head_stage``, ``finetune_stage``), through the runner's :func:`build_stage`, without a
run folder.  Three cases, as the training commands have them:
- a from-scratch architecture (the options of ``kcnn train``);
- the head on a frozen base (the options of ``kcnn transfer``; on cached base features,
  as stage 1 trains, unless augmenting);
- stage 2 of a run (``run_dir`` + ``unfreeze_from``): the run's model with the base
  unfrozen from that layer.
The run's files are never written except the picture and the table of the sweep (and,
for ``--images`` without ``--split``, the split it made, beside them) and, with ``--run``,
the run's input record when an image's stamp (not its bytes) changed or a change is
accepted; the weights in memory are put back after the sweep (see ``lr_sweep``).
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path
from typing import Any

from keras_cnn.config import FineTuneConfig, RunConfig, TrainingConfig
from keras_cnn.data.collection import needs_split_file, split_images
from keras_cnn.errors import UserError
from keras_cnn.io import atomic_write_text, check_output_path
from keras_cnn.models.bases import get_base_spec
from keras_cnn.models.weights import resolve_weights
from keras_cnn.progress import say
from keras_cnn.run_data import check_run_inputs, run_labels
from keras_cnn.runs import RunDirectory, RunLock
from keras_cnn.train.lr_sweep import (DEFAULT_END, DEFAULT_START, DEFAULT_STEPS, LearningRateSweep, NoSuggestion,
                                      find_learning_rate, sweep_rates)
from keras_cnn.train.stage import StageContext, StageSpec, build_stage
from keras_cnn.train.stage_data import as_model_targets

PLOT_NAME = "lr_find.png"
# Written beside the picture when --images comes without --split.
SPLIT_NAME = "lr_find_split.csv"


def lr_find(config: RunConfig | None = None, run_dir: str | Path | None = None, unfreeze_from: str | None = None,
            train_bn: bool = False, base_dropout: bool = False, out: str | Path | None = None,
            start: float = DEFAULT_START, end: float = DEFAULT_END, steps: int = DEFAULT_STEPS,
            batch_size: int | None = None, optimizer: str | None = None, trust_hub: bool = False,
            accept_input_changes: bool = False) -> dict[str, Any]:
    """Run the range test and write ``lr_find.png`` and ``lr_find.csv``; returns the suggestions.

    ``config`` (command ``train`` or ``transfer``) for a new model, or ``run_dir`` for
    stage 2 of that run.  ``out``: the picture's path [default: ``RUN/lr_find.png`` with a
    run, else ``./lr_find.png``]; the table goes beside it (and ``lr_find_split.csv``, the
    result's ``split``, when ``config`` has images but no split).  A curve that supports no
    suggestion (flat, within its noise, diverged early) gives ``suggestions == {}`` and the
    reason in ``no_suggestion``; the picture and table are written either way.
    ``trust_hub``: the run's model may load the TF Hub module the run records as its base.
    With ``run_dir`` the run's images and split are first checked against its input record
    (changes refused unless ``accept_input_changes``, which records them in the run).
    """
    import keras

    if (config is None) == (run_dir is None):
        raise UserError("lr-find needs either the data and model options of train / transfer, or --run RUN")
    sweep_rates(start, end, steps)   # every option is checked before a file is written or an image read
    # The run's lock: its input record and RUN/lr_find.png are written while no other process writes the run.
    if run_dir is not None:
        RunDirectory(run_dir).require()
    with RunLock(run_dir) if run_dir is not None else contextlib.nullcontext():
        left_out: set[str] = set()
        written_split = None
        if run_dir is not None:
            stage = _finetune_stage(run_dir, unfreeze_from, train_bn, base_dropout, batch_size, optimizer, trust_hub)
            run = RunDirectory(run_dir)
            run.check_ownership()
            run.claim()
            run_labels(run, stage.config)
            left_out = check_run_inputs(run, stage.config, accept=accept_input_changes,
                                        command="kcnn lr-find --run")
            default_out = Path(run_dir) / PLOT_NAME
        else:
            if unfreeze_from:
                raise UserError("--unfreeze-from needs --run RUN (a stage-1 run to fine-tune)")
            config = replace(config, training=replace(config.training,
                                                      batch_size=batch_size or config.training.batch_size,
                                                      optimizer=optimizer or config.training.optimizer))
            default_out = Path(PLOT_NAME)
            if config.model.kind == "transfer":
                # Weights that cannot be had stop the sweep before the folder is split into a file.
                resolve_weights(get_base_spec(config.model.name), config.model.weights)
            stage = _first_stage(config)
        plot = Path(out) if out is not None else default_out
        check_output_path(plot, option="--out")
        if run_dir is None:
            if needs_split_file(stage.config.data):
                # --images without --split (or a split that --exclude / --relabel change): split as
                # train/transfer would, into a file beside the picture, so the sweep's data can be looked
                # at and reused (--split).  Only now: building the stage checked every option.
                written_split = plot.with_name(SPLIT_NAME)
                stage.config = replace(stage.config, data=split_images(stage.config.data, written_split,
                                                                       list_prefix=str(plot.with_name("lr_find_")),
                                                                       offers_skipping=False))
            keras.utils.set_random_seed(stage.training.seed)
        context = build_stage(StageContext(stage, run=None, execution=None, left_out=left_out))
        model, dataset, cleanup = _sweep_inputs(context)

        def progress(step: int, rate: float, smoothed: float) -> None:
            if (step + 1) % max(1, steps // 10) == 0:
                say(f"[lr-find] step {step + 1}/{steps}: learning rate {rate:.2e}, smoothed loss {smoothed:.4f}")

        keras.utils.set_random_seed(stage.training.seed)
        try:
            sweep = find_learning_rate(model, as_model_targets(dataset, context.single_sigmoid), context.loss,
                                       stage.training.optimizer, start=start, end=end, steps=steps, progress=progress)
        finally:
            if cleanup is not None:
                cleanup()
        try:
            suggestions, no_suggestion = sweep.suggestions(), None
        except NoSuggestion as reason:
            suggestions, no_suggestion = {}, str(reason)
        table = plot.with_suffix(".csv")
        write_sweep(sweep, suggestions, plot, table, no_suggestion=no_suggestion is not None)
        result = {"stage": stage.name, "optimizer": stage.training.optimizer, "suggestions": suggestions,
                  "steps": len(sweep.losses), "planned_steps": steps, "diverged": sweep.diverged, "start": start,
                  "end": end, "plot": str(plot), "table": str(table),
                  "split": str(written_split) if written_split else None}
        if no_suggestion is not None:
            result["no_suggestion"] = no_suggestion
        return result


def _first_stage(config: RunConfig) -> StageSpec:
    """The stage ``kcnn train`` or ``kcnn transfer`` would run with ``config``."""
    from keras_cnn.train.fit import scratch_stage
    from keras_cnn.train.two_stage import head_stage

    if config.model.kind == "scratch":
        return scratch_stage(config)
    if not config.data.images:
        raise UserError("lr-find for a transfer head needs --images DIR [--split SPLIT_CSV]")
    return head_stage(config)


def _finetune_stage(run_dir, unfreeze_from, train_bn, base_dropout, batch_size, optimizer, trust_hub) -> StageSpec:
    """The stage ``kcnn finetune`` would run on ``run_dir`` (whose files are only read)."""
    from keras_cnn.train.two_stage import finetune_stage

    run = RunDirectory(run_dir).require()
    kind = RunConfig.from_dict(run.read_config()).model.kind
    if kind != "transfer":
        raise UserError(f"{run_dir} is a {kind or 'non-transfer'} run; lr-find --run needs a "
                        "`kcnn transfer` run (for a from-scratch model give its training options instead)")
    return finetune_stage(run, FineTuneConfig(unfreeze_from=unfreeze_from, train_bn=train_bn, base_dropout=base_dropout,
                                              training=TrainingConfig(batch_size=batch_size, optimizer=optimizer)),
                          trust_hub=trust_hub)


def _sweep_inputs(context: StageContext):
    """(model, train batches, cleanup) to sweep: what the stage fits.

    The head trains on the frozen base's cached features when stage 1 does, so that is what
    is swept.  Stage 2 is swept as a whole model on images: caching its frozen layers would
    cost a pass over every training image for a sweep of a hundred batches.
    """
    from keras_cnn.train.two_stage import HEAD_STAGE

    spec = context.spec
    if spec.name == HEAD_STAGE and spec.fit_inputs is not None:
        context.data = replace(context.data, validation=None)   # the sweep needs only the train part
        inputs = spec.fit_inputs(context)
        return inputs.model, inputs.train, inputs.cleanup
    return context.model, context.data.train, None


def write_sweep(sweep: LearningRateSweep, suggestions: dict[str, float], plot: Path, table: Path,
                no_suggestion: bool = False) -> None:
    """The picture and the CSV (learning_rate, loss, smoothed_loss) of a sweep (``no_suggestion``: the
    picture's title says none was made)."""
    from keras_cnn.report import plot_learning_rate_sweep

    rows = ["learning_rate,loss,smoothed_loss"]
    rows += [f"{rate:.6e},{loss:.6g},{smoothed:.6g}"
             for rate, loss, smoothed in zip(sweep.learning_rates, sweep.losses, sweep.smoothed)]
    atomic_write_text(table, "\n".join(rows) + "\n")
    plot_learning_rate_sweep(sweep.learning_rates, sweep.losses, sweep.smoothed, suggestions, plot,
                             no_suggestion=no_suggestion)
