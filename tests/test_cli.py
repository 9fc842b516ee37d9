"""The command line: fast help, one-line errors with exit codes, JSON output."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from keras_cnn.cli import COMMANDS, cli


def run_kcnn(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "keras_cnn", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_help_and_version_do_not_import_tensorflow():
    # How fast they answer is measured by benchmarks/cli_startup.py, not asserted here.
    result = run_kcnn("--help")
    assert result.returncode == 0 and "train" in result.stdout and "transfer" in result.stdout
    probe = subprocess.run(
        [sys.executable, "-c", "import sys\nfrom keras_cnn.cli import cli\n"
         "for name in cli.list_commands(None): cli.get_command(None, name)\n"
         "print('tensorflow' in sys.modules, 'keras' in sys.modules)"],
        capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == "False False"
    version = run_kcnn("--version")
    assert version.returncode == 0 and version.stdout.startswith("kcnn ")


def test_every_registered_command_loads_and_has_help():
    runner = CliRunner()
    for name in COMMANDS:
        command = cli.get_command(None, name)
        assert command is not None, f"{name} is registered but its module is missing"
        result = runner.invoke(cli, [name, "--help"])
        assert result.exit_code == 0, result.output
        assert len(result.output.splitlines()) > 3


def one_line_error(result):
    """The error is one line; at most kcnn's own start-up line (device/precision) precedes it."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("kcnn: error: "), result.stderr
    assert all(line.startswith("device: ") for line in lines[:-1]), result.stderr
    return lines[-1]


def test_unknown_architecture_is_one_line_exit_2():
    result = run_kcnn("train", "resnet", "--dataset", "mnist")
    assert result.returncode == 2
    assert "unknown architecture 'resnet'" in one_line_error(result)


def test_usage_errors_are_one_line_exit_2():
    result = run_kcnn("train", "lenet", "--epochs", "zero")
    assert result.returncode == 2
    assert "--epochs" in one_line_error(result)
    result = run_kcnn("no-such-command")
    assert result.returncode == 2 and "No such command" in one_line_error(result)


@pytest.mark.parametrize("arguments, suggestion", [
    (["trasnfer", "--help"], "No such command 'trasnfer'; did you mean 'transfer'?"),
    (["train", "lenett", "--dataset", "mnist"], "unknown architecture 'lenett'; did you mean 'lenet'?"),
    (["summary", "efficientnet_bo"], "unknown base 'efficientnet_bo'; did you mean 'efficientnet_b0'?"),
    (["summary", "mobilenetv2"], "unknown base 'mobilenetv2'; did you mean 'mobilenet_v2'?"),
    (["train", "lenet", "--dataset", "mnits"], "'mnits' is not one of 'mnist', 'cifar10'; did you mean 'mnist'?"),
    (["export", "--run", ".", "--out", "x", "--format", "onx"], "did you mean 'onnx'?"),
    (["train", "lenet", "--epoch", "3"], "Did you mean"),   # click's own, for option names
])
def test_misspelt_names_get_the_closest_real_one(arguments, suggestion):
    result = CliRunner().invoke(cli, arguments)
    assert result.exit_code == 2 and suggestion in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_a_misspelt_name_leaves_no_folder_behind(monkeypatch, tmp_path, sample_data_dir):
    import keras_cnn.cli.lr_find_command
    import keras_cnn.cli.transfer_command

    def no_tensorflow():
        raise AssertionError("TensorFlow loaded for a base name that a look-up refuses")

    monkeypatch.chdir(tmp_path)
    for module in (keras_cnn.cli.transfer_command, keras_cnn.cli.lr_find_command):
        monkeypatch.setattr(module, "import_tensorflow_quietly", no_tensorflow)
    for arguments in (["transfer", "--base", "efficientnet_bo"], ["lr-find", "--base", "efficientnet_bo"]):
        result = CliRunner().invoke(cli, [*arguments, "--weights", "none", "--images", str(sample_data_dir)])
        assert result.exit_code == 2 and "did you mean 'efficientnet_b0'?" in result.stderr, result.stderr
        assert "warning" not in result.stderr
    # An architecture is looked up after TensorFlow loads, in the run folder named by default: that
    # folder and the runs/ it was put in go again.
    result = CliRunner().invoke(cli, ["train", "lenett", "--images", str(sample_data_dir)])
    assert result.exit_code == 2 and "did you mean 'lenet'?" in result.stderr, result.stderr
    assert list(tmp_path.iterdir()) == []


def test_nothing_is_suggested_when_nothing_is_close():
    from keras_cnn.messages import did_you_mean

    assert did_you_mean("zzz", COMMANDS) == ""
    # Only the closest names, and 0/o, 1/l look alike.
    assert did_you_mean("efficientnet_bo", ["efficientnet_b0", "efficientnet_b1"]) == "; did you mean 'efficientnet_b0'?"
    assert did_you_mean("vgg", ["vgg16", "vgg19", "resnet50"]) == "; did you mean 'vgg16' or 'vgg19'?"


def interrupted(monkeypatch, module: str, function: str, arguments: list[str]):
    """Run ``kcnn ARGUMENTS`` with the API function it calls replaced by a Ctrl-C."""
    import importlib

    def press_ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module(module), function, press_ctrl_c)
    return CliRunner().invoke(cli, arguments)


