"""Transfer learning in two stages: a new head on a frozen base, then fine-tuning.

Stage 1 (``train_head``, ``kcnn transfer``): the base is frozen and runs in inference
mode; only the new head trains.  Without augmentation the base's features are computed
once and the head trains on them (``--cache-features``), which is what makes stage 1 fast
on a CPU.  Stage 2 (``fine_tune_run``, ``kcnn finetune``): layers of the base from a
boundary on become trainable (BatchNorm stays frozen unless asked, as the Keras transfer
guide advises), the model is recompiled and trained at a low learning rate; without
augmentation the frozen layers below the boundary run once per image and only the layers
above train, on their cached output (``--cache-frozen``).
``fine_tune`` runs both, like fastai's ``fine_tune``, handing the model and the decoded
data of stage 1 to stage 2 in memory.  Both stages run through
:func:`keras_cnn.train.stage.run_stage`.
"""

from __future__ import annotations

from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

from keras_cnn.config import FineTuneConfig, RunConfig, TrainingConfig, validate_config
from keras_cnn.data.collection import with_recorded_task
from keras_cnn.errors import UserError
from keras_cnn.runs import RunDirectory, default_run_dir
from keras_cnn.train.execution import EXECUTION_FIELDS, with_execution_defaults
from keras_cnn.train.fit import stage_option_defaults, stage_options
from keras_cnn.train.stage import (AFTER_FIT_FIELDS, FitInputs, StageOutcome, StageSpec, absolute_data_paths, run_stage,
                                   say)

HEAD_STAGE = "head"
FINETUNE_STAGE = "finetune"

# Stage-1 defaults (the Keras transfer-learning guide's advice): Adam 1e-3 on the head.
HEAD_DEFAULTS = {"epochs": 10, "batch_size": 32, "learning_rate": 1e-3, "optimizer": "adam"}
# Stage-2 defaults; its learning rate is the base's (BaseSpec.finetune_learning_rate).
FINETUNE_DEFAULTS = {"epochs": 5, "optimizer": "adam"}
# Stage 2 trains on stage 1's data towards stage 1's loss: these always come from stage 1.
FROM_STAGE_ONE = ("seed", "class_weight", "cache_features", "loss")
# Unset, these are stage 1's too (the same batches, the same devices); every other training
# option of stage 2 is its own (given, or the stage-2 default, or unset).
STAGE_ONE_UNLESS_SET = ("batch_size", *EXECUTION_FIELDS)


def resolve_transfer_config(config: RunConfig) -> RunConfig:
    """Fill the stage-1 defaults: base input size, head recipe, feature caching, photo augmentation."""
    from keras_cnn.data.augment import DEFAULT_IMAGE_AUGMENTATION
    from keras_cnn.models.bases import get_base_spec, normalize_image_size

    spec = get_base_spec(config.model.name)
    image_size = normalize_image_size(config.data.image_size, spec.default_image_size)
    spec.input_shape(image_size)  # refuses sizes the base cannot take, before any work
    training = config.training
    training = replace(
        training,
        epochs=training.epochs or HEAD_DEFAULTS["epochs"],
        batch_size=training.batch_size or HEAD_DEFAULTS["batch_size"],
        learning_rate=training.learning_rate or HEAD_DEFAULTS["learning_rate"],
        optimizer=training.optimizer or HEAD_DEFAULTS["optimizer"],
        cache_features=(not (config.data.augment or config.data.regularization)) if training.cache_features is None
        else training.cache_features,
    )
    training = with_execution_defaults(training)
    if training.cache_features and (config.data.augment or config.data.regularization):
        raise UserError("--cache-features computes each image's features once, so it cannot be combined "
                        "with --augment, --mixup, --cutmix, --randaugment, --random-erasing or --label-smoothing; "
                        "use --no-cache-features")
    augmentation = config.data.augmentation
    if config.data.augment and not augmentation:
        # Photos get the photo ranges (flips, small rotations, shifts, zoom), not the CIFAR-10 recipe.
        augmentation = DEFAULT_IMAGE_AUGMENTATION.to_dict()
    weights = config.model.weights or "imagenet"
    data = replace(with_recorded_task(absolute_data_paths(config.data)), image_size=image_size, channels=3,
                   augmentation=augmentation)
    if data.multi_label and config.model.binary:
        raise UserError(f"{data.split} is a multi-label split (one sigmoid per label): drop --binary")
    model = replace(config.model, kind="transfer", input_shape=(*image_size, 3), weights=weights)
    return replace(config, training=training, data=data, model=model)


