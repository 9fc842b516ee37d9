"""Answers you can trust, measured: calibration, "none of these", unknown classes, heat maps and their cost.

Data: scikit-learn's handwritten digits (``sklearn.datasets.load_digits``: 1,797 real 8x8
scans, upsampled to 32x32 PNGs as ``benchmarks/recipe.py`` writes them), split by kcnn's SHA-1
split with a quarter of the images in the test part and an eighth validating; and kcnn's
generated patch images (:mod:`keras_cnn.data.probes`: the class is the colour of a 6x6 patch
at a random place in 32x32 noise).  scikit-learn is needed for this script only.

1. **Calibration** (every row trained from scratch by :func:`keras_cnn.train.fit.train_scratch`,
   which fits the temperature on the validation part when the stage ends; then ``kcnn evaluate
   --target-accuracy 0.99``): test accuracy, the fitted temperature, expected calibration error
   (15 bins), negative log-likelihood and Brier score before and after it, and the threshold
   chosen on the validation part with the coverage and accuracy it gives on the test part.
   "wrong labels" rows train on a split whose training part has that share of labels replaced
   by another digit (validation and test keep the true ones): trained long, the network
   memorises them and becomes overconfident.
2. **Unknown classes**: AUROC of telling the digits' test images from images of classes the
   model never saw, by three scores (higher = known): the top calibrated probability, the top
   logit and the energy ``T log sum exp(z / T)``.  Far: 32x32 crops of scikit-learn's two sample
   photos against the 10-digit models; near: the digits 5-9 against a lenet trained on 0-4.
3. **Heat maps on the patch images**: a ``cifar10_net`` trained on them, exported, and
   ``kcnn predict --explain``: the share of test images whose heat-map peak (relative to the
   image as given) falls on the patch.
4. **Cost of a heat map**: images per second of the export's explain function (Grad-CAM: one
   forward and one backward pass per batch) against a plain forward pass of the same model,
   both traced with ``tf.function``, in the same run.

    python benchmarks/calibration.py
    python benchmarks/calibration.py --parts calibration --rows "lenet, 30 % wrong labels" --no-record
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from common import RESULTS_PATH, command_line, describe_machine, load_average, machine_description, publish

SECTION_TITLE = "Calibration, 'none of these', unknown classes and heat maps on scikit-learn's digits"
TARGET_ACCURACY = 0.99
# name -> (architecture, epochs, share of wrong training labels)
ROWS = {
    "lenet, 10 epochs": ("lenet", 10, 0.0),
    "lenet, 40 epochs": ("lenet", 40, 0.0),
    "lenet, 30 % wrong labels": ("lenet", 60, 0.3),
    "lenet5_bn, 20 epochs": ("lenet5_bn", 20, 0.0),
    "cifar10_net, 20 epochs": ("cifar10_net", 20, 0.0),
}
OVERCONFIDENT_ROW = "lenet, 30 % wrong labels"
SPEED_MODELS = {"lenet": None, "cifar10_net": None, "mobilenet_v3_small": 224, "efficientnet_b0": 224}
PARTS = ("calibration", "unknown", "patches", "speed")


def digits_data(folder: Path, limit: int | None) -> tuple[Path, Path]:
    """The digits as PNGs and kcnn's split (a quarter test, an eighth validation); (split CSV, images)."""
    from recipe import write_digits

    return write_digits(folder, limit)


def split_with_wrong_labels(split: Path, share: float, folder: Path) -> Path:
    from keras_cnn.data.probes import relabel_training_rows
    from keras_cnn.data.split import read_split_csv, write_split_csv

    if not share:
        return split
    return write_split_csv(relabel_training_rows(read_split_csv(split), share, seed=1),
                           folder / f"split-wrong-{int(share * 100)}.csv")


def train(split: Path, images: Path, architecture: str, epochs: int, out: Path, batch_size: int | None = None) -> dict:
    from keras_cnn.config import DataConfig, ModelConfig, RunConfig, TrainingConfig
    from keras_cnn.train.fit import train_scratch

    config = RunConfig(command="train", model=ModelConfig(kind="scratch", name=architecture),
                       data=DataConfig(split=str(split), images=str(images)),
                       training=TrainingConfig(epochs=epochs, seed=1, batch_size=batch_size))
    with contextlib.redirect_stdout(sys.stderr):
        return train_scratch(config, out)


