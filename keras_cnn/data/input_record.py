"""The record of a run's inputs: every image's SHA-1 and stamp, and its split file's, kept in the run.

``RUN/inputs.json`` holds, for every image the run's split names, the SHA-1 of its bytes and a
cheap stamp — size, modification and change times (nanoseconds) and inode — and the same for
the split file.  Each command that reads the run's images again (a resumed stage, ``finetune``,
``evaluate``, ``lr-find --run``, ``export --quantize``) first compares stamps, one ``stat`` per
file, and re-hashes only the files whose stamp changed: ``cp -p`` keeps a file's size and
modification time, but no write keeps its change time.  A file whose bytes are the same gets
its new stamp recorded, so a run copied elsewhere is hashed once.

Anything else is a change: an image whose bytes differ, an image missing, an image added to
the folder the run split itself, the split file edited (a row relabelled, moved to another
part, added or removed).  Changes are refused with one line — counts, up to five names, every
one in ``RUN/input_changes.csv`` — unless the caller accepts them (``--accept-input-changes``):
the record then takes the inputs as they are now and logs what changed and by which command in
its ``changes`` list.  Images left out on purpose — missing and accepted so, or excluded from
an existing run by a tool (:func:`leave_out`) — are in ``left_out``, and every loader of the
run's parts leaves them out.  What ``--exclude`` and ``--relabel`` changed when the run's split
was written is logged when the record is made, as changes accepted by that option and file; a
tool that rewrites a run's split calls :func:`check_inputs` with ``accept=True`` and its own
name as ``by``, and the rows it changed are recorded like any other accepted change.

When the record is first made, each image's SHA-1 is compared with the one its split gives
(the ``sha1`` column, or the name of a file named by its SHA-1, whose bytes must hash to it):
an image changed between ``kcnn split`` and the first training is caught there.

This module reads and writes files only; it never imports TensorFlow, the run folder module or
the training code.
"""

from __future__ import annotations

import datetime
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from keras_cnn.config import DataConfig
from keras_cnn.data.collection import LABEL_CSV_NAME, content_sha1s, file_sha1, list_collection
from keras_cnn.data.edits import read_data_edits
from keras_cnn.data.files import full_list_path, image_path_candidates
from keras_cnn.data.multilabel import read_split_table
from keras_cnn.data.split import sha1_of_name
from keras_cnn.errors import UserError
from keras_cnn.io import INPUT_CHANGES, INPUT_RECORD, atomic_write_text, read_json
from keras_cnn.messages import MAX_ITEMS, MAX_MESSAGE, summarize_items
from keras_cnn.progress import warn
from keras_cnn.spreadsheet import csv_text

FORMAT = 1
STAMP = ("size", "mtime_ns", "ctime_ns", "inode")
_ABSENT = (-1, -1, -1, -1)
COLUMNS = ("objectId", "path", "value", "type", "sha1", *STAMP)
ACCEPT_OPTION = "--accept-input-changes"

# Kinds of change: (singular, plural) as counted in a message.
CHANGED, MISSING, ADDED, NOT_AS_SPLIT = "changed", "missing", "added", "not as split"
RELABELLED, MOVED, ROW_ADDED, ROW_REMOVED = "relabelled", "moved", "row added", "row removed"
EXCLUDED = "excluded"
_SPLIT_KINDS = (RELABELLED, MOVED, ROW_ADDED, ROW_REMOVED)
_COUNTED = {
    CHANGED: ("image changed", "images changed"),
    MISSING: ("image missing", "images missing"),
    ADDED: ("image added", "images added"),
    NOT_AS_SPLIT: ("image whose SHA-1 is not the one its split gives", "images whose SHA-1 is not the one their "
                   "split gives"),
    RELABELLED: ("split row relabelled", "split rows relabelled"),
    MOVED: ("split row moved to another part", "split rows moved to another part"),
    ROW_ADDED: ("split row added", "split rows added"),
    ROW_REMOVED: ("split row removed", "split rows removed"),
    EXCLUDED: ("image excluded", "images excluded"),
}


@dataclass(frozen=True)
class Change:
    """One difference between a run's record and its inputs now."""

    object_id: str
    kind: str
    detail: str = ""


