"""The stage runner: every training stage of a run goes through :func:`run_stage`.

A stage (``train`` for a from-scratch net, ``head`` and ``finetune`` for transfer
learning) is declared as a :class:`StageSpec`: its name, the run config it records, its
training options, the options that must match to resume it, and a few hooks (data,
model, and optionally loss, optimizer, what ``fit`` trains on, extra callbacks).  The
runner does the rest, the same way for every stage:

1. take the run's lock (a second process fails at once, naming the holder's pid), refuse
   a folder that mixes with the inputs or holds files kcnn did not make
   (:meth:`~keras_cnn.runs.RunDirectory.check_ownership`), record it as a run and remove
   the temporary files a killed write left;
2. read the run state: a finished stage with the same options (and its model file) is not
   run again, other options are refused (naming them) unless ``overwrite``, a stage that
   needs another (``finetune`` after ``head``) needs it finished, and stages that depend on
   this one are refused or, with ``overwrite``, removed with everything that was theirs —
   only once every check passed, the model of a stage that builds it without data included
   and a later stage's inputs checked against the run's record (step 3).  A run started
   over wholly (its first stage overwritten) is set aside instead, and put back if the new
   stage fails before it starts (bad images, a model that cannot be built);
3. check the run's inputs against its record (each image's SHA-1 and stamp, the split's; made
   at the first start): changed, missing or added images, an edited split, and a labels.txt
   that no longer agrees with config.json are refused unless accepted
   (``accept_input_changes``); then data, model, loss, optimizer; config.json and labels.txt;
   compile;
4. fit with kill-safe checkpoints (resuming from the last committed epoch), stopping on a
   NaN or infinite loss;
5. test the best model, fit its temperature on the validation part (a multi-label model: choose
   each label's threshold there, RUN/thresholds.json), record metrics, draw the curves, mark the
   stage finished.

A failed command leaves no run it started without progress in it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import keras

from keras_cnn.config import RunConfig, TrainingConfig
from keras_cnn.data.collection import split_into_run
from keras_cnn.data.files import bounded_list_message, full_list_path
from keras_cnn.data.regularize import soft_label_loss, uses_soft_labels
from keras_cnn.errors import UserError
from keras_cnn.messages import MAX_MESSAGE
from keras_cnn.progress import format_seconds, keras_verbose, say
from keras_cnn.io import INPUT_CHANGES, atomic_path, check_output_path, to_jsonable
from keras_cnn.models.loading import model_file_problem
from keras_cnn.run_calibration import (PartPredictions, check_finite, describe_calibration, fit_record,
                                       multi_label_answers, predict_part, summary_of, write_calibration)
from keras_cnn.run_data import check_run_inputs, run_labels
from keras_cnn.runs import (EXECUTION_OPTIONS, RunDirectory, RunLock, RunState, check_run_placement, differing_options,
                            flatten_options, input_files)
from keras_cnn.thresholds import write_thresholds
from keras_cnn.train.callbacks import (EpochDraws, HistoryRecorder, NanGuard, RunProgress, StageCheckpoint,
                                      read_history, write_history)
from keras_cnn.train.discriminative import layer_rate_factors
from keras_cnn.train.recipe import check_recipe, early_stopping_callbacks, ema_callbacks, stage_optimizer


@dataclass
class FitInputs:
    """What ``fit`` trains: a model (the whole one, or only its top) and its datasets.

    ``cleanup`` runs after the fit (e.g. to delete cached tensors).  Whatever is fitted,
    the stage's whole model is what gets saved and tested.
    """

    model: keras.Model
    train: Any
    validation: Any
    cleanup: Callable[[], None] | None = None


@dataclass
class StageContext:
    """What a hook sees: the spec, the run, the execution, and the data and model once made."""

    spec: "StageSpec"
    run: RunDirectory | None                 # None when a stage is only built, not run (lr-find)
    execution: Any
    start_model: keras.Model | None = None   # the previous stage's best model, when still in memory
    data: Any = None
    model: keras.Model | None = None
    loss: Any = None
    single_sigmoid: bool = False
    multi_label: bool = False                # multi-hot targets, one sigmoid per label
    fit_notes: dict[str, Any] = field(default_factory=dict)   # what the fit adds to the stage's metrics
    left_out: set[str] = field(default_factory=set)   # images the run's input record leaves out of every part

    @property
    def training(self) -> TrainingConfig:
        return self.spec.training

    @property
    def skipped_record(self) -> Path | None:
        """Where the images left out are listed (RUN/skipped_images.csv); None outside a run (lr-find)."""
        return self.run.skipped_images_path if self.run is not None else None

    def work_folder(self, name: str) -> Path | None:
        """A folder of the run for the stage's large temporary files; None outside a run."""
        return self.run.root / name if self.run is not None else None

    def class_weight(self) -> dict[int, float] | None:
        from keras_cnn.train.stage_data import balanced_class_weights

        if self.training.class_weight != "balanced" or self.multi_label:
            return None   # multi-label: per-label positive weights inside the loss (multi_label_loss)
        return balanced_class_weights(self.data.train_counts)


