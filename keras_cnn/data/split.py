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

For two labels this is row for row what the original pandas split script writes.  This module never
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

from keras_cnn.choices import Part, names
from keras_cnn.errors import UserError
from keras_cnn.io import atomic_path, check_input_file, normalize_label

# Explicit ASCII classes rather than re.IGNORECASE: with IGNORECASE, Unicode folding would let
# e.g. the Kelvin sign (U+212A) pass as "k" in an extension.
OBJECT_ID_PATTERN = re.compile(r"[0-9A-Fa-f]{40}\.[0-9A-Za-z]+")
# A file name whose part before the first dot is a SHA-1 (a relative path may end in one).
SHA1_NAME_PATTERN = re.compile(r"(?:.*/)?([0-9A-Fa-f]{40})\.[^/]*")
# Characters no objectId or label may hold: C0 controls (NUL, tab, newline...) and DEL.
_CONTROL_PATTERN = r"[\x00-\x1f\x7f]"
# Labels that are what spreadsheets and pandas write for a missing value: almost always a
# mistake, so refused unless the user names them with --allow-label.
MISSING_LOOKING_LABELS = ("nan", "NaN", "None", "null", "NA")
_MISSING_FOLDED = {label.lower() for label in MISSING_LOOKING_LABELS}

PARTS = names(Part)
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


# Why a relative path (objectId of a label CSV with --images, or of a split CSV) is refused.
_PATH_HINTS = (
    (lambda text: re.search(_CONTROL_PATTERN, text) is not None, "it contains a control character"),
    (lambda text: "\\" in text, "a backslash: separate folders with /"),
    (lambda text: text.startswith("/"), "an absolute path: give it relative to the image folder"),
    (lambda text: re.match(r"[A-Za-z]:", text) is not None, "a drive letter: give it relative to the image folder"),
    (lambda text: ".." in text.split("/"), "contains '..'"),
    (lambda text: any(part in ("", ".") for part in text.split("/")), "an empty or '.' folder name"),
)


# A plain relative path: '/'-separated names, none empty, '.' or '..', no backslash, no control
# character, not starting with a drive letter.  One regex checks a million rows quickly;
# path_problem explains the first that fails.
_SAFE_PATH_PATTERN = (r"(?![A-Za-z]:)(?:(?!\.\.?/)[^/\\\x00-\x1f\x7f]+/)*"
                      r"(?!\.\.?$)[^/\\\x00-\x1f\x7f]+")


def is_safe_path(texts: pd.Series) -> np.ndarray:
    """Which of ``texts`` are plain relative paths (see :func:`path_problem`), as a bool array."""
    return texts.str.fullmatch(_SAFE_PATH_PATTERN).fillna(False).to_numpy(dtype=bool)


def path_problem(text: str) -> str | None:
    """Why ``text`` is not a plain relative path under the image folder (None when it is)."""
    return next((hint for test, hint in _PATH_HINTS if test(text)), None)


def sha1_of_name(object_id: str) -> str | None:
    """The SHA-1 a file name spells (lower case), when the name before its first dot is 40 hex digits."""
    match = SHA1_NAME_PATTERN.fullmatch(object_id)
    return match.group(1).lower() if match else None


def _shorten(text: str) -> str:
    """The value as shown in a message: long values are cut so the message stays one line."""
    text = text.replace("\n", "\\n").replace("\r", "\\r")
    if len(text) > _MESSAGE_VALUE_LIMIT:
        return text[: _MESSAGE_VALUE_LIMIT - 3] + "..."
    return text


def _printable_ascii(texts: list[str]) -> bool:
    """True when no text holds whitespace, a control character or anything beyond ASCII.

    Such texts need no stripping and hold no control character; checked on the bytes of all
    of them at once, as numpy compares tens of megabytes in milliseconds.
    """
    joined = "".join(texts)
    if not joined.isascii():
        return False
    codes = np.frombuffer(joined.encode("ascii"), dtype=np.uint8)
    return not ((codes <= 0x20) | (codes >= 0x7F)).any()