@dataclass
class InputRecord:
    """``RUN/inputs.json`` (see the module docstring).

    ``files``: one row per image of the split (:data:`COLUMNS`; ``path`` is where the file was
    found under the image folder, ``sha1`` empty and the stamp -1 when it was absent);
    ``split``: the split file's ``sha1`` and stamp; ``source``: the layout of the image folder
    when the run split it itself (added images are looked for there), else None; ``not_used``: files of that
    folder the split does not name (copies it left out, additions accepted); ``left_out``:
    objectId -> why it is out of every part; ``changes``: the accepted changes, oldest first.
    """

    files: pd.DataFrame
    split: dict[str, Any]
    source: dict[str, Any] | None = None
    not_used: list[str] = field(default_factory=list)
    left_out: dict[str, str] = field(default_factory=dict)
    changes: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def read(cls, path: str | os.PathLike) -> InputRecord:
        payload = read_json(path)
        try:
            if payload.get("format") != FORMAT:
                raise ValueError(f"format {payload.get('format')!r}")
            columns = payload["files"]
            files = pd.DataFrame({column: np.array(columns[column], dtype=np.int64 if column in STAMP else object)
                                  for column in COLUMNS})
            return cls(files, dict(payload["split"]), payload.get("source"),
                       list(payload.get("not_used", [])), dict(payload.get("left_out", {})),
                       list(payload.get("changes", [])))
        except (AttributeError, KeyError, TypeError, ValueError) as error:
            raise UserError(f"{path} is not a record kcnn can read ({error}); remove it to record the run's "
                            "images again as they are now (each checked against its split's SHA-1)") from None

    def write(self, path: str | os.PathLike) -> None:
        # One line, no indentation: a record of 100,000 images is written and read in a fraction of a second.
        atomic_write_text(path, json.dumps({
            "format": FORMAT,
            "split": self.split,
            "source": self.source,
            "files": {column: self.files[column].tolist() for column in COLUMNS},
            "not_used": self.not_used,
            "left_out": self.left_out,
            "changes": self.changes,
        }) + "\n")

    def log(self, changes: Sequence[Change], by: str) -> None:
        """Add accepted ``changes`` to the record's history."""
        self.changes.append({
            "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "by": by,
            "counts": dict(Counter(change.kind for change in changes)),
            "items": [[change.object_id, change.kind, change.detail] for change in changes],
        })


# ---------------------------------------------------------------------------------- stamps and hashes

def _stamp(path: str) -> tuple[int, int, int, int]:
    try:
        status = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return _ABSENT
    return status.st_size, status.st_mtime_ns, status.st_ctime_ns, status.st_ino


def _stamps(root: str, paths: Sequence[str]) -> np.ndarray:
    """The stamp of each ``root/path`` as an int64 array (rows of -1 for absent files).

    One ``stat`` per file, in a comprehension (the cost of a check is this loop); only when a
    file is absent does it go again, file by file.
    """
    prefix = os.path.join(root, "")
    full = [prefix + path for path in paths]
    try:
        stamps = [(status.st_size, status.st_mtime_ns, status.st_ctime_ns, status.st_ino)
                  for status in map(os.stat, full)]
    except (FileNotFoundError, NotADirectoryError):
        stamps = [_stamp(path) for path in full]
    return np.array(stamps, dtype=np.int64).reshape(-1, len(STAMP))


def _split_stamp(path: str) -> dict[str, Any]:
    return dict(zip(STAMP, _stamp(path)))


def _locate(root: str, object_id: str) -> str | None:
    """Where ``object_id`` is under ``root`` (flat, else sharded), relative and ``/``-separated, or None."""
    for candidate in image_path_candidates(root, object_id):
        if candidate.is_file():
            return candidate.relative_to(root).as_posix()
    return None


# ---------------------------------------------------------------------------------- making the record

def _read_split(data: DataConfig):
    """The run's split as a frame (objectId, value, type[, sha1]); a multi-label split's values are its label cells."""
    return read_split_table(data.split, data.allow_labels, data.multi_label, data.label_delimiter)[0]


def _source_files(data: DataConfig, source: dict[str, Any]) -> tuple[list[str], dict[str, list[int]]]:
    """The objectIds the image folder a run split itself holds now (listed as the split listed it, not
    hashed), and the stamps of what a new image would change: every folder listed (a folder's times
    change when an entry is added to it), or the label CSV."""
    collection = list_collection(data.images, layout=source.get("layout"), allowed_labels=data.allow_labels,
                                 multi_label=data.multi_label, delimiter=data.label_delimiter)
    watched = [LABEL_CSV_NAME] if collection.layout == "csv" else collection.folders
    stamps = _stamps(data.images, watched).tolist()
    return collection.table["objectId"].tolist(), dict(zip(watched, stamps))


