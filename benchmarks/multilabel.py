"""Multi-label training on real images: 2x2 mosaics of scikit-learn's digits, mAP and F1 per net.

Data: scikit-learn's handwritten digits (``sklearn.datasets.load_digits``: 1,797 real 8x8 grey
scans, 0..16).  The digits are dealt into three disjoint pools (60 % train, 15 % validation,
25 % test); each mosaic puts four digits of one pool side by side (2x2, 16x16 pixels, scaled
to 0..255 and upsampled to 32x32) and its labels are the distinct digits it shows (1 to 4 of
the 10).  So no test mosaic shares a digit scan with a training mosaic.  The mosaics are
written as PNG files with a multi-label split CSV (``objectId,labels,type``, the parts given
by the pools).  scikit-learn is needed for this script only (``pip install scikit-learn``).

Every net trains from scratch through the Python API (:func:`keras_cnn.train.fit.train_scratch`),
twice on the same images: multi-label (one sigmoid per digit, binary cross-entropy, one
temperature fitted on the validation part, then thresholds chosen per label on the calibrated
validation probabilities), and single-label (the top-left digit as the one label, the
reference softmax) to compare the time per epoch.  The table gives the multi-label run's test
macro / micro mAP, macro / micro F1 at the chosen thresholds, exact-match ratio, Hamming loss,
the temperature with the test ECE over every (image, label) pair before and after it, and both
runs' median epoch time after the first.  Prints the table and appends
it, with the machine and its load, to benchmarks/RESULTS.md (``--no-record`` skips).

    python benchmarks/multilabel.py                          # lenet, cifar10_net, lenet5_bn; 15 epochs
    python benchmarks/multilabel.py --nets lenet --epochs 5 --train 1000
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from common import (add_recording_arguments, command_line, describe_machine, load_average, machine_description,
                    publish, steady_epoch_seconds)

SECTION_TITLE = "Multi-label training on 2x2 mosaics of scikit-learn's digits: mAP, F1 and epoch time per net"
NETS = ("lenet", "cifar10_net", "lenet5_bn")
POOLS = {"train": 0.60, "validation": 0.15, "test": 0.25}
MOSAIC_SIDE = 32


def digit_pools(seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The digits (0..255 uint8 8x8 images, labels) dealt at random into disjoint pools per part."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.clip(np.round(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    order = np.random.default_rng(seed).permutation(len(images))
    pools, start = {}, 0
    for part, share in POOLS.items():
        end = len(order) if part == "test" else start + int(round(share * len(order)))
        chosen = order[start:end]
        pools[part] = (images[chosen], digits.target[chosen])
        start = end
    return pools


def mosaics(images: np.ndarray, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` 2x2 mosaics (uint8 [count, 16, 16]) of digits drawn from one pool, and the pool index of
    each mosaic's four digits ([count, 4]: top left, top right, bottom left, bottom right)."""
    picks = np.random.default_rng(seed).integers(0, len(images), size=(count, 4))
    tiles = images[picks]                                            # [count, 4, 8, 8]
    rows = [np.concatenate([tiles[:, 0], tiles[:, 1]], axis=2), np.concatenate([tiles[:, 2], tiles[:, 3]], axis=2)]
    return np.concatenate(rows, axis=1), picks


def write_mosaics(folder: Path, counts: dict[str, int], seed: int) -> tuple[Path, Path, Path]:
    """PNG mosaics, a multi-label split CSV and a single-label one (the top-left digit); returns
    (multi-label split, single-label split, image folder)."""
    import pandas as pd
    from PIL import Image

    from keras_cnn.data.split import write_split_csv

    images_dir = folder / "images"
    rows = []
    for part_index, (part, (pool_images, pool_labels)) in enumerate(digit_pools(seed).items()):
        (images_dir / part).mkdir(parents=True, exist_ok=True)
        pictures, picks = mosaics(pool_images, counts[part], seed + 1 + part_index)
        for number, (pixels, picked) in enumerate(zip(pictures, picks)):
            picture = Image.fromarray(pixels, "L").resize((MOSAIC_SIDE, MOSAIC_SIDE), Image.BILINEAR)
            buffer = io.BytesIO()
            picture.save(buffer, "PNG")
            name = f"{part}/{number:05d}.png"
            (images_dir / name).write_bytes(buffer.getvalue())
            shown = sorted({int(label) for label in pool_labels[picked]})
            rows.append({"objectId": name, "value": ";".join(map(str, shown)), "type": part,
                         "single": str(int(pool_labels[picked[0]]))})
    frame = pd.DataFrame(rows)
    multi = write_split_csv(frame[["objectId", "value", "type"]], folder / "split_multi.csv", label_column="labels")
    single = write_split_csv(frame[["objectId", "single", "type"]].rename(columns={"single": "value"}),
                             folder / "split_single.csv")
    return multi, single, images_dir


