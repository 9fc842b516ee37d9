"""A run folder owns only what kcnn made; finished means finished; models load safely.

Each test reproduces a way kcnn used to lose a user's files, report a run wrongly, or run a
program it was not asked to, through the command line, and checks it is now refused in one
line (before anything is written) or handled right.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import train_tiny_hub_head
from PIL import Image

from keras_cnn.cli import cli
from keras_cnn.io import RUN_MARKER
from keras_cnn.runs import RunLock

MAX_LINE = 300


def invoke(*args):
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def error_line(result) -> str:
    """The one error line a refusal prints (and checks that there is exactly one, whole)."""
    lines = [line for line in result.stderr.splitlines() if line.startswith("kcnn: error")]
    assert len(lines) == 1, result.output[-3000:]
    assert "Traceback" not in result.output and len(lines[0]) <= MAX_LINE and not lines[0].endswith("…")
    return lines[0]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time."""
    return {str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in sorted(folder.rglob("*")) if path.is_file()}


def lenet_args(mnist_npz, run, *extra):
    return ["train", "lenet", "--dataset", "mnist", "--dataset-path", mnist_npz, "--epochs", 1, "--batch-size", 32,
            "--out", run, *extra]


@pytest.fixture(scope="module")
def lenet_run(tmp_path_factory, mnist_npz) -> Path:
    """A finished one-epoch `kcnn train lenet` run (copy it before changing it)."""
    run = tmp_path_factory.mktemp("lenet") / "run"
    result = invoke(*lenet_args(mnist_npz, run))
    assert result.exit_code == 0, result.output[-3000:]
    return run


@pytest.fixture(scope="module")
def hub_run(tmp_path_factory, sample_split, sample_data_dir) -> Path:
    """A transfer run on a tiny TF Hub module, fine-tuned for one epoch (copy it before changing it)."""
    run = train_tiny_hub_head(tmp_path_factory.mktemp("hub"), sample_split, sample_data_dir)
    result = invoke("finetune", "--run", run, "--unfreeze-from", "all", "--epochs", 1, "--trust-hub")
    assert result.exit_code == 0, result.output[-3000:]
    return run


