"""Multi-worker and mirrored training, each in fresh processes.

The test module doubles as the worker script (``python tests/test_distribute.py MODE OUT``):
TensorFlow's cluster and logical-device settings are fixed per process, so every
distributed run gets its own process and cannot leak into other tests.  Every subprocess
has a hard timeout so a hung collective cannot stall the test run.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve()
TIMEOUT_SECONDS = 120
SAMPLES, GLOBAL_BATCH, EPOCHS = 64, 16, 2
STEPS = SAMPLES // GLOBAL_BATCH
VALIDATION_SAMPLES = 32
VALIDATION_STEPS = VALIDATION_SAMPLES // GLOBAL_BATCH
TOLERANCE = 1e-5


# --------------------------------------------------------------------------- worker side

def make_data(seed: int, count: int):
    """Tiny 8x8 grey "images" with 3 classes that depend on the pixels (learnable)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, size=(count, 8, 8, 1)).astype("float32")
    y = (x[:, :4].mean(axis=(1, 2, 3)) // 86).astype("int64").clip(0, 2)
    return x, y


def build_model(learning_rate: float = 0.05):
    """A small CNN with fixed initial weights (same seed in every process)."""
    import keras

    keras.utils.set_random_seed(7)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Rescaling(1 / 255),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(3, activation="softmax", dtype="float32"),
    ])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"], jit_compile=False)
    return model


def dataset_fn_for(x, y):
    """A ``dataset_fn`` that shards by file (index) and batches per replica, in order."""
    import tensorflow as tf

    from keras_cnn.data.pipeline import per_replica_batch_size
    from keras_cnn.data.pipeline import shard_file_list

    def dataset_fn(input_context=None):
        indices = shard_file_list(list(range(len(x))), input_context)
        dataset = tf.data.Dataset.from_tensor_slices((x[indices], y[indices]))
        return dataset.batch(per_replica_batch_size(GLOBAL_BATCH, input_context))

    return dataset_fn


def flat_weights(model) -> np.ndarray:
    return np.concatenate([np.asarray(weight, dtype="float64").ravel() for weight in model.get_weights()])


def run_custom_loop(strategy, jit_compile: bool = False):
    from keras_cnn.train.distribute import fit_multiworker

    train, validation = make_data(0, SAMPLES), make_data(1, VALIDATION_SAMPLES)
    return fit_multiworker(
        build_model, dataset_fn_for(*train), epochs=EPOCHS, steps_per_epoch=STEPS, strategy=strategy,
        validation_dataset_fn=dataset_fn_for(*validation), validation_steps=VALIDATION_STEPS,
        jit_compile=jit_compile,
    )


def run_fit(strategy):
    train, validation = make_data(0, SAMPLES), make_data(1, VALIDATION_SAMPLES)
    with strategy.scope():
        model = build_model()
    history = model.fit(dataset_fn_for(*train)(), validation_data=dataset_fn_for(*validation)(),
                        epochs=EPOCHS, shuffle=False, verbose=0)
    return model, history.history


def save(out: Path, name: str, model, history) -> None:
    np.save(out / f"{name}.npy", flat_weights(model))
    (out / f"{name}.json").write_text(json.dumps(history))


def overflow_on_one_worker(out: Path, index: int, strategy) -> None:
    """mixed_float16 where only worker 1's gradients overflow: both must skip the steps.

    Worker 0 reads zeros (finite gradients), worker 1 huge pixels (float16 overflows).
    Were the workers to decide alone, worker 0 would wait forever in the gradient sum.
    """
    import keras
    import tensorflow as tf

    from keras_cnn.train.distribute import fit_multiworker

    def dataset_fn(input_context):
        scale = 0.0 if input_context.input_pipeline_id == 0 else 1e6
        x = np.full((GLOBAL_BATCH, 8, 8, 1), scale, dtype="float32")
        y = np.zeros(GLOBAL_BATCH, dtype="int64")
        batch = GLOBAL_BATCH // input_context.num_input_pipelines
        return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)

    keras.mixed_precision.set_global_policy("mixed_float16")
    fitted = fit_multiworker(build_model, dataset_fn, epochs=1, steps_per_epoch=3, strategy=strategy)
    keras.mixed_precision.set_global_policy("float32")
    optimizer = fitted.model.optimizer
    np.save(out / f"overflow{index}.npy", flat_weights(fitted.model))
    (out / f"overflow{index}.json").write_text(json.dumps({
        "optimizer": type(optimizer).__name__, "scale": float(optimizer.dynamic_scale.numpy()),
    }))