@dataclass
class StageSpec:
    """One stage of a run, declared by the training routine that runs it.

    ``config``: the run's resolved config (config.json; labels, classes, loss and the
    execution plan are added by the runner).  ``training``: this stage's training options
    (epochs, optimizer, learning rate, batch size, seed, execution).  ``options``: what
    defines the stage's result; a resume or re-run must match them (execution options
    aside).  ``requires``: the stage that must have finished first.  ``record``: entries for
    ``config.extra["stages"][name]``.  ``keep_model``: keep this stage's best model under
    ``RUN/stages/`` for a later stage to start from.  ``option_defaults``: the options a
    default config gives; an option missing from an older run's record counts as its default.
    ``model_before_data``: ``build_model`` needs no data, so the runner builds the model
    before ``--overwrite`` removes anything (a wrong ``--unfreeze-from`` leaves the run as it was).

    Hooks (each gets the :class:`StageContext`): ``prepare_data`` -> ``PreparedData``;
    ``build_model`` -> the uncompiled whole model (called inside the strategy scope);
    ``loss`` -> a Keras loss (default: binary cross-entropy for one sigmoid unit, else
    sparse categorical); ``optimizer`` -> a ``keras.optimizers.Optimizer`` (default: the
    kcnn optimizer named by ``training.optimizer`` at ``training.learning_rate``);
    ``fit_inputs`` -> :class:`FitInputs` (default: the whole model on the data's train and
    validation datasets); ``callbacks`` -> extra Keras callbacks, run after the runner's.
    """

    name: str
    config: RunConfig
    training: TrainingConfig
    options: dict[str, Any]
    prepare_data: Callable[[StageContext], Any]
    build_model: Callable[[StageContext], keras.Model]
    requires: str | None = None
    record: dict[str, Any] = field(default_factory=dict)
    option_defaults: dict[str, Any] = field(default_factory=dict)
    keep_model: bool = False
    model_before_data: bool = False
    loss: Callable[[StageContext], Any] | None = None
    optimizer: Callable[[StageContext], Any] | None = None
    fit_inputs: Callable[[StageContext], FitInputs] | None = None
    callbacks: Callable[[StageContext], list] | None = None


@dataclass
class StageOutcome:
    """The stage's summary, and the best model, data and execution it leaves in memory (``None`` when skipped)."""

    summary: dict[str, Any]
    model: keras.Model | None = None
    data: Any = None
    execution: Any = None


def run_stage(spec: StageSpec, out_dir: str | os.PathLike, overwrite: bool = False, execution=None,
              data=None, start_model: keras.Model | None = None, source_run: str | os.PathLike | None = None,
              accept_input_changes: bool = False) -> StageOutcome:
    """Run ``spec`` into the run folder ``out_dir``; see the module docstring for the steps.

    ``execution``: an already started ``Execution`` (``fine_tune`` shares one between its
    stages), else one is started from ``spec.training``.  ``data``: already prepared data,
    used instead of ``spec.prepare_data``.  ``start_model``: the previous stage's best model
    in memory, for ``spec.build_model`` to start from (``context.start_model``).
    ``source_run``: a run to start from (a copy of it is made in ``out_dir`` when
    ``out_dir`` is another folder).  ``accept_input_changes``: go on with images or a split
    that changed since the run recorded them, and record that (``--accept-input-changes``).
    """
    from keras_cnn.train.execution import start_execution

    out_dir = Path(out_dir)
    check_output_path(out_dir, directory=True, option="the run folder")
    check_recipe(spec.training)   # bad recipe values fail before the run is touched
    keras.utils.set_random_seed(spec.training.seed)
    execution = execution or start_execution(spec.training)
    created = not out_dir.exists()
    with execution.run_directory(out_dir) as run:
        failed = False
        with RunLock(run.root):
            _check_run_folder(run, spec, overwrite, out_dir)
            new_run = run.recorded_entries() is None
            state = aside = None
            try:
                run.claim()
                run.remove_stale_temporaries()
                if source_run is not None:
                    _copy_source_run(Path(source_run), run, spec)
                state = RunState.read(run, overwrite)
                context = StageContext(spec, run, execution, start_model)
                plan = _check_state(run, state, spec, overwrite)
                if isinstance(plan, dict):
                    # A kill right after the stage was marked finished can leave its checkpoints.
                    _remove_backup(run, spec.name)
                    return StageOutcome(plan)
                if spec.model_before_data:
                    _build_model(context)   # every check that needs the model, before anything is removed
                if spec.requires and data is None:
                    # A later stage reads the run's own split: its inputs are checked before anything goes.
                    _check_inputs(context, accept_input_changes, new_run, split_itself=False)
                if state.damaged or (plan and set(plan) >= set(state.stages)):
                    # The whole run starts over: its files wait aside until the new stage has passed
                    # every check (its images, its model) and started.
                    aside = run.set_aside()
                    state.stages.clear()
                else:
                    _discard_stages(run, state, plan)
                return _run_checked_stage(context, state, data, accept_input_changes, new_run, aside)
            except BaseException:
                failed = True
                if aside is not None and aside.exists():
                    run.put_back(aside)
                elif new_run and not _has_progress(run, spec.name, state):
                    run.forget()
                raise
        if failed and created:
            _remove_if_empty(run.root)


