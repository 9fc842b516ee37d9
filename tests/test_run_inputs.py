"""A run's inputs verified and its labels one list: images or a split changed after the run recorded
them are refused by every command that reads them (or accepted and recorded), and a run's or an
export's two label lists must agree."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import stderr_problems, train_tiny_hub_head

from keras_cnn.cli import cli
from keras_cnn.config import DataConfig
from keras_cnn.errors import UserError


def check_inputs(*args, **kwargs):
    from keras_cnn.data.input_record import check_inputs as check

    return check(*args, **kwargs)


# The runs here have a TF Hub base (the cheapest model to train); loading one needs the user's consent.
LOADS_THE_RUN_MODEL = {"evaluate", "export", "finetune", "lr-find"}


def invoke(*args):
    arguments = [str(arg) for arg in args]
    if arguments[0] in LOADS_THE_RUN_MODEL and "--run" in arguments:
        arguments.append("--trust-hub")
    return CliRunner().invoke(cli, arguments)


def error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("kcnn: error")]
    assert len(lines) == 1, result.output[-3000:]
    return lines[0]


def split_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "split.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def write_split_rows(run: Path, rows: list[dict[str, str]]) -> None:
    with open(run / "split.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def image_of(workspace: Path, part: str, label: str | None = None, other_than: str | None = None) -> tuple[Path, str]:
    """A file of the run's ``part`` (with ``label``, or any label but ``other_than``) and its label."""
    for row in split_rows(workspace / "run"):
        if row["type"] == part and (label is None or row["value"] == label) and row["value"] != other_than:
            return workspace / "images" / row["objectId"], row["value"]
    raise AssertionError(f"no {part} image")


@pytest.fixture(scope="module")
def finished(tmp_path_factory, sample_data_dir):
    """Sample images, a finished stage-1 run that split them itself (RUN/split.csv), and its export."""
    from keras_cnn.export import export_run

    folder = tmp_path_factory.mktemp("inputs")
    shutil.copytree(sample_data_dir, folder / "images")
    run = train_tiny_hub_head(folder, None, folder / "images")
    export_run(run, folder / "export", trust_hub=True)
    return folder


@pytest.fixture
def workspace(finished, tmp_path) -> Path:
    """A copy of the module's folder whose run names the copied images (every stamp is new, the bytes are not)."""
    target = tmp_path / "copy"
    shutil.copytree(finished, target)
    config_path = target / "run" / "config.json"
    config = json.loads(config_path.read_text())
    # Only the data moves: the model still names the module it was built with (its recorded base).
    for key in ("images", "split"):
        config["data"][key] = config["data"][key].replace(str(finished), str(target))
    config_path.write_text(json.dumps(config, indent=2))
    return target


def run_data(run: Path) -> DataConfig:
    config = json.loads((run / "config.json").read_text())
    return DataConfig(split=config["data"]["split"], images=config["data"]["images"])


def replace_like_cp_p(source: Path, target: Path) -> None:
    """``cp -p source target``: another image's bytes, with the source's modification time."""
    shutil.copy2(source, target)


# --------------------------------------------------------------------------- images changed after the split

def test_evaluate_refuses_an_image_replaced_after_the_split_until_the_change_is_accepted(workspace):
    run = workspace / "run"
    cat, label = image_of(workspace, "test")
    dog, _ = image_of(workspace, "train", other_than=label)
    replace_like_cp_p(dog, cat)
    refused = invoke("evaluate", "--run", run)
    assert refused.exit_code == 2
    line = error_line(refused)
    assert "1 image changed" in line and cat.name in line and "--accept-input-changes" in line
    assert "input_changes.csv there" in line and not stderr_problems(refused.stderr)
    listed = (run / "input_changes.csv").read_text()
    assert cat.name in listed and "changed" in listed
    assert not (run / "eval").exists()

    accepted = invoke("evaluate", "--run", run, "--accept-input-changes", "--json")
    assert accepted.exit_code == 0, accepted.output[-3000:]
    assert "1 image changed" in accepted.stderr and "accepted and recorded" in accepted.stderr
    change = json.loads((run / "inputs.json").read_text())["changes"][-1]
    assert change["by"] == "kcnn evaluate --accept-input-changes" and change["counts"] == {"changed": 1}
    assert change["items"][0][:2] == [cat.name, "changed"]
    assert not check_inputs(run, run_data(run)).changes   # accepted once, not again