def train_head(config: RunConfig, out_dir: str | Path | None = None, overwrite: bool = False,
               accept_input_changes: bool = False) -> dict[str, Any]:
    """Stage 1 into ``out_dir`` (default ``runs/BASE-TIMESTAMP``): base + new head, train the head, test.

    ``accept_input_changes``: resume on images or a split that changed since the run recorded
    them, recording that.
    """
    return _train_head(config, out_dir, overwrite, accept_input_changes=accept_input_changes).summary


def _train_head(config: RunConfig, out_dir, overwrite: bool, execution=None,
                accept_input_changes: bool = False) -> StageOutcome:
    stage = head_stage(config)
    outcome = run_stage(stage, out_dir or default_run_dir(stage.config.model.name), overwrite=overwrite,
                        execution=execution, accept_input_changes=accept_input_changes)
    outcome.summary = {**outcome.summary, "base": stage.config.model.name}
    return outcome


def head_stage(config: RunConfig) -> StageSpec:
    """Stage 1 of ``config`` (checked and resolved), the one way it is built (``kcnn transfer``, lr-find, demo)."""
    from keras_cnn.models.bases import get_base_spec
    from keras_cnn.models.factory import create_model
    from keras_cnn.models.weights import resolve_weights
    from keras_cnn.train.stage_data import prepare_folder_data

    validate_config(config)
    if not config.data.images:
        raise UserError("transfer learning needs --images DIR (and optionally --split SPLIT_CSV)")
    config = resolve_transfer_config(config)
    spec = get_base_spec(config.model.name)
    resolve_weights(spec, config.model.weights)  # offline without cached weights: fail before any work
    training = config.training
    if training.cache_features and training.strategy == "multiworker":
        raise UserError("cached features are computed by one process; with --strategy multiworker "
                        "pass --no-cache-features")

    def prepare_data(context):
        data_config = context.spec.config.data  # names the run's own split when --images came without --split
        data = prepare_folder_data(data_config, data_config.image_size, 3, training.batch_size, training.seed,
                                   skipped_record=context.skipped_record, leave_out=context.left_out)
        if config.model.binary and len(data.labels) != 2:
            raise UserError(f"--binary needs exactly 2 labels, the split has {len(data.labels)}: {data.labels}")
        return data

    def build_model(context):
        return create_model(spec, len(context.data.labels), image_size=config.data.image_size,
                            weights=config.model.weights, head_units=config.model.head_units,
                            dropout=config.model.dropout, binary=config.model.binary,
                            api=config.model.api, seed=training.seed, multi_label=context.data.multi_label)

    return StageSpec(HEAD_STAGE, config, training, stage_options(config), prepare_data, build_model,
                     option_defaults=stage_option_defaults(config), keep_model=True,
                     fit_inputs=head_on_cached_features if training.cache_features else None)


def head_on_cached_features(context) -> FitInputs:
    """Fit only the head, on the frozen base's features computed once; the whole model is what is saved."""
    from keras_cnn.models.transfer import cut_at_features
    from keras_cnn.train.features import cached_fit_inputs

    feature_extractor, head = cut_at_features(context.model)
    return cached_fit_inputs(feature_extractor, head, context.data, context.training.batch_size,
                             context.training.seed, context.work_folder("features"), "features")


def top_on_cached_boundary(context) -> FitInputs:
    """Fine-tune only the layers above the unfreeze point, on the frozen layers' output computed once.

    Where that output is not a single tensor (see :mod:`keras_cnn.models.boundary`), says
    why in one line and fits the whole model on the images instead.  The whole model is
    what is saved either way.
    """
    from keras_cnn.models.boundary import NoSingleBoundary, cut_at_frozen_boundary
    from keras_cnn.train.features import cached_fit_inputs

    data, training = context.data, context.training
    try:
        cut = cut_at_frozen_boundary(context.model)
    except NoSingleBoundary as reason:
        say(f"not caching the frozen layers (the whole model trains on images): {reason}")
        _record_frozen_cache(context, {"used": False, "reason": str(reason)})
        return FitInputs(context.model, data.train, data.validation)
    say(f"caching the frozen layers up to {cut.boundary_layer} "
        f"({'x'.join(map(str, cut.boundary_shape))}, {cut.bytes_per_image:,} bytes per image)")
    _record_frozen_cache(context, {"used": True, "boundary_layer": cut.boundary_layer,
                                   "boundary_shape": list(cut.boundary_shape),
                                   "bytes_per_image": cut.bytes_per_image})
    return cached_fit_inputs(cut.bottom, cut.top, data, training.batch_size, training.seed,
                             context.work_folder("features"), "boundary tensors",
                             train_in_order=_train_in_file_order(context))


def _record_frozen_cache(context, details: dict[str, Any]) -> None:
    """Add what the frozen-layer cache did to the stage's entry in config.json (a stage in a run only)."""
    if context.run is None:
        return
    config = context.run.read_config()
    config.setdefault("extra", {}).setdefault("stages", {}).setdefault(context.spec.name, {})["frozen_cache"] = details
    context.run.write_config(config)