def mirrored_overflow_on_one_replica(out: Path, strategy) -> None:
    """model.fit under MirroredStrategy + mixed_float16 where only replica 1 overflows.

    Keras alone lets replica 0 decide and writes NaN into the weights; with
    ``synchronize_loss_scaling`` the step is skipped and the scale halved.
    """
    import keras

    from keras_cnn.train.distribute import synchronize_loss_scaling

    keras.mixed_precision.set_global_policy("mixed_float16")
    with strategy.scope():
        model = build_model()
    synchronize_loss_scaling(model.optimizer)
    half = GLOBAL_BATCH // 2
    x = np.concatenate([np.zeros((half, 8, 8, 1)), np.full((half, 8, 8, 1), 1e6)]).astype("float32")
    model.fit(x, np.zeros(GLOBAL_BATCH, dtype="int64"), batch_size=GLOBAL_BATCH, shuffle=False, verbose=0)
    keras.mixed_precision.set_global_policy("float32")
    np.save(out / "mirrored_overflow.npy", flat_weights(model))
    scale = float(model.optimizer.dynamic_scale.numpy())
    (out / "mirrored_overflow.json").write_text(json.dumps({"scale": scale}))


def worker_main(mode: str, out: Path) -> None:
    """Entry point of the subprocesses; ``mode`` picks what to train."""
    import keras

    from keras_cnn.train.devices import apply_execution, decide, describe, resolve_execution
    from keras_cnn.train.distribute import chief_or_temporary_dir

    if mode == "worker":
        keras.utils.set_random_seed(1)  # a seed set before the strategy must not break it
        plan = resolve_execution(mixed_precision="off", xla="off", strategy="multiworker")
        strategy = apply_execution(plan)
        print(describe(plan), file=sys.stderr)
        fitted = run_custom_loop(strategy)
        save(out, f"worker{plan.task_index}", fitted.model, fitted.history)
        with chief_or_temporary_dir(out / "run", plan) as directory:
            fitted.model.save(directory / "model.keras")
            (out / f"directory{plan.task_index}.txt").write_text(str(directory))
        (out / f"plan{plan.task_index}.json").write_text(json.dumps(plan.to_dict()))
        overflow_on_one_worker(out, plan.task_index, strategy)
    elif mode == "single":
        strategy = apply_execution(decide("off", "off", "default", gpus=[]))
        np.save(out / "initial.npy", flat_weights(build_model()))
        model, history = run_fit(strategy)
        save(out, "fit", model, history)
        fitted = run_custom_loop(strategy)
        save(out, "loop", fitted.model, fitted.history)
        fitted = run_custom_loop(strategy, jit_compile=True)
        save(out, "loop_xla", fitted.model, fitted.history)
        keras.mixed_precision.set_global_policy("mixed_float16")
        model, history = run_fit(strategy)
        save(out, "fit_mixed", model, history)
        fitted = run_custom_loop(strategy)
        save(out, "loop_mixed", fitted.model, fitted.history)
        (out / "loop_mixed_optimizer.txt").write_text(type(fitted.model.optimizer).__name__)
    elif mode == "mirrored":
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        plan = decide("off", "auto", "mirrored", gpus=[])
        strategy = apply_execution(plan)
        model, history = run_fit(strategy)
        save(out, "mirrored", model, history)
        (out / "mirrored_plan.json").write_text(json.dumps(plan.to_dict()))
        mirrored_overflow_on_one_replica(out, strategy)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


# --------------------------------------------------------------------------- test side

def free_ports(count: int) -> list[int]:
    sockets = []
    for _ in range(count):
        handle = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        handle.bind(("127.0.0.1", 0))
        sockets.append(handle)
    ports = [handle.getsockname()[1] for handle in sockets]
    for handle in sockets:
        handle.close()
    return ports


