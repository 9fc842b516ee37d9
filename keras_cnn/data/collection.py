"""One reader for every way people keep labelled images, and the split of what it read.

Each layout becomes the same table: ``objectId`` (the file's path relative to the images
root), ``value`` (its label), ``type`` (the part a pre-split tree gives, else empty) and
``sha1`` (the SHA-1 of the file's bytes)::

    csv            a label CSV (objectId,value): files named by their SHA-1 (the original
                   format), or any file names / relative paths under --images
    folders        DIR/<label>/…/*.jpg   (Keras image_dataset_from_directory, torchvision
                   ImageFolder, fastai from_folder: the top folder is the label)
    split-folders  DIR/{train,val|validation|valid,test}/<label>/…
    split-csv      a split CSV (objectId,value,type) whose parts are kept as given
                   (:func:`read_split_collection`)

``--exclude`` / ``--relabel`` (:mod:`keras_cnn.data.edits`) are applied right after listing,
before hashing and the duplicate check; the "found" line counts them.

Folders are listed by :func:`list_collection` (no image read): linked folders and files are
followed and a link that loops back is refused; hidden files, non-images, broken links and kcnn
run folders kept among the images are left out and counted in the "found" line.  A label is
its folder's name (or CSV value) Unicode-normalised (NFC); two folders that are one label once
normalised are refused, labels that differ only in case are kept with a warning, and a label
folder without images is named in a warning.

The split key of a file is the last byte of its SHA-1: of its name when the name is a
SHA-1, else of its bytes, so renaming or moving a file never moves it to another part.
Hashing is streamed (1 MiB chunks) on a pool of threads (hashlib releases the
GIL while it reads and hashes).  A label CSV of SHA-1 names is split exactly as the original
split script did, byte for byte.  Like ``split.py``, this module never imports TensorFlow.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from keras_cnn.choices import Layout, names
from keras_cnn.config import DataConfig
from keras_cnn.data.edits import DataEdits, EditReport, apply_edits, read_data_edits
from keras_cnn.data.files import bounded_list_message, full_list_path, missing_files_message
from keras_cnn.data.multilabel import (DEFAULT_DELIMITER, LABELS_COLUMN, images_per_part, is_multi_label_split_csv,
                                       joined_cells, label_sets, multi_label_class_names, multi_label_counts,
                                       multi_label_split_warnings, read_multi_label_csv, read_split_table,
                                       unlabelled_per_part)
from keras_cnn.data.split import (
    DEFAULT_TEST_KEYS,
    DEFAULT_VALIDATION_KEYS,
    OBJECT_ID_PATTERN,
    assign_parts,
    check_key_ranges,
    class_names,
    format_counts,
    label_problem,
    parse_key_range,
    part_sizes,
    is_safe_path,
    path_problem,
    read_label_csv,
    sha1_of_name,
    split_counts,
    split_keys,
    split_labels,
    split_warnings,
    write_split_csv,
)
from keras_cnn.errors import UserError
from keras_cnn.progress import say, warn
from keras_cnn.io import check_output_path, is_kcnn_run, normalize_label

LAYOUTS = names(Layout)
# The layout of a split CSV read by read_split_collection (not a --layout choice: a split
# CSV is given with --split, or recognised by its type column).
SPLIT_CSV_LAYOUT = "split-csv"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
_IMAGE_EXTENSION_SET = frozenset(IMAGE_EXTENSIONS)
# Folder names of a pre-split tree (compared in lower case) and the part each one is.
PART_FOLDERS = {"train": "train", "val": "validation", "validation": "validation", "valid": "validation",
                "test": "test"}
LABEL_CSV_NAME = "label.csv"
# Reasons a listing leaves something out (besides "hidden", "not images", "outside a label folder").
RUN_FOLDERS = "kcnn run folders"        # a run kept inside the images tree is never read back as images
BROKEN_LINKS = "broken links"
_SINGULAR = {RUN_FOLDERS: "kcnn run folder", BROKEN_LINKS: "broken link"}
_HASH_CHUNK = 1 << 20
# Files per task handed to a hashing thread: big enough that scheduling costs little.
_HASH_BATCH = 256
# Above this many files, hashing says what it is doing (it can take a while on a cold disk).
_ANNOUNCE_HASHING = 5_000


@dataclass
class Collection:
    """Labelled images as read from one layout (see the module docstring)."""

    table: pd.DataFrame                  # objectId, value, type, sha1 (strings; sha1 "" when not read)
    images: str | None                   # the folder objectIds are relative to
    layout: str                          # one of LAYOUTS
    source: str                          # what the user pointed at
    named_by_sha1: bool = False          # bare SHA-1 names from a label CSV: the original split applies
    skipped: Counter = field(default_factory=Counter)  # files left out while listing, by reason
    warnings: list[str] = field(default_factory=list)
    edits: EditReport = field(default_factory=EditReport)  # what --exclude / --relabel changed
    folders: list[str] = field(default_factory=list)   # every folder listed, relative to images ("." the root)
    multi_label: bool = False            # values are sets of labels (keras_cnn.data.multilabel)
    merged: int = 0                      # multi-label: copies under other label folders merged into one image

    @property
    def labels(self) -> list[str]:
        """The class names in class-index order."""
        return (multi_label_class_names(self.table["value"]) if self.multi_label
                else class_names(self.table["value"]))

    def describe(self) -> str:
        """One line saying which layout was found and what it holds."""
        labels = len(self.labels)
        images = len(self.table)
        if self.layout == "csv":
            where = "named by their SHA-1" if self.named_by_sha1 else f"under {self.images}"
            line = f"found a label CSV ({self.source}): {images:,} images {where}, {_labels(labels)}"
        elif self.layout == "folders":
            line = f"found class folders in {self.source}: {images:,} images in {_labels(labels)}"
        else:
            parts = Counter(self.table["type"])
            shown = ", ".join(f"{part} {parts[part]:,}" for part in ("train", "validation", "test") if parts[part])
            absent = [part for part in ("validation", "test") if not parts[part]]
            if self.layout == SPLIT_CSV_LAYOUT:
                line = f"found a split CSV ({self.source}): {shown} images in {_labels(labels)}"
            else:
                drawn = f"; {' and '.join(absent)} drawn from train by the SHA-1 rule" if absent else ""
                line = f"found a pre-split tree in {self.source}: {shown} images in {_labels(labels)}{drawn}"
        notes = [f"left out: {_left_out(self.skipped)}" if _left_out(self.skipped) else "",
                 f"{self.edits.relabelled:,} relabelled by --relabel" if self.edits.relabelled else "",
                 f"{self.merged:,} copies under other labels merged" if self.merged else ""]
        if self.multi_label:
            line = line.replace(" images", " multi-label images", 1)
        notes = [note for note in notes if note]
        if notes:
            line += f" ({'; '.join(notes)})"
        return line


def _left_out(skipped: Counter) -> str:
    """``"3 not images, 1 hidden"``: what listing a folder passed over (empty when nothing)."""
    return ", ".join(f"{count:,} {_SINGULAR.get(reason, reason) if count == 1 else reason}"
                     for reason, count in skipped.items() if count)


def _labels(count: int) -> str:
    return f"{count} label" if count == 1 else f"{count} labels"


# ---------------------------------------------------------------------------------- layouts

def detect_layout(source: str | os.PathLike, layout: str | None = None) -> str:
    """The layout of ``source``: ``layout`` when given (checked), else guessed from what is there.

    A file is a label CSV; a folder holding ``label.csv`` is a label CSV over that folder; a
    folder whose sub-folders are all part names (train, val, validation, valid, test) and
    include ``train`` is a pre-split tree; any other folder is a class-folder tree.
    """
    if layout is not None and layout not in LAYOUTS:
        raise UserError(f"--layout must be one of {', '.join(LAYOUTS)}, received: {layout!r}")
    path = Path(source)
    if not path.exists():
        raise UserError(f"{source} does not exist")
    if path.is_file():
        if layout not in (None, "csv"):
            raise UserError(f"--layout {layout} needs a folder, but {source} is a file")
        return "csv"
    if layout == "csv" and not (path / LABEL_CSV_NAME).is_file():
        raise UserError(f"--layout csv: {source} holds no {LABEL_CSV_NAME}; give the label CSV itself")
    if layout is not None:
        return layout
    if (path / LABEL_CSV_NAME).is_file():
        return "csv"
    folders = [entry.name.lower() for entry in _visible_folders(path)]
    if "train" in folders and all(name in PART_FOLDERS for name in folders):
        return "split-folders"
    return "folders"


def _folder_identity(path: str | os.PathLike) -> tuple[int, int]:
    """(device, inode) of a folder, links followed: the same folder reached by two paths is one identity."""
    status = os.stat(path)
    return status.st_dev, status.st_ino


def _visible_folders(path: Path, skipped: Counter | None = None) -> list[os.DirEntry]:
    """The sub-folders of ``path`` that may hold images, by name: hidden ones and kcnn run
    folders are left out (and counted in ``skipped`` when given); linked folders are followed."""
    folders = []
    with os.scandir(path) as entries:
        for entry in entries:
            if not _is_folder(entry):
                continue
            if entry.name.startswith("."):
                continue
            if is_kcnn_run(entry.path):
                if skipped is not None:
                    skipped[RUN_FOLDERS] += 1
                continue
            folders.append(entry)
    return sorted(folders, key=lambda entry: entry.name)


def _is_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()   # follows a link; a broken link is no folder
    except OSError:
        return False


def _check_no_loop(entry: os.DirEntry, ancestors: frozenset) -> tuple[int, int]:
    """The identity of the folder ``entry`` names; a folder that is one of its own ancestors is a loop."""
    identity = _folder_identity(entry.path)
    if identity in ancestors:
        raise UserError(f"{entry.path} links back to a folder that holds it (a loop); remove the link or "
                        "replace it with the folder it should point to")
    return identity


@dataclass
class _Listing:
    """What listing a tree notes besides its images: what it left out (by reason), the label
    folders without an image and every folder it read (relative to the root, "." the root)."""

    skipped: Counter = field(default_factory=Counter)
    empty: list[str] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)


def _is_image_name(name: str) -> bool:
    extension = name.rpartition(".")[2].lower()
    return "." in name and f".{extension}" in _IMAGE_EXTENSION_SET


def _list_images(root: Path, top: Path, listing: _Listing, ancestors: frozenset = frozenset()) -> list[str]:
    """Image files under ``top`` as paths relative to ``root`` (``/``-separated), sorted.

    Linked folders and files are followed (a link that loops back is refused); hidden files
    and folders, kcnn run folders, broken links and files without an image extension are
    counted in ``listing.skipped``.  ``ancestors``: identities of the folders above ``top``.
    """
    found = []
    skipped = listing.skipped
    pending = [(os.fspath(top), top.relative_to(root).as_posix(), ancestors | {_folder_identity(top)})]
    while pending:
        directory, base, above = pending.pop()
        listing.folders.append(base)
        with os.scandir(directory) as entries:
            for entry in entries:
                name = entry.name
                if name.startswith("."):
                    skipped["hidden"] += 1
                elif _is_folder(entry):
                    identity = _check_no_loop(entry, above)
                    if is_kcnn_run(entry.path):
                        skipped[RUN_FOLDERS] += 1
                    else:
                        pending.append((entry.path, f"{base}/{name}", above | {identity}))
                elif entry.is_symlink() and not os.path.exists(entry.path):
                    skipped[BROKEN_LINKS] += 1
                elif not _is_image_name(name):
                    skipped["not images"] += 1
                else:
                    found.append(f"{base}/{name}")
    found.sort()
    return found


def _loose_files(folder: Path, skipped: Counter) -> None:
    """Count files lying beside the label folders (a README, a label file...): they have no label."""
    with os.scandir(folder) as entries:
        loose = sum(1 for entry in entries if entry.is_file() and not entry.name.startswith("."))
    if loose:
        skipped["outside a label folder"] += loose


def _label_folders(root: Path, parent: Path, allowed_labels: Iterable[str], listing: _Listing,
                   part: str = "") -> list[tuple[str, str, str]]:
    """(objectId, label, part) for every image under ``parent/<label>/``.

    A label is its folder's name, Unicode-normalised (NFC): two folders whose names differ only
    in that form are refused, as they would print the same.  Label folders without an image
    are added to ``listing.empty`` (relative to ``root``).
    """
    rows = []
    _loose_files(parent, listing.skipped)
    listing.folders.append(parent.relative_to(root).as_posix())
    ancestors = frozenset({_folder_identity(root), _folder_identity(parent)})
    folder_of: dict[str, str] = {}
    for entry in _visible_folders(parent, listing.skipped):
        label = normalize_label(entry.name)
        problem = label_problem(label, allowed_labels)
        if problem:
            raise UserError(f"the folder name {entry.name!r} in {parent} cannot be a label: it {problem}")
        if label in folder_of:
            raise UserError(_same_label_folders_message(folder_of[label], entry.path, label))
        folder_of[label] = entry.path
        _check_no_loop(entry, ancestors)
        images = _list_images(root, Path(entry.path), listing, ancestors)
        if not images:
            listing.empty.append(os.path.relpath(entry.path, root))
        rows.extend((path, label, part) for path in images)
    return rows


def _same_label_folders_message(first: str, second: str, label: str) -> str:
    """The refusal of two class folders whose names are one label once Unicode-normalised."""
    return (f"the folders {first} ({ascii(os.path.basename(first))}) and {second} "
            f"({ascii(os.path.basename(second))}) are the same label {label!r} once Unicode-normalised (NFC): "
            "they would be one class printed twice; merge them or rename one")


def case_only_warning(labels: Iterable[str]) -> str | None:
    """A warning naming labels that differ only in case (kept as separate classes, as EMNIST's letters
    need), or None."""
    groups: dict[str, list[str]] = {}
    for label in labels:
        groups.setdefault(label.casefold(), []).append(label)
    clashes = [group for group in groups.values() if len(group) > 1]
    if not clashes:
        return None
    shown = "; ".join(" and ".join(repr(label)[:40] for label in group[:3]) for group in clashes[:3])
    more = f"; and {len(clashes) - 3} more such groups" if len(clashes) > 3 else ""
    return (f"{sum(map(len, clashes))} labels differ from another only in case ({shown}{more}): kept as separate "
            "classes, though a case-insensitive file system (macOS, Windows) would merge their folders")


def _check_paths(rows: list[tuple[str, str, str]], root: Path) -> None:
    paths = pd.Series([object_id for object_id, _label, _part in rows], dtype=object)
    bad = ~is_safe_path(paths)
    if bad.any():
        object_id = paths[bad].iloc[0]
        raise UserError(f"the file {object_id!r} in {root} cannot be used ({path_problem(object_id)}); rename it")


def _read_folders(root: Path, allowed_labels: Iterable[str], listing: _Listing) -> pd.DataFrame:
    rows = _label_folders(root, root, allowed_labels, listing)
    _check_paths(rows, root)
    return pd.DataFrame(rows, columns=["objectId", "value", "type"], dtype=object)


def _read_split_folders(root: Path, allowed_labels: Iterable[str], listing: _Listing) -> pd.DataFrame:
    rows = []
    _loose_files(root, listing.skipped)
    listing.folders.append(".")
    folders = _visible_folders(root, listing.skipped)
    others = [entry.name for entry in folders if entry.name.lower() not in PART_FOLDERS]
    if others:
        raise UserError(f"{root} is read as a pre-split tree, but {', '.join(map(repr, others[:5]))} "
                        f"{'is' if len(others) == 1 else 'are'} not train, val, validation, valid or test")
    if "train" not in {entry.name.lower() for entry in folders}:
        raise UserError(f"{root} is read as a pre-split tree but has no train/ folder")
    for entry in folders:
        rows.extend(_label_folders(root, Path(entry.path), allowed_labels, listing, PART_FOLDERS[entry.name.lower()]))
    _check_paths(rows, root)
    return pd.DataFrame(rows, columns=["objectId", "value", "type"], dtype=object)


def _read_label_csv(label_csv: str, images: str | None, id_column: str, label_column: str,
                    allowed_labels: Iterable[str], delimiter: str | None = None) -> tuple[pd.DataFrame, bool]:
    """The CSV's rows (objectId, value) and whether every objectId is a bare SHA-1 name.

    ``delimiter``: the label cells hold several labels joined by it (multi-label data).
    """
    def read(paths: bool) -> pd.DataFrame:
        if delimiter is not None:
            return read_multi_label_csv(label_csv, id_column, label_column, paths, allowed_labels, delimiter)
        return read_label_csv(label_csv, id_column, label_column, paths=paths, allowed_labels=allowed_labels)

    if images is None:
        try:
            frame = read(paths=False)
        except UserError:
            try:  # Named otherwise but usable with their folder: say so rather than why a name is no SHA-1.
                read(paths=True)
            except UserError:
                raise
            raise UserError(f"{label_csv} names files that are not named by their SHA-1: give --images DIR "
                            f"(the folder they are in) and kcnn splits them by the SHA-1 of their bytes") from None
        return frame, True
    frame = read(paths=True)
    named = frame["objectId"].map(lambda text: OBJECT_ID_PATTERN.fullmatch(text) is not None).all()
    return frame, bool(named)


# ---------------------------------------------------------------------------------- hashing

class _Unreadable(str):
    """Why a file that is there cannot be read (the result of hashing it, in place of its SHA-1)."""


def _sha1_or_reason(path: str) -> str | None:
    """The SHA-1 of a file's bytes, read in chunks of at most 1 MiB; None when the file is not there;
    an :class:`_Unreadable` reason when it cannot be read.

    Not ``hashlib.file_digest``: it allocates a 256 KiB buffer per file, which costs more than
    hashing a small image.
    """
    try:
        with open(path, "rb", buffering=0) as handle:
            digest = hashlib.sha1()
            wanted = min(_HASH_CHUNK, os.fstat(handle.fileno()).st_size + 1)  # +1: the end in one read
            while True:
                chunk = handle.read(wanted)
                digest.update(chunk)
                if len(chunk) < wanted:
                    return digest.hexdigest()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    except OSError as error:
        return _Unreadable(f"unreadable ({error.strerror})")


def file_sha1(path: str) -> str | None:
    """The SHA-1 of a file's bytes; None when the file is not there; ``UserError`` when it cannot be read."""
    digest = _sha1_or_reason(path)
    if isinstance(digest, _Unreadable):
        raise UserError(f"cannot read {path}: {digest}")
    return digest