def _source_unchanged(data: DataConfig, source: dict[str, Any]) -> bool:
    """Whether no folder listed for the split (nor its label CSV) changed: then no image was added."""
    watched = source.get("stamps") or {}
    return bool(watched) and _stamps(data.images, list(watched)).tolist() == list(watched.values())


def _hashed_rows(frame: pd.DataFrame, root: str, announce: str) -> pd.DataFrame:
    """``frame`` (objectId, value, type) with where each file is, its stamp (taken first) and its SHA-1."""
    located = [_locate(root, object_id) for object_id in frame["objectId"]]
    paths = [path if path is not None else object_id for path, object_id in zip(located, frame["objectId"])]
    stamps = _stamps(root, paths)
    present = [position for position, path in enumerate(located) if path is not None]
    digests = content_sha1s(root, [paths[position] for position in present], announce=announce)
    sha1 = [""] * len(paths)
    for position, digest in zip(present, digests):
        if digest is None:           # gone between the stat and the read
            stamps[position] = _ABSENT
        else:
            sha1[position] = digest
    rows = pd.DataFrame({"objectId": frame["objectId"].tolist(), "path": paths,
                         "value": frame["value"].tolist(), "type": frame["type"].tolist(), "sha1": sha1})
    for column, values in zip(STAMP, stamps.T):
        rows[column] = values
    return rows


def _edits_made(data: DataConfig, rows: pd.DataFrame) -> list[tuple[str, list[Change]]]:
    """What ``--exclude`` / ``--relabel`` changed when the run's split was written, as accepted changes
    (by the option and its file), for the record's history."""
    edits = read_data_edits(data.exclude, data.relabel, data.allow_labels,
                            data.label_delimiter if data.multi_label else None)   # as the split read them
    if edits is None:
        return []
    named = set(rows["objectId"])
    label_of = dict(zip(rows["objectId"], rows["value"]))
    made = []
    excluded = [Change(object_id, EXCLUDED) for object_id in sorted(edits.exclude) if object_id not in named]
    if excluded:
        made.append((f"--exclude {edits.exclude_source}", excluded))
    relabelled = [Change(object_id, RELABELLED, f"-> {label}") for object_id, label in edits.relabel.items()
                  if label_of.get(object_id) == label]
    if relabelled:
        made.append((f"--relabel {edits.relabel_source}", relabelled))
    return made


def _make_record(folder: Path, data: DataConfig, split_itself: bool) -> tuple[InputRecord, list[Change]]:
    """A new record of the run's inputs, and the images whose SHA-1 is not the one their split gives."""
    frame = _read_split(data)
    split_stamp = _split_stamp(data.split)
    split_sha1 = file_sha1(data.split)
    rows = _hashed_rows(frame, data.images, f"hashing {len(frame):,} images to record them in {folder / INPUT_RECORD}")
    given = frame["sha1"].tolist() if "sha1" in frame.columns else [""] * len(frame)
    changes = []
    for object_id, recorded, digest in zip(rows["objectId"], given, rows["sha1"]):
        expected = (recorded or sha1_of_name(object_id) or "").lower()
        if expected and digest and digest != expected:
            changes.append(Change(object_id, NOT_AS_SPLIT, f"{expected[:8]}… in the split, {digest[:8]}… now"))
    source, not_used = None, []
    if split_itself:
        source = {"layout": data.layout}
        named = set(rows["objectId"])
        present, source["stamps"] = _source_files(data, source)
        # Copies of an image the split left out are in the folder but not in the split: not "added".
        not_used = [object_id for object_id in present if object_id not in named]
    record = InputRecord(rows, {"sha1": split_sha1, **split_stamp}, source, not_used)
    for option, made in _edits_made(data, rows):
        record.log(made, option)
    return record, changes


# ---------------------------------------------------------------------------------- checking it

def _split_changes(record: InputRecord, frame: pd.DataFrame) -> list[Change]:
    """Rows of the split file now (``frame``) that differ from the recorded ones."""
    recorded = record.files.set_index("objectId")[["value", "type"]]
    now = frame.drop_duplicates("objectId").set_index("objectId")[["value", "type"]]
    changes = [Change(object_id, ROW_REMOVED) for object_id in recorded.index.difference(now.index, sort=False)]
    changes += [Change(object_id, ROW_ADDED, f"{row.value}, {row.type}")
                for object_id, row in now.loc[now.index.difference(recorded.index, sort=False)].iterrows()]
    common = recorded.index.intersection(now.index, sort=False)
    before, after = recorded.loc[common], now.loc[common]
    for object_id in common[(before["value"] != after["value"]).to_numpy()]:
        changes.append(Change(object_id, RELABELLED, f"{before.at[object_id, 'value']} -> {after.at[object_id, 'value']}"))
    for object_id in common[(before["type"] != after["type"]).to_numpy()]:
        changes.append(Change(object_id, MOVED, f"{before.at[object_id, 'type']} -> {after.at[object_id, 'type']}"))
    return changes


