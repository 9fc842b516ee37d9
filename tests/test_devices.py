"""Device, precision, XLA and strategy decisions (fake GPUs), and applying them on this CPU."""

from __future__ import annotations

import json

import pytest

from keras_cnn.errors import UserError
from keras_cnn.train.devices import decide, describe, parse_slurm, parse_tf_config

A100 = {"name": "NVIDIA A100-SXM4-40GB", "compute_capability": "8.0"}
T4 = {"name": "Tesla T4", "compute_capability": "7.5"}
P100_GTX1080 = {"name": "NVIDIA GeForce GTX 1080", "compute_capability": "6.1"}


def cluster(workers: int, index: int, chief: bool = False) -> dict:
    spec = {"worker": [f"127.0.0.1:{20000 + number}" for number in range(workers)]}
    if chief:
        spec["chief"] = ["127.0.0.1:19999"]
    return {"cluster": spec, "task": {"type": "worker", "index": index}}


def test_cpu_keeps_float32_without_xla_on_one_device():
    plan = decide("auto", "auto", "auto", gpus=[], cpu_cores=2)
    assert (plan.device, plan.precision_policy, plan.mixed_precision, plan.jit_compile) == (
        "cpu", "float32", False, False)
    assert (plan.strategy_name, plan.replicas, plan.is_chief, plan.workers) == ("default", 1, True, 1)
    assert describe(plan) == "device: cpu (2 cores) · strategy: default · precision: float32 · xla: off"


def test_modern_gpu_turns_on_mixed_float16_and_xla():
    plan = decide("auto", "auto", "auto", gpus=[A100])
    assert (plan.device, plan.precision_policy, plan.mixed_precision, plan.jit_compile) == (
        "gpu", "mixed_float16", True, True)
    assert plan.strategy_name == "default" and plan.replicas == 1
    assert describe(plan) == ("device: gpu 1x NVIDIA A100-SXM4-40GB (cc 8.0) · strategy: default · "
                              "precision: mixed_float16 · xla: on")


def test_old_gpu_keeps_float32_but_uses_xla():
    plan = decide("auto", "auto", "auto", gpus=[P100_GTX1080])
    assert plan.precision_policy == "float32" and not plan.mixed_precision
    assert plan.jit_compile
    assert any("below 7.0" in note for note in plan.notes)


def test_one_old_gpu_among_modern_ones_keeps_float32():
    plan = decide("auto", "off", "default", gpus=[T4, P100_GTX1080])
    assert plan.precision_policy == "float32"


def test_explicit_switches_win():
    assert decide("off", "off", "auto", gpus=[A100]).precision_policy == "float32"
    assert decide("off", "off", "auto", gpus=[A100]).jit_compile is False
    forced = decide("on", "auto", "auto", gpus=[P100_GTX1080])
    assert forced.precision_policy == "mixed_float16" and forced.notes
    cpu = decide("on", "on", "auto", gpus=[])
    # float16 has no fast CPU kernels: "on" on CPU means bfloat16, with a warning.
    assert cpu.precision_policy == "mixed_bfloat16" and cpu.mixed_precision and cpu.jit_compile
    assert any("bfloat16" in note for note in cpu.notes) and any("XLA on CPU" in note for note in cpu.notes)


def test_several_gpus_mirror_without_xla():
    plan = decide("auto", "auto", "auto", gpus=[A100, A100])
    assert (plan.strategy_name, plan.replicas, plan.jit_compile) == ("mirrored", 2, False)
    assert plan.precision_policy == "mixed_float16"
    assert "2x NVIDIA A100-SXM4-40GB (cc 8.0)" in describe(plan)
    assert "strategy: mirrored (2 replicas)" in describe(plan)
    with pytest.raises(UserError, match="--xla on cannot be used with --strategy mirrored"):
        decide("auto", "on", "auto", gpus=[A100, A100])
    assert decide("auto", "auto", "default", gpus=[A100, A100]).jit_compile is True


def test_strategy_auto_follows_tf_config():
    first = decide("auto", "auto", "auto", gpus=[], tf_config=json.dumps(cluster(2, 0)))
    second = decide("auto", "auto", "auto", gpus=[], tf_config=cluster(2, 1))
    assert (first.strategy_name, first.workers, first.replicas, first.is_chief) == ("multiworker", 2, 2, True)
    assert (second.task_type, second.task_index, second.is_chief) == ("worker", 1, False)
    assert "worker 0 of 2 workers, chief" in describe(first)
    gpus = decide("auto", "auto", "auto", gpus=[T4, T4], tf_config=cluster(3, 2))
    assert (gpus.strategy_name, gpus.replicas, gpus.jit_compile) == ("multiworker", 6, True)
    # A one-worker TF_CONFIG is not a cluster worth a collective strategy.
    assert decide("auto", "auto", "auto", gpus=[], tf_config=cluster(1, 0)).strategy_name == "default"


def test_chief_is_the_chief_task_when_there_is_one():
    assert parse_tf_config(cluster(2, 0, chief=True)).is_chief is False
    spec = cluster(2, 0, chief=True)["cluster"]
    chief = parse_tf_config({"cluster": spec, "task": {"type": "chief", "index": 0}})
    assert chief.is_chief and chief.workers == 3
    assert parse_tf_config(None) is None and parse_tf_config("") is None