def test_finetune_refuses_a_changed_image_before_any_work(workspace):
    run = workspace / "run"
    image, label = image_of(workspace, "train")
    other, _ = image_of(workspace, "validation", other_than=label)
    replace_like_cp_p(other, image)
    history = (run / "history.csv").read_text()
    result = invoke("finetune", "--run", run, "--unfreeze-from", "all", "--epochs", 1)
    assert result.exit_code == 2 and image.name in error_line(result)
    assert "finetune" not in json.loads((run / "state.json").read_text())["stages"]
    assert (run / "history.csv").read_text() == history


def test_lr_find_of_a_run_refuses_a_changed_image(workspace):
    image, label = image_of(workspace, "train")
    other, _ = image_of(workspace, "train", other_than=label)
    replace_like_cp_p(other, image)
    out = workspace / "sweep" / "lr_find.png"
    result = invoke("lr-find", "--run", workspace / "run", "--steps", 10, "--out", out)
    assert result.exit_code == 2 and "1 image changed" in error_line(result)
    assert not out.exists()


@pytest.mark.parametrize("command", [
    ["calibrate"],
    ["export", "--out", "again", "--format", "litert", "--quantize", "int8"],
], ids=["calibrate", "export-quantize"])
def test_calibration_and_quantization_refuse_a_changed_image(workspace, command):
    run = workspace / "run"
    image, label = image_of(workspace, "validation")
    other, _ = image_of(workspace, "train", other_than=label)
    replace_like_cp_p(other, image)
    calibration = (run / "calibration.json").read_bytes()
    result = invoke(command[0], "--run", run, *[workspace / arg if arg == "again" else arg for arg in command[1:]])
    assert result.exit_code == 2, result.output[-3000:]
    line = error_line(result)
    assert "1 image changed" in line and image.name in line and "--accept-input-changes" in line
    assert image.name in (run / "input_changes.csv").read_text()   # the list outlives the refusal
    assert (run / "calibration.json").read_bytes() == calibration and not (workspace / "again").exists()


def test_resumed_training_refuses_a_changed_image_and_resumes_once_it_is_accepted(sample_data_dir, tmp_path,
                                                                                 monkeypatch):
    from keras_cnn.train import stage

    shutil.copytree(sample_data_dir, tmp_path / "images")
    run = tmp_path / "run"
    args = ["train", "lenet", "--images", tmp_path / "images", "--epochs", 2, "--batch-size", 32, "--out", run]

    class KilledAfterFirstEpoch(stage.NanGuard):   # the runner's last own callback: the epoch is committed
        def on_epoch_end(self, epoch, logs=None):
            super().on_epoch_end(epoch, logs)
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(stage, "NanGuard", KilledAfterFirstEpoch)
        assert invoke(*args).exit_code == 130
    image = tmp_path / "images" / split_rows(run)[0]["objectId"]
    other = next(path for path in (tmp_path / "images").glob("*.jpg") if path.read_bytes() != image.read_bytes())
    replace_like_cp_p(other, image)
    refused = invoke(*args)
    assert refused.exit_code == 2 and image.name in error_line(refused)
    assert "resuming" not in refused.stderr

    resumed = invoke(*args, "--accept-input-changes")
    assert resumed.exit_code == 0, resumed.output[-3000:]
    assert f"resuming {run} at epoch 2 of 2" in resumed.stderr
    change = json.loads((run / "inputs.json").read_text())["changes"][-1]
    assert change["by"] == "stage 'train' --accept-input-changes" and change["items"][0][0] == image.name


def test_an_edited_run_split_is_refused_naming_the_edits(workspace):
    run = workspace / "run"
    rows = split_rows(run)
    test_row = next(row for row in rows if row["type"] == "test")
    other_label = next(row["value"] for row in rows if row["value"] != test_row["value"])
    relabelled, test_row["value"] = test_row["objectId"], other_label
    train_row = next(row for row in rows if row["type"] == "train")
    moved, train_row["type"] = train_row["objectId"], "test"
    write_split_rows(run, rows)
    result = invoke("evaluate", "--run", run)
    assert result.exit_code == 2
    line = error_line(result)
    assert "1 split row relabelled" in line and "1 split row moved to another part" in line
    assert f"{run}: " in line and "(split.csv was edited)" in line
    listed = (run / "input_changes.csv").read_text()
    assert relabelled in listed and moved in listed and "train -> test" in listed


