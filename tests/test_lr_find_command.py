"""``kcnn lr-find`` through the CLI: a from-scratch sweep, and a stage-2 sweep that leaves the run's model alone."""

import hashlib
import json

import pytest
from click.testing import CliRunner

from conftest import train_tiny_hub_head
from keras_cnn.cli import cli
from keras_cnn.runs import RunDirectory


def invoke(*args):
    return CliRunner().invoke(cli, [str(arg) for arg in args])


@pytest.mark.slow
def test_stage2_sweep_suggests_rates_and_never_changes_the_run(tmp_path, sample_data_dir, sample_split):
    run = train_tiny_hub_head(tmp_path, sample_split, sample_data_dir)
    model_bytes = hashlib.sha1((run / "model.keras").read_bytes()).hexdigest()
    result = invoke("lr-find", "--run", run, "--unfreeze-from", "all", "--steps", 30, "--start-lr", 1e-5,
                    "--trust-hub", "--json")
    assert result.exit_code == 0, result.output[-3000:]
    found = json.loads(result.stdout)
    assert found["stage"] == "finetune" and 0 < found["steps"] <= 30
    assert 1e-5 <= found["suggestions"]["valley"] <= 10 and 1e-5 <= found["suggestions"]["steepest"] <= 10
    assert (run / "lr_find.png").stat().st_size > 0
    assert len((run / "lr_find.csv").read_text().splitlines()) == found["steps"] + 1
    assert hashlib.sha1((run / "model.keras").read_bytes()).hexdigest() == model_bytes


@pytest.mark.slow
def test_from_scratch_sweep_writes_its_picture_where_asked(tmp_path, mnist_npz):
    result = invoke("lr-find", "--architecture", "lenet", "--dataset", "mnist", "--dataset-path", mnist_npz,
                    "--steps", 20, "--batch-size", 16, "--start-lr", 1e-4, "--end-lr", 1, "--out",
                    tmp_path / "sweep.png")
    assert result.exit_code == 0, result.output[-3000:]
    assert "(valley)" in result.stdout and (tmp_path / "sweep.png").exists() and (tmp_path / "sweep.csv").exists()


def test_images_without_a_split_are_split_beside_the_picture(tmp_path, sample_data_dir, sample_split):
    """As train/transfer do with --images alone: the same split, written next to lr_find.png."""
    result = invoke("lr-find", "--architecture", "lenet", "--images", sample_data_dir, "--steps", 20,
                    "--batch-size", 8, "--start-lr", 1e-5, "--end-lr", 1e-1, "--out", tmp_path / "sweep.png", "--json")
    assert result.exit_code == 0, result.output[-3000:]
    found = json.loads(result.stdout)
    assert found["steps"] > 0 and (tmp_path / "sweep.png").exists()
    written = tmp_path / "lr_find_split.csv"
    assert found["split"] == str(written)
    assert written.read_text() == sample_split.read_text()
    assert "found " in result.stderr


@pytest.mark.parametrize("args, message", [
    ([], "exactly one of"),
    (["--architecture", "lenet", "--run", "."], "exactly one of"),
    (["--architecture", "lenet", "--dataset", "mnist", "--unfreeze-from", "all"], "--unfreeze-from needs --run"),
])
def test_bad_combinations_are_one_line_errors(args, message):
    result = invoke("lr-find", *args)
    assert result.exit_code == 2 and message in result.output


@pytest.mark.slow
def test_head_sweep_runs_on_cached_features_of_the_frozen_base(tmp_path, sample_data_dir, sample_split):
    from conftest import write_hub_module

    hub = write_hub_module(tmp_path / "hub")
    result = invoke("lr-find", "--base", f"hub:{hub}", "--split", sample_split, "--images", sample_data_dir,
                    "--image-size", 32, "--steps", 20, "--start-lr", 1e-4, "--out", tmp_path / "head.png", "--json")
    assert result.exit_code == 0, result.output[-3000:]
    found = json.loads(result.stdout)
    assert found["stage"] == "head" and found["steps"] == 20 and (tmp_path / "head.png").exists()
    assert "extracting train features" in result.stderr