def copy_of(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / run.name
    shutil.copytree(run, target)
    return target


# --------------------------------------------------------------------------- the run folder owns only what kcnn made


def test_a_folder_kcnn_did_not_make_keeps_its_files(mnist_npz, tmp_path):
    """A stage started in a user's folder used to delete its eval/ and features/ and replace its config.json."""
    folder = tmp_path / "mine"
    for name in ("eval/report.txt", "features/vectors.npy", "notes.txt"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(f"the user's {name}")
    (folder / "config.json").write_text('{"mine": true}')
    before = snapshot(folder)

    refused = invoke(*lenet_args(mnist_npz, folder))
    assert refused.exit_code == 2
    line = error_line(refused)
    assert "is not a kcnn run and is not empty" in line and "config.json" in line and "--overwrite" in line
    forced = invoke(*lenet_args(mnist_npz, folder, "--overwrite"))
    assert forced.exit_code == 2
    line = error_line(forced)
    assert all(name in line for name in ("config.json", "eval", "features")) and "kcnn did not make" in line
    assert snapshot(folder) == before and not (folder / RUN_MARKER).exists() and not (folder / ".lock").exists()

    lists = tmp_path / "lists"                        # a name kcnn gives a list it writes into a run
    lists.mkdir()
    (lists / "duplicates.txt").write_text("the user's own")
    forced = invoke(*lenet_args(mnist_npz, lists, "--overwrite"))
    assert forced.exit_code == 2 and "duplicates.txt" in error_line(forced)
    assert os.listdir(lists) == ["duplicates.txt"] and (lists / "duplicates.txt").read_text() == "the user's own"


def test_an_older_run_with_an_unreadable_state_is_one_line_and_overwrite_recovers_keeping_other_files(
        lenet_run, mnist_npz, tmp_path):
    """A state.json holding a list gave AttributeError, --overwrite included; an older run (state.json, no
    record) counts as kcnn's for kcnn's files only."""
    run = copy_of(lenet_run, tmp_path)
    (run / RUN_MARKER).unlink(missing_ok=True)        # a run made before kcnn recorded its runs
    (run / "state.json").write_text("[]")
    (run / "notes.txt").write_text("mine")
    (run / "plots").mkdir()
    (run / "plots" / "a.png").write_bytes(b"mine")
    result = invoke(*lenet_args(mnist_npz, run))
    assert result.exit_code == 2 and "state.json" in error_line(result) and "--overwrite" in error_line(result)
    old_model = (run / "model.keras").stat().st_mtime_ns
    result = invoke(*lenet_args(mnist_npz, run, "--overwrite"))
    assert result.exit_code == 0, result.output[-3000:]
    assert json.loads((run / "state.json").read_text())["stages"]["train"]["status"] == "finished"
    assert (run / "notes.txt").read_text() == "mine" and (run / "plots" / "a.png").read_bytes() == b"mine"
    assert (run / "model.keras").stat().st_mtime_ns != old_model
    assert "model.keras" in json.loads((run / RUN_MARKER).read_text())["entries"]


def image_tree(root: Path, classes=("cat", "eval", "logs", "features", "backup")) -> Path:
    """Class folders, some named like a run's own folders, of four tiny pictures each."""
    rng = np.random.default_rng(0)
    for label in classes:
        (root / label).mkdir(parents=True)
        for index in range(4):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / label / f"{index}.png")
    return root


@pytest.mark.parametrize("overwrite", [False, True])
def test_out_and_images_must_not_hold_each_other(tmp_path, overwrite):
    """--out equal to or inside --images deleted class folders named eval, logs, features or backup."""
    images = image_tree(tmp_path / "photos")
    before = snapshot(tmp_path)
    extra = ["--overwrite"] if overwrite else []
    for out, words in ((images, "is the image folder"), (images / "run", "is inside the image folder"),
                       (tmp_path, "is inside the run folder")):
        result = invoke("train", "lenet", "--images", images, "--epochs", 1, "--out", out, *extra)
        assert result.exit_code == 2 and words in error_line(result), result.output[-2000:]
    assert snapshot(tmp_path) == before and not (images / "run").exists()


def test_overwrite_never_replaces_a_split_file_kept_in_the_run_folder(lenet_run, sample_split, sample_data_dir,
                                                                      tmp_path):
    """--overwrite deleted a split kept at RUN/split.csv, then the model, then failed for want of the split."""
    run = copy_of(lenet_run, tmp_path)
    shutil.copy(sample_split, run / "split.csv")
    before = snapshot(run)
    result = invoke("train", "lenet", "--split", run / "split.csv", "--images", sample_data_dir, "--epochs", 1,
                    "--out", run, "--overwrite")
    assert result.exit_code == 2
    assert "--split" in error_line(result) and "beside it is fine" in error_line(result)
    assert snapshot(run) == before


def test_a_refused_start_keeps_the_run_as_it_was_and_names_only_what_it_wrote(tmp_path):
    """--overwrite deleted a finished run and only then found a bad image; a refused first start left
    RUN/duplicates.txt unrecorded, so the same command run again was refused as "not a kcnn run"."""
    images = image_tree(tmp_path / "photos", classes=("cat", "dog"))
    for index in range(6):                            # more copies than a warning names: a list file
        shutil.copy(images / "cat" / "0.png", images / "cat" / f"copy{index}.png")
    broken = images / "dog" / "broken.png"
    broken.write_text("not a picture")
    run = tmp_path / "run"
    args = ["train", "lenet", "--images", images, "--epochs", 1, "--out", run]
    refused = invoke(*args)
    assert refused.exit_code == 2 and "broken.png" in error_line(refused)
    assert (run / "duplicates.txt").is_file() and "duplicates.txt" in refused.stderr
    broken.unlink()
    finished = invoke(*args)
    assert finished.exit_code == 0, finished.output[-3000:]

    before = snapshot(run)
    broken.write_text("not a picture")
    refused = invoke(*args, "--overwrite")
    assert refused.exit_code == 2 and "broken.png" in error_line(refused)
    assert snapshot(run) == before and not [name for name in os.listdir(run) if ".tmp-" in name]

    exclude = run / "eval" / "exclude.txt"            # an input kept where the run writes its own files
    exclude.parent.mkdir()
    exclude.write_text("cat/1.png\n")
    before = snapshot(run)
    refused = invoke(*args, "--exclude", exclude, "--overwrite")
    assert refused.exit_code == 2 and "--exclude" in error_line(refused)
    assert snapshot(run) == before


def test_every_list_kcnn_writes_into_a_run_is_one_of_its_entries():
    """A list written into a run but not recorded made the next start refuse the folder as someone else's."""
    import re

    import keras_cnn
    from keras_cnn.data.split import PARTS
    from keras_cnn.runs import RunDirectory

    written = set()
    for path in Path(keras_cnn.__file__).parent.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        written |= set(re.findall(r'_list_path\(list_prefix, "([^"]+)"\)', text))
        written |= set(re.findall(r'full_list_path\(f?"([^"]+)", list_folder\)', text))
    written = {name.replace("{part}", part) for name in written for part in PARTS}
    assert {"duplicates.txt", "missing.txt", "bad_test_images.txt"} <= written
    assert written <= set(RunDirectory.LISTS) <= set(RunDirectory.ENTRIES)


def test_a_run_set_aside_by_a_killed_overwrite_is_removed_at_the_next_start_and_nothing_else(tmp_path):
    from keras_cnn.runs import RunDirectory

    run = RunDirectory(tmp_path / "run").create()
    run.claim()
    (run.root / "model.keras").write_text("the old model")
    (run.root / "notes.txt").write_text("mine")
    aside = run.set_aside()                           # what --overwrite does, and then a kill
    assert aside.name.startswith(".overwritten.tmp-") and (aside / "model.keras").is_file()
    assert run.remove_stale_temporaries() == [aside]
    assert sorted(os.listdir(run.root)) == [RUN_MARKER, "notes.txt"]


def test_a_typo_in_unfreeze_from_with_overwrite_leaves_the_fine_tuned_run_as_it_was(hub_run, tmp_path):
    """finetune --unfreeze-from block9z --overwrite deleted the finished fine-tuning, then named the typo."""
    run = copy_of(hub_run, tmp_path)
    before = snapshot(run)
    result = invoke("finetune", "--run", run, "--unfreeze-from", "block9z", "--overwrite", "--trust-hub")
    assert result.exit_code == 2 and "block9z" in error_line(result)
    assert snapshot(run) == before


def test_changed_options_are_named_once_whole_and_the_rest_listed_in_a_file(hub_run, tmp_path):
    """The refusal was cut mid-word at 302 characters and named each change twice."""
    run = copy_of(hub_run, tmp_path)
    one = invoke("finetune", "--run", run, "--unfreeze-from", "all", "--epochs", 1, "--learning-rate", 0.5,
                 "--trust-hub")
    assert one.exit_code == 2
    line = error_line(one)
    assert line.count("learning_rate") == 1 and "now: 0.5" in line and "--overwrite" in line
    many = invoke("finetune", "--run", run, "--unfreeze-from", "all", "--epochs", 3, "--learning-rate", 0.5,
                  "--optimizer", "sgd", "--batch-size", 8, "--schedule", "cosine", "--ema", 0.9, "--train-bn",
                  "--trust-hub")
    assert many.exit_code == 2
    line = error_line(many)
    listed = Path(line.rsplit("(full list: ", 1)[1].rstrip(")"))
    changes = listed.read_text().splitlines()
    names = [change.split(" ", 1)[0].rsplit(".", 1)[-1] for change in changes]
    assert {"epochs", "learning_rate", "optimizer", "batch_size", "schedule", "ema", "train_bn"} <= set(names)
    assert len(names) == len(set(names))


def test_a_refusal_naming_a_long_run_folder_stays_whole(hub_run, tmp_path):
    """A run folder's path long enough to fill the line cut the refusal mid-word."""
    run = copy_of(hub_run, tmp_path / ("a-long-folder-name-" * 11))
    result = invoke("finetune", "--run", run, "--unfreeze-from", "all", "--epochs", 1, "--learning-rate", 0.5,
                    "--trust-hub")
    assert result.exit_code == 2
    line = error_line(result)
    assert "other options" in line and "--overwrite" in line and "learning_rate (run: 1e-05, now: 0.5)" in line


WRITERS = {
    "train": lambda mnist_npz, run: lenet_args(mnist_npz, run),
    "evaluate": lambda mnist_npz, run: ["evaluate", "--run", run],
    "calibrate": lambda mnist_npz, run: ["calibrate", "--run", run],
    "lr-find": lambda mnist_npz, run: ["lr-find", "--run", run],
}


@pytest.mark.parametrize("command", WRITERS)
def test_the_lock_refuses_a_second_writer_before_tensorflow_loads(lenet_run, mnist_npz, tmp_path, command):
    """The second writer used to be refused only after TensorFlow's ~14 s start-up (calibrate, lr-find --run:
    after it, or never)."""
    run = copy_of(lenet_run, tmp_path)
    program = ("import json, sys\nfrom keras_cnn.cli import cli\ntry:\n    cli.main(sys.argv[1:])\n"
               "except SystemExit as stop:\n    print(json.dumps({'code': stop.code, "
               "'tensorflow': 'tensorflow' in sys.modules}))\n")
    with RunLock(run):
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", program, *map(str, WRITERS[command](mnist_npz, run))],
                              capture_output=True, text=True, timeout=120)
        seconds = time.perf_counter() - started
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome == {"code": 2, "tensorflow": False}, done.stderr[-2000:]
    assert f"pid {os.getpid()}" in done.stderr and seconds < 10


