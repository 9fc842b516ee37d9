"""The stable SHA-1 split (by the last byte of each file's SHA-1), for any number of labels (pandas only).

Every image is named by the SHA-1 of its bytes (``objectId`` = 40 hex digits + an
extension), so the last byte of that name is a stable, uniformly spread key 0..255:
adding images never moves an existing one to another part.

1. key = the last two hex digits of the name before its first dot;
2. keys 0..24 -> ``test``, 25..49 -> ``validation``, the rest -> ``train``;
3. balancing, for ``test`` and then ``validation``: m = the smallest count, among all
   labels of the file, of rows in that part (0 when a label has none there); each label
   keeps its first m rows in file order and the rest move to ``train``;
4. the result keeps the input's row order: ``objectId,value,type``.

For two labels this is row for row what the seed's own script writes.  This module never
imports TensorFlow: ``kcnn split`` and the readers below stay fast.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from keras_cnn.errors import UserError
from keras_cnn.runs import atomic_path

# Explicit ASCII classes rather than re.IGNORECASE: with IGNORECASE, Unicode folding would let
# e.g. the Kelvin sign (U+212A) pass as "k" in an extension.
OBJECT_ID_PATTERN = re.compile(r"[0-9A-Fa-f]{40}\.[0-9A-Za-z]+")

PARTS = ("train", "validation", "test")
TOTAL = "total"
DEFAULT_TEST_KEYS = range(0, 25)
DEFAULT_VALIDATION_KEYS = range(25, 50)
# A validation/test part with fewer rows per label than this gives noisy metrics.
SMALL_PART_ROWS = 10

_KEY_RANGE_PATTERN = re.compile(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?")
_INTEGER_PATTERN = re.compile(r"[+-]?\d+")
_MESSAGE_VALUE_LIMIT = 80

# Why an objectId is refused, checked in this order; the first matching hint is shown.
_OBJECT_ID_HINTS = (
    (lambda text: "/" in text or "\\" in text, "a path: give the bare file name"),
    (lambda text: ".." in text, "contains '..'"),
    (lambda text: "." not in text, "no extension"),
    (lambda text: len(text.split(".", 1)[0]) != 40, "the name before the extension must be 40 characters"),
    (lambda text: re.fullmatch(r"[0-9A-Fa-f]*", text.split(".", 1)[0]) is None,
     "the name before the extension must be hex digits 0-9, a-f"),
    (lambda text: True, "the extension must be letters and digits only, e.g. .jpg"),
)


def _shorten(text: str) -> str:
    """The value as shown in a message: long values are cut so the message stays one line."""
    text = text.replace("\n", "\\n").replace("\r", "\\r")
    if len(text) > _MESSAGE_VALUE_LIMIT:
        return text[: _MESSAGE_VALUE_LIMIT - 3] + "..."
    return text


def _as_text(values: pd.Series | Iterable) -> pd.Series:
    """Values as stripped strings (object dtype), keeping the index; missing values become ''."""
    series = values if isinstance(values, pd.Series) else pd.Series(list(values), dtype=object)
    series = series.astype(object)
    texts = series.where(series.notna(), "").astype(str).str.strip()
    return texts.astype(object)


def _line_numbers(count: int, line_numbers: Sequence[int] | None) -> Sequence[int]:
    # Without a file behind the values, number them as a CSV would: header = line 1.
    return range(2, count + 2) if line_numbers is None else line_numbers


def validate_object_ids(ids: pd.Series, source: str, line_numbers: Sequence[int] | None = None) -> None:
    """Refuse the first objectId that is not ``<40 hex digits>.<extension>``, then duplicates.

    ``source`` names the input in the message (a file name); rows are numbered as a user
    sees them in the file (header = line 1, first data row = line 2) unless the reader
    passes the real ``line_numbers`` (they differ when the file has blank lines).
    Duplicates are compared case-insensitively (the same SHA-1 is the same image).
    """
    texts = _as_text(ids).reset_index(drop=True)
    lines = _line_numbers(len(texts), line_numbers)
    # Check every row, then explain only the first offender (the hints are slower).
    bad = ~texts.map(lambda text: OBJECT_ID_PATTERN.fullmatch(text) is not None).to_numpy(dtype=bool)
    if bad.any():
        position = int(np.flatnonzero(bad)[0])
        text, line = texts[position], lines[position]
        if text == "":
            raise UserError(f"{source} row {line}: objectId is empty")
        hint = next(hint for test, hint in _OBJECT_ID_HINTS if test(text))
        raise UserError(f"{source} row {line}: objectId '{_shorten(text)}' "
                        f"is not 40 hex digits + extension ({hint})")
    folded = texts.str.lower()
    duplicated = folded.duplicated().to_numpy()
    if duplicated.any():
        position = int(np.flatnonzero(duplicated)[0])
        first = int(np.flatnonzero((folded == folded[position]).to_numpy())[0])
        raise UserError(f"{source} row {lines[position]}: objectId '{_shorten(texts[position])}' "
                        f"duplicates row {lines[first]}")


def validate_labels(values: pd.Series, ids: pd.Series, source: str,
                    line_numbers: Sequence[int] | None = None) -> None:
    """Refuse the first missing or empty label, naming its row and objectId."""
    empty = (_as_text(values) == "").to_numpy()
    if empty.any():
        position = int(np.flatnonzero(empty)[0])
        line = _line_numbers(len(empty), line_numbers)[position]
        object_id = _as_text(ids).iloc[position]
        raise UserError(f"{source} row {line}: the label (value) of objectId "
                        f"'{_shorten(object_id)}' is missing")


def _read_csv_columns(path: str | os.PathLike, wanted: dict[str, str],
                      option_of: dict[str, str]) -> tuple[pd.DataFrame, list[int]]:
    """Read the ``wanted`` columns (output name -> column in the file) as stripped strings.

    Returns the frame (RangeIndex, file order) and the file line of every row, so messages
    can name the line a user sees.  The csv module rather than ``pandas.read_csv``: pandas
    silently turns extra fields into an index and renumbers rows around blank lines.
    """
    path = Path(path)
    source = str(path)
    try:
        # utf-8-sig: a byte-order mark (Excel) would otherwise become part of the first column name.
        handle = path.open("r", encoding="utf-8-sig", newline="")
    except FileNotFoundError:
        raise UserError(f"{source} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"{source} is a directory, not a CSV file") from None
    except OSError as error:
        raise UserError(f"cannot read {source}: {error.strerror}") from None
    rows: list[list[str]] = []
    lines: list[int] = []
    try:
        with handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            while header is not None and not any(name.strip() for name in header):
                header = next(reader, None)  # leading blank lines
            if header is None:
                raise UserError(f"{source} is empty (expected a header line such as "
                                f"'{','.join(wanted.values())}')")
            header = [name.strip() for name in header]
            positions = {}
            for output_name, column in wanted.items():
                if column not in header:
                    option = option_of.get(output_name)
                    advice = f"; use {option} to name another" if option else ""
                    raise UserError(f"{source} has no column '{column}' "
                                    f"(columns: {', '.join(header)}){advice}")
                positions[output_name] = header.index(column)
            for row in reader:
                if not any(field.strip() for field in row):
                    continue  # blank line
                if len(row) != len(header):
                    raise UserError(f"{source} row {reader.line_num}: {len(row)} fields, "
                                    f"but the header has {len(header)}: '{_shorten(','.join(row))}'")
                rows.append([row[position].strip() for position in positions.values()])
                lines.append(reader.line_num)
    except UnicodeDecodeError as error:
        raise UserError(
            f"cannot read {source}: not UTF-8 text ({error.reason} at byte {error.start})"
        ) from None
    except csv.Error as error:
        raise UserError(f"cannot read {source}: {error}") from None
    if not rows:
        raise UserError(f"{source} has a header but no data rows")
    frame = pd.DataFrame(rows, columns=list(wanted), dtype=object)
    return frame, lines


def read_label_csv(path: str | os.PathLike, id_column: str = "objectId",
                   label_column: str = "value") -> pd.DataFrame:
    """Read and check a ``label.csv``; return columns ``objectId`` and ``value`` (strings).

    Rows stay in file order.  Raises ``UserError`` (naming the file and row) for a missing
    file or column, an empty file, an objectId that is not ``<sha1>.<extension>``, a
    duplicate objectId, or a missing label.
    """
    if id_column == label_column:
        raise UserError(f"the id column and the label column are both '{id_column}'")
    frame, lines = _read_csv_columns(
        path, {"objectId": id_column, "value": label_column},
        {"objectId": "--id-column", "value": "--label-column"},
    )
    validate_object_ids(frame["objectId"], str(path), lines)
    validate_labels(frame["value"], frame["objectId"], str(path), lines)
    return frame


def read_split_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read and check a split CSV; return columns ``objectId``, ``value`` (str) and ``type``.

    Checked like :func:`read_label_csv`, and every ``type`` must be train, validation or test.
    """
    frame, lines = _read_csv_columns(path, {"objectId": "objectId", "value": "value", "type": "type"}, {})
    validate_object_ids(frame["objectId"], str(path), lines)
    validate_labels(frame["value"], frame["objectId"], str(path), lines)
    for part, line in zip(frame["type"], lines):
        if part not in PARTS:
            raise UserError(f"{path} row {line}: type '{_shorten(part)}' is not one of {', '.join(PARTS)}")
    return frame