def _as_text(values: pd.Series | Iterable) -> pd.Series:
    """Values as stripped strings (object dtype), keeping the index; missing values become ''."""
    series = values if isinstance(values, pd.Series) else pd.Series(list(values), dtype=object)
    series = series.astype(object)
    if pd.api.types.infer_dtype(series, skipna=False) == "string":
        # Already strings (every reader's output): only stripping is left, and usually not even
        # that (a per-value strip costs seconds a million rows).
        if _printable_ascii(series.tolist()):
            return series
        return series.str.strip().astype(object)
    texts = series.where(series.notna(), "").astype(str).str.strip()
    return texts.astype(object)


def _line_numbers(count: int, line_numbers: Sequence[int] | None) -> Sequence[int]:
    # Without a file behind the values, number them as a CSV would: header = line 1.
    return range(2, count + 2) if line_numbers is None else line_numbers


def validate_object_ids(ids: pd.Series, source: str, line_numbers: Sequence[int] | None = None,
                        paths: bool = False) -> None:
    """Refuse the first objectId that is not ``<40 hex digits>.<extension>``, then duplicates.

    With ``paths`` an objectId may also be a relative path under the image folder
    (``cat/001.jpg``); ``..``, absolute paths, drive letters, backslashes and control
    characters are still refused.  ``source`` names the input in the message (a file name);
    rows are numbered as a user sees them in the file (header = line 1, first data row =
    line 2) unless the reader passes the real ``line_numbers`` (they differ when the file
    has blank lines).  SHA-1 names are compared case-insensitively (the same SHA-1 is the
    same image), paths as written.
    """
    texts = _as_text(ids).reset_index(drop=True)
    lines = _line_numbers(len(texts), line_numbers)
    # Check every row, then explain only the first offender (the hints are slower).
    is_sha1_name = _sha1_names(texts)
    bad = ~is_sha1_name
    if paths and bad.any():
        bad[bad] = ~is_safe_path(texts[bad])
    if bad.any():
        position = int(np.flatnonzero(bad)[0])
        text, line = texts[position], lines[position]
        if text == "":
            raise UserError(f"{source} row {line}: objectId is empty")
        if paths:
            raise UserError(f"{source} row {line}: objectId '{_shorten(text)}' is not a relative path "
                            f"under the image folder ({path_problem(text)})")
        hint = next(hint for test, hint in _OBJECT_ID_HINTS if test(text))
        raise UserError(f"{source} row {line}: objectId '{_shorten(text)}' "
                        f"is not 40 hex digits + extension ({hint})")
    folded = texts.where(~is_sha1_name, texts.str.lower())
    duplicated = folded.duplicated().to_numpy()
    if duplicated.any():
        position = int(np.flatnonzero(duplicated)[0])
        first = int(np.flatnonzero((folded == folded[position]).to_numpy())[0])
        raise UserError(f"{source} row {lines[position]}: objectId '{_shorten(texts[position])}' "
                        f"duplicates row {lines[first]}")


def label_problem(label: str, allowed_labels: Iterable[str] = ()) -> str | None:
    """Why ``label`` cannot be a class name (None when it can): empty, a control character, or
    a value that looks like missing data and is not in ``allowed_labels``."""
    if label == "":
        return "is empty"
    if re.search(_CONTROL_PATTERN, label):
        return "contains a control character (newline, tab...)"
    if label.lower() in _MISSING_FOLDED and label not in {str(item) for item in allowed_labels}:
        return f"looks like missing data; if it is a real class, pass --allow-label {label}"
    return None


def validate_labels(values: pd.Series, ids: pd.Series, source: str,
                    line_numbers: Sequence[int] | None = None, allowed_labels: Iterable[str] = ()) -> None:
    """Refuse the first missing, empty or unusable label, naming its row and objectId.

    Unusable: a control character (a newline would break ``labels.txt``), or a value that
    looks like missing data (``nan``, ``NaN``, ``None``, ``null``, ``NA``, any case) unless
    ``allowed_labels`` names it (``--allow-label``).
    """
    texts = _as_text(values).reset_index(drop=True)
    # Labels repeat: judge each distinct one once, then find the first row holding a bad one.
    bad = [label for label in pd.unique(texts.to_numpy()) if label_problem(label, allowed_labels)]
    if not bad:
        return
    position = int(np.flatnonzero(texts.isin(bad).to_numpy(dtype=bool))[0])
    label = texts[position]
    line = _line_numbers(len(texts), line_numbers)[position]
    object_id = _shorten(_as_text(ids).iloc[position])
    if label == "":
        raise UserError(f"{source} row {line}: the label (value) of objectId '{object_id}' is missing")
    raise UserError(f"{source} row {line}: the label '{_shorten(label)}' of objectId '{object_id}' "
                    f"{label_problem(label, allowed_labels)}")


