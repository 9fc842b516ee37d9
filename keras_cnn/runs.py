"""The run directory: where one training run keeps everything it produced, its lock and its state.

Layout (every file is written atomically through :mod:`keras_cnn.io`)::

    RUN/
      config.json        every option with defaults resolved, library versions, seed
      labels.txt         class names, one per line, in class-index order
      history.csv        one row per epoch (stage, epoch, seconds, loss, accuracy, ...)
      model.keras        the best model so far (whole: base + head)
      metrics.json       test-set metrics
      calibration.json   the temperature fitted on the validation part, the "none of these" threshold
      thresholds.json    multi-label runs: each label's threshold, chosen on the validation part
      training.png       training curves
      state.json         run state: stages finished / running, each stage's options and fingerprint
      .kcnn-run.json     the run's record: marks the folder as a kcnn run, lists the names kcnn writes here
      inputs.json        every image's SHA-1 and stamp, and the split file's (keras_cnn.data.input_record)
      input_changes.csv  what changed in the inputs, when a command refused them
      .lock              held (flock) by the process writing the run; names its pid
      stages/            the best model of a finished stage that a later stage starts from
      logs/              TensorBoard logs
      backup/            per-stage checkpoints, so a killed run resumes
      eval/              ``kcnn evaluate`` output (eval/validation/ for the validation part)
      duplicates.txt ... the full lists behind shortened messages about the run's images (:data:`RunDirectory.LISTS`)

A run folder owns only what kcnn made (:meth:`RunDirectory.check_ownership`,
:meth:`RunDirectory.claim`): kcnn writes, replaces and removes only the names its record
lists (:data:`RunDirectory.ENTRIES`; a folder among them is kcnn's with all it holds), and
never a file it did not make.  A run made before the record existed (it has kcnn's
``state.json``) counts as kcnn's for those names.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import keras_cnn
from keras_cnn.data.files import bounded_list_message
from keras_cnn.errors import UserError
from keras_cnn.io import (INPUT_CHANGES, INPUT_RECORD, RUN_MARKER, TEMPORARY_MARK, atomic_write_json, atomic_write_text,
                          is_kcnn_run, read_json, read_labels, remove_stale_temporaries, to_jsonable)
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
    inputs_path = property(lambda self: self.root / INPUT_RECORD)
    input_changes_path = property(lambda self: self.root / INPUT_CHANGES)
    calibration_path = property(lambda self: self.root / "calibration.json")
    thresholds_path = property(lambda self: self.root / "thresholds.json")

    record_path = property(lambda self: self.root / RUN_MARKER)

    # The full lists behind shortened messages about the run's images, which reading them writes
    # into the run (keras_cnn.data: RUN/ is the list prefix of the split a run makes, and the
    # folder of its bad-image lists).  A refusal names one, so a failed first start keeps them.
    LISTS = ("duplicates.txt", "merged.txt", "missing.txt", "unreadable.txt", "unmatched.txt",
             "empty_label_folders.txt", "bad_images.txt", "large_images.txt", "bad_train_images.txt",
             "bad_validation_images.txt", "bad_test_images.txt")

    # Every name a run writes (its record and lock aside): what kcnn may write, replace or remove
    # in a run folder, and no more.
    ENTRIES = ("config.json", "labels.txt", "history.csv", "model.keras", "metrics.json", "training.png",
               "state.json", "skipped_images.csv", "split.csv", INPUT_RECORD, INPUT_CHANGES, "stages", "logs", "backup",
               "eval", "features", "lr_find.png", "lr_find.csv", "calibration.json",
               "thresholds.json", *LISTS)

    # ".overwritten.tmp-PID-XXXXXXXX": where --overwrite keeps a run's files until the stage that
    # replaces them has started (:meth:`set_aside`); a kill leaves it for the next start to remove.
    SET_ASIDE = "overwritten"

    # What a finished run of a kcnn older than run states holds (what :meth:`require` asks for).
    OLDER_RUN = ("config.json", "labels.txt", "model.keras")

    def recorded_entries(self) -> set[str] | None:
        """The names the run's record lists; an older run's :data:`ENTRIES`; ``None`` for a folder kcnn did not make."""
        if self.record_path.is_file():
            try:
                record = read_json(self.record_path)
                # A record written before kcnn listed its lists: the lists it wrote here are its own.
                return (set(record["entries"]) | set(self.LISTS)) & set(self.ENTRIES)
            except (UserError, KeyError, TypeError):
                # A damaged record still marks a run; the names kcnn writes are the ones it knows.
                return set(self.ENTRIES)
        if is_kcnn_run(self.root) or all((self.root / name).is_file() for name in self.OLDER_RUN):
            return set(self.ENTRIES)   # made before runs had a record: kcnn's names are kcnn's
        return None

    def check_ownership(self, overwrite: bool = False) -> None:
        """Refuse, before anything is written, a folder whose files kcnn would replace without having made them.

        A new or empty folder, or a kcnn run, is fine.  A folder that holds other files is
        refused unless ``overwrite``, and even then when one of them has a name kcnn writes.
        """
        if not self.root.is_dir():
            return
        recorded = self.recorded_entries()
        if recorded is None:
            contents = sorted(path.name for path in self.root.iterdir() if path.name != RunLock.name)
            if contents and not overwrite:
                raise UserError(bounded_list_message(
                    lambda listed: f"{self.root} is not a kcnn run and is not empty ({listed}): use a new --out, "
                                   "or --overwrite to put a run beside those files (kcnn never removes a file it "
                                   "did not make)", contents, None))
            recorded = set()
        foreign = [name for name in self.ENTRIES
                   if name not in recorded and ((self.root / name).exists() or (self.root / name).is_symlink())]
        if foreign:
            raise UserError(bounded_list_message(
                lambda listed: f"{self.root} holds {listed}, which kcnn did not make and a run would replace; "
                               "move them, or use another --out", foreign, None))

    def claim(self) -> None:
        """Record the folder as a kcnn run owning :data:`ENTRIES` (call after :meth:`check_ownership`)."""
        recorded = self.recorded_entries() or set()
        if self.record_path.is_file() and recorded >= set(self.ENTRIES):
            return
        atomic_write_json(self.record_path, {
            "format": 1, "made_by": f"kcnn {keras_cnn.__version__}",
            "note": "a kcnn run: kcnn writes, replaces and removes only the entries listed here",
            "entries": sorted(recorded | set(self.ENTRIES)),
        })

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete what killed writes of this run left (only kcnn's temporary names); hold the lock."""
        recorded = self.recorded_entries() or set()
        return remove_stale_temporaries(self.root, names=recorded | {RUN_MARKER, self.SET_ASIDE}, folders=recorded)

    def _present(self, names) -> list[str]:
        return [name for name in sorted(names) if (self.root / name).exists() or (self.root / name).is_symlink()]

    def _remove_entry(self, name: str) -> None:
        path = self.root / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()

    def clear(self, keep: set[str] | frozenset[str] = frozenset()) -> None:
        """Remove every file and folder of the run that kcnn recorded but ``keep`` (not the record, the lock,
        nor other files)."""
        for name in sorted((self.recorded_entries() or set()) - set(keep)):
            self._remove_entry(name)

    def remove_lists(self) -> None:
        """Remove the lists of an earlier reading of the images (:data:`LISTS`): a new reading writes its own."""
        for name in self.LISTS:
            self._remove_entry(name)

    def forget(self) -> None:
        """Remove the run kcnn made here (a command that failed at once): its files, then its record.

        The lists a refusal names (:data:`LISTS`) stay, and with them the record that says they
        are kcnn's, so the same command run again is not refused for them.
        """
        kept = set(self._present(self.LISTS))
        self.clear(keep=kept)
        if not kept:
            self.record_path.unlink(missing_ok=True)

    def set_aside(self) -> Path | None:
        """Move every file of the run into a temporary folder in it, for a stage that starts the run over.

        ``--overwrite`` of a first stage: nothing is lost until the new stage has passed every
        check and started (then :meth:`drop_aside`); if it fails before, :meth:`put_back`
        restores the run as it was.  ``None`` when the run has no file to set aside.
        """
        names = self._present(self.recorded_entries() or ())
        if not names:
            return None
        folder = Path(tempfile.mkdtemp(prefix=f".{self.SET_ASIDE}{TEMPORARY_MARK}{os.getpid()}-", dir=self.root))
        for name in names:
            os.replace(self.root / name, folder / name)
        return folder

    def put_back(self, folder: Path) -> None:
        """Undo :meth:`set_aside`: what the failed stage wrote goes and the run's files come back.

        A list the failed stage wrote where the run had none stays: its refusal names it.
        """
        old_names = {path.name for path in folder.iterdir()}
        self.clear(keep=set(self._present(self.LISTS)) - old_names)
        for name in sorted(old_names):
            os.replace(folder / name, self.root / name)
        shutil.rmtree(folder)

    @staticmethod
    def drop_aside(folder: Path | None) -> None:
        """The stage that replaces the set-aside run has started: its old files go for good."""
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    def stage_model_path(self, stage: str) -> Path:
        """The best model at the end of ``stage``, kept for the stage that starts from it."""
        return self.stages_dir / f"{stage}.keras"

    def create(self) -> "RunDirectory":
        """Make the folder (and parents); an existing run is kept so it can resume (nothing is claimed yet)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"cannot create run directory {self.root}: {error.strerror}") from None
        return self

    def require(self) -> "RunDirectory":
        """Check this is a finished run (config, labels and model present)."""
        for path in (self.root / name for name in self.OLDER_RUN):
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


def check_run_placement(root: str | os.PathLike, images: str | os.PathLike | None = None,
                        files: dict[str, str | os.PathLike | None] | None = None) -> None:
    """Refuse a run folder that would mix with its inputs, before anything is written.

    ``images``: the image folder (the run may be neither it, inside it, nor around it:
    a class folder named ``eval`` or ``logs`` would be taken for the run's own).  ``files``:
    input files by option (``{"--split": path}``); none may be where the run writes one of
    its own files.  A split file beside the run folder is fine.
    """
    out = Path(os.path.realpath(root))
    if images:
        folder = Path(os.path.realpath(images))
        if out == folder or folder in out.parents:
            raise UserError(f"the run folder {root} is {'' if out == folder else 'inside '}the image folder "
                            f"{images}: the run's files would mix with the images; choose an --out outside it")
        if out in folder.parents:
            raise UserError(f"the image folder {images} is inside the run folder {root}: choose an --out that "
                            "does not hold the images")
    for option, path in (files or {}).items():
        if not path:
            continue
        target = Path(os.path.realpath(path))
        if out in target.parents:
            name = target.relative_to(out).parts[0]
            if name in RunDirectory.ENTRIES or name == RUN_MARKER:
                raise UserError(f"{option} {path} is where the run keeps its own {name}, which the run would "
                                "replace: move that file out of the run folder (beside it is fine)")


# The input files a first stage reads, by the option that names them: none may be a file the run
# writes (check_run_placement), or --overwrite would delete it.
INPUT_FILE_OPTIONS = {"split": "--split", "dataset_path": "--dataset-path", "exclude": "--exclude",
                      "relabel": "--relabel"}


def input_files(data: dict[str, Any], weights: str | None = None) -> dict[str, str | None]:
    """``{option: path}`` of the files a first stage reads: ``data`` holds DataConfig's fields;
    ``weights``: ``--weights``, a file unless ``imagenet`` or ``none``."""
    files = {option: data.get(field) for field, option in INPUT_FILE_OPTIONS.items()}
    if weights and str(weights).strip().lower() not in ("imagenet", "none"):
        files["--weights"] = weights
    return files


def default_run_dir(name: str) -> Path:
    """``runs/NAME-YYYYmmdd-HHMMSS``: where a run goes when no ``--out`` is given."""
    safe = name.replace("hub:", "hub-").replace("/", "_").replace(":", "_").replace("\\", "_")[-40:]
    return Path("runs") / f"{safe}-{time.strftime('%Y%m%d-%H%M%S')}"


class RunLocked(UserError):
    """Another process holds the run's lock."""


# run folder (real path) -> this process's reentrant lock on it
_REENTRANT_LOCKS: dict[str, "RunLock"] = {}


class RunLock:
    """An exclusive lock on a run folder (``RUN/.lock``, ``flock``), naming the holder's pid.

    The operating system releases a ``flock`` when its process dies, so a killed run never
    leaves a lock behind; the file itself is removed on release.  A second process fails
    at once (no waiting) with the holder's pid in the message.  A ``reentrant`` lock may be
    taken again by the same process: the command line takes it so before TensorFlow loads,
    and the work under it takes it again without waiting on itself.  A folder the lock had
    to create (with the parents it made) is removed again on release when nothing else was left in it.
    """

    name = ".lock"

    def __init__(self, root: str | os.PathLike, reentrant: bool = False):
        self.root = Path(root)
        self.path = self.root / self.name
        self.reentrant = reentrant
        self._handle = None
        self._nested = False
        self.created_folders: list[Path] = []

    def acquire(self) -> "RunLock":
        import fcntl

        key = os.path.realpath(self.root)
        if key in _REENTRANT_LOCKS:
            self._nested = True
            return self
        if not self.root.exists():
            # The folders this makes, innermost first (runs/NAME-TIME and runs/ for a default --out).
            missing = [self.root, *(parent for parent in self.root.parents if not parent.exists())]
            try:
                self.root.mkdir(parents=True)
            except FileExistsError:
                pass
            except OSError as error:
                raise UserError(f"cannot create run directory {self.root}: {error.strerror}") from None
            else:
                self.created_folders = [folder for folder in missing if folder.is_dir()]
        while True:
            try:
                handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held until release()
            except OSError as error:
                raise UserError(f"cannot lock {self.root}: {error.strerror}") from None
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.seek(0)
                holder = handle.read().strip() or "unknown"
                handle.close()
                self._remove_created_folders()
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
        if self.reentrant:
            _REENTRANT_LOCKS[key] = self
        return self

    def release(self) -> None:
        if self._nested:
            self._nested = False
            return
        if self._handle is None:
            return
        if self.reentrant:
            _REENTRANT_LOCKS.pop(os.path.realpath(self.root), None)
        self.path.unlink(missing_ok=True)
        self._handle.close()
        self._handle = None
        self._remove_created_folders()

    def _remove_created_folders(self) -> None:
        """The folders this lock made go again when nothing was written into them (a refused command)."""
        for folder in self.created_folders:
            try:
                folder.rmdir()
            except OSError:
                break   # not empty: this and the folders above it stay
        self.created_folders = []

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
    differences, seen = [], set()
    for key in sorted(set(old) | set(new), key=_importance):
        if old.get(key) == new.get(key):
            continue
        before, after = json.dumps(old.get(key)), json.dumps(new.get(key))
        # One option can be recorded under two sections (fine-tuning records its own training
        # options beside the training ones): each change is named once.
        change = (key.rsplit(".", 1)[-1], before, after)
        if change not in seen:
            seen.add(change)
            differences.append(f"{key} (run: {before}, now: {after})")
    return differences


# The order a refusal names changed options in: what the model is first (its name before the
# input shape that follows from it), then how it trains, then the data's resolved settings.
_SECTION_ORDER = ("command", "model.name", "model", "finetune", "training", "data")


def _importance(key: str) -> tuple[int, str]:
    rank = next((index for index, prefix in enumerate(_SECTION_ORDER)
                 if key == prefix or key.startswith(f"{prefix}.")), len(_SECTION_ORDER))
    return rank, key


class RunState:
    """``RUN/state.json``: which stages finished, which is running, and with which options.

    ``stages`` maps a stage name to ``{"status": "running"|"finished", "options": {...},
    "fingerprint": ..., "result": {...}}`` in the order the stages ran.  Written
    atomically at every change, so a kill leaves the last consistent state.
    """

    STATUSES = ("running", "finished")

    def __init__(self, path: str | os.PathLike, stages: dict[str, dict[str, Any]] | None = None,
                 damaged: bool = False):
        self.path = Path(path)
        self.stages: dict[str, dict[str, Any]] = dict(stages or {})
        self.damaged = damaged   # the file could not be read: nothing is known of the run's stages

    @classmethod
    def read(cls, run: "RunDirectory", overwrite: bool = False) -> "RunState":
        """The run's state; for a run written before run state existed, what its metrics say finished.

        A state file kcnn cannot read is one line naming ``--overwrite``; with ``overwrite``
        the state comes back ``damaged`` (and empty), for the caller to start the run over.
        """
        if run.state_path.exists() or run.state_path.is_symlink():
            try:
                return cls(run.state_path, cls._stages_of(read_json(run.state_path), run.state_path))
            except UserError as error:
                if not overwrite:
                    raise UserError(f"{error}; --overwrite starts the run over") from None
                return cls(run.state_path, damaged=True)
        stages: dict[str, dict[str, Any]] = {}
        metrics = run.read_metrics()
        for name in metrics.get("stages", {}) or ({"train": {}} if "test" in metrics or "parameters" in metrics
                                                 else {}):
            # Options unknown: such a stage can be followed, but never resumed or matched.
            stages[name] = {"status": "finished", "options": None, "fingerprint": None}
        return cls(run.state_path, stages)

    @classmethod
    def _stages_of(cls, payload: Any, path: Path) -> dict[str, dict[str, Any]]:
        """The ``stages`` of a state file's content, checked (``UserError`` naming what is wrong)."""
        stages = payload.get("stages") if isinstance(payload, dict) else None
        if not isinstance(stages, dict) or not all(
                isinstance(entry, dict) and entry.get("status") in cls.STATUSES for entry in stages.values()):
            raise UserError(f"{path} is not a kcnn run state (it must list each stage with its status)")
        return stages

    def write(self) -> None:
        atomic_write_json(self.path, {"format": 1, "stages": self.stages})

    def status(self, stage: str) -> str | None:
        return self.stages.get(stage, {}).get("status")

    def unfinished(self) -> str | None:
        """Why the run's model is not a finished one (a stage running or stopped, none finished), or ``None``.

        A run without a state file (made by hand, or by a kcnn older than run states) is taken as it is.
        """
        stopped = [name for name, entry in self.stages.items() if entry.get("status") != "finished"]
        if stopped:
            return f"stage '{stopped[-1]}' has not finished (it is training now, or was stopped)"
        if not self.stages and self.path.exists():
            return "no stage has finished"
        return None

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
