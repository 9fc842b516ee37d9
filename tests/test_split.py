"""The SHA-1 split: equivalence with the original pandas split script, the N-label generalisation,
the readers/writers, and every refusal (through the Python API and ``kcnn split``)."""

from __future__ import annotations

import hashlib
import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from keras_cnn.cli import cli
from keras_cnn.data.split import (
    OBJECT_ID_PATTERN,
    class_names,
    format_counts,
    parse_key_range,
    read_label_csv,
    read_split_csv,
    split_counts,
    split_keys,
    split_labels,
    split_warnings,
    validate_object_ids,
    write_split_csv,
)
from keras_cnn.errors import UserError

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".JPG")


# --- the reference implementations -------------------------------------------------------------

def original_split(df: pd.DataFrame) -> pd.DataFrame:
    """The original pandas split script, verbatim except for reading/writing files and its prints."""
    value_0 = df["value"] == 0
    value_1 = df["value"] == 1
    df["type"] = "train"
    split_key = df["objectId"].apply(
        lambda object_id: int(re.sub("\\..+$", "", object_id)[-2:], 16)
    )
    df.loc[(split_key >= 0) & (split_key <= 24), "type"] = "test"
    df.loc[(split_key >= 25) & (split_key <= 49), "type"] = "validation"
    test_0 = (df["type"] == "test") & value_0
    test_1 = (df["type"] == "test") & value_1
    test_min = min(len(df[test_0]), len(df[test_1]))
    df.loc[df[test_0].index[test_min:], "type"] = "train"
    df.loc[df[test_1].index[test_min:], "type"] = "train"
    validation_0 = (df["type"] == "validation") & value_0
    validation_1 = (df["type"] == "validation") & value_1
    validation_min = min(len(df[validation_0]), len(df[validation_1]))
    df.loc[df[validation_0].index[validation_min:], "type"] = "train"
    df.loc[df[validation_1].index[validation_min:], "type"] = "train"
    return df


def plain_split(rows: list[tuple[str, str]], test_keys=range(0, 25), validation_keys=range(25, 50),
                balance=True) -> list[str]:
    """The N-label algorithm written as plainly as possible, one row at a time."""
    types = []
    for object_id, _ in rows:
        key = int(object_id.split(".")[0][-2:], 16)
        types.append("test" if key in test_keys else "validation" if key in validation_keys else "train")
    if balance:
        labels = sorted({value for _, value in rows})
        for part in ("test", "validation"):
            smallest = min(sum(1 for (_, value), kind in zip(rows, types) if kind == part and value == label)
                           for label in labels)
            kept = dict.fromkeys(labels, 0)
            for index, ((_, value), kind) in enumerate(zip(rows, types)):
                if kind == part:
                    kept[value] += 1
                    if kept[value] > smallest:
                        types[index] = "train"
    return types


def make_rows(count: int, labels: list[str], weights: list[float], seed: int) -> list[tuple[str, str]]:
    """Generated (objectId, value) rows: SHA-1 names with mixed extensions and hex case."""
    generator = random.Random(seed)
    rows = []
    for index in range(count):
        digest = hashlib.sha1(f"{seed}-{index}".encode()).hexdigest()
        if generator.random() < 0.2:
            digest = digest.upper()
        rows.append((digest + generator.choice(EXTENSIONS), generator.choices(labels, weights)[0]))
    return rows


def write_label_csv(path: Path, rows, header="objectId,value") -> Path:
    path.write_text(header + "\n" + "".join(f"{object_id},{value}\n" for object_id, value in rows))
    return path


def sha(index: int, extension: str = ".jpg") -> str:
    return hashlib.sha1(str(index).encode()).hexdigest() + extension


def invoke(*args: str):
    return CliRunner().invoke(cli, ["split", *args])


# --- equivalence ------------------------------------------------------------------------------

