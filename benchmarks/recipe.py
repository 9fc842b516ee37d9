"""The training recipe options on a real image set: test accuracy and time against the plain defaults.

Data: scikit-learn's handwritten digits (``sklearn.datasets.load_digits``: 1,797 real 8x8
grey scans of 10 digits, 0..16), scaled to 0..255, upsampled to 32x32 (bilinear) and written
as PNG files with a label CSV, then split by kcnn's SHA-1 split with a larger test part than its default (about
62 / 12 / 25 %, balanced).
scikit-learn is needed for this script only (``pip install scikit-learn``).

Every row trains ``lenet5_bn`` from scratch with the same seed, epochs and batch size through
the Python API (:func:`keras_cnn.train.fit.train_scratch`), changing one option:

  plain            the architecture's reference recipe (Adam 1e-2, batch 64)
  label smoothing  ``--label-smoothing 0.1``
  MixUp            ``--mixup 0.2``
  CutMix           ``--cutmix 1.0``
  MixUp + CutMix   ``--mixup 0.2 --cutmix 1.0`` (one of the two per batch)
  RandAugment      ``--randaugment 2,5``
  random erasing   ``--random-erasing 0.25``

Then, on the plain run: test-time augmentation (``kcnn evaluate --tta 4``: the image and three
90 % crops; no mirror images, the run did not train with flips) against plain evaluation, and
the float LiteRT file against the int8 one (``kcnn export --format litert --quantize int8``):
size and test accuracy.  With ``--seeds 2`` every training row is repeated with another seed
and the table shows the mean.  Prints the table and appends it, with the machine and its
load, to benchmarks/RESULTS.md (``--no-record`` skips).

    python benchmarks/recipe.py                       # 12 epochs, 1 seed
    python benchmarks/recipe.py --epochs 20 --seeds 2
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from common import RESULTS_PATH, command_line, describe_machine, load_average, machine_description, publish

SECTION_TITLE = "Training recipe options on scikit-learn's digits: `lenet5_bn`, accuracy and time"
ARCHITECTURE = "lenet5_bn"
ROWS = {
    "plain": None,
    "label smoothing 0.1": {"label_smoothing": 0.1},
    "MixUp 0.2": {"mixup": 0.2},
    "CutMix 1.0": {"cutmix": 1.0},
    "MixUp 0.2 + CutMix 1.0": {"mixup": 0.2, "cutmix": 1.0},
    "RandAugment 2,5": {"randaugment": [2, 5]},
    "random erasing 0.25": {"random_erasing": 0.25},
}
TTA_VIEWS = 4


def write_digits(folder: Path, limit: int | None = None,
                 validation_keys: range = range(64, 96)) -> tuple[Path, Path]:
    """The digits as 32x32 RGB PNG files plus a split CSV (kcnn's SHA-1 split); returns (split, images).

    The test part takes SHA-1 keys 0..63 (a quarter), the validation part ``validation_keys``
    (by default 64..95, an eighth; a benchmark that chooses thresholds on it asks for more).
    """
    import hashlib

    import pandas as pd
    from PIL import Image
    from sklearn.datasets import load_digits

    from keras_cnn.data.split import split_labels, write_split_csv

    digits = load_digits()
    images_dir = folder / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    count = len(digits.images) if limit is None else min(limit, len(digits.images))
    for image, label in zip(digits.images[:count], digits.target[:count]):
        pixels = np.clip(np.round(image * (255.0 / 16.0)), 0, 255).astype(np.uint8)
        picture = Image.fromarray(pixels, "L").resize((32, 32), Image.BILINEAR).convert("RGB")
        buffer = io.BytesIO()
        picture.save(buffer, "PNG")
        data = buffer.getvalue()
        name = hashlib.sha1(data).hexdigest() + ".png"
        (images_dir / name).write_bytes(data)
        rows.append({"objectId": name, "value": str(int(label))})
    # A quarter of the keys in the test part (0..63): about 340 test images once balanced, so one
    # image is 0.3 points of accuracy.
    split = split_labels(pd.DataFrame(rows), test_keys=range(0, 64), validation_keys=validation_keys, source="digits")
    return write_split_csv(split, folder / "split.csv"), images_dir


def train_row(split: Path, images: Path, regularization, out: Path, epochs: int, seed: int) -> dict:
    """Train one configuration; returns its summary (test accuracy, seconds)."""
    from keras_cnn.config import DataConfig, ModelConfig, RunConfig, TrainingConfig
    from keras_cnn.train.fit import train_scratch

    config = RunConfig(command="train", model=ModelConfig(kind="scratch", name=ARCHITECTURE),
                       data=DataConfig(split=str(split), images=str(images), regularization=regularization),
                       training=TrainingConfig(epochs=epochs, seed=seed))
    started = time.perf_counter()
    summary = train_scratch(config, out)
    summary["wall_seconds"] = time.perf_counter() - started
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seeds", type=int, default=1, help="Repeat each training row with this many seeds.")
    parser.add_argument("--limit", type=int, default=None, help="Use only the first N digits (smoke runs).")
    parser.add_argument("--rows", nargs="*", default=list(ROWS), help="Which rows to train (names as in ROWS).")
    parser.add_argument("--results", type=Path, default=RESULTS_PATH)
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--note", default=None, help="A line added under the section.")
    arguments = parser.parse_args(argv)

    import contextlib

    from keras_cnn.evaluate import evaluate_run
    from keras_cnn.export import export_run

    machine = machine_description()
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="kcnn-recipe-") as folder:
        folder = Path(folder)
        split, images = write_digits(folder, arguments.limit)
        for name in arguments.rows:
            for seed in range(1, arguments.seeds + 1):
                out = folder / "runs" / f"{len(results)}-{seed}"
                with contextlib.redirect_stdout(sys.stderr):
                    summary = train_row(split, images, ROWS[name], out, arguments.epochs, seed)
                summary["run_dir"] = out
                results.setdefault(name, []).append(summary)
                print(f"{name} (seed {seed}): test accuracy {summary['test_accuracy']:.4f}, "
                      f"{summary['seconds']:.1f} s", file=sys.stderr)
        plain_run = results["plain"][0]["run_dir"] if "plain" in results else None
        tta = quantization = sizes = None
        if plain_run is not None:
            with contextlib.redirect_stdout(sys.stderr):
                started = time.perf_counter()
                tta = evaluate_run(plain_run, tta=TTA_VIEWS)
                tta["seconds"] = time.perf_counter() - started
                exported = export_run(plain_run, folder / "export", formats=("litert",), quantize="int8",
                                      force=True)
            quantization = exported["quantization"]
            from keras_cnn.io import read_json

            sizes = read_json(Path(plain_run) / "config.json")["extra"]["sizes"]
    load_after = load_average()
    lines = [f"`{command_line(__file__, argv)}`", "", describe_machine(machine, load_after), ""]
    lines.append(f"`{ARCHITECTURE}` from scratch on scikit-learn's digits (1,797 real 8x8 scans upsampled to "
                 f"32x32; split {sizes}), {arguments.epochs} epochs, batch 64, Adam 1e-2, best epoch by "
                 f"validation loss; seeds 1..{arguments.seeds}; accuracy on the test part.")
    lines += ["", "| option | test accuracy (per seed) | mean | vs plain | training time (s) | vs plain |",
              "|---|---|---:|---:|---:|---:|"]
    plain_accuracy = statistics.mean(row["test_accuracy"] for row in results["plain"]) if "plain" in results else None
    plain_time = statistics.mean(row["seconds"] for row in results["plain"]) if "plain" in results else None
    for name, rows in results.items():
        accuracy = statistics.mean(row["test_accuracy"] for row in rows)
        seconds = statistics.mean(row["seconds"] for row in rows)
        each = ", ".join(f"{row['test_accuracy']:.4f}" for row in rows)
        change = f"{accuracy - plain_accuracy:+.4f}" if plain_accuracy is not None else "—"
        time_ratio = f"{seconds / plain_time:.2f}x" if plain_time else "—"
        lines.append(f"| {name} | {each} | {accuracy:.4f} | {change} | {seconds:.1f} | {time_ratio} |")
    if tta is not None:
        lines += ["", f"Test-time augmentation on the plain run (seed 1), {TTA_VIEWS} views "
                      f"({', '.join(tta['tta']['views'])}): test accuracy **{tta['accuracy']:.4f} plain -> "
                      f"{tta['tta']['accuracy']:.4f} with TTA** ({tta['tta']['accuracy'] - tta['accuracy']:+.4f}); "
                      f"loss {tta['loss']:.4f} -> {tta['tta']['loss']:.4f}; evaluation took {tta['seconds']:.1f} s "
                      f"for both."]
    if quantization is not None:
        float_part, quantized = quantization["float"], quantization["quantized"]
        lines += ["", "| LiteRT file | bytes | test accuracy |", "|---|---:|---:|",
                  f"| float32 `{float_part['file']}` | {float_part['bytes']:,} | "
                  f"{float_part.get('accuracy', float('nan')):.4f} |",
                  f"| int8 `{quantized['file']}` ({quantization['representative_images']} calibration images) | "
                  f"{quantized['bytes']:,} | {quantized.get('accuracy', float('nan')):.4f} |",
                  "", f"int8 / float size: **{quantization['size_ratio']:.2f}**; accuracy change "
                      f"{quantization.get('accuracy_change', float('nan')):+.4f} on {quantization.get('images')} "
                      f"{quantization.get('accuracy_part')} images."]
    lines.append("")
    publish(SECTION_TITLE, lines, arguments)
    return {"rows": {name: [row["test_accuracy"] for row in rows] for name, rows in results.items()},
            "tta": tta and tta["tta"], "quantization": quantization}


if __name__ == "__main__":
    main()