def read_csv_columns(path: str | os.PathLike, wanted: dict[str, str],
                     option_of: dict[str, str], optional: Iterable[str] = ()) -> tuple[pd.DataFrame, list[int]]:
    """Read the ``wanted`` columns (output name -> column in the file) as stripped strings.

    Output names in ``optional`` may be absent from the file (the frame then lacks them).

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
                if column not in header and output_name in set(optional):
                    continue
                if column not in header and _looks_like_data(header):
                    raise UserError(f"{source} has no header line: its first line '{_shorten(','.join(header))}' "
                                    f"names a file; add a first line naming the columns, such as "
                                    f"'{','.join(wanted.values())}'")
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
    frame = pd.DataFrame(rows, columns=list(positions), dtype=object)
    return frame, lines


# A field of a first line that names a file (a path, an image's name, a bare SHA-1) is data, not a column name.
_FILE_FIELD = re.compile(r"[/\\]|\.(?:jpe?g|png|bmp|gif|webp|tiff?)$|^[0-9a-f]{40}$", re.IGNORECASE)


def _looks_like_data(header: Sequence[str]) -> bool:
    """Whether a CSV's first line is a data row (a file name in it) rather than a header."""
    return any(_FILE_FIELD.search(field) for field in header)


def _read_csv_fast(path: str | os.PathLike, wanted: dict[str, str], optional: Iterable[str]) -> pd.DataFrame | None:
    """The ``wanted`` columns read by pandas' C parser (a million rows in about a second), or
    None when the file is anything but plain (the careful reader then finds and names the problem)."""
    try:
        raw = pd.read_csv(path, dtype=object, keep_default_na=False, na_filter=False, encoding="utf-8-sig",
                          skip_blank_lines=True, engine="c")
    except Exception:  # noqa: BLE001 - any trouble: the careful reader says what it is
        return None
    raw.columns = [str(name).strip() for name in raw.columns]
    if not isinstance(raw.index, pd.RangeIndex) or raw.empty or raw.isna().any().any():
        return None  # extra fields became an index, or a short row left holes
    present = {name: column for name, column in wanted.items() if column in raw.columns}
    if any(name not in present and name not in set(optional) for name in wanted):
        return None
    return pd.DataFrame({name: _as_text(raw[column]).to_numpy() for name, column in present.items()}, dtype=object)


def _read_checked(path: str | os.PathLike, wanted: dict[str, str], option_of: dict[str, str],
                  check, optional: Iterable[str] = ()) -> pd.DataFrame:
    """Read ``wanted`` columns and ``check(frame, line_numbers)`` them: fast first, carefully on doubt.

    When the fast reader cannot read the file or its rows fail the check, the file is read
    again with the csv module, so the message names the line a user sees.
    """
    check_input_file(path, "the CSV")   # a named pipe would hang the read
    frame = _read_csv_fast(path, wanted, optional)
    if frame is not None:
        try:
            check(frame, None)
            return frame
        except UserError:
            pass
    frame, lines = read_csv_columns(path, wanted, option_of, optional)
    check(frame, lines)
    return frame


def normalize_labels(values: pd.Series) -> pd.Series:
    """Labels (strings) Unicode-normalised (NFC), keeping the index; all-ASCII labels come back as they are."""
    texts = values.tolist()
    if "".join(texts).isascii():
        return values
    return pd.Series([normalize_label(text) for text in texts], index=values.index, dtype=object)