def _check_run_folder(run: RunDirectory, spec: StageSpec, overwrite: bool, out_dir: Path) -> None:
    """Step 1's refusals, before anything is written: inputs inside the run or around it, files not kcnn's."""
    data = spec.config.data
    # A later stage reads the run's own split; only a first stage's inputs are the user's files.
    files = {} if spec.requires else input_files(asdict(data), spec.config.model.weights)
    check_run_placement(out_dir, images=data.images, files=files)
    run.check_ownership(overwrite)


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()


def _has_progress(run: RunDirectory, stage: str, state: RunState | None) -> bool:
    """Whether this stage has something a re-run would reuse: a committed epoch, or it finished."""
    if (run.backup_dir / stage / StageCheckpoint.LATEST).exists():
        return True
    return state is not None and state.status(stage) == "finished"


def _copy_source_run(source: Path, run: RunDirectory, spec: StageSpec) -> None:
    """Start ``run`` as a copy of ``source`` up to ``spec.requires`` (``kcnn finetune --out``).

    Only what kcnn wrote in ``source`` is copied (not its checkpoints, logs or evaluations).
    """
    if source.resolve() == run.root.resolve() or run.state_path.exists() or run.config_path.exists():
        return
    source_run = RunDirectory(source)
    with RunLock(source):
        for name in sorted((source_run.recorded_entries() or set()) - {"backup", "eval", "logs"}):
            path = source / name
            if path.is_dir() and not path.is_symlink():
                shutil.copytree(path, run.root / name)
            elif path.is_file():
                shutil.copy2(path, run.root / name)
        copied = RunState.read(run)
        later = [name for name in copied.stages if name != spec.requires]
        _discard_stages(run, copied, later)


def _check_state(run: RunDirectory, state: RunState, spec: StageSpec, overwrite: bool) -> dict[str, Any] | list[str]:
    """Apply the run-state rules: the stored summary when the stage already finished, else the
    stages ``--overwrite`` removes before it runs (nothing is removed here)."""
    if state.damaged:
        if spec.requires:
            raise UserError(f"{run.state_path} cannot be read, so nothing is known of stage '{spec.requires}': "
                            f"run it again with --overwrite before '{spec.name}'")
        return []
    if spec.requires and state.status(spec.requires) != "finished":
        raise UserError(f"{run.root}: stage '{spec.requires}' has not finished "
                        f"({_epochs_done(run, spec.requires)}); finish it before '{spec.name}'")
    if spec.requires:
        # The model the stage starts from: the one kept when its stage ended, else the run's.
        kept = run.stage_model_path(spec.requires)
        start = kept if kept.exists() else run.model_path
        problem = model_file_problem(start)
        if problem is not None:
            raise UserError(f"stage '{spec.requires}' of {run.root} is not finished: its model file {start.name} "
                            f"{problem}; train it again (its command with --overwrite) before '{spec.name}'")
    others = [name for name in state.stages if name not in (spec.name, spec.requires)]
    if others and not overwrite:
        raise UserError(f"{run.root} holds stage(s) {', '.join(others)}, which running '{spec.name}' would "
                        "invalidate; pass --overwrite to remove them (or use another --out)")
    entry = state.stages.get(spec.name)
    if entry is not None and not overwrite:
        recorded = entry.get("options")
        if recorded is None:
            raise UserError(f"{run.root} was written by an older kcnn without run state; pass --overwrite to run "
                            f"'{spec.name}' again (or use another --out)")
        differences = differing_options(_comparable(recorded), _comparable(spec.options),
                                        _comparable(spec.option_defaults))
        if differences:
            verb = "finished" if entry.get("status") == "finished" else "was started"
            raise UserError(_changed_options_message(run, f"stage '{spec.name}' {verb} with other options "
                                                          "(--overwrite starts it over, or use another --out)",
                                                     differences))
        if entry.get("status") == "finished":
            problem = model_file_problem(run.model_path)
            if problem is not None:
                raise UserError(f"stage '{spec.name}' of {run.root} is not finished: its model file {problem}; "
                                "run the same command with --overwrite to train it again")
            say(f"stage '{spec.name}' of {run.root} already finished; nothing to do (--overwrite starts it over)")
            return {**entry.get("result", {}), "run": str(run.root)}
    if overwrite:
        return others + ([spec.name] if entry is not None else [])
    return []


def _changed_options_message(run: RunDirectory, refusal: str, differences: list[str]) -> str:
    """``RUN: REFUSAL: a, b and 3 more (full list: FILE)`` in one whole line; a run folder path too
    long to leave room for the rest is left out (the command line names it)."""
    listed = full_list_path("changed_options.txt")
    message = bounded_list_message(lambda items: f"{run.root}: {refusal}: {items}", differences, listed)
    if len(message) > MAX_MESSAGE:
        message = bounded_list_message(lambda items: f"the run's {refusal}: {items}", differences, listed)
    return message


