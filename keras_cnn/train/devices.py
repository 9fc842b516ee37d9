"""Where and how training runs: device, tf.distribute strategy, precision and XLA.

Three switches shared by ``train``, ``transfer`` and ``finetune``:

* ``--mixed-precision auto|on|off``: ``auto`` turns ``mixed_float16`` on when every GPU has
  compute capability 7.0 or more (Volta and later have the tensor cores that make float16
  fast) and leaves float32 on CPU.  ``on`` without a GPU uses ``mixed_bfloat16`` (float16
  has no fast CPU kernels) and warns: on the 2-core CPU this was measured on, bfloat16 made
  EfficientNet-B0 2.8x slower.  Keras's ``compile`` wraps the optimizer in a
  ``LossScaleOptimizer`` by itself under ``mixed_float16`` (``auto_scale_loss=True``) when
  the model was built after the policy was set, so loss scaling needs no code in ``fit``;
  the custom multi-worker loop wraps it explicitly.  With more than one replica, call
  :func:`keras_cnn.train.distribute.synchronize_loss_scaling` on ``model.optimizer`` after
  ``compile``: Keras 3.15 decides "overflowed, skip this step" per replica.
  Models must keep their last activation in float32 (``dtype="float32"`` on the final
  ``Dense``/``Activation``) so softmax/sigmoid and the loss are computed in full precision.
* ``--xla auto|on|off``: ``auto`` compiles the train step with XLA on GPUs and not on CPU
  (measured here: XLA made a small CNN 2.7x slower on CPU).  Keras's own ``"auto"`` quietly
  turns XLA off under any tf.distribute strategy and for models holding layers that do not
  support it (the random augmentation layers), so kcnn decides explicitly, keeps
  augmentation in the tf.data pipeline, and :func:`jit_compile_for` says when a model forces
  XLA off.  ``model.fit`` under ``MirroredStrategy`` cannot run XLA (Keras compiles the whole
  multi-replica step, which then reads variables on other devices), so ``auto`` leaves it off
  there and ``on`` is refused.
* ``--strategy auto|default|mirrored|multiworker``: ``auto`` = ``multiworker`` when
  ``TF_CONFIG`` names more than one worker, ``mirrored`` with more than one GPU, else the
  default (single device) strategy.  ``multiworker`` also accepts a Slurm job step (``srun``)
  when no ``TF_CONFIG`` is set.  The batch size is always global (split across replicas) and
  the learning rate is used as given: nothing is scaled with the number of replicas.

:func:`decide` is the pure decision (fed fake GPU lists in tests); :func:`resolve_execution`
feeds it the real machine; :func:`apply_execution` makes the decision real and must run
before any model, dataset or other TensorFlow op is created.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from keras_cnn.choices import StrategyName, Switch, names
from keras_cnn.errors import UserError

logger = logging.getLogger(__name__)

SWITCH_CHOICES = names(Switch)
STRATEGY_CHOICES = names(StrategyName)

# Tensor cores (fast float16 matrix math) arrived with Volta, compute capability 7.0.
MIXED_PRECISION_MIN_CAPABILITY = (7, 0)

GPU_POLICY = "mixed_float16"
CPU_POLICY = "mixed_bfloat16"
FULL_PRECISION = "float32"


@dataclass
class ExecutionPlan:
    """The resolved device, strategy, precision and XLA settings of one training run.

    ``replicas`` is the number of model copies that each get a slice of every global batch;
    :func:`apply_execution` corrects it to the built strategy's ``num_replicas_in_sync``.
    ``is_chief`` tells whether this process writes the run directory (always true outside
    multi-worker training).  ``notes`` lists why a setting differs from what was asked or
    why it may be slow; :func:`apply_execution` logs them.
    """

    device: str                                   # "cpu" | "gpu"
    gpus: list[dict[str, Any]]                    # [{"name": ..., "compute_capability": "8.0"}]
    mixed_precision: bool
    precision_policy: str                         # "float32" | "mixed_float16" | "mixed_bfloat16"
    jit_compile: bool
    strategy_name: str                            # "default" | "mirrored" | "multiworker"
    replicas: int
    is_chief: bool
    workers: int = 1
    task_type: str | None = None                  # from TF_CONFIG / Slurm: "chief" | "worker" | ...
    task_index: int | None = None
    cpu_cores: int | None = None
    requested: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values, for ``config.json``."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ClusterTask:
    """This process's place in a multi-worker cluster (from ``TF_CONFIG`` or Slurm)."""

    workers: int                   # processes that train (chief + workers)
    task_type: str
    task_index: int
    is_chief: bool
    source: str                    # "TF_CONFIG" | "slurm"


