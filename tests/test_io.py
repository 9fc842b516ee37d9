"""File helpers: output paths that must be new or of the right kind."""

from __future__ import annotations

import pytest

from keras_cnn.errors import UserError
from keras_cnn.io import check_output_path


def test_output_paths_must_be_new_or_regular(tmp_path):
    assert check_output_path(tmp_path / "new.csv") == tmp_path / "new.csv"
    (tmp_path / "old.csv").write_text("x")
    check_output_path(tmp_path / "old.csv")
    check_output_path(tmp_path, directory=True)
    with pytest.raises(UserError, match="character device"):
        check_output_path("/dev/null")
    with pytest.raises(UserError, match="regular file"):
        check_output_path(tmp_path / "old.csv", directory=True)
