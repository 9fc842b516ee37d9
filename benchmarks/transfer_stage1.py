"""Transfer stage 1 (a new head on a frozen base): epoch time with and without feature caching.

Runs kcnn's own stage 1, :func:`keras_cnn.train.two_stage.train_head`, twice on the
built-in sample data (``kcnn sample-data``, split as ``kcnn split`` does) with the same
base, image size, batch size and epochs:

  cached    ``TrainingConfig(cache_features=True)``: the frozen base runs once over the
            train and validation images (feature extraction), then the head trains on the
            pooled features;
  uncached  ``cache_features=False``: every epoch pushes every image through the base.

Per-epoch seconds come from each run's ``history.csv`` (column ``seconds``, rows of stage
``head``; validation included).  The first epoch of a run also traces the training step
(and, uncached, decodes the images into the pipeline's cache), so the epoch time compared
is the mean of the later epochs (their median is shown too: a cached epoch lasts a few tens
of milliseconds, so one hiccup of a shared machine moves its mean).  Feature extraction is timed around
``keras_cnn.train.features.extract_features``.  The break-even is the number of epochs
after which caching has paid back its extraction: extraction / (uncached - cached epoch).

The base is EfficientNet-B0 with random weights (``--weights none``: no download is
possible here, and the time of a forward pass does not depend on the weights' values).
Prints the numbers and the ratio, and appends a dated section with the machine to
benchmarks/RESULTS.md (``--no-record`` skips).

    python benchmarks/transfer_stage1.py                      # 3 classes x 60 images, 224 px, 5 epochs
    python benchmarks/transfer_stage1.py --image-size 128 --epochs 5
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from common import (
    add_recording_arguments,
    command_line,
    describe_machine,
    load_average,
    machine_description,
    publish,
    ratio_verdict,
    steady_epoch_seconds,
)

SECTION_TITLE = "Transfer stage 1: head epochs on cached features vs through the frozen base"
TARGET_RATIO = 10.0


def prepare_sample(folder: Path, classes: int, per_class: int, sample_size: int, seed: int = 0) -> tuple[Path, Path]:
    """``kcnn sample-data`` then ``kcnn split`` into ``folder``; returns (split CSV, image folder)."""
    from keras_cnn.data.collection import split_to_file
    from keras_cnn.data.sample import write_sample_data

    images = folder / "images"
    write_sample_data(images, classes=classes, per_class=per_class, size=sample_size, seed=seed)
    split_csv = folder / "split.csv"
    split_to_file(str(images / "label.csv"), str(split_csv))
    return split_csv, images


@contextlib.contextmanager
def timed_calls(module, name: str):
    """Replace ``module.name`` by a wrapper that appends each call's seconds to the yielded list."""
    original = getattr(module, name)
    durations: list[float] = []

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            durations.append(time.perf_counter() - start)

    setattr(module, name, wrapper)
    try:
        yield durations
    finally:
        setattr(module, name, original)


def run_stage1(split_csv: Path, images: Path, out_dir: Path, cache_features: bool, base: str, image_size: int,
               epochs: int, batch_size: int, weights: str) -> dict:
    """One ``train_head`` run; returns its head-epoch seconds, extraction and stage seconds.

    Training output (progress bars) goes to stderr, so stdout keeps only the summary.
    """
    import keras_cnn.train.features as features_module
    from keras_cnn.config import DataConfig, ModelConfig, RunConfig, TrainingConfig
    from keras_cnn.runs import RunDirectory
    from keras_cnn.train.callbacks import read_history
    from keras_cnn.train.two_stage import HEAD_STAGE, train_head

    config = RunConfig(
        command="transfer",
        model=ModelConfig(kind="transfer", name=base, weights=weights),
        data=DataConfig(split=str(split_csv), images=str(images), image_size=(image_size, image_size)),
        training=TrainingConfig(epochs=epochs, batch_size=batch_size, cache_features=cache_features),
    )
    with timed_calls(features_module, "extract_features") as extraction, contextlib.redirect_stdout(sys.stderr):
        summary = train_head(config, out_dir)
    rows = [row for row in read_history(RunDirectory(out_dir).history_path) if row.get("stage") == HEAD_STAGE]
    return {
        "epoch_seconds": [float(row["seconds"]) for row in rows],
        "extraction_seconds": sum(extraction),
        "stage_seconds": float(summary["fit_seconds"]),  # this process's fit, feature extraction included
    }


def analyse(cached: dict, uncached: dict) -> dict:
    """Ratio of steady epoch times, extraction cost and break-even epochs of the two runs."""
    cached_epoch = steady_epoch_seconds(cached["epoch_seconds"])
    uncached_epoch = steady_epoch_seconds(uncached["epoch_seconds"])
    cached_median = steady_epoch_seconds(cached["epoch_seconds"], "median")
    uncached_median = steady_epoch_seconds(uncached["epoch_seconds"], "median")
    extraction = cached["extraction_seconds"]
    saved_per_epoch = uncached_epoch - cached_epoch
    break_even = extraction / saved_per_epoch if saved_per_epoch > 0 else math.inf
    return {
        "cached_epoch": cached_epoch,
        "uncached_epoch": uncached_epoch,
        "cached_first_epoch": cached["epoch_seconds"][0],
        "uncached_first_epoch": uncached["epoch_seconds"][0],
        "ratio": uncached_epoch / cached_epoch if cached_epoch > 0 else math.inf,
        "cached_median": cached_median,
        "uncached_median": uncached_median,
        "median_ratio": uncached_median / cached_median if cached_median > 0 else math.inf,
        "extraction": extraction,
        "break_even": break_even,
        "cached_stage": cached["stage_seconds"],
        "uncached_stage": uncached["stage_seconds"],
    }