def write_split_csv(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``objectId,value,type`` (in the frame's row order) atomically; return the path."""
    missing = [column for column in ("objectId", "value", "type") if column not in frame.columns]
    if missing:
        raise UserError(f"cannot write a split without the column(s) {', '.join(missing)}")
    with atomic_path(path) as temporary:
        frame[["objectId", "value", "type"]].to_csv(temporary, index=False, lineterminator="\n")
    return Path(path)


def class_names(values: Iterable) -> list[str]:
    """Sorted distinct labels as strings: numeric order when every one is an integer, else lexical.

    So ``["10", "2", "1"]`` gives ``["1", "2", "10"]`` and ``["cat", "dog"]`` stays lexical.
    This order is the class index order (``labels.txt``).
    """
    texts = _as_text(values if isinstance(values, pd.Series) else pd.Series(list(values), dtype=object))
    distinct = sorted(text for text in pd.unique(texts.to_numpy()) if text != "")
    if distinct and all(_INTEGER_PATTERN.fullmatch(text) for text in distinct):
        # Ties such as "1" and "01" keep a stable, lexical order among themselves.
        return sorted(distinct, key=lambda text: (int(text), text))
    return distinct


def parse_key_range(text: str, name: str = "key range") -> range:
    """Parse ``"0-24"`` (inclusive) or ``"7"`` into a range of split keys; ``"none"`` = no keys.

    Raises ``UserError`` naming ``name`` (e.g. ``--test-keys``) for bad text, a reversed
    range, or keys outside 0..255.
    """
    stripped = str(text).strip()
    if stripped.lower() in ("", "none"):
        return range(0)
    match = _KEY_RANGE_PATTERN.fullmatch(stripped)
    if match is None:
        raise UserError(f"{name} '{text}' is not a key range such as 0-24 (keys 0..255, or 'none')")
    first = int(match.group(1))
    last = int(match.group(2)) if match.group(2) is not None else first
    if last < first:
        raise UserError(f"{name} '{text}' is reversed: write {last}-{first}")
    if last > 255:
        raise UserError(f"{name} '{text}' goes past 255: a key is one byte (0..255)")
    return range(first, last + 1)


def check_key_ranges(test_keys: Iterable[int], validation_keys: Iterable[int]) -> tuple[set[int], set[int]]:
    """Return both key sets, refusing keys outside 0..255 and keys in both parts."""
    test, validation = set(test_keys), set(validation_keys)
    for name, keys in (("test", test), ("validation", validation)):
        outside = sorted(key for key in keys if not (isinstance(key, (int, np.integer)) and 0 <= key <= 255))
        if outside:
            raise UserError(f"{name} keys must be integers 0..255, got {outside[:5]}")
    overlap = sorted(test & validation)
    if overlap:
        shown = f"{overlap[0]}-{overlap[-1]}" if len(overlap) > 1 else str(overlap[0])
        raise UserError(f"the test and validation keys overlap ({len(overlap)} keys in {shown})")
    return test, validation


def split_keys(ids: pd.Series) -> np.ndarray:
    """The split key (0..255) of each objectId: its last two hex digits before the first dot."""
    last_two = _as_text(ids).str.split(".", n=1).str[0].str[-2:]
    return np.array([int(text, 16) for text in last_two], dtype=np.int64)


def split_labels(frame: pd.DataFrame, test_keys: Iterable[int] = DEFAULT_TEST_KEYS,
                 validation_keys: Iterable[int] = DEFAULT_VALIDATION_KEYS, balance: bool = True,
                 source: str = "labels") -> pd.DataFrame:
    """Assign every row to train, validation or test; return a copy with a ``type`` column.

    ``frame`` needs columns ``objectId`` and ``value`` (other columns are kept).  Rows keep
    their order and index (which need not be 0..n-1); ``objectId`` and ``value`` come back as
    stripped strings.  The frame is checked like :func:`read_label_csv` (``source`` names it
    in messages).  See the module docstring for the algorithm.
    """
    missing = [column for column in ("objectId", "value") if column not in frame.columns]
    if missing:
        raise UserError(f"{source} has no column(s) {', '.join(missing)} "
                        f"(columns: {', '.join(map(str, frame.columns))})")
    if len(frame) == 0:
        raise UserError(f"{source} has no rows")
    test, validation = check_key_ranges(test_keys, validation_keys)
    ids = _as_text(frame["objectId"])
    values = _as_text(frame["value"])
    validate_object_ids(ids, source)
    validate_labels(values, ids, source)

    keys = split_keys(ids)
    types = np.full(len(frame), "train", dtype=object)
    types[np.isin(keys, sorted(test))] = "test"
    types[np.isin(keys, sorted(validation))] = "validation"
    if balance:
        labels = class_names(values)
        positional_values = pd.Series(values.to_numpy(), dtype=object)
        for part in ("test", "validation"):
            in_part = types == part
            part_values = positional_values[in_part]
            counts = part_values.value_counts()
            smallest = min(int(counts.get(label, 0)) for label in labels)
            # Rank of each row among the rows of its label in this part, in file order.
            rank = part_values.groupby(part_values, sort=False).cumcount().to_numpy()
            surplus = np.flatnonzero(in_part)[rank >= smallest]
            types[surplus] = "train"

    result = frame.copy()
    # Plain arrays: assigning Series would align on the index, which may repeat labels.
    result["objectId"] = ids.to_numpy()
    result["value"] = values.to_numpy()
    result["type"] = types
    return result


def split_counts(split_frame: pd.DataFrame, labels: Sequence[str] | None = None) -> dict[str, dict[str, int]]:
    """Rows per part and label: ``{part: {label: count}}`` for train, validation, test and total.

    Labels come in the order given (default :func:`class_names`); a value of the frame that
    is not in ``labels`` is added at the end rather than dropped.  The inner dictionaries
    hold labels only (a label may itself be called "total"); a part's size is the sum of
    its values.
    """
    values = _as_text(split_frame["value"]).to_numpy()
    types = _as_text(split_frame["type"]).to_numpy()
    present = class_names(pd.unique(values))
    ordered = [str(label) for label in labels] if labels is not None else present
    known = set(ordered)
    ordered += [label for label in present if label not in known]
    pairs = pd.Series(1, index=pd.MultiIndex.from_arrays([types, values])).groupby(level=[0, 1]).size()
    found = {key: int(count) for key, count in pairs.items()}
    counts = {part: {label: found.get((part, label), 0) for label in ordered} for part in PARTS}
    counts[TOTAL] = {label: sum(counts[part][label] for part in PARTS) for label in ordered}
    return counts


def part_sizes(counts: dict[str, dict[str, int]]) -> dict[str, int]:
    """Rows per part (and in total) from :func:`split_counts`."""
    return {part: sum(by_label.values()) for part, by_label in counts.items()}


def split_warnings(counts: dict[str, dict[str, int]],
                   unbalanced_counts: dict[str, dict[str, int]] | None = None,
                   small: int = SMALL_PART_ROWS) -> list[str]:
    """Plain-language warnings about a split: an empty part, too few rows per label, a
    label without training rows.  With ``unbalanced_counts`` (the same split with
    ``balance=False``) an empty part also says which label emptied it.
    """
    warnings = []
    labels = list(counts[TOTAL])
    for part in ("validation", "test"):
        by_label = counts[part]
        if sum(by_label.values()) == 0:
            before = unbalanced_counts[part] if unbalanced_counts is not None else None
            if before is not None and sum(before.values()) > 0:
                absent = [label for label in labels if before.get(label, 0) == 0]
                warnings.append(
                    f"the {part} part is empty: label(s) {', '.join(map(repr, absent))} have no row with a "
                    f"{part} key, so balancing moved all {sum(before.values())} {part} rows to train "
                    f"(--no-balance keeps them)"
                )
            else:
                warnings.append(f"the {part} part is empty: no objectId has a {part} key")
            continue
        few = {label: count for label, count in by_label.items() if count < small}
        if few:
            if len(few) == len(by_label) and len(set(few.values())) == 1:  # balanced: one number says it
                listed = f"{next(iter(few.values()))} per label"
            else:
                listed = ", ".join(f"{label!r}: {count}" for label, count in few.items())
            warnings.append(f"the {part} part is tiny (fewer than {small} rows per label: {listed}); "
                            f"its metrics will be noisy")
    untrained = [label for label in labels if counts["train"][label] == 0]
    if untrained:
        warnings.append(f"label(s) {', '.join(map(repr, untrained))} have no training rows")
    return warnings


def format_counts(counts: dict[str, dict[str, int]], transpose_after: int = 8) -> str:
    """The count table as text, like the seed's printout.

    Rows are the parts (train, validation, test, total), columns the labels and a total.
    With more than ``transpose_after`` labels the table is turned (a row per label) so it
    still fits a terminal.
    """
    labels = list(counts[TOTAL])
    sizes = part_sizes(counts)
    parts = (*PARTS, TOTAL)
    if len(labels) > transpose_after:
        header = ["label", *parts]
        body = [[label, *(str(counts[part][label]) for part in parts)] for label in labels]
        body.append([TOTAL, *(str(sizes[part]) for part in parts)])
    else:
        header = ["part", *labels, TOTAL]
        body = [[part, *(str(counts[part][label]) for label in labels), str(sizes[part])] for part in parts]
    table = [header, *body]
    widths = [max(len(row[column]) for row in table) for column in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) if column == 0 else cell.rjust(width)
                  for column, (cell, width) in enumerate(zip(row, widths))).rstrip()
        for row in table
    ]
    return "\n".join(lines)
