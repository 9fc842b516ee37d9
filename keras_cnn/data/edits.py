"""``--exclude FILE`` and ``--relabel FILE``: recorded changes to what a collection holds.

An exclude file names images to leave out of every part, one objectId (the path under the
image folder, as in a split CSV) per line; blank lines and lines starting with ``#`` are
skipped.  ``kcnn doctor`` writes one (``exclude.txt``).  A relabel file is a label CSV
(``objectId,value``) whose labels replace the read ones.  Both are applied by the readers
(:mod:`keras_cnn.data.collection`) before hashing and the duplicate check, so excluding
one of two identical images under two labels, or relabelling it, settles the conflict.
The image files themselves are never touched.  Like ``split.py``, no TensorFlow here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import pandas as pd

from keras_cnn.data.multilabel import read_multi_label_csv
from keras_cnn.data.split import OBJECT_ID_PATTERN, path_problem, read_label_csv
from keras_cnn.errors import UserError


@dataclass(frozen=True)
class DataEdits:
    """Images to leave out and labels to replace, with the files they came from."""

    exclude: frozenset[str] = frozenset()
    relabel: dict[str, str] = field(default_factory=dict)
    exclude_source: str | None = None
    relabel_source: str | None = None


@dataclass
class EditReport:
    """What applying :class:`DataEdits` to a table did."""

    excluded: int = 0
    relabelled: int = 0
    unmatched: list[str] = field(default_factory=list)   # listed paths that are not in the table

    def describe(self) -> str:
        """``"3 excluded, 2 relabelled"`` (empty when nothing changed)."""
        parts = [f"{self.excluded:,} excluded" if self.excluded else "",
                 f"{self.relabelled:,} relabelled" if self.relabelled else ""]
        return ", ".join(part for part in parts if part)


def read_exclude_file(path: str | os.PathLike) -> frozenset[str]:
    """The objectIds an exclude file lists (see the module docstring); a bad line is a ``UserError``."""
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        raise UserError(f"--exclude: {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"--exclude: {path} is a folder; give a text file of paths, one per line") from None
    except UnicodeDecodeError as error:
        raise UserError(f"--exclude: cannot read {path}: not UTF-8 text ({error.reason})") from None
    except OSError as error:
        raise UserError(f"--exclude: cannot read {path}: {error.strerror}") from None
    listed = []
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        problem = path_problem(text)
        if problem:
            raise UserError(f"--exclude: {path} line {number}: '{text[:80]}' is not a path under the image "
                            f"folder ({problem})")
        listed.append(text)
    return frozenset(listed)


def read_relabel_file(path: str | os.PathLike, allowed_labels: Iterable[str] = (),
                      delimiter: str | None = None) -> dict[str, str]:
    """objectId -> new label from a relabel CSV (``objectId,value``, checked like a label CSV).

    ``delimiter``: multi-label data; each value is the image's whole new set of labels,
    joined by ``delimiter`` (kcnn's cell, see :mod:`keras_cnn.data.multilabel`).
    """
    if not Path(path).is_file():
        raise UserError(f"--relabel: {path} does not exist or is not a file")
    if delimiter is not None:
        frame = read_multi_label_csv(path, paths=True, allowed_labels=allowed_labels, delimiter=delimiter)
    else:
        frame = read_label_csv(path, paths=True, allowed_labels=allowed_labels)
    return dict(zip(frame["objectId"], frame["value"]))


def read_data_edits(exclude: str | os.PathLike | None, relabel: str | os.PathLike | None,
                    allowed_labels: Iterable[str] = (), delimiter: str | None = None) -> DataEdits | None:
    """The edits named by ``--exclude`` and ``--relabel`` (None when neither is given); ``delimiter``:
    the relabel file holds multi-label cells (see :func:`read_relabel_file`)."""
    if not exclude and not relabel:
        return None
    return DataEdits(exclude=read_exclude_file(exclude) if exclude else frozenset(),
                     relabel=read_relabel_file(relabel, allowed_labels, delimiter) if relabel else {},
                     exclude_source=os.fspath(exclude) if exclude else None,
                     relabel_source=os.fspath(relabel) if relabel else None)


def _matching_key(object_ids: Iterable[str]) -> pd.Series:
    """How listed paths are compared with a table's: bare SHA-1 names in lower case (the same
    SHA-1 is the same image, as the readers compare them), other paths as written."""
    texts = pd.Series([str(text).strip() for text in object_ids], dtype=object)
    return texts.map(lambda text: text.lower() if OBJECT_ID_PATTERN.fullmatch(text) else text)


def apply_edits(table: pd.DataFrame, edits: DataEdits | None) -> tuple[pd.DataFrame, EditReport]:
    """``table`` (objectId, value, ...) without the excluded rows and with the new labels.

    Rows keep their order; the index is renumbered.  Listed paths that name no row are
    reported (``unmatched``), not refused: an exclude list may cover several folders.
    """
    report = EditReport()
    if edits is None:
        return table, report
    keys = _matching_key(table["objectId"])
    listed = set(_matching_key(sorted(edits.exclude)))
    relabel = dict(zip(_matching_key(edits.relabel), edits.relabel.values()))
    present = set(keys)
    report.unmatched = sorted((listed | set(relabel)) - present)
    dropped = keys.isin(listed).to_numpy()
    report.excluded = int(dropped.sum())
    kept = table[~dropped].reset_index(drop=True)
    kept_keys = keys[~dropped].reset_index(drop=True)
    new_values = kept_keys.map(relabel)
    changed = (new_values.notna() & (new_values != kept["value"])).to_numpy()
    report.relabelled = int(changed.sum())
    if changed.any():
        values = kept["value"].to_numpy(dtype=object).copy()
        values[changed] = new_values[changed].to_numpy(dtype=object)
        kept = kept.assign(value=values)
    return kept, report
