"""Answers you can trust, measured: calibration, "none of these", unknown classes, heat maps and their cost.

Data: scikit-learn's handwritten digits (``sklearn.datasets.load_digits``: 1,797 real 8x8
scans, upsampled to 32x32 PNGs as ``benchmarks/recipe.py`` writes them), split by kcnn's SHA-1
split with a quarter of the images in the test part and another quarter validating (recipe.py's
eighth is enough to pick an epoch, not a threshold: the threshold for accuracy 0.99 is chosen
where the validation images reach it, and on 160 images that rested on 47 accepted ones, which
vouch for no more than 0.938; so the validation part gets as many images as the test part that
checks it, 360 and 340 once balanced, and training keeps the other 1,097); and kcnn's
generated patch images (:mod:`keras_cnn.data.probes`: the class is the colour of a 6x6 patch
at a random place in 32x32 noise).  scikit-learn is needed for this script only.

1. **Calibration** (every row trained from scratch by :func:`keras_cnn.train.fit.train_scratch`,
   which fits the temperature on the validation part when the stage ends; then ``kcnn evaluate
   --target-accuracy 0.99``): test accuracy, the fitted temperature, expected calibration error
   (15 bins), negative log-likelihood and Brier score before and after it, and the threshold
   chosen on the validation part with the coverage and accuracy it gives on the test part.
   Beside it, the steadier reading of the same rule (the lowest threshold above which every
   threshold reaches 0.99 on validation), to show whether the choice among the many thresholds
   that touch the target makes it optimistic.
   "wrong labels" rows train on a split whose training part has that share of labels replaced
   by another digit (validation and test keep the true ones).  kcnn keeps a stage's epoch of
   lowest validation loss, which on wrong labels comes before the network learns them (an
   underconfident model); the "memorised" row trains without its validation rows, so the
   lowest training loss is kept (the wrong labels memorised: an overconfident model), then
   puts them back and fits the temperature with ``kcnn calibrate``.  Beside each fitted
   temperature, the one the test part itself would choose (hindsight).
2. **Unknown classes**: three scores (higher = known): the top calibrated probability, the top
   logit and the energy ``T log sum exp(z / T)``; the AUROC of telling the digits' test images
   from images of classes the model never saw, and of telling right answers from wrong ones
   (a known image answered wrongly, or any unknown image: what a rejection must catch), each
   with a paired bootstrap interval of its difference to the top probability.  Far: 32x32
   crops of scikit-learn's two sample photos against the 10-digit lenets; near: each half of
   the digits against a lenet trained on the other half.
3. **Heat maps on the patch images**: a ``cifar10_net`` trained on them, exported, and
   ``kcnn predict --explain``: the share of test images whose heat-map peak (relative to the
   image as given) falls on the patch.
4. **Cost of a heat map**: images per second of the export's explain function (Grad-CAM: one
   forward and one backward pass per batch) against a plain forward pass of the same model,
   both traced with ``tf.function``, in the same run.

    python benchmarks/calibration.py
    python benchmarks/calibration.py --parts calibration --rows "lenet, 30 % wrong labels, memorised" --no-record
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from common import RESULTS_PATH, command_line, describe_machine, load_average, machine_description, publish

SECTION_TITLE = "Calibration, 'none of these', unknown classes and heat maps on scikit-learn's digits"
TARGET_ACCURACY = 0.99
# SHA-1 keys of the digits' validation part: a quarter, as many images as the test part (keys 0..63).
VALIDATION_KEYS = range(64, 128)


class Row(NamedTuple):
    """One calibration row: what is trained, how long, on how many wrong labels, and which epoch is kept."""

    architecture: str
    epochs: int
    wrong_share: float = 0.0
    # True: the stage validates and keeps its lowest validation loss (kcnn's default), calibrated when it
    # ends.  False: trained on the split without its validation rows, so the lowest *training* loss is kept
    # (the memorised end of the run); the rows go back into the split and `kcnn calibrate` fits T on them.
    validate_while_training: bool = True


ROWS = {
    "lenet, 10 epochs": Row("lenet", 10),
    "lenet, 40 epochs": Row("lenet", 40),
    "lenet, 30 % wrong labels": Row("lenet", 60, 0.3),
    "lenet, 30 % wrong labels, memorised": Row("lenet", 60, 0.3, validate_while_training=False),
    "lenet5_bn, 20 epochs": Row("lenet5_bn", 20),
    "cifar10_net, 20 epochs": Row("cifar10_net", 20),
}
# The lenet made overconfident: kept at the end of a long run on partly wrong labels.  (With a validation
# part, kcnn keeps the epoch of lowest validation loss, which on wrong labels is an early, *under*confident
# model: the row above it.)
OVERCONFIDENT_ROW = "lenet, 30 % wrong labels, memorised"
BOOTSTRAP_DRAWS = 2000
SPEED_MODELS = {"lenet": None, "cifar10_net": None, "mobilenet_v3_small": 224, "efficientnet_b0": 224}
PARTS = ("calibration", "unknown", "patches", "speed")


def digits_data(folder: Path, limit: int | None) -> tuple[Path, Path]:
    """The digits as PNGs and kcnn's split (a quarter test, a quarter validation); (split CSV, images)."""
    from recipe import write_digits

    return write_digits(folder, limit, validation_keys=VALIDATION_KEYS)


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