# --------------------------------------------------------------------------- finished means finished


def test_a_finished_stage_needs_its_model_file(lenet_run, mnist_npz, tmp_path):
    """A finished stage whose model.keras was deleted said "already finished"; a garbage one "File not found"."""
    run = copy_of(lenet_run, tmp_path)
    (run / "model.keras").unlink()
    result = invoke(*lenet_args(mnist_npz, run))
    assert result.exit_code == 2
    assert "is not finished" in error_line(result) and "is missing" in error_line(result)
    assert "--overwrite" in error_line(result)
    (run / "model.keras").write_bytes(b"not a model at all")
    result = invoke(*lenet_args(mnist_npz, run))
    assert result.exit_code == 2 and "not a Keras model file" in error_line(result)
    result = invoke("evaluate", "--run", run)
    assert result.exit_code == 2
    assert "not a Keras model file" in error_line(result) and "File not found" not in result.output


def test_a_fine_tune_needs_the_model_file_of_the_stage_it_starts_from(hub_run, tmp_path):
    run = copy_of(hub_run, tmp_path)
    (run / "stages" / "head.keras").unlink()
    (run / "model.keras").write_bytes(b"cut short")
    before = snapshot(run)
    result = invoke("finetune", "--run", run, "--unfreeze-from", "all", "--epochs", 1, "--overwrite", "--trust-hub")
    assert result.exit_code == 2
    line = error_line(result)
    assert "stage 'head'" in line and "is not finished" in line and "not a Keras model file" in line, line
    assert snapshot(run) == before