def test_ctrl_c_names_the_command_that_resumes_the_run(monkeypatch, tmp_path, sample_data_dir):
    images = str(sample_data_dir)
    monkeypatch.chdir(tmp_path)
    # No --out: the run folder named by default goes on the line; --overwrite would start over, so it does not.
    result = interrupted(monkeypatch, "keras_cnn.train.two_stage", "train_head",
                         ["transfer", "--base", "efficientnet_b0", "--images", images, "--epochs", "3", "--overwrite"])
    assert result.exit_code == 130
    message = result.stderr.strip().splitlines()[-1]
    prefix = "kcnn: interrupted; to go on from the last finished epoch, run: "
    assert message.startswith(prefix), message
    command = message[len(prefix):].split()
    assert command[:8] == ["kcnn", "transfer", "--base", "efficientnet_b0", "--images", images, "--epochs", "3"]
    assert command[8] == "--out" and command[9].startswith("runs/efficientnet_b0-") and "--overwrite" not in command

    run = tmp_path / "run"   # the API is replaced: an empty folder passes the run-folder checks before it
    run.mkdir()
    result = interrupted(monkeypatch, "keras_cnn.train.two_stage", "fine_tune_run",
                         ["finetune", "--run", str(run), "--epochs", "2"])
    assert result.exit_code == 130, result.output
    assert result.stderr.strip().endswith(f"run: kcnn finetune --run {run} --epochs 2")

    # A sweep is redone when run again: nothing to resume, nothing more to say.
    result = interrupted(monkeypatch, "keras_cnn.train.lr_find", "lr_find",
                         ["lr-find", "--architecture", "lenet", "--dataset", "mnist"])
    assert result.exit_code == 130 and result.stderr.strip().splitlines()[-1] == "kcnn: interrupted"


def test_readme_names_every_extra_and_the_serving_input_key():
    import configparser
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text(encoding="utf-8")
    setup = configparser.ConfigParser()
    setup.read(root / "setup.cfg")
    for extra in setup["options.extras_require"]:
        assert f"'.[{extra}]'" in readme, extra
    example = readme[readme.index("## Using an export without kcnn"):].split("```python", 1)[1].split("```", 1)[0]
    assert "image_bytes=" in example and 'signatures["serving_default"]' in example


def test_wrong_dataset_file_is_one_line_exit_2_and_debug_shows_traceback(tmp_path):
    bogus = tmp_path / "mnist.npz"
    bogus.write_text("not an archive")
    result = run_kcnn("train", "lenet", "--dataset", "mnist", "--dataset-path", str(bogus), "--out",
                      str(tmp_path / "run"))
    assert result.returncode == 2
    assert "not an MNIST .npz archive" in one_line_error(result)
    debug = run_kcnn("--debug", "train", "lenet", "--dataset", "mnist", "--dataset-path", str(bogus),
                     "--out", str(tmp_path / "run"))
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_models_json_lists_every_architecture_with_counts():
    result = CliRunner().invoke(cli, ["models", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    rows = {row["name"]: row for row in payload["models"]}
    assert rows["lenet"]["params"] == 1_256_080 and rows["lenet"]["kind"] == "scratch"
    assert rows["lenet"]["input_shape"] == [28, 28, 1]
    for row in rows.values():
        assert {"name", "kind", "input_shape", "params"} <= set(row)


@pytest.mark.parametrize("api", ["functional", "sequential"])
def test_summary_prints_reference_counts(api):
    result = CliRunner().invoke(cli, ["summary", "mini_alexnet", "--api", api])
    assert result.exit_code == 0, result.output
    assert "2,149,002" in result.output and "2,148,650" in result.output


@pytest.mark.parametrize("api", ["functional", "sequential"])
def test_summary_json_gives_counts_and_one_row_per_layer(api):
    result = CliRunner().invoke(cli, ["summary", "mini_alexnet", "--api", api, "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["total_params"] == 2_149_002 and payload["trainable_params"] == 2_148_650
    assert payload["non_trainable_params"] == 352 and payload["num_classes"] == 10
    assert sum(row["params"] for row in payload["layers"]) == payload["total_params"]
    first_conv = next(row for row in payload["layers"] if row["class"] == "Conv2D")
    assert first_conv["output_shape"][0] is None and len(first_conv["output_shape"]) == 4


def test_sample_data_json(tmp_path):
    result = CliRunner().invoke(cli, ["sample-data", str(tmp_path), "--per-class", "2", "--size", "24", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["count"] == 6 and (tmp_path / "label.csv").exists()


def test_summarize_items_bounds_long_lists(tmp_path):
    from keras_cnn.messages import bound_line, summarize_items

    assert summarize_items(["a", "b"]) == "a, b"
    line = summarize_items([f"file{i}.jpg" for i in range(1000)], tmp_path / "missing.txt")
    assert line.startswith("file0.jpg, file1.jpg, file2.jpg, file3.jpg, file4.jpg and 995 more")
    assert str(tmp_path / "missing.txt") in line and len(line) < 300
    assert (tmp_path / "missing.txt").read_text().splitlines()[-1] == "file999.jpg"
    assert len(bound_line("x" * 1000)) == 300