def measure_stage1(work: Path, base: str = "efficientnet_b0", image_size: int = 224, epochs: int = 5,
                   batch_size: int = 32, classes: int = 3, per_class: int = 60, sample_size: int = 128,
                   weights: str = "none") -> dict:
    """Write the sample data under ``work``, run stage 1 uncached then cached; returns :func:`analyse`'s dict
    plus the two runs (``"cached"``, ``"uncached"``) and the part sizes (``"sizes"``)."""
    import json

    split_csv, images = prepare_sample(work / "data", classes, per_class, sample_size)
    runs = {}
    for name, cache in (("uncached", False), ("cached", True)):
        print(f"stage 1, {name} ...", file=sys.stderr, flush=True)
        runs[name] = run_stage1(split_csv, images, work / name, cache, base, image_size, epochs, batch_size,
                                weights)
    config = json.loads((work / "cached" / "config.json").read_text())
    return {**analyse(runs["cached"], runs["uncached"]), **runs, "sizes": config["extra"]["sizes"]}


def format_break_even(epochs: float) -> str:
    return "never (no epoch saving)" if math.isinf(epochs) else f"{epochs:.2f} epochs"


def summary_lines(result: dict) -> list[str]:
    """The result as a Markdown table plus the derived figures."""
    cached, uncached = result["cached"]["epoch_seconds"], result["uncached"]["epoch_seconds"]
    return [
        ("| stage 1 | feature extraction (s) | first epoch (s) | later epochs: mean (median) (s) | "
         "all epochs (s) | stage total (s) |"),
        "|---|---:|---:|---:|---|---:|",
        (f"| uncached (`cache_features=False`) | — | {result['uncached_first_epoch']:.2f} | "
         f"{result['uncached_epoch']:.3f} ({result['uncached_median']:.3f}) | "
         f"{', '.join(f'{value:.2f}' for value in uncached)} | {result['uncached_stage']:.1f} |"),
        (f"| cached (`cache_features=True`) | {result['extraction']:.2f} | {result['cached_first_epoch']:.2f} | "
         f"{result['cached_epoch']:.3f} ({result['cached_median']:.3f}) | "
         f"{', '.join(f'{value:.3f}' for value in cached)} | {result['cached_stage']:.1f} |"),
        "",
        (f"Per-epoch ratio (later epochs, uncached / cached): **{result['ratio']:.1f}x** on the means "
         f"({ratio_verdict(result['ratio'], TARGET_RATIO)} the >= {TARGET_RATIO:.0f}x target), "
         f"{result['median_ratio']:.1f}x on the medians.  "
         f"Break-even: caching pays back its {result['extraction']:.2f} s of extraction after "
         f"{format_break_even(result['break_even'])}."),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="efficientnet_b0", help="transfer base (kcnn models lists them)")
    parser.add_argument("--weights", default="none",
                        help="base weights: none (random; same speed), imagenet or a weights file")
    parser.add_argument("--image-size", type=int, default=224, help="square input size of the base")
    parser.add_argument("--epochs", type=int, default=5, help="head epochs of each run (>= 2)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--classes", type=int, default=3, help="classes of the sample data")
    parser.add_argument("--per-class", type=int, default=60, help="sample images per class")
    parser.add_argument("--sample-size", type=int, default=128, help="side of the generated JPEGs (kcnn's default)")
    add_recording_arguments(parser)
    arguments = parser.parse_args(argv)
    if arguments.epochs < 2:
        parser.error(f"--epochs must be at least 2 (the first epoch traces), received: {arguments.epochs}")

    machine = machine_description()
    with tempfile.TemporaryDirectory(prefix="kcnn-bench-stage1-") as work:
        result = measure_stage1(Path(work), arguments.base, arguments.image_size, arguments.epochs,
                                arguments.batch_size, arguments.classes, arguments.per_class, arguments.sample_size,
                                arguments.weights)
    load_after = load_average()
    sizes = result["sizes"]
    command = command_line(__file__, argv)
    lines = [
        f"`{command}`",
        "",
        describe_machine(machine, load_after),
        "",
        (f"Base {arguments.base} (weights: {arguments.weights}) at {arguments.image_size}x{arguments.image_size}, "
         f"batch {arguments.batch_size}, {arguments.epochs} head epochs per run; sample data "
         f"{arguments.classes} classes x {arguments.per_class} images of {arguments.sample_size} px, split "
         f"{sizes.get('train')} train / {sizes.get('validation')} validation / {sizes.get('test')} test.  "
         "Epoch times from each run's history.csv (validation included)."),
        "",
        *summary_lines(result),
        "",
    ]
    publish(SECTION_TITLE, lines, arguments)
    return 0


if __name__ == "__main__":
    sys.exit(main())