def test_a_loss_that_is_not_a_number_names_the_option_and_the_run_can_start_over(lenet_run, mnist_npz, tmp_path):
    run = copy_of(lenet_run, tmp_path)
    result = invoke(*lenet_args(mnist_npz, run, "--overwrite", "--learning-rate", 1e12))
    assert result.exit_code == 1
    line = error_line(result)
    assert "became nan" in line or "became inf" in line
    assert "--learning-rate 1e+12 is likely too high" in line and "--overwrite" in line
    result = invoke(*lenet_args(mnist_npz, run, "--overwrite", "--learning-rate", 0.001))
    assert result.exit_code == 0, result.output[-3000:]


def lenet5_bn_args(images: Path, run: Path, rate: float) -> list:
    """One batch an epoch: the training loss is computed before the step that breaks the weights."""
    return ["train", "lenet5_bn", "--images", images, "--epochs", 1, "--batch-size", 512, "--optimizer", "sgd",
            "--learning-rate", rate, "--out", run]


def test_a_validation_loss_that_is_not_a_number_stops_the_stage_and_says_so_again(sample_data_dir, tmp_path):
    """A NaN validation loss (BatchNorm's moving statistics overflow while the training loss stays finite)
    left the run "running" and then said "File not found" (later: "model.keras ... is missing") at every re-run."""
    run = tmp_path / "run"
    for _attempt in range(2):                       # the same command again: the same clear line
        result = invoke(*lenet5_bn_args(sample_data_dir, run, 1e25))
        assert result.exit_code == 1, result.output[-3000:]
        line = error_line(result)
        assert "the validation loss became nan at epoch 1" in line, line
        assert "--learning-rate 1e+25 is likely too high" in line and "--overwrite" in line
        assert "File not found" not in result.output and "is missing" not in line


def last_dense_layer(model):
    """The model's last Dense layer (the classifier), looked for inside nested models too."""
    import keras

    for layer in reversed(model.layers):
        found = layer if isinstance(layer, keras.layers.Dense) else (
            last_dense_layer(layer) if hasattr(layer, "layers") else None)
        if found is not None:
            return found
    return None