@pytest.mark.parametrize("seed, count, minority", [
    (1, 3000, 0.34),  # label 0 is the smaller group
    (2, 5000, 0.1),
    (3, 800, 0.02),   # label 0 has no test row: m = 0
    (4, 60, 0.5),     # label 1 is the smaller group in test
])
def test_cli_output_equals_the_original_script_byte_for_byte(tmp_path, seed, count, minority):
    rows = make_rows(count, ["0", "1"], [minority, 1 - minority], seed)
    label_csv = write_label_csv(tmp_path / "label.csv", rows)
    original_split(pd.read_csv(label_csv)).to_csv(tmp_path / "original.csv", index=False)

    result = invoke(str(label_csv), "-o", str(tmp_path / "split.csv"))

    assert result.exit_code == 0, result.output
    assert (tmp_path / "split.csv").read_bytes() == (tmp_path / "original.csv").read_bytes()


def test_original_equivalence_covers_the_interesting_cases():
    # The parametrised files above must exercise balancing in both directions and m = 0.
    moved_both_ways = make_rows(3000, ["0", "1"], [0.34, 0.66], 1)
    frame = pd.DataFrame(moved_both_ways, columns=["objectId", "value"])
    split = split_labels(frame)
    unbalanced = split_labels(frame, balance=False)
    assert (split["type"] != unbalanced["type"]).sum() > 0
    assert split_counts(split)["test"]["0"] == split_counts(split)["test"]["1"] > 0
    tiny = pd.DataFrame(make_rows(60, ["0", "1"], [0.5, 0.5], 4), columns=["objectId", "value"])
    assert sum(split_counts(split_labels(tiny))["test"].values()) < sum(
        split_counts(split_labels(tiny, balance=False))["test"].values())
    # 2 % minority: label 0 has no test row, so m = 0 and the whole test part moves to train.
    rare = pd.DataFrame(make_rows(800, ["0", "1"], [0.02, 0.98], 3), columns=["objectId", "value"])
    assert split_counts(split_labels(rare, balance=False))["test"]["1"] > 0
    assert sum(split_counts(split_labels(rare))["test"].values()) == 0


@pytest.mark.parametrize("seed", [5, 6])
def test_function_equals_the_original_script_on_binary_frames(seed):
    rows = make_rows(2000, ["0", "1"], [0.3, 0.7], seed)
    frame = pd.DataFrame(rows, columns=["objectId", "value"])
    expected = original_split(pd.DataFrame({"objectId": frame["objectId"], "value": frame["value"].astype(int)}))
    assert split_labels(frame)["type"].tolist() == expected["type"].tolist()


@pytest.mark.parametrize("labels, weights", [
    (["0", "1", "2"], [0.6, 0.3, 0.1]),
    (["cat", "dog", "bird", "fish", "frog"], [0.4, 0.3, 0.15, 0.1, 0.05]),
    (["2", "10", "1"], [0.1, 0.1, 0.8]),
])
def test_multi_label_split_matches_the_plain_algorithm(labels, weights):
    rows = make_rows(4000, labels, weights, seed=len(labels))
    frame = pd.DataFrame(rows, columns=["objectId", "value"])
    split = split_labels(frame)
    assert split["type"].tolist() == plain_split(rows)
    counts = split_counts(split)
    for part in ("test", "validation"):
        assert len(set(counts[part].values())) == 1  # balanced
        assert counts[part][labels[-1]] > 0


def test_a_label_missing_from_a_part_empties_that_part_and_is_explained():
    rows = make_rows(1500, ["0", "1"], [0.5, 0.5], seed=9)
    # A third label whose only rows have train keys (ff): no test or validation row.
    rows += [(hashlib.sha1(f"rare{index}".encode()).hexdigest()[:38] + "ff.png", "2") for index in range(3)]
    frame = pd.DataFrame(rows, columns=["objectId", "value"])
    split = split_labels(frame)
    assert split["type"].tolist() == plain_split(rows)
    counts = split_counts(split)
    assert sum(counts["test"].values()) == sum(counts["validation"].values()) == 0
    warnings = split_warnings(counts, split_counts(split_labels(frame, balance=False)))
    assert any("test part is empty" in warning and "'2'" in warning and "--no-balance" in warning
               for warning in warnings)


