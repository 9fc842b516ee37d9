"""Fitting a model into a run directory, and the from-scratch training routine.

``fit_stage`` is the one place that calls ``model.fit``: it adds the callbacks every run
needs (history with epoch times, atomic best-model checkpoint, resume after a kill, NaN
guard, TensorBoard) and is shared by ``kcnn train`` and the transfer stages.
``train_scratch`` is ``kcnn train``: resolve the recipe, prepare data, build, fit, test.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import keras
import numpy as np

from keras_cnn.config import RunConfig
from keras_cnn.errors import UserError
from keras_cnn.runs import RunDirectory
from keras_cnn.train.callbacks import BestModelCheckpoint, HistoryRecorder, NanGuard, RunProgress
from keras_cnn.train.part_checkpoint import BestPartCheckpoint


def fit_stage(model: keras.Model, run: RunDirectory, stage: str, data, epochs: int, execution,
              single_sigmoid: bool = False, class_weight: dict[int, float] | None = None,
              whole_model: keras.Model | None = None, initial_best: float | None = None,
              train=None, validation=None) -> list[dict]:
    """Fit ``model`` for ``epochs`` as stage ``stage`` of ``run``; returns this stage's history rows.

    ``data`` is a ``PreparedData``; ``train``/``validation`` replace its datasets (cached
    features for a head).  A killed fit resumes from its last finished epoch when called
    again with the same run (``BackupAndRestore`` under ``RUN/backup/<stage>``).  The best
    model by validation loss (training loss without a validation part) is saved to
    ``RUN/model.keras``: ``whole_model`` when ``model`` is only a part of it (a head on cached
    features, a top on cached boundary tensors; then the part's best weights are kept per
    epoch and the whole model is written once, at the end), and only once it beats
    ``initial_best`` (the best of the earlier stages).  Under a multi-worker strategy
    the custom loop of ``keras_cnn.train.distribute`` replaces ``model.fit``.
    """
    from keras_cnn.train.data import as_model_targets

    train = as_model_targets(data.train if train is None else train, single_sigmoid)
    validation = as_model_targets(data.validation if validation is None else validation, single_sigmoid)
    monitor = "val_loss" if validation is not None else "loss"
    history = HistoryRecorder(run.history_path, stage)
    if whole_model is not None:
        checkpoint = BestPartCheckpoint(run.model_path, run.backup_dir / f"{stage}-best-part.weights.h5",
                                        whole_model, monitor=monitor, history=history, initial_best=initial_best)
    else:
        checkpoint = BestModelCheckpoint(run.model_path, monitor=monitor, history=history, initial_best=initial_best)
    callbacks = [
        # Restore first, so the other callbacks see the resumed epoch.
        keras.callbacks.BackupAndRestore(str(run.backup_dir / stage), double_checkpoint=True),
        history,
        checkpoint,
        NanGuard(),
        RunProgress(stage, epochs),
        keras.callbacks.TensorBoard(str(run.tensorboard_dir / stage), write_graph=False),
    ]
    try:
        if execution.multiworker:
            _fit_multiworker(model, data, epochs, execution, single_sigmoid, class_weight, callbacks)
        else:
            # The datasets shuffle themselves (tf.data or the legacy generator); fit must not.
            model.fit(train, validation_data=validation, epochs=epochs, callbacks=callbacks,
                      class_weight=class_weight, shuffle=False)
    except BaseException:
        if isinstance(checkpoint, BestPartCheckpoint):
            checkpoint.assemble()   # a NaN stop or Ctrl-C keeps the best whole model so far
        raise
    # BackupAndRestore removed its stage folder on success; drop the empty parent too.
    if run.backup_dir.is_dir() and not any(run.backup_dir.iterdir()):
        run.backup_dir.rmdir()
    return history.stage_rows()


def _fit_multiworker(model, data, epochs, execution, single_sigmoid, class_weight, callbacks) -> None:
    """``model.fit`` fails under MultiWorkerMirroredStrategy in Keras 3; run the custom loop instead."""
    from keras_cnn.train.data import as_model_targets
    from keras_cnn.train.distribute import fit_multiworker

    per_worker = data.per_worker
    if per_worker is None:
        raise UserError("this data cannot be sharded across workers (the legacy ImageDataGenerator engine "
                        "or cached features); use --augment-engine layers / --no-cache-features")
    if class_weight is not None:
        raise UserError("--class-weight balanced is not supported with --strategy multiworker")
    validation_fn = per_worker.validation
    fit_multiworker(
        lambda: model,
        lambda context: as_model_targets(per_worker.train(context), single_sigmoid),
        epochs=epochs, steps_per_epoch=per_worker.steps_per_epoch, strategy=execution.strategy,
        validation_dataset_fn=(lambda context: as_model_targets(validation_fn(context), single_sigmoid))
        if validation_fn else None,
        validation_steps=per_worker.validation_steps, jit_compile=execution.jit_compile(model),
        callbacks=callbacks, verbose=1,
    )


def evaluate_test(model: keras.Model, test, labels: list[str]) -> dict[str, Any]:
    """Loss, accuracy and per-class accuracy of ``model`` on the (unshuffled) ``test`` dataset.

    Computed the way ``kcnn evaluate`` computes them, so the two always agree.
    """
    from keras_cnn.evaluate import cross_entropy, outputs_to_probabilities, per_class_accuracy

    outputs, true_indices = [], []
    for images, targets in test:
        outputs.append(np.asarray(model.predict_on_batch(images)))
        true_indices.append(np.asarray(targets).reshape(-1).astype("int64"))
    outputs = np.concatenate(outputs)
    true_indices = np.concatenate(true_indices)
    predicted_indices = outputs_to_probabilities(outputs, len(labels)).argmax(axis=-1)
    return {
        "loss": cross_entropy(outputs, true_indices),
        "accuracy": float((true_indices == predicted_indices).mean()),
        "per_class_accuracy": per_class_accuracy(true_indices, predicted_indices, labels),
        "count": int(len(true_indices)),
    }


def resolve_scratch_config(config: RunConfig) -> RunConfig:
    """Fill every ``None`` with the architecture's reference recipe (REFERENCES.md §1)."""
    from keras_cnn.models.scratch import get_architecture

    spec = get_architecture(config.model.name)
    training = config.training
    epochs = training.epochs
    if epochs is None:
        epochs = spec.augmented_epochs if (config.data.augment and spec.augmented_epochs) else spec.epochs
    training = replace(
        training,
        epochs=epochs,
        batch_size=training.batch_size or spec.batch_size,
        learning_rate=training.learning_rate or spec.learning_rate,
        optimizer=training.optimizer or spec.optimizer,
    )
    input_shape = tuple(config.model.input_shape or spec.input_shape)
    data = replace(absolute_data_paths(config.data), image_size=input_shape[:2], channels=input_shape[2])
    model = replace(config.model, kind="scratch", input_shape=input_shape)
    return replace(config, training=training, data=data, model=model)