def random_weights_run(folder):
    """A folder with the config of a stage-1 run on a base with random weights (no model: commands stop early)."""
    folder.mkdir()
    RunDirectory(folder).claim()   # made by kcnn: not someone else's folder
    (folder / "config.json").write_text(json.dumps(
        {"command": "transfer", "model": {"kind": "transfer", "name": "efficientnet_b0", "weights": "none"}}))
    return folder


def warnings_in(result):
    return [line for line in result.stderr.splitlines() if line.startswith("kcnn: warning:")]


def test_random_weights_are_warned_about_before_a_sweep(tmp_path, sample_data_dir):
    label_csv = sample_data_dir / "label.csv"   # not a split: the sweep stops right after the warning
    head = invoke("lr-find", "--base", "efficientnet_b0", "--weights", "none", "--split", label_csv, "--images",
                  sample_data_dir)
    assert head.exit_code == 2
    assert len(warnings_in(head)) == 1 and "random weights (--weights none)" in warnings_in(head)[0]
    misspelt = invoke("lr-find", "--base", "efficientnet_bo", "--weights", "none", "--images", sample_data_dir)
    assert misspelt.exit_code == 2 and not warnings_in(misspelt) and "did you mean 'efficientnet_b0'?" in misspelt.stderr
    run = random_weights_run(tmp_path / "run")
    stage2 = invoke("lr-find", "--run", run, "--unfreeze-from", "block7a")
    assert stage2.exit_code == 2 and "frozen layers before block7a cannot learn" in warnings_in(stage2)[0]
    # A misspelt layer is refused with the closest names before any warning could name it.
    for command in ("lr-find", "finetune"):
        misspelt = invoke(command, "--run", run, "--unfreeze-from", "blok7a")
        assert misspelt.exit_code == 2 and not warnings_in(misspelt), misspelt.stderr
        assert "did you mean 'block7a'?" in misspelt.stderr


def test_finetune_of_random_weights_at_the_fine_tuning_rate_says_why_it_will_not_learn(tmp_path):
    run = random_weights_run(tmp_path / "run")
    slow = invoke("finetune", "--run", run, "--unfreeze-from", "all")
    assert slow.exit_code == 2   # not a finished run: stops after the warning
    assert "at the fine-tuning rate 1e-05" in warnings_in(slow)[0] and "--learning-rate 0.001" in warnings_in(slow)[0]
    from_scratch = invoke("finetune", "--run", run, "--unfreeze-from", "all", "--learning-rate", "1e-3")
    assert from_scratch.exit_code == 2 and not warnings_in(from_scratch)


def test_the_help_and_the_last_line_name_the_split_it_writes(capsys):
    from keras_cnn.cli.lr_find_command import _render

    help_text = " ".join(invoke("lr-find", "--help").output.split())
    images_help = help_text[help_text.index("--images DIRECTORY"):help_text.index("--image-size")]
    assert "Without --split it is split as `kcnn transfer` would split it, into lr_find_split.csv" in images_help
    result = {"stage": "head", "optimizer": "adam", "suggestions": {}, "steps": 97, "diverged": True,
              "plot": "lr_find.png", "table": "lr_find.csv", "split": "lr_find_split.csv",
              "no_suggestion": "the loss did not fall (smoothed 1.3863 at learning rate 3.2e-07, ...)"}
    _render(result)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("[head] adam: no learning rate suggested after 97 steps")
    assert "the loss did not fall" in printed[0] and "suggested learning rate" not in printed[0]
    assert printed[1].endswith("split: lr_find_split.csv (reuse it with --split)")


def test_weights_that_cannot_be_had_stop_the_sweep_before_the_split_is_written(tmp_path, sample_data_dir):
    result = invoke("lr-find", "--base", "efficientnet_b0", "--weights", tmp_path / "missing.weights.h5", "--images",
                    sample_data_dir, "--out", tmp_path / "sweep.png")
    assert result.exit_code == 2 and "missing.weights.h5" in result.stderr
    assert list(tmp_path.iterdir()) == []
