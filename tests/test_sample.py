"""The built-in sample data: deterministic, named by SHA-1, with label.csv."""

import hashlib

import pandas as pd
import pytest

from keras_cnn.data.sample import write_sample_data
from keras_cnn.errors import UserError


def test_files_are_named_by_their_sha1_and_listed(tmp_path):
    summary = write_sample_data(tmp_path, classes=3, per_class=4, size=32, seed=1)
    labels = pd.read_csv(tmp_path / "label.csv")
    assert list(labels.columns) == ["objectId", "value"]
    assert len(labels) == summary["count"] == 12
    assert labels["value"].value_counts().to_dict() == {"circle": 4, "square": 4, "triangle": 4}
    for object_id in labels["objectId"]:
        payload = (tmp_path / object_id).read_bytes()
        assert object_id == hashlib.sha1(payload).hexdigest() + ".jpg"


def test_same_seed_same_files(tmp_path):
    write_sample_data(tmp_path / "a", classes=2, per_class=3, size=24, seed=5)
    write_sample_data(tmp_path / "b", classes=2, per_class=3, size=24, seed=5)
    write_sample_data(tmp_path / "c", classes=2, per_class=3, size=24, seed=6)
    read = lambda name: (tmp_path / name / "label.csv").read_text()  # noqa: E731
    assert read("a") == read("b") != read("c")


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(UserError, match="--classes"):
        write_sample_data(tmp_path, classes=1)
    with pytest.raises(UserError, match="--size"):
        write_sample_data(tmp_path, size=4)
