"""Fault injection: kill `kcnn train` with SIGKILL at random instants, re-run it, check the run.

Each chain trains a tiny from-scratch net (``lenet5_bn``) on generated images into a fresh
run folder and kills the process at a random instant of its training (epochs, history
writes, checkpoints and best-model saves all included); it re-runs the same command and
kills it again, ``--chain`` times, then lets a last re-run finish.  The finished run must
hold:

* exit status 0 and a state.json that says the stage finished;
* a history with epochs 1..E exactly once each (contiguous, no duplicates);
* a ``model.keras`` whose validation loss equals the best ``val_loss`` in the history;
* no leftovers: no ``.tmp-`` files, no ``backup/`` folder, no ``.lock``.

The instants are drawn uniformly over the part of a reference run that follows its first
"Epoch" line (TensorFlow's start-up before it is not what is being tested).  A kill counts
as survived when the chain it belongs to ends with every invariant holding.  Prints kills
survived / tried and appends them to benchmarks/RESULTS.md (``--no-record`` to skip).

    python benchmarks/kill_safety.py [--kills 20] [--chain 4] [--epochs 3] [--seed 0]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import common

# The closing line of the image check ("  120/120 images in 1s"), printed just before the
# first epoch in a pipe (where Keras's own "Epoch 1/3" bars are off): training begins.
MARKER = " images in "


def prepare_data(folder: Path) -> tuple[Path, Path]:
    """Sample images (3 classes x 40, 32 px) and their split CSV."""
    from keras_cnn.data.collection import split_to_file
    from keras_cnn.data.sample import write_sample_data

    images = folder / "data"
    write_sample_data(images, classes=3, per_class=40, size=32, seed=0)
    split = folder / "split.csv"
    split_to_file(str(images / "label.csv"), str(split))
    return images, split


def command(images: Path, split: Path, run: Path, epochs: int) -> list[str]:
    return [sys.executable, "-m", "keras_cnn", "train", "lenet5_bn", "--split", str(split), "--images", str(images),
            "--epochs", str(epochs), "--batch-size", "8", "--out", str(run), "--json"]


def start(arguments: list[str]) -> tuple[subprocess.Popen, dict]:
    """Start a run; a thread notes when training begins (the marker line on stderr)."""
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    process = subprocess.Popen(arguments, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment)
    seen: dict = {"lines": []}

    def watch():
        buffer = b""
        while True:
            chunk = process.stderr.read1(4096) if hasattr(process.stderr, "read1") else process.stderr.read(1)
            if not chunk:
                break
            buffer += chunk
            if "training_started" not in seen and MARKER.encode() in buffer:
                seen["training_started"] = time.monotonic()
            buffer = buffer[-4096:]
            seen["lines"].append(chunk)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    seen["thread"] = thread
    return process, seen


def finish(process: subprocess.Popen, seen: dict, timeout: float = 600) -> int:
    stdout, _ = process.communicate(timeout=timeout)
    seen["thread"].join(timeout=5)
    seen["stdout"] = stdout.decode(errors="replace")
    return process.returncode


def stderr_text(seen: dict) -> str:
    return b"".join(seen["lines"]).decode(errors="replace")


def run_and_kill(arguments: list[str], delay: float) -> str:
    """Run; SIGKILL ``delay`` seconds after training begins. Returns 'killed' or 'finished first'."""
    process, seen = start(arguments)
    while "training_started" not in seen and process.poll() is None:
        time.sleep(0.01)
    if process.poll() is None:
        deadline = seen["training_started"] + delay
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
        finish(process, seen)
        return "killed"
    finish(process, seen)
    return "finished first"


def check_run(run: Path, images: Path, split: Path, epochs: int) -> list[str]:
    """Every invariant of a finished run; returns the broken ones."""
    problems = []
    state = json.loads((run / "state.json").read_text())
    if state["stages"].get("train", {}).get("status") != "finished":
        problems.append(f"stage not finished: {state}")
    with open(run / "history.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    if [int(row["epoch"]) for row in rows] != list(range(1, epochs + 1)):
        problems.append(f"history epochs {[row['epoch'] for row in rows]}")
    leftovers = [str(path.relative_to(run)) for path in run.rglob("*")
                 if ".tmp-" in path.name or path.name in ("backup", ".lock")]
    if leftovers:
        problems.append(f"leftovers {leftovers}")
    best = min(float(row["val_loss"]) for row in rows)
    saved = validation_loss(run / "model.keras", run)
    if abs(saved - best) > 1e-4 * max(1.0, abs(best)):
        problems.append(f"model.keras validation loss {saved:.6f} != best in history {best:.6f}")
    return problems


def validation_loss(model_path: Path, run: Path) -> float:
    """The saved model's loss on the run's validation part, computed as fit computes val_loss."""
    import keras
    import numpy as np

    from keras_cnn.config import RunConfig
    from keras_cnn.models.loading import load_model
    from keras_cnn.train.stage_data import prepare_folder_data

    config = RunConfig.from_dict(json.loads((run / "config.json").read_text()))
    data = prepare_folder_data(config.data, config.data.image_size, config.data.channels, config.training.batch_size,
                               config.training.seed, labels=config.labels)
    model = load_model(model_path)
    losses, counts = [], []
    loss = keras.losses.SparseCategoricalCrossentropy()
    for images, labels in data.validation:
        losses.append(float(loss(labels, model(images, training=False))) * len(labels))
        counts.append(len(labels))
    return float(np.sum(losses) / np.sum(counts))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20, help="Kills to make in all.")
    parser.add_argument("--chain", type=int, default=4, help="Kills of one run (and its re-runs) before it may finish.")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-record", action="store_true", help="Do not append to RESULTS.md.")
    parser.add_argument("--results", type=Path, default=common.RESULTS_PATH, help="Markdown file to append to.")
    parser.add_argument("--note", default=None, help="A line to add under the section.")
    options = parser.parse_args(argv)
    rng = random.Random(options.seed)
    load_before = common.load_average()
    folder = Path(tempfile.mkdtemp(prefix="kcnn-kill-"))
    try:
        images, split = prepare_data(folder)
        reference = folder / "reference"
        process, seen = start(command(images, split, reference, options.epochs))
        if finish(process, seen) != 0:
            print(stderr_text(seen)[-3000:], file=sys.stderr)
            return 1
        span = time.monotonic() - seen["training_started"]
        print(f"reference run: training took {span:.1f} s after '{MARKER}'", flush=True)
        tried = survived = 0
        failures = []
        chain = 0
        while tried < options.kills and chain < 4 * options.kills:
            chain += 1
            run = folder / f"chain-{chain:02d}"
            outcomes = []
            for _ in range(min(options.chain, options.kills - tried)):
                outcomes.append(run_and_kill(command(images, split, run, options.epochs), rng.uniform(0, span)))
                if outcomes[-1] != "killed":
                    break
            killed = outcomes.count("killed")
            process, seen = start(command(images, split, run, options.epochs))
            status = finish(process, seen)
            problems = [f"re-run exit {status}: {stderr_text(seen)[-500:]}"] if status else check_run(
                run, images, split, options.epochs)
            # A chain whose first draw fell after the end of training tested nothing; it is not counted.
            tried += killed
            survived += killed if not problems else 0
            line = f"chain {chain}: {', '.join(outcomes)}; " + ("ok" if not problems else "; ".join(problems))
            print(line, flush=True)
            if problems:
                failures.append(line)
            shutil.rmtree(run, ignore_errors=True)
        machine = common.machine_description()
        machine["load"] = load_before
        lines = [
            f"`{common.command_line(__file__, argv)}`", "",
            common.describe_machine(machine, common.load_average()), "",
            f"`kcnn train lenet5_bn`, {options.epochs} epochs on 3 x 40 generated 32 px images; each chain kills a "
            f"fresh run, then up to {options.chain - 1} of its re-runs, at instants drawn uniformly over the "
            f"{span:.1f} s of training of a reference run, then lets a last re-run finish.  Checked after it: exit "
            "0, stage finished, history epochs 1..E once each, model.keras's validation loss = the best val_loss "
            "in the history (within 1e-4), no .tmp- files, no backup/, no .lock.", "",
            f"**Kills survived / tried: {survived} / {tried}**" + (
                "" if not failures else "; failures: " + " | ".join(failures)),
        ]
        common.publish("Kill safety: SIGKILL at random instants, then a re-run", lines, options)
        return 0 if not failures and tried > 0 else 1
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
