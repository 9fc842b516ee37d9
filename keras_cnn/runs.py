"""The run directory: where one training run keeps everything it produced.

Layout (every file is written atomically: temporary name in the same folder, then rename)::

    RUN/
      config.json        every option with defaults resolved, library versions, seed
      labels.txt         class names, one per line, in class-index order
      history.csv        one row per epoch (stage, epoch, seconds, loss, accuracy, ...)
      model.keras        the best model so far (whole: base + head)
      metrics.json       test-set metrics
      training.png       training curves
      state.json         run state: stages finished / running, each stage's options and fingerprint
      .lock              held (flock) by the process writing the run; names its pid
      stages/            the best model of a finished stage that a later stage starts from
      logs/              TensorBoard logs
      backup/            per-stage checkpoints, so a killed run resumes
      eval/              ``kcnn evaluate`` output (eval/validation/ for the validation part)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from keras_cnn.errors import UserError


# Every temporary name written by :func:`atomic_path` holds this mark; a killed write leaves
# such a file, which :func:`remove_stale_temporaries` deletes at the next start.
TEMPORARY_MARK = ".tmp-"


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
    left as it was, so a crash never leaves a half-written result.
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
    except BaseException:
        if temporary.is_dir():
            shutil.rmtree(temporary, ignore_errors=True)
        else:
            temporary.unlink(missing_ok=True)
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
    import dataclasses

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


def library_versions() -> dict[str, str]:
    """Versions of Python and of the libraries a result depends on (imported lazily)."""
    from importlib import metadata

    import keras_cnn

    versions = {"kcnn": keras_cnn.__version__, "python": platform.python_version()}
    for distribution in ("tensorflow", "keras", "numpy", "pandas", "pillow", "tensorflow-hub"):
        try:
            versions[distribution] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    versions["platform"] = platform.platform()
    return versions


class RunDirectory:
    """Paths and readers/writers of one run directory (see the module docstring)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    config_path = property(lambda self: self.root / "config.json")
    labels_path = property(lambda self: self.root / "labels.txt")
    history_path = property(lambda self: self.root / "history.csv")
    model_path = property(lambda self: self.root / "model.keras")
    metrics_path = property(lambda self: self.root / "metrics.json")
    plot_path = property(lambda self: self.root / "training.png")
    tensorboard_dir = property(lambda self: self.root / "logs")
    backup_dir = property(lambda self: self.root / "backup")
    eval_dir = property(lambda self: self.root / "eval")
    skipped_images_path = property(lambda self: self.root / "skipped_images.csv")
    state_path = property(lambda self: self.root / "state.json")
    stages_dir = property(lambda self: self.root / "stages")

    # Everything a run writes (the lock aside): what removing a whole run removes, and no more.
    ENTRIES = ("config.json", "labels.txt", "history.csv", "model.keras", "metrics.json", "training.png",
               "state.json", "skipped_images.csv", "stages", "logs", "backup", "eval", "features")

    def clear(self) -> None:
        """Remove every file and folder of the run (not the lock, nor files kcnn did not write)."""
        for name in self.ENTRIES:
            path = self.root / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()

    def stage_model_path(self, stage: str) -> Path:
        """The best model at the end of ``stage``, kept for the stage that starts from it."""
        return self.stages_dir / f"{stage}.keras"

    def create(self) -> "RunDirectory":
        """Make the folder (and parents); an existing run is kept so it can resume."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"cannot create run directory {self.root}: {error.strerror}") from None
        return self

    def require(self) -> "RunDirectory":
        """Check this is a finished run (config, labels and model present)."""
        for path in (self.config_path, self.labels_path, self.model_path):
            if not path.exists():
                raise UserError(f"{self.root} is not a kcnn run directory: {path.name} is missing")
        return self

    def write_config(self, config: dict[str, Any]) -> Path:
        """Write ``config.json``: the given options plus library versions."""
        payload = dict(config)
        payload.setdefault("versions", library_versions())
        return atomic_write_json(self.config_path, payload)

    def read_config(self) -> dict[str, Any]:
        return read_json(self.config_path)

    def write_labels(self, labels: list[str]) -> Path:
        return atomic_write_text(self.labels_path, "".join(f"{label}\n" for label in labels))

    def read_labels(self) -> list[str]:
        return read_labels(self.labels_path)

    def write_metrics(self, metrics: dict[str, Any]) -> Path:
        return atomic_write_json(self.metrics_path, metrics)

    def read_metrics(self) -> dict[str, Any]:
        return read_json(self.metrics_path) if self.metrics_path.exists() else {}


def read_labels(path: str | os.PathLike) -> list[str]:
    """Read a ``labels.txt`` (one label per line, class-index order)."""
    path = Path(path)
    try:
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line != ""]
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None


def default_run_dir(name: str) -> Path:
    """``runs/NAME-YYYYmmdd-HHMMSS``: where a run goes when no ``--out`` is given."""
    safe = name.replace("hub:", "hub-").replace("/", "_").replace(":", "_").replace("\\", "_")[-40:]
    return Path("runs") / f"{safe}-{time.strftime('%Y%m%d-%H%M%S')}"


class RunLocked(UserError):
    """Another process holds the run's lock."""


