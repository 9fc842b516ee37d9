"""The collection reader: every layout through ``kcnn split``, content keys, duplicates,
pre-split trees, the wrong-folder message, label checks, and the split a run makes itself."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from keras_cnn.cli import cli
from keras_cnn.config import DataConfig
from keras_cnn.data.collection import detect_layout, read_collection, split_collection, split_into_run
from keras_cnn.data.files import refuse_emptied_groups
from keras_cnn.data.split import assign_parts, read_split_csv, split_keys
from keras_cnn.errors import UserError


def png_bytes(seed: int, size: int = 8) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_tree(root: Path, per_label: dict[str, int], first_seed: int = 0) -> dict[str, str]:
    """root/<label>/img_<n>.png (every third one in a sub-folder); returns relative path -> label."""
    written, seed = {}, first_seed
    for label, count in per_label.items():
        for index in range(count):
            relative = f"{label}/{'deep/' if index % 3 == 0 else ''}img_{index:03d}.png"
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            (root / relative).write_bytes(png_bytes(seed))
            written[relative] = label
            seed += 1
    return written


def write_label_csv_tree(folder: Path, per_label: dict[str, int]) -> tuple[Path, dict[str, str], Path]:
    """Images under ``folder/images`` and ``folder/labels.csv`` naming them by relative path."""
    images = folder / "images"
    written = write_tree(images, per_label)
    label_csv = folder / "labels.csv"
    label_csv.write_text("objectId,value\n" + "".join(f"{path},{label}\n" for path, label in written.items()))
    return images, written, label_csv


def sha1_of(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def invoke(*args: str):
    return CliRunner().invoke(cli, ["split", *args])


def expected_parts(frame: pd.DataFrame) -> list[str]:
    """The seed-004 rule on content keys, unbalanced."""
    keys = split_keys(frame["sha1"])
    return assign_parts(keys, frame["value"].to_numpy(), range(0, 25), range(25, 50), balance=False).tolist()


# ------------------------------------------------------------------ layouts through the CLI

def test_class_folders_end_to_end(tmp_path):
    tree = tmp_path / "photos"
    written = write_tree(tree, {"cat": 40, "dog": 40})
    (tree / "README.txt").write_text("not an image")
    (tree / "cat" / ".DS_Store").write_bytes(b"x")
    (tree / "dog" / "notes.txt").write_text("x")
    output = tmp_path / "split.csv"

    result = invoke(str(tree), "-o", str(output), "--no-balance", "--json")

    assert result.exit_code == 0, result.output
    assert "found class folders in" in result.stderr
    assert "left out: 1 outside a label folder, 1 hidden, 1 not images" in result.stderr
    assert json.loads(result.stdout)["layout"] == "folders"
    assert output.read_text().splitlines()[0] == "objectId,value,type,sha1"
    frame = read_split_csv(output)
    assert dict(zip(frame["objectId"], frame["value"])) == written
    assert all(sha1_of(tree / path) == digest for path, digest in zip(frame["objectId"], frame["sha1"]))
    assert frame["type"].tolist() == expected_parts(frame)


def test_label_csv_with_any_names_gets_the_part_of_its_sha1_name(tmp_path):
    """A file goes where the original split would have put it had it been named by its SHA-1."""
    images, written, label_csv = write_label_csv_tree(tmp_path, {"0": 50, "1": 50})
    named = tmp_path / "named"
    named.mkdir()
    sha_csv = tmp_path / "sha_label.csv"
    rows = []
    for path, label in written.items():
        digest = sha1_of(images / path)
        shutil.copy(images / path, named / f"{digest}.png")
        rows.append(f"{digest}.png,{label}\n")
    sha_csv.write_text("objectId,value\n" + "".join(rows))

    by_path = invoke(str(label_csv), "--images", str(images), "-o", str(tmp_path / "a.csv"))
    by_name = invoke(str(sha_csv), "-o", str(tmp_path / "b.csv"))

    assert by_path.exit_code == 0 and by_name.exit_code == 0, by_path.output + by_name.output
    assert "found a label CSV" in by_path.stderr
    a, b = read_split_csv(tmp_path / "a.csv"), read_split_csv(tmp_path / "b.csv")
    assert a["type"].tolist() == b["type"].tolist()
    assert "sha1" not in b.columns  # SHA-1 names: the original split's own columns
    assert [name.split(".")[0] for name in b["objectId"]] == a["sha1"].tolist()


def test_a_folder_holding_label_csv_is_read_as_a_label_csv(tmp_path):
    write_tree(tmp_path / "data", {"a": 5, "b": 5})
    (tmp_path / "data" / "label.csv").write_text("objectId,value\na/img_001.png,x\nb/img_001.png,y\n")
    assert detect_layout(tmp_path / "data") == "csv"
    collection = read_collection(tmp_path / "data")
    assert collection.table["value"].tolist() == ["x", "y"]
    assert collection.images == str(tmp_path / "data")


def test_a_renamed_or_moved_file_keeps_its_part(tmp_path):
    tree = tmp_path / "tree"
    write_tree(tree, {"a": 60, "b": 60})
    first = split_collection(read_collection(tree))
    before = dict(zip(first["sha1"], first["type"]))
    moved = tree / "a" / "img_001.png"
    (tree / "a" / "elsewhere").mkdir()
    moved.rename(tree / "a" / "elsewhere" / "renamed.png")
    (tree / "b" / "img_002.png").rename(tree / "b" / "zzz_last.png")

    second = split_collection(read_collection(tree))

    assert dict(zip(second["sha1"], second["type"])) == before
    assert "a/elsewhere/renamed.png" in set(second["objectId"])


def test_identical_images_under_two_labels_are_refused_naming_both(tmp_path):
    tree = tmp_path / "tree"
    write_tree(tree, {"cat": 6, "dog": 6})
    shutil.copy(tree / "cat" / "img_001.png", tree / "dog" / "copy.png")
    output = tmp_path / "split.csv"

    result = invoke(str(tree), "-o", str(output))

    assert result.exit_code == 2
    line = result.stderr.strip()
    assert "\n" not in line and len(line) <= 300
    assert "cat/img_001.png (cat)" in line and "dog/copy.png (dog)" in line
    assert not output.exists()


def test_identical_images_under_one_label_are_kept_once_with_a_warning(tmp_path):
    tree = tmp_path / "tree"
    write_tree(tree, {"cat": 6, "dog": 6})
    for index in range(7):
        shutil.copy(tree / "cat" / "img_001.png", tree / "cat" / f"copy_{index}.png")
    output = tmp_path / "split.csv"

    result = invoke(str(tree), "-o", str(output))

    assert result.exit_code == 0, result.output
    warning = next(line for line in result.stderr.splitlines() if "copies of an image" in line)
    assert len(warning.removeprefix("kcnn: warning: ")) <= 300 and "more (full list:" in warning
    copies = {f"cat/copy_{index}.png" for index in range(7)} | {"cat/img_001.png"}
    listed = Path(f"{output}.duplicates.txt").read_text().split()
    frame = read_split_csv(output)
    assert len(listed) == 7 and set(listed) < copies
    assert len(frame) == 12 and frame["sha1"].is_unique
    assert set(frame["objectId"]) & copies == copies - set(listed)  # the first (in path order) is kept


def test_a_pre_split_tree_is_honoured(tmp_path):
    root = tmp_path / "tree"
    parts = {"train": 0, "val": 100, "test": 200}
    for folder, seed in parts.items():
        write_tree(root / folder, {"a": 4, "b": 4}, first_seed=seed)
    output = tmp_path / "split.csv"

    result = invoke(str(root), "-o", str(output), "--json")

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["layout"] == "split-folders"
    frame = read_split_csv(output)
    top = frame["objectId"].str.split("/").str[0].map({"train": "train", "val": "validation", "test": "test"})
    assert frame["type"].tolist() == top.tolist()
    assert set(frame["value"]) == {"a", "b"}
    # --layout forces another reading: the part folders become labels.
    forced = read_collection(root, layout="folders")
    assert set(forced.table["value"]) == {"train", "val", "test"}


def test_a_tree_with_only_train_draws_validation_and_test_by_the_rule(tmp_path):
    root = tmp_path / "tree"
    write_tree(root / "train", {"a": 60, "b": 60})
    collection = read_collection(root)
    assert collection.layout == "split-folders"
    assert "validation and test drawn from train" in collection.describe()
    frame = split_collection(collection, balance=False)
    assert frame["type"].tolist() == expected_parts(frame)
    assert {"train", "validation", "test"} <= set(frame["type"])


# ------------------------------------------------------------------ messages

def test_the_wrong_folder_is_one_short_line_with_the_full_list_in_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # paths as a user types them
    tmp_path = Path(".")
    images, written, label_csv = write_label_csv_tree(tmp_path, {"a": 30, "b": 30})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(images / "a" / "img_001.png", elsewhere / "stray.png")
    output = tmp_path / "split.csv"

    result = invoke(str(label_csv), "--images", str(elsewhere), "-o", str(output))

    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and len(lines[0]) <= 300, lines
    assert "only 0 of the 60 files named by" in lines[0] and "is --images the folder" in lines[0]
    assert "and 55 more (full list:" in lines[0]
    assert sorted(Path(f"{output}.missing.txt").read_text().split()) == sorted(written)
    assert not output.exists()


def test_balancing_that_shrinks_a_part_names_the_options(tmp_path):
    tree = tmp_path / "tree"
    write_tree(tree, {"big": 300, "small": 12})
    result = invoke(str(tree), "-o", str(tmp_path / "split.csv"), "--json")
    assert result.exit_code == 0, result.output
    warnings = json.loads(result.stdout)["warnings"]
    shrunk = [warning for warning in warnings if warning.startswith("balancing kept")]
    assert shrunk and "--no-balance" in shrunk[0] and "--test-keys" in " ".join(shrunk)


def test_an_empty_folder_says_what_it_expected(tmp_path):
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    (tmp_path / "empty" / "cat" / "notes.txt").write_text("x")
    result = invoke(str(tmp_path / "empty"), "-o", str(tmp_path / "split.csv"))
    assert result.exit_code == 2
    assert "no images found in" in result.stderr and "1 not images" in result.stderr


# ------------------------------------------------------------------ labels

@pytest.mark.parametrize("label, message", [
    ("two\nlines", "control character"),
    ("tab\there", "control character"),
    ("nan", "looks like missing data; if it is a real class, pass --allow-label nan"),
    ("None", "--allow-label None"),
    ("NULL", "--allow-label NULL"),
    ("NA", "--allow-label NA"),
])
def test_unusable_labels_are_refused(tmp_path, label, message):
    images = tmp_path / "images"
    write_tree(images, {"a": 2})
    label_csv = tmp_path / "labels.csv"
    quoted = '"' + label + '"'
    label_csv.write_text(f"objectId,value\na/img_001.png,{quoted}\na/img_002.png,b\n")
    result = invoke(str(label_csv), "--images", str(images), "-o", str(tmp_path / "split.csv"))
    assert result.exit_code == 2
    assert len(result.stderr.splitlines()) == 1 and message in result.stderr


def test_allow_label_accepts_a_missing_looking_label(tmp_path):
    tree = tmp_path / "tree"
    write_tree(tree, {"None": 3, "cat": 3})
    refused = invoke(str(tree), "-o", str(tmp_path / "split.csv"))
    assert refused.exit_code == 2 and "folder name 'None'" in refused.stderr
    accepted = invoke(str(tree), "-o", str(tmp_path / "split.csv"), "--allow-label", "None")
    assert accepted.exit_code == 0, accepted.output
    assert set(read_split_csv(tmp_path / "split.csv", allowed_labels=["None"])["value"]) == {"None", "cat"}
    with pytest.raises(UserError, match="--allow-label None"):
        read_split_csv(tmp_path / "split.csv")


# ------------------------------------------------------------------ --skip-bad-images

def test_skipping_bad_images_never_empties_a_label_in_a_part(tmp_path):
    frame = pd.DataFrame({"objectId": ["a1", "a2", "b1", "b2", "b3"], "value": ["a", "a", "b", "b", "b"],
                          "type": ["train", "test", "train", "test", "test"]})
    refuse_emptied_groups(frame, {"b2"})  # b keeps one test image
    with pytest.raises(UserError) as refused:
        refuse_emptied_groups(frame, {"a2", "b1"}, tmp_path)
    message = str(refused.value)
    assert "label 'a'" in message and "no test images" in message
    with pytest.raises(UserError, match="label 'b' with no train images"):
        refuse_emptied_groups(frame, {"b1"})


def test_skip_bad_images_in_training_data_refuses_an_emptied_label(tmp_path):
    from keras_cnn.train.stage_data import prepare_folder_data

    tree = tmp_path / "tree"
    write_tree(tree, {"a": 3, "b": 3})
    split = tmp_path / "split.csv"
    rows = [(f"{label}/{'deep/' if index % 3 == 0 else ''}img_{index:03d}.png", label, "train")
            for label in "ab" for index in range(3)]
    pd.DataFrame(rows, columns=["objectId", "value", "type"]).to_csv(split, index=False)
    for path, label, _ in rows:
        if label == "b":
            (tree / path).write_bytes(b"broken")
    data = DataConfig(split=str(split), images=str(tree), skip_bad_images=True)
    with pytest.raises(UserError, match="label 'b' with no train images"):
        prepare_folder_data(data, (8, 8), 3, 2, 0, skipped_record=tmp_path / "run" / "skipped_images.csv")


# ------------------------------------------------------------------ the split a run makes itself

def test_split_into_run_writes_once_and_honours_layout(tmp_path):
    root = tmp_path / "tree"
    write_tree(root / "train", {"a": 20, "b": 20})
    write_tree(root / "test", {"a": 4, "b": 4}, first_seed=500)
    run = tmp_path / "run"
    run.mkdir()
    data = split_into_run(DataConfig(images=str(root)), run)
    assert data.split == str(run / "split.csv") and data.images == str(root)
    frame = read_split_csv(data.split)
    assert set(frame.loc[frame["objectId"].str.startswith("test/"), "type"]) == {"test"}
    # Written once: a resumed run keeps its parts even if the folder changed.
    write_tree(root / "train", {"c": 5}, first_seed=900)
    assert read_split_csv(split_into_run(DataConfig(images=str(root)), run).split).equals(frame)
    # The layout option is not decoration: forced folders make the part folders labels.
    other = tmp_path / "other"
    other.mkdir()
    forced = read_split_csv(split_into_run(DataConfig(images=str(root), layout="folders"), other).split)
    assert set(forced["value"]) == {"train", "test"}
    with pytest.raises(UserError, match="--layout"):
        split_into_run(DataConfig(images=str(root), split=data.split, layout="folders"), other)


def test_train_from_class_folders_stores_the_split_and_evaluate_reuses_it(tmp_path):
    tree = tmp_path / "digits"
    write_tree(tree, {str(digit): 12 for digit in range(3)})
    run = tmp_path / "run"
    runner = CliRunner()
    trained = runner.invoke(cli, ["train", "lenet", "--images", str(tree), "--epochs", "1", "--batch-size", "8",
                                  "--layout", "folders", "--out", str(run), "--json"])
    assert trained.exit_code == 0, trained.output
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["split"] == str(run / "split.csv") and config["data"]["layout"] == "folders"
    split = read_split_csv(run / "split.csv")
    tested = int((split["type"] == "test").sum())
    write_tree(tree, {"3": 12}, first_seed=700)  # new images after training do not change the run's split...

    refused = runner.invoke(cli, ["evaluate", "--run", str(run), "--json"])
    assert refused.exit_code == 2 and "12 images added" in refused.stderr   # ...but are not passed over in silence
    evaluated = runner.invoke(cli, ["evaluate", "--run", str(run), "--json", "--accept-input-changes"])

    assert evaluated.exit_code == 0, evaluated.output
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["num_samples"] == tested


def test_content_sha1s_streams_large_files_and_marks_missing_ones(tmp_path):
    from keras_cnn.data.collection import content_sha1s

    sizes = {"empty.bin": 0, "small.png": 100, "exact.bin": 1 << 20, "large.bin": (5 << 19) + 7}
    for name, size in sizes.items():
        (tmp_path / name).write_bytes(np.random.default_rng(size).bytes(size))
    names = [*sizes, "absent.png"]
    expected = [sha1_of(tmp_path / name) for name in sizes] + [None]
    assert content_sha1s(tmp_path, names, workers=3) == expected


def test_a_run_split_honours_allow_labels(tmp_path):
    tree = tmp_path / "tree"
    write_tree(tree, {"None": 3, "cat": 3})
    (tmp_path / "refused").mkdir()
    with pytest.raises(UserError, match="--allow-label None"):
        split_into_run(DataConfig(images=str(tree)), tmp_path / "refused")
    (tmp_path / "run").mkdir()
    data = split_into_run(DataConfig(images=str(tree), allow_labels=["None"]), tmp_path / "run")
    assert set(read_split_csv(data.split, allowed_labels=data.allow_labels)["value"]) == {"None", "cat"}


def test_a_wrong_image_folder_is_named_even_when_skipping_bad_images(tmp_path):
    from keras_cnn.data.files import check_images_or_fail

    written = write_tree(tmp_path / "images", {"a": 4, "b": 4})
    (tmp_path / "other").mkdir()
    with pytest.raises(UserError) as raised:
        check_images_or_fail(tmp_path / "other", list(written), skip_bad=True,
                             record_path=tmp_path / "run" / "skipped_images.csv", progress=False)
    message = str(raised.value)
    assert message.startswith("only 0 of the 8 files named by the split are in") and "--skip-bad-images" not in message
    assert len(message) <= 300 and (tmp_path / "run" / "missing.txt").read_text().split() == list(written)


# ------------------------------------------------------------------ one label per class, nothing left out unsaid

CAFE_NFC, CAFE_NFD = "caf\u00e9", "cafe\u0301"


def test_two_folders_that_are_one_label_once_unicode_normalised_are_refused_naming_both(tmp_path):
    tree = tmp_path / "photos"
    write_tree(tree, {CAFE_NFC: 5, CAFE_NFD: 5, "tea": 5})
    output = tmp_path / "split.csv"
    result = invoke(str(tree), "-o", str(output))
    assert result.exit_code == 2 and not output.exists()
    line = result.stderr.strip()
    assert str(tree / CAFE_NFC) in line and str(tree / CAFE_NFD) in line
    assert "'caf\\xe9'" in line and "'cafe\\u0301'" in line and "NFC" in line


def test_labels_are_unicode_normalised_when_read(tmp_path):
    images, written, label_csv = write_label_csv_tree(tmp_path, {"tea": 10})
    tree = tmp_path / "photos"
    write_tree(tree, {CAFE_NFD: 10, "tea": 10}, first_seed=100)
    label_csv.write_text(label_csv.read_text().replace(",tea\n", f",{CAFE_NFD}\n", 3))
    for source, extra in ((tree, []), (label_csv, ["--images", str(images)])):
        output = tmp_path / "split.csv"
        assert invoke(str(source), *extra, "-o", str(output)).exit_code == 0
        with open(output, newline="", encoding="utf-8") as handle:
            written_labels = {row["value"] for row in csv.DictReader(handle)}
        assert written_labels == {CAFE_NFC, "tea"}


def test_labels_that_differ_only_in_case_are_kept_with_a_warning(tmp_path):
    tree = tmp_path / "letters"
    write_tree(tree, {"A": 5, "a": 5, "B": 5})
    output = tmp_path / "split.csv"
    result = invoke(str(tree), "-o", str(output), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["labels"] == ["A", "B", "a"]
    warning = next(line for line in result.stderr.splitlines() if "only in case" in line)
    assert "'A' and 'a'" in warning and "kept as separate classes" in warning


def test_an_empty_class_folder_is_named_in_a_warning(tmp_path):
    tree = tmp_path / "photos"
    write_tree(tree, {"cat": 5, "dog": 5})
    (tree / "bird").mkdir()
    (tree / "bird" / "notes.txt").write_text("no pictures yet")
    result = invoke(str(tree), "-o", str(tmp_path / "split.csv"), "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["labels"] == ["cat", "dog"]
    assert any("1 label folder(s)" in line and "bird" in line and "no class" in line
               for line in result.stderr.splitlines())


def test_linked_sub_folders_are_followed_and_a_link_that_loops_is_refused(tmp_path):
    tree = tmp_path / "photos"
    write_tree(tree, {"cat": 4, "dog": 4})
    elsewhere = tmp_path / "more_cats"
    write_tree(elsewhere, {"x": 3}, first_seed=50)
    (tree / "cat" / "linked").symlink_to(elsewhere / "x", target_is_directory=True)
    (tree / "dog" / "gone.png").symlink_to(tmp_path / "nothing.png")
    output = tmp_path / "split.csv"
    result = invoke(str(tree), "-o", str(output))
    assert result.exit_code == 0, result.output
    frame = read_split_csv(output)
    linked = frame[frame["objectId"].str.startswith("cat/linked/")]
    assert len(linked) == 3 and set(linked["value"]) == {"cat"}
    assert "1 broken link" in result.stderr

    (tree / "dog" / "deep" / "back").symlink_to(tree / "dog", target_is_directory=True)
    looped = invoke(str(tree), "-o", str(tmp_path / "loop.csv"))
    assert looped.exit_code == 2 and str(tree / "dog" / "deep" / "back") in looped.stderr
    assert "loop" in looped.stderr and not (tmp_path / "loop.csv").exists()


def test_a_run_folder_inside_the_images_is_left_out_and_the_found_line_says_so(tmp_path):
    tree = tmp_path / "photos"
    write_tree(tree, {"cat": 5, "dog": 5})
    for run in (tree / "runs" / "first", tree / "cat" / "old_run"):
        run.mkdir(parents=True)
        (run / "state.json").write_text('{"format": 1, "stages": {}}')
        (run / "eval").mkdir()
        (run / "eval" / "misclassified.png").write_bytes(png_bytes(99))
    (tree / "runs" / "first" / "model.png").write_bytes(png_bytes(98))
    output = tmp_path / "split.csv"
    result = invoke(str(tree), "-o", str(output), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["labels"] == ["cat", "dog"]
    assert not read_split_csv(output)["objectId"].str.contains("run").any()
    found = next(line for line in result.stderr.splitlines() if line.startswith("found class folders"))
    assert "2 kcnn run folders" in found