def test_no_balance_and_custom_key_ranges():
    rows = make_rows(2000, ["a", "b"], [0.2, 0.8], seed=11)
    frame = pd.DataFrame(rows, columns=["objectId", "value"])
    keys = split_keys(frame["objectId"])
    split = split_labels(frame, test_keys=range(0, 10), validation_keys=range(200, 256), balance=False)
    expected = ["test" if key < 10 else "validation" if key >= 200 else "train" for key in keys]
    assert split["type"].tolist() == expected
    assert split["type"].tolist() == plain_split(rows, range(0, 10), range(200, 256), balance=False)
    no_test = split_labels(frame, test_keys=parse_key_range("none"))
    assert "test" not in set(no_test["type"])


def test_split_keeps_order_index_and_extra_columns():
    rows = make_rows(1000, ["x", "y"], [0.4, 0.6], seed=12)
    frame = pd.DataFrame(rows, columns=["objectId", "value"])
    frame["note"] = range(len(frame))
    odd = frame.set_axis([f"row{index * 7 % 1000}" for index in range(len(frame))])
    split = split_labels(odd)
    assert split.index.tolist() == odd.index.tolist()
    assert split["objectId"].tolist() == odd["objectId"].tolist()
    assert split["note"].tolist() == odd["note"].tolist()
    assert split["type"].tolist() == split_labels(frame)["type"].tolist()
    assert "type" not in odd.columns  # the input is not modified
    repeated = frame.set_axis([index % 3 for index in range(len(frame))])
    assert split_labels(repeated)["type"].tolist() == split_labels(frame)["type"].tolist()


def test_split_labels_normalises_values_to_stripped_strings():
    frame = pd.DataFrame({"objectId": [sha(1), " " + sha(2) + " "], "value": [1, " 0 "]})
    split = split_labels(frame, balance=False)
    assert split["objectId"].tolist() == [sha(1), sha(2)]
    assert split["value"].tolist() == ["1", "0"]


def test_split_keys_use_the_name_before_the_first_dot():
    assert split_keys(pd.Series(["0" * 38 + "1a.jpg", "F" * 40 + ".JPEG", "0" * 40 + ".png"])).tolist() == [
        0x1A, 0xFF, 0]


# --- files ------------------------------------------------------------------------------------

def test_read_label_csv_custom_columns_bom_blank_lines_and_whitespace(tmp_path):
    path = tmp_path / "labels.csv"
    text = "\ufeffname, label ,extra\n" f"{sha(1)}, cat ,x\n\n" f"{sha(2)},dog,y\n"
    path.write_bytes(text.encode("utf-8"))
    frame = read_label_csv(path, id_column="name", label_column="label")
    assert frame.columns.tolist() == ["objectId", "value"]
    assert frame.values.tolist() == [[sha(1), "cat"], [sha(2), "dog"]]


def test_blank_lines_do_not_shift_row_numbers(tmp_path):
    path = tmp_path / "label.csv"
    path.write_text(f"objectId,value\n{sha(1)},0\n\n\n{sha(2)},\n")
    with pytest.raises(UserError, match=r"row 5: .*" + sha(2)):
        read_label_csv(path)


def test_split_csv_round_trip(tmp_path):
    rows = make_rows(300, ["0", "1", "2"], [0.3, 0.3, 0.4], seed=13)
    split = split_labels(pd.DataFrame(rows, columns=["objectId", "value"]))
    path = write_split_csv(split, tmp_path / "sub" / "split.csv")
    assert path.read_text().splitlines()[0] == "objectId,value,type"
    assert [entry.name for entry in path.parent.iterdir()] == ["split.csv"]  # no temporary left
    back = read_split_csv(path)
    assert back.columns.tolist() == ["objectId", "value", "type"]
    assert back.values.tolist() == split[["objectId", "value", "type"]].values.tolist()


