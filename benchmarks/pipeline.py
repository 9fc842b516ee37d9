"""Images per second: kcnn's tf.data pipeline against ImageDataGenerator.flow_from_dataframe.

Generates JPEGs (photo-like: gradients, shapes, a little noise) named by their SHA-1 in a
temporary folder, writes label.csv and a split CSV, and reads the same files three ways:

  (a) ``make_dataset(cache=False)``: every file read, decoded and resized; timed as a first
      epoch (the reader built inside it) and as a later epoch (a reader built once);
  (b) ``make_dataset(cache=True)``: an epoch served from the in-memory cache (after one
      epoch that fills it);
  (c) ``ImageDataGenerator().flow_from_dataframe(target_size, class_mode="sparse")``, first
      and later epochs alike.

A first epoch is timed end to end (building the reader included); the readers take turns for
``--repeats`` rounds and the best run of each is kept, which damps the noise of a shared
machine.  Prints img/s and the ratios, and
appends a dated section with the machine to benchmarks/RESULTS.md (``--no-record`` skips).

kcnn decodes a JPEG at least twice the target size at 1/2, 1/4 or 1/8 scale in the DCT
domain; the section also gives the mean absolute difference (grey levels, 0..255) of its
pixels from a full decode + the same resize, over the generated images.  Photo-size JPEGs
(both sides at least 1200 px) have their own target.

    python benchmarks/pipeline.py --images 600 --width 480 --height 360 --size 224 --batch-size 32
    python benchmarks/pipeline.py --images 400 --width 1600 --height 1200 --size 224 --breakdown
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pandas as pd
from common import (
    RESULTS_PATH,
    append_section,
    describe_machine,
    load_average,
    machine_description,
    ratio_verdict,
)
from PIL import Image, ImageDraw

SECTION_TITLE = "Pipeline: `make_dataset` vs `ImageDataGenerator.flow_from_dataframe`"
TARGETS = {"uncached": 1.5, "cached": 10.0}
# Photos (both sides >= PHOTO_SIDE): most of a full decode is thrown away by the resize.
PHOTO_SIDE = 1200
PHOTO_UNCACHED_TARGET = 3.0
# The breakdown entry that is a decode alone, as load_image decodes: no reader built on
# this decoder can be faster on this machine.
DECODE_ONLY = "decode only, DCT-scaled (as load_image)"


def targets_for(width: int, height: int) -> dict[str, float]:
    """The ratio targets for JPEGs of this size: photo-size ones must reach 3x uncached."""
    if min(width, height) >= PHOTO_SIDE:
        return {**TARGETS, "uncached": PHOTO_UNCACHED_TARGET}
    return dict(TARGETS)


def generate_images(folder: Path, count: int, width: int, height: int, seed: int = 0) -> pd.DataFrame:
    """Write ``count`` JPEGs named ``<sha1>.jpg``; return label.csv rows (objectId, value)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    rows = []
    for index in range(count):
        start, end = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        mix = (x * rng.uniform(0.2, 0.8) + y * rng.uniform(0.2, 0.8))
        pixels = start * (1 - mix) + end * mix + rng.normal(0, 6, (height, width, 3))
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            left, top = rng.integers(0, width - 40), rng.integers(0, height - 40)
            box = (left, top, left + rng.integers(20, width // 2), top + rng.integers(20, height // 2))
            colour = tuple(int(value) for value in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        data = buffer.getvalue()
        object_id = f"{hashlib.sha1(data).hexdigest()}.jpg"
        (folder / object_id).write_bytes(data)
        rows.append((object_id, str(index % 2)))
    return pd.DataFrame(rows, columns=["objectId", "value"])


def measure(epochs: dict[str, Callable[[], int]], repeats: int,
            cpu_ms: dict[str, float] | None = None) -> dict[str, float]:
    """Images per second of each epoch function, the best of ``repeats`` rounds.

    The readers take turns within each round, so a burst of load from other processes
    hits them alike instead of spoiling all the runs of one.  ``cpu_ms``, when given, is
    filled with each reader's lowest CPU time per image (milliseconds, all threads of this
    process): the work a reader does, which other processes on a shared machine change
    far less than its wall time.
    """
    best = {name: (float("inf"), 0) for name in epochs}
    for _round in range(repeats):
        for name, epoch in epochs.items():
            start, cpu_start = time.perf_counter(), time.process_time()
            count = epoch()
            seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
            if seconds < best[name][0]:
                best[name] = (seconds, count)
            if cpu_ms is not None and count:
                cpu_ms[name] = min(cpu_ms.get(name, float("inf")), 1000 * cpu_seconds / count)
    return {name: count / seconds for name, (seconds, count) in best.items()}


def count_images(batches) -> int:
    """Images in an epoch of (images, labels) batches or of plain batches."""
    return sum(int((batch[1] if isinstance(batch, tuple) else batch).shape[0]) for batch in batches)


def reader_epochs(split_csv: Path, frame: pd.DataFrame, images: Path, size: int,
                  batch_size: int) -> dict[str, Callable[[], int]]:
    """One epoch of each reader, as a function returning the number of images it read.

    ``image_data_generator`` and ``uncached`` build their reader inside the epoch (end to
    end: a run's first epoch).  ``image_data_generator_later`` and ``uncached_later`` reuse a
    reader built once, as every later epoch of a run does (without a cache each one still
    reads and decodes every file).  The cached reader's cache is filled here by one untimed
    epoch.
    """
    from keras_cnn.data.augment import legacy_image_data_generator
    from keras_cnn.data.pipeline import make_dataset

    def flow():
        return legacy_image_data_generator(None).flow_from_dataframe(
            frame, directory=str(images), x_col="objectId", y_col="value", target_size=(size, size),
            class_mode="sparse", batch_size=batch_size, shuffle=False,
        )

    def generator_epoch(iterator) -> int:
        return sum(len(iterator[index][1]) for index in range(len(iterator)))

    def reader(cache: bool):
        return make_dataset(split_csv, images, "all", size, batch_size, cache=cache, shuffle=False)

    built_flow, built_uncached, cached_dataset = flow(), reader(False), reader(True)
    count_images(built_uncached)  # traces and starts its functions, as a run's first epoch did
    count_images(cached_dataset)  # the epoch that fills the cache
    return {
        "image_data_generator": lambda: generator_epoch(flow()),
        "uncached": lambda: count_images(reader(False)),
        "image_data_generator_later": lambda: generator_epoch(built_flow),
        "uncached_later": lambda: count_images(built_uncached),
        "cached": lambda: count_images(cached_dataset),
    }


def breakdown_epochs(images: Path, size: int, batch_size: int) -> dict[str, Callable[[], int]]:
    """Where an uncached epoch spends its time (each built once, then timed like a later epoch):
    tf.data epochs of decoding alone (full, and
    DCT-scaled as ``load_image`` does) and of decoding plus resizing (kcnn's ``load_image``;
    a full decode with the same area resize, as before DCT scaling; antialiased bilinear,
    the resize before area averaging)."""
    import tensorflow as tf

    from keras_cnn.data.images import decode_image, load_image

    paths = sorted(os.fspath(path) for path in images.iterdir())

    def as_uint8(pixels):
        return tf.cast(tf.clip_by_value(tf.round(pixels), 0.0, 255.0), tf.uint8)

    def resized(encoded, **options):
        pixels = tf.cast(decode_image(encoded, 3), tf.float32)
        return as_uint8(tf.image.resize(pixels, (size, size), **options))

    variants = {
        "decode only, full size": lambda encoded: decode_image(encoded, 3),
        DECODE_ONLY: lambda encoded: decode_image(encoded, 3, (size, size)),
        "load_image (DCT-scaled decode + area resize)": lambda encoded: load_image(encoded, (size, size), 3),
        "full decode + area resize (before DCT scaling)": lambda encoded: resized(encoded, method="area"),
        "full decode + bilinear, antialias": lambda encoded: resized(encoded, antialias=True),
    }

    def epoch_of(function):
        dataset = tf.data.Dataset.from_tensor_slices(paths)
        # One pixel of each image leaves the map: the decode and resize still run in full,
        # but batching full-size decoded photos (megabytes each) does not count against them.
        dataset = dataset.map(lambda path: function(tf.io.read_file(path))[0, 0, 0],
                              num_parallel_calls=tf.data.AUTOTUNE)
        dataset = dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
        count_images(dataset)  # built and started once, like the later-epoch readers

        def epoch():
            return count_images(dataset)

        return epoch

    return {name: epoch_of(function) for name, function in variants.items()}


def scaled_decode_difference(images: Path, size: int, limit: int = 50) -> tuple[float, float, int]:
    """(mean, largest per-image mean) absolute difference in grey levels between ``load_image``
    and a full decode + the same resize, over up to ``limit`` images; and the DCT ratio used."""
    import tensorflow as tf

    from keras_cnn.data.images import decode_image, jpeg_decode_ratio, load_image, resize_image

    differences, ratio = [], 1
    for path in sorted(images.iterdir())[:limit]:
        encoded = tf.constant(path.read_bytes())
        scaled = load_image(encoded, (size, size), 3).numpy().astype(np.float32)
        full = resize_image(decode_image(encoded, 3), (size, size)).numpy().astype(np.float32)
        differences.append(float(np.abs(scaled - full).mean()))
        ratio = int(jpeg_decode_ratio(encoded, (size, size)))
    return float(np.mean(differences)), float(np.max(differences)), ratio


def run_benchmark(count: int, width: int, height: int, size: int, batch_size: int, repeats: int,
                  breakdown: bool = False) -> tuple[dict[str, float], dict[str, float] | None]:
    """Generate the JPEGs in a temporary folder and time the readers on them.

    Returns (img/s of each reader plus ``"difference"``, the :func:`scaled_decode_difference`
    triple, and ``"cpu_ms"``, CPU milliseconds per image of each reader; img/s of each
    breakdown variant or ``None``).
    """
    from keras_cnn.data.split import split_labels, write_split_csv

    with tempfile.TemporaryDirectory(prefix="kcnn-pipeline-bench-") as temporary:
        folder = Path(temporary)
        images = folder / "images"
        print(f"Generating {count} JPEGs of {width}x{height} ...", file=sys.stderr)
        labels = generate_images(images, count, width, height)
        labels.to_csv(folder / "label.csv", index=False)
        split_csv = write_split_csv(split_labels(labels), folder / "split.csv")

        cpu_ms: dict[str, float] = {}
        epochs = reader_epochs(split_csv, labels, images, size, batch_size)
        parts = breakdown_epochs(images, size, batch_size) if breakdown else {}
        # The breakdown takes turns with the readers, so its rates and theirs share the conditions.
        measured = measure({**epochs, **parts}, repeats, cpu_ms)
        rates = {name: measured[name] for name in epochs}
        rates["cpu_ms"] = {name: cpu_ms[name] for name in epochs}
        where = {name: measured[name] for name in parts} if breakdown else None
        rates["difference"] = scaled_decode_difference(images, size)
        total_bytes = sum(path.stat().st_size for path in images.iterdir())
        rates["bits_per_pixel"] = 8 * total_bytes / (count * width * height)
    return rates, where


def ceiling_line(rates: dict[str, float], breakdown: dict[str, float]) -> str:
    """How far the decoder alone gets against ImageDataGenerator, and how much of it the reader keeps."""
    generator, decode = rates["image_data_generator_later"], breakdown[DECODE_ONLY]
    return (f"Ceiling: decoding alone (read + decode as `load_image` does, no resize, no batching) reaches "
            f"{decode:,.0f} img/s, {decode / generator:.2f}x ImageDataGenerator's later epoch; kcnn's uncached "
            f"later epoch keeps {rates['uncached_later'] / decode:.0%} of that rate.")


def cpu_line(cpu_ms: dict[str, float]) -> str:
    """CPU milliseconds per image of each reader and the work ratio (robust to a busy machine)."""
    generator, uncached = cpu_ms["image_data_generator"], cpu_ms["uncached"]
    return (f"CPU time per image (all threads, lowest of the rounds): ImageDataGenerator {generator:.1f} ms, "
            f"`make_dataset` first epoch {uncached:.1f} ms, cached epoch {cpu_ms['cached']:.2f} ms; "
            f"work ratio ImageDataGenerator / first epoch {generator / uncached:.2f}x.")


def section_lines(arguments, rates: dict[str, float], machine: dict[str, str], load_after: str, note: str,
                  breakdown: dict[str, float] | None = None) -> list[str]:
    """The RESULTS.md section of one run: command, machine, table, breakdown and note."""
    generator, later_generator = rates["image_data_generator"], rates["image_data_generator_later"]
    targets = targets_for(arguments.width, arguments.height)
    mean_difference, worst_difference, ratio = rates["difference"]
    lines = [
        (f"`python benchmarks/pipeline.py --images {arguments.images} --width {arguments.width} "
         f"--height {arguments.height} --size {arguments.size} --batch-size {arguments.batch_size} "
         f"--repeats {arguments.repeats}{' --breakdown' if breakdown else ''}`"),
        "",
        describe_machine(machine, load_after),
        "",
        "| reader | img/s | ratio to ImageDataGenerator | target |",
        "|---|---:|---:|---:|",
        (f"| `make_dataset`, first epoch, no cache (reader built in the epoch) | {rates['uncached']:,.0f} | "
         f"{rates['uncached'] / generator:.2f}x | >= {targets['uncached']}x |"),
        (f"| `make_dataset`, later epoch, no cache (every file read again) | {rates['uncached_later']:,.0f} | "
         f"{rates['uncached_later'] / later_generator:.2f}x of the later epoch below | >= {targets['uncached']}x |"),
        (f"| `make_dataset`, cached epoch | {rates['cached']:,.0f} | "
         f"{rates['cached'] / generator:.2f}x | >= {targets['cached']}x |"),
        f"| `ImageDataGenerator.flow_from_dataframe`, first epoch | {generator:,.0f} | 1.00x | |",
        f"| `ImageDataGenerator.flow_from_dataframe`, later epoch | {later_generator:,.0f} | | |",
        "",
        (f"JPEGs of {rates['bits_per_pixel']:.2f} bits per pixel.  "
         f"JPEG decode ratio used by kcnn: 1/{ratio}.  Mean absolute difference from a full decode + the same "
         f"resize: {mean_difference:.2f} grey levels (0..255; worst image {worst_difference:.2f})."),
        "",
        cpu_line(rates["cpu_ms"]),
        "",
    ]
    if breakdown:
        lines += ["Where an uncached epoch goes (tf.data, same files, img/s): "
                  + "; ".join(f"{name} {rate:,.0f}" for name, rate in breakdown.items()) + ".", "",
                  ceiling_line(rates, breakdown), ""]
    if note:
        lines += [note, ""]
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=600, help="number of JPEGs to generate")
    parser.add_argument("--width", type=int, default=480)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--size", type=int, default=224, help="square size the readers resize to")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of runs; each reader's best is kept")
    parser.add_argument("--results", type=Path, default=RESULTS_PATH, help="Markdown file to append to")
    parser.add_argument("--no-record", action="store_true", help="print only; do not touch RESULTS.md")
    parser.add_argument("--note", default="", help="a sentence added under the table")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time decode alone and other resize methods (where the time goes)")
    arguments = parser.parse_args(argv)

    machine = machine_description()
    rates, breakdown = run_benchmark(arguments.images, arguments.width, arguments.height, arguments.size,
                                     arguments.batch_size, arguments.repeats, arguments.breakdown)
    generator = rates["image_data_generator"]
    load_after = load_average()

    targets = targets_for(arguments.width, arguments.height)
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, load {machine['load']} -> {load_after}")
    print(f"ImageDataGenerator.flow_from_dataframe : {generator:9,.0f} img/s first epoch, "
          f"{rates['image_data_generator_later']:,.0f} img/s later epoch")
    compared = {  # reader -> (title, the ImageDataGenerator rate it is compared with, target)
        "uncached": ("make_dataset first epoch, no cache", "image_data_generator", "uncached"),
        "uncached_later": ("make_dataset later epoch, no cache", "image_data_generator_later", "uncached"),
        "cached": ("make_dataset cached epoch", "image_data_generator", "cached"),
    }
    for key, (title, reference, target) in compared.items():
        ratio = rates[key] / rates[reference]
        verdict = ratio_verdict(ratio, targets[target])
        print(f"{title:<39}: {rates[key]:9,.0f} img/s  {ratio:6.2f}x  ({verdict} the {targets[target]}x target)")
    mean_difference, worst_difference, decode_ratio = rates["difference"]
    print(f"JPEGs of {rates['bits_per_pixel']:.2f} bits per pixel; decode ratio 1/{decode_ratio}; mean absolute "
          f"difference from full decode + resize: {mean_difference:.2f} grey levels (worst image {worst_difference:.2f})")
    print(cpu_line(rates["cpu_ms"]))
    for name, rate in (breakdown or {}).items():
        print(f"  breakdown: {name:<54}: {rate:9,.0f} img/s")
    if breakdown:
        print(ceiling_line(rates, breakdown))
    if not arguments.no_record:
        append_section(SECTION_TITLE, section_lines(arguments, rates, machine, load_after, arguments.note, breakdown),
                       arguments.results)
        print(f"appended to {arguments.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