def _hash_batch(paths: list[str]) -> list[str | None]:
    return [_sha1_or_reason(path) for path in paths]


def content_sha1s(root: str | os.PathLike, object_ids: list[str], workers: int | None = None,
                  announce: str | None = None, unreadable: list[tuple[str, str]] | None = None) -> list[str | None]:
    """The SHA-1 (hex) of each file ``root/<objectId>``, in order; None for a missing file.

    Files are hashed on ``workers`` threads (default: 4 per core, as reading overlaps with
    hashing), each file streamed in chunks, never read whole into memory.  ``announce``: the
    line said when there are many files (default: why a split hashes them).  A file that is
    there but cannot be read (no permission) is a ``UserError``; with an ``unreadable``
    list, it gets None and ``(objectId, reason)`` goes to the list instead.
    """
    if not object_ids:
        return []
    workers = workers or min(32, 4 * (os.cpu_count() or 1))
    if len(object_ids) >= _ANNOUNCE_HASHING:
        say(announce or f"hashing {len(object_ids):,} images (the SHA-1 of their bytes is their split key)")
    base = os.fspath(root)
    paths = [os.path.join(base, object_id) for object_id in object_ids]
    batches = [paths[start:start + _HASH_BATCH] for start in range(0, len(paths), _HASH_BATCH)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        digests = [digest for batch in pool.map(_hash_batch, batches) for digest in batch]
    for position, digest in enumerate(digests):
        if isinstance(digest, _Unreadable):
            if unreadable is None:
                raise UserError(f"cannot read {paths[position]}: {digest}")
            unreadable.append((object_ids[position], str(digest)))
            digests[position] = None
    return digests


def _fill_sha1(table: pd.DataFrame, images: str, named_by: str, list_prefix: str | None,
               skip_unreadable: bool = False, unreadable_advice: str = "make them readable",
               skipped: Counter | None = None) -> pd.DataFrame:
    """Add the ``sha1`` column: from the name when it is a SHA-1, else from the bytes.

    Files that cannot be read are refused in one line ending with ``unreadable_advice``, or
    with ``skip_unreadable`` left out (counted in ``skipped`` and named in a warning).
    """
    object_ids = table["objectId"].tolist()
    from_names = [sha1_of_name(object_id) for object_id in object_ids]
    to_hash = [position for position, digest in enumerate(from_names) if digest is None]
    unreadable: list[tuple[str, str]] = []
    digests = content_sha1s(images, [object_ids[position] for position in to_hash], unreadable=unreadable)
    for position, digest in zip(to_hash, digests):
        from_names[position] = digest
    if unreadable:
        listed = [f"{object_id} ({reason})" for object_id, reason in unreadable]
        list_path = _list_path(list_prefix, "unreadable.txt")
        noun = "file cannot" if len(unreadable) == 1 else "files cannot"
        if not skip_unreadable:
            raise UserError(bounded_list_message(lambda shown: f"{len(unreadable)} {noun} be read in {images}: "
                                                               f"{shown} — {unreadable_advice}", listed, list_path))
        warn(bounded_list_message(lambda shown: f"leaving out {len(unreadable)} image file(s) that cannot be read: "
                                                f"{shown}", listed, list_path))
        if skipped is not None:
            skipped["unreadable"] += len(unreadable)
        keep = ~table["objectId"].isin({object_id for object_id, _ in unreadable}).to_numpy()
        table, from_names = table[keep], [digest for digest, kept in zip(from_names, keep) if kept]
    missing = [object_id for object_id, digest in zip(table["objectId"], from_names) if digest is None]
    if missing:
        raise UserError(missing_files_message(missing, len(table), images, named_by,
                                              _list_path(list_prefix, "missing.txt")))
    return table.assign(sha1=from_names)


def _list_path(list_prefix: str | None, name: str) -> Path:
    return Path(f"{list_prefix}{name}") if list_prefix is not None else full_list_path(name)


# ---------------------------------------------------------------------------------- duplicates

def _drop_duplicates(table: pd.DataFrame, list_prefix: str | None) -> tuple[pd.DataFrame, list[str]]:
    """Refuse identical bytes under two labels; keep one copy of identical bytes under one label."""
    repeated = table[table["sha1"].duplicated(keep=False)]
    if repeated.empty:
        return table, []
    conflicts = []
    for _digest, group in repeated.groupby("sha1", sort=False):
        labels = group["value"].tolist()
        if len(set(labels)) > 1:
            first = group.iloc[0]
            other = group[group["value"] != first["value"]].iloc[0]
            conflicts.append(f"{first['objectId']} ({first['value']}) = {other['objectId']} ({other['value']})")
    if conflicts:
        raise UserError(bounded_list_message(
            lambda listed: (f"{len(conflicts)} image(s) are under two labels (identical bytes): {listed}; "
                            f"keep each image under one label, or pass --multi-label if images have several"),
            conflicts, _list_path(list_prefix, "duplicates.txt")))
    dropped = table["sha1"].duplicated(keep="first")
    names = table.loc[dropped, "objectId"].tolist()
    warning = bounded_list_message(
        lambda listed: f"{len(names)} file(s) are copies of an image already under the same label, left out: {listed}",
        names, _list_path(list_prefix, "duplicates.txt"))
    return table[~dropped].reset_index(drop=True), [warning]


def _merge_copies(table: pd.DataFrame, list_prefix: str | None) -> tuple[pd.DataFrame, int, list[str]]:
    """Multi-label data: identical files become one image (the first copy) with all their labels.

    Returns the table, how many copies were merged into another row, and a warning naming
    the images that gained labels that way (the same picture under several class folders is
    how a folder tree says an image has several labels; copies under one label are just copies).
    """
    repeated = table["sha1"].duplicated(keep=False).to_numpy()
    if not repeated.any():
        return table, 0, []
    sets = label_sets(table["value"])
    first_row: dict[str, int] = {}
    union: dict[int, set[str]] = {}     # the first copy's row -> the labels of all copies
    gained = []
    for row in np.flatnonzero(repeated):
        keeper = first_row.setdefault(table["sha1"].iat[row], row)
        found = union.setdefault(keeper, set(sets[keeper]))
        if keeper != row and not set(sets[row]) <= found:
            gained.append(table["objectId"].iat[keeper])
        found.update(sets[row])
    values = table["value"].to_numpy(dtype=object).copy()
    keepers = list(union)
    for row, cell in zip(keepers, joined_cells([union[row] for row in keepers],
                                               multi_label_class_names(table["value"]))):
        values[row] = cell
    dropped = table["sha1"].duplicated(keep="first").to_numpy()
    merged = table.assign(value=values)[~dropped].reset_index(drop=True)
    gained = list(dict.fromkeys(gained))
    warnings = [bounded_list_message(
        lambda listed: f"{len(gained)} image(s) sit under several labels (identical bytes), each kept once "
                       f"with all its labels: {listed}",
        gained, _list_path(list_prefix, "merged.txt"))] if gained else []
    return merged, int(dropped.sum()), warnings


# ---------------------------------------------------------------------------------- the reader

def list_collection(source: str | os.PathLike, images: str | os.PathLike | None = None, layout: str | None = None,
                    id_column: str = "objectId", label_column: str = "value",
                    allowed_labels: Iterable[str] = (), list_prefix: str | None = None,
                    multi_label: bool = False, delimiter: str = DEFAULT_DELIMITER) -> Collection:
    """What :func:`read_collection` reads, without reading any image: the ``sha1`` column is empty.

    Listing a folder tree or reading a label CSV is cheap, so a run checks with it whether
    images were added to the folder it split (:mod:`keras_cnn.data.input_record`).  Warns
    about label folders without images and labels that differ only in case.  ``multi_label``:
    a label CSV's cells are label sets joined by ``delimiter`` (copies of one file under
    several label folders are merged later, once hashed: :func:`read_collection`).
    """
    allowed_labels = list(allowed_labels)
    found = detect_layout(source, layout)
    path = Path(source)
    listing = _Listing()
    warnings: list[str] = []
    named_by_sha1 = False
    if found == "csv":
        label_csv = path / LABEL_CSV_NAME if path.is_dir() else path
        if path.is_dir() and images is None:
            images = path
        if images is not None and not Path(images).is_dir():
            raise UserError(f"image folder {images} does not exist or is not a folder")
        frame, named_by_sha1 = _read_label_csv(str(label_csv), None if images is None else str(images),
                                               id_column, label_column, allowed_labels,
                                               delimiter if multi_label else None)
        table = frame[["objectId", "value"]].assign(type="")
    else:
        if images is not None and Path(images).resolve() != path.resolve():
            raise UserError(f"--images is for a label CSV; {source} is a folder of images, which is their root")
        images = path
        reader = _read_folders if found == "folders" else _read_split_folders
        table = reader(path, allowed_labels, listing)
        if table.empty:
            raise UserError(_empty_folder_message(path, found, listing.skipped))
        empty = listing.empty
        if empty:
            warnings.append(bounded_list_message(
                lambda listed: f"{len(empty)} label folder(s) in {source} hold no images, so they give no class: {listed}",
                empty, _list_path(list_prefix, "empty_label_folders.txt")))
    collection = Collection(table=table.assign(sha1="").reset_index(drop=True),
                            images=None if images is None else str(images), layout=found, source=str(source),
                            named_by_sha1=named_by_sha1, skipped=listing.skipped, warnings=warnings,
                            folders=listing.folders, multi_label=multi_label)
    case_warning = case_only_warning(collection.labels)
    if case_warning:
        warnings.append(case_warning)
    return collection


def read_collection(source: str | os.PathLike, images: str | os.PathLike | None = None, layout: str | None = None,
                    id_column: str = "objectId", label_column: str = "value",
                    allowed_labels: Iterable[str] = (), list_prefix: str | None = None,
                    edits: DataEdits | None = None, keep_duplicates: bool = False,
                    skip_unreadable: bool = False, unreadable_advice: str = "make them readable",
                    multi_label: bool = False, delimiter: str = DEFAULT_DELIMITER) -> Collection:
    """Read labelled images in any layout into a :class:`Collection`.

    ``source``: a label CSV, a folder holding ``label.csv``, a class-folder tree or a
    pre-split tree; ``images``: the folder a label CSV's objectIds are relative to (needed
    unless they are SHA-1 names); ``layout`` forces one of :data:`LAYOUTS`.
    ``allowed_labels``: labels that look like missing data but are real classes.
    ``list_prefix``: full lists behind shortened messages go to ``<prefix><name>.txt``
    (default: the temp folder).  ``edits``: ``--exclude`` / ``--relabel``, applied before
    hashing.  ``keep_duplicates``: keep every copy of identical files (their ``sha1`` is
    the same) instead of refusing them under two labels and keeping one under one label —
    for a reader that reports them (``kcnn doctor``).  Raises ``UserError`` for unreadable
    input, missing files, unusable labels or names, two folders that are one label, and
    (unless ``keep_duplicates`` or ``multi_label``) identical images under two labels.
    Labels come Unicode-normalised (NFC); folders are listed as :func:`list_collection` says
    (links followed, kcnn run folders left out).  Image files that cannot be read are refused
    (ending with ``unreadable_advice``) or, with ``skip_unreadable``, left out and counted
    in the "found" line.  ``multi_label``: an image may have several labels (a label CSV's
    cells split on ``delimiter``, empty = no label) and identical files under several labels
    become one image with all of them.
    """
    collection = list_collection(source, images, layout, id_column, label_column, allowed_labels, list_prefix,
                                 multi_label=multi_label, delimiter=delimiter)
    if collection.layout == "csv":
        named_by = str(Path(source) / LABEL_CSV_NAME if Path(source).is_dir() else source)
    else:
        named_by = f"the listing of {source}"
    table, edit_report = _edited(collection.table, edits, collection.skipped, list_prefix)
    warnings = [*collection.warnings, *_unmatched_warnings(edit_report, edits, list_prefix)]
    merged = 0
    if not collection.named_by_sha1:
        table = _fill_sha1(table, str(collection.images), named_by, list_prefix, skip_unreadable, unreadable_advice,
                           collection.skipped)
        if multi_label and not keep_duplicates:
            table, merged, notes = _merge_copies(table, list_prefix)
            warnings += notes
        elif not keep_duplicates:
            table, dropped = _drop_duplicates(table, list_prefix)
            warnings += dropped
    return replace(collection, table=table.reset_index(drop=True), warnings=warnings, edits=edit_report,
                   merged=merged)


def read_split_collection(split_csv: str | os.PathLike, images: str | os.PathLike | None,
                          allowed_labels: Iterable[str] = (), list_prefix: str | None = None,
                          edits: DataEdits | None = None, hash_contents: bool = False, multi_label: bool = False,
                          delimiter: str = DEFAULT_DELIMITER) -> Collection:
    """A split CSV (objectId,value,type[,sha1]) as a :class:`Collection` whose parts are kept as given.

    ``edits`` are applied as :func:`read_collection` applies them.  ``hash_contents``: fill
    the ``sha1`` column from the files (or SHA-1 names) when the CSV has none; otherwise a
    missing column is left empty.  Duplicates are kept (a split CSV names each file once;
    identical files under two names are for ``kcnn doctor`` to report).  A multi-label split
    CSV (``objectId,labels,type``) is read as one; ``multi_label`` reads the cells of a
    plain one as sets of labels joined by ``delimiter``.
    """
    frame, multi_label = read_split_table(split_csv, allowed_labels, multi_label, delimiter)
    skipped: Counter = Counter()
    table, edit_report = _edited(frame, edits, skipped, list_prefix)
    if "sha1" not in table.columns:
        table = table.assign(sha1="")
    if hash_contents and (table["sha1"] == "").any():
        if images is None:
            raise UserError(f"reading the files of {split_csv} needs --images DIR (the folder they are in)")
        table = _fill_sha1(table.drop(columns="sha1"), str(images), str(split_csv), list_prefix)
    return Collection(table=table[["objectId", "value", "type", "sha1"]].reset_index(drop=True),
                      images=None if images is None else str(images), layout=SPLIT_CSV_LAYOUT,
                      source=str(split_csv), skipped=skipped,
                      warnings=_unmatched_warnings(edit_report, edits, list_prefix), edits=edit_report,
                      multi_label=multi_label)


def _edited(table: pd.DataFrame, edits: DataEdits | None, skipped: Counter,
            list_prefix: str | None) -> tuple[pd.DataFrame, EditReport]:
    """``table`` after ``--exclude`` / ``--relabel``; excluded rows are counted in ``skipped``."""
    table, report = apply_edits(table, edits)
    if report.excluded:
        skipped["excluded by --exclude"] += report.excluded
        if table.empty:
            raise UserError(f"--exclude {edits.exclude_source} leaves out every image")
    return table, report


def _unmatched_warnings(report: EditReport, edits: DataEdits | None, list_prefix: str | None) -> list[str]:
    """A warning naming the listed paths that matched no image (a typo, or another folder's list)."""
    if not report.unmatched or edits is None:
        return []
    files = " and ".join(name for name in (edits.exclude_source, edits.relabel_source) if name)
    return [bounded_list_message(
        lambda listed: f"{len(report.unmatched):,} path(s) in {files} name no image here: {listed}",
        report.unmatched, _list_path(list_prefix, "unmatched.txt"))]


def _empty_folder_message(path: Path, layout: str, skipped: Counter) -> str:
    shape = "DIR/<label>/*.jpg" if layout == "folders" else "DIR/train/<label>/*.jpg"
    seen = f"; {_left_out(skipped)}" if _left_out(skipped) else ""
    return (f"no images found in {path} (expected {shape}, extensions "
            f"{', '.join(IMAGE_EXTENSIONS)}{seen}); a label CSV needs --images DIR or --layout csv")


# ---------------------------------------------------------------------------------- the split

def split_collection(collection: Collection, test_keys: Iterable[int] = DEFAULT_TEST_KEYS,
                     validation_keys: Iterable[int] = DEFAULT_VALIDATION_KEYS, balance: bool = True,
                     allowed_labels: Iterable[str] = ()) -> pd.DataFrame:
    """The split of a collection: objectId, value, type (and sha1 unless named by SHA-1).

    Bare SHA-1 names: the original split of the CSV, byte for byte.  Other files: the same
    rule on the SHA-1 of their bytes.  A pre-split tree keeps its parts; a part it lacks
    (validation, test) is drawn from its train part by the rule.  Multi-label data is never
    balanced: "as many images per label as the smallest label" has no meaning when an image
    has several labels.
    """
    test, validation = check_key_ranges(test_keys, validation_keys)
    balance = balance and not collection.multi_label
    table = collection.table
    if collection.layout == SPLIT_CSV_LAYOUT:
        # Its parts as given; the sha1 column only when the CSV had it (or it was hashed).
        return table[["objectId", "value", "type"] + (["sha1"] if (table["sha1"] != "").any() else [])]
    if collection.named_by_sha1:
        # Read by read_label_csv, so already checked.
        return split_labels(table[["objectId", "value"]], test, validation, balance, collection.source,
                            allowed_labels, validate=False)
    types = table["type"].to_numpy(dtype=object).copy()
    given = set(types) - {""}
    if not given:
        return split_labels(table[["objectId", "value", "sha1"]], test, validation, balance, collection.source,
                            allowed_labels, validate=False)[["objectId", "value", "type", "sha1"]]
    absent = {"test", "validation"} - given
    if absent:
        from_train = types == "train"
        types[from_train] = assign_parts(
            split_keys(table.loc[from_train, "sha1"]), table.loc[from_train, "value"].to_numpy(),
            test if "test" in absent else (), validation if "validation" in absent else (), balance)
    return table.assign(type=types)[["objectId", "value", "type", "sha1"]]


@dataclass
class SplitResult:
    """A split as ``kcnn split`` reports it."""

    frame: pd.DataFrame
    labels: list[str]
    counts: dict[str, dict[str, int]]
    warnings: list[str]
    multi_label: bool = False
    images: dict[str, int] | None = None        # multi-label: images per part (an image counts once)
    unlabelled: dict[str, int] | None = None    # multi-label: images without a label per part

    def counts_table(self) -> str:
        """The count table as ``kcnn split`` prints it."""
        return format_counts(self.counts, images=self.images, unlabelled=self.unlabelled)

    def write(self, path: str | os.PathLike) -> Path:
        """The split CSV (a multi-label split names its label column ``labels``, which records it)."""
        return write_split_csv(self.frame, path, label_column=LABELS_COLUMN if self.multi_label else "value")


def split_with_report(collection: Collection, test_keys: Iterable[int] = DEFAULT_TEST_KEYS,
                      validation_keys: Iterable[int] = DEFAULT_VALIDATION_KEYS, balance: bool = True,
                      allowed_labels: Iterable[str] = ()) -> SplitResult:
    """Split, count rows per label per part, and gather every warning (the reader's and the split's)."""
    test_keys, validation_keys = list(test_keys), list(validation_keys)
    frame = split_collection(collection, test_keys, validation_keys, balance, allowed_labels)
    if collection.multi_label:
        labels = multi_label_class_names(frame["value"])
        counts, images = multi_label_counts(frame, labels), images_per_part(frame)
        return SplitResult(frame, labels, counts, [*collection.warnings, *multi_label_split_warnings(counts, images)],
                           multi_label=True, images=images, unlabelled=unlabelled_per_part(frame))
    labels = class_names(frame["value"])
    counts = split_counts(frame, labels)
    unbalanced = None
    if balance:
        unbalanced = split_counts(split_collection(collection, test_keys, validation_keys, False, allowed_labels),
                                  labels)
    return SplitResult(frame, labels, counts, [*collection.warnings, *split_warnings(counts, unbalanced)])


def with_recorded_task(data: DataConfig) -> DataConfig:
    """``data`` with ``multi_label`` on when its split CSV is a multi-label one (its ``labels`` header
    records it), so a run trained on it is multi-label without ``--multi-label``."""
    if data.split and not data.multi_label and is_multi_label_split_csv(data.split):
        return replace(data, multi_label=True)
    return data


def needs_split_file(data: DataConfig) -> bool:
    """Whether the data of a run must first be written as a split of its own: ``--images``
    without ``--split``, or a ``--split`` that ``--exclude`` / ``--relabel`` change."""
    if data.dataset or not data.images:
        return False
    return not data.split or bool(data.exclude or data.relabel)


def split_into_run(data: DataConfig, run_root: str | os.PathLike) -> DataConfig:
    """The data of a run given ``--images DIR`` without ``--split``: split DIR, keep it in the run.

    The split is written to ``RUN/split.csv`` (once: a resumed run reuses it, so its parts
    never change under it) and the returned config names it, so ``evaluate``, ``export``
    and ``finetune`` read the very split the model was trained on.  A ``--split`` with
    ``--exclude`` / ``--relabel`` is written there too, edited (its parts kept).  Any other
    data config comes back unchanged.
    """
    if data.split and data.layout:
        raise UserError("--layout says how to read --images when there is no --split; a split CSV names its files")
    if not needs_split_file(data):
        return data
    split_path = Path(run_root) / "split.csv"
    if not split_path.exists():
        return split_images(data, split_path, list_prefix=f"{Path(run_root)}{os.sep}")
    say(f"using the split stored in {split_path}")
    return replace(data, split=os.path.abspath(split_path), images=os.path.abspath(data.images))


def split_images(data: DataConfig, split_path: str | os.PathLike, list_prefix: str,
                 offers_skipping: bool = True) -> DataConfig:
    """Split ``data.images`` (any layout) into ``split_path``; the returned config names it.

    With ``data.split`` the given split is copied instead, its parts kept; either way
    ``data.exclude`` / ``data.relabel`` are applied.  Prints what was found, the counts per
    label per part and every warning, as ``kcnn split`` does.  ``list_prefix``: where full
    lists behind shortened messages go.  Image files that cannot be read are left out with
    ``data.skip_bad_images``, else refused (naming ``--skip-bad-images`` when the command
    ``offers_skipping``).
    """
    edits = read_data_edits(data.exclude, data.relabel, data.allow_labels,
                            data.label_delimiter if data.multi_label else None)
    if data.split:
        collection = read_split_collection(data.split, data.images, data.allow_labels, list_prefix, edits,
                                           multi_label=data.multi_label, delimiter=data.label_delimiter)
    else:
        collection = read_collection(data.images, layout=data.layout, allowed_labels=data.allow_labels,
                                     list_prefix=list_prefix, edits=edits, skip_unreadable=data.skip_bad_images,
                                     unreadable_advice="make them readable" + (" or pass --skip-bad-images"
                                                                               if offers_skipping else ""),
                                     multi_label=data.multi_label, delimiter=data.label_delimiter)
    say(collection.describe())
    result = split_with_report(collection, allowed_labels=data.allow_labels)
    result.write(split_path)
    say(result.counts_table())
    for warning in result.warnings:
        warn(warning)
    return replace(data, split=os.path.abspath(split_path), images=os.path.abspath(data.images),
                   multi_label=result.multi_label)


def split_to_file(source: str, output: str, images: str | None = None, layout: str | None = None,
                  test_keys_text: str = "0-24", validation_keys_text: str = "25-49", balance: bool = True,
                  id_column: str = "objectId", label_column: str = "value",
                  allow_labels: tuple[str, ...] | list[str] = (), exclude: str | None = None,
                  relabel: str | None = None, multi_label: bool = False,
                  label_delimiter: str = DEFAULT_DELIMITER) -> dict[str, Any]:
    """Read any layout, split and write; return ``{"output", "layout", "labels", "counts", "sizes", "warnings"}``
    (and for multi-label data ``"multi_label": true`` and ``"unlabelled"``, images without a label per part;
    ``sizes`` are then images per part, each counted once).

    ``exclude`` / ``relabel``: the ``--exclude`` and ``--relabel`` files.  ``multi_label``,
    ``label_delimiter``: see :func:`read_collection`.  Every check happens before the
    output is written, so a refused input leaves no file.
    """
    test_keys = parse_key_range(test_keys_text, "--test-keys")
    validation_keys = parse_key_range(validation_keys_text, "--validation-keys")
    check_key_ranges(test_keys, validation_keys)
    check_output_path(output, option="-o")
    if Path(output).resolve() == Path(source).resolve():
        raise UserError(f"the output '{output}' is the input file; choose another -o")
    edits = read_data_edits(exclude, relabel, allow_labels, label_delimiter if multi_label else None)
    collection = read_collection(source, images=images, layout=layout, id_column=id_column,
                                 label_column=label_column, allowed_labels=allow_labels,
                                 list_prefix=f"{output}.", edits=edits, multi_label=multi_label,
                                 delimiter=label_delimiter)
    say(collection.describe())
    result = split_with_report(collection, test_keys, validation_keys, balance, allow_labels)
    result.write(output)
    for warning in result.warnings:
        warn(warning)
    summary = {
        "output": str(output),
        "layout": collection.layout,
        "labels": result.labels,
        "counts": result.counts,
        "sizes": result.images if result.multi_label else part_sizes(result.counts),
        "warnings": result.warnings,
    }
    if result.multi_label:
        summary.update({"multi_label": True, "unlabelled": result.unlabelled})
    return summary
