"""Transfer learning in two stages: a new head on a frozen base, then fine-tuning.

Stage 1 (``train_head``, ``kcnn transfer``): the base is frozen and runs in inference
mode; only the new head trains.  Without augmentation the base's features are computed
once and the head trains on them (``--cache-features``), which is what makes stage 1 fast
on a CPU.  Stage 2 (``fine_tune_run``, ``kcnn finetune``): layers of the base from a
boundary on become trainable (BatchNorm stays frozen unless asked, as the Keras transfer
guide advises), the model is recompiled and trained at a low learning rate; without
augmentation the frozen layers below the boundary run once per image and only the layers
above train, on their cached output (``--cache-frozen``).
``fine_tune`` runs both, like fastai's ``fine_tune``.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import keras

from keras_cnn.config import RunConfig
from keras_cnn.errors import UserError
from keras_cnn.runs import RunDirectory
from keras_cnn.train.features import fit_on_cached
from keras_cnn.train.fit import absolute_data_paths, evaluate_test, fit_stage

HEAD_STAGE = "head"
FINETUNE_STAGE = "finetune"

# Stage-1 defaults (modern guidance, REFERENCES.md §2): Adam 1e-3 on the head.
HEAD_DEFAULTS = {"epochs": 10, "batch_size": 32, "learning_rate": 1e-3, "optimizer": "adam"}
FINETUNE_DEFAULTS = {"epochs": 5, "optimizer": "adam"}


def resolve_transfer_config(config: RunConfig) -> RunConfig:
    """Fill the stage-1 defaults: base input size, head recipe, feature caching."""
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
        cache_features=(not config.data.augment) if training.cache_features is None else training.cache_features,
    )
    if training.cache_features and config.data.augment:
        raise UserError("--cache-features computes each image's features once, so it cannot be combined "
                        "with --augment; use --no-cache-features to augment")
    weights = config.model.weights or "imagenet"
    data = replace(absolute_data_paths(config.data), image_size=image_size, channels=3)
    model = replace(config.model, kind="transfer", input_shape=(*image_size, 3), weights=weights)
    return replace(config, training=training, data=data, model=model)


def train_head(config: RunConfig, out_dir: str | Path) -> dict[str, Any]:
    """Stage 1 into ``out_dir``: build base + new head, train the head, test; returns a summary."""
    from keras_cnn.models.bases import get_base_spec
    from keras_cnn.models.transfer import build_transfer_model, parameter_counts
    from keras_cnn.models.weights import resolve_weights
    from keras_cnn.train.data import balanced_class_weights, prepare_folder_data
    from keras_cnn.train.execution import start_execution

    if not config.data.split or not config.data.images:
        raise UserError("transfer learning needs --split SPLIT_CSV and --images DIR")
    config = resolve_transfer_config(config)
    spec = get_base_spec(config.model.name)
    resolve_weights(spec, config.model.weights)  # offline without cached weights: fail before any work
    training = config.training
    keras.utils.set_random_seed(training.seed)
    execution = start_execution(training)
    if execution.multiworker and training.cache_features:
        raise UserError("cached features are computed by one process; with --strategy multiworker "
                        "pass --no-cache-features")

    with execution.run_directory(out_dir) as run:
        data = prepare_folder_data(config.data, config.data.image_size, 3, training.batch_size, training.seed,
                                   skipped_record=run.skipped_images_path)
        if config.model.binary and len(data.labels) != 2:
            raise UserError(f"--binary needs exactly 2 labels, the split has {len(data.labels)}: {data.labels}")
        with execution.scope():
            model = build_transfer_model(spec, len(data.labels), image_size=config.data.image_size,
                                         weights=config.model.weights, head_units=config.model.head_units,
                                         dropout=config.model.dropout, binary=config.model.binary,
                                         api=config.model.api, seed=training.seed)
        single_sigmoid = model.output_shape[-1] == 1
        loss = "binary_crossentropy" if single_sigmoid else "sparse_categorical_crossentropy"
        counts = parameter_counts(model)
        config = replace(config, labels=data.labels,
                         model=replace(config.model, num_classes=len(data.labels)),
                         training=replace(training, loss=loss),
                         extra={**config.extra, "execution": execution.plan.to_dict(), "sizes": data.sizes,
                                "skipped_images": len(data.skipped),
                                "stages": {HEAD_STAGE: {"parameters": counts}}})
        run.write_labels(data.labels)
        run.write_config(config.to_dict())
        class_weight = balanced_class_weights(data.train_counts) if training.class_weight == "balanced" else None

        started = time.perf_counter()
        if training.cache_features:
            rows = _fit_head_on_features(model, run, data, training, loss, single_sigmoid, class_weight, execution)
        else:
            with execution.scope():
                execution.compile(model, training.optimizer, training.learning_rate, loss)
            rows = fit_stage(model, run, HEAD_STAGE, data, training.epochs, execution, single_sigmoid, class_weight)
        seconds = time.perf_counter() - started
        summary = _finish_stage(run, config, HEAD_STAGE, rows, seconds, counts, data, single_sigmoid)
    return {**summary, "run": str(Path(out_dir))}


def _fit_head_on_features(model, run, data, training, loss, single_sigmoid, class_weight, execution):
    """Stage 1 with cached features: the head trains alone; the whole model is what gets saved."""
    from keras_cnn.models.transfer import split_feature_model
    from keras_cnn.train.features import fit_on_cached

    feature_extractor, head = split_feature_model(model)
    return fit_on_cached(model, feature_extractor, head, run, HEAD_STAGE, data, training, loss, execution,
                         single_sigmoid, class_weight)


def fine_tune_run(run_dir: str | Path, unfreeze_from: str | None = None, train_bn: bool = False,
                  epochs: int | None = None, learning_rate: float | None = None, optimizer: str | None = None,
                  out_dir: str | Path | None = None, batch_size: int | None = None,
                  execution: dict[str, str] | None = None, cache_frozen: bool | None = None) -> dict[str, Any]:
    """Stage 2 on a stage-1 run: unfreeze the base from ``unfreeze_from`` on and train at a low rate.

    ``unfreeze_from``: a layer name, a block prefix (first layer starting with it), or
    ``"all"``; default: the base's registry entry.  Results go into the same run, or into
    ``out_dir`` (a copy of the stage-1 run, which is then left untouched).  ``execution``
    overrides the stage-1 ``mixed_precision`` / ``xla`` / ``strategy`` options.
    ``cache_frozen`` (default: on when stage 1 did not augment): the frozen layers below the
    unfreeze point run once per image and only the layers above train, on their cached
    output (see :func:`_frozen_split`); the saved model is the whole model either way.
    """
    from keras_cnn.models.bases import get_base_spec
    from keras_cnn.models.loading import load_model
    from keras_cnn.models.transfer import parameter_counts
    from keras_cnn.models.transfer import unfreeze_from as unfreeze
    from keras_cnn.train.data import balanced_class_weights, prepare_folder_data
    from keras_cnn.train.execution import start_execution

    source = RunDirectory(run_dir).require()
    config = RunConfig.from_dict(source.read_config())
    if config.model.kind != "transfer":
        raise UserError(f"{run_dir} is a {config.model.kind or 'non-transfer'} run; finetune needs a "
                        "`kcnn transfer` run")
    spec = get_base_spec(config.model.name)
    training = replace(config.training, **(execution or {}))
    training = replace(
        training,
        epochs=epochs or FINETUNE_DEFAULTS["epochs"],
        learning_rate=learning_rate or spec.finetune_learning_rate,
        optimizer=optimizer or FINETUNE_DEFAULTS["optimizer"],
        batch_size=batch_size or config.training.batch_size,
    )
    boundary = unfreeze_from or spec.default_unfreeze
    keras.utils.set_random_seed(training.seed)
    session = start_execution(training)
    target = Path(out_dir) if out_dir is not None else source.root

    with session.run_directory(target) as run:
        if run.root.resolve() != source.root.resolve() and not run.config_path.exists():
            # A new --out (or a non-chief worker's scratch folder) starts as a copy of stage 1;
            # resuming a killed fine-tune into it keeps its own files.
            shutil.copytree(source.root, run.root, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("backup", "eval", "logs"))
        with session.scope():
            model = load_model(run.model_path)
            unfreeze(model, boundary, train_bn=train_bn)
            session.compile(model, training.optimizer, training.learning_rate, config.training.loss)
        counts = parameter_counts(model)
        frozen_split = _frozen_split(model, config, session, cache_frozen)
        data = prepare_folder_data(config.data, config.data.image_size, 3, training.batch_size, training.seed,
                                   skipped_record=run.skipped_images_path, labels=config.labels)
        stages = dict(config.extra.get("stages", {}))
        stages[FINETUNE_STAGE] = {"parameters": counts, "unfreeze_from": boundary, "train_bn": train_bn,
                                  "epochs": training.epochs, "learning_rate": training.learning_rate,
                                  "optimizer": training.optimizer, "execution": session.plan.to_dict(),
                                  "cache_frozen": frozen_split is not None}
        if frozen_split is not None:
            stages[FINETUNE_STAGE]["frozen_cache"] = {"boundary_layer": frozen_split.boundary_layer,
                                                      "boundary_shape": list(frozen_split.boundary_shape),
                                                      "bytes_per_image": frozen_split.bytes_per_image}
        stage_config = replace(config, extra={**config.extra, "stages": stages})
        run.write_config(stage_config.to_dict())

        single_sigmoid = model.output_shape[-1] == 1
        class_weight = balanced_class_weights(data.train_counts) if training.class_weight == "balanced" else None
        started = time.perf_counter()
        initial_best = _best_validation_loss(run, HEAD_STAGE)
        if frozen_split is not None:
            rows = fit_on_cached(model, frozen_split.bottom, frozen_split.top, run, FINETUNE_STAGE, data, training,
                                 config.training.loss, session, single_sigmoid, class_weight,
                                 initial_best=initial_best,
                                 train_in_order=_train_in_file_order(config, data, training.batch_size))
        else:
            rows = fit_stage(model, run, FINETUNE_STAGE, data, training.epochs, session, single_sigmoid,
                             class_weight, initial_best=initial_best)
        seconds = time.perf_counter() - started
        summary = _finish_stage(run, stage_config, FINETUNE_STAGE, rows, seconds, counts, data, single_sigmoid)
    return {**summary, "run": str(target)}


def _frozen_split(model, config: RunConfig, session, cache_frozen: bool | None):
    """The model cut at its unfreeze point for caching the frozen part, or None to train it whole.

    Default: cache when stage 1 did not augment (the frozen part then sees the same pixels
    every epoch).  Where the part above the unfreeze point needs more than one tensor from
    below it, the stage trains the whole model and says why in one line.
    """
    import sys

    from keras_cnn.models.boundary import NoSingleBoundary, split_at_frozen_boundary

    if cache_frozen and config.data.augment:
        raise UserError("--cache-frozen computes the frozen layers once per image, so it cannot be used on a "
                        "run trained with --augment; use --no-cache-frozen")
    if cache_frozen and session.multiworker:
        raise UserError("cached frozen layers are computed by one process; with --strategy multiworker pass "
                        "--no-cache-frozen")
    if cache_frozen is None:
        cache_frozen = not config.data.augment and not session.multiworker
    if not cache_frozen:
        return None
    try:
        return split_at_frozen_boundary(model)
    except NoSingleBoundary as reason:
        print(f"Not caching the frozen layers (the whole model trains on images): {reason}", file=sys.stderr)
        return None


def _train_in_file_order(config: RunConfig, data, batch_size: int):
    """The train part unshuffled, so cached rows are shuffled exactly like the images would be."""
    from keras_cnn.data.pipeline import make_dataset

    return make_dataset(config.data.split, config.data.images, "train", config.data.image_size, batch_size,
                        shuffle=False, cache=False, labels=config.labels, resize_mode=config.data.resize_mode,
                        skip=data.skipped)


def fine_tune(config: RunConfig, out_dir: str | Path, finetune_epochs: int = 5, unfreeze_from: str | None = None,
              train_bn: bool = False, finetune_learning_rate: float | None = None,
              cache_frozen: bool | None = None) -> dict[str, Any]:
    """Both stages in one call: head epochs on the frozen base, then unfreeze and fine-tune.

    ``config`` is a stage-1 ``RunConfig`` (``config.training.epochs`` = head epochs).
    Returns the stage-2 summary with the stage-1 summary under ``"head"``.
    """
    head = train_head(config, out_dir)
    tuned = fine_tune_run(out_dir, unfreeze_from=unfreeze_from, train_bn=train_bn, epochs=finetune_epochs,
                          learning_rate=finetune_learning_rate, cache_frozen=cache_frozen)
    return {**tuned, "head": head}


def _best_validation_loss(run: RunDirectory, stage: str) -> float | None:
    from keras_cnn.train.callbacks import read_history

    values = [float(row["val_loss"]) for row in read_history(run.history_path)
              if row.get("stage") == stage and row.get("val_loss") not in (None, "")]
    return min(values) if values else None


def _finish_stage(run: RunDirectory, config: RunConfig, stage: str, rows: list[dict], seconds: float,
                  counts: dict[str, int], data, single_sigmoid: bool) -> dict[str, Any]:
    """Test the saved (best) model, record per-stage metrics, redraw the curves; returns the summary."""
    from keras_cnn.models.loading import load_model
    from keras_cnn.train.data import as_model_targets
    from keras_cnn.train.fit import plot_history

    best = load_model(run.model_path)
    metrics = run.read_metrics()
    stage_metrics: dict[str, Any] = {"parameters": counts, "seconds": round(seconds, 2),
                                     "epochs": len(rows)}
    if rows:
        stage_metrics["final_epoch"] = rows[-1]
    if data.test is not None:
        stage_metrics["test"] = evaluate_test(best, as_model_targets(data.test, single_sigmoid), data.labels)
        metrics["test"] = stage_metrics["test"]
    metrics.setdefault("stages", {})[stage] = stage_metrics
    metrics["parameters"] = counts
    run.write_metrics(metrics)
    plot_history(run)
    final = rows[-1] if rows else {}
    return {
        "run": str(run.root),
        "stage": stage,
        "base": config.model.name,
        "epochs": len(rows),
        **counts,
        "val_loss": final.get("val_loss"),
        "val_accuracy": final.get("val_accuracy"),
        "test_accuracy": metrics.get("test", {}).get("accuracy"),
        "test_loss": metrics.get("test", {}).get("loss"),
        "model": str(run.model_path),
        "seconds": round(seconds, 2),
    }