def parse_tf_config(tf_config: str | Mapping[str, Any] | None) -> ClusterTask | None:
    """Read a ``TF_CONFIG`` (JSON text or dict); ``None`` when it is unset or names no cluster.

    The chief is the task of type ``chief``, or worker 0 when the cluster has no chief
    (the rule ``MultiWorkerMirroredStrategy`` itself follows).
    """
    if tf_config is None or tf_config == "" or tf_config == {}:
        return None
    if isinstance(tf_config, str):
        try:
            tf_config = json.loads(tf_config)
        except ValueError as error:
            raise UserError(f"TF_CONFIG is not valid JSON ({error}), received: {tf_config!r}") from None
    if not isinstance(tf_config, Mapping):
        raise UserError(f"TF_CONFIG must be a JSON object, received: {tf_config!r}")
    cluster = tf_config.get("cluster") or {}
    if not cluster:
        return None
    task = tf_config.get("task") or {}
    task_type = task.get("type")
    if task_type is None:
        raise UserError(f"TF_CONFIG names a cluster but no task type, received task: {task!r}")
    try:
        task_index = int(task.get("index", 0))
    except (TypeError, ValueError):
        raise UserError(f"TF_CONFIG task index must be an integer, received: {task.get('index')!r}") from None
    members = cluster.get(task_type)
    if members is None or not 0 <= task_index < len(members):
        raise UserError(
            f"TF_CONFIG task {task_type}:{task_index} is not in the cluster, "
            f"received cluster: {dict(cluster)!r}"
        )
    workers = len(cluster.get("chief", [])) + len(cluster.get("worker", []))
    has_chief = bool(cluster.get("chief"))
    is_chief = task_type == "chief" or (task_type == "worker" and task_index == 0 and not has_chief)
    return ClusterTask(workers, task_type, task_index, is_chief, "TF_CONFIG")


def parse_slurm(environment: Mapping[str, str] | None) -> ClusterTask | None:
    """This process's task in a Slurm job step (``srun``), or ``None`` outside one.

    Only a job *step* counts (``SLURM_STEP_NUM_TASKS``): a batch script running one Python
    process inside a many-task allocation must not wait for workers that never start.
    """
    if not environment or "SLURM_STEP_NUM_TASKS" not in environment:
        return None
    try:
        workers = int(environment["SLURM_STEP_NUM_TASKS"])
        index = int(environment.get("SLURM_PROCID", "0"))
    except ValueError:
        raise UserError(
            "SLURM_STEP_NUM_TASKS and SLURM_PROCID must be integers, received: "
            f"{environment.get('SLURM_STEP_NUM_TASKS')!r}, {environment.get('SLURM_PROCID')!r}"
        ) from None
    return ClusterTask(workers, "worker", index, index == 0, "slurm")


