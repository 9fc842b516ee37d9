"""File helpers every part of kcnn writes and reads with: atomic writes, JSON, output-path checks.

A result is never half-written: :func:`atomic_path` yields a temporary name beside the
final one and renames it into place only when the write succeeded (a killed write leaves
a temporary name with :data:`TEMPORARY_MARK`, which :func:`remove_stale_temporaries`
deletes at the next start).  :func:`check_output_path` refuses, with one line, an output
path that is neither new nor the kind of file asked for (a FIFO, a device, a folder in a
file's place).  The run folder (:mod:`keras_cnn.runs`), the data package, reports and
exports all write through these; this module imports nothing else of kcnn but its errors.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterator

from keras_cnn.errors import NoSpaceLeft, UserError, disk_full_message, is_disk_full


# Every temporary name written by :func:`atomic_path` holds this mark; a killed write leaves
# such a file, which :func:`remove_stale_temporaries` deletes at the next start.
TEMPORARY_MARK = ".tmp-"

# The file kcnn writes into every run folder it makes (its record of what it wrote there), and
# the run state every run since run states exist has: either one marks a folder as a kcnn run.
RUN_MARKER = ".kcnn-run.json"
RUN_STATE = "state.json"


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


def remove_stale_temporaries(root: str | os.PathLike) -> list[Path]:
    """Delete the temporary files and folders a killed write left under ``root``; returns them."""
    removed = []
    root = Path(root)
    if not root.is_dir():
        return removed
    for path in sorted(root.rglob(f".*{TEMPORARY_MARK}*"), key=lambda item: len(item.parts), reverse=True):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
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
    prefix = f".{final_path.name}{TEMPORARY_MARK}"
    if directory:
        temporary = Path(tempfile.mkdtemp(prefix=prefix, dir=final_path.parent))
        os.chmod(temporary, 0o777 & ~_current_umask())
    else:
        handle, name = tempfile.mkstemp(prefix=prefix, dir=final_path.parent)
        os.close(handle)
        temporary = Path(name)
        # mkstemp creates 0600 files; results are meant to be shared like any other file.
        os.chmod(temporary, 0o666 & ~_current_umask())
        # Keras refuses some file names by their suffix (".keras", ".weights.h5"): keep it.
        if final_path.suffixes:
            suffixed = temporary.with_name(temporary.name + "".join(final_path.suffixes))
            temporary.rename(suffixed)
            temporary = suffixed
    try:
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


def read_labels(path: str | os.PathLike) -> list[str]:
    """Read a ``labels.txt`` (one label per line, class-index order)."""
    path = Path(path)
    try:
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line != ""]
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
