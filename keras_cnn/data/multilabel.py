"""Multi-label data: images with any number of labels, as tables, split CSVs and target vectors.

A multi-label image carries a set of labels (possibly none).  In a label CSV the set is one
cell, the labels joined by a delimiter (``--label-delimiter``, ``;`` by default, as fastai's
``label_delim``); an empty cell is an image with no label.  In a class-folder tree, the same
picture (identical bytes) under several class folders is one image with all their labels.

Inside kcnn the set is always one string, the labels in class order joined by
:data:`JOINER` (``;``), in the ``value`` column of the tables every reader returns, so the
readers, ``--exclude`` and the split treat both kinds of data alike.  A split CSV written for
multi-label data names that column :data:`LABELS_COLUMN` (``objectId,labels,type[,sha1]``):
that header is how a split CSV records that it is multi-label, so later commands need no
flag.  The model's targets are multi-hot rows: 1 where the image has the label.

Like :mod:`keras_cnn.data.split`, this module never imports TensorFlow.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from keras_cnn.data.split import (PARTS, SMALL_PART_ROWS, TOTAL, _as_text, _line_numbers, _read_checked, _shorten,
                                  check_split_types, class_names, label_problem, read_split_csv, validate_object_ids)
from keras_cnn.errors import UserError
from keras_cnn.io import normalize_label

JOINER = ";"                     # joins an image's labels in kcnn's tables and in a multi-label split CSV
DEFAULT_DELIMITER = JOINER       # --label-delimiter
LABELS_COLUMN = "labels"         # the label column of a multi-label split CSV
NO_LABEL = "(none)"              # the count table's column of images without a label


def split_cell(text: str, delimiter: str = JOINER) -> list[str]:
    """The labels of one cell: split on ``delimiter``, stripped, Unicode-normalised (NFC, as every label
    kcnn reads), empty pieces dropped, repeats once."""
    seen: dict[str, None] = {}
    for piece in str(text).split(delimiter):
        piece = normalize_label(piece.strip())
        if piece:
            seen.setdefault(piece, None)
    return list(seen)


def label_sets(values: Iterable[str], delimiter: str = JOINER) -> list[list[str]]:
    """The labels of every cell (see :func:`split_cell`)."""
    return [split_cell(text, delimiter) for text in values]


def multi_label_class_names(values: Iterable[str], delimiter: str = JOINER) -> list[str]:
    """The sorted distinct labels of all cells (numeric order when all are integers): the class order."""
    return class_names([label for labels in label_sets(values, delimiter) for label in labels])


def joined_cells(sets: Sequence[Sequence[str]], labels: Sequence[str] | None = None) -> list[str]:
    """Each set of labels as kcnn's cell: in class order (``labels``, default :func:`class_names`) joined by ``;``."""
    order = {label: index for index, label in enumerate(
        labels if labels is not None else class_names([label for found in sets for label in found]))}
    return [JOINER.join(sorted(set(found), key=lambda label: order[label])) for found in sets]


def canonical_cells(values: Iterable[str], delimiter: str = JOINER) -> list[str]:
    """Cells as kcnn keeps them: labels split on ``delimiter``, in class order, joined by ``;``."""
    sets = label_sets(values, delimiter)
    return joined_cells(sets)


def validate_label_cells(values: pd.Series, ids: pd.Series, source: str, line_numbers: Sequence[int] | None = None,
                         allowed_labels: Iterable[str] = (), delimiter: str = JOINER) -> None:
    """Refuse the first unusable label of any cell, naming its row and objectId.

    Each label is judged as a single label is (:func:`keras_cnn.data.split.label_problem`);
    an empty cell is an image without a label, which is fine.  A label holding ``;`` is
    refused when another delimiter splits the cells: kcnn joins labels with ``;``.
    """
    if not delimiter:
        raise UserError("--label-delimiter must be at least one character")
    texts = _as_text(values).reset_index(drop=True)
    lines = _line_numbers(len(texts), line_numbers)
    judged: dict[str, str | None] = {}
    for position, text in enumerate(texts):
        for label in split_cell(text, delimiter):
            if label not in judged:
                problem = label_problem(label, allowed_labels)
                if problem is None and JOINER in label:
                    problem = (f"contains '{JOINER}', which kcnn uses to join an image's labels; "
                               f"rename the label or split the cells on '{JOINER}'")
                judged[label] = problem
            if judged[label]:
                object_id = _shorten(_as_text(ids).iloc[position])
                raise UserError(f"{source} row {lines[position]}: the label '{_shorten(label)}' of objectId "
                                f"'{object_id}' {judged[label]}")


def multi_hot(values: Iterable[str], labels: Sequence[str], source: str) -> np.ndarray:
    """float32 (n, N) targets: 1 where the cell (labels joined by ``;``) holds the label; unknown labels refused."""
    index_of = {str(label): index for index, label in enumerate(labels)}
    sets = label_sets(values)
    unknown = sorted({label for found in sets for label in found} - set(index_of))
    if unknown:
        raise UserError(f"{source} has label(s) {', '.join(map(repr, unknown[:10]))} "
                        f"that are not among the labels {list(labels)}")
    targets = np.zeros((len(sets), len(labels)), dtype=np.float32)
    for row, found in enumerate(sets):
        targets[row, [index_of[label] for label in found]] = 1.0
    return targets


