"""``kcnn lr-find`` through the CLI: a from-scratch sweep, and a stage-2 sweep that leaves the run's model alone."""

import hashlib
import json

import pytest
from click.testing import CliRunner

from conftest import train_tiny_hub_head
from keras_cnn.cli import cli


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
    assert json.loads(result.stdout)["steps"] > 0 and (tmp_path / "sweep.png").exists()
    written = tmp_path / "lr_find_split.csv"
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
