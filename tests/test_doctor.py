"""kcnn doctor: planted label flips ranked first, planted copies paired (leakage across parts),
picture checks, the report (parsed, and rendered in Chromium), and the parts it is built from.

One module-scoped folder of 400 of scikit-learn's digits with planted mistakes, a lenet
trained on it for a few epochs, and one doctor run over it serve most tests; the full
1,797-image check is tests/test_doctor_digits.py (slow).
"""

from __future__ import annotations

import csv
import html.parser
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image, ImageFilter

from conftest import stderr_problems, write_planted_digits
from keras_cnn.cli import cli
from keras_cnn.errors import UserError

pytest.importorskip("cleanlab", reason="kcnn doctor needs pip install 'kcnn[doctor]'")


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """400 digit images with 20 flipped labels and 8 planted copies, a lenet run on them, doctor's output."""
    root = tmp_path_factory.mktemp("doctor")
    images = root / "digits"
    planted = write_planted_digits(images, count=400, copies=8, seed=7)
    run = root / "run"
    trained = invoke("train", "lenet", "--images", str(images), "--epochs", "4", "--out", str(run))
    assert trained.exit_code == 0, trained.output
    out = root / "doctor"
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("KCNN_QUIET", raising=False)  # the progress lines are checked below
        result = invoke("doctor", str(images), "--run", str(run), "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    issues = pd.read_csv(out / "issues.csv", dtype=str, keep_default_na=False)
    return {"images": images, "planted": planted, "run": run, "out": out, "issues": issues,
            "summary": json.loads(result.stdout), "stderr": result.stderr}


def expected_parts(images: Path) -> dict[str, str]:
    """Each image's part by kcnn's split rule (identical files kept)."""
    from keras_cnn.data.collection import read_collection, split_collection

    frame = split_collection(read_collection(images, keep_duplicates=True))
    return dict(zip(frame["objectId"], frame["type"]))


# ------------------------------------------------------------------------------ the digits run

def test_issues_csv_has_exactly_the_columns_and_valid_rows(digits):
    with open(digits["out"] / "issues.csv", newline="", encoding="utf-8") as handle:
        header = next(csv.reader(handle))
    assert header == ["objectId", "issue", "score", "type", "value", "suggested_value", "other_objectId"]
    issues = digits["issues"]
    scores = issues["score"].astype(float)
    assert ((scores >= 0) & (scores <= 1)).all()
    assert set(issues["type"]) <= {"train", "validation", "test"}
    pairs = issues["issue"].isin(["leakage", "near_duplicate", "exact_duplicate"])
    assert (issues.loc[pairs, "other_objectId"] != "").all()
    assert (issues.loc[~pairs, "other_objectId"] == "").all()
    # Rows come worst first: every leakage row before any other kind.
    kinds = issues["issue"].tolist()
    assert kinds == sorted(kinds, key=lambda kind: kind != "leakage")


def test_flipped_labels_lead_the_label_suspects(digits):
    flipped = digits["planted"]["flipped"]
    suspects = digits["issues"][digits["issues"]["issue"] == "label"]
    first = suspects.head(len(flipped))
    found = set(first["objectId"]) & set(flipped)
    # A lenet trained 4 epochs on 320 images; chance would put 1 of the 20 flips here.
    assert len(found) >= 0.6 * len(flipped), (sorted(found), len(suspects))
    right = [row.suggested_value == flipped[row.objectId] for row in first.itertuples() if row.objectId in flipped]
    assert np.mean(right) >= 0.8
    assert (first["suggested_value"] != first["value"]).all()


def test_planted_copies_are_paired_and_leakage_is_called(digits):
    copies = digits["planted"]["copies"]
    issues = digits["issues"]
    pairs = issues[issues["issue"].isin(["near_duplicate", "leakage"])]
    found = {frozenset(pair) for pair in zip(pairs["objectId"], pairs["other_objectId"])}
    planted = {frozenset((copy, original)) for copy, (original, _kind) in copies.items()}
    assert len(found & planted) == len(planted), sorted(map(sorted, planted - found))
    assert len(found & planted) >= 0.9 * len(found), sorted(map(sorted, found - planted))
    parts = expected_parts(digits["images"])
    issue_of = {frozenset(pair): kind for pair, kind in zip(zip(pairs["objectId"], pairs["other_objectId"]),
                                                             pairs["issue"])}
    for copy, (original, _kind) in copies.items():
        wanted = "leakage" if parts[copy] != parts[original] else "near_duplicate"
        assert issue_of[frozenset((copy, original))] == wanted, (copy, original, parts[copy], parts[original])


def test_exclude_file_lists_leakage_and_label_suspects_and_split_reads_it(digits, tmp_path, monkeypatch):
    monkeypatch.delenv("KCNN_QUIET", raising=False)
    issues = digits["issues"]
    exclude = digits["out"] / "exclude.txt"
    listed = [line for line in exclude.read_text().splitlines() if line and not line.startswith("#")]
    wanted = issues[issues["issue"].isin(["leakage", "label", "exact_duplicate", "unreadable"])]["objectId"]
    assert listed == list(dict.fromkeys(wanted))
    assert not set(listed) & set(issues[issues["issue"] == "near_duplicate"]["objectId"])
    result = invoke("split", str(digits["images"]), "-o", str(tmp_path / "split.csv"), "--exclude", str(exclude))
    assert result.exit_code == 0, result.output
    assert f"left out: {len(listed)} excluded by --exclude" in result.output
    kept = set(pd.read_csv(tmp_path / "split.csv", dtype=str)["objectId"])
    assert not kept & set(listed)


def test_progress_is_kcnn_lines_only(digits):
    assert stderr_problems(digits["stderr"]) == []
    assert "[doctor] comparing look-alike images" in digits["stderr"]


def test_json_summary_counts_every_issue_and_matches_the_files(digits):
    summary = digits["summary"]
    counts = digits["issues"]["issue"].value_counts()
    assert summary["counts"] == {name: int(counts.get(name, 0)) for name in summary["counts"]}
    assert list(summary["counts"])[:3] == ["leakage", "exact_duplicate", "label"]
    assert summary["images"] == 408 and summary["labels"] == [str(digit) for digit in range(10)]
    assert json.loads((digits["out"] / "doctor.json").read_text())["counts"] == summary["counts"]
    assert summary["balance"]["ratio"] >= 1


class _PageParser(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.sections, self.images, self.links, self.scripts = [], [], [], 0

    def handle_starttag(self, tag, attributes):
        attributes = dict(attributes)
        if tag == "section":
            self.sections.append(attributes.get("id"))
        elif tag == "img":
            self.images.append(attributes.get("src", ""))
        elif tag in ("link", "script"):
            self.scripts += 1
        elif tag == "a":
            self.links.append(attributes.get("href", ""))


def test_report_is_one_offline_page_with_a_section_per_finding(digits):
    from keras_cnn.doctor.findings import ISSUE_TYPES

    parser = _PageParser()
    parser.feed((digits["out"] / "doctor.html").read_text(encoding="utf-8"))
    assert parser.sections == ["overview", "balance", *[issue.name for issue in ISSUE_TYPES]]
    assert parser.images and all(source.startswith("data:image/jpeg;base64,") for source in parser.images)
    assert parser.scripts == 0
    assert all(link.startswith("#") for link in parser.links)
    # A pair shows both pictures: two thumbnails per leakage or near-duplicate row.
    rows = digits["issues"]
    shown = sum(2 if issue in ("leakage", "near_duplicate") else 1 for issue in rows["issue"].head(100))
    assert len(parser.images) >= min(shown, len(parser.images))


def test_report_renders_in_chromium(digits, chromium_page):
    errors = []
    chromium_page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    chromium_page.on("pageerror", lambda error: errors.append(str(error)))
    chromium_page.goto((digits["out"] / "doctor.html").as_uri())
    assert chromium_page.locator("section#leakage h2").is_visible()
    assert chromium_page.locator("section#label table tbody tr").count() > 0
    broken = chromium_page.evaluate(
        "Array.from(document.images).filter(image => !image.complete || image.naturalWidth === 0).length")
    assert chromium_page.evaluate("document.images.length") > 10 and broken == 0
    assert errors == []


def test_an_output_folder_may_hold_an_earlier_doctor_but_no_foreign_file(digits, tmp_path):
    from keras_cnn.doctor.run import check_out_folder

    assert check_out_folder(digits["out"]) == digits["out"]  # a re-run replaces doctor's own files
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "issues.csv").write_text("my own notes\n")
    result = invoke("doctor", str(digits["images"]), "--run", str(digits["run"]), "--out", str(foreign))
    assert result.exit_code == 2 and "kcnn doctor did not write" in result.output
    assert (foreign / "issues.csv").read_text() == "my own notes\n"


# ------------------------------------------------------------------------------ pictures

def _photo(seed: int, size=(48, 48)) -> Image.Image:
    """A colourful smooth picture with texture (a gradient per channel plus noise)."""
    rng = np.random.default_rng(seed)
    height, width = size
    rows, columns = np.mgrid[0:height, 0:width]
    channels = [np.sin(rows / rng.uniform(3, 9) + rng.uniform(0, 6)) * np.cos(columns / rng.uniform(3, 9))
                for _ in range(3)]
    pixels = (np.stack(channels, axis=-1) * 100 + 128 + rng.normal(0, 12, (height, width, 3)))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """Colour pictures in two labels with one of each bad kind, checked with a random base."""
    root = tmp_path_factory.mktemp("pictures")
    images = root / "images"
    for label in ("a", "b"):
        (images / label).mkdir(parents=True)
    for index in range(40):
        _photo(index).save(images / ("a" if index % 2 else "b") / f"photo_{index:02d}.png")
    Image.new("RGB", (48, 48), (3, 3, 3)).save(images / "a" / "black.png")
    Image.new("RGB", (48, 48), (252, 252, 252)).save(images / "a" / "white.png")
    _photo(100).filter(ImageFilter.GaussianBlur(6)).save(images / "b" / "blurred.png")
    _photo(101, size=(12, 12)).save(images / "b" / "tiny.png")
    _photo(102, size=(30, 150)).save(images / "a" / "wide.png")
    _photo(103).convert("L").convert("RGB").save(images / "b" / "grey.png")
    (images / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (images / "b" / "same_as_a00.png").write_bytes((images / "b" / "photo_00.png").read_bytes())
    (images / "a" / "photo_00_copy.png").write_bytes((images / "b" / "photo_00.png").read_bytes())
    out = root / "doctor"
    # A real process: what reaches its stderr (TensorFlow's native logs included) is checked.
    environment = {key: value for key, value in os.environ.items() if key not in ("KCNN_QUIET", "KCNN_DEBUG")}
    result = subprocess.run([sys.executable, "-m", "keras_cnn", "doctor", str(images), "--base", "mobilenet_v3_small",
                             "--weights", "none", "--image-size", "32", "--out", str(out), "--json"],
                            capture_output=True, text=True, env=environment, check=False)
    return {"images": images, "out": out, "result": result,
            "issues": pd.read_csv(out / "issues.csv", dtype=str, keep_default_na=False) if result.returncode == 0
            else None}


def test_bad_pictures_are_each_found_by_their_check(pictures):
    assert pictures["result"].returncode == 0, pictures["result"].stderr
    issues = pictures["issues"]
    found = {(row.issue, row.objectId) for row in issues.itertuples()}
    for wanted in [("dark", "a/black.png"), ("light", "a/white.png"), ("blurry", "b/blurred.png"),
                   ("small", "b/tiny.png"), ("odd_aspect", "a/wide.png"), ("grayscale", "b/grey.png"),
                   ("unreadable", "a/broken.png")]:
        assert wanted in found, (wanted, sorted(found))
    for kind in ("dark", "light", "blurry", "small", "odd_aspect", "grayscale"):
        assert len(issues[issues["issue"] == kind]) == 1, issues[issues["issue"] == kind]
    assert issues.loc[issues["issue"] == "unreadable", "objectId"].tolist() == ["a/broken.png"]


def test_identical_files_under_two_labels_are_reported_not_refused(pictures):
    issues = pictures["issues"]
    exact = issues[issues["issue"].isin(["exact_duplicate", "leakage"]) &
                   issues["other_objectId"].str.contains("photo_00")]
    members = {frozenset((row.objectId, row.other_objectId)) for row in exact.itertuples()}
    # Three identical files: each later copy is paired with the first (in path order).
    assert members == {frozenset(("a/photo_00_copy.png", "b/photo_00.png")),
                       frozenset(("a/photo_00_copy.png", "b/same_as_a00.png"))}


def test_random_weights_skip_labels_and_outliers_in_one_line(pictures):
    result = pictures["result"]
    assert "label and outlier findings would be meaningless" in result.stderr
    assert stderr_problems(result.stderr) == []
    summary = json.loads(result.stdout)
    assert set(summary["skipped"]) == {"label", "outlier"}
    assert summary["counts"]["label"] == summary["counts"]["outlier"] == 0
    page = (pictures["out"] / "doctor.html").read_text()
    assert "Not checked: the features come from random weights" in page


# ------------------------------------------------------------------------------ the parts

def test_out_of_sample_head_and_cleanlab_rank_flipped_digits_first():
    """On the 1,797 digits' own pixels, 5 % flipped labels: the flagged suspects are mostly the flips."""
    from sklearn.datasets import load_digits

    from keras_cnn.doctor.labels import label_issue_findings, out_of_fold_probabilities

    digits = load_digits()
    rng = np.random.default_rng(3)
    labels = digits.target.copy()
    flipped = rng.choice(len(labels), size=90, replace=False)
    labels[flipped] = (labels[flipped] + rng.integers(1, 10, size=90)) % 10
    table = pd.DataFrame({"objectId": [f"{row}.png" for row in range(len(labels))],
                          "value": labels.astype(str), "type": "train"})
    probabilities = out_of_fold_probabilities(digits.data, labels, 10, folds=5, seed=0)
    assert probabilities.shape == (len(labels), 10) and np.allclose(probabilities.sum(axis=1), 1)
    findings = label_issue_findings(table, labels, probabilities, [str(digit) for digit in range(10)])
    first = findings.sort_values("score", ascending=False).head(90)
    truth = {f"{row}.png": str(digits.target[row]) for row in flipped}
    assert len(set(first["objectId"]) & set(truth)) >= 0.8 * 90
    assert np.mean([row.suggested_value == truth[row.objectId] for row in first.itertuples()
                    if row.objectId in truth]) >= 0.9


def test_nearest_neighbours_match_brute_force_and_never_return_self():
    from keras_cnn.doctor.neighbours import nearest_neighbours

    vectors = np.random.default_rng(0).normal(size=(300, 16)).astype(np.float32)
    vectors[7] = vectors[3]  # an identical pair: each must still not be its own neighbour
    distances, positions = nearest_neighbours(vectors, 4)
    full = np.linalg.norm(vectors[:, None] - vectors[None], axis=2)
    np.fill_diagonal(full, np.inf)
    assert (positions != np.arange(300)[:, None]).all()
    assert np.allclose(np.sort(full, axis=1)[:, :4], distances, atol=1e-4)
    assert positions[3, 0] == 7 and positions[7, 0] == 3


def test_perceptual_hash_is_imagehash_phash():
    imagehash = pytest.importorskip("imagehash")
    from keras_cnn.doctor.duplicates import perceptual_hashes

    grey = np.stack([np.asarray(_photo(seed, size=(32, 32)).convert("L"), dtype=np.float64) for seed in range(5)])
    ours = perceptual_hashes(grey)
    theirs = np.stack([imagehash.phash(Image.fromarray(image.astype(np.uint8))).hash.ravel() for image in grey])
    assert (ours == theirs).mean() > 0.97  # Pillow's LANCZOS pass and float DCT round a bit differently


def test_penultimate_model_is_the_input_of_the_last_layer():
    import keras

    from keras_cnn.models.factory import create_model
    from keras_cnn.models.features import penultimate_model

    lenet = create_model("lenet", 10)
    features = penultimate_model(lenet)
    assert features.output_shape == (None, 500)
    images = np.random.default_rng(0).uniform(0, 255, size=(3, 28, 28, 1)).astype("float32")
    inner = lenet.layers[-1]
    expected = keras.Model(inner.input, inner.layers[-1].input)(images / 255.0)
    assert np.allclose(features(images), expected, atol=1e-5)
    classifier = lenet.layers[-1].layers[-1]
    assert np.allclose(classifier(features(images)), lenet(images), atol=1e-5)


def test_multi_label_sources_are_refused_in_one_line(tmp_path):
    from keras_cnn.doctor.source import read_doctor_source

    (tmp_path / "images").mkdir()
    for name in ("x.png", "y.png"):
        _photo(len(name)).save(tmp_path / "images" / name)
    (tmp_path / "labels.csv").write_text("objectId,value\nx.png,cat;dog\ny.png,cat\n")
    with pytest.raises(UserError, match="multi-label"):
        read_doctor_source(str(tmp_path / "labels.csv"), images=str(tmp_path / "images"))


def test_a_split_csv_keeps_its_parts(tmp_path):
    from keras_cnn.doctor.source import read_doctor_source

    images = tmp_path / "images"
    images.mkdir()
    for index in range(6):
        _photo(index).save(images / f"p{index}.png")
    rows = [f"p{index}.png,{'ab'[index % 2]},{('train', 'validation', 'test')[index % 3]}" for index in range(6)]
    (tmp_path / "split.csv").write_text("objectId,value,type\n" + "\n".join(rows) + "\n")
    data = read_doctor_source(str(tmp_path / "split.csv"), images=str(images))
    assert data.table["type"].tolist() == ["train", "validation", "test"] * 2
    assert (data.table["sha1"].str.len() == 40).all() and data.found.startswith("found a split CSV")


def test_a_missing_extra_names_the_install_command(monkeypatch):
    import importlib.util

    from keras_cnn.doctor import libraries

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None if name == "cleanlab" else real(name))
    with pytest.raises(UserError, match=r"needs cleanlab: pip install 'kcnn\[doctor\]'"):
        libraries.require_doctor_libraries()


def test_doctor_needs_one_feature_source(tmp_path):
    result = invoke("doctor", str(tmp_path), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2 and "one of --base NAME" in result.output
    assert not (tmp_path / "out").exists()