def read_label_csv(path: str | os.PathLike, id_column: str = "objectId", label_column: str = "value",
                   paths: bool = False, allowed_labels: Iterable[str] = ()) -> pd.DataFrame:
    """Read and check a ``label.csv``; return columns ``objectId`` and ``value`` (strings, labels NFC).

    Rows stay in file order.  Raises ``UserError`` (naming the file and row) for a missing
    file or column, an empty file, an objectId that is not ``<sha1>.<extension>`` (with
    ``paths``: nor a relative path under the image folder), a duplicate objectId, or a
    missing or unusable label (see :func:`validate_labels`).
    """
    if id_column == label_column:
        raise UserError(f"the id column and the label column are both '{id_column}'")

    def check(frame, lines):
        validate_object_ids(frame["objectId"], str(path), lines, paths=paths)
        validate_labels(frame["value"], frame["objectId"], str(path), lines, allowed_labels)

    frame = _read_checked(path, {"objectId": id_column, "value": label_column},
                          {"objectId": "--id-column", "value": "--label-column"}, check)
    return frame.assign(value=normalize_labels(frame["value"]))


def read_split_csv(path: str | os.PathLike, allowed_labels: Iterable[str] = ()) -> pd.DataFrame:
    """Read and check a split CSV; return columns ``objectId``, ``value``, ``type`` (and ``sha1`` if present).

    Checked like :func:`read_label_csv` (objectIds may be relative paths), and every
    ``type`` must be train, validation or test.
    """
    def check(frame, lines):
        validate_object_ids(frame["objectId"], str(path), lines, paths=True)
        validate_labels(frame["value"], frame["objectId"], str(path), lines, allowed_labels)
        check_split_types(frame, path, lines)

    frame = _read_checked(path, {"objectId": "objectId", "value": "value", "type": "type", "sha1": "sha1"}, {},
                          check, optional=("sha1",))
    return frame.assign(value=normalize_labels(frame["value"]))


def check_split_types(frame: pd.DataFrame, path: str | os.PathLike, lines: Sequence[int] | None) -> None:
    """Refuse the first row whose ``type`` is not train, validation or test."""
    bad = ~frame["type"].isin(PARTS).to_numpy(dtype=bool)
    if bad.any():
        position = int(np.flatnonzero(bad)[0])
        line = _line_numbers(len(frame), lines)[position]
        raise UserError(f"{path} row {line}: type '{_shorten(frame['type'][position])}' "
                        f"is not one of {', '.join(PARTS)}")


def write_split_csv(frame: pd.DataFrame, path: str | os.PathLike, label_column: str = "value") -> Path:
    """Write ``objectId,value,type`` (and ``sha1`` when the frame has it) atomically; return the path.

    Rows keep the frame's order.  A split of SHA-1-named files has no ``sha1`` column (the
    name is the hash), which keeps it byte for byte what the original split script writes.
    ``label_column``: the header of the frame's ``value`` column in the file (``labels`` for
    multi-label data, see :mod:`keras_cnn.data.multilabel`).
    """
    missing = [column for column in ("objectId", "value", "type") if column not in frame.columns]
    if missing:
        raise UserError(f"cannot write a split without the column(s) {', '.join(missing)}")
    columns = ["objectId", "value", "type"] + (["sha1"] if "sha1" in frame.columns else [])
    values = [frame[column].astype(str).tolist() for column in columns]
    header = [label_column if column == "value" else column for column in columns]
    with atomic_path(path) as temporary, open(temporary, "w", encoding="utf-8", newline="") as handle:
        if any(_needs_quotes(column) for column in values):
            # The csv module's minimal quoting is what pandas' to_csv (and so the original split script) writes.
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(zip(*values))
        else:  # nothing to quote: the same bytes, joined in C
            handle.write(",".join(header) + "\n")
            handle.write("".join(f"{line}\n" for line in map(",".join, zip(*values))))
    return Path(path)


def _needs_quotes(texts: list[str]) -> bool:
    """Whether minimal CSV quoting would quote any of ``texts`` (a comma, a quote or a line break)."""
    joined = "\x00".join(texts)
    return any(character in joined for character in ',"\r\n')


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
    """The split key (0..255) of each objectId: its last two hex digits before the first dot.

    Also the key of a content SHA-1 (40 hex digits, no dot): its last byte.
    """
    texts = _as_text(ids)
    keys = _sha1_keys(texts)
    if keys is not None:
        return keys
    last_two = texts.str.split(".", n=1).str[0].str[-2:]
    return np.array([int(text, 16) for text in last_two], dtype=np.int64)