def _check_choice(option: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise UserError(f"{option} must be one of {', '.join(choices)}, received: {value!r}")
    return value


def _capability(gpu: Mapping[str, Any]) -> tuple[int, int] | None:
    """A GPU's compute capability as (major, minor), from "8.0", (8, 0) or None."""
    value = gpu.get("compute_capability")
    if value is None:
        return None
    if isinstance(value, str):
        major, _, minor = value.partition(".")
        return int(major), int(minor or 0)
    return int(value[0]), int(value[1])


def _decide_strategy(strategy: str, gpus: list[dict[str, Any]], cluster: ClusterTask | None) -> str:
    if strategy == "auto":
        if cluster is not None and cluster.source == "TF_CONFIG" and cluster.workers > 1:
            return "multiworker"
        return "mirrored" if len(gpus) > 1 else "default"
    if strategy == "multiworker" and cluster is None:
        raise UserError(
            "--strategy multiworker needs TF_CONFIG naming the cluster and this task "
            "(or a Slurm job step started with srun), received: no TF_CONFIG"
        )
    return strategy


def _decide_precision(mixed_precision: str, gpus: list[dict[str, Any]], notes: list[str]) -> str:
    if mixed_precision == "off":
        return FULL_PRECISION
    capabilities = [_capability(gpu) for gpu in gpus]
    modern = bool(gpus) and all(
        capability is not None and capability >= MIXED_PRECISION_MIN_CAPABILITY for capability in capabilities
    )
    if mixed_precision == "auto":
        if gpus and not modern:
            notes.append("mixed precision off: a GPU has compute capability below 7.0 (no tensor cores)")
        return GPU_POLICY if modern else FULL_PRECISION
    # "on"
    if not gpus:
        notes.append("mixed precision on CPU uses bfloat16 and is usually slower than float32 there")
        return CPU_POLICY
    if not modern:
        notes.append("mixed_float16 on a GPU below compute capability 7.0 saves memory but is rarely faster")
    return GPU_POLICY


def _decide_xla(xla: str, gpus: list[dict[str, Any]], strategy_name: str, notes: list[str]) -> bool:
    if xla == "off":
        return False
    if strategy_name == "mirrored":
        if xla == "on":
            raise UserError(
                "--xla on cannot be used with --strategy mirrored: Keras compiles the whole multi-replica "
                "step with XLA, which then cannot read variables held on the other devices; "
                "use --xla off, or --strategy default to train one device with XLA"
            )
        if gpus:
            notes.append("XLA off: model.fit under MirroredStrategy cannot compile its multi-replica step")
        return False
    if xla == "auto":
        return bool(gpus)
    if not gpus:
        notes.append("XLA on CPU usually makes training slower (measured 2.7x slower on a small CNN)")
    return True


def decide(
    mixed_precision: str = "auto",
    xla: str = "auto",
    strategy: str = "auto",
    gpus: list[dict[str, Any]] | None = None,
    tf_config: str | Mapping[str, Any] | None = None,
    *,
    slurm_environment: Mapping[str, str] | None = None,
    cpu_cores: int | None = None,
) -> ExecutionPlan:
    """Decide the execution plan from the switches and a description of the machine.

    ``gpus`` is a list of ``{"name": str, "compute_capability": "7.5"}`` (``[]`` = CPU only);
    ``tf_config`` the ``TF_CONFIG`` value (JSON text or dict, ``None`` when unset);
    ``slurm_environment`` the environment when Slurm may have started this process.
    Pure: touches no device, so tests can describe any machine.
    """
    _check_choice("--mixed-precision", mixed_precision, SWITCH_CHOICES)
    _check_choice("--xla", xla, SWITCH_CHOICES)
    _check_choice("--strategy", strategy, STRATEGY_CHOICES)
    gpus = [dict(gpu) for gpu in (gpus or [])]
    cluster = parse_tf_config(tf_config)
    if cluster is None and strategy == "multiworker":
        cluster = parse_slurm(slurm_environment)
    notes: list[str] = []

    strategy_name = _decide_strategy(strategy, gpus, cluster)
    if strategy_name == "mirrored" and len(gpus) < 2:
        notes.append(f"mirrored strategy with {len(gpus)} GPU(s): no speed-up over the default strategy")
    policy = _decide_precision(mixed_precision, gpus, notes)
    jit_compile = _decide_xla(xla, gpus, strategy_name, notes)

    devices_per_worker = max(1, len(gpus))
    if strategy_name == "multiworker":
        replicas, is_chief = cluster.workers * devices_per_worker, cluster.is_chief
        workers, task_type, task_index = cluster.workers, cluster.task_type, cluster.task_index
    else:
        replicas = devices_per_worker if strategy_name == "mirrored" else 1
        is_chief, workers, task_type, task_index = True, 1, None, None
    return ExecutionPlan(
        device="gpu" if gpus else "cpu",
        gpus=gpus,
        mixed_precision=policy != FULL_PRECISION,
        precision_policy=policy,
        jit_compile=jit_compile,
        strategy_name=strategy_name,
        replicas=replicas,
        is_chief=is_chief,
        workers=workers,
        task_type=task_type,
        task_index=task_index,
        cpu_cores=cpu_cores,
        requested={"mixed_precision": mixed_precision, "xla": xla, "strategy": strategy},
        notes=notes,
    )


def available_cpu_cores() -> int:
    """CPU cores this process may use (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no sched_getaffinity
        return os.cpu_count() or 1


def visible_gpus() -> list[dict[str, Any]]:
    """The GPUs TensorFlow sees, with name and compute capability, without initialising them."""
    import tensorflow as tf

    from keras_cnn.library_chatter import native_stderr_silenced

    gpus = []
    # Listing GPUs probes CUDA, which logs an error line on every machine without one.
    with native_stderr_silenced():
        devices = tf.config.list_physical_devices("GPU")
    for device in devices:
        try:
            details = tf.config.experimental.get_device_details(device)
        except (RuntimeError, ValueError):
            details = {}
        capability = details.get("compute_capability")
        gpus.append({
            "name": details.get("device_name", device.name),
            "compute_capability": f"{capability[0]}.{capability[1]}" if capability else None,
        })
    return gpus


def resolve_execution(mixed_precision: str = "auto", xla: str = "auto",
                      strategy: str = "auto") -> ExecutionPlan:
    """Decide the execution plan for this machine and this process's ``TF_CONFIG``/Slurm task."""
    return decide(
        mixed_precision,
        xla,
        strategy,
        gpus=visible_gpus(),
        tf_config=os.environ.get("TF_CONFIG"),
        slurm_environment=os.environ,
        cpu_cores=available_cpu_cores(),
    )


def enable_memory_growth() -> None:
    """Let TensorFlow take GPU memory as needed instead of all of it at start.

    Must run before anything initialises the GPUs; later it only logs a warning.  A user's
    own ``TF_FORCE_GPU_ALLOW_GROWTH`` wins (TensorFlow reads it itself).
    """
    import tensorflow as tf

    if os.environ.get("TF_FORCE_GPU_ALLOW_GROWTH"):
        return
    for device in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(device, True)
        except RuntimeError as error:  # the GPUs were initialised already
            logger.warning("could not enable GPU memory growth: %s", error)
            return


def _default_strategy(plan: ExecutionPlan):
    import tensorflow as tf

    return tf.distribute.get_strategy()


def _mirrored_strategy(plan: ExecutionPlan):
    import tensorflow as tf

    if plan.gpus:
        return tf.distribute.MirroredStrategy()
    # No GPU: mirror over the logical CPU devices when some were configured (tests do),
    # since MirroredStrategy() alone would use one CPU device only.
    cpus = [device.name for device in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(cpus if len(cpus) > 1 else None)


def _multiworker_strategy(plan: ExecutionPlan):
    import tensorflow as tf

    resolver = None
    if not os.environ.get("TF_CONFIG"):
        resolver = tf.distribute.cluster_resolver.SlurmClusterResolver()
    return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)


STRATEGY_BUILDERS: dict[str, Callable[[ExecutionPlan], Any]] = {
    "default": _default_strategy,
    "mirrored": _mirrored_strategy,
    "multiworker": _multiworker_strategy,
}


def apply_execution(plan: ExecutionPlan, memory_growth: bool = True):
    """Make ``plan`` real and return its ``tf.distribute.Strategy``.

    In this order: GPU memory growth (before anything initialises the GPUs), the global
    Keras dtype policy (models built afterwards take it, and ``compile`` then adds loss
    scaling for ``mixed_float16``), then the strategy (``MultiWorkerMirroredStrategy``
    must be created before any other TensorFlow op runs).  ``plan.replicas`` is set to the
    strategy's ``num_replicas_in_sync``; ``plan.notes`` are logged as warnings.
    """
    import keras

    if memory_growth:
        enable_memory_growth()
    keras.mixed_precision.set_global_policy(plan.precision_policy)
    strategy = STRATEGY_BUILDERS[plan.strategy_name](plan)
    plan.replicas = int(strategy.num_replicas_in_sync)
    for note in plan.notes:
        logger.warning("%s", note)
    return strategy


def jit_compile_for(model, plan: ExecutionPlan) -> bool:
    """The ``jit_compile`` value to pass to ``model.compile``: the plan's, unless the model forbids it.

    Keras turns XLA off for models holding layers that cannot be compiled (random
    augmentation layers, lookups); this says so instead of letting it happen silently.
    """
    if not plan.jit_compile:
        return False
    from keras_cnn.keras_internals import nested_layers

    blocking = [layer.name for layer in nested_layers(model) if not getattr(layer, "supports_jit", True)]
    if blocking:
        logger.warning("XLA off: layers %s cannot be compiled (keep augmentation in the tf.data pipeline)",
                       ", ".join(blocking))
        return False
    return True


def describe(plan: ExecutionPlan) -> str:
    """One line saying where and how training runs, printed once at start."""
    if plan.gpus:
        names: dict[str, int] = {}
        for gpu in plan.gpus:
            label = gpu.get("name") or "GPU"
            if gpu.get("compute_capability"):
                label += f" (cc {gpu['compute_capability']})"
            names[label] = names.get(label, 0) + 1
        device = "gpu " + ", ".join(f"{count}x {label}" for label, count in names.items())
    else:
        device = f"cpu ({plan.cpu_cores} cores)" if plan.cpu_cores else "cpu"
    strategy = plan.strategy_name
    details = []
    if plan.strategy_name != "default":
        details.append(f"{plan.replicas} replica{'s' if plan.replicas != 1 else ''}")
    if plan.strategy_name == "multiworker":
        role = "chief" if plan.is_chief else "not chief"
        details.append(f"{plan.task_type} {plan.task_index} of {plan.workers} workers, {role}")
    if details:
        strategy += f" ({'; '.join(details)})"
    return (f"device: {device} · strategy: {strategy} · precision: {plan.precision_policy} · "
            f"xla: {'on' if plan.jit_compile else 'off'}")