def _train_in_file_order(context):
    """The train part unshuffled, so cached rows are shuffled exactly like the images would be."""
    from keras_cnn.data.parts import part_options

    data = context.spec.config.data
    return context.data.parts.dataset("train", part_options(data, data.image_size, 3, context.training.batch_size,
                                                            shuffle=False, cache=False))


def resolve_cache_frozen(config: RunConfig, finetune: FineTuneConfig, strategy: str) -> bool:
    """Whether stage 2 caches its frozen layers: as asked, else when stage 1 did not vary its images."""
    # Augmentation and MixUp-style regularisation change the images every epoch, so the
    # frozen layers' output changes too and cannot be computed once.
    varied = bool(config.data.augment or config.data.regularization)
    if finetune.cache_frozen and varied:
        raise UserError("--cache-frozen computes the frozen layers once per image, so it cannot be used on a "
                        "run trained with --augment or MixUp-style options; use --no-cache-frozen")
    if finetune.cache_frozen and strategy == "multiworker":
        raise UserError("cached frozen layers are computed by one process; with --strategy multiworker pass "
                        "--no-cache-frozen")
    if finetune.cache_frozen is None:
        return not varied and strategy != "multiworker"
    return bool(finetune.cache_frozen)


def resolve_fine_tune_training(config: RunConfig, finetune: FineTuneConfig) -> tuple[TrainingConfig, str]:
    """Stage 2's training options and unfreeze point: the given ones, else stage 2's defaults or stage 1's.

    ``config`` is the stage-1 run's config; see :data:`FROM_STAGE_ONE` and
    :data:`STAGE_ONE_UNLESS_SET` for what comes from it.
    """
    from keras_cnn.models.bases import get_base_spec

    spec = get_base_spec(config.model.name)
    stage1, asked = config.training, finetune.training
    defaults = {**FINETUNE_DEFAULTS, "learning_rate": spec.finetune_learning_rate}
    values = {}
    for name in (item.name for item in fields(TrainingConfig)):
        value = getattr(asked, name)
        if name in FROM_STAGE_ONE or (value is None and name in STAGE_ONE_UNLESS_SET):
            value = getattr(stage1, name)
        values[name] = defaults.get(name) if value is None else value
    return TrainingConfig(**values), finetune.unfreeze_from or spec.default_unfreeze


def fine_tune_record(finetune: FineTuneConfig, training: TrainingConfig, boundary: str | None,
                     cache_frozen: bool | None) -> dict[str, Any]:
    """What stage 2 records as its options (``config.json``'s ``extra.stages.finetune``, ``state.json``).

    The fine-tuning options, resolved, and the training options stage 2 sets itself (not
    those it takes from stage 1, nor where it runs, nor what acts after the fit).
    """
    own = [item.name for item in fields(TrainingConfig)
           if item.name not in FROM_STAGE_ONE + EXECUTION_FIELDS + AFTER_FIT_FIELDS]
    return {"unfreeze_from": boundary, "train_bn": finetune.train_bn, "base_dropout": finetune.base_dropout,
            **{name: getattr(training, name) for name in own}, "cache_frozen": cache_frozen}


def fine_tune_run(finetune: FineTuneConfig, run_dir: str | Path, out_dir: str | Path | None = None,
                  overwrite: bool = False, *, execution=None, data=None, start_model=None,
                  trust_hub: bool = False, accept_input_changes: bool = False) -> dict[str, Any]:
    """Stage 2 on a stage-1 run: unfreeze the base from ``finetune.unfreeze_from`` on and train at a low rate.

    Results go into the same run, or into ``out_dir`` (a copy of the stage-1 run, which is
    then left untouched).  The stage-1 run must have finished.  ``execution``, ``data`` and
    ``start_model`` let :func:`fine_tune` hand over stage 1's execution, decoded data and
    best model instead of starting, decoding and loading them again.  ``trust_hub``: the
    stage-1 model may load the TF Hub module the run records as its base (``--trust-hub``).
    ``accept_input_changes``: go on with images or a split that changed since the run
    recorded them, recording that.
    """
    return _fine_tune_run(finetune, run_dir, out_dir, overwrite, execution, data, start_model, trust_hub,
                          accept_input_changes).summary


