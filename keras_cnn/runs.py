"""The run directory: where one training run keeps everything it produced, its lock and its state.

Layout (every file is written atomically through :mod:`keras_cnn.io`)::

    RUN/
      config.json        every option with defaults resolved, library versions, seed
      labels.txt         class names, one per line, in class-index order
      history.csv        one row per epoch (stage, epoch, seconds, loss, accuracy, ...)
      model.keras        the best model so far (whole: base + head)
      metrics.json       test-set metrics
      thresholds.json    multi-label runs: each label's threshold, chosen on the validation part
      training.png       training curves
      state.json         run state: stages finished / running, each stage's options and fingerprint
      .lock              held (flock) by the process writing the run; names its pid
      stages/            the best model of a finished stage that a later stage starts from
      logs/              TensorBoard logs
      backup/            per-stage checkpoints, so a killed run resumes
      eval/              ``kcnn evaluate`` output (eval/validation/ for the validation part)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from keras_cnn.errors import UserError
from keras_cnn.io import atomic_write_json, atomic_write_text, read_json, read_labels, to_jsonable
from keras_cnn.versions import library_versions


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
    thresholds_path = property(lambda self: self.root / "thresholds.json")

    # Everything a run writes (the lock aside): what removing a whole run removes, and no more.
    ENTRIES = ("config.json", "labels.txt", "history.csv", "model.keras", "metrics.json", "training.png",
               "state.json", "skipped_images.csv", "split.csv", "stages", "logs", "backup", "eval", "features",
               "thresholds.json")

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


def differing_options(recorded: dict[str, Any], requested: dict[str, Any],
                      defaults: dict[str, Any] | None = None) -> list[str]:
    """Keys whose values differ, as ``key (run: A, now: B)``.

    ``defaults``: the options a default config records.  An option the recorded options lack
    (a run recorded before kcnn had it) counts as its default there, so such a run resumes
    and is found finished as long as the option is left at its default.
    """
    old, new = flatten_options(recorded), flatten_options(requested)
    missing = {key: value for key, value in flatten_options(defaults or {}).items() if key not in old}
    old = {**missing, **old}
    return [f"{key} (run: {json.dumps(old.get(key))}, now: {json.dumps(new.get(key))})"
            for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]


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
