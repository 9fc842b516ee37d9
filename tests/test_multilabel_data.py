"""Multi-label data and numbers: label cells, shared files across class folders, the unbalanced split,
its count table and warnings, the split CSV that records itself, refusals, metrics and thresholds."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from keras_cnn.cli import cli
from keras_cnn.config import DataConfig, ModelConfig, RunConfig, validate_config
from keras_cnn.data.collection import read_collection, split_to_file, with_recorded_task
from keras_cnn.data.multilabel import (canonical_cells, is_multi_label_split_csv, multi_hot,
                                       multi_label_split_warnings, read_split_table, split_cell)
from keras_cnn.data.split import DEFAULT_TEST_KEYS, DEFAULT_VALIDATION_KEYS, assign_parts, split_keys
from keras_cnn.errors import UserError
from keras_cnn.metrics import (average_precision, best_f1_thresholds, compute_multi_label_metrics, exact_match_ratio,
                               hamming_loss)


def write_image(path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture(scope="module")
def tagged(tmp_path_factory):
    """60 images and a label CSV whose cells join labels by '|' (some cells empty)."""
    root = tmp_path_factory.mktemp("tagged")
    generator = np.random.default_rng(5)
    lines = ["objectId,tags"]
    for index in range(60):
        write_image(root / "images" / f"{index:02d}.png", index)
        tags = [tag for tag in ("cat", "dog", "bird") if generator.random() < 0.45]
        lines.append(f"{index:02d}.png,{' | '.join(reversed(tags))}")
    (root / "tags.csv").write_text("\n".join(lines) + "\n")
    return root


def test_cells_split_strip_and_keep_one_of_each_label():
    assert split_cell(" b ;a;; b ") == ["b", "a"]
    assert split_cell("") == [] and split_cell("x", "|") == ["x"]
    assert canonical_cells(["dog|cat", "", "cat|cat"], "|") == ["cat;dog", "", "cat"]
    assert canonical_cells(["10;2", "2;1"]) == ["2;10", "1;2"]     # numeric class order
    assert multi_hot(["cat;dog", "", "dog"], ["cat", "dog"], "t").tolist() == [[1, 1], [0, 0], [0, 1]]
    with pytest.raises(UserError, match="'fox'"):
        multi_hot(["fox"], ["cat", "dog"], "t")


def test_a_label_csv_with_delimited_cells_splits_by_content_without_balancing(tagged):
    output = tagged / "split.csv"
    result = split_to_file(str(tagged / "tags.csv"), str(output), images=str(tagged / "images"),
                           label_column="tags", multi_label=True, label_delimiter="|")
    frame = pd.read_csv(output, dtype=str, keep_default_na=False)
    assert list(frame.columns) == ["objectId", "labels", "type", "sha1"]
    assert result["multi_label"] and result["labels"] == ["bird", "cat", "dog"]
    source = pd.read_csv(tagged / "tags.csv", dtype=str, keep_default_na=False)
    assert frame["labels"].tolist() == canonical_cells(source["tags"], "|")    # class order, joined by ';'
    # The content-hash rule, balancing off: every key decides its part.
    expected = assign_parts(split_keys(frame["sha1"]), frame["labels"].to_numpy(), DEFAULT_TEST_KEYS,
                            DEFAULT_VALIDATION_KEYS, balance=False)
    assert frame["type"].tolist() == expected.tolist()
    # Counts: images per label per part; sizes count each image once; empty cells are counted apart.
    targets = multi_hot(frame["labels"], result["labels"], "split")
    for part in ("train", "validation", "test"):
        in_part = (frame["type"] == part).to_numpy()
        assert result["counts"][part] == dict(zip(result["labels"], targets[in_part].sum(axis=0).astype(int)))
        assert result["sizes"][part] == in_part.sum()
        assert result["unlabelled"][part] == (frame.loc[in_part, "labels"] == "").sum()
    assert result["unlabelled"]["total"] > 0
    assert is_multi_label_split_csv(output)
    table, multi_label = read_split_table(output)
    assert multi_label and table["value"].tolist() == frame["labels"].tolist()


def test_the_split_command_prints_images_per_label_and_warns_about_labels_missing_from_a_part(tmp_path):
    for index in range(12):
        write_image(tmp_path / "images" / f"{index}.png", 100 + index)
    (tmp_path / "labels.csv").write_text("objectId,value\n" + "".join(
        f"{index}.png,{'a;b' if index % 2 else 'a'}\n" for index in range(12)))
    result = CliRunner().invoke(cli, ["split", str(tmp_path / "labels.csv"), "--images", str(tmp_path / "images"),
                                      "--multi-label", "--validation-keys", "none", "-o", str(tmp_path / "s.csv")])
    assert result.exit_code == 0, result.output
    header = result.stdout.splitlines()[0].split()
    assert header == ["part", "a", "b", "images"]
    assert "the validation part is empty" in result.stderr
    total = next(line for line in result.stdout.splitlines() if line.startswith("total")).split()
    assert total == ["total", "12", "6", "12"]


def test_labels_inside_cells_are_unicode_normalised_so_one_label_is_one_class(tmp_path):
    for index in range(8):
        write_image(tmp_path / "images" / f"{index}.png", 200 + index)
    # 'café' typed in two forms: composed (NFC) and 'e' with a combining accent (NFD).
    cells = ["caf\u00e9", "cafe\u0301;tea", "tea;cafe\u0301", "tea"] * 2
    (tmp_path / "labels.csv").write_text("objectId,value\n" + "".join(
        f"{index}.png,{cell}\n" for index, cell in enumerate(cells)), encoding="utf-8")
    result = CliRunner().invoke(cli, ["split", str(tmp_path / "labels.csv"), "--images", str(tmp_path / "images"),
                                      "--multi-label", "-o", str(tmp_path / "s.csv"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["labels"] == ["caf\u00e9", "tea"]
    written = pd.read_csv(tmp_path / "s.csv", dtype=str, keep_default_na=False)
    assert set(written["labels"]) == {"caf\u00e9", "caf\u00e9;tea", "tea"}
    # A split CSV written by hand (or by another tool) is read the same way.
    (tmp_path / "mine.csv").write_text("objectId,labels,type\n" + "".join(
        f"{index}.png,{cell},{'train' if index < 6 else 'test'}\n" for index, cell in enumerate(cells)), encoding="utf-8")
    assert set(read_split_table(tmp_path / "mine.csv")[0]["value"]) == {"caf\u00e9", "caf\u00e9;tea", "tea"}


def test_split_warnings_name_labels_without_validation_or_test_images():
    counts = {"train": {"a": 30, "b": 3}, "validation": {"a": 12, "b": 0}, "test": {"a": 11, "b": 2},
              "total": {"a": 53, "b": 5}}
    sizes = {"train": 31, "validation": 12, "test": 12, "total": 55}
    warnings = multi_label_split_warnings(counts, sizes)
    assert "label(s) 'b' have no image in the validation part (its threshold stays 0.5)" in warnings
    assert "label(s) 'b' have fewer than 10 images in the test part; their metrics will be noisy" in warnings
    assert len(warnings) == 2


def test_shared_files_across_class_folders_become_one_image_with_all_their_labels(tmp_path):
    tree = tmp_path / "tree"
    for index in range(6):
        write_image(tree / "a" / f"{index}.png", index)
    write_image(tree / "b" / "copy_of_0.png", 0)     # the picture of a/0.png
    write_image(tree / "b" / "own.png", 50)
    write_image(tree / "a" / "again_0.png", 0)       # a second copy under the same label
    with pytest.raises(UserError, match="--multi-label"):
        read_collection(tree)
    collection = read_collection(tree, multi_label=True)
    table = collection.table.set_index("objectId")["value"]
    assert table["a/0.png"] == "a;b" and table["b/own.png"] == "b" and table["a/3.png"] == "a"
    assert "b/copy_of_0.png" not in table and "a/again_0.png" not in table
    assert collection.merged == 2 and "copies under other labels merged" in collection.describe()
    assert any("a/0.png" in warning for warning in collection.warnings)


def test_a_split_csv_records_that_it_is_multi_label_and_a_plain_one_can_be_read_as_one(tagged, tmp_path):
    output = tmp_path / "split.csv"
    split_to_file(str(tagged / "tags.csv"), str(output), images=str(tagged / "images"), label_column="tags",
                  multi_label=True, label_delimiter="|")
    data = with_recorded_task(DataConfig(split=str(output), images=str(tagged / "images")))
    assert data.multi_label
    plain = tmp_path / "plain.csv"
    plain.write_text("objectId,value,type\n00.png,cat,train\n01.png,dog|cat,test\n")
    assert not with_recorded_task(DataConfig(split=str(plain))).multi_label
    frame, multi_label = read_split_table(plain, multi_label=True, delimiter="|")
    assert multi_label and frame["value"].tolist() == ["cat", "cat;dog"]


@pytest.mark.parametrize("cells, delimiter, message", [
    ("x.png,cat;nan\n", ";", "the label 'nan' of objectId 'x.png' looks like missing data"),
    ("x.png,a;b|c\n", "|", "the label 'a;b' of objectId 'x.png' contains ';'"),
])
def test_unusable_labels_inside_a_cell_are_refused_in_one_line(tmp_path, cells, delimiter, message):
    write_image(tmp_path / "images" / "x.png", 1)
    (tmp_path / "labels.csv").write_text("objectId,value\n" + cells)
    with pytest.raises(UserError, match=message):
        read_collection(tmp_path / "labels.csv", images=tmp_path / "images", multi_label=True, delimiter=delimiter)


def test_binary_or_a_dataset_with_multi_label_is_refused_before_any_work(tmp_path):
    with pytest.raises(UserError, match="--binary"):
        validate_config(RunConfig("transfer", ModelConfig(kind="transfer", name="vgg16", binary=True),
                                  DataConfig(images=str(tmp_path), multi_label=True)))
    with pytest.raises(UserError, match="--dataset"):
        validate_config(RunConfig("train", ModelConfig(name="lenet"), DataConfig(dataset="mnist", multi_label=True)))


def test_doctor_refuses_a_multi_label_split_csv_in_one_line(tagged, tmp_path):
    from keras_cnn.doctor.source import read_doctor_source

    output = tmp_path / "split.csv"
    split_to_file(str(tagged / "tags.csv"), str(output), images=str(tagged / "images"), label_column="tags",
                  multi_label=True, label_delimiter="|")
    with pytest.raises(UserError, match="multi-label split CSV"):
        read_doctor_source(str(output), images=str(tagged / "images"))


# --------------------------------------------------------------------------- metrics and thresholds


def test_average_precision_and_map_match_scikit_learn_ties_included():
    from sklearn.metrics import average_precision_score

    generator = np.random.default_rng(0)
    targets = (generator.random((200, 4)) < [0.5, 0.2, 0.05, 0.0]).astype(int)
    scores = np.round(np.clip(targets * 0.3 + generator.random((200, 4)), 0, 1), 1)   # rounding makes ties
    for label in range(3):
        assert average_precision(targets[:, label], scores[:, label]) == pytest.approx(
            average_precision_score(targets[:, label], scores[:, label]))
    assert average_precision(targets[:, 3], scores[:, 3]) is None   # no positive: undefined
    metrics = compute_multi_label_metrics(targets, scores, ["a", "b", "c", "d"])
    assert metrics["macro_map"] == pytest.approx(np.mean([average_precision_score(targets[:, label], scores[:, label])
                                                          for label in range(3)]))
    assert metrics["micro_map"] == pytest.approx(average_precision_score(targets.ravel(), scores.ravel()))
    assert metrics["per_label"]["d"]["ap"] is None
    json.dumps(metrics, allow_nan=False)


def test_thresholds_maximise_each_labels_f1_and_fall_back_to_one_half():
    from sklearn.metrics import f1_score

    generator = np.random.default_rng(1)
    targets = (generator.random((120, 3)) < [0.3, 0.6, 0.0]).astype(int)
    scores = np.clip(targets * 0.35 + generator.random((120, 3)) * 0.7, 0, 1)
    thresholds = best_f1_thresholds(targets, scores)
    for label in range(2):
        best = max(f1_score(targets[:, label], scores[:, label] >= cut) for cut in np.unique(scores[:, label]))
        assert f1_score(targets[:, label], scores[:, label] >= thresholds[label]) == pytest.approx(best)
    assert thresholds[2] == 0.5
    # Between the lowest admitted score and the next one down, not on an image's score.
    assert not np.isin(thresholds[:2], scores).any()


def test_multi_label_metrics_at_given_thresholds_by_hand():
    targets = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    scores = np.array([[0.9, 0.2, 0.4], [0.3, 0.8, 0.1], [0.6, 0.3, 0.7], [0.1, 0.1, 0.1]])
    metrics = compute_multi_label_metrics(targets, scores, ["x", "y", "z"], thresholds=[0.5, 0.5, 0.3])
    predicted = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 1], [0, 0, 0]])
    assert metrics["hamming_loss"] == hamming_loss(targets, predicted) == pytest.approx(2 / 12)
    assert metrics["exact_match"] == exact_match_ratio(targets, predicted) == 0.75
    assert metrics["per_label"]["y"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3),
                                         "ap": 1.0, "support": 2, "threshold": 0.5}
    assert metrics["micro_f1"] == pytest.approx(2 * 4 / (2 * 4 + 1 + 1))
    assert metrics["most_missed"] == [{"label": "y", "count": 1}]
    assert metrics["most_added"] == [{"label": "z", "count": 1}]
