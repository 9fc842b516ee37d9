"""kcnn doctor on all 1,797 of scikit-learn's digits with planted mistakes (slow: pytest -m slow).

5 % of the labels flipped (seeded), 30 near-duplicate copies (re-encoded, resized, cropped
by a pixel, brightened), a lenet trained 4 epochs on the folder as it is, then
``kcnn doctor DIGITS --run RUN``: the flips must lead the label suspects, the copies must be
paired, every pair split across parts must be called leakage, and the report must render.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from click.testing import CliRunner

from conftest import write_planted_digits
from keras_cnn.cli import cli

pytest.importorskip("cleanlab", reason="kcnn doctor needs pip install 'kcnn[doctor]'")


@pytest.mark.slow
def test_doctor_finds_planted_flips_and_copies_in_the_digits(tmp_path, chromium_page):
    from keras_cnn.data.collection import read_collection, split_collection

    images = tmp_path / "digits"
    planted = write_planted_digits(images)
    flipped, copies = planted["flipped"], planted["copies"]
    assert len(flipped) == 90 and len(copies) == 30
    run = tmp_path / "run"
    trained = CliRunner().invoke(cli, ["train", "lenet", "--images", str(images), "--epochs", "4", "--out", str(run)])
    assert trained.exit_code == 0, trained.output
    out = tmp_path / "doctor"
    result = CliRunner().invoke(cli, ["doctor", str(images), "--run", str(run), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    issues = pd.read_csv(out / "issues.csv", dtype=str, keep_default_na=False)

    suspects = issues[issues["issue"] == "label"]
    first = suspects.head(len(flipped))
    label_recall = len(set(first["objectId"]) & set(flipped)) / len(flipped)

    pairs = issues[issues["issue"].isin(["near_duplicate", "leakage"])]
    found = {frozenset(pair) for pair in zip(pairs["objectId"], pairs["other_objectId"])}
    wanted = {frozenset((copy, original)) for copy, (original, _kind) in copies.items()}
    recall, precision = len(found & wanted) / len(wanted), len(found & wanted) / max(1, len(found))

    frame = split_collection(read_collection(images, keep_duplicates=True))
    parts = dict(zip(frame["objectId"], frame["type"]))
    issue_of = {frozenset(pair): issue for pair, issue in zip(zip(pairs["objectId"], pairs["other_objectId"]),
                                                               pairs["issue"])}
    crossing = [pair for pair in wanted if len({parts[member] for member in pair}) == 2]
    print(f"\nlabel suspects {len(suspects)}, flips among the first {len(flipped)}: {label_recall:.1%}; "
          f"pairs found {len(found)}, recall {recall:.1%}, precision {precision:.1%}; "
          f"{len(crossing)} planted pairs across parts; counts {summary['counts']}")
    assert label_recall >= 0.8
    assert recall >= 0.9 and precision >= 0.9
    assert crossing and all(issue_of.get(pair) == "leakage" for pair in crossing)

    errors = []
    chromium_page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    chromium_page.goto((out / "doctor.html").as_uri())
    assert chromium_page.locator("section#label table tbody tr").count() == min(100, len(suspects))
    assert chromium_page.evaluate(
        "Array.from(document.images).every(image => image.complete && image.naturalWidth > 0)")
    assert errors == []