@pytest.mark.parametrize("content, message", [
    (f"objectId,value,type\n{sha(1)},0,training\n",
     "row 2: type 'training' is not one of train, validation, test"),
    (f"objectId,value\n{sha(1)},0\n", "no column 'type'"),
    (f"objectId,value,type\n../{sha(1)},0,train\n", "row 2: objectId '../"),
    (f"objectId,value,type\n{sha(1)},,train\n", "row 2: the label"),
])
def test_read_split_csv_refusals(tmp_path, content, message):
    path = tmp_path / "split.csv"
    path.write_text(content)
    with pytest.raises(UserError, match=re.escape(message)):
        read_split_csv(path)


# --- labels, ranges, counts -------------------------------------------------------------------

def test_class_names_numeric_or_lexical():
    assert class_names(["10", "2", "1", "2"]) == ["1", "2", "10"]
    assert class_names([3, 1, -1]) == ["-1", "1", "3"]
    assert class_names(["cat", "10", "dog", "2"]) == ["10", "2", "cat", "dog"]
    assert class_names(pd.Series([" b", "a "])) == ["a", "b"]
    assert class_names(["1_0", "2"]) == ["1_0", "2"]  # int() would accept "1_0": not an integer label


def test_parse_key_range():
    assert parse_key_range("0-24") == range(0, 25)
    assert parse_key_range(" 25 - 49 ") == range(25, 50)
    assert parse_key_range("7") == range(7, 8)
    assert parse_key_range("none") == range(0)
    for text, message in [("a-b", "not a key range"), ("24-0", "reversed"), ("0-256", "past 255"),
                          ("-3", "not a key range"), ("1-2-3", "not a key range")]:
        with pytest.raises(UserError, match=f"--test-keys '{re.escape(text)}' .*{message}"):
            parse_key_range(text, "--test-keys")


def test_overlapping_or_out_of_range_keys_are_refused():
    frame = pd.DataFrame({"objectId": [sha(1)], "value": ["0"]})
    with pytest.raises(UserError, match="overlap"):
        split_labels(frame, test_keys=range(0, 30), validation_keys=range(25, 50))
    with pytest.raises(UserError, match=r"0\.\.255.*\[256\]"):
        split_labels(frame, test_keys=[256])


def test_counts_warnings_and_table():
    frame = pd.DataFrame({
        "value": ["0"] * 30 + ["1"] * 12 + ["0", "1"] * 3 + ["2"],
        "type": ["train"] * 42 + ["test"] * 6 + ["train"],
    })
    counts = split_counts(frame, ["0", "1", "2"])
    assert counts == {
        "train": {"0": 30, "1": 12, "2": 1},
        "validation": {"0": 0, "1": 0, "2": 0},
        "test": {"0": 3, "1": 3, "2": 0},
        "total": {"0": 33, "1": 15, "2": 1},
    }
    warnings = split_warnings(counts)
    assert any("validation part is empty" in warning for warning in warnings)
    assert any("test part is tiny" in warning and "'2': 0" in warning for warning in warnings)
    table = format_counts(counts).splitlines()
    assert table[0].split() == ["part", "0", "1", "2", "total"]
    assert table[1].split() == ["train", "30", "12", "1", "43"]
    assert table[4].split() == ["total", "33", "15", "1", "49"]
    many = split_counts(pd.DataFrame({"value": [str(index) for index in range(12)], "type": ["train"] * 12}))
    balanced = {**counts, "validation": {"0": 4, "1": 4, "2": 4}}
    assert any("validation part is tiny (fewer than 10 rows per label: 4 per label)" in warning
               for warning in split_warnings(balanced))
    turned = format_counts(many).splitlines()
    assert turned[0].split() == ["label", "train", "validation", "test", "total"]
    assert turned[-1].split() == ["total", "12", "0", "0", "12"]


# --- objectId checks --------------------------------------------------------------------------

@pytest.mark.parametrize("object_id", [
    sha(1), sha(2, ".jpeg"), sha(3, ".PNG"), sha(4).upper(), sha(5, ".bmp"), sha(6, ".gif"),
])
def test_valid_object_ids(object_id):
    assert OBJECT_ID_PATTERN.fullmatch(object_id)
    validate_object_ids(pd.Series([object_id]), "label.csv")