def calibration_rows(split: Path, images: Path, folder: Path, names: list[str],
                     epochs_override: int | None = None) -> dict[str, dict]:
    """Train each row, evaluate it with --target-accuracy; returns name -> {run, summary, evaluation}."""
    from keras_cnn.evaluate import evaluate_run

    results = {}
    for name in names:
        architecture, epochs, share = ROWS[name]
        epochs = epochs_override or epochs
        run = folder / "runs" / name.replace(" ", "_").replace(",", "").replace("%", "pct")
        summary = train(split_with_wrong_labels(split, share, folder), images, architecture, epochs, run)
        with contextlib.redirect_stdout(sys.stderr):
            evaluation = evaluate_run(run, target_accuracy=TARGET_ACCURACY)
        results[name] = {"run": run, "summary": summary, "evaluation": evaluation}
        calibration = evaluation["calibration"]
        print(f"{name}: accuracy {evaluation['accuracy']:.4f}, T {calibration['temperature']}, ECE "
              f"{calibration['ece_before']:.4f} -> {calibration['ece_after']:.4f}", file=sys.stderr)
    return results


def done_when(row: dict) -> dict:
    """The overconfident lenet's checks: ECE at least halved, NLL lower, same accuracy, >= 0.97 accepted."""
    calibration, selective = row["evaluation"]["calibration"], row["evaluation"].get("selective") or {}
    return {"ece_halved": calibration["ece_after"] <= calibration["ece_before"] / 2,
            "nll_lower": calibration["nll_after"] < calibration["nll_before"],
            "same_accuracy": abs(row["evaluation"]["accuracy"] - row["summary"]["test_accuracy"]) < 1e-12,
            "accepted_accuracy": selective.get("accuracy"), "coverage": selective.get("coverage"),
            "accepted": selective.get("accepted"), "test_images": selective.get("num_samples"),
            "accepted_at_least_097": (selective.get("accuracy") or 0) >= 0.97}


# --------------------------------------------------------------------------- unknown classes