def absolute_data_paths(data):
    """The data config with absolute paths, so later commands work from any directory."""
    import os

    return replace(data, **{name: os.path.abspath(getattr(data, name))
                            for name in ("dataset_path", "split", "images")
                            if getattr(data, name)})


def train_scratch(config: RunConfig, out_dir: str | Path) -> dict[str, Any]:
    """Train a from-scratch architecture into ``out_dir`` and report test metrics (``kcnn train``)."""
    from keras_cnn.models.loading import load_model
    from keras_cnn.models.scratch import build_architecture, count_parameters, get_architecture, with_input_scaling
    from keras_cnn.train.data import as_model_targets, balanced_class_weights, prepare_array_data, prepare_folder_data
    from keras_cnn.train.execution import start_execution

    if bool(config.data.dataset) == bool(config.data.split):
        raise UserError("give either --dataset mnist|cifar10 or --split SPLIT_CSV --images DIR")
    if config.data.split and not config.data.images:
        raise UserError("--split needs --images DIR (the folder holding the images)")
    config = resolve_scratch_config(config)
    spec = get_architecture(config.model.name)
    training = config.training
    keras.utils.set_random_seed(training.seed)
    execution = start_execution(training)

    with execution.run_directory(out_dir) as run:
        if config.data.dataset:
            data = prepare_array_data(config.data, config.model.input_shape, training.batch_size, training.seed)
        else:
            data = prepare_folder_data(config.data, config.data.image_size, config.data.channels,
                                       training.batch_size, training.seed, skipped_record=run.skipped_images_path)
        num_classes = len(data.labels)
        config = replace(config, labels=data.labels, model=replace(config.model, num_classes=num_classes),
                         training=replace(training, loss=spec.loss(num_classes)),
                         extra={**config.extra, "execution": execution.plan.to_dict(), "sizes": data.sizes,
                                "skipped_images": len(data.skipped)})
        run.write_labels(data.labels)
        run.write_config(config.to_dict())

        with execution.scope():
            model = with_input_scaling(build_architecture(config.model.name, config.model.input_shape,
                                                          num_classes, api=config.model.api))
            execution.compile(model, training.optimizer, training.learning_rate, config.training.loss)
        single_sigmoid = model.output_shape[-1] == 1
        class_weight = balanced_class_weights(data.train_counts) if training.class_weight == "balanced" else None

        started = time.perf_counter()
        rows = fit_stage(model, run, "train", data, training.epochs, execution, single_sigmoid, class_weight)
        seconds = time.perf_counter() - started

        best = load_model(run.model_path) if run.model_path.exists() else model
        metrics: dict[str, Any] = {"parameters": count_parameters(best), "train_seconds": round(seconds, 2)}
        if rows:
            metrics["final_epoch"] = rows[-1]
        if data.test is not None:
            metrics["test"] = evaluate_test(best, as_model_targets(data.test, single_sigmoid), data.labels)
        run.write_metrics(metrics)
        plot_history(run)
    return {
        "run": str(Path(out_dir)),
        "architecture": config.model.name,
        "epochs": training.epochs,
        "test_accuracy": metrics.get("test", {}).get("accuracy"),
        "test_loss": metrics.get("test", {}).get("loss"),
        "params": metrics["parameters"]["total_params"],
        "model": str(Path(out_dir) / run.model_path.name),
        "seconds": round(seconds, 2),
    }


def plot_history(run: RunDirectory) -> None:
    """Draw RUN/training.png from RUN/history.csv."""
    from keras_cnn.report import plot_training_history

    if run.history_path.exists():
        plot_training_history(run.history_path, run.plot_path)