def test_a_model_whose_outputs_are_not_numbers_is_one_line(lenet_run, tmp_path):
    """Infinite logits behind a finite loss ended the stage, or kcnn calibrate, with a raw
    "ValueError: logits must be finite numbers"."""
    import keras

    from keras_cnn.models.loading import load_model

    run = copy_of(lenet_run, tmp_path)
    model = load_model(run / "model.keras")
    dense = last_dense_layer(model)
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel * 1e38, bias])        # what an overflowing step leaves
    keras.saving.save_model(model, run / "model.keras")
    result = invoke("calibrate", "--run", run)
    assert result.exit_code == 1
    line = error_line(result)
    assert "outputs on the validation part are not finite numbers" in line and "--learning-rate" in line
    assert "ValueError" not in result.output


def test_a_validation_loss_that_is_not_a_number_stops_the_stage():
    """A NaN validation loss left the run "running" and ended with "File not found" (no model was ever best)."""
    from keras_cnn.errors import RunFailure
    from keras_cnn.train.callbacks import NanGuard

    import keras

    guard = NanGuard("check --mixup 50")
    guard.set_model(keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)]))
    guard.on_epoch_end(0, {"loss": 0.5, "val_loss": 0.7})
    with pytest.raises(RunFailure, match=r"validation loss became nan at epoch 2; check --mixup 50"):
        guard.on_epoch_end(1, {"loss": 0.5, "val_loss": float("nan")})


def export_args(run, out, *extra):
    return ["export", "--run", run, "--out", out, "--no-verify", *extra]


def test_export_refuses_an_unfinished_run_unless_allowed_and_records_it(lenet_run, tmp_path):
    """A run killed after epoch 1 of 4 (or still training) was exported with exit 0 and metrics: {}."""
    run = copy_of(lenet_run, tmp_path)
    state = json.loads((run / "state.json").read_text())
    state["stages"]["train"]["status"] = "running"     # what a kill (or a training in progress) leaves
    (run / "state.json").write_text(json.dumps(state))
    refused = invoke(*export_args(run, tmp_path / "export"))
    assert refused.exit_code == 2
    assert "has not finished" in error_line(refused) and "--allow-unfinished" in error_line(refused)
    assert not (tmp_path / "export").exists()
    allowed = invoke(*export_args(run, tmp_path / "export", "--allow-unfinished", "--json"))
    assert allowed.exit_code == 0, allowed.output[-3000:]
    metadata = json.loads((tmp_path / "export" / "1" / "assets.extra" / "kcnn.json").read_text())
    assert "has not finished" in metadata["unfinished"]


def test_calibrate_refuses_an_unfinished_run(lenet_run, tmp_path):
    """kcnn calibrate fitted the partial model of a killed stage, which its resumed stage then replaced."""
    run = copy_of(lenet_run, tmp_path)
    state = json.loads((run / "state.json").read_text())
    state["stages"]["train"]["status"] = "running"
    (run / "state.json").write_text(json.dumps(state))
    before = snapshot(run)
    result = invoke("calibrate", "--run", run)
    assert result.exit_code == 2 and "has not finished" in error_line(result)
    assert snapshot(run) == before


def test_export_force_replaces_only_a_kcnn_export(lenet_run, tmp_path):
    version = tmp_path / "export" / "1"
    version.mkdir(parents=True)
    (version / "mine.txt").write_text("not an export")
    result = invoke(*export_args(lenet_run, tmp_path / "export", "--force"))
    assert result.exit_code == 2 and "is not a kcnn export" in error_line(result)
    assert os.listdir(version) == ["mine.txt"]


KILLED_WRITE = """
import os, signal, sys
from keras_cnn.io import atomic_path
with atomic_path(sys.argv[1], directory=sys.argv[2] == "folder") as temporary:
    os.kill(os.getpid(), signal.SIGKILL)
"""


def killed_write(path: Path, kind: str) -> Path:
    """Start writing ``path`` the way kcnn does, and die by SIGKILL half-way: returns the leftover."""
    done = subprocess.run([sys.executable, "-c", KILLED_WRITE, str(path), kind], capture_output=True, timeout=60)
    assert done.returncode == -signal.SIGKILL
    (leftover,) = path.parent.glob(f".{path.name}.tmp-*")
    return leftover