def train_memorised(split: Path, images: Path, row: Row, run: Path, folder: Path) -> dict:
    """Train on ``split`` without its validation rows, then put them back and fit T with ``kcnn calibrate``.

    Without a validation part the stage keeps its lowest training loss: on wrong labels, the model
    that has memorised them.  The split is then the whole one again (the run accepts the added
    validation rows as an input change) and the temperature is fitted on them as for any run.
    """
    from keras_cnn.data.split import read_split_csv, write_split_csv
    from keras_cnn.run_calibration import calibrate_run

    frame = read_split_csv(split)
    path = folder / f"split-{run.name}.csv"
    write_split_csv(frame[frame["type"] != "validation"], path)
    summary = train(path, images, row.architecture, row.epochs, run)
    write_split_csv(frame, path)
    with contextlib.redirect_stdout(sys.stderr):
        calibrate_run(run, accept_input_changes=True)
    return summary


def calibration_rows(split: Path, images: Path, folder: Path, names: list[str],
                     epochs_override: int | None = None) -> dict[str, dict]:
    """Train each row, evaluate it with --target-accuracy; returns name -> {run, summary, evaluation,
    hindsight, steady}.

    ``hindsight``: the temperature the test part itself would choose, to show how far the one
    fitted on the validation part is from it; ``steady``: :func:`steadier_reading`.
    """
    from keras_cnn.calibration import fit_temperature
    from keras_cnn.evaluate import evaluate_run

    results = {}
    for name in names:
        row = ROWS[name]._replace(**({"epochs": epochs_override} if epochs_override else {}))
        run = folder / "runs" / name.replace(" ", "_").replace(",", "").replace("%", "pct")
        noisy_split = split_with_wrong_labels(split, row.wrong_share, folder)
        if row.validate_while_training:
            summary = train(noisy_split, images, row.architecture, row.epochs, run)
        else:
            summary = train_memorised(noisy_split, images, row, run, folder)
        with contextlib.redirect_stdout(sys.stderr):
            evaluation = evaluate_run(run, target_accuracy=TARGET_ACCURACY)
        pixels, values = part_pixels(split, images, "test")
        hindsight = fit_temperature(run_logits(run, pixels), class_indices(run, values)).temperature
        results[name] = {"run": run, "summary": summary, "evaluation": evaluation, "hindsight": hindsight,
                         "steady": steadier_reading(run, split, images)}
        calibration = evaluation["calibration"]
        print(f"{name}: accuracy {evaluation['accuracy']:.4f}, T {calibration['temperature']} (test part's own: "
              f"{hindsight:.3f}), ECE {calibration['ece_before']:.4f} -> {calibration['ece_after']:.4f}",
              file=sys.stderr)
    return results