@pytest.mark.parametrize("object_id, hint", [
    ("images/" + sha(1), "a path"),
    ("/data/" + sha(1), "a path"),
    ("C:\\data\\" + sha(1), "a path"),
    ("..", "contains '..'"),
    (sha(1)[:-4] + "..jpg", "contains '..'"),
    (sha(1)[:-4], "no extension"),
    (sha(1)[1:], "40 characters"),
    ("g" + sha(1)[1:], "hex digits"),
    (sha(1, ".j\u212a"), "letters and digits"),  # Kelvin sign, not "k"
    (sha(1, ".tar.gz"), "letters and digits"),
    (sha(1, ".j\npg"), "letters and digits"),  # the message must still be one line
])
def test_bad_object_ids_are_named_with_their_row(object_id, hint):
    ids = pd.Series([sha(10), sha(11), object_id])
    with pytest.raises(UserError) as caught:
        validate_object_ids(ids, "label.csv")
    message = str(caught.value)
    assert message.startswith("label.csv row 4: objectId '")
    assert "is not 40 hex digits + extension" in message and hint in message
    assert "\n" not in message


def test_duplicates_name_both_rows_case_insensitively():
    with pytest.raises(UserError, match=f"label.csv row 4: objectId '{sha(1).upper()}' duplicates row 2"):
        validate_object_ids(pd.Series([sha(1), sha(2), sha(1).upper()]), "label.csv")


# --- the command ------------------------------------------------------------------------------

def test_cli_prints_the_table_and_json(tmp_path):
    rows = make_rows(1200, ["0", "1"], [0.3, 0.7], seed=14)
    label_csv = write_label_csv(tmp_path / "label.csv", rows)
    output = tmp_path / "split.csv"

    human = invoke(str(label_csv), "-o", str(output))
    assert human.exit_code == 0, human.output
    assert human.stdout.splitlines()[0].split() == ["part", "0", "1", "total"]
    assert human.stdout.splitlines()[-2].split()[-1] == "1200"

    machine = invoke(str(label_csv), "-o", str(output), "--json", "--no-balance", "--test-keys", "0-3")
    assert machine.exit_code == 0, machine.output
    payload = json.loads(machine.stdout)
    assert payload["output"] == str(output)
    assert payload["sizes"]["total"] == 1200
    assert payload["counts"]["test"] == split_counts(read_split_csv(output))["test"]
    assert any("test part is tiny" in warning for warning in payload["warnings"])
    assert "kcnn: warning: the test part is tiny" in machine.stderr


def test_cli_custom_columns(tmp_path):
    label_csv = tmp_path / "label.csv"
    label_csv.write_text(f"file,class\n{sha(1)},cat\n{sha(2)},dog\n")
    result = invoke(str(label_csv), "-o", str(tmp_path / "split.csv"), "--id-column", "file",
                    "--label-column", "class", "--json")
    assert result.exit_code == 0, result.output
    assert read_split_csv(tmp_path / "split.csv")["value"].tolist() == ["cat", "dog"]


