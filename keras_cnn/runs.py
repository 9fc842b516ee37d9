"""The run directory: where one training run keeps everything it produced.

Layout (every file is written atomically: temporary name in the same folder, then rename)::

    RUN/
      config.json        every option with defaults resolved, library versions, seed
      labels.txt         class names, one per line, in class-index order
      history.csv        one row per epoch (stage, epoch, seconds, loss, accuracy, ...)
      model.keras        the best model so far (whole: base + head)
      metrics.json       test-set metrics
      training.png       training curves
      logs/              TensorBoard logs
      backup/            BackupAndRestore state, so a killed run resumes
      eval/              ``kcnn evaluate`` output
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from keras_cnn.errors import UserError


@contextlib.contextmanager
def atomic_path(final_path: str | os.PathLike, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``final_path``; on success rename it into place.

    On any exception the temporary file or folder is removed and ``final_path`` is
    left as it was, so a crash never leaves a half-written result.
    """
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{final_path.name}.tmp-"
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