# Options that act after the fit (the model's weights do not depend on them): a stage does not
# record them in state.json, so a finished stage is found finished whatever they are now (`kcnn
# calibrate` calibrates a stage that was not) and the records of older runs stay as they were.
AFTER_FIT_FIELDS = ("calibrate",)                       # of TrainingConfig
AFTER_FIT_OPTIONS = tuple(f"training.{name}" for name in AFTER_FIT_FIELDS)


def recorded_options(options: dict[str, Any]) -> dict[str, Any]:
    """What a stage records of its options (state.json): all but :data:`AFTER_FIT_OPTIONS`, as JSON values."""
    recorded = to_jsonable(options)
    for path in AFTER_FIT_OPTIONS:
        section, name = path.split(".", 1)
        if isinstance(recorded.get(section), dict):
            recorded[section].pop(name, None)
    return recorded


def _comparable(options: dict[str, Any]) -> dict[str, Any]:
    """The recorded options without those that only say how the stage executes."""
    return {key: value for key, value in flatten_options(recorded_options(options)).items()
            if key not in EXECUTION_OPTIONS}


def _epochs_done(run: RunDirectory, stage: str) -> str:
    rows = [row for row in read_history(run.history_path) if row.get("stage") == stage]
    return f"{len(rows)} epoch(s) recorded" if rows else "no epoch recorded"


def _discard_stages(run: RunDirectory, state: RunState, stages: list[str]) -> None:
    """Remove what belonged to ``stages``: their state, history rows, checkpoints, logs, metrics, eval/.

    The model goes back to the best model of the stage before them, when one was kept;
    removing the first stage of a run empties the run (but for its lock).
    """
    if not stages:
        return
    remaining = [name for name in state.stages if name not in stages]
    if not remaining:
        run.clear()
        state.stages.clear()
        return
    for name in stages:
        for folder in (run.backup_dir / name, run.tensorboard_dir / name):
            shutil.rmtree(folder, ignore_errors=True)
        run.stage_model_path(name).unlink(missing_ok=True)
    shutil.rmtree(run.eval_dir, ignore_errors=True)
    rows = read_history(run.history_path)
    if rows:
        write_history(run.history_path, [row for row in rows if row.get("stage") not in stages])
    metrics = run.read_metrics()
    if metrics:
        kept = {name: value for name, value in metrics.get("stages", {}).items() if name not in stages}
        metrics["stages"] = kept
        last = kept.get(remaining[-1], {})
        for key in ("test", "parameters"):
            if key in last:
                metrics[key] = last[key]
            else:
                metrics.pop(key, None)
        run.write_metrics(metrics)
        # The model goes back to that stage's, and so do its calibration and (multi-label runs) thresholds.
        write_calibration(run, last.get("calibration"))
        write_thresholds(run, last.get("thresholds"))
    if run.config_path.exists():
        config = run.read_config()
        recorded = config.get("extra", {}).get("stages", {})
        for name in stages:
            recorded.pop(name, None)
        run.write_config(config)
    previous = run.stage_model_path(remaining[-1])
    if previous.exists():
        _link_or_copy(previous, run.model_path)
    for name in stages:
        state.stages.pop(name, None)
    state.write()
    plot_history(run)


def _link_or_copy(source: Path, target: Path) -> None:
    """Make ``target`` hold ``source``'s bytes, atomically: a hard link when possible, else a copy."""
    with atomic_path(target) as temporary:
        temporary.unlink()
        try:
            os.link(source, temporary)
        except OSError:
            shutil.copyfile(source, temporary)


def _check_inputs(context: StageContext, accept: bool, new_run: bool, split_itself: bool) -> None:
    """The run's images and split against its input record, and a later stage's labels.txt against config.json.

    In a run folder made by this command the list of a refusal goes to the temp folder: the
    folder is removed with the refusal.
    """
    spec, run = context.spec, context.run
    if spec.requires and run.config_path.exists():
        run_labels(run, spec.config)
    context.left_out = check_run_inputs(run, spec.config, accept=accept, command=f"stage '{spec.name}'",
                                        list_path=full_list_path(INPUT_CHANGES) if new_run else None,
                                        split_itself=split_itself)