def base_environment() -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if key != "TF_CONFIG"}
    environment.update(TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    return environment


def start(mode: str, out: Path, environment: dict[str, str], log_name: str | None = None) -> subprocess.Popen:
    """Start one training process; its output goes to a log file (a full pipe could block it)."""
    log = open(out / (log_name or f"{mode}.log"), "w")  # noqa: SIM115 - closed by finish()
    process = subprocess.Popen([sys.executable, str(HERE), mode, str(out)], env=environment,
                               stdout=log, stderr=subprocess.STDOUT, text=True)
    process.log = log
    return process


def finish(processes: list[subprocess.Popen]) -> list[str]:
    """Wait for every process under one hard deadline, kill all on a hang; return their logs."""
    deadline = time.monotonic() + TIMEOUT_SECONDS
    try:
        for process in processes:
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        for process in processes:
            process.kill()
            process.wait()
        pytest.fail(f"a training subprocess did not finish within {TIMEOUT_SECONDS} s")
    finally:
        for process in processes:
            process.log.close()
    outputs = [Path(process.log.name).read_text() for process in processes]
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-3000:]
    return outputs


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Start every training process at once (they mostly wait on imports), then wait for all.

    ``single``: model.fit and the custom loop on one device; ``mirrored``: fit over two
    logical CPUs; ``workers``: the custom loop on two workers on 127.0.0.1.
    """
    folders = {name: tmp_path_factory.mktemp(name) for name in ("single", "mirrored", "workers")}
    processes = [start("single", folders["single"], base_environment()),
                 start("mirrored", folders["mirrored"], base_environment())]
    ports = free_ports(2)
    for index in range(2):
        environment = base_environment()
        environment["TF_CONFIG"] = json.dumps({
            "cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
            "task": {"type": "worker", "index": index},
        })
        processes.append(start("worker", folders["workers"], environment, f"worker{index}.log"))
    finish(processes)
    return folders


@pytest.fixture(scope="module")
def single_run(runs) -> Path:
    return runs["single"]


def test_two_workers_train_to_identical_weights_equal_to_fit(runs, single_run):
    tmp_path = runs["workers"]
    outputs = [(tmp_path / "worker0.log").read_text()]
    assert "strategy: multiworker (2 replicas; worker 0 of 2 workers, chief)" in outputs[0]

    worker0, worker1 = np.load(tmp_path / "worker0.npy"), np.load(tmp_path / "worker1.npy")
    np.testing.assert_array_equal(worker0, worker1)
    np.testing.assert_allclose(worker0, np.load(single_run / "fit.npy"), atol=TOLERANCE, rtol=0)

    # Epoch logs are aggregated over both workers: identical on each, equal to fit's.
    history0 = json.loads((tmp_path / "worker0.json").read_text())
    history1 = json.loads((tmp_path / "worker1.json").read_text())
    fit_history = json.loads((single_run / "fit.json").read_text())
    assert history0 == history1
    for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(history0[name], fit_history[name], atol=TOLERANCE, err_msg=name)

    # Only the chief's run directory stays; the other worker's temporary folder is gone.
    plans = [json.loads((tmp_path / f"plan{index}.json").read_text()) for index in range(2)]
    assert [plan["is_chief"] for plan in plans] == [True, False]
    assert [plan["replicas"] for plan in plans] == [2, 2]
    chief_directory = Path((tmp_path / "directory0.txt").read_text())
    other_directory = Path((tmp_path / "directory1.txt").read_text())
    assert chief_directory == tmp_path / "run"
    assert (chief_directory / "model.keras").exists()
    assert not other_directory.exists()


def test_workers_skip_together_when_gradients_overflow_on_one(runs, single_run):
    folder = runs["workers"]
    reports = [json.loads((folder / f"overflow{index}.json").read_text()) for index in range(2)]
    # Three skipped steps: the loss scale halved three times on both workers ...
    assert reports[0] == reports[1] == {"optimizer": "LossScaleOptimizer", "scale": 32768.0 / 8}
    # ... and no weight moved on either.
    np.testing.assert_array_equal(np.load(folder / "overflow0.npy"), np.load(folder / "overflow1.npy"))
    np.testing.assert_array_equal(np.load(folder / "overflow0.npy"), np.load(single_run / "initial.npy"))


def test_custom_loop_on_one_worker_equals_fit(single_run):
    fit_weights = np.load(single_run / "fit.npy")
    np.testing.assert_allclose(np.load(single_run / "loop.npy"), fit_weights, atol=TOLERANCE, rtol=0)
    fit_history = json.loads((single_run / "fit.json").read_text())
    loop_history = json.loads((single_run / "loop.json").read_text())
    assert sorted(loop_history) == sorted(fit_history)
    for name, values in fit_history.items():
        np.testing.assert_allclose(loop_history[name], values, atol=TOLERANCE, err_msg=name)
    moved = np.abs(fit_weights - np.load(single_run / "initial.npy")).max()
    assert moved > 1e-3, "training did not move the weights"


def test_custom_loop_with_xla_equals_fit(single_run):
    np.testing.assert_allclose(np.load(single_run / "loop_xla.npy"), np.load(single_run / "fit.npy"),
                               atol=TOLERANCE, rtol=0)


def test_custom_loop_scales_the_loss_under_mixed_float16(single_run):
    assert (single_run / "loop_mixed_optimizer.txt").read_text() == "LossScaleOptimizer"
    mixed = np.load(single_run / "loop_mixed.npy")
    assert np.isfinite(mixed).all()
    np.testing.assert_allclose(mixed, np.load(single_run / "fit_mixed.npy"), atol=TOLERANCE, rtol=0)
    # float16 compute moved the result away from float32 a little, as it should.
    assert np.abs(mixed - np.load(single_run / "fit.npy")).max() > 0


def test_mirrored_strategy_over_two_logical_cpus_trains_with_fit(runs, single_run):
    tmp_path = runs["mirrored"]
    plan = json.loads((tmp_path / "mirrored_plan.json").read_text())
    assert plan["strategy_name"] == "mirrored" and plan["replicas"] == 2
    assert plan["jit_compile"] is False
    np.testing.assert_allclose(np.load(tmp_path / "mirrored.npy"), np.load(single_run / "fit.npy"),
                               atol=TOLERANCE, rtol=0)


def test_mirrored_fit_skips_a_step_that_overflowed_on_one_replica(runs, single_run):
    folder = runs["mirrored"]
    assert json.loads((folder / "mirrored_overflow.json").read_text()) == {"scale": 32768.0 / 2}
    weights = np.load(folder / "mirrored_overflow.npy")
    assert np.isfinite(weights).all()
    np.testing.assert_array_equal(weights, np.load(single_run / "initial.npy"))


# --------------------------------------------------------------------------- pure helpers

class FakeInputContext:
    def __init__(self, pipelines: int, pipeline_id: int, replicas: int):
        self.num_input_pipelines = pipelines
        self.input_pipeline_id = pipeline_id
        self.num_replicas_in_sync = replicas


def test_shard_file_list_splits_by_file_without_overlap():
    from keras_cnn.data.pipeline import shard_file_list

    files = [f"{index:040x}.jpg" for index in range(7)]
    shards = [shard_file_list(files, FakeInputContext(3, pipeline, 3)) for pipeline in range(3)]
    assert shards[0] == files[0::3] and shards[2] == files[2::3]
    assert sorted(name for shard in shards for name in shard) == files
    assert shard_file_list(files, None) == files


def test_shard_file_list_refuses_fewer_files_than_workers():
    from keras_cnn.errors import UserError
    from keras_cnn.data.pipeline import shard_file_list

    with pytest.raises(UserError, match="1 file"):
        shard_file_list(["a.jpg"], FakeInputContext(2, 0, 2))


def test_per_replica_batch_size_is_the_global_batch_split_evenly():
    from keras_cnn.errors import UserError
    from keras_cnn.data.pipeline import per_replica_batch_size

    assert per_replica_batch_size(64, FakeInputContext(2, 0, 4)) == 16
    assert per_replica_batch_size(10, None) == 10
    with pytest.raises(UserError, match="received: 10"):
        per_replica_batch_size(10, FakeInputContext(1, 0, 4))


def test_callbacks_see_fit_style_logs_and_can_stop_training(capsys):
    import keras
    import tensorflow as tf

    from keras_cnn.train.distribute import fit_multiworker

    seen = []

    class StopAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append((epoch, sorted(logs)))
            self.model.stop_training = True

    train, validation = make_data(0, SAMPLES), make_data(1, VALIDATION_SAMPLES)
    fitted = fit_multiworker(build_model, dataset_fn_for(*train), epochs=3, steps_per_epoch=STEPS,
                             strategy=tf.distribute.get_strategy(),
                             validation_dataset_fn=dataset_fn_for(*validation), validation_steps=1,
                             callbacks=[StopAfterFirstEpoch()], verbose=2)
    assert seen == [(0, ["accuracy", "loss", "val_accuracy", "val_loss"])]
    assert fitted.epochs == [0] and len(fitted.history["loss"]) == 1
    assert fitted.model.history.history["loss"] == fitted.history["loss"]
    assert "loss:" in capsys.readouterr().out  # the progress bar, on the chief


def test_backup_and_restore_resumes_like_fit(tmp_path):
    import keras
    import tensorflow as tf

    from keras_cnn.train.distribute import fit_multiworker

    train = make_data(0, SAMPLES)

    def run(epochs):
        backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"), delete_checkpoint=False)
        return fit_multiworker(build_model, dataset_fn_for(*train), epochs=epochs, steps_per_epoch=STEPS,
                               strategy=tf.distribute.get_strategy(), callbacks=[backup])

    assert run(1).epochs == [0]
    assert run(2).epochs == [1]  # the second run starts where the backup left off

def test_every_epoch_validates_on_the_same_batches():
    """A validation part that is not whole batches (20 images, batches of 16, one step): with the
    weights unchanged (rate 0), every epoch's validation is the same — a loop resumed at a later
    epoch, whose validation starts at the beginning, then measures what the uninterrupted one did."""
    import tensorflow as tf

    from keras_cnn.train.distribute import fit_multiworker

    train, validation = make_data(0, SAMPLES), make_data(1, GLOBAL_BATCH + 4)
    fitted = fit_multiworker(lambda: build_model(learning_rate=0.0), dataset_fn_for(*train), epochs=3,
                             steps_per_epoch=STEPS, strategy=tf.distribute.get_strategy(),
                             validation_dataset_fn=dataset_fn_for(*validation), validation_steps=1)
    losses = fitted.history["val_loss"]
    assert len(losses) == 3 and losses[0] == losses[1] == losses[2], losses



def test_fit_multiworker_refuses_what_would_hang_or_cannot_train():
    import keras
    import tensorflow as tf

    from keras_cnn.errors import UserError
    from keras_cnn.train.distribute import fit_multiworker

    train = make_data(0, SAMPLES)
    strategy = tf.distribute.get_strategy()
    with pytest.raises(UserError, match="steps_per_epoch"):
        fit_multiworker(build_model, dataset_fn_for(*train), epochs=1, steps_per_epoch=None,
                        strategy=strategy)
    with pytest.raises(UserError, match="validation_steps"):
        fit_multiworker(build_model, dataset_fn_for(*train), epochs=1, steps_per_epoch=1, strategy=strategy,
                        validation_dataset_fn=dataset_fn_for(*train))
    with pytest.raises(UserError, match="compiled model"):
        fit_multiworker(lambda: keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]),
                        dataset_fn_for(*train), epochs=1, steps_per_epoch=1, strategy=strategy)


def test_chief_or_temporary_dir(tmp_path, monkeypatch):
    from keras_cnn.train.devices import decide
    from keras_cnn.train.distribute import chief_or_temporary_dir

    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    other = decide("off", "off", "multiworker", gpus=[],
                   tf_config={"cluster": cluster, "task": {"type": "worker", "index": 1}})
    with chief_or_temporary_dir(tmp_path / "run", other) as directory:
        assert directory != tmp_path / "run" and directory.is_dir()
        (directory / "model.keras").write_text("x")
    assert not directory.exists() and not (tmp_path / "run").exists()

    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
    with chief_or_temporary_dir(tmp_path / "run") as directory:
        (directory / "model.keras").write_text("x")
    assert directory == tmp_path / "run" and (directory / "model.keras").exists()


if __name__ == "__main__":
    worker_main(sys.argv[1], Path(sys.argv[2]))


def test_kcnn_train_with_two_workers_writes_one_run(tmp_path, mnist_npz):
    """`kcnn train --strategy multiworker` end to end: two processes, only the chief keeps a run."""
    ports = free_ports(2)
    processes = []
    for index in range(2):
        environment = base_environment()
        environment["TF_CONFIG"] = json.dumps({
            "cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
            "task": {"type": "worker", "index": index},
        })
        log = open(tmp_path / f"worker{index}.log", "w")  # noqa: SIM115 - closed by finish()
        process = subprocess.Popen(
            [sys.executable, "-m", "keras_cnn", "train", "lenet", "--dataset", "mnist", "--dataset-path",
             str(mnist_npz), "--epochs", "2", "--batch-size", "64", "--strategy", "multiworker",
             "--out", str(tmp_path / "run"), "--json"],
            env=environment, stdout=log, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
        process.log = log
        processes.append(process)
    outputs = finish(processes)
    assert "strategy: multiworker" in outputs[0]
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert len(history) == 3  # header + 2 epochs, written once, by the chief
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] > 0.3  # ten classes: chance is 0.1
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["extra"]["execution"]["strategy_name"] == "multiworker"
    assert config["extra"]["execution"]["workers"] == 2
    leftovers = [path for path in tmp_path.iterdir() if path.name not in {"run", "worker0.log", "worker1.log"}]
    assert not leftovers, leftovers