def photo_crops(count: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """``count`` random crops of scikit-learn's two sample photos, resized to size x size RGB (uint8)."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    generator = np.random.default_rng(seed)
    photos = load_sample_images().images
    crops = []
    for number in range(count):
        photo = photos[number % len(photos)]
        side = int(generator.integers(48, 200))
        top = int(generator.integers(0, photo.shape[0] - side))
        left = int(generator.integers(0, photo.shape[1] - side))
        crop = Image.fromarray(photo[top:top + side, left:left + side]).resize((size, size), Image.BILINEAR)
        crops.append(np.asarray(crop))
    return np.stack(crops)


def run_logits(run: Path, pixels: np.ndarray) -> np.ndarray:
    """The run's model's logits on uint8 RGB pictures, fitted to its input as the pipeline does."""
    import tensorflow as tf

    from keras_cnn.config import RunConfig
    from keras_cnn.data.images import resize_image
    from keras_cnn.io import read_json
    from keras_cnn.models.loading import load_model
    from keras_cnn.models.opened import open_model

    config = RunConfig.from_dict(read_json(run / "config.json"))
    images = tf.convert_to_tensor(pixels)
    if config.data.channels == 1:
        images = tf.cast(tf.round(tf.image.rgb_to_grayscale(tf.cast(images, tf.float32))), tf.uint8)
    images = tf.cast(resize_image(images, config.data.image_size, config.data.resize_mode), tf.float32)
    opened = open_model(load_model(run / "model.keras"))
    outputs = [np.asarray(opened.logits(opened.graph.predict_on_batch(images[start:start + 128])["penultimate"]))
               for start in range(0, len(pixels), 128)]
    return np.concatenate(outputs).astype(np.float64)


def part_pixels(split: Path, images: Path, part: str, labels: set[str] | None = None) -> np.ndarray:
    from PIL import Image

    from keras_cnn.data.split import read_split_csv

    frame = read_split_csv(split)
    frame = frame[frame["type"] == part]
    if labels is not None:
        frame = frame[frame["value"].astype(str).isin(labels)]
    return np.stack([np.asarray(Image.open(images / name).convert("RGB")) for name in frame["objectId"]])


def auroc_table(run: Path, known: np.ndarray, unknown: np.ndarray) -> dict[str, float]:
    from keras_cnn.calibration import out_of_distribution_scores
    from keras_cnn.metrics import roc_auc
    from keras_cnn.run_calibration import run_temperature
    from keras_cnn.runs import RunDirectory

    temperature = run_temperature(RunDirectory(run))
    known_scores = out_of_distribution_scores(run_logits(run, known), temperature)
    unknown_scores = out_of_distribution_scores(run_logits(run, unknown), temperature)
    is_known = np.concatenate([np.ones(len(known), bool), np.zeros(len(unknown), bool)])
    return {name: roc_auc(is_known, np.concatenate([known_scores[name], unknown_scores[name]]))
            for name in known_scores}


def unknown_classes(split: Path, images: Path, folder: Path, trained: dict[str, dict]) -> dict[str, dict]:
    """AUROC per score: photos against the 10-digit runs, digits 5-9 against a lenet trained on 0-4."""
    from keras_cnn.data.split import read_split_csv, write_split_csv

    known = part_pixels(split, images, "test")
    photos = photo_crops(len(known))
    tables = {f"photos vs {name}": auroc_table(row["run"], known, photos) for name, row in trained.items()
              if ROWS[name][0] == "lenet"}
    frame = read_split_csv(split)
    low = frame[frame["value"].astype(str).isin({"0", "1", "2", "3", "4"})]
    split_low = write_split_csv(low, folder / "split-0-4.csv")
    run = folder / "runs" / "lenet_0-4"
    train(split_low, images, "lenet", 10, run)
    tables["digits 5-9 vs lenet on 0-4 (10 epochs)"] = auroc_table(
        run, part_pixels(split, images, "test", {"0", "1", "2", "3", "4"}),
        part_pixels(split, images, "test", {"5", "6", "7", "8", "9"}))
    return tables


# --------------------------------------------------------------------------- heat maps


def patch_heat_maps(folder: Path, per_class: int, epochs: int) -> dict:
    """cifar10_net on the patch images, exported, predict --explain: the share of peaks on the patch."""
    import pandas as pd

    from keras_cnn.data.collection import split_to_file
    from keras_cnn.data.probes import PATCH_TABLE, patch_hit, write_patch_images
    from keras_cnn.export import export_run
    from keras_cnn.predict import load_exported_model, predict_files

    images = folder / "patches"
    split = split_to_file(str(write_patch_images(images, per_class)), str(folder / "patches-split.csv"))["output"]
    run = folder / "runs" / "patches"
    # Batches of 32: the recipe's 128 gives too few steps on 600 images.
    summary = train(Path(split), images, "cifar10_net", epochs, run, batch_size=32)
    with contextlib.redirect_stdout(sys.stderr):
        export = export_run(run, folder / "patches-export")
    frame = pd.read_csv(split)
    files = [images / name for name in frame.loc[frame["type"] == "test", "objectId"]]
    predictions, _ = predict_files(load_exported_model(export["path"]), files, explain_dir=folder / "maps")
    patches = pd.read_csv(images / PATCH_TABLE).set_index("objectId")
    hits = [patch_hit(prediction["peak"], *patches.loc[Path(prediction["path"]).name, ["top", "left", "size"]], 32)
            for prediction in predictions]
    return {"hits": int(sum(hits)), "images": len(hits), "share": float(np.mean(hits)),
            "test_accuracy": summary["test_accuracy"], "epochs": epochs}


def images_per_second(function, pixels, seconds: float) -> float:
    """How many images ``function`` handles per second, called on the batch ``pixels`` for ``seconds``."""
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds or calls == 0:
        function(pixels).numpy()
        calls += 1
    return calls * int(pixels.shape[0]) / (time.perf_counter() - started)


def heat_map_speed(batch_size: int, rounds: int, seconds: float) -> list[dict]:
    """Images per second of the traced explain function against the model's own traced forward pass.

    The two alternate for ``rounds`` rounds of ``seconds`` each (a shared machine's load moves
    both alike); the table has the medians.
    """
    import statistics

    import tensorflow as tf

    from keras_cnn.explain import explain_images
    from keras_cnn.models.factory import create_model
    from keras_cnn.models.opened import open_model

    rows = []
    for name, size in SPEED_MODELS.items():
        model = create_model(name, 10, image_size=size, weights="none") if size else create_model(name, 10)
        opened = open_model(model)
        pixels = tf.constant(np.random.default_rng(0).uniform(0, 255, (batch_size, *model.input_shape[1:])),
                             tf.float32)
        forward = tf.function(lambda images: model(images, training=False))
        explain = tf.function(lambda images: explain_images(opened, images)["heatmap"])
        forward(pixels).numpy(), explain(pixels).numpy()        # trace both first
        rates = {"forward": [], "explain": [], "ratio": []}
        for _ in range(rounds):
            rates["forward"].append(images_per_second(forward, pixels, seconds))
            rates["explain"].append(images_per_second(explain, pixels, seconds))
            rates["ratio"].append(rates["explain"][-1] / rates["forward"][-1])
        medians = {key: statistics.median(values) for key, values in rates.items()}
        rows.append({"model": name, "size": model.input_shape[1], "feature_map": opened.feature_layer, **medians})
        print(f"{name}: forward {medians['forward']:.0f} images/s, explain {medians['explain']:.0f}", file=sys.stderr)
    return rows


# --------------------------------------------------------------------------- the report


def calibration_lines(trained: dict[str, dict], sizes: dict) -> list[str]:
    lines = [f"From scratch on the digits (split {sizes}; seed 1; each architecture's reference recipe but the "
             f"epochs), temperature fitted on the validation part when the stage ended, metrics on the test "
             f"part; the threshold is the lowest whose accepted validation images reach {TARGET_ACCURACY}.", "",
             "| run | test accuracy | T | ECE before -> after | NLL before -> after | Brier before -> after | "
             f"threshold for {TARGET_ACCURACY} | test coverage | accuracy of the accepted |",
             "|---|---:|---:|---|---|---|---:|---:|---:|"]
    for name, row in trained.items():
        evaluation = row["evaluation"]
        calibration, selective = evaluation["calibration"], evaluation.get("selective") or {}
        threshold = selective.get("threshold")
        accepted = selective.get("accuracy")
        lines.append(
            f"| {name} | {evaluation['accuracy']:.4f} | {calibration['temperature']:.3f} | "
            f"{calibration['ece_before']:.4f} -> {calibration['ece_after']:.4f} | "
            f"{calibration['nll_before']:.4f} -> {calibration['nll_after']:.4f} | "
            f"{calibration['brier_before']:.4f} -> {calibration['brier_after']:.4f} | "
            + (f"{threshold:.4f} | {selective['coverage']:.4f} ({selective['accepted']} of "
               f"{selective['num_samples']}) | {accepted:.4f} |" if threshold is not None and accepted is not None
               else "— | — | — |"))
    return lines


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="*", default=list(PARTS), choices=PARTS)
    parser.add_argument("--rows", nargs="*", default=list(ROWS), help="Calibration rows (names as in ROWS).")
    parser.add_argument("--limit", type=int, default=None, help="Use only the first N digits (smoke runs).")
    parser.add_argument("--epochs", type=int, default=None, help="Train every calibration row this many epochs "
                        "(smoke runs) [default: each row's own].")
    parser.add_argument("--patches-per-class", type=int, default=200)
    parser.add_argument("--patch-epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32, help="Batch of the heat-map speed measurement.")
    parser.add_argument("--rounds", type=int, default=5, help="Rounds of the speed measurement.")
    parser.add_argument("--seconds", type=float, default=2.0, help="Seconds per function and round.")
    parser.add_argument("--results", type=Path, default=RESULTS_PATH)
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--note", default=None, help="A line added under the section.")
    arguments = parser.parse_args(argv)

    machine = machine_description()
    outcome: dict = {}
    lines = [f"`{command_line(__file__, argv)}`", ""]
    with tempfile.TemporaryDirectory(prefix="kcnn-calibration-") as folder:
        folder = Path(folder)
        trained: dict[str, dict] = {}
        sizes = None
        if "calibration" in arguments.parts or "unknown" in arguments.parts:
            split, images = digits_data(folder, arguments.limit)
            rows = arguments.rows if "calibration" in arguments.parts else [OVERCONFIDENT_ROW]
            trained = calibration_rows(split, images, folder, rows, arguments.epochs)
            from keras_cnn.io import read_json

            sizes = read_json(next(iter(trained.values()))["run"] / "config.json")["extra"]["sizes"]
            outcome["calibration"] = {name: {"evaluation": row["evaluation"], "test_accuracy":
                                             row["summary"]["test_accuracy"]} for name, row in trained.items()}
            lines += ["### 1. Calibration and answering only when confident", "",
                      *calibration_lines(trained, sizes), ""]
            if OVERCONFIDENT_ROW in trained:
                checks = outcome["done_when"] = done_when(trained[OVERCONFIDENT_ROW])
                lines += [f"{OVERCONFIDENT_ROW}: test ECE at least halved: **{'yes' if checks['ece_halved'] else 'NO'}**"
                          f"; NLL lower: **{'yes' if checks['nll_lower'] else 'NO'}**; same accuracy: "
                          f"**{'yes' if checks['same_accuracy'] else 'NO'}**; accepted test images at the "
                          f"{TARGET_ACCURACY} threshold: accuracy **{checks['accepted_accuracy']}** "
                          f"({checks['accepted']} of {checks['test_images']} test images, coverage "
                          f"{checks['coverage']}).", ""]
        if "unknown" in arguments.parts:
            tables = outcome["unknown"] = unknown_classes(split, images, folder, trained)
            lines += ["### 2. Images of classes the model never saw (AUROC, known = positive)", "",
                      "| known vs unknown | top calibrated probability | top logit | energy |", "|---|---:|---:|---:|"]
            lines += [f"| {name} | {table['max_probability']:.4f} | {table['max_logit']:.4f} | "
                      f"{table['energy']:.4f} |" for name, table in tables.items()]
            lines.append("")
        if "patches" in arguments.parts:
            patches = outcome["patches"] = patch_heat_maps(folder, arguments.patches_per_class, arguments.patch_epochs)
            lines += ["### 3. Heat maps on the patch images", "",
                      f"`cifar10_net`, {patches['epochs']} epochs on {arguments.patches_per_class * 3} generated "
                      f"32x32 images (test accuracy {patches['test_accuracy']:.4f}), exported, `kcnn predict "
                      f"--explain`: the heat-map peak falls on the coloured patch for **{patches['hits']} of "
                      f"{patches['images']} test images ({patches['share']:.1%})**.", ""]
        if "speed" in arguments.parts:
            speed = outcome["speed"] = heat_map_speed(arguments.batch_size, arguments.rounds, arguments.seconds)
            lines += ["### 4. What a heat map costs", "",
                      f"Batches of {arguments.batch_size} random images (weights: none); the model's own forward "
                      "pass against the explain function (probabilities and Grad-CAM: one forward and one backward "
                      f"pass), both traced with `tf.function`, alternating for {arguments.rounds} rounds of "
                      f"{arguments.seconds:g} s; medians.", "",
                      "| model | input | feature map | forward (images/s) | with the heat map (images/s) | ratio |",
                      "|---|---:|---|---:|---:|---:|"]
            lines += [f"| {row['model']} | {row['size']} | `{row['feature_map']}` | {row['forward']:.0f} | "
                      f"{row['explain']:.0f} | {row['ratio']:.2f}x |" for row in speed]
            lines.append("")
    load_after = load_average()
    lines[2:2] = [describe_machine(machine, load_after), ""]
    publish(SECTION_TITLE, lines, arguments)
    return outcome


if __name__ == "__main__":
    main()