def test_export_and_split_clean_up_what_a_killed_one_left_and_only_that(lenet_run, sample_data_dir, tmp_path):
    split = tmp_path / "split.csv"
    leftover = killed_write(split, "file")
    mine = tmp_path / ".split.csv.tmp-keep"            # not a name kcnn makes
    mine.write_text("mine")
    assert invoke("split", sample_data_dir / "label.csv", "-o", split).exit_code == 0
    assert not leftover.exists() and mine.exists() and split.exists()

    export = tmp_path / "export"
    leftover = killed_write(export / "1", "folder")
    result = invoke(*export_args(lenet_run, export))
    assert result.exit_code == 0, result.output[-3000:]
    assert not leftover.exists() and sorted(os.listdir(export)) == ["1"]


SLOW_WRITE = """
import sys, time
import click
from keras_cnn.cli import COMMANDS, cli
from keras_cnn.io import atomic_path

@click.command()
@click.argument("path")
def slow_write(path):
    with atomic_path(path, directory=True):
        time.sleep(120)

COMMANDS["slow-write"] = "__main__:slow_write"
cli.main(["slow-write", sys.argv[1]])
"""


def test_a_terminated_command_leaves_no_temporary(tmp_path):
    """SIGTERM unwinds kcnn like Ctrl-C, so a half-written result (an export's version folder) goes."""
    process = subprocess.Popen([sys.executable, "-c", SLOW_WRITE, str(tmp_path / "1")], stderr=subprocess.PIPE,
                               text=True)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".1.tmp-*")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143 and "kcnn: terminated" in stderr, stderr[-2000:]
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- models load safely


def write_spying_module(path: Path, witness: Path) -> None:
    """A SavedModel shaped like the tiny hub module whose call also writes ``witness``: a program."""
    import tensorflow as tf

    from conftest import HUB_FEATURES

    class Spy(tf.Module):
        variables = None
        trainable_variables = None

        def __init__(self):
            super().__init__()
            shapes = [[3, 3, 3, HUB_FEATURES], [HUB_FEATURES], [HUB_FEATURES], [HUB_FEATURES], [HUB_FEATURES]]
            self.variables = [tf.Variable(tf.zeros(shape)) for shape in shapes]
            self.trainable_variables = self.variables[:4]

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
        def __call__(self, images):
            tf.io.write_file(str(witness), "ran")
            return tf.zeros([tf.shape(images)[0], HUB_FEATURES]) + self.variables[1]

    tf.saved_model.save(Spy(), str(path))


def point_hub_layer_at(model_path: Path, handle: str | None, module_path: str) -> None:
    """Rewrite the hub layer of a saved ``.keras`` file (what anyone can do to a run's model)."""
    with zipfile.ZipFile(model_path) as archive:
        contents = {name: archive.read(name) for name in archive.namelist()}

    def edit(node):
        if isinstance(node, dict):
            if node.get("class_name") == "HubFeatureLayer":
                node["config"]["module_path"] = module_path
                if handle is not None:
                    node["config"]["handle"] = handle
            for value in node.values():
                edit(value)
        elif isinstance(node, list):
            for value in node:
                edit(value)

    config = json.loads(contents["config.json"])
    edit(config)
    contents["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(model_path, "w") as archive:
        for name, data in contents.items():
            archive.writestr(name, data)


def test_a_hub_module_loads_only_with_consent_and_only_the_runs_own(hub_run, tmp_path):
    """A run's model.keras could name any SavedModel, which evaluate and export then ran."""
    run = copy_of(hub_run, tmp_path)
    refused = invoke(*export_args(run, tmp_path / "export"))
    assert refused.exit_code == 2 and "--trust-hub" in error_line(refused)

    witness = tmp_path / "witness.txt"
    spy = tmp_path / "spy"
    write_spying_module(spy, witness)
    point_hub_layer_at(run / "model.keras", handle=str(spy), module_path=str(spy))
    result = invoke(*export_args(run, tmp_path / "export", "--trust-hub"))
    assert result.exit_code == 2 and "not the base the run records" in error_line(result)
    shutil.copy(hub_run / "model.keras", run / "model.keras")
    point_hub_layer_at(run / "model.keras", handle=None, module_path=str(spy))   # the handle kept, the folder swapped
    result = invoke("evaluate", "--run", run, "--trust-hub")
    assert result.exit_code == 0, result.output[-3000:]
    assert not witness.exists() and not (tmp_path / "export").exists()
