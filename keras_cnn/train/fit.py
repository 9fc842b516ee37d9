"""The from-scratch training routine (``kcnn train``): one stage, ``train``, of the stage runner.

:func:`scratch_stage` resolves the architecture's reference recipe and declares the stage
(its data, its model, its loss); ``train_scratch`` hands it to
:func:`keras_cnn.train.stage.run_stage`, which owns the lock, the run state, the kill-safe
fit, the test and the metrics, and ``kcnn lr-find`` sweeps the same stage.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from keras_cnn.config import RunConfig, validate_config
from keras_cnn.data.collection import with_recorded_task
from keras_cnn.errors import UserError
from keras_cnn.runs import default_run_dir
from keras_cnn.train.execution import with_execution_defaults
from keras_cnn.train.stage import StageSpec, absolute_data_paths, run_stage

TRAIN_STAGE = "train"


def resolve_scratch_config(config: RunConfig) -> RunConfig:
    """Fill every ``None`` with the architecture's reference recipe (the Keras book's scripts)."""
    from keras_cnn.data.augment import REFERENCE_CIFAR10_AUGMENTATION
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
    training = with_execution_defaults(training)
    input_shape = tuple(config.model.input_shape or spec.input_shape)
    augmentation = config.data.augmentation
    if config.data.augment and not augmentation:
        augmentation = REFERENCE_CIFAR10_AUGMENTATION.to_dict()
    data = replace(with_recorded_task(absolute_data_paths(config.data)), image_size=input_shape[:2],
                   channels=input_shape[2], augmentation=augmentation)
    model = replace(config.model, kind="scratch", input_shape=input_shape)
    return replace(config, training=training, data=data, model=model)


def stage_options(config: RunConfig) -> dict[str, Any]:
    """What defines a first stage's result: the resolved config but for labels and records."""
    return {"command": config.command, "model": config.model, "data": config.data, "training": config.training}


def stage_option_defaults(config: RunConfig) -> dict[str, Any]:
    """:func:`stage_options` of a config with every option at its default (for runs recorded before an option)."""
    return stage_options(RunConfig(command=config.command))


def train_scratch(config: RunConfig, out_dir: str | Path | None = None, overwrite: bool = False,
                  accept_input_changes: bool = False) -> dict[str, Any]:
    """Train a from-scratch architecture into ``out_dir`` and report test metrics (``kcnn train``).

    ``out_dir`` defaults to ``runs/ARCHITECTURE-TIMESTAMP``.  Re-running a finished run does
    nothing; a killed one resumes; ``overwrite`` starts the run over.  ``accept_input_changes``:
    resume on images or a split that changed since the run recorded them, recording that.
    """
    stage = scratch_stage(config)
    outcome = run_stage(stage, out_dir or default_run_dir(stage.config.model.name), overwrite=overwrite,
                        accept_input_changes=accept_input_changes)
    return {**outcome.summary, "architecture": stage.config.model.name}


def scratch_stage(config: RunConfig) -> StageSpec:
    """The ``train`` stage of ``config`` (checked and resolved): the one way it is built (``kcnn train``, lr-find)."""
    from keras_cnn.models.factory import create_model
    from keras_cnn.models.scratch import get_architecture
    from keras_cnn.train.stage_data import prepare_array_data, prepare_folder_data

    validate_config(config)
    if bool(config.data.dataset) == bool(config.data.split or config.data.images):
        raise UserError("give either --dataset mnist|cifar10 or --images DIR [--split SPLIT_CSV]")
    if config.data.split and not config.data.images:
        raise UserError("--split needs --images DIR (the folder holding the images)")
    config = resolve_scratch_config(config)
    architecture = get_architecture(config.model.name)
    training = config.training

    def prepare_data(context):
        if config.data.dataset:
            return prepare_array_data(config.data, config.model.input_shape, training.batch_size, training.seed)
        data = context.spec.config.data  # names the run's own split when --images came without --split
        return prepare_folder_data(data, data.image_size, data.channels, training.batch_size,
                                   training.seed, skipped_record=context.skipped_record,
                                   leave_out=context.left_out)

    def build_model(context):
        return create_model(config.model.name, len(context.data.labels), input_shape=config.model.input_shape,
                            api=config.model.api, multi_label=context.data.multi_label)

    return StageSpec(TRAIN_STAGE, config, training, stage_options(config), prepare_data, build_model,
                     option_defaults=stage_option_defaults(config),
                     loss=lambda context: architecture.loss(len(context.data.labels)))