def _image_changes(record: InputRecord, root: str, folder: Path) -> tuple[list[Change], dict[int, tuple]]:
    """Images whose bytes differ or that are gone; and, by row, the new (path, sha1, stamp) of every
    image whose stamp changed but whose bytes did not, or that moved between flat and sharded."""
    files = record.files
    checked = ((files["sha1"] != "") & ~files["objectId"].isin(record.left_out)).to_numpy()
    positions = np.flatnonzero(checked)
    paths = files["path"].to_numpy()[positions]
    now = _stamps(root, paths.tolist())
    recorded = files.loc[positions, list(STAMP)].to_numpy(dtype=np.int64)
    differ = positions[(now != recorded).any(axis=1)]
    if not len(differ):
        return [], {}
    stamp_of = dict(zip(positions.tolist(), map(tuple, now.tolist())))
    path_of = dict(zip(positions.tolist(), paths.tolist()))
    where = {}
    for position in differ.tolist():
        path = path_of[position]
        if stamp_of[position] == _ABSENT:
            path = _locate(root, files.at[position, "objectId"])
            if path is None:
                continue
            stamp_of[position] = _stamp(os.path.join(root, path))
        where[position] = path
    announce = f"hashing {len(where):,} images of {folder} whose files changed since it recorded them"
    digests = dict(zip(where, content_sha1s(root, list(where.values()), announce=announce)))
    changes, refreshed = [], {}
    for position in differ.tolist():
        object_id, digest = files.at[position, "objectId"], digests.get(position)
        if digest is None:
            changes.append(Change(object_id, MISSING))
        elif digest != files.at[position, "sha1"]:
            changes.append(Change(object_id, CHANGED, f"{files.at[position, 'sha1'][:8]}… recorded, {digest[:8]}… now"))
            refreshed[position] = (where[position], digest, stamp_of[position])
        else:
            refreshed[position] = (where[position], digest, stamp_of[position])
    return changes, refreshed


def _added_files(record: InputRecord, data: DataConfig) -> tuple[list[Change], dict[str, list[int]] | None]:
    """Images now in the folder the run split itself that its split does not name, and the new stamps
    of its folders when they changed (None when they did not: nothing was listed)."""
    if record.source is None or _source_unchanged(data, record.source):
        return [], None
    try:
        present, stamps = _source_files(data, record.source)
    except UserError:
        return [], None   # the folder cannot be read as it was: its images are reported missing one by one
    known = set(record.files["objectId"]) | set(record.not_used)
    return [Change(object_id, ADDED) for object_id in present if object_id not in known], stamps


@dataclass
class InputCheck:
    """What :func:`check_inputs` found and did."""

    left_out: set[str]
    changes: list[Change]
    created: bool = False
    refreshed: int = 0       # images whose stamp (or place) changed but not their bytes