def train(net: str, split: Path, images: Path, out: Path, epochs: int, seed: int) -> dict:
    """Train ``net`` from scratch on ``split`` (multi-label or not, as the split CSV records); its summary."""
    from keras_cnn.config import DataConfig, ModelConfig, RunConfig, TrainingConfig
    from keras_cnn.io import read_json
    from keras_cnn.train.fit import train_scratch
    from keras_cnn.train.callbacks import read_history

    config = RunConfig(command="train", model=ModelConfig(kind="scratch", name=net),
                       data=DataConfig(split=str(split), images=str(images)),
                       training=TrainingConfig(epochs=epochs, seed=seed))
    started = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        summary = train_scratch(config, out)
    summary["wall_seconds"] = time.perf_counter() - started
    seconds = [float(row["seconds"]) for row in read_history(out / "history.csv")]
    summary["epoch_seconds"] = steady_epoch_seconds(seconds, "median")
    summary["test"] = read_json(out / "metrics.json").get("test", {})
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nets", nargs="*", default=list(NETS), help="From-scratch nets to train.")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--train", type=int, default=4000, help="Training mosaics (validation: a quarter of it, "
                                                                "test: 2/5 of it).")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-single", action="store_true", help="Skip the single-label timing runs.")
    add_recording_arguments(parser)
    arguments = parser.parse_args(argv)

    counts = {"train": arguments.train, "validation": max(arguments.train // 4, 20),
              "test": max(arguments.train * 2 // 5, 20)}
    machine = machine_description()
    results = {}
    with tempfile.TemporaryDirectory(prefix="kcnn-multilabel-") as folder:
        folder = Path(folder)
        multi, single, images = write_mosaics(folder, counts, arguments.seed)
        for net in arguments.nets:
            row = {"multi": train(net, multi, images, folder / "runs" / f"{net}-multi", arguments.epochs,
                                  arguments.seed)}
            if not arguments.no_single:
                row["single"] = train(net, single, images, folder / "runs" / f"{net}-single", arguments.epochs,
                                      arguments.seed)
            test = row["multi"]["test"]
            print(f"{net}: test mAP {test['macro_map']:.4f} (micro {test['micro_map']:.4f}), micro F1 "
                  f"{test['micro_f1']:.4f}, exact match {test['exact_match']:.4f}", file=sys.stderr)
            results[net] = row
    lines = [f"`{command_line(__file__, argv)}`", "", describe_machine(machine, load_average()), ""]
    lines.append(f"2x2 mosaics of scikit-learn's digits (32x32 grey PNG; labels = the distinct digits shown, "
                 f"{counts['train']:,} / {counts['validation']:,} / {counts['test']:,} mosaics in train / validation "
                 f"/ test, each part built from its own digit scans); from scratch, {arguments.epochs} epochs at "
                 f"each net's reference recipe, best epoch by validation loss, one temperature fitted on the "
                 f"validation part, then thresholds per label chosen on its calibrated probabilities (best F1); "
                 f"metrics on the test part (ECE: every (image, label) pair as one yes/no decision, 15 bins, "
                 f"the model's own -> calibrated). Single-label: the same images and "
                 f"recipe, the top-left digit as the one label (softmax), for the time per epoch.")
    lines += ["", "| net | test mAP (macro) | mAP (micro) | F1 (macro) | F1 (micro) | exact match | Hamming loss | "
                  "temperature | test ECE | epoch (s) multi-label | epoch (s) single-label | multi / single |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for net, row in results.items():
        test = row["multi"]["test"]
        multi_seconds = row["multi"]["epoch_seconds"]
        single_seconds = row["single"]["epoch_seconds"] if "single" in row else None
        ratio = f"{multi_seconds / single_seconds:.2f}x" if single_seconds else "—"
        single_text = f"{single_seconds:.2f}" if single_seconds else "—"
        calibration = row["multi"].get("calibration") or {}
        temperature = f"{calibration['temperature']:.3g}" if calibration else "—"
        ece = f"{calibration['ece_before']:.4f} → {calibration['ece_after']:.4f}" if calibration else "—"
        lines.append(f"| `{net}` | {test['macro_map']:.4f} | {test['micro_map']:.4f} | {test['macro_f1']:.4f} | "
                     f"{test['micro_f1']:.4f} | {test['exact_match']:.4f} | {test['hamming_loss']:.4f} | "
                     f"{temperature} | {ece} | {multi_seconds:.2f} | {single_text} | {ratio} |")
    lines.append("")
    publish(SECTION_TITLE, lines, arguments)
    return {net: {"test": row["multi"]["test"], "calibration": row["multi"].get("calibration"),
                  "epoch_seconds": row["multi"]["epoch_seconds"],
                  "single_epoch_seconds": row.get("single", {}).get("epoch_seconds")} for net, row in results.items()}


if __name__ == "__main__":
    main()
