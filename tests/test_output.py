"""What a person sees: progress that fits a terminal or a log, bounded lines, no noise,
words users know, and one JSON object per command."""

import io
import json
import subprocess
import sys

import pytest
from click.testing import CliRunner
from conftest import INTERNAL_WORDS, MAX_LINE, output_problems, stderr_problems, write_mnist_npz

from keras_cnn import progress
from keras_cnn.cli import COMMANDS, cli


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def run_kcnn(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "keras_cnn", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


# --------------------------------------------------------------------------- progress.py


def test_keras_verbose_follows_the_terminal_and_quiet(monkeypatch):
    monkeypatch.delenv("KCNN_QUIET", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setattr(sys, "stderr", FakeTerminal())
    assert progress.interactive() and progress.keras_verbose() == 1
    monkeypatch.setenv("KCNN_QUIET", "1")
    assert progress.keras_verbose() == 0
    monkeypatch.delenv("KCNN_QUIET")
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a pipe or a file
    assert not progress.interactive() and progress.keras_verbose() == 0
    monkeypatch.setenv("TERM", "dumb")
    monkeypatch.setattr(sys, "stderr", FakeTerminal())
    assert progress.keras_verbose() == 0


def test_progress_bar_off_a_terminal_prints_plain_lines(monkeypatch):
    monkeypatch.delenv("KCNN_QUIET", raising=False)
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setattr(progress, "PLAIN_PROGRESS_SECONDS", 0.0)  # a line for every update
    with progress.ProgressBar(30, "checking 30 images") as bar:
        for done in (10, 20, 30):
            bar.update(done)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "checking 30 images"
    assert lines[1].startswith("  10/30 images, about ") and lines[2].startswith("  20/30 images, about ")
    assert lines[-1].startswith("  30/30 images in ") and len(lines) == 4
    assert output_problems(stream.getvalue()) == []


def test_progress_bar_on_a_terminal_is_live_and_quiet_prints_nothing(monkeypatch):
    monkeypatch.delenv("KCNN_QUIET", raising=False)
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with progress.ProgressBar(4, "extracting features (4 images)") as bar:
        bar.update(2)
        bar.update(4)
    assert "\r" in terminal.getvalue() and "4/4" in terminal.getvalue()
    monkeypatch.setenv("KCNN_QUIET", "1")
    quiet = io.StringIO()
    monkeypatch.setattr(sys, "stderr", quiet)
    with progress.ProgressBar(4, "checking 4 images") as bar:
        bar.update(4)
    progress.say("a step")
    progress.warn("still shown")
    assert quiet.getvalue() == "kcnn: warning: still shown\n"


def test_messages_start_on_a_fresh_line_after_an_unfinished_bar(monkeypatch):
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    progress.track_stderr()
    sys.stderr.write("\r 1408/1794 ━━━━━━ 0s 182us/image")  # a bar the error interrupted
    progress.emit("kcnn: error: 4 images cannot be used")
    progress.emit("kcnn: next")
    assert terminal.getvalue().splitlines()[-2:] == ["kcnn: error: 4 images cannot be used", "kcnn: next"]
    assert terminal.getvalue().count("\n") == 3  # one newline closes the bar, none doubles up


def test_messages_are_bounded(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    progress.emit("x" * 2000 + "\nshort")
    lines = stream.getvalue().splitlines()
    assert len(lines[0]) == MAX_LINE and lines[0].endswith("…") and lines[1] == "short"
    assert (progress.format_seconds(75), progress.format_seconds(3700)) == ("1m15s", "1h01m")


def test_cli_errors_are_bounded_one_liners(tmp_path):
    long_path = tmp_path / ("very-long-folder-name/" * 60) / "label.csv"
    result = CliRunner().invoke(cli, ["split", str(long_path), "-o", str(tmp_path / "split.csv")])
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kcnn: error: ") and len(lines[0]) <= MAX_LINE


# --------------------------------------------------------------------------- help, words, JSON


def test_every_help_uses_words_users_know():
    runner = CliRunner()
    for name in [None, *COMMANDS]:
        result = runner.invoke(cli, ([name] if name else []) + ["--help"], terminal_width=100)
        assert result.exit_code == 0, result.output
        assert not INTERNAL_WORDS.search(result.output), f"kcnn {name} --help: {result.output}"
        assert "--quiet" in result.output and "--debug" in result.output


def test_quiet_prints_only_the_result(tmp_path, monkeypatch):
    monkeypatch.setenv("KCNN_QUIET", "0")  # --quiet sets it to 1; monkeypatch restores it afterwards
    result = CliRunner().invoke(cli, ["--quiet", "sample-data", str(tmp_path), "--per-class", "2", "--size", "24"])
    assert result.exit_code == 0 and result.stderr == "" and result.stdout.startswith("wrote 6 images")


@pytest.fixture(scope="module")
def tiny_label_csv(tmp_path_factory):
    from keras_cnn.data.sample import write_sample_data

    folder = tmp_path_factory.mktemp("tiny")
    write_sample_data(folder, classes=2, per_class=20, size=24, seed=0)
    return folder / "label.csv"


@pytest.mark.parametrize("arguments", [
    ["models"],
    ["summary", "lenet"],
    ["devices"],
    ["sample-data", "{tmp}/data", "--per-class", "2", "--size", "24"],
    ["split", "{label_csv}", "-o", "{tmp}/split.csv"],
])
def test_json_is_one_object(arguments, tmp_path, tiny_label_csv):
    arguments = [argument.format(tmp=tmp_path, label_csv=tiny_label_csv) for argument in arguments]
    result = CliRunner().invoke(cli, [*arguments, "--json"])
    assert result.exit_code == 0, result.output
    assert isinstance(json.loads(result.stdout), dict)


def test_a_tensorflow_command_prints_nothing_but_its_result():
    """`kcnn summary` loads TensorFlow: no CUDA probing, absl or Keras lines on stderr."""
    result = run_kcnn("summary", "lenet")
    assert result.returncode == 0 and "1,256,080" in result.stdout
    assert result.stderr == ""


def test_random_weights_warn_in_one_line_only_for_a_base_that_exists(tiny_label_csv):
    data = ["--weights", "none", "--split", str(tiny_label_csv), "--images", str(tiny_label_csv.parent)]
    known = CliRunner().invoke(cli, ["transfer", "--base", "efficientnet_b0", *data])
    assert known.exit_code == 2  # a label CSV is not a split: refused after the warning
    warnings = [line for line in known.stderr.splitlines() if line.startswith("kcnn: warning:")]
    assert len(warnings) == 1 and "random weights" in warnings[0] and len(warnings[0]) <= MAX_LINE
    # The advice that works: every layer, at a from-scratch rate (the fine-tuning default leaves them random).
    assert "--unfreeze-from all --learning-rate 0.001" in warnings[0]

    misspelt = CliRunner().invoke(cli, ["transfer", "--base", "efficientnet_bo", *data])
    assert misspelt.exit_code == 2 and "warning" not in misspelt.stderr
    assert "unknown base 'efficientnet_bo'; did you mean 'efficientnet_b0'?" in misspelt.stderr


# --------------------------------------------------------------------------- the full sweep


@pytest.mark.slow
def test_every_command_prints_one_json_object_and_only_its_own_lines(tmp_path):
    """Each command's typical invocation, piped: stdout is one JSON object, stderr is kcnn's."""
    write_mnist_npz(tmp_path / "mnist.npz", train=120, test=40)
    data, split, run, export = tmp_path / "data", tmp_path / "split.csv", tmp_path / "run", tmp_path / "export"
    commands = [
        ["models"], ["devices"],
        ["sample-data", data, "--classes", "2", "--per-class", "30", "--size", "48"],
        ["split", data / "label.csv", "-o", split],
        ["train", "lenet", "--dataset", "mnist", "--dataset-path", tmp_path / "mnist.npz", "--epochs", "1",
         "--out", tmp_path / "scratch"],
        ["transfer", "--base", "efficientnet_b0", "--weights", "none", "--image-size", "32", "--epochs", "1",
         "--split", split, "--images", data, "--out", run],
        ["finetune", "--run", run, "--epochs", "1"],
        ["evaluate", "--run", run, "--subset", "validation"],
        ["export", "--run", run, "--out", export, "--format", "saved_model", "--format", "onnx",
         "--format", "litert"],
        ["predict", "--model", export, data],
    ]
    for command in commands:
        result = run_kcnn(*command, "--json")
        assert result.returncode == 0, (command, result.stderr[-2000:])
        assert isinstance(json.loads(result.stdout), dict), command
        assert stderr_problems(result.stderr) == [], (command, result.stderr[-3000:])
    summary = run_kcnn("summary", "lenet")
    assert summary.returncode == 0 and stderr_problems(summary.stderr) == [] and summary.stderr == ""