def check_inputs(folder: str | os.PathLike, data: DataConfig, *, accept: bool = False, by: str = "kcnn",
                 list_path: str | os.PathLike | None = None, write: bool = True,
                 split_itself: bool = False) -> InputCheck:
    """Check the inputs of the run in ``folder`` against its record (made now when it has none).

    ``data``: the run's data config (its split CSV and image folder; other data has no record).
    ``split_itself``: the run split ``data.images`` itself (``--images`` without ``--split``), so
    a record made now also watches that folder for images added later.
    Changes are refused (``UserError``, one line) unless ``accept``: then they are applied to
    the record and logged as made by ``by`` (e.g. ``"kcnn evaluate --accept-input-changes"``).
    ``list_path``: where the full list of changes goes (default ``folder/input_changes.csv``).
    ``write=False`` checks without writing the record (refreshed stamps are then not kept).
    Returns the objectIds every part leaves out and what was found.
    """
    folder = Path(folder)
    if not (data.split and data.images):
        return InputCheck(set(), [])
    if not Path(data.images).is_dir():
        raise UserError(f"the image folder {data.images} of {folder} is missing (config.json names it); "
                        "put the images back there")
    if not Path(data.split).is_file():
        raise UserError(f"the split {data.split} of {folder} is missing (config.json names it); put it back")
    path = folder / INPUT_RECORD
    list_path = Path(list_path) if list_path is not None else folder / INPUT_CHANGES
    created = not path.exists()
    if created:
        record, changes = _make_record(folder, data, split_itself)
        comparison = _Comparison(changes)
    else:
        record = InputRecord.read(path)
        comparison = _compare(record, folder, data)
    changes, refreshed = comparison.changes, comparison.refreshed
    if changes and not accept:
        raise UserError(refusal_message(folder, changes, list_path, data.split))
    if changes:
        _apply(record, comparison, data)
        record.log(changes, by)
        warn(f"{_summary(changes)} in {folder}: accepted and recorded in {path}")
    else:
        _refresh(record, comparison)
    if write and (created or changes or comparison.stamps_only):
        try:
            record.write(path)
        except OSError:
            if created or changes:
                raise   # a read-only run keeps its old stamps: the next check re-hashes those files again
    same_bytes = len(refreshed) - sum(change.kind == CHANGED for change in changes)
    return InputCheck(set(record.left_out), changes, created, same_bytes)


@dataclass
class _Comparison:
    """The record against the inputs now: the changes; the rows whose stamp (or place) only is new
    (row -> (path, sha1, stamp)); the split file's stamp when only it is new; the split read again
    when its bytes changed; the new stamps of the folders the run split, when they changed."""

    changes: list[Change]
    refreshed: dict[int, tuple] = field(default_factory=dict)
    split_stamp: dict[str, Any] | None = None
    new_split: pd.DataFrame | None = None
    source_stamps: dict[str, list[int]] | None = None

    @property
    def stamps_only(self) -> bool:
        """Whether something's stamp changed without its content: the record is worth writing again."""
        return bool(self.refreshed) or self.split_stamp is not None or self.source_stamps is not None


def _compare(record: InputRecord, folder: Path, data: DataConfig) -> _Comparison:
    """Every change of the split file and the images since the record, and the stamps to refresh."""
    changes: list[Change] = []
    split_now = _split_stamp(data.split)
    split_stamp, new_split = None, None
    if any(split_now[name] != record.split.get(name) for name in STAMP):
        split_stamp = {"sha1": file_sha1(data.split), **split_now}
        if split_stamp["sha1"] != record.split.get("sha1"):
            new_split = _read_split(data)
            changes += _split_changes(record, new_split)
    image_changes, refreshed = _image_changes(record, data.images, folder)
    if new_split is not None:   # the rows the split no longer names are no longer inputs
        removed = {change.object_id for change in changes if change.kind == ROW_REMOVED}
        image_changes = [change for change in image_changes if change.object_id not in removed]
    added, source_stamps = _added_files(record, data)
    return _Comparison(changes + image_changes + added, refreshed, split_stamp, new_split, source_stamps)


def _refresh(record: InputRecord, comparison: _Comparison) -> None:
    """Record the new stamps: of the rows whose bytes are the same (and their place), of the split
    file, of the folders the run split."""
    for position, (path, digest, stamp) in comparison.refreshed.items():
        record.files.at[position, "path"] = path
        record.files.at[position, "sha1"] = digest
        for name, value in zip(STAMP, stamp):
            record.files.at[position, name] = value
    if comparison.split_stamp is not None:
        record.split = comparison.split_stamp
    if comparison.source_stamps is not None:
        record.source = {**record.source, "stamps": comparison.source_stamps}


def _apply(record: InputRecord, comparison: _Comparison, data: DataConfig) -> None:
    """Make the record describe the inputs as they are now, the accepted changes included."""
    _refresh(record, comparison)
    for change in comparison.changes:
        if change.kind == MISSING:
            record.left_out[change.object_id] = MISSING
        elif change.kind == ADDED:
            record.not_used.append(change.object_id)
    new_split = comparison.new_split
    if new_split is not None:
        kept = record.files[record.files["objectId"].isin(set(new_split["objectId"]))]
        labels = new_split.drop_duplicates("objectId").set_index("objectId")
        kept = kept.assign(value=labels.loc[kept["objectId"], "value"].to_numpy(),
                           type=labels.loc[kept["objectId"], "type"].to_numpy())
        added = new_split[~new_split["objectId"].isin(set(kept["objectId"]))]
        if len(added):
            kept = pd.concat([kept, _hashed_rows(added, data.images, "hashing the split's new images")])
        record.files = kept.reset_index(drop=True)
        record.left_out = {key: value for key, value in record.left_out.items()
                           if key in set(record.files["objectId"])}


