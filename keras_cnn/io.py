"""File helpers every part of kcnn writes and reads with: atomic writes, JSON, output-path checks.

A result is never half-written: :func:`atomic_path` yields a temporary name beside the
final one and renames it into place only when the write succeeded.  Temporary names have
one shape, ``.FINAL.tmp-PID-XXXXXXXX[.suffixes]`` (:func:`temporary_owner` recognises it),
so a killed write's leftovers can be told from anything else: :func:`remove_stale_temporaries`
(a run folder, under its lock) and :func:`remove_abandoned_temporaries` (beside one output,
when the process that wrote them is gone) delete only names of that shape.  :func:`check_output_path` refuses, with one line, an output
path that is neither new nor the kind of file asked for (a FIFO, a device, a folder in a
file's place).  The run folder (:mod:`keras_cnn.runs`), the data package, reports and
exports all write through these; this module imports nothing else of kcnn but its errors.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import os
import re
import shutil
import stat
import tempfile
import unicodedata
from pathlib import Path
from typing import Any, Iterable, Iterator

from keras_cnn.errors import NoSpaceLeft, UserError, disk_full_message, is_disk_full


# Every temporary name written by :func:`atomic_path` holds this mark; a killed write leaves
# such a file, which :func:`remove_stale_temporaries` deletes at the next start.
TEMPORARY_MARK = ".tmp-"

# The file kcnn writes into every run folder it makes (its record of what it wrote there), and
# the run state every run since run states exist has: either one marks a folder as a kcnn run.
RUN_MARKER = ".kcnn-run.json"
RUN_STATE = "state.json"
# A run's record of its inputs (each image's SHA-1 and stamp, its split file's; keras_cnn.data.input_record)
# and the list of what changed that a refusal names.
INPUT_RECORD = "inputs.json"
INPUT_CHANGES = "input_changes.csv"


def is_kcnn_run(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` is a run folder kcnn made (its marker, or the run state of an older run)."""
    folder = Path(folder)
    return (folder / RUN_MARKER).is_file() or (folder / RUN_STATE).is_file()


def check_output_path(path: str | os.PathLike, directory: bool = False, option: str = "output") -> Path:
    """Refuse an output path that is not a new path or a regular file (a folder for ``directory``).

    Writing by rename would silently replace a FIFO, a device or a socket with a regular
    file, and a folder cannot take a file's place; both are user mistakes worth one line.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return path
    except OSError as error:
        raise UserError(f"cannot use {path} as {option}: {error.strerror}") from None
    if directory and stat.S_ISDIR(mode):
        return path
    if not directory and stat.S_ISREG(mode):
        return path
    wanted = "a folder" if directory else "a regular file"
    raise UserError(f"{path} exists and is {_file_kind(mode)}; {option} must be a new path or {wanted}")


def check_input_file(path: str | os.PathLike, what: str = "input") -> Path:
    """Refuse an input that is not a regular file before anything reads it.

    Reading a named pipe waits until something writes to it (for ever, usually), and a
    device may never end: both are refused with one line instead of hanging.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist") from None
    except OSError as error:
        raise UserError(f"cannot read {what} {path}: {error.strerror}") from None
    if not stat.S_ISREG(mode):
        raise UserError(f"{what} {path} is {_file_kind(mode)}, not a regular file; kcnn reads only regular files")
    return path


def _file_kind(mode: int) -> str:
    kinds = [(stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISREG, "a regular file")]
    return next((name for test, name in kinds if test(mode)), "a special file")


# ".FINAL.tmp-PID-XXXXXXXX.SUFFIXES": what atomic_path names a temporary (tempfile's 8 random
# characters; older kcnn versions wrote no PID).
_TEMPORARY_NAME = re.compile(r"^\.(?P<final>.+)" + re.escape(TEMPORARY_MARK)
                             + r"(?:(?P<pid>\d+)-)?[a-z0-9_]{8}(?P<suffixes>(?:\.[^.]+)*)$")


def temporary_owner(name: str) -> tuple[str, int | None] | None:
    """``(final name, writer's pid or None)`` when ``name`` is a temporary kcnn made, else ``None``."""
    match = _TEMPORARY_NAME.match(name)
    if match is None or match["suffixes"] not in ("", "".join(Path(match["final"]).suffixes)):
        return None
    return match["final"], int(match["pid"]) if match["pid"] else None


