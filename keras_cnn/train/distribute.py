"""Multi-worker training: a custom loop for ``MultiWorkerMirroredStrategy``, and worker chores.

Keras 3's ``model.fit`` fails under ``MultiWorkerMirroredStrategy`` on TF 2.21 ("Attempt to
convert a value (PerReplica...)", upstream keras-team/keras#20585), while the same Keras
model, optimizer, loss and metrics work inside ``strategy.run``.  :func:`fit_multiworker`
is that loop, written to give what ``fit`` gives on one worker:

* the model is built and compiled by the caller's ``model_builder`` under
  ``strategy.scope()``, so every variable (weights, optimizer slots, metrics) is mirrored;
* ``dataset_fn(input_context)`` builds each worker's input pipeline
  (``strategy.distribute_datasets_from_function``): it must shard its data itself
  (``keras_cnn.data.pipeline.shard_file_list``, by file for the CSV pipeline) and batch with the per-replica
  size (:func:`keras_cnn.data.pipeline.per_replica_batch_size`);
* the batch size is **global**: a global batch of 64 on 4 replicas is 16 images each, and
  the loss is averaged over the global batch, so one step equals one ``fit`` step on one
  device with the same 64 images.  The learning rate is used as given: it is not scaled
  with the number of workers (scale it yourself if you scale the global batch);
* under ``mixed_float16`` the optimizer is a ``keras.optimizers.LossScaleOptimizer``, and
  the workers agree on skipping a step whose gradients overflowed on any of them
  (:func:`synchronize_loss_scaling`);
* metrics are Keras's compiled metrics; their variables sum across replicas and workers
  when read, so every worker logs the same epoch values.

Every worker must run the same number of steps (collective ops wait for all of them), so
``steps_per_epoch`` is required and each pipeline is repeated.  Only the chief writes the
run directory; the others write into a temporary folder (:func:`chief_or_temporary_dir`),
because saving can itself need every worker to take part.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keras_cnn.errors import UserError
from keras_cnn.keras_internals import initial_epoch as initial_epoch_of


@dataclass
class DistributedFit:
    """What :func:`fit_multiworker` returns: the trained model and ``fit``-style history."""

    model: Any
    history: dict[str, list[float]] = field(default_factory=dict)
    epochs: list[int] = field(default_factory=list)


def _is_chief(plan=None) -> tuple[bool, str]:
    """(is this process the chief, a short name for it) from the plan or ``TF_CONFIG``."""
    if plan is not None:
        return bool(plan.is_chief), f"{plan.task_type or 'worker'}{plan.task_index or 0}"
    from keras_cnn.train.devices import parse_tf_config

    task = parse_tf_config(os.environ.get("TF_CONFIG"))
    if task is None:
        return True, "chief"
    return task.is_chief, f"{task.task_type}{task.task_index}"


@contextlib.contextmanager
def chief_or_temporary_dir(run_dir: str | os.PathLike, plan=None) -> Iterator[Path]:
    """Yield where this process writes its run files: ``run_dir`` on the chief, a temporary folder elsewhere.

    Use as ``with chief_or_temporary_dir(out, plan) as directory:``.  Every worker must
    still write (a save can need all workers, as in TensorFlow's multi-worker guide), but
    only the chief's copy is kept: the others' folder is removed when the block ends.
    ``plan`` is an :class:`~keras_cnn.train.devices.ExecutionPlan`; without it ``TF_CONFIG``
    decides (the chief is task ``chief``, or worker 0 when there is none).
    """
    chief, name = _is_chief(plan)
    if chief:
        directory = Path(run_dir)
        directory.mkdir(parents=True, exist_ok=True)
        yield directory
        return
    directory = Path(tempfile.mkdtemp(prefix=f"kcnn-{name}-"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _logs_to_floats(results: dict[str, Any]) -> dict[str, float]:
    return {name: float(value) for name, value in results.items()}


def synchronize_loss_scaling(optimizer):
    """Make a ``LossScaleOptimizer`` decide "were the gradients finite?" across all replicas.

    Keras 3.15's ``LossScaleOptimizer`` decides from each replica's *local* gradients before
    they are summed.  When only some replicas overflow (their batches differ), training
    breaks: under ``MultiWorkerMirroredStrategy`` the workers take different branches and
    hang in the gradient sum; under ``MirroredStrategy`` (``model.fit`` on several GPUs)
    replica 0 decides for all and the overflowed gradients reach the weights as NaN.  With
    this, one scalar all-reduce per step shares the decision: every replica skips the step
    (and halves the scale) when any overflowed.  Call it on ``model.optimizer`` after
    ``compile`` whenever a strategy has more than one replica; other optimizers are returned
    unchanged.  The class and the saved configuration stay Keras's own.
    """
    import keras
    import tensorflow as tf

    if not isinstance(optimizer, keras.optimizers.LossScaleOptimizer) or getattr(
            optimizer, "kcnn_synchronized_loss_scaling", False):
        return optimizer
    local_check = optimizer.check_finite

    def check_finite(gradients):
        finite = local_check(gradients)
        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return finite
        overflowed = context.all_reduce(tf.distribute.ReduceOp.SUM, 1.0 - tf.cast(finite, tf.float32))
        return tf.equal(overflowed, 0.0)

    optimizer.check_finite = check_finite
    optimizer.kcnn_synchronized_loss_scaling = True
    return optimizer


def _repeated_from(dataset_fn: Callable[[Any], Any], position: int) -> Callable[[Any], Any]:
    """``dataset_fn`` repeated, starting ``position`` batches in, as an uninterrupted loop would be there.

    The passes over the data are numbered from there too (:func:`keras_cnn.data.randomness.set_epoch`),
    so a resumed loop shuffles and augments as the uninterrupted one did.
    """
    from keras_cnn.data.randomness import set_epoch

    def positioned(input_context):
        dataset = dataset_fn(input_context)
        per_pass = int(dataset.cardinality())
        if per_pass <= 0:   # unknown length: start at the beginning
            set_epoch(0)
            return dataset.repeat()
        set_epoch(position // per_pass)
        return dataset.repeat().skip(position % per_pass)

    return positioned


def _first_batches(dataset_fn: Callable[[Any], Any], steps: int) -> Callable[[Any], Any]:
    """``dataset_fn``'s first ``steps`` batches, again and again: every epoch validates on the same batches.

    (Repeated as it is, an epoch would start where the last one stopped whenever the part is
    not a whole number of ``steps``, and a resumed loop, which starts at the beginning,
    would validate on other images than the uninterrupted one.)
    """
    return lambda input_context: dataset_fn(input_context).take(steps).repeat()


def fit_multiworker(
    model_builder: Callable[[], Any],
    dataset_fn: Callable[[Any], Any],
    *,
    epochs: int,
    steps_per_epoch: int,
    strategy,
    validation_dataset_fn: Callable[[Any], Any] | None = None,
    validation_steps: int | None = None,
    jit_compile: bool = False,
    callbacks: Sequence[Any] | None = None,
    initial_epoch: int = 0,
    verbose: int = 0,
) -> DistributedFit:
    """Train like ``model.fit`` with a loop that works under ``MultiWorkerMirroredStrategy``.

    ``model_builder()`` is called under ``strategy.scope()`` and must return a compiled model
    (``model.compile(optimizer=..., loss=..., metrics=[...])``): the same builder serves
    ``fit`` elsewhere.  ``dataset_fn(input_context)`` returns this pipeline's batched
    ``tf.data.Dataset`` of ``(x, y)`` or ``(x, y, sample_weight)``, sharded and batched per
    replica (see the module docstring: batch size is global, learning rate unscaled); it is
    repeated here, and each epoch takes ``steps_per_epoch`` steps from where the previous one
    stopped; a loop resumed at a later epoch (a callback setting it, as kcnn's checkpoint
    does) starts where the uninterrupted loop would be.  ``validation_dataset_fn``/``validation_steps`` add
    ``val_*`` entries, measured every epoch on the first ``validation_steps`` batches.
    ``jit_compile`` compiles each replica's forward and backward pass with XLA (the
    cross-worker gradient sum and the update stay outside it).  Keras ``callbacks`` get the
    epoch and batch hooks, epoch logs equal on every worker, and may stop training via
    ``model.stop_training``.  Works under any strategy, so one-worker runs can check it
    against ``fit``.
    """
    import keras
    import tensorflow as tf

    if steps_per_epoch is None or steps_per_epoch < 1:
        raise UserError(f"steps_per_epoch must be a positive integer under multi-worker training, "
                        f"received: {steps_per_epoch!r}")
    if validation_dataset_fn is not None and (validation_steps is None or validation_steps < 1):
        raise UserError(f"validation_steps must be a positive integer with a validation dataset, "
                        f"received: {validation_steps!r}")

    with strategy.scope():
        model = model_builder()
        if not getattr(model, "compiled", False) or model.optimizer is None:
            raise UserError("model_builder must return a compiled model (call model.compile(...) in it)")
        optimizer = model.optimizer
        if (model.dtype_policy.name == "mixed_float16"
                and not isinstance(optimizer, keras.optimizers.LossScaleOptimizer)):
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(model.trainable_variables)
        synchronize_loss_scaling(optimizer)
        loss_tracker = keras.metrics.Mean(name="loss")


    def forward_backward(x, y, sample_weight, batch_share):
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            # Keras averages the loss over this replica's batch and divides by the replica
            # count; ``batch_share`` turns that into a mean over the global batch, exact even
            # when the last batch splits unevenly (it is 1.0 when the split is even).
            loss = model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
            scaled_loss = optimizer.scale_loss(loss * tf.cast(batch_share, loss.dtype))
        gradients = tape.gradient(scaled_loss, model.trainable_variables)
        return loss, y_pred, gradients

    if jit_compile:
        forward_backward = tf.function(forward_backward, jit_compile=True, reduce_retracing=True)

    def local_batch_size(x):
        first = tf.nest.flatten(x)[0]
        return tf.cast(tf.shape(first)[0], tf.float32)

    def replica_train_step(batch):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(batch)
        replica_context = tf.distribute.get_replica_context()
        local = local_batch_size(x)
        global_batch = replica_context.all_reduce(tf.distribute.ReduceOp.SUM, local)
        batch_share = local * replica_context.num_replicas_in_sync / global_batch
        loss, y_pred, gradients = forward_backward(x, y, sample_weight, batch_share)
        # The optimizer sums gradients across replicas and workers, then applies them once.
        optimizer.apply(gradients, model.trainable_variables)
        loss_tracker.update_state(loss * replica_context.num_replicas_in_sync, sample_weight=local)
        model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def replica_test_step(batch):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(batch)
        replica_context = tf.distribute.get_replica_context()
        y_pred = model(x, training=False)
        loss = model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=False)
        loss_tracker.update_state(loss * replica_context.num_replicas_in_sync,
                                  sample_weight=local_batch_size(x))
        model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    @tf.function
    def train_function(iterator):
        strategy.run(replica_train_step, args=(next(iterator),))

    @tf.function
    def test_function(iterator):
        strategy.run(replica_test_step, args=(next(iterator),))

    @tf.function
    def read_results():
        # Reading sums each metric's variables over all replicas and workers.
        results = dict(model.get_metrics_result())
        results["loss"] = loss_tracker.result()
        return results

    def reset_metrics():
        loss_tracker.reset_state()
        for metric in model.metrics:
            metric.reset_state()

    chief = bool(getattr(strategy.extended, "should_checkpoint", True))
    callback_list = keras.callbacks.CallbackList(
        list(callbacks or []), add_history=True, add_progbar=bool(verbose) and chief,
        model=model, verbose=verbose, epochs=epochs, steps=steps_per_epoch,
    )
    result = DistributedFit(model=model)
    model.stop_training = False
    callback_list.on_train_begin()
    # BackupAndRestore tells fit where to resume through this attribute; honour it the same way.
    initial_epoch = initial_epoch_of(model) or initial_epoch
    train_iterator = iter(strategy.distribute_datasets_from_function(
        _repeated_from(dataset_fn, initial_epoch * steps_per_epoch)))
    validation_iterator = None
    if validation_dataset_fn is not None:
        validation_dataset = strategy.distribute_datasets_from_function(
            _first_batches(validation_dataset_fn, validation_steps))
        validation_iterator = iter(validation_dataset)
    for epoch in range(initial_epoch, epochs):
        reset_metrics()
        callback_list.on_epoch_begin(epoch)
        for step in range(steps_per_epoch):
            callback_list.on_train_batch_begin(step)
            train_function(train_iterator)
            callback_list.on_train_batch_end(step)
        logs = _logs_to_floats(read_results())
        if validation_iterator is not None:
            reset_metrics()
            for _ in range(validation_steps):
                test_function(validation_iterator)
            logs.update({f"val_{name}": value for name, value in _logs_to_floats(read_results()).items()})
        callback_list.on_epoch_end(epoch, logs)
        result.epochs.append(epoch)
        for name, value in logs.items():
            result.history.setdefault(name, []).append(value)
        if model.stop_training:
            break
    callback_list.on_train_end(logs={name: values[-1] for name, values in result.history.items()})
    return result