# ---------------------------------------------------------------------------------- telling the user

def _summary(changes: Sequence[Change]) -> str:
    counts = Counter(change.kind for change in changes)
    return ", ".join(f"{count:,} {_COUNTED[kind][count != 1]}" for kind, count in counts.items())


def write_change_list(path: str | os.PathLike, changes: Sequence[Change]) -> Path:
    """``objectId,change,detail`` rows, one per change (a header line first), written atomically; a list
    for people, so no cell runs as a spreadsheet formula (:mod:`keras_cnn.spreadsheet`)."""
    return atomic_write_text(path, csv_text(["objectId", "change", "detail"],
                                            ([change.object_id, change.kind, change.detail] for change in changes)))


def refusal_message(folder: Path, changes: Sequence[Change], list_path: Path, split: str | None = None) -> str:
    """One line: what changed (counts, a few names), where the full list is, and the two ways forward.

    The list is written to ``list_path`` (and kept: it outlives the refusal); where that
    cannot be written, to the temp folder.  ``split``: the split file, named when it was edited.
    """
    try:
        list_path = write_change_list(list_path, changes)
    except OSError:
        list_path = write_change_list(full_list_path(INPUT_CHANGES), changes)
    edited = f" ({_inside(split, folder)} was edited)" if split and any(change.kind in _SPLIT_KINDS
                                                                           for change in changes) else ""
    where = f"{list_path.name} there" if list_path.parent == folder else str(list_path)
    kinds = {change.kind for change in changes}
    if kinds == {NOT_AS_SPLIT}:   # found when the record is first made: the split is what is out of date
        whens, remedy = (" (changed after the split was made?)", ""), "make the split again (kcnn split)"
    else:
        whens, remedy = (f" since the run recorded its inputs{edited}", edited, ""), "split again into a new run"
    names = [change.object_id if len(kinds) == 1 else f"{change.object_id} ({change.kind})" for change in changes]
    # Short words around the names: a run's path can be long, and the names and the ways on are what
    # matters.  When even one name leaves no room, the "since when" gives way first, then the names
    # (the list file has them all).
    listed = [f"{summarize_items(names, limit=limit)}; " for limit in range(MAX_ITEMS, 0, -1)]
    whens = tuple(dict.fromkeys(whens))   # without an edited split, "edited" is ""
    choices = [(when, shown) for when in whens for shown in listed] + [(when, "") for when in whens]
    lines = [f"{folder}: {_summary(changes)}{when} ({shown}list in {where}); {remedy} or pass {ACCEPT_OPTION}"
             for when, shown in choices]
    return next((line for line in lines if len(line) <= MAX_MESSAGE), lines[-1])


def _inside(path: str, folder: Path) -> str:
    """``path`` relative to ``folder`` when it lies there (the run's own split.csv), else as given."""
    relative = os.path.relpath(os.path.abspath(path), os.path.abspath(folder))
    return path if relative.startswith(os.pardir) else relative


# ---------------------------------------------------------------------------------- for other tools

def leave_out(folder: str | os.PathLike, object_ids: Iterable[str], reason: str = EXCLUDED,
              by: str = "kcnn") -> None:
    """Leave ``object_ids`` out of every part of the run in ``folder`` from now on, recorded as an
    accepted change (``kcnn doctor --exclude`` and the like); the run must have a record."""
    path = Path(folder) / INPUT_RECORD
    record = InputRecord.read(path)
    known = set(record.files["objectId"])
    unknown = [object_id for object_id in object_ids if object_id not in known]
    if unknown:
        raise UserError(f"{len(unknown)} of the images to leave out are not in the split of {folder}: "
                        f"{', '.join(unknown[:5])}")
    changes = [Change(object_id, EXCLUDED, reason if reason != EXCLUDED else "") for object_id in object_ids]
    for change in changes:
        record.left_out[change.object_id] = reason
    record.log(changes, by)
    record.write(path)


def recorded_left_out(folder: str | os.PathLike) -> set[str]:
    """The objectIds the record of the run in ``folder`` leaves out of every part (none without a record)."""
    path = Path(folder) / INPUT_RECORD
    if not path.exists():
        return set()
    payload = json.loads(path.read_text(encoding="utf-8"))
    return set(payload.get("left_out", {})) if isinstance(payload, dict) else set()
