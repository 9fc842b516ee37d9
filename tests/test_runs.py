"""Runs you can trust: run state, re-runs, the lock, --overwrite, output paths, validation before writing."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import stderr_problems

from keras_cnn.cli import cli
from keras_cnn.config import DataConfig, FineTuneConfig, ModelConfig, RunConfig, TrainingConfig
from keras_cnn.errors import UserError
from keras_cnn.io import atomic_write_text
from keras_cnn.runs import RunDirectory, RunLock, RunState


def invoke(*args):
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def error_lines(result):
    return [line for line in result.stderr.splitlines() if line.startswith("kcnn: error")]


def history_rows(run: Path):
    with open(run / "history.csv", newline="") as handle:
        return list(csv.DictReader(handle))


EPOCHS = 2


def train_args(sample_split, sample_data_dir, run, *extra):
    # Seed 2: the last epoch improves the validation loss, so the run ends with a best-model save
    # (the one the kill test interrupts); the draws are a function of the seed alone.
    return ["train", "lenet5_bn", "--split", sample_split, "--images", sample_data_dir, "--epochs", EPOCHS,
            "--batch-size", 16, "--seed", 2, "--out", run, *extra]


@pytest.fixture(scope="module")
def killed_then_finished(tmp_path_factory, sample_split, sample_data_dir):
    """A two-epoch `kcnn train` run killed (SIGKILL) in the middle of its final best-model save, then re-run.

    The finished run it leaves serves the other tests (copy it before changing it).
    """
    run = tmp_path_factory.mktemp("finished") / "run"
    args = [str(arg) for arg in train_args(sample_split, sample_data_dir, run)]
    killed = subprocess.run([sys.executable, "-c", KILL_DURING_FINAL_SAVE, str(run), str(EPOCHS), *args],
                            capture_output=True, text=True, timeout=600)
    rerun = invoke(*args, "--json")
    return {"run": run, "killed": killed, "rerun": rerun}


@pytest.fixture
def finished_run(killed_then_finished):
    result = killed_then_finished["rerun"]
    assert result.exit_code == 0, result.output[-3000:]
    return killed_then_finished["run"]


def copy_run(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(run, target)
    return target


def snapshot(run: Path) -> dict[str, float]:
    return {str(path.relative_to(run)): path.stat().st_mtime_ns for path in run.rglob("*") if path.is_file()}


def test_rerunning_a_finished_stage_does_no_work_and_prints_its_result(finished_run, sample_split, sample_data_dir,
                                                                       tmp_path):
    run = copy_run(finished_run, tmp_path)
    before = snapshot(run)
    result = invoke(*train_args(sample_split, sample_data_dir, run), "--json")
    assert result.exit_code == 0, result.output[-2000:]
    assert "already finished" in result.stderr
    assert stderr_problems(result.stderr) == [], result.stderr
    summary = json.loads(result.stdout)
    assert summary["epochs"] == EPOCHS and summary["test_accuracy"] is not None
    assert snapshot(run) == before  # not one file written again
    assert len(history_rows(run)) == EPOCHS


def test_a_different_architecture_into_an_existing_run_is_refused_and_nothing_written(
        finished_run, sample_split, sample_data_dir, tmp_path):
    run = copy_run(finished_run, tmp_path)
    before = snapshot(run)
    args = train_args(sample_split, sample_data_dir, run)
    args[1] = "smile_cnn"
    result = invoke(*args)
    assert result.exit_code == 2
    assert len(error_lines(result)) == 1 and "model.name" in error_lines(result)[0]
    assert "--overwrite" in error_lines(result)[0] and "Traceback" not in result.output
    assert snapshot(run) == before


def test_overwrite_starts_the_stage_over_and_removes_what_was_its(finished_run, sample_split, sample_data_dir,
                                                                  tmp_path):
    run = copy_run(finished_run, tmp_path)
    (run / "eval").mkdir()
    (run / "eval" / "report.html").write_text("the old model's report")
    (run / "keep-me.txt").write_text("not kcnn's")
    args = train_args(sample_split, sample_data_dir, run, "--learning-rate", 0.01, "--overwrite")
    args[args.index("--epochs") + 1] = 1
    result = invoke(*args)
    assert result.exit_code == 0, result.output[-2000:]
    assert not (run / "eval").exists()
    assert (run / "keep-me.txt").exists()  # only what kcnn wrote goes
    assert [row["epoch"] for row in history_rows(run)] == ["1"]
    config = json.loads((run / "config.json").read_text())
    assert config["training"]["learning_rate"] == 0.01 and config["training"]["epochs"] == 1
    state = json.loads((run / "state.json").read_text())
    assert state["stages"]["train"]["status"] == "finished"
    assert state["stages"]["train"]["options"]["training"]["learning_rate"] == 0.01


def test_a_second_process_on_the_same_run_exits_2_naming_the_holder(finished_run, sample_split, sample_data_dir,
                                                                   tmp_path):
    run = copy_run(finished_run, tmp_path)
    with RunLock(run):
        result = invoke(*train_args(sample_split, sample_data_dir, run))
    assert result.exit_code == 2
    assert f"pid {os.getpid()}" in error_lines(result)[0]
    assert not (run / ".lock").exists()  # released and removed


def test_lock_names_the_holder_across_processes(tmp_path):
    script = ("import sys, time; from keras_cnn.runs import RunLock; lock = RunLock(sys.argv[1]).acquire(); "
              "print('locked', flush=True); time.sleep(30)")
    holder = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=f"pid {holder.pid}"):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    # The operating system released the killed holder's lock.
    with RunLock(tmp_path):
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_learning_rate_is_refused_before_anything_is_written(finished_run, sample_split,
                                                                        sample_data_dir, tmp_path, value):
    run = copy_run(finished_run, tmp_path)
    before = snapshot(run)
    result = invoke(*train_args(sample_split, sample_data_dir, run, f"--learning-rate={value}"))
    assert result.exit_code == 2 and ("finite" in result.stderr or "range" in result.stderr), result.stderr
    assert snapshot(run) == before


def test_the_api_validates_float_options_before_touching_the_run(finished_run, tmp_path):
    from keras_cnn.train.fit import train_scratch
    from keras_cnn.train.two_stage import fine_tune_run

    run = copy_run(finished_run, tmp_path)
    config = RunConfig.from_dict(json.loads((run / "config.json").read_text()))
    before = snapshot(run)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(UserError, match="--learning-rate must be a finite number"):
            train_scratch(RunConfig(command="train", model=config.model, data=config.data,
                                    training=TrainingConfig(epochs=1, learning_rate=bad)), run)
        with pytest.raises(UserError, match="finite"):
            fine_tune_run(FineTuneConfig(training=TrainingConfig(learning_rate=bad)), run)
    with pytest.raises(UserError, match="--dropout"):
        train_scratch(RunConfig(command="train", model=ModelConfig(name="lenet5_bn", dropout=float("nan")),
                                data=config.data), run)
    assert snapshot(run) == before


def test_finetune_needs_a_finished_stage_1_and_transfer_after_finetune_needs_overwrite(tmp_path, sample_split,
                                                                                       sample_data_dir):
    run = RunDirectory(tmp_path / "run").create()
    config = RunConfig(command="transfer", model=ModelConfig(kind="transfer", name="vgg16", weights="none"),
                       data=DataConfig(split=str(sample_split), images=str(sample_data_dir), image_size=(32, 32)),
                       training=TrainingConfig(epochs=4), labels=["circle", "square", "triangle"])
    run.write_config(config.to_dict())
    run.write_labels(config.labels)
    atomic_write_text(run.model_path, "a model")
    atomic_write_text(run.history_path, "stage,epoch,seconds,loss\nhead,1,1.0,0.9\n")
    state = RunState(run.state_path)
    state.start("head", {"anything": 1})  # killed after 1 of 4 epochs
    result = invoke("finetune", "--run", run.root, "--epochs", 1)
    assert result.exit_code == 2
    assert "stage 'head' has not finished (1 epoch(s) recorded)" in error_lines(result)[0]

    state.finish("head", {})
    state.start("finetune", {"anything": 2})
    state.finish("finetune", {})
    before = snapshot(run.root)
    result = invoke("transfer", "--base", "vgg16", "--weights", "none", "--split", sample_split, "--images",
                    sample_data_dir, "--image-size", 32, "--epochs", 4, "--out", run.root)
    assert result.exit_code == 2
    assert "finetune" in error_lines(result)[0] and "--overwrite" in error_lines(result)[0]
    assert snapshot(run.root) == before


def test_a_failed_command_leaves_no_run_folder(tmp_path, sample_split, sample_data_dir):
    run = tmp_path / "runs" / "never"
    result = invoke("transfer", "--base", "vgg16", "--weights", "none", "--split", sample_split, "--images",
                    sample_data_dir, "--image-size", 32, "--binary", "--out", run)
    assert result.exit_code == 2 and "--binary needs exactly 2 labels" in result.stderr
    assert not run.exists()


def test_stale_temporary_files_are_removed_at_the_next_start_and_only_kcnns(finished_run, sample_split,
                                                                            sample_data_dir, tmp_path):
    run = copy_run(finished_run, tmp_path)
    (run / ".model.keras.tmp-4242-x1y2z3w4.keras").write_bytes(b"half a model")       # a killed save
    (run / "logs" / ".history.csv.tmp-abcdefgh").parent.mkdir(exist_ok=True)          # an older kcnn's name
    (run / "logs" / ".history.csv.tmp-abcdefgh").write_text("half")
    mine = [run / ".notes.txt.tmp-keep", run / ".my-data.tmp-12-abcdefgh", run / "mine" / ".a.tmp-12-abcdefgh"]
    for path in mine:   # look-alikes kcnn did not make: not its names, or not where it writes
        path.parent.mkdir(exist_ok=True)
        path.write_text("the user's")
    result = invoke(*train_args(sample_split, sample_data_dir, run))
    assert result.exit_code == 0, result.output[-2000:]
    assert sorted(run.rglob("*.tmp-*")) == sorted(mine)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes need a POSIX system")
def test_split_refuses_a_fifo_output_and_leaves_it_alone(tmp_path, sample_data_dir):
    import stat

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    result = invoke("split", sample_data_dir / "label.csv", "-o", fifo)
    assert result.exit_code == 2 and "FIFO" in result.stderr and len(error_lines(result)) == 1
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    result = invoke("split", sample_data_dir / "label.csv", "-o", tmp_path)
    assert result.exit_code == 2 and "directory" in result.stderr


KILL_DURING_FINAL_SAVE = """
import os, signal, sys
from pathlib import Path
import keras
run, epochs = Path(sys.argv[1]), int(sys.argv[2])
original_save = keras.Model.save