@pytest.mark.parametrize("content, extra_args, message", [
    (None, [], "does not exist"),
    ("", [], "is empty"),
    ("objectId,value\n", [], "has a header but no data rows"),
    (f"id,value\n{sha(1)},0\n", [], "has no column 'objectId' (columns: id, value); use --id-column"),
    (f"objectId,label\n{sha(1)},0\n", [],
     "has no column 'value' (columns: objectId, label); use --label-column"),
    (f"objectId,value\n{sha(1)},0\n", ["--label-column", "objectId"], "both 'objectId'"),
    # No header line: the first row is data, and the message says so (not "use --id-column").
    (f"{sha(1)},0\n{sha(2)},1\n", [], f"has no header line: its first line '{sha(1)},0' names a file; add a first "
     "line naming the columns, such as 'objectId,value'"),
    ("eight/scan 0008.png,eight\nseven/scan 0007.png,seven\n", ["--images", "."], "has no header line"),
    (f"{sha(1, '')},0\n{sha(2, '')},1\n", [], "has no header line"),
    (f"objectId,value\n{sha(1)},0\n,1\n", [], "row 3: objectId is empty"),
    (f"objectId,value\n{sha(1)},0\nimages/{sha(2)},1\n", [], "not named by their SHA-1: give --images DIR"),
    (f"objectId,value\n{sha(1)},0\n../../etc/passwd,1\n", [], "row 3: objectId '../../etc/passwd'"),
    (f"objectId,value\n/tmp/{sha(1)},0\n", [], f"row 2: objectId '/tmp/{sha(1)}'"),
    (f"objectId,value\n{sha(1)},0\n{sha(2)},1\n{sha(1)},1\n", [],
     f"row 4: objectId '{sha(1)}' duplicates row 2"),
    (f"objectId,value\n{sha(1)},0\n{sha(2)}, \n", [],
     f"row 3: the label (value) of objectId '{sha(2)}' is missing"),
    (f"objectId,value\n{sha(1)},0\n{sha(2)}\n", [], "row 3: 1 fields, but the header has 2"),
    (f"objectId,value\n{sha(1)},0,extra\n", [], "row 2: 3 fields, but the header has 2"),
    (b"objectId,value\n\xff\xfe,0\n", [], "not UTF-8"),
    (f"objectId,value\n{sha(1)},0\n", ["--test-keys", "0-300"], "--test-keys '0-300' goes past 255"),
    (f"objectId,value\n{sha(1)},0\n", ["--validation-keys", "x"], "--validation-keys 'x' is not a key range"),
    (f"objectId,value\n{sha(1)},0\n", ["--test-keys", "0-30"], "the test and validation keys overlap"),
])
def test_cli_refusals_are_one_line_exit_2_and_write_nothing(tmp_path, content, extra_args, message):
    label_csv = tmp_path / "label.csv"
    if isinstance(content, bytes):
        label_csv.write_bytes(content)
    elif content is not None:
        label_csv.write_text(content)
    output = tmp_path / "split.csv"

    result = invoke(str(label_csv), "-o", str(output), *extra_args)

    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kcnn: error: ")
    assert message in lines[0]
    assert not output.exists()
    expected_files = ["label.csv"] if content is not None else []
    assert sorted(entry.name for entry in tmp_path.iterdir()) == expected_files  # no temporary left


def test_cli_refuses_a_directory_and_overwriting_its_input(tmp_path):
    result = invoke(str(tmp_path), "-o", str(tmp_path / "split.csv"))
    assert result.exit_code == 2 and f"no images found in {tmp_path}" in result.stderr
    label_csv = write_label_csv(tmp_path / "label.csv", [(sha(1), "0")])
    before = label_csv.read_bytes()
    result = invoke(str(label_csv), "-o", str(label_csv))
    assert result.exit_code == 2 and "is the input file" in result.stderr
    assert label_csv.read_bytes() == before


def test_a_refused_run_leaves_an_existing_output_untouched(tmp_path):
    output = tmp_path / "split.csv"
    output.write_text("previous\n")
    label_csv = tmp_path / "label.csv"
    label_csv.write_text(f"objectId,value\n{sha(1)},0\nnot-a-sha.jpg,1\n")
    result = invoke(str(label_csv), "-o", str(output))
    assert result.exit_code == 2
    assert output.read_text() == "previous\n"


def test_kcnn_split_never_imports_tensorflow(tmp_path):
    label_csv = write_label_csv(tmp_path / "label.csv", make_rows(50, ["0", "1"], [0.5, 0.5], seed=15))
    code = (
        "import sys, keras_cnn.cli.split_command\n"
        "assert 'pandas' not in sys.modules, 'pandas imported by the command module'\n"
        "from click.testing import CliRunner\n"
        "from keras_cnn.cli import cli\n"
        f"arguments = ['split', {str(label_csv)!r}, '-o', {str(tmp_path / 'split.csv')!r}]\n"
        "result = CliRunner().invoke(cli, arguments)\n"
        "assert result.exit_code == 0, result.output\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert (tmp_path / "split.csv").exists()