def _fine_tune_run(finetune, run_dir, out_dir, overwrite, execution=None, data=None, start_model=None,
                   trust_hub=False, accept_input_changes=False):
    source = RunDirectory(run_dir)
    stage = finetune_stage(source, finetune, trust_hub=trust_hub)
    target = Path(out_dir) if out_dir is not None else source.root
    outcome = run_stage(stage, target, overwrite=overwrite, execution=execution, data=data, start_model=start_model,
                        source_run=source.root if out_dir is not None else None,
                        accept_input_changes=accept_input_changes)
    outcome.summary = {**outcome.summary, "base": stage.config.model.name}
    return outcome


def finetune_stage(source: RunDirectory, finetune: FineTuneConfig, trust_hub: bool = False) -> StageSpec:
    """Stage 2 of the stage-1 run ``source`` with ``finetune`` (checked and resolved), the one way it is
    built (``kcnn finetune``, lr-find --run, demo); its model starts from stage 1's best model
    (``trust_hub``: which may load the TF Hub module the run records as its base)."""
    from keras_cnn.models.loading import hub_base_of, load_model
    from keras_cnn.models.transfer import unfreeze_from as unfreeze
    from keras_cnn.train.stage_data import prepare_folder_data

    validate_config(finetune)
    run_dir = source.root
    if not source.config_path.exists():
        raise UserError(f"{run_dir} is not a kcnn run directory: config.json is missing")
    config = RunConfig.from_dict(source.read_config())
    if config.model.kind != "transfer":
        raise UserError(f"{run_dir} is a {config.model.kind or 'non-transfer'} run; finetune needs a "
                        "`kcnn transfer` run")
    training, boundary = resolve_fine_tune_training(config, finetune)
    cache_frozen = resolve_cache_frozen(config, finetune, training.strategy)
    record = fine_tune_record(finetune, training, boundary, cache_frozen)

    def prepare_data(context):
        # Fine-tuning reads stage 1's images as stage 1 did: its --skip-bad-images (or not) holds.
        return prepare_folder_data(config.data, config.data.image_size, 3, training.batch_size, training.seed,
                                   skipped_record=context.skipped_record, labels=config.labels,
                                   leave_out=context.left_out,
                                   bad_image_advice=f"stage 1 of {run_dir} could read them: put back the images "
                                                    "it was trained on")

    def build_model(context):
        run = context.run or source
        # Stage 1's best model: kept under stages/ (model.keras may already be a fine-tuned one).
        model = context.start_model
        if model is None:
            start = run.stage_model_path(HEAD_STAGE)
            model = load_model(start if start.exists() else run.model_path,
                               trust_hub=hub_base_of(config.model.name) if trust_hub else None)
        unfreeze(model, boundary, train_bn=finetune.train_bn, base_dropout=finetune.base_dropout)
        return model

    options = {"training": asdict(training), "finetune": record}
    defaults = {"training": asdict(TrainingConfig()),
                "finetune": fine_tune_record(FineTuneConfig(), TrainingConfig(), None, None)}
    return StageSpec(FINETUNE_STAGE, config, training, options, prepare_data, build_model,
                     requires=HEAD_STAGE, record=record, option_defaults=defaults, model_before_data=True,
                     fit_inputs=top_on_cached_boundary if cache_frozen else None)


def fine_tune(config: RunConfig, out_dir: str | Path | None = None, finetune: FineTuneConfig | None = None,
              overwrite: bool = False, accept_input_changes: bool = False) -> dict[str, Any]:
    """Both stages in one call: head epochs on the frozen base, then unfreeze and fine-tune.

    ``config`` is a stage-1 ``RunConfig`` (``config.training.epochs`` = head epochs);
    ``finetune`` the stage-2 options (defaults: :class:`FineTuneConfig`).  Stage 2 starts
    from stage 1's best model and decoded images, still in memory.  Returns the stage-2
    summary with the stage-1 summary under ``"head"``.
    """
    finetune = finetune or FineTuneConfig()
    validate_config(finetune)
    out_dir = Path(out_dir or default_run_dir(config.model.name))
    head = _train_head(config, out_dir, overwrite, accept_input_changes=accept_input_changes)
    stage1 = RunConfig.from_dict(RunDirectory(out_dir).read_config())
    training, _ = resolve_fine_tune_training(stage1, finetune)
    # The decoded images serve stage 2 as they are when it batches them the same way.
    data = head.data if training.batch_size == stage1.training.batch_size else None
    # The model was built under stage 1's strategy: it goes over only with that same execution.
    same_execution = all(getattr(training, name) == getattr(stage1.training, name) for name in EXECUTION_FIELDS)
    start_model = head.model if same_execution else None
    # The base was given in this call: its hub module, if any, is the caller's own choice.
    tuned = _fine_tune_run(finetune, out_dir, None, overwrite, execution=head.execution if start_model else None,
                           data=data, start_model=start_model, trust_hub=True,
                           accept_input_changes=accept_input_changes)
    return {**tuned.summary, "head": head.summary}
