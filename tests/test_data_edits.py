"""--exclude and --relabel: read, applied by the collection readers before the duplicate check,
counted in the "found" line, and recorded in a run (config.json and its own split.csv)."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from keras_cnn.cli import cli
from keras_cnn.config import DataConfig, RunConfig, validate_config
from keras_cnn.data.collection import read_collection, split_collection, split_into_run
from keras_cnn.data.edits import DataEdits, apply_edits, read_data_edits, read_exclude_file
from keras_cnn.data.split import write_split_csv
from keras_cnn.errors import UserError


def png_bytes(seed: int, size: int = 8) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def tree(tmp_path) -> Path:
    """root/<cat|dog>/img_N.png, 12 images each."""
    root = tmp_path / "images"
    for offset, label in enumerate(("cat", "dog")):
        (root / label).mkdir(parents=True)
        for index in range(12):
            (root / label / f"img_{index:02d}.png").write_bytes(png_bytes(100 * offset + index))
    return root


def write_lines(path: Path, *lines: str) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


def test_exclude_file_skips_comments_and_refuses_paths_outside_the_folder(tmp_path):
    listed = read_exclude_file(write_lines(tmp_path / "ok.txt", "# kcnn doctor", "", "cat/a.png", "  dog/b.png  "))
    assert listed == {"cat/a.png", "dog/b.png"}
    for bad, why in (("../x.png", "contains '..'"), ("/etc/passwd", "absolute")):
        with pytest.raises(UserError, match=rf"line 2: .*{why}"):
            read_exclude_file(write_lines(tmp_path / "bad.txt", "cat/a.png", bad))


def test_apply_edits_drops_relabels_and_reports_unmatched():
    table = pd.DataFrame({"objectId": ["a.png", "b.png", "c.png"], "value": ["x", "x", "y"]})
    edits = DataEdits(exclude=frozenset({"b.png", "zzz.png"}), relabel={"c.png": "x", "a.png": "x"})
    edited, report = apply_edits(table, edits)
    assert edited.to_dict("list") == {"objectId": ["a.png", "c.png"], "value": ["x", "x"]}
    assert (report.excluded, report.relabelled, report.unmatched) == (1, 1, ["zzz.png"])


def test_found_line_counts_excluded_and_relabelled_files(tree, tmp_path):
    edits = read_data_edits(write_lines(tmp_path / "exclude.txt", "cat/img_00.png", "cat/img_01.png", "nope.png"),
                            write_lines(tmp_path / "relabel.csv", "objectId,value", "dog/img_03.png,cat"))
    collection = read_collection(tree, edits=edits)
    assert collection.describe() == (f"found class folders in {tree}: 22 images in 2 labels "
                                     "(left out: 2 excluded by --exclude; 1 relabelled by --relabel)")
    labels = dict(zip(collection.table["objectId"], collection.table["value"]))
    assert "cat/img_00.png" not in labels and labels["dog/img_03.png"] == "cat"
    assert any("1 path(s) in" in warning and "nope.png" in warning for warning in collection.warnings)


def test_excluding_or_relabelling_settles_identical_files_under_two_labels(tree, tmp_path):
    (tree / "dog" / "same.png").write_bytes((tree / "cat" / "img_05.png").read_bytes())
    with pytest.raises(UserError, match="under two labels"):
        read_collection(tree)
    kept = read_collection(tree, keep_duplicates=True).table
    assert kept["sha1"].duplicated().sum() == 1 and len(kept) == 25
    excluded = read_collection(tree, edits=DataEdits(exclude=frozenset({"dog/same.png"}))).table
    assert "dog/same.png" not in set(excluded["objectId"])
    relabelled = read_collection(tree, edits=DataEdits(relabel={"dog/same.png": "cat"}))
    assert len(relabelled.table) == 24 and "copies of an image already under the same label" in relabelled.warnings[0]


def test_everything_excluded_is_one_line(tree, tmp_path):
    everything = [path.relative_to(tree).as_posix() for path in sorted(tree.rglob("*.png"))]
    with pytest.raises(UserError, match="leaves out every image"):
        read_collection(tree, edits=read_data_edits(write_lines(tmp_path / "all.txt", *everything), None))


def test_a_split_with_edits_is_written_into_the_run_with_its_parts_kept(tree, tmp_path):
    split = write_split_csv(split_collection(read_collection(tree)), tmp_path / "split.csv")
    given = pd.read_csv(split, dtype=str)
    data = DataConfig(split=str(split), images=str(tree))
    assert split_into_run(data, tmp_path / "plain") == data  # nothing to edit: the given split is used
    edited = replace(data, exclude=str(write_lines(tmp_path / "x.txt", given["objectId"][0])),
                     relabel=str(write_lines(tmp_path / "r.csv", "objectId,value", f"{given['objectId'][1]},bird")))
    result = split_into_run(edited, tmp_path / "run")
    written = pd.read_csv(tmp_path / "run" / "split.csv", dtype=str)
    assert Path(result.split) == (tmp_path / "run" / "split.csv").resolve()
    assert written["objectId"].tolist() == given["objectId"].tolist()[1:]
    assert written["type"].tolist() == given["type"].tolist()[1:]
    assert written["value"].tolist()[0] == "bird"
    assert written["sha1"].tolist() == given["sha1"].tolist()[1:]


def test_edits_are_refused_on_array_datasets():
    config = RunConfig(command="train", data=DataConfig(dataset="mnist", exclude="x.txt"))
    with pytest.raises(UserError, match="work on image folders"):
        validate_config(config)


def test_train_records_the_edits_and_leaves_the_files_out(tree, tmp_path, monkeypatch):
    monkeypatch.delenv("KCNN_QUIET", raising=False)
    exclude = write_lines(tmp_path / "exclude.txt", "cat/img_00.png", "dog/img_00.png")
    relabel = write_lines(tmp_path / "relabel.csv", "objectId,value", "dog/img_01.png,cat")
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, ["train", "lenet", "--images", str(tree), "--epochs", "1", "--batch-size", "8",
                                      "--exclude", str(exclude), "--relabel", str(relabel), "--out", str(run)])
    assert result.exit_code == 0, result.output
    assert "left out: 2 excluded by --exclude; 1 relabelled by --relabel" in result.stderr
    data = json.loads((run / "config.json").read_text())["data"]
    assert data["exclude"] == str(exclude.resolve()) and data["relabel"] == str(relabel.resolve())
    split = pd.read_csv(run / "split.csv", dtype=str)
    assert len(split) == 22 and not {"cat/img_00.png", "dog/img_00.png"} & set(split["objectId"])
    assert split.set_index("objectId").loc["dog/img_01.png", "value"] == "cat"


@pytest.mark.parametrize("command", ["split", "train", "transfer", "lr-find"])
def test_each_command_that_reads_images_takes_the_same_edit_options(command):
    from keras_cnn.cli import cli, options

    params = {param.name: param for param in cli.get_command(None, command).params}
    for option in (options.exclude, options.relabel):
        assert params[option.name].config_path == option.path and params[option.name].opts == [option.flag]
        assert params[option.name].help.startswith(option.help)


def test_lr_find_with_a_run_refuses_edits(tmp_path):
    (tmp_path / "run").mkdir()
    exclude = write_lines(tmp_path / "x.txt", "a.png")
    result = CliRunner().invoke(cli, ["lr-find", "--run", str(tmp_path / "run"), "--exclude", str(exclude)])
    assert result.exit_code == 2 and "with --run the run's own split is used" in result.output