def _process_gone(pid: int | None) -> bool:
    """Whether the process that wrote a temporary has ended (``None``: written by an older kcnn)."""
    if pid is None:
        return True
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # another user's process: alive
        return False
    return False


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_stale_temporaries(root: str | os.PathLike, names: Iterable[str] = (),
                             folders: Iterable[str] = ()) -> list[Path]:
    """Delete the temporaries a killed write left in a run folder (whose lock the caller holds).

    Only kcnn's temporary names go: in ``root``, those of the files ``names``; anywhere
    under ``root``'s sub-folders ``folders``, every one.  Returns what was removed.
    """
    root = Path(root)
    names = set(names)
    candidates = []
    if root.is_dir():
        candidates += [path for path in root.iterdir() if (temporary_owner(path.name) or ("",))[0] in names]
    for folder in folders:
        if (root / folder).is_dir() and not (root / folder).is_symlink():
            candidates += [path for path in (root / folder).rglob(f".*{TEMPORARY_MARK}*")
                           if temporary_owner(path.name)]
    removed = []
    for path in sorted(candidates, key=lambda item: len(item.parts), reverse=True):
        _remove(path)
        removed.append(path)
    return removed


def remove_abandoned_temporaries(final_path: str | os.PathLike) -> list[Path]:
    """Delete the temporaries of ``final_path`` that a killed kcnn left beside it (its process is gone)."""
    final_path = Path(final_path)
    removed = []
    if not final_path.parent.is_dir():
        return removed
    for path in final_path.parent.glob(f".{glob.escape(final_path.name)}{TEMPORARY_MARK}*"):
        owner = temporary_owner(path.name)
        if owner is not None and owner[0] == final_path.name and _process_gone(owner[1]):
            _remove(path)
            removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_path(final_path: str | os.PathLike, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``final_path``; on success rename it into place.

    On any exception the temporary file or folder is removed and ``final_path`` is
    left as it was, so a crash never leaves a half-written result; a full disk is then a
    :class:`~keras_cnn.errors.NoSpaceLeft` naming ``final_path``.
    """
    final_path = Path(final_path)
    check_output_path(final_path, directory=directory)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    # The writer's pid in the name: a later process removes it only once this one is gone.
    prefix = f".{final_path.name}{TEMPORARY_MARK}{os.getpid()}-"
    if directory:
        temporary = Path(tempfile.mkdtemp(prefix=prefix, dir=final_path.parent))
    else:
        handle, name = tempfile.mkstemp(prefix=prefix, dir=final_path.parent)
        os.close(handle)
        temporary = Path(name)
    try:
        # mkstemp/mkdtemp make private files; results are meant to be shared like any other file.
        os.chmod(temporary, (0o777 if directory else 0o666) & ~_current_umask())
        # Keras refuses some file names by their suffix (".keras", ".weights.h5"): keep it.
        if not directory and final_path.suffixes:
            suffixed = temporary.with_name(temporary.name + "".join(final_path.suffixes))
            temporary.rename(suffixed)
            temporary = suffixed
        yield temporary
        if directory and final_path.exists():
            shutil.rmtree(final_path)
        os.replace(temporary, final_path)
    except BaseException as error:
        if temporary.is_dir():
            shutil.rmtree(temporary, ignore_errors=True)
        else:
            temporary.unlink(missing_ok=True)
        if isinstance(error, Exception) and not isinstance(error, NoSpaceLeft) and is_disk_full(error):
            raise NoSpaceLeft(disk_full_message(final_path, atomic=True)) from error
        raise


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically and return the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def to_jsonable(value: Any) -> Any:
    """Turn numpy scalars/arrays, paths, tuples and dataclasses into plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(item) for item in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist"):  # numpy arrays and numpy scalars
        return value.tolist()
    return value


def atomic_write_json(path: str | os.PathLike, payload: Any) -> Path:
    """Write ``payload`` as indented JSON atomically and return the path."""
    return atomic_write_text(path, json.dumps(to_jsonable(payload), indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, turning a missing or broken file into a one-line ``UserError``."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read {path}: {error}") from None


def normalize_label(label: str) -> str:
    """A label as kcnn compares it: Unicode-normalised (NFC), so one name spelled in two forms is one label.

    Folder names, label and split CSVs, labels.txt, config.json and an export's kcnn.json are
    all read through it: ``café`` typed on one system and ``café`` written by another (``e``
    and a combining accent) are one class, not two that print alike.
    """
    return label if label.isascii() else unicodedata.normalize("NFC", label)


def read_labels(path: str | os.PathLike) -> list[str]:
    """Read a ``labels.txt`` (one label per line, class-index order), each label normalised (NFC)."""
    path = Path(path)
    try:
        return [normalize_label(line) for line in path.read_text(encoding="utf-8").splitlines() if line != ""]
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