def test_multiworker_needs_a_cluster():
    with pytest.raises(UserError, match="needs TF_CONFIG"):
        decide("auto", "auto", "multiworker", gpus=[])
    slurm = {"SLURM_STEP_NUM_TASKS": "4", "SLURM_PROCID": "3"}
    plan = decide("auto", "auto", "multiworker", gpus=[], slurm_environment=slurm)
    assert (plan.workers, plan.task_index, plan.is_chief, plan.replicas) == (4, 3, False, 4)
    # A Slurm allocation alone (no srun step) does not start multi-worker training.
    assert parse_slurm({"SLURM_NTASKS": "4", "SLURM_PROCID": "0"}) is None
    assert decide("auto", "auto", "auto", gpus=[], slurm_environment=slurm).strategy_name == "default"


@pytest.mark.parametrize("arguments, message", [
    (("fast", "auto", "auto"), "--mixed-precision must be one of auto, on, off, received: 'fast'"),
    (("auto", "yes", "auto"), "--xla must be one of auto, on, off, received: 'yes'"),
    (("auto", "auto", "horovod"), "received: 'horovod'"),
])
def test_bad_switch_values_name_the_value(arguments, message):
    with pytest.raises(UserError, match=message):
        decide(*arguments, gpus=[])


def test_bad_tf_config_is_a_user_error():
    with pytest.raises(UserError, match="not valid JSON"):
        parse_tf_config("{cluster")
    with pytest.raises(UserError, match="is not in the cluster"):
        parse_tf_config({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 5}})


def test_plan_is_recorded_as_plain_json():
    plan = decide("auto", "auto", "auto", gpus=[A100], tf_config=cluster(2, 0))
    payload = json.loads(json.dumps(plan.to_dict()))
    assert payload["precision_policy"] == "mixed_float16"
    assert payload["gpus"] == [A100]
    assert payload["requested"] == {"mixed_precision": "auto", "xla": "auto", "strategy": "auto"}


# ---------------------------------------------------------------- applying on this CPU

@pytest.fixture
def restore_policy():
    import keras

    policy = keras.mixed_precision.global_policy()
    yield
    keras.mixed_precision.set_global_policy(policy)


def test_apply_on_cpu_keeps_float32_and_the_default_strategy(restore_policy):
    import keras
    import tensorflow as tf

    from keras_cnn.train.devices import apply_execution, resolve_execution, visible_gpus

    resolved = resolve_execution()
    assert resolved.gpus == visible_gpus() and resolved.cpu_cores >= 1
    plan = decide("auto", "auto", "auto", gpus=[])
    strategy = apply_execution(plan)
    assert keras.mixed_precision.global_policy().name == "float32"
    assert plan.jit_compile is False and plan.replicas == 1
    assert strategy is tf.distribute.get_strategy()


def test_mixed_float16_model_gets_loss_scaling_and_float32_output(restore_policy):
    """What Keras does by itself once the policy is set: the note in devices.py rests on it."""
    import keras

    from keras_cnn.train.devices import apply_execution

    apply_execution(decide("on", "off", "default", gpus=[T4]))
    assert keras.mixed_precision.global_policy().name == "mixed_float16"
    model = keras.Sequential([
        keras.Input((4,)),
        keras.layers.Dense(8),
        keras.layers.Dense(3, activation="softmax", dtype="float32"),
    ])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert model.layers[0].compute_dtype == "float16"
    assert model(keras.ops.ones((1, 4))).dtype == "float32"


def test_jit_compile_for_says_when_a_layer_forbids_xla(caplog):
    import keras

    from keras_cnn.train.devices import jit_compile_for

    plain = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(2)])
    augmented = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.RandomRotation(0.1, name="rotate"),
                                  keras.layers.Flatten(), keras.layers.Dense(2)])
    with_xla = decide("auto", "on", "default", gpus=[])
    assert jit_compile_for(plain, with_xla) is True
    assert jit_compile_for(augmented, with_xla) is False
    assert "rotate" in caplog.text
    assert jit_compile_for(plain, decide("auto", "off", "default", gpus=[])) is False


def test_kcnn_devices_prints_the_plan():
    from click.testing import CliRunner

    from keras_cnn.cli import cli
    from keras_cnn.train.devices import visible_gpus

    result = CliRunner().invoke(cli, ["devices"])
    assert result.exit_code == 0 and "tensorflow 2." in result.stdout and "precision:" in result.stdout
    has_gpu = bool(visible_gpus())
    result = CliRunner().invoke(cli, ["devices", "--require-gpu", "--json"])
    assert result.exit_code == (0 if has_gpu else 1)
    payload = json.loads(result.stdout)
    assert payload["device"] == ("gpu" if has_gpu else "cpu") and "cuda_build" in payload


@pytest.mark.slow
def test_gpu_benchmark_runs_on_cpu_in_quick_mode():
    """benchmarks/gpu.py --quick: the smoke run of the GPU benchmark (float32 only, ~1 min on 2 cores)."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"
    result = subprocess.run([sys.executable, str(script), "--quick", "--settings", "float32", "--no-record"],
                            check=False, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| float32 |" in result.stdout and "input wait" in result.stderr