def is_multi_label_split_csv(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a split CSV written for multi-label data (its label column is ``labels``)."""
    try:
        with Path(path).open(newline="", encoding="utf-8-sig") as handle:
            header = {name.strip() for name in next(csv.reader(handle), [])}
    except (OSError, UnicodeDecodeError, csv.Error):
        return False   # the reader says what is wrong with it
    return LABELS_COLUMN in header and "value" not in header and "objectId" in header


# --------------------------------------------------------------------------- reading CSVs


def read_multi_label_csv(path: str | os.PathLike, id_column: str = "objectId", label_column: str = "value",
                         paths: bool = False, allowed_labels: Iterable[str] = (),
                         delimiter: str = DEFAULT_DELIMITER) -> pd.DataFrame:
    """A label CSV whose label cells hold several labels: columns ``objectId`` and ``value`` (kcnn's cells).

    Checked like :func:`keras_cnn.data.split.read_label_csv`, but a cell is split on
    ``delimiter`` and each of its labels judged; an empty cell is an image without a label.
    """
    if id_column == label_column:
        raise UserError(f"the id column and the label column are both '{id_column}'")

    def check(frame, lines):
        validate_object_ids(frame["objectId"], str(path), lines, paths=paths)
        validate_label_cells(frame["value"], frame["objectId"], str(path), lines, allowed_labels, delimiter)

    frame = _read_checked(path, {"objectId": id_column, "value": label_column},
                          {"objectId": "--id-column", "value": "--label-column"}, check)
    return frame.assign(value=canonical_cells(frame["value"], delimiter))


def read_split_table(path: str | os.PathLike, allowed_labels: Iterable[str] = (), multi_label: bool = False,
                     delimiter: str = DEFAULT_DELIMITER) -> tuple[pd.DataFrame, bool]:
    """Any split CSV: ``(frame, multi_label)``; frame columns objectId, value, type (and sha1 if present).

    A multi-label split CSV (``objectId,labels,type``) is read as such whatever
    ``multi_label`` says; with ``multi_label`` the ``value`` cells of a plain split CSV are
    split on ``delimiter`` (a single-label split then gives one label per image).
    Otherwise this is :func:`keras_cnn.data.split.read_split_csv`.
    """
    written_multi = is_multi_label_split_csv(path)
    if not (multi_label or written_multi):
        return read_split_csv(path, allowed_labels), False
    column, delimiter = (LABELS_COLUMN, JOINER) if written_multi else ("value", delimiter)

    def check(frame, lines):
        validate_object_ids(frame["objectId"], str(path), lines, paths=True)
        validate_label_cells(frame["value"], frame["objectId"], str(path), lines, allowed_labels, delimiter)
        check_split_types(frame, path, lines)

    frame = _read_checked(path, {"objectId": "objectId", "value": column, "type": "type", "sha1": "sha1"}, {},
                          check, optional=("sha1",))
    return frame.assign(value=canonical_cells(frame["value"], delimiter)), True


# --------------------------------------------------------------------------- counts and warnings


def multi_label_counts(frame: pd.DataFrame, labels: Sequence[str]) -> dict[str, dict[str, int]]:
    """Images per part holding each label: ``{part: {label: count}}`` for train, validation, test and total."""
    types = _as_text(frame["type"]).to_numpy()
    targets = multi_hot(frame["value"], labels, "the split")
    counts = {part: dict(zip(labels, targets[types == part].sum(axis=0).astype(int).tolist())) for part in PARTS}
    counts[TOTAL] = {label: sum(counts[part][label] for part in PARTS) for label in labels}
    return counts


def images_per_part(frame: pd.DataFrame) -> dict[str, int]:
    """Images (rows) per part and in total: a multi-label image counts once, whatever its labels."""
    types = _as_text(frame["type"])
    sizes = {part: int((types == part).sum()) for part in PARTS}
    sizes[TOTAL] = len(frame)
    return sizes


def unlabelled_per_part(frame: pd.DataFrame) -> dict[str, int]:
    """Images without any label, per part and in total."""
    types = _as_text(frame["type"])
    empty = _as_text(frame["value"]).map(lambda text: not split_cell(text)).to_numpy(dtype=bool)
    counts = {part: int((empty & (types == part).to_numpy()).sum()) for part in PARTS}
    counts[TOTAL] = int(empty.sum())
    return counts


def multi_label_split_warnings(counts: dict[str, dict[str, int]], sizes: dict[str, int],
                               small: int = SMALL_PART_ROWS) -> list[str]:
    """Warnings about a multi-label split: an empty part, labels with no image in validation or
    test (their threshold and metrics cannot be measured there), few images, no training image."""
    warnings = []
    labels = list(counts[TOTAL])
    for part in ("validation", "test"):
        if sizes[part] == 0:
            warnings.append(f"the {part} part is empty: no image has a {part} key")
            continue
        absent = [label for label in labels if counts[part][label] == 0]
        if absent:
            consequence = ("its threshold stays 0.5" if part == "validation" else "its test metrics are undefined")
            warnings.append(f"label(s) {_listed(absent)} have no image in the {part} part ({consequence})")
        few = [label for label in labels if 0 < counts[part][label] < small]
        if few:
            warnings.append(f"label(s) {_listed(few)} have fewer than {small} images in the {part} part; "
                            "their metrics will be noisy")
    untrained = [label for label in labels if counts["train"][label] == 0]
    if untrained:
        warnings.append(f"label(s) {_listed(untrained)} have no training images")
    return warnings


def _listed(labels: list[str], shown: int = 5) -> str:
    text = ", ".join(map(repr, labels[:shown]))
    return text + (f" and {len(labels) - shown} more" if len(labels) > shown else "")


def one_row_per_label(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with one row per label of each image (an image without a label has none), index kept:
    what per-label checks written for single-label tables (a label emptied in a part) read."""
    sets = pd.Series(label_sets(frame["value"]), index=frame.index, dtype=object)
    return frame.assign(value=sets).explode("value").dropna(subset=["value"])