def test_an_image_added_to_the_folder_the_run_split_is_refused_until_accepted(workspace):
    run, images = workspace / "run", workspace / "images"
    source, label = image_of(workspace, "train")
    added = images / ("f" * 40 + ".jpg")
    shutil.copyfile(source, added)
    with open(images / "label.csv", "a") as handle:
        handle.write(f"{added.name},{label}\n")
    result = invoke("evaluate", "--run", run)
    assert result.exit_code == 2 and "1 image added" in error_line(result) and added.name in error_line(result)
    assert invoke("evaluate", "--run", run, "--accept-input-changes").exit_code == 0
    assert added.name in json.loads((run / "inputs.json").read_text())["not_used"]
    assert not check_inputs(run, run_data(run)).changes


def test_missing_and_excluded_images_are_left_out_once_accepted(workspace):
    run = workspace / "run"
    tests = [row["objectId"] for row in split_rows(run) if row["type"] == "test"]
    (workspace / "images" / tests[0]).unlink()
    result = invoke("evaluate", "--run", run, "--json")
    assert result.exit_code == 2 and "1 image missing" in error_line(result)
    accepted = invoke("evaluate", "--run", run, "--accept-input-changes", "--json")
    assert accepted.exit_code == 0, accepted.output[-3000:]
    assert json.loads(accepted.stdout)["num_samples"] == len(tests) - 1
    # What a data-cleaning tool's --exclude does: an accepted change, recorded, out of every part.
    from keras_cnn.data.input_record import leave_out

    leave_out(run, [tests[1]], by="kcnn doctor --exclude")
    from keras_cnn.config import RunConfig
    from keras_cnn.run_data import run_parts
    from keras_cnn.runs import RunDirectory

    config = RunConfig.from_dict(json.loads((run / "config.json").read_text()))
    assert run_parts(RunDirectory(run), config).size("test") == len(tests) - 2
    record = json.loads((run / "inputs.json").read_text())
    assert record["left_out"] == {tests[0]: "missing", tests[1]: "excluded"}
    assert record["changes"][-1]["by"] == "kcnn doctor --exclude"


def test_export_needs_no_images_but_quantization_says_it_reads_them(workspace):
    run = workspace / "run"
    shutil.rmtree(workspace / "images")
    exported = invoke("export", "--run", run, "--out", workspace / "again", "--json")
    assert exported.exit_code == 0, exported.output[-3000:]
    quantized = invoke("export", "--run", run, "--out", workspace / "again", "--version", 2, "--format", "litert",
                       "--quantize", "int8")
    assert quantized.exit_code == 2
    assert "--quantize reads the run's images" in error_line(quantized) and "export without --quantize" in \
        error_line(quantized)
    assert not (workspace / "again" / "2").exists()


# --------------------------------------------------------------------------- the record itself

def test_a_copied_run_hashes_its_images_once_and_keeps_their_new_stamps(workspace):
    data = run_data(workspace / "run")
    first = check_inputs(workspace / "run", data)
    assert first.refreshed == len(split_rows(workspace / "run")) and not first.changes
    assert check_inputs(workspace / "run", data).refreshed == 0


def small_run(tmp_path: Path) -> tuple[Path, DataConfig, list[Path]]:
    """Three tiny files named by their SHA-1 and a split naming them; an empty run folder."""
    import hashlib

    images = tmp_path / "images"
    images.mkdir()
    files = []
    for index in range(3):
        content = bytes([index]) * 100
        path = images / f"{hashlib.sha1(content).hexdigest()}.png"
        path.write_bytes(content)
        files.append(path)
    split = tmp_path / "split.csv"
    split.write_text("objectId,value,type\n" + "".join(f"{path.name},{index % 2},train\n"
                                                     for index, path in enumerate(files)))
    (tmp_path / "run").mkdir()
    return tmp_path / "run", DataConfig(split=str(split), images=str(images)), files


def test_new_bytes_of_the_same_size_and_modification_time_are_caught_by_the_change_time(tmp_path):
    run, data, files = small_run(tmp_path)
    check_inputs(run, data)
    status = files[1].stat()
    with open(files[1], "r+b") as handle:          # rewritten in place: same inode, same size
        handle.write(b"\xff" * 100)
    os.utime(files[1], ns=(status.st_atime_ns, status.st_mtime_ns))
    with pytest.raises(UserError, match="1 image changed"):
        check_inputs(run, data)
    os.utime(files[0], ns=(1, 1))                   # a new stamp alone is no change
    files[1].write_bytes(bytes([1]) * 100)          # the old bytes back
    assert check_inputs(run, data).refreshed == 2