def _run_checked_stage(context: StageContext, state: RunState, data, accept_input_changes: bool,
                       new_run: bool, aside: Path | None = None) -> StageOutcome:
    """Steps 3-5 of the module docstring, once the run state allows the stage.

    ``aside``: the files of the run this stage starts over (``--overwrite``), removed once the
    stage has started (the caller puts them back if it fails before).
    """
    from keras_cnn.models.parameters import parameter_counts

    spec, run = context.spec, context.run
    if data is None:
        split_itself = bool(spec.config.data.images and not spec.config.data.split)
        if not spec.requires and not (run.root / "split.csv").exists():
            run.remove_lists()   # the images are read anew: lists of an earlier, failed reading would mislead
        # --images without --split: the folder is split into RUN/split.csv, which config.json then names.
        spec.config = replace(spec.config, data=split_into_run(spec.config.data, run.root))
        if not spec.requires:   # a later stage's were checked before the run was touched
            _check_inputs(context, accept_input_changes, new_run, split_itself)
    # Data handed over in memory was checked by the stage that prepared it.
    build_stage(context, data)
    counts = parameter_counts(context.model)
    _write_config(context, counts)
    state.start(spec.name, recorded_options(spec.options))
    run.drop_aside(aside)
    # A new model is coming: an evaluation, a calibration or thresholds of the old one no longer describe the run.
    shutil.rmtree(run.eval_dir, ignore_errors=True)
    write_calibration(run, None)
    write_thresholds(run, None)
    run.stage_model_path(spec.name).unlink(missing_ok=True)

    checkpoint = StageCheckpoint(run.backup_dir / spec.name, run.model_path, monitor=_monitor(context.data),
                                 whole_model=None, initial_best=_best_before(run, spec))
    committed = StageCheckpoint.recover(checkpoint.backup_dir, run.model_path)
    done = int(committed["epoch"]) if committed else 0
    fit_seconds = 0.0
    if done >= spec.training.epochs and not StageCheckpoint.needs_assembly(checkpoint.backup_dir):
        say(f"{run.root}: all {spec.training.epochs} epochs of '{spec.name}' were trained before it stopped; "
            "testing the best model")
    else:
        if done:
            say(f"resuming {run.root} at epoch {done + 1} of {spec.training.epochs} ('{spec.name}')")
        started = time.perf_counter()
        _fit(context, checkpoint)
        fit_seconds = time.perf_counter() - started
    multiworker = context.execution.multiworker
    # The model in memory is the best one when the last epoch was the best; under a multi-worker
    # strategy it would predict on every worker's batch at once, so the test uses a plain copy.
    best = context.model if checkpoint.saved_last_epoch and not multiworker else _load_best(context)
    summary = {**_finish(context, best, counts), "fit_seconds": round(fit_seconds, 2)}
    if spec.keep_model:
        _link_or_copy(run.model_path, run.stage_model_path(spec.name))
    state.finish(spec.name, summary)
    _remove_backup(run, spec.name)
    return StageOutcome(summary, None if multiworker else best, context.data, context.execution)


def build_stage(context: StageContext, data=None) -> StageContext:
    """The stage's data (``data`` when given, else its ``prepare_data``), model (in the execution's
    scope, when there is one; unless already built) and loss, into ``context``; run_stage and
    lr-find build stages so."""
    spec = context.spec
    context.data = data if data is not None else spec.prepare_data(context)
    if context.model is None:
        _build_model(context)
    context.multi_label = bool(getattr(context.data, "multi_label", False))
    context.single_sigmoid = context.model.output_shape[-1] == 1 and not context.multi_label
    if context.multi_label:
        context.loss = multi_label_loss(context)
        return context
    context.loss = spec.loss(context) if spec.loss else default_loss(context.single_sigmoid)
    if uses_soft_labels(spec.config.data.regularization):
        # MixUp, CutMix and label smoothing give class probabilities: categorical cross-entropy.
        context.loss = soft_label_loss(context.loss)
    return context


def _build_model(context: StageContext) -> None:
    with context.execution.scope() if context.execution is not None else contextlib.nullcontext():
        context.model = context.spec.build_model(context)


def multi_label_loss(context: StageContext):
    """Binary cross-entropy over the labels (soft targets too); with ``--class-weight balanced`` each
    label's positive targets weigh negatives / positives of that label in the training part."""
    from keras_cnn.losses import PositiveWeightedBinaryCrossentropy
    from keras_cnn.train.stage_data import balanced_positive_weights

    if context.training.class_weight != "balanced":
        return "binary_crossentropy"
    weights = balanced_positive_weights(context.data.train_counts, context.data.sizes["train"])
    say(f"[{context.spec.name}] --class-weight balanced: each label's positive targets weigh its negatives / "
        f"positives ({min(weights):.3g} to {max(weights):.3g})")
    return PositiveWeightedBinaryCrossentropy(weights)


def _remove_backup(run: RunDirectory, stage: str) -> None:
    """Delete a finished stage's checkpoints (and ``backup/`` once empty)."""
    shutil.rmtree(run.backup_dir / stage, ignore_errors=True)
    if run.backup_dir.is_dir() and not any(run.backup_dir.iterdir()):
        run.backup_dir.rmdir()


def default_loss(single_sigmoid: bool) -> str:
    """Binary cross-entropy for one sigmoid unit, else sparse categorical cross-entropy (class indices)."""
    return "binary_crossentropy" if single_sigmoid else "sparse_categorical_crossentropy"


def _monitor(data) -> str:
    # Without a validation part the training loss decides which model is best.
    return "val_loss" if data.validation is not None else "loss"


def _best_before(run: RunDirectory, spec: StageSpec) -> float | None:
    """The best validation loss of the stage this one follows: the saved model to beat."""
    if not spec.requires:
        return None
    values = [float(row["val_loss"]) for row in read_history(run.history_path)
              if row.get("stage") == spec.requires and row.get("val_loss") not in (None, "")]
    return min(values) if values else None