def steady_threshold(confidence: np.ndarray, correct: np.ndarray, target: float) -> float | None:
    """The lowest threshold t such that every threshold at or above t also reaches ``target`` (the
    accepted accuracy never dips below it above t); None when the most confident sample falls short.

    kcnn's rule (:func:`keras_cnn.metrics.threshold_for_accuracy`) takes the lowest threshold that
    reaches the target, which may be one where the accuracy climbs back to it after a dip.
    """
    from keras_cnn.metrics import coverage_accuracy_curve

    curve = coverage_accuracy_curve(confidence, correct)
    short = np.flatnonzero(curve["accuracy"] < target)
    end = int(short[0]) if len(short) else len(curve["threshold"])
    return float(curve["threshold"][end - 1]) if end else None


def steadier_reading(run: Path, split: Path, images: Path) -> dict:
    """Both readings of the rule on the run's validation confidences (recomputed here) and, for the
    steadier one, the test part's coverage and accuracy at its threshold."""
    from keras_cnn.calibration import out_of_distribution_scores
    from keras_cnn.metrics import selective_metrics, threshold_for_accuracy
    from keras_cnn.run_calibration import run_temperature
    from keras_cnn.runs import RunDirectory

    temperature = run_temperature(RunDirectory(run))
    parts = {}
    for part in ("validation", "test"):
        pixels, values = part_pixels(split, images, part)
        logits = run_logits(run, pixels)
        parts[part] = (out_of_distribution_scores(logits, temperature)["max_probability"],
                       logits.argmax(axis=1) == class_indices(run, values))
    rule = threshold_for_accuracy(*parts["validation"], TARGET_ACCURACY)
    steady = steady_threshold(*parts["validation"], TARGET_ACCURACY)
    return {"rule": rule, "steady": steady,
            "test": selective_metrics(*parts["test"], steady) if steady is not None else None}


def done_when(row: dict) -> dict:
    """The overconfident lenet's checks: ECE at least halved, NLL lower, same accuracy, >= 0.97 accepted."""
    calibration, selective = row["evaluation"]["calibration"], row["evaluation"].get("selective") or {}
    return {"temperature": calibration["temperature"],
            "ece_halved": calibration["ece_after"] <= calibration["ece_before"] / 2,
            "nll_lower": calibration["nll_after"] < calibration["nll_before"],
            "same_accuracy": abs(row["evaluation"]["accuracy"] - row["summary"]["test_accuracy"]) < 1e-12,
            "accepted_accuracy": selective.get("accuracy"), "coverage": selective.get("coverage"),
            "accepted": selective.get("accepted"), "test_images": selective.get("num_samples"),
            "accepted_at_least_097": (selective.get("accuracy") or 0) >= 0.97,
            "validation": (selective.get("validation") or {})}


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


