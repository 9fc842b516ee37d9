"""Learning-rate schedules and weight averaging on real images: which default should `kcnn train` use?

Trains the Keras book's ``lenet`` through kcnn's Python API (:func:`keras_cnn.train.fit.train_scratch`,
what ``kcnn train`` runs) on scikit-learn's handwritten digits (1,797 real 8x8 scans of
digits 0-9 from the UCI collection, shipped inside scikit-learn; scaled to 28x28 and
written as an ``mnist.npz`` in a temporary folder): 1,437 training images (the last 20 %
of them validate) and 360 test images, the same split for every variant.

Variants: the reference recipe (Adam 1e-3, batch 128, 12 epochs, constant rate) against
the same recipe with ``--schedule cosine``, ``--schedule onecycle``, ``--schedule cosine
--warmup-epochs 1`` and ``--ema 0.9``, each over ``--seeds`` seeds.  Prints the mean and
spread of test accuracy and loss per variant, its difference from the constant rate in
the same run, and appends a dated section with the machine to benchmarks/RESULTS.md
(``--no-record`` skips).  Needs scikit-learn (``pip install scikit-learn``).

    python benchmarks/schedules.py                 # 3 seeds
    python benchmarks/schedules.py --seeds 5 --learning-rate 3e-3
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from common import RESULTS_PATH, command_line, describe_machine, load_average, machine_description, publish

SECTION_TITLE = "Learning-rate schedules and EMA: `lenet` on scikit-learn's digits"
VARIANTS = {
    "constant (reference)": {},
    "cosine": {"schedule": "cosine"},
    "onecycle": {"schedule": "onecycle"},
    "cosine, warm-up 1 epoch": {"schedule": "cosine", "warmup_epochs": 1.0},
    "constant, EMA 0.9": {"ema": 0.9},
}


def write_digits_npz(path: Path, test_images: int = 360, seed: int = 0) -> Path:
    """scikit-learn's digits as 28x28 uint8 images in the layout of keras.datasets' mnist.npz."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    scaled = (digits.images * (255.0 / 16.0)).round().astype("uint8")
    images = np.stack([np.asarray(Image.fromarray(image).resize((28, 28), Image.BILINEAR)) for image in scaled])
    order = np.random.default_rng(seed).permutation(len(images))
    test, train = order[:test_images], order[test_images:]
    np.savez(path, x_train=images[train], y_train=digits.target[train].astype("uint8"),
             x_test=images[test], y_test=digits.target[test].astype("uint8"))
    return path


def train_variant(npz: Path, out_dir: Path, seed: int, learning_rate: float | None, epochs: int,
                  options: dict) -> dict:
    from keras_cnn.config import DataConfig, ModelConfig, RunConfig, TrainingConfig
    from keras_cnn.train.fit import train_scratch

    config = RunConfig(command="train", model=ModelConfig(kind="scratch", name="lenet"),
                       data=DataConfig(dataset="mnist", dataset_path=str(npz)),
                       training=TrainingConfig(seed=seed, learning_rate=learning_rate, epochs=epochs, **options))
    started = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):   # Keras progress bars: stdout is for the results
        summary = train_scratch(config, out_dir)
    return {"accuracy": summary["test_accuracy"], "loss": summary["test_loss"],
            "seconds": time.perf_counter() - started}


def spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    deviation = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.4f} ± {deviation:.4f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="Seeds per variant.")
    parser.add_argument("--learning-rate", type=float, default=None, help="Peak rate [default: lenet's 1e-3].")
    parser.add_argument("--epochs", type=int, default=12, help="Epochs per run [default: lenet's 12].")
    parser.add_argument("--results", default=str(RESULTS_PATH), help="The RESULTS.md to append to.")
    parser.add_argument("--no-record", action="store_true", help="Print only; do not append to RESULTS.md.")
    parser.add_argument("--note", default=None, help="A line added under the section.")
    arguments = parser.parse_args(argv)

    machine = machine_description()
    results: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as folder:
        npz = write_digits_npz(Path(folder) / "digits.npz")
        # Variants take turns seed by seed, so a burst of load hits all of them alike.
        for seed in range(arguments.seeds):
            for index, (name, options) in enumerate(VARIANTS.items()):
                run = Path(folder) / f"run-{index}-{seed}"
                results[name].append(train_variant(npz, run, seed, arguments.learning_rate,
                                                   arguments.epochs, options))
                print(f"{name}, seed {seed}: test accuracy {results[name][-1]['accuracy']:.4f}", file=sys.stderr)

    reference = statistics.fmean(row["accuracy"] for row in results["constant (reference)"])
    lines = [f"`{command_line(__file__, argv)}`", "",
             describe_machine(machine, load_after=load_average()), "",
             f"lenet, Adam, peak rate {arguments.learning_rate or 1e-3:g}, batch 128, {arguments.epochs} epochs; "
             f"{arguments.seeds} seeds per variant; 1,150 training / 287 validation / 360 test images.", "",
             "| variant | test accuracy (mean ± sd) | vs constant | test loss (mean ± sd) | s per run |",
             "|---|---:|---:|---:|---:|"]
    for name, rows in results.items():
        accuracy = statistics.fmean(row["accuracy"] for row in rows)
        lines.append(f"| {name} | {spread([row['accuracy'] for row in rows])} | {accuracy - reference:+.4f} | "
                     f"{spread([row['loss'] for row in rows])} | "
                     f"{statistics.fmean(row['seconds'] for row in rows):.1f} |")
    lines.append("")
    publish(SECTION_TITLE, lines, arguments)


if __name__ == "__main__":
    main()