class RunLock:
    """An exclusive lock on a run folder (``RUN/.lock``, ``flock``), naming the holder's pid.

    The operating system releases a ``flock`` when its process dies, so a killed run never
    leaves a lock behind; the file itself is removed on release.  A second process fails
    at once (no waiting) with the holder's pid in the message.
    """

    name = ".lock"

    def __init__(self, root: str | os.PathLike):
        self.path = Path(root) / self.name
        self._handle = None

    def acquire(self) -> "RunLock":
        import fcntl

        while True:
            handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held until release()
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.seek(0)
                holder = handle.read().strip() or "unknown"
                handle.close()
                raise RunLocked(f"{self.path.parent} is in use by another kcnn process (pid {holder}); "
                                "wait for it to finish or use another --out") from None
            # The holder before us may have removed the file after we opened it: lock the file
            # that is there now, or two processes could each hold a lock on a different file.
            try:
                same = os.fstat(handle.fileno()).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            handle.close()
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is None:
            return
        self.path.unlink(missing_ok=True)
        self._handle.close()
        self._handle = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


# Options that say how a run executes, not what it computes: a run may resume with others.
EXECUTION_OPTIONS = ("training.mixed_precision", "training.xla", "training.strategy", "data.cache")


def flatten_options(options: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` with JSON values (tuples become lists)."""
    flat: dict[str, Any] = {}
    for key, value in to_jsonable(options).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten_options(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def options_fingerprint(options: dict[str, Any]) -> str:
    """A short SHA-256 of the flattened options, in a stable order."""
    text = json.dumps(flatten_options(options), sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def differing_options(recorded: dict[str, Any], requested: dict[str, Any]) -> list[str]:
    """Keys whose values differ, as ``key (run: A, now: B)``."""
    old, new = flatten_options(recorded), flatten_options(requested)
    return [f"{key} (run: {json.dumps(old.get(key))}, now: {json.dumps(new.get(key))})"
            for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]


def check_finite(value: Any, name: str) -> None:
    """Refuse NaN and infinity for a float option (they pass every range check)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{name} must be a finite number, received: {value}")


class RunState:
    """``RUN/state.json``: which stages finished, which is running, and with which options.

    ``stages`` maps a stage name to ``{"status": "running"|"finished", "options": {...},
    "fingerprint": ..., "result": {...}}`` in the order the stages ran.  Written
    atomically at every change, so a kill leaves the last consistent state.
    """

    def __init__(self, path: str | os.PathLike, stages: dict[str, dict[str, Any]] | None = None):
        self.path = Path(path)
        self.stages: dict[str, dict[str, Any]] = dict(stages or {})

    @classmethod
    def read(cls, run: "RunDirectory") -> "RunState":
        """The run's state; for a run written before run state existed, what its metrics say finished."""
        if run.state_path.exists():
            return cls(run.state_path, read_json(run.state_path).get("stages", {}))
        stages: dict[str, dict[str, Any]] = {}
        metrics = run.read_metrics()
        for name in metrics.get("stages", {}) or ({"train": {}} if "test" in metrics or "parameters" in metrics
                                                 else {}):
            # Options unknown: such a stage can be followed, but never resumed or matched.
            stages[name] = {"status": "finished", "options": None, "fingerprint": None}
        return cls(run.state_path, stages)

    def write(self) -> None:
        atomic_write_json(self.path, {"format": 1, "stages": self.stages})

    def status(self, stage: str) -> str | None:
        return self.stages.get(stage, {}).get("status")

    def start(self, stage: str, options: dict[str, Any]) -> None:
        self.stages[stage] = {"status": "running", "options": to_jsonable(options),
                              "fingerprint": options_fingerprint(options)}
        self.write()

    def finish(self, stage: str, result: dict[str, Any]) -> None:
        self.stages[stage] = {**self.stages[stage], "status": "finished", "result": to_jsonable(result)}
        self.write()

    def forget(self, stage: str) -> None:
        self.stages.pop(stage, None)
        self.write()
