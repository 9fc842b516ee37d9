"""Where and how a training command runs: device, strategy, precision, XLA, and which process writes.

``start_execution`` resolves ``--mixed-precision``, ``--xla`` and ``--strategy`` once, applies
them (before any model exists, so Keras adds loss scaling) and says so on stderr.  The
returned ``Execution`` compiles models the same way everywhere and hands out the run
directory: the real one on the chief, a temporary one on other multi-worker processes.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

from keras_cnn.config import TrainingConfig
from keras_cnn.progress import say
from keras_cnn.runs import RunDirectory


@dataclass
class Execution:
    """The resolved plan (``keras_cnn.train.devices.ExecutionPlan``) and its tf.distribute strategy."""

    plan: Any
    strategy: Any

    @property
    def multiworker(self) -> bool:
        return self.plan.strategy_name == "multiworker"

    def scope(self):
        """Build and compile models inside this, so their variables live on every replica."""
        return self.strategy.scope()

    def jit_compile(self, model) -> bool:
        from keras_cnn.train.devices import jit_compile_for

        return jit_compile_for(model, self.plan)

    def compile(self, model, optimizer, learning_rate: float | None, loss, soft_labels: bool = False,
                multi_label: bool = False) -> None:
        """Compile ``model`` with accuracy and the plan's XLA setting (call in ``scope()``).

        ``optimizer``: a kcnn optimizer name (made with ``learning_rate``) or a ready
        ``keras.optimizers.Optimizer`` (a schedule, per-layer rates, EMA...).
        ``soft_labels``: the targets are class probabilities (MixUp, CutMix, label smoothing):
        categorical (or binary) cross-entropy, and accuracy against each target's dominant class.
        ``multi_label``: multi-hot targets; "accuracy" is the fraction of labels decided right
        at 0.5 (the loss, binary cross-entropy, takes soft targets as they are).
        """
        from keras_cnn.train.distribute import synchronize_loss_scaling
        from keras_cnn.optimizers import make_optimizer

        if isinstance(optimizer, str):
            optimizer = make_optimizer(optimizer, learning_rate)
        metric = "accuracy"
        if multi_label:
            from keras_cnn.data.regularize import label_accuracy_metric

            metric = label_accuracy_metric()
        elif soft_labels:
            from keras_cnn.data.regularize import hard_label_accuracy_metric, soft_label_loss

            loss, metric = soft_label_loss(loss), hard_label_accuracy_metric()
        model.compile(optimizer=optimizer, loss=loss, metrics=[metric], jit_compile=self.jit_compile(model))
        if self.plan.replicas > 1:
            # Replicas must agree on skipping a step whose scaled gradients overflowed.
            synchronize_loss_scaling(model.optimizer)

    @contextlib.contextmanager
    def run_directory(self, out_dir: str | Path) -> Iterator[RunDirectory]:
        """The run directory this process writes: ``out_dir`` on the chief, a throw-away one elsewhere."""
        from keras_cnn.train.distribute import chief_or_temporary_dir

        with chief_or_temporary_dir(out_dir, self.plan) as directory:
            yield RunDirectory(directory).create()


# The TrainingConfig fields that say where and how a stage runs, not what it computes.
EXECUTION_FIELDS = ("mixed_precision", "xla", "strategy")


def with_execution_defaults(training: TrainingConfig, inherited: TrainingConfig | None = None) -> TrainingConfig:
    """``training`` with each unset (``None``) execution option taken from ``inherited``, else ``auto``."""
    return replace(training, **{name: getattr(training, name) or (getattr(inherited, name) if inherited else None)
                                or "auto" for name in EXECUTION_FIELDS})


def start_execution(training: TrainingConfig) -> Execution:
    """Resolve and apply the execution options; print the resolved settings once on stderr.

    The caller records ``execution.plan.to_dict()`` in config.json.
    """
    from keras_cnn.train.devices import apply_execution, describe, resolve_execution

    training = with_execution_defaults(training)
    plan = resolve_execution(training.mixed_precision, training.xla, training.strategy)
    strategy = apply_execution(plan)
    say(describe(plan))  # apply_execution has logged plan.notes as warnings
    return Execution(plan, strategy)