def part_pixels(split: Path, images: Path, part: str, labels: set[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """The part's pictures (uint8 RGB) and their labels, in the split's order (only ``labels`` when given)."""
    from PIL import Image

    from keras_cnn.data.split import read_split_csv

    frame = read_split_csv(split)
    frame = frame[frame["type"] == part]
    if labels is not None:
        frame = frame[frame["value"].astype(str).isin(labels)]
    pixels = np.stack([np.asarray(Image.open(images / name).convert("RGB")) for name in frame["objectId"]])
    return pixels, frame["value"].astype(str).tolist()


def class_indices(run: Path, values: list[str]) -> np.ndarray:
    """Labels as the run's class indices (its labels.txt)."""
    from keras_cnn.runs import RunDirectory

    labels = RunDirectory(run).read_labels()
    return np.asarray([labels.index(value) for value in values], dtype=np.int64)


def paired_bootstrap(is_positive: np.ndarray, scores: dict[str, np.ndarray], reference: str,
                     draws: int = BOOTSTRAP_DRAWS, seed: int = 0) -> dict[str, tuple[float, float]]:
    """95 % interval of AUROC(score) - AUROC(reference) for each other score: the images are drawn again
    with replacement (positives and negatives apart, so both stay), the same draw for every score."""
    from keras_cnn.metrics import roc_auc

    generator = np.random.default_rng(seed)
    positives, negatives = np.flatnonzero(is_positive), np.flatnonzero(~is_positive)
    differences: dict[str, list[float]] = {name: [] for name in scores if name != reference}
    for _ in range(draws):
        chosen = np.concatenate([generator.choice(positives, len(positives)),
                                 generator.choice(negatives, len(negatives))])
        base = roc_auc(is_positive[chosen], scores[reference][chosen])
        for name in differences:
            differences[name].append(roc_auc(is_positive[chosen], scores[name][chosen]) - base)
    return {name: (float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5)))
            for name, values in differences.items()}


def auroc_table(run: Path, known: tuple[np.ndarray, list[str]], unknown: np.ndarray) -> dict[str, dict]:
    """Per score: AUROC of known against unknown images, and of right answers against wrong ones (a
    wrong answer: a known image given another class, or any unknown image), with paired bootstrap
    intervals of each score's difference to the top calibrated probability."""
    from keras_cnn.calibration import out_of_distribution_scores
    from keras_cnn.metrics import roc_auc
    from keras_cnn.run_calibration import run_temperature
    from keras_cnn.runs import RunDirectory

    temperature = run_temperature(RunDirectory(run))
    known_logits = run_logits(run, known[0])
    right = known_logits.argmax(axis=1) == class_indices(run, known[1])
    known_scores = out_of_distribution_scores(known_logits, temperature)
    unknown_scores = out_of_distribution_scores(run_logits(run, unknown), temperature)
    scores = {name: np.concatenate([known_scores[name], unknown_scores[name]]) for name in known_scores}
    targets = {"unknown": np.concatenate([np.ones(len(right), bool), np.zeros(len(unknown), bool)]),
               "failure": np.concatenate([right, np.zeros(len(unknown), bool)])}
    table = {}
    for task, is_positive in targets.items():
        intervals = paired_bootstrap(is_positive, scores, "max_probability")
        table[task] = {name: {"auroc": roc_auc(is_positive, values), "difference": intervals.get(name)}
                       for name, values in scores.items()}
    table["images"] = {"known": len(right), "wrong": int((~right).sum()), "unknown": len(unknown)}
    return table


NEAR_SPLITS = {"0-4": ({"0", "1", "2", "3", "4"}, {"5", "6", "7", "8", "9"}),
               "5-9": ({"5", "6", "7", "8", "9"}, {"0", "1", "2", "3", "4"})}


def unknown_classes(split: Path, images: Path, folder: Path, trained: dict[str, dict]) -> dict[str, dict]:
    """AUROC per score: photos against the 10-digit lenets, each half of the digits against a lenet on the other."""
    from keras_cnn.data.split import read_split_csv, write_split_csv

    known = part_pixels(split, images, "test")
    photos = photo_crops(len(known[0]))
    tables = {f"photos vs {name}": auroc_table(row["run"], known, photos) for name, row in trained.items()
              if ROWS[name].architecture == "lenet"}
    frame = read_split_csv(split)
    for name, (seen, unseen) in NEAR_SPLITS.items():
        run = folder / "runs" / f"lenet_{name}"
        train(write_split_csv(frame[frame["value"].astype(str).isin(seen)], folder / f"split-{name}.csv"),
              images, "lenet", 10, run)
        tables[f"digits {min(unseen)}-{max(unseen)} vs lenet on {name} (10 epochs)"] = auroc_table(
            run, part_pixels(split, images, "test", seen), part_pixels(split, images, "test", unseen)[0])
    return tables