def _write_config(context: StageContext, counts: dict[str, int]) -> None:
    """config.json (the spec's config, what the data and model resolved, this stage's record) and labels.txt."""
    spec, run, data = context.spec, context.run, context.data
    recorded = RunConfig.from_dict(run.read_config()) if spec.requires and run.config_path.exists() else None
    config = spec.config
    stages = dict((recorded or config).extra.get("stages", {}))
    stages[spec.name] = {**spec.record, "parameters": counts, "execution": context.execution.plan.to_dict()}
    if recorded is not None:
        # A later stage keeps the run's config and adds its own record.
        config = replace(recorded, extra={**recorded.extra, "stages": stages})
    else:
        config = replace(config, labels=list(data.labels),
                         model=replace(config.model, num_classes=len(data.labels)),
                         training=replace(config.training, loss=context.loss if isinstance(context.loss, str)
                                          else getattr(context.loss, "name", str(context.loss))),
                         extra={**config.extra, "execution": context.execution.plan.to_dict(), "sizes": data.sizes,
                                "skipped_images": len(data.skipped), "stages": stages})
        run.write_labels(data.labels)
    run.write_config(config.to_dict())


def _fit(context: StageContext, checkpoint: StageCheckpoint) -> None:
    """Compile and fit (or the multi-worker loop) with the runner's callbacks, then the spec's."""
    from keras_cnn.train.stage_data import as_model_targets

    spec, run, execution = context.spec, context.run, context.execution
    training = spec.training
    inputs = spec.fit_inputs(context) if spec.fit_inputs else FitInputs(context.model, context.data.train,
                                                                          context.data.validation)
    with execution.scope():
        optimizer = spec.optimizer(context) if spec.optimizer else _stage_optimizer(context, inputs)
        soft_labels = uses_soft_labels(spec.config.data.regularization)
        if inputs.model is not context.model:
            # The whole model is compiled too, so its saved file records a usable training setup.
            execution.compile(context.model, training.optimizer, training.learning_rate, context.loss,
                              soft_labels=soft_labels, multi_label=context.multi_label)
        execution.compile(inputs.model, optimizer, training.learning_rate, context.loss, soft_labels=soft_labels,
                          multi_label=context.multi_label)
    checkpoint.whole_model = context.model if inputs.model is not context.model else None
    history = HistoryRecorder(run.history_path, spec.name)
    early_stopping = early_stopping_callbacks(
        training, checkpoint.monitor, spec.name,
        earlier_values=lambda: [float(row[checkpoint.monitor]) if row.get(checkpoint.monitor) not in (None, "")
                                else None for row in history.stage_rows()])
    callbacks = [
        history,        # before the checkpoint: an epoch's row exists when the epoch commits
        # --ema: the averaged weights are swapped in before the checkpoint saves (and judges) the model.
        *ema_callbacks(training),
        checkpoint,     # an epoch whose loss is not a number is not committed; NanGuard then stops the stage
        NanGuard(_nan_advice(spec)),
        RunProgress(spec.name, training.epochs),
        keras.callbacks.TensorBoard(str(run.tensorboard_dir / spec.name), write_graph=False),
        *early_stopping,
        *(spec.callbacks(context) if spec.callbacks else []),
    ]
    train = as_model_targets(inputs.train, context.single_sigmoid)
    validation = as_model_targets(inputs.validation, context.single_sigmoid)
    try:
        if execution.multiworker:
            _fit_multiworker(inputs.model, context, callbacks)
        else:
            # The datasets shuffle themselves (tf.data or the legacy generator); fit must not.
            inputs.model.fit(train, validation_data=validation, epochs=spec.training.epochs,
                             callbacks=[EpochDraws(), *callbacks],
                             class_weight=context.class_weight(), shuffle=False, verbose=keras_verbose())
    except BaseException:
        checkpoint.assemble()   # a part trained on cached inputs: a NaN stop or Ctrl-C keeps the best so far
        raise
    finally:
        if inputs.cleanup is not None:
            inputs.cleanup()
    for callback in early_stopping:
        if callback.stopped_epoch is not None:
            context.fit_notes["early_stopping"] = {"stopped_after_epoch": callback.stopped_epoch,
                                                   "best_epoch": callback.best_epoch, "patience": callback.patience}


def _nan_advice(spec: StageSpec) -> str:
    """What to change when the loss stops being a number: the rate, and any mixing option in use."""
    rate = spec.training.learning_rate
    advice = f"--learning-rate {rate:g} is likely too high: try a lower one" if rate else "try a lower --learning-rate"
    mixing = {name: value for name, value in (spec.config.data.regularization or {}).items()
              if name in ("mixup", "cutmix") and value}
    if mixing:
        advice += ", or check " + " and ".join(f"--{name} {value:g}" for name, value in mixing.items())
    return advice


def _overflow_advice(spec: StageSpec) -> str:
    """What to do when the best model's outputs are not numbers although its loss was."""
    return f"{_nan_advice(spec)} (--overwrite trains the stage again)"


