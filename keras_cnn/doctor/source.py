"""What ``kcnn doctor`` examines: any source ``kcnn split`` reads, or a split CSV, as one table.

Folder layouts and label CSVs are split by the same rule and options as ``kcnn split``; a
split CSV (a file with a ``type`` column) keeps its parts.  Unlike the training readers,
identical files are kept (every copy, with its part): finding them is doctor's job.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import pandas as pd

from keras_cnn.data.collection import read_collection, read_split_collection, split_collection
from keras_cnn.data.multilabel import JOINER, is_multi_label_split_csv
from keras_cnn.data.split import check_key_ranges, class_names, parse_key_range, sha1_of_name
from keras_cnn.errors import UserError

SINGLE_LABEL_ONLY = "kcnn doctor checks single-label data for now"


@dataclass
class DoctorData:
    """The images doctor examines."""

    table: pd.DataFrame      # objectId, value, type, sha1 (every copy of identical files kept)
    images: str              # the folder objectIds are relative to
    labels: list[str]        # class names in class-index order
    found: str               # the "found ..." line of the reader


def is_split_csv(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a CSV whose header names objectId, value and type (a split CSV)."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            header = next(csv.reader(handle), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False  # the reader says what is wrong with it
    names = {name.strip() for name in header}
    return {"objectId", "value", "type"} <= names


def read_doctor_source(source: str, images: str | None = None, layout: str | None = None,
                       id_column: str = "objectId", label_column: str = "value",
                       allowed_labels: Iterable[str] = (), test_keys: str = "0-24",
                       validation_keys: str = "25-49", balance: bool = True,
                       list_prefix: str | None = None) -> DoctorData:
    """Read ``source`` (see the module docstring) into a :class:`DoctorData`.

    Refuses multi-label data with one line: a multi-label split CSV (``objectId,labels,type``)
    or rows whose labels are joined by ``;`` (doctor checks single-label data).
    """
    allowed_labels = list(allowed_labels)
    if is_multi_label_split_csv(source):
        raise UserError(f"{source} is a multi-label split CSV (objectId,labels,type): {SINGLE_LABEL_ONLY}")
    if is_split_csv(source) and layout in (None, "csv"):
        if images is None:
            raise UserError(f"{source} is a split CSV: give --images DIR (the folder its paths are relative to)")
        if not Path(images).is_dir():
            raise UserError(f"image folder {images} does not exist or is not a folder")
        collection = read_split_collection(source, images, allowed_labels, list_prefix, hash_contents=True)
        table = collection.table
    else:
        test = parse_key_range(test_keys, "--test-keys")
        validation = parse_key_range(validation_keys, "--validation-keys")
        check_key_ranges(test, validation)
        collection = read_collection(source, images=images, layout=layout, id_column=id_column,
                                     label_column=label_column, allowed_labels=allowed_labels,
                                     list_prefix=list_prefix, keep_duplicates=True)
        if collection.images is None:
            raise UserError(f"kcnn doctor reads the images {source} names: give --images DIR (the folder they are in)")
        table = split_collection(collection, test, validation, balance, allowed_labels)
        if collection.named_by_sha1:
            # Files named by their SHA-1: the name is the content hash.
            table = table.assign(sha1=[sha1_of_name(object_id) for object_id in table["objectId"]])
    _refuse_multi_label(table, source)
    table = table[["objectId", "value", "type", "sha1"]].reset_index(drop=True)
    return DoctorData(table=table, images=str(collection.images), labels=class_names(table["value"]),
                      found=collection.describe())


def _refuse_multi_label(table: pd.DataFrame, source: str) -> None:
    joined = table["value"].astype(str).str.contains(JOINER, regex=False)
    if joined.any():
        row = table[joined].iloc[0]
        raise UserError(f"{source} looks multi-label ({row['objectId']} has the labels '{row['value']}'): "
                        f"{SINGLE_LABEL_ONLY}")