def clear_winner(tables: dict[str, dict]) -> str | None:
    """The score that beats the top calibrated probability on every row, for both tasks (the lower end of
    each paired interval above 0); None when none does."""
    others = [name for name in next(iter(tables.values()))["unknown"] if name != "max_probability"]
    for name in others:
        if all(table[task][name]["difference"][0] > 0
               for table in tables.values() for task in ("unknown", "failure")):
            return name
    return None


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
             f"part; the threshold is the lowest whose accepted validation images reach {TARGET_ACCURACY}.  "
             "\"wrong labels\" rows train on a split with that share of training labels replaced by another "
             "digit; kcnn keeps the epoch of lowest validation loss (early, before the wrong labels are learnt), "
             "except in the \"memorised\" row, trained without its validation rows (so the lowest training "
             "loss is kept: the wrong labels learnt) and calibrated afterwards by `kcnn calibrate` on them.  "
             "T > 1 softens an overconfident model, T < 1 sharpens an underconfident one; \"test's own T\" is "
             "the temperature the test part itself would choose (hindsight, for comparison only).  Beside the "
             "threshold, the validation images it accepts and the 95 % lower bound (Clopper-Pearson) of their "
             "accuracy: what they vouch for on other images.", "",
             "| run | test accuracy | T | test's own T | ECE before -> after | NLL before -> after | "
             f"Brier before -> after | threshold for {TARGET_ACCURACY} | validation images accepted (95 % lower "
             "bound of their accuracy) | test coverage | accuracy of the accepted |",
             "|---|---:|---:|---:|---|---|---|---:|---:|---:|---:|"]
    for name, row in trained.items():
        evaluation = row["evaluation"]
        calibration, selective = evaluation["calibration"], evaluation.get("selective") or {}
        threshold = selective.get("threshold")
        accepted = selective.get("accuracy")
        lines.append(
            f"| {name} | {evaluation['accuracy']:.4f} | {calibration['temperature']:.3f} | {row['hindsight']:.3f} | "
            f"{calibration['ece_before']:.4f} -> {calibration['ece_after']:.4f} | "
            f"{calibration['nll_before']:.4f} -> {calibration['nll_after']:.4f} | "
            f"{calibration['brier_before']:.4f} -> {calibration['brier_after']:.4f} | "
            + (f"{threshold:.4f} | {validation_support(selective.get('validation'))} | {selective['coverage']:.4f} "
               f"({selective['accepted']} of {selective['num_samples']}) | {accepted:.4f} |"
               if threshold is not None and accepted is not None else "— | — | — | — |"))
    return lines


def steady_lines(trained: dict[str, dict]) -> list[str]:
    """The steadier reading of the threshold rule beside kcnn's, per row (both from this script's own
    validation confidences, so the first column checks them against evaluate's threshold)."""
    lines = [f"The steadier reading of the rule for {TARGET_ACCURACY}: the lowest threshold above which every "
             "threshold also reaches it on the validation part (kcnn takes the lowest that reaches it, which may "
             "be one where the accuracy climbs back after a dip).", "",
             "| run | kcnn's threshold | steadier threshold | test coverage | accuracy of the accepted |",
             "|---|---:|---:|---:|---:|"]
    for name, row in trained.items():
        steady, test = row["steady"], row["steady"]["test"]
        rule = "—" if steady["rule"] is None else f"{steady['rule']:.4f}"
        if steady["steady"] is None:
            lines.append(f"| {name} | {rule} | — | — | — |")
            continue
        accuracy = "—" if test["accuracy"] is None else f"{test['accuracy']:.4f}"
        lines.append(f"| {name} | {rule} | {steady['steady']:.4f} | {test['coverage']:.4f} ({test['accepted']} of "
                     f"{test['num_samples']}) | {accuracy} |")
    return lines