def _sha1_names(texts: pd.Series) -> np.ndarray:
    """Which texts match ``OBJECT_ID_PATTERN``; all at once on their bytes when they all do."""
    if _all_sha1_names(texts.tolist()):
        return np.ones(len(texts), dtype=bool)
    return texts.str.fullmatch(OBJECT_ID_PATTERN.pattern).fillna(False).to_numpy(dtype=bool)


def _joined_codes(texts: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """The ASCII bytes of ``texts`` joined by NUL (and one NUL at the end), and where each starts."""
    joined = "\x00".join(texts) + "\x00"
    if not joined.isascii():
        return None
    codes = np.frombuffer(joined.encode("ascii"), dtype=np.uint8)
    ends = np.flatnonzero(codes == 0)
    if len(ends) != len(texts):
        return None  # a NUL inside a text
    return codes, np.concatenate(([0], ends[:-1] + 1))


def _hex_heads(codes: np.ndarray, starts: np.ndarray, width: int = 40) -> bool:
    """Whether the ``width`` bytes from every start are hex digits (one row of bytes per start)."""
    heads = np.lib.stride_tricks.sliding_window_view(codes, width)[starts]
    return bool(_IS_HEX[heads].all())


def _all_sha1_names(texts: list[str]) -> bool:
    """True when every text is ``<40 hex digits>.<letters and digits>`` (a million in well under a second)."""
    if not texts:
        return True
    found = _joined_codes(texts)
    if found is None:
        return False
    codes, starts = found
    lengths = np.diff(np.concatenate((starts, [len(codes)]))) - 1
    alphanumeric = _ALPHANUMERIC[codes] | (codes == 0) | (codes == ord("."))
    return bool(alphanumeric.all() and (lengths >= 42).all() and (codes == ord(".")).sum() == len(texts)
                and (codes[starts + 40] == ord(".")).all() and _hex_heads(codes, starts))


_ALPHANUMERIC = np.zeros(256, dtype=bool)
for _character in "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ":
    _ALPHANUMERIC[ord(_character)] = True

_HEX_VALUES = np.full(256, -1, dtype=np.int64)
for _digit in "0123456789abcdefABCDEF":
    _HEX_VALUES[ord(_digit)] = int(_digit, 16)
_IS_HEX = _HEX_VALUES >= 0


def _sha1_keys(texts: pd.Series) -> np.ndarray | None:
    """Keys read as bytes in one vectorised pass when every text is 40 hex digits, alone or before
    a dot (SHA-1 names and digests: a million in well under a second); None otherwise."""
    found = _joined_codes(texts.tolist())
    if found is None or len(texts) == 0:
        return None if found is None else np.zeros(0, dtype=np.int64)
    codes, starts = found
    lengths = np.diff(np.concatenate((starts, [len(codes)]))) - 1
    if not (lengths >= 40).all():
        return None
    if not (np.isin(codes[starts + 40], (0, ord("."))).all() and _hex_heads(codes, starts)):
        return None
    return _HEX_VALUES[codes[starts + 38]] * 16 + _HEX_VALUES[codes[starts + 39]]


def assign_parts(keys: np.ndarray, values: Sequence[str], test: Iterable[int], validation: Iterable[int],
                 balance: bool = True) -> np.ndarray:
    """``train`` / ``validation`` / ``test`` for each row from its key; balanced as the module says.

    ``values`` are the rows' labels (strings, positional).  Returns an object array.
    """
    types = np.full(len(keys), "train", dtype=object)
    types[np.isin(keys, sorted(test))] = "test"
    types[np.isin(keys, sorted(validation))] = "validation"
    if balance and len(keys):
        positional_values = pd.Series(np.asarray(values, dtype=object), dtype=object)
        labels = class_names(positional_values)
        for part in ("test", "validation"):
            in_part = types == part
            part_values = positional_values[in_part]
            counts = part_values.value_counts()
            smallest = min(int(counts.get(label, 0)) for label in labels)
            # Rank of each row among the rows of its label in this part, in file order.
            rank = part_values.groupby(part_values, sort=False).cumcount().to_numpy()
            surplus = np.flatnonzero(in_part)[rank >= smallest]
            types[surplus] = "train"
    return types


def split_labels(frame: pd.DataFrame, test_keys: Iterable[int] = DEFAULT_TEST_KEYS,
                 validation_keys: Iterable[int] = DEFAULT_VALIDATION_KEYS, balance: bool = True,
                 source: str = "labels", allowed_labels: Iterable[str] = (), validate: bool = True) -> pd.DataFrame:
    """Assign every row to train, validation or test; return a copy with a ``type`` column.

    ``frame`` needs columns ``objectId`` and ``value`` (other columns are kept).  With a
    ``sha1`` column (the SHA-1 of each file's bytes) the key comes from it and objectIds
    may be relative paths; without, every objectId must be a SHA-1 name and is its own key.
    Rows keep their order and index (which need not be 0..n-1); ``objectId`` and ``value``
    come back as stripped strings.  The frame is checked like :func:`read_label_csv`
    (``source`` names it in messages) unless ``validate`` is False (a caller that has just
    checked it).  See the module docstring for the algorithm.
    """
    missing = [column for column in ("objectId", "value") if column not in frame.columns]
    if missing:
        raise UserError(f"{source} has no column(s) {', '.join(missing)} "
                        f"(columns: {', '.join(map(str, frame.columns))})")
    if len(frame) == 0:
        raise UserError(f"{source} has no rows")
    test, validation = check_key_ranges(test_keys, validation_keys)
    ids = _as_text(frame["objectId"])
    values = normalize_labels(_as_text(frame["value"]))
    by_content = "sha1" in frame.columns
    if validate:
        validate_object_ids(ids, source, paths=by_content)
        validate_labels(values, ids, source, allowed_labels=allowed_labels)

    keys = split_keys(frame["sha1"] if by_content else ids)
    types = assign_parts(keys, values.to_numpy(), test, validation, balance)

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
        if unbalanced_counts is not None:
            kept, possible = sum(by_label.values()), sum(unbalanced_counts[part].values())
            if kept * 2 < possible:
                smallest = min(labels, key=lambda label: unbalanced_counts[part].get(label, 0))
                warnings.append(
                    f"balancing kept {kept} of the {possible} {part} rows its keys give "
                    f"(label {smallest!r} has only {unbalanced_counts[part].get(smallest, 0)}); "
                    f"--no-balance keeps them all, a wider --{part}-keys range gives more"
                )
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


def format_counts(counts: dict[str, dict[str, int]], transpose_after: int = 8,
                  images: dict[str, int] | None = None, unlabelled: dict[str, int] | None = None,
                  unlabelled_title: str = "(none)") -> str:
    """The count table as text, like the original split script's printout.

    Rows are the parts (train, validation, test, total), columns the labels and a total.
    With more than ``transpose_after`` labels the table is turned (a row per label) so it
    still fits a terminal.  Multi-label data (an image counts under each of its labels)
    gives ``images`` per part: the last column then counts images, titled "images", and
    ``unlabelled`` (images without a label, per part) adds a column when any part has one.
    """
    counts = dict(counts)
    if unlabelled is not None and any(unlabelled.values()):
        counts = {part: {**by_label, unlabelled_title: unlabelled[part]} for part, by_label in counts.items()}
    labels = list(counts[TOTAL])
    sizes = part_sizes(counts) if images is None else images
    last = TOTAL if images is None else "images"
    parts = (*PARTS, TOTAL)
    if len(labels) > transpose_after:
        header = ["label", *parts]
        body = [[label, *(str(counts[part][label]) for part in parts)] for label in labels]
        body.append([last, *(str(sizes[part]) for part in parts)])
    else:
        header = ["part", *labels, last]
        body = [[part, *(str(counts[part][label]) for label in labels), str(sizes[part])] for part in parts]
    table = [header, *body]
    widths = [max(len(row[column]) for row in table) for column in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) if column == 0 else cell.rjust(width)
                  for column, (cell, width) in enumerate(zip(row, widths))).rstrip()
        for row in table
    ]
    return "\n".join(lines)