def _stage_optimizer(context: StageContext, inputs: FitInputs) -> keras.optimizers.Optimizer:
    """The optimizer the training options describe: rate, schedule over the stage's steps, EMA, --lr-mult."""
    from keras_cnn.train.schedules import steps_per_epoch

    training = context.training
    if context.execution.multiworker and context.data.per_worker is not None:
        steps = context.data.per_worker.steps_per_epoch
    else:
        steps = steps_per_epoch(inputs.train, context.data.sizes.get("train"), training.batch_size)
    rate_factors = None
    if training.lr_mult and training.lr_mult != 1:
        rate_factors, blocks = layer_rate_factors(inputs.model, training.lr_mult)
        context.fit_notes["learning_rate_factors"] = blocks
        say(f"[{context.spec.name}] learning rate x factor per block: "
            + ", ".join(f"{block['block']} {block['factor']:.3g}" for block in blocks))
    return stage_optimizer(training, training.epochs, steps, rate_factors)


def _fit_multiworker(model: keras.Model, context: StageContext, callbacks: list) -> None:
    """``model.fit`` fails under MultiWorkerMirroredStrategy in Keras 3; run the custom loop instead."""
    from keras_cnn.train.stage_data import as_model_targets
    from keras_cnn.train.distribute import fit_multiworker

    per_worker, execution = context.data.per_worker, context.execution
    if per_worker is None:
        raise UserError("this data cannot be sharded across workers (the legacy ImageDataGenerator engine "
                        "or cached features); use --augment-engine layers / --no-cache-features")
    if context.training.class_weight == "balanced" and not context.multi_label:
        raise UserError("--class-weight balanced is not supported with --strategy multiworker")
    sigmoid = context.single_sigmoid
    validation_fn = per_worker.validation
    fit_multiworker(
        lambda: model,
        lambda input_context: as_model_targets(per_worker.train(input_context), sigmoid),
        epochs=context.training.epochs, steps_per_epoch=per_worker.steps_per_epoch, strategy=execution.strategy,
        validation_dataset_fn=(lambda input_context: as_model_targets(validation_fn(input_context), sigmoid))
        if validation_fn else None,
        validation_steps=per_worker.validation_steps, jit_compile=execution.jit_compile(model),
        callbacks=callbacks, verbose=keras_verbose(),
    )


def _load_best(context: StageContext) -> keras.Model:
    """The saved best model (of this stage, or of the stage before when this one did not beat it)."""
    from keras_cnn.models.loading import hub_base_of, load_model

    # The model this stage saved: its hub module, if any, is the run's base, which this stage runs anyway.
    trust = hub_base_of(context.spec.config.model.name)
    with contextlib.nullcontext() if context.execution.multiworker else context.execution.scope():
        return load_model(context.run.model_path, trust_hub=trust)


def _finish(context: StageContext, best: keras.Model, counts: dict[str, int]) -> dict[str, Any]:
    """Test the best model, calibrate it, record the stage's metrics, redraw the curves; returns the stage's
    summary."""
    spec, run, data = context.spec, context.run, context.data
    rows = [row for row in read_history(run.history_path) if row.get("stage") == spec.name]
    # Every epoch's time, including those trained before a kill: what the stage cost.
    seconds = round(sum(float(row.get("seconds") or 0) for row in rows), 2)
    metrics = run.read_metrics()
    stage_metrics: dict[str, Any] = {"parameters": counts, "seconds": seconds, "epochs": len(rows),
                                     **context.fit_notes}
    if rows:
        stage_metrics["final_epoch"] = {key: _number(value) for key, value in rows[-1].items()}
    opened = _opened(context, best)
    if context.multi_label:
        calibration = _finish_multi_label(context, opened, stage_metrics)
    else:
        test = None
        if data.test is not None:
            test = predict_part(opened, data.test)
            check_finite(test, "test", _overflow_advice(spec))
            stage_metrics["test"] = score_test_part(test, data.labels)
        calibration = _calibrate(context, lambda: predict_part(opened, data.validation), test)
    if calibration is not None:
        stage_metrics["calibration"] = calibration
    if "test" in stage_metrics:
        metrics["test"] = stage_metrics["test"]
    metrics.setdefault("stages", {})[spec.name] = stage_metrics
    metrics["parameters"] = counts
    run.write_metrics(metrics)
    plot_history(run)
    final = stage_metrics.get("final_epoch", {})
    say(f"[{spec.name}] {len(rows)} epoch(s) took {format_seconds(seconds)} in all")
    if context.multi_label:
        test = metrics.get("test", {}) if data.test is not None else {}
        return {"run": str(run.root), "stage": spec.name, "model_name": spec.config.model.name,
                "epochs": len(rows), **counts, "multi_label": True, "val_loss": final.get("val_loss"),
                "val_accuracy": final.get("val_accuracy"), "test_accuracy": None,
                **{f"test_{name}": test.get(name) for name in MULTI_LABEL_SUMMARY},
                "thresholds": stage_metrics["thresholds"]["thresholds"],
                "model": str(run.model_path), "seconds": seconds, "calibration": summary_of(calibration)}
    return {
        "run": str(run.root),
        "stage": spec.name,
        "model_name": spec.config.model.name,
        "epochs": len(rows),
        **counts,
        "val_loss": final.get("val_loss"),
        "val_accuracy": final.get("val_accuracy"),
        "test_accuracy": metrics.get("test", {}).get("accuracy") if data.test is not None else None,
        "test_loss": metrics.get("test", {}).get("loss") if data.test is not None else None,
        "model": str(run.model_path),
        "seconds": seconds,
        "calibration": summary_of(calibration),
    }