def validation_support(validation: dict | None) -> str:
    """``"43 of 160, 43 right (0.933)"``: the validation images behind a threshold and what they vouch for."""
    if not validation:
        return "—"
    right = round(validation["accuracy"] * validation["accepted"])
    return (f"{validation['accepted']} of {validation['num_samples']}, {right} right "
            f"({validation['accuracy_lower_bound']:.3f})")


SCORE_TITLES = {"max_probability": "top calibrated probability", "max_logit": "top logit", "energy": "energy"}


def unknown_lines(tables: dict[str, dict]) -> list[str]:
    """Both AUROC tables (with each score's paired interval against the top probability) and the verdict."""
    lines = []
    for task, title in (("unknown", "known (positive) against unknown images"),
                        ("failure", "right answers (positive) against wrong ones: known images answered wrongly "
                                    "and every unknown image")):
        lines += [f"AUROC, {title}; in brackets the 95 % paired bootstrap interval ({BOOTSTRAP_DRAWS} draws) of the "
                  "difference to the top calibrated probability:", "",
                  "| known vs unknown (test images known, of them answered wrongly, unknown) | "
                  + " | ".join(SCORE_TITLES.values()) + " |", "|---|" + "---:|" * len(SCORE_TITLES)]
        for name, table in tables.items():
            cells = []
            for score in SCORE_TITLES:
                entry = table[task][score]
                interval = entry["difference"]
                bracket = f" [{interval[0]:+.4f}, {interval[1]:+.4f}]" if interval else ""
                cells.append(f"{entry['auroc']:.4f}{bracket}")
            counts = table["images"]
            lines.append(f"| {name} ({counts['known']}, {counts['wrong']}, {counts['unknown']}) | "
                         + " | ".join(cells) + " |")
        lines.append("")
    winner = clear_winner(tables)
    lines += [f"A score clearly better than the top calibrated probability on every row and both tasks: "
              f"**{SCORE_TITLES[winner] if winner else 'none'}**.", ""]
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
            from keras_cnn.data.split import read_split_csv

            counts = read_split_csv(split)["type"].value_counts()
            sizes = {part: int(counts.get(part, 0)) for part in ("train", "validation", "test")}
            outcome["calibration"] = {name: {"evaluation": row["evaluation"], "test_accuracy":
                                             row["summary"]["test_accuracy"], "steady": row["steady"]}
                                      for name, row in trained.items()}
            lines += ["### 1. Calibration and answering only when confident", "",
                      *calibration_lines(trained, sizes), "", *steady_lines(trained), ""]
            if OVERCONFIDENT_ROW in trained:
                checks = outcome["done_when"] = done_when(trained[OVERCONFIDENT_ROW])
                accepted = checks["accepted_accuracy"]
                lines += [f"{OVERCONFIDENT_ROW} (T {checks['temperature']:.3f}: "
                          f"{'over' if checks['temperature'] > 1 else 'under'}confident): test ECE at least halved: "
                          f"**{'yes' if checks['ece_halved'] else 'NO'}**; NLL lower: "
                          f"**{'yes' if checks['nll_lower'] else 'NO'}**; same accuracy: "
                          f"**{'yes' if checks['same_accuracy'] else 'NO'}**; accepted test images at the "
                          f"{TARGET_ACCURACY} threshold: accuracy **"
                          + (f"{accepted:.4f}** ({checks['accepted']} of {checks['test_images']} test images, "
                             f"coverage {checks['coverage']:.4f})." if accepted is not None else "none accepted**.")
                          + f" At least 0.97: **{'yes' if checks['accepted_at_least_097'] else 'NO'}**; the "
                          f"threshold's validation images: {validation_support(checks['validation'])}.", ""]
        if "unknown" in arguments.parts:
            tables = outcome["unknown"] = unknown_classes(split, images, folder, trained)
            outcome["clear_winner"] = clear_winner(tables)
            lines += ["### 2. Images of classes the model never saw", "", *unknown_lines(tables)]
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