def test_a_file_named_by_a_sha1_its_bytes_do_not_have_is_refused_when_the_run_is_first_recorded(tmp_path):
    run, data, files = small_run(tmp_path)
    files[2].write_bytes(b"edited after it was named")
    with pytest.raises(UserError, match="1 image whose SHA-1 is not the one its split gives"):
        check_inputs(run, data, list_path=tmp_path / "changes.csv")
    assert not (run / "inputs.json").exists() and files[2].name in (tmp_path / "changes.csv").read_text()
    assert check_inputs(run, data, accept=True).created


# --------------------------------------------------------------------------- one label list

def swap_first_two_lines(path: Path) -> None:
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join([lines[1], lines[0], *lines[2:]]))


def test_swapped_lines_in_a_runs_labels_are_refused_by_evaluate_and_export(workspace):
    run = workspace / "run"
    swap_first_two_lines(run / "labels.txt")
    for args in (["evaluate", "--run", run], ["export", "--run", run, "--out", workspace / "again"]):
        result = invoke(*args)
        assert result.exit_code == 2, result.output[-3000:]
        line = error_line(result)
        assert f"{run}: labels.txt and config.json disagree: the same labels in another order" in line
        assert line.endswith("or train the run again") or line.endswith("position in both lists)")   # not cut
    assert not (workspace / "again").exists() and not (run / "eval").exists()


@pytest.mark.parametrize("command", ["predict", "serve"])
def test_swapped_lines_in_an_exports_labels_are_refused_by_predict_and_serve(workspace, sample_data_dir, command):
    if command == "serve":
        pytest.importorskip("uvicorn", reason="kcnn serve needs the serve extra: pip install -e '.[serve]'")
    version = workspace / "export" / "1"
    swap_first_two_lines(version / "assets" / "labels.txt")
    arguments = [next(sample_data_dir.glob("*.jpg"))] if command == "predict" else ["--port", 0]
    result = invoke(command, "--model", workspace / "export", *arguments)   # serve refuses before it listens
    assert result.exit_code == 2
    line = error_line(result)
    assert f"{version}: assets/labels.txt and assets.extra/kcnn.json disagree" in line and "another order" in line
    assert "export the run again with kcnn export" in line


def test_what_exclude_and_relabel_changed_is_logged_as_accepted_changes_when_the_record_is_made(tmp_path):
    run, data, files = small_run(tmp_path)
    exclude, relabel = tmp_path / "exclude.txt", tmp_path / "relabel.csv"
    exclude.write_text(f"# from kcnn doctor\n{files[2].name}\n")
    relabel.write_text(f"objectId,value\n{files[1].name},z\n")
    # The split as the run writes it with those options: the excluded image out, the relabelled one relabelled.
    (tmp_path / "split.csv").write_text(f"objectId,value,type\n{files[0].name},0,train\n{files[1].name},z,train\n")
    data.exclude, data.relabel = str(exclude), str(relabel)
    assert not check_inputs(run, data).changes
    logged = {entry["by"]: entry["items"] for entry in json.loads((run / "inputs.json").read_text())["changes"]}
    assert logged == {f"--exclude {exclude}": [[files[2].name, "excluded", ""]],
                      f"--relabel {relabel}": [[files[1].name, "relabelled", "-> z"]]}


def test_a_multi_label_relabel_file_is_read_with_its_delimiter_when_the_record_is_made(tmp_path):
    run, data, files = small_run(tmp_path)
    relabel = tmp_path / "relabel.csv"
    # The whole new set of labels of each image: none for one, two for another.
    relabel.write_text(f"objectId,value\n{files[1].name},\n{files[0].name},b|a\n")
    (tmp_path / "split.csv").write_text(f"objectId,labels,type\n{files[0].name},a;b,train\n{files[1].name},,train\n"
                                        f"{files[2].name},b,test\n")
    data.multi_label, data.label_delimiter, data.relabel = True, "|", str(relabel)
    assert not check_inputs(run, data).changes
    logged = json.loads((run / "inputs.json").read_text())["changes"]
    assert logged[0]["by"] == f"--relabel {relabel}"
    assert sorted(logged[0]["items"]) == sorted([[files[1].name, "relabelled", "-> "],
                                                 [files[0].name, "relabelled", "-> a;b"]])