def _number(value: Any) -> Any:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return value
    return int(number) if number.is_integer() and "." not in str(value) else number


# The test metrics a multi-label stage's summary carries (as test_<name>).
MULTI_LABEL_SUMMARY = ("macro_map", "micro_map", "macro_f1", "micro_f1", "exact_match", "hamming_loss", "loss")


def _finish_multi_label(context: StageContext, opened, stage_metrics: dict[str, Any]) -> dict[str, Any] | None:
    """Calibrate on the validation part, choose each label's threshold on the calibrated probabilities
    (RUN/thresholds.json), then test at both (:func:`keras_cnn.run_calibration.multi_label_answers`);
    the stage's thresholds and test numbers go into ``stage_metrics``; returns the calibration record."""
    spec, run, data = context.spec, context.run, context.data
    validation = predict_part(opened, data.validation, multi_label=True) if data.validation is not None else None
    test = predict_part(opened, data.test, multi_label=True) if data.test is not None else None
    for part, predictions in (("validation", validation), ("test", test)):
        if predictions is not None:
            check_finite(predictions, part, _overflow_advice(spec))
    answers = multi_label_answers(validation, test, data.labels, spec.name, calibrate=_calibrating(context))
    # The temperature first: the thresholds were chosen for it.
    _write_calibration(context, answers["calibration"])
    write_thresholds(run, answers["thresholds"])
    if validation is None:
        say(f"[{spec.name}] no validation part: every label's threshold is 0.5")
    else:
        say(f"[{spec.name}] each label's threshold chosen on the "
            f"{'calibrated ' if answers['calibration'] else ''}validation probabilities")
    stage_metrics["thresholds"] = answers["thresholds"]
    if answers["test"] is not None:
        stage_metrics["test"] = answers["test"]
    return answers["calibration"]


def _opened(context: StageContext, best: keras.Model):
    """The best model opened up (its logits), in the execution's scope as the model was loaded."""
    from keras_cnn.models.opened import open_model

    # A multi-worker run tests a plain copy outside the strategy (see _run_checked_stage).
    with contextlib.nullcontext() if context.execution.multiworker else context.execution.scope():
        return open_model(best)


def _calibrating(context: StageContext) -> bool:
    """Whether the stage fits a temperature (``--calibrate`` and a validation part); says why not."""
    spec, run = context.spec, context.run
    if not spec.training.calibrate:
        return False
    if context.data.validation is None:
        say(f"[{spec.name}] not calibrated: {run.root} has no validation part to fit a temperature on")
        return False
    return True


def _calibrate(context: StageContext, validation: Callable[[], PartPredictions], test) -> dict[str, Any] | None:
    """Fit the temperature on the validation part (``--calibrate``) into RUN/calibration.json; the record."""
    if not _calibrating(context):
        return None
    predictions = validation()
    check_finite(predictions, "validation", _overflow_advice(context.spec))
    record = fit_record(predictions, test, context.spec.name)
    _write_calibration(context, record)
    return record


def _write_calibration(context: StageContext, record: dict[str, Any] | None) -> None:
    if record is not None:
        write_calibration(context.run, record)
        say(f"[{context.spec.name}] {describe_calibration(summary_of(record))}")


def score_test_part(test: PartPredictions, labels: list[str]) -> dict[str, Any]:
    """Loss, accuracy and per-class accuracy of one pass over the test part (the model's own outputs),
    computed the way ``kcnn evaluate`` computes them, so the two always agree."""
    from keras_cnn.metrics import cross_entropy, outputs_to_probabilities, per_class_accuracy

    predicted_indices = outputs_to_probabilities(test.outputs, len(labels)).argmax(axis=-1)
    return {
        "loss": cross_entropy(test.outputs, test.true_indices),
        "accuracy": float((test.true_indices == predicted_indices).mean()),
        "per_class_accuracy": per_class_accuracy(test.true_indices, predicted_indices, labels),
        "count": int(len(test.true_indices)),
    }


def plot_history(run: RunDirectory) -> None:
    """Draw RUN/training.png from RUN/history.csv (removed when no epoch is left)."""
    from keras_cnn.report import plot_training_history

    if run.history_path.exists() and read_history(run.history_path):
        plot_training_history(run.history_path, run.plot_path)
    else:
        run.plot_path.unlink(missing_ok=True)


def absolute_data_paths(data):
    """The data config with absolute paths, so later commands work from any directory."""
    return replace(data, **{name: os.path.abspath(getattr(data, name))
                            for name in ("dataset_path", "split", "images", "exclude", "relabel")
                            if getattr(data, name)})