def save(self, filepath, *args, **kwargs):
    history = run / "history.csv"
    if history.exists() and len(history.read_text().splitlines()) - 1 >= epochs:
        Path(filepath).write_bytes(b"the first bytes of a model")  # half-written, then the kill
        os.kill(os.getpid(), signal.SIGKILL)
    return original_save(self, filepath, *args, **kwargs)

keras.Model.save = save
from keras_cnn.cli import main
sys.argv = ["kcnn", *sys.argv[3:]]
main()
"""


def validation_loss_of(model_path: Path, run: Path) -> float:
    """The saved model's loss on the run's validation part, as fit computes val_loss."""
    import keras

    from keras_cnn.models.loading import load_model
    from keras_cnn.train.stage_data import prepare_folder_data

    config = RunConfig.from_dict(json.loads((run / "config.json").read_text()))
    data = prepare_folder_data(config.data, config.data.image_size, config.data.channels, config.training.batch_size,
                               config.training.seed, labels=config.labels)
    model = load_model(model_path)
    loss = keras.losses.SparseCategoricalCrossentropy()
    total = count = 0
    for images, labels in data.validation:
        total += float(loss(labels, model(images, training=False))) * len(labels)
        count += len(labels)
    return total / count


def test_a_kill_during_the_final_best_model_save_still_ends_with_the_best_model(killed_then_finished):
    run, killed, rerun = (killed_then_finished[key] for key in ("run", "killed", "rerun"))
    assert killed.returncode == -9, killed.stderr[-2000:]  # the last epoch improved, and its save was killed
    assert rerun.exit_code == 0, rerun.output[-2000:]
    assert f"resuming {run} at epoch {EPOCHS} of {EPOCHS}" in rerun.stderr
    rows = history_rows(run)
    assert [row["epoch"] for row in rows] == [str(epoch) for epoch in range(1, EPOCHS + 1)]
    best = min(float(row["val_loss"]) for row in rows)
    assert validation_loss_of(run / "model.keras", run) == pytest.approx(best, rel=1e-4, abs=1e-5)
    assert not list(run.rglob("*.tmp-*")) and not (run / "backup").exists() and not (run / ".lock").exists()
