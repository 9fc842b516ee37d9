"""Options and inputs are checked before anything is written or read; pictures, CSVs and messages are safe.

Each test is a case a user met: an option out of range running for a minute before a raw
error, a named pipe as --split hanging, lr-find writing its split before refusing, a full
disk printing OSError, a decompression bomb decoded into gigabytes, labels that run as
spreadsheet formulas, an unreadable file --skip-bad-images did not skip, fine-tuning
advising an option it does not take, and libjpeg's warnings under --quiet.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import stderr_problems
from keras_cnn.cli import cli
from keras_cnn.spreadsheet import unescape_cell

# Class folders a spreadsheet would run as formulas, were they written as they are.
HOSTILE_LABELS = ['=HYPERLINK("example.com","open")', "@SUM(A1)", "+plus"]
PER_LABEL = 30
BOMB_SIDE = 10_000   # 100,000,000 pixels: over Pillow's 89,478,485, though a few hundred kilobytes as a PNG


def invoke(*arguments: str):
    return CliRunner().invoke(cli, [str(argument) for argument in arguments])


@pytest.fixture(autouse=True)
def no_quiet_after(monkeypatch):
    """A command run with -q sets KCNN_QUIET for the whole process: each test leaves it as it found it."""
    monkeypatch.setenv("KCNN_QUIET", "0")   # recorded, so put back (or removed) when the test ends


def encoded(pixels: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def write_bomb(path: Path) -> Path:
    """A 10000 x 10000 PNG (black, one bit per pixel: 300 MB as decoded RGB, a few hundred KB on disk)."""
    Image.new("1", (BOMB_SIDE, BOMB_SIDE)).save(path, "PNG")
    return path


@contextlib.contextmanager
def native_stderr_into(path: Path):
    """What native code writes to fd 2 (libjpeg's warnings) goes to ``path`` for the duration."""
    sys.stderr.flush()
    saved = os.dup(2)
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(target, 2)
    os.close(target)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def fifo_that_ends(path: Path):
    """A named pipe at ``path`` whose reader, if any, gets an empty read instead of waiting for ever."""
    import threading

    os.mkfifo(path)
    done = threading.Event()

    def end_any_reader():
        while not done.wait(0.05):
            try:   # succeeds only while something has the pipe open for reading
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass

    ender = threading.Thread(target=end_any_reader, daemon=True)
    ender.start()
    try:
        yield path
    finally:
        done.set()
        ender.join()


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    """`kcnn train lenet --skip-bad-images -q` on class folders named like formulas, with one image
    that cannot be read (no permission) and one damaged JPEG that still decodes (libjpeg warns)."""
    root = tmp_path_factory.mktemp("hostile")
    images = root / "images"
    rng = np.random.default_rng(3)
    for index, label in enumerate(HOSTILE_LABELS):
        folder = images / label
        folder.mkdir(parents=True)
        for number in range(PER_LABEL):
            pixels = rng.integers(0, 60, (28, 28), dtype=np.uint8)
            pixels[4 + 8 * index:8 + 8 * index] = 255   # the class is a bright band: learnable
            (folder / f"{number:02d}.png").write_bytes(encoded(pixels, "PNG"))
    jpeg = encoded(rng.integers(0, 255, (28, 28, 3), dtype=np.uint8), "JPEG")
    damaged = images / HOSTILE_LABELS[1] / "damaged.jpg"
    damaged.write_bytes(jpeg[:-2] + b"\x00\x01\x02" + jpeg[-2:])   # bytes before the end marker: libjpeg warns
    unreadable = images / HOSTILE_LABELS[0] / "unreadable.png"
    unreadable.write_bytes(encoded(rng.integers(0, 255, (28, 28), dtype=np.uint8), "PNG"))
    unreadable.chmod(0)
    run, native = root / "run", root / "native-stderr.txt"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KCNN_QUIET", "0")   # -q sets it to 1 for the process: as it was again after the fixture
        if os.geteuid() == 0:   # root reads any file: the operating system's refusal is played here
            from keras_cnn.data import collection

            def refusing_open(path, *arguments, **keywords):
                if Path(path) == unreadable:
                    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
                return open(path, *arguments, **keywords)

            patch.setattr(collection, "open", refusing_open, raising=False)
        with native_stderr_into(native):
            result = invoke("train", "lenet", "--images", images, "--skip-bad-images", "--epochs", "1",
                            "--batch-size", "32", "--out", run, "-q")
    unreadable.chmod(0o644)
    return {"images": images, "run": run, "result": result, "native": native.read_text(errors="replace")}


# --------------------------------------------------------------------------- options and inputs, early


@pytest.mark.parametrize("arguments, option", [
    (["transfer", "--base", "mobilenet_v3_small", "--weights", "none", "--image-size", "100000"], "--image-size"),
    (["train", "lenet", "--seed", "-1"], "--seed"),
    (["train", "lenet", "--seed", str(2**70)], "--seed"),
    (["train", "lenet", "--batch-size", str(2**70)], "--batch-size"),
    (["train", "lenet", "--epochs", "2", "--warmup-epochs", "1e300"], "--warmup-epochs"),
    (["transfer", "--base", "mobilenet_v3_small", "--weights", "none", "--head-units", str(2**40)], "--head-units"),
])
def test_an_option_out_of_range_is_refused_before_anything_is_read_or_written(tmp_path, sample_data_dir,
                                                                            arguments, option):
    result = invoke(*arguments, "--images", sample_data_dir, "--out", tmp_path / "run")
    assert result.exit_code == 2, result.output[-2000:]
    lines = result.stderr.strip().splitlines()
    assert option in lines[-1] and lines[-1].startswith("kcnn: error: "), lines
    assert not [line for line in lines if line.startswith(("found ", "checking ", "device: "))], lines
    assert not (tmp_path / "run").exists()


def test_sample_data_refuses_a_negative_seed(tmp_path):
    result = invoke("sample-data", tmp_path / "sample", "--seed", "-5")
    assert result.exit_code == 2 and "--seed" in result.stderr and not (tmp_path / "sample").exists()


def test_a_named_pipe_as_split_is_refused_not_read(tmp_path, sample_data_dir):
    """Reading a FIFO waits for a writer that never comes: the option itself is refused."""
    fifo = tmp_path / "split.csv"
    os.mkfifo(fifo)
    process = subprocess.run([sys.executable, "-m", "keras_cnn", "train", "lenet", "--images", str(sample_data_dir),
                              "--split", str(fifo), "--out", str(tmp_path / "run")],
                             capture_output=True, text=True, timeout=120)
    assert process.returncode == 2, process.stderr[-2000:]
    assert "named pipe" in process.stderr and str(fifo) in process.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("arguments", [
    ["train", "lenet", "--images", "IMAGES", "--exclude", "FIFO", "--out", "OUT"],
    ["lr-find", "--base", "mobilenet_v3_small", "--weights", "none", "--images", "IMAGES", "--relabel", "FIFO"],
    ["doctor", "FIFO", "--base", "mobilenet_v3_small", "--weights", "none", "--out", "OUT"],
])
def test_a_named_pipe_is_refused_wherever_a_file_is_read(tmp_path, sample_data_dir, tensorflow_refused, arguments):
    with fifo_that_ends(tmp_path / "list.csv") as fifo:
        places = {"IMAGES": sample_data_dir, "FIFO": fifo, "OUT": tmp_path / "out"}
        result = invoke(*[places.get(argument, argument) for argument in arguments])
    assert result.exit_code == 2, result.output[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert "is a FIFO (named pipe), not a regular file" in last and str(fifo.name) in last, last
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("arguments", [
    ["--base", "mobilenet_v3_small", "--start-lr", "1", "--end-lr", "0.1"],
    ["--base", "inception_v3", "--image-size", "40"],   # inception_v3 takes 75 pixels or more
])
def test_lr_find_writes_nothing_before_refusing_an_option(tmp_path, sample_data_dir, arguments):
    out = tmp_path / "sweep" / "lr_find.png"
    result = invoke("lr-find", *arguments, "--weights", "none", "--images", sample_data_dir, "--out", out)
    assert result.exit_code == 2, result.output[-2000:]
    assert not out.parent.exists(), sorted(out.parent.iterdir())
    assert "found " not in result.stderr   # the images were not even listed


def test_a_full_disk_names_the_file_and_leaves_nothing_half_written(tmp_path, sample_data_dir, monkeypatch):
    """The operating system reports a full disk as OSError ENOSPC on write."""
    import builtins

    real_open = builtins.open

    class FullDisk(io.StringIO):
        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def open_on_a_full_disk(path, mode="r", *arguments, **keywords):
        if "w" in mode and ".tmp-" in os.fspath(path):
            real_open(path, mode, *arguments, **keywords).close()   # the file exists, nothing fits in it
            return FullDisk()
        return real_open(path, mode, *arguments, **keywords)

    monkeypatch.setattr(builtins, "open", open_on_a_full_disk)
    out = tmp_path / "out" / "split.csv"
    result = invoke("split", sample_data_dir / "label.csv", "-o", out)
    monkeypatch.undo()
    assert result.exit_code == 1, result.output[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"kcnn: error: no space left on device while writing {out} (the file was left as it was); free some space "
        "and run the command again")
    assert not out.exists() and list(out.parent.iterdir()) == []


@pytest.fixture
def tensorflow_refused(monkeypatch):
    """Starting TensorFlow fails the command: an option checked only after it is checked too late."""
    import importlib

    from keras_cnn.cli import COMMANDS

    def started():
        raise AssertionError("TensorFlow started before the options were checked")

    # Every command module, imported before the patch (a module imported during it would keep the stand-in).
    for module in {importlib.import_module(target.split(":")[0]) for target in COMMANDS.values()}:
        for holder in (module, importlib.import_module("keras_cnn.cli.common")):
            if hasattr(holder, "import_tensorflow_quietly"):
                monkeypatch.setattr(holder, "import_tensorflow_quietly", started)


def answer_export(hostile_export, tmp_path, **metadata) -> Path:
    """A copy of the hostile export whose kcnn.json says more (as a multi-label export's does)."""
    copy = tmp_path / "export"
    shutil.copytree(hostile_export, copy)
    record = copy / "1" / "assets.extra" / "kcnn.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), **metadata}))
    return copy


@pytest.mark.parametrize("arguments, refusal", [
    (["evaluate", "--run", "RUN", "--target-accuracy", "nan"], "--target-accuracy"),
    (["evaluate", "--run", "RUN", "--tta", "100"], "--tta must be between 1 and 6 views"),
    (["predict", "--model", "EXPORT", "IMAGE", "--reject-below", "nan"], "--reject-below"),
    (["predict", "--model", "EXPORT", "IMAGE", "--tta", "100"], "--tta must be between 1 and 6 views"),
    (["predict", "--model", "EXPORT", "IMAGE", "--tta", "2", "--explain", "OUT"], "--explain and --tta"),
    (["predict", "--model", "EXPORT", "IMAGE", "--explain", "IMAGE/heatmaps"], "as --explain: Not a directory"),
    (["predict", "--model", "MULTI_LABEL_EXPORT", "IMAGE", "--reject-below", "0.5"], "this export is multi-label"),
    (["predict", "--model", "MULTI_LABEL_EXPORT", "IMAGE", "--explain", "OUT"], "no 'serving_explain' signature"),
    (["export", "--run", "RUN", "--out", "OUT", "--tta", "100"], "--tta must be between 1 and 6 views"),
    (["export", "--run", "RUN", "--out", "OUT", "--quantize", "int8"], "add --format litert"),
    (["export", "--run", "RUN", "--out", "OUT", "--version", str(2**70)], "--version"),
    (["serve", "--model", "EXPORT", "--batch-timeout-ms", "nan"], "--batch-timeout-ms"),
    (["serve", "--model", "EXPORT", "--max-body-mb", "inf"], "--max-body-mb"),
    (["serve", "--model", "EXPORT", "--max-batch", str(2**70)], "--max-batch"),
    (["sample-data", "OUT", "--per-class", str(10**12)], "--per-class"),
    (["demo", "--out", "OUT", "--head-epochs", str(10**12)], "--head-epochs"),
    (["train", "lenet", "--images", "IMAGES", "--out", "OUT", "--max-image-pixels", str(2**70)], "--max-image-pixels"),
])
def test_the_options_of_every_command_are_checked_before_tensorflow_starts(
        tmp_path, hostile_run, hostile_export, tensorflow_refused, arguments, refusal):
    """Out of range, not a number, or not for this run or export: one line at once, nothing written."""
    places = {"RUN": hostile_run["run"], "EXPORT": hostile_export, "OUT": tmp_path / "out",
              "IMAGES": hostile_run["images"], "IMAGE": next((hostile_run["images"] / HOSTILE_LABELS[1]).glob("*.png"))}
    if "MULTI_LABEL_EXPORT" in arguments:
        places["MULTI_LABEL_EXPORT"] = answer_export(hostile_export, tmp_path, multi_label=True, thresholds={
            label: 0.5 for label in HOSTILE_LABELS}, explain={"signature": None, "reason": "multi-label"})
    before = sorted(path.name for path in hostile_run["run"].iterdir())
    result = invoke(*[str(places[argument]) if argument in places else argument.replace(
        "IMAGE/", f"{places['IMAGE']}/") for argument in arguments])
    assert result.exit_code == 2, result.output[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("kcnn: error: ") and refusal in last, last
    assert not (tmp_path / "out").exists()
    assert sorted(path.name for path in hostile_run["run"].iterdir()) == before


# --------------------------------------------------------------------------- decompression bombs


def test_training_refuses_a_decompression_bomb_before_decoding_it(tmp_path, hostile_run):
    images = tmp_path / "images"
    shutil.copytree(hostile_run["images"], images, ignore=shutil.ignore_patterns("unreadable.png"))
    write_bomb(images / HOSTILE_LABELS[2] / "bomb.png")
    result = invoke("train", "lenet", "--images", images, "--epochs", "1", "--out", tmp_path / "run")
    assert result.exit_code == 2, result.output[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert "bomb.png (the image has 100,000,000 pixels, over the limit of 89,478,485 (--max-image-pixels))" in last
    assert "--skip-bad-images" in last and len(last) <= 300

    # A larger limit lets it through to the decoder; 0 turns the limit off (here: a test of the option).
    from keras_cnn.data.files import find_bad_images

    assert find_bad_images(images / HOSTILE_LABELS[2], ["bomb.png"], progress=False,
                           max_pixels=BOMB_SIDE**2) == []


def test_a_pipeline_stops_at_a_bomb_before_decoding_it(tmp_path):
    """What every pipeline does when an image over the limit comes after the check (the int8 calibration)."""
    import tensorflow as tf

    from keras_cnn.data.pipeline import make_dataset

    write_bomb(tmp_path / "bomb.png")
    (tmp_path / "split.csv").write_text("objectId,value,type\nbomb.png,a,train\n")
    dataset = make_dataset(tmp_path / "split.csv", tmp_path, "train", 32, 1, cache=False)
    with pytest.raises(tf.errors.InvalidArgumentError, match="over the limit of 89,478,485 pixels"):
        next(iter(dataset))


def test_evaluate_refuses_an_image_put_in_over_the_limit(hostile_run):
    run = hostile_run["run"]
    with open(run / "split.csv", newline="") as handle:
        test_row = next(row for row in csv.DictReader(handle) if row["type"] == "test")
    path = hostile_run["images"] / test_row["objectId"]
    original = path.read_bytes()
    try:
        write_bomb(path)
        changed = invoke("evaluate", "--run", run)
        # Accepted as a change of the inputs, the file is still a bomb: refused from its header.
        result = invoke("evaluate", "--run", run, "--accept-input-changes")
    finally:
        path.write_bytes(original)
        _accept_inputs_as_they_are(run)   # the other tests use this run with its image put back
    assert changed.exit_code == 2 and "1 image changed" in changed.stderr, changed.output[-2000:]
    assert result.exit_code == 2, result.output[-2000:]
    assert f"{test_row['objectId']} (the image has 100,000,000 pixels" in result.stderr
    assert not (run / "eval" / "predictions.csv").exists()


def _accept_inputs_as_they_are(run) -> None:
    from keras_cnn.config import RunConfig
    from keras_cnn.run_data import check_run_inputs
    from keras_cnn.runs import RunDirectory

    directory = RunDirectory(run)
    check_run_inputs(directory, RunConfig.from_dict(directory.read_config()), accept=True, command="the test")


# --------------------------------------------------------------------------- the run on hostile names


def test_skip_bad_images_leaves_out_a_file_that_cannot_be_read(hostile_run):
    result = hostile_run["result"]
    assert result.exit_code == 0, result.output[-3000:]
    name = f"{HOSTILE_LABELS[0]}/unreadable.png"
    assert f"kcnn: warning: leaving out 1 image file(s) that cannot be read: {name} (unreadable (Permission denied))" \
        in result.stderr
    split = (hostile_run["run"] / "split.csv").read_text()
    assert "unreadable.png" not in split and "damaged.jpg" in split   # a damaged JPEG that decodes is kept


def test_no_native_line_reaches_stderr_under_quiet(hostile_run):
    """libjpeg warned about damaged.jpg while kcnn checked and trained on it: not one line of it shows."""
    assert "Corrupt JPEG data" not in hostile_run["native"]
    assert stderr_problems(hostile_run["native"] + hostile_run["result"].stderr) == []


def test_quantizing_and_explaining_print_no_native_line_under_quiet(tmp_path, hostile_run, hostile_export):
    """The LiteRT converter reports its settings ("fully_quantize: 0, ..."), libjpeg warns while the
    heat map's graph decodes the damaged JPEG: neither reaches stderr."""
    captured = tmp_path / "native-stderr.txt"
    damaged = hostile_run["images"] / HOSTILE_LABELS[1] / "damaged.jpg"
    with native_stderr_into(captured):
        exported = invoke("export", "--run", hostile_run["run"], "--out", tmp_path / "export", "--format", "litert",
                          "--quantize", "dynamic", "--no-verify", "-q")
        explained = invoke("predict", "--model", hostile_export, damaged, "--explain", tmp_path / "heatmaps", "-q")
    for result in (exported, explained):
        assert result.exit_code == 0, result.output[-3000:]
    native = captured.read_text(errors="replace")
    assert "fully_quantize" not in native and "Corrupt JPEG data" not in native
    assert stderr_problems(native + exported.stderr + explained.stderr) == []
    assert (tmp_path / "export" / "1" / "model_dynamic.tflite").is_file()
    assert (tmp_path / "heatmaps" / "damaged.heatmap.png").is_file()


def test_the_native_filter_drops_the_noise_and_passes_every_other_line(tmp_path):
    """Lines written to fd 2 by native code (here os.write), as the LiteRT converter and absl write them."""
    from keras_cnn.library_chatter import native_noise_filtered

    captured = tmp_path / "stderr.txt"
    with native_stderr_into(captured):
        with native_noise_filtered():
            os.write(2, b"fully_quantize: 0, inference_type: 6, input_inference_type: FLOAT32, "
                        b"output_inference_type: FLOAT32\n")
            os.write(2, b"I0000 00:00:1796314324.161102   16366 port.cc:153] oneDNN custom operations are on.\n")
            os.write(2, b"F0000 00:00:1796314324.161102   16366 kernel.cc:12] Check failed: the real reason\n")
            os.write(2, b"Corrupt JPEG data: 1 extraneous bytes before marker 0xd9\nno newline at the end")
    assert captured.read_text() == ("F0000 00:00:1796314324.161102   16366 kernel.cc:12] Check failed: the real reason\n"
                                    "no newline at the end")


def test_predictions_csv_escapes_cells_a_spreadsheet_would_run(hostile_run):
    run = hostile_run["run"]
    result = invoke("evaluate", "--run", run)
    assert result.exit_code == 0, result.output[-3000:]
    with open(run / "eval" / "predictions.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    labels = (run / "labels.txt").read_text(encoding="utf-8").splitlines()
    assert sorted(labels) == sorted(HOSTILE_LABELS)
    header, body = rows[0], rows[1:]
    assert header[:4] == ["objectId", "true", "predicted", "confidence"]
    assert header[4:] == ["'" + label for label in labels]
    for row in body:
        assert not row[0].startswith(("=", "+", "-", "@"))
        assert row[1].startswith("'") and unescape_cell(row[1]) in labels
        assert row[2].startswith("'") and unescape_cell(row[2]) in labels
        assert unescape_cell(row[0]).split("/")[0] == unescape_cell(row[1])
        assert 0.0 <= float(row[3]) <= 1.0 and all(0.0 <= float(value) <= 1.0 for value in row[4:])


def test_the_other_csv_files_for_people_escape_their_cells_too(tmp_path):
    """A multi-label run's predictions.csv and the list of changed inputs name labels and files."""
    from keras_cnn.data.input_record import Change, write_change_list
    from keras_cnn.multilabel_evaluation import predictions_csv

    labels = ["@SUM(A1)", "=cmd", "plain"]
    text = predictions_csv(["=a.png", "-b.png"], np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]),
                           np.array([[0.9, 0.2, 0.7], [0.1, 0.8, -0.0]]), np.array([0.5, 0.5, 0.5]), labels)
    header, *rows = list(csv.reader(io.StringIO(text)))
    assert header == ["objectId", "true", "predicted", "'@SUM(A1)", "'=cmd", "plain"]
    assert rows[0][:3] == ["'=a.png", "'@SUM(A1);=cmd", "'@SUM(A1);plain"]
    assert rows[1][:3] == ["'-b.png", "plain", "'=cmd"] and rows[1][5] in ("-0", "0")   # a number stays one

    path = write_change_list(tmp_path / "input_changes.csv", [Change("=HYPERLINK(1).png", "changed", "+x")])
    assert path.read_text() == "objectId,change,detail\n'=HYPERLINK(1).png,changed,'+x\n"


# --------------------------------------------------------------------------- fine-tuning and predict


def test_finetune_names_no_option_it_does_not_take(tmp_path, sample_data_dir, sample_split):
    from conftest import train_tiny_hub_head

    images = tmp_path / "images"
    shutil.copytree(sample_data_dir, images)
    with open(sample_split, newline="") as handle:
        rows = list(csv.DictReader(handle))
    split = tmp_path / "split.csv"
    kept = [row for label in sorted({row["value"] for row in rows})
            for row in [row for row in rows if row["value"] == label][::4]]
    with open(split, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(kept)
    run = train_tiny_hub_head(tmp_path, split, images)
    damaged = images / next(row["objectId"] for row in kept if row["type"] == "train")
    damaged.write_bytes(damaged.read_bytes()[:40])
    # A damaged image is a changed input: accepted so, fine-tuning meets it as a bad image.
    result = invoke("finetune", "--run", run, "--epochs", "1", "--trust-hub", "--accept-input-changes")
    assert result.exit_code == 2, result.output[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert damaged.name in last and "put back the images it was trained on" in last
    assert "--skip-bad-images" not in last


@pytest.fixture(scope="module")
def hostile_export(hostile_run, tmp_path_factory):
    from keras_cnn.export import export_run

    out = tmp_path_factory.mktemp("hostile_export") / "export"
    export_run(hostile_run["run"], out, verify=False)
    return out


def test_predict_refuses_a_bomb_and_a_named_pipe_and_classifies_the_rest(tmp_path, hostile_run, hostile_export):
    good = next((hostile_run["images"] / HOSTILE_LABELS[1]).glob("*.png"))
    bomb = write_bomb(tmp_path / "bomb.png")
    with fifo_that_ends(tmp_path / "pipe.png") as fifo:
        result = invoke("predict", "--model", hostile_export, good, bomb, fifo, "--json")
    assert result.exit_code == 1, result.output[-2000:]
    outcome = json.loads(result.stdout)
    assert [prediction["path"] for prediction in outcome["predictions"]] == [str(good)]
    reasons = {failure["path"]: failure["reason"] for failure in outcome["failures"]}
    assert reasons == {str(bomb): "the image has 100,000,000 pixels, over the limit of 89,478,485",
                       str(fifo): "not a regular file (a named pipe, socket or device); not read"}
