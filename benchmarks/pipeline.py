"""Images per second: kcnn's tf.data pipeline against ImageDataGenerator.flow_from_dataframe.

Generates JPEGs (photo-like: gradients, shapes, a little noise) named by their SHA-1 in a
temporary folder, writes label.csv and a split CSV, and reads the same files three ways:

  (a) ``make_dataset(cache=False)``: every file read, decoded and resized (uint8 batches);
      timed as a first epoch (the reader built inside it) and as a later epoch (a reader built
      once);
  (b) ``make_dataset(cache=True)``: an epoch served from the in-memory cache (after one
      epoch that fills it), uint8 batches as the model gets them, and float32 batches
      (``dtype="float32"``, what every batch was before) for comparison;
  (c) ``ImageDataGenerator().flow_from_dataframe(target_size, class_mode="sparse")``, first
      and later epochs alike.

The readers take turns for ``--repeats`` rounds and each one's median is kept (a burst of load
from other processes hits them alike).  The ceiling, decoding alone (read + the DCT-scaled
decode ``load_image`` does, nothing else), is timed in the same rounds: the uncached reader's
share of it is its target for photo-size JPEGs, where the decode is most of the work.
Prints img/s and the ratios, and appends a dated section with the machine to
benchmarks/RESULTS.md (``--no-record`` skips).

Also reported: the bytes of one batch (uint8 and float32), whether training on uint8 and on
float32 batches gives the same weights (a small CNN, two epochs, same seed), the difference
between kcnn's DCT-scaled decode and a full decode + the same resize, and, for a cheaper
resize that was tried (2x2 box halvings, then one bilinear step: ``box_bilinear``), its time
in the breakdown and its mean absolute difference (grey levels) from kcnn's area resize, on
the generated images and on scikit-learn's two sample photos when scikit-learn is installed.

    python benchmarks/pipeline.py --images 600 --width 480 --height 360 --size 224 --batch-size 32
    python benchmarks/pipeline.py --images 400 --width 1600 --height 1200 --size 224 --breakdown
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import statistics
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
# Photos (both sides >= PHOTO_SIDE): decoding is most of an uncached epoch, so the reader is
# held to its share of the decode ceiling instead of a ratio to ImageDataGenerator.
PHOTO_SIDE = 1200
PHOTO_CEILING_SHARE = 0.9
# The largest mean absolute difference (grey levels) from the area resize a cheaper resize may have.
FILTER_DIFFERENCE_LIMIT = 1.5
# The epoch that is a decode alone, as load_image decodes: no reader built on this decoder
# can be faster on this machine.
DECODE_ONLY = "decode_only"
BREAKDOWN_TITLES = {
    "decode only, full size": "full decode",
    DECODE_ONLY: "decode only, DCT-scaled (as load_image)",
    "load_image": "load_image (DCT-scaled decode + area resize)",
    "decode + box-bilinear": "DCT-scaled decode + the box-bilinear resize tried",
    "full decode + area resize (before DCT scaling)": "full decode + area resize",
}


def is_photo_size(width: int, height: int) -> bool:
    return min(width, height) >= PHOTO_SIDE


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
    """Images per second of each epoch function: the median of ``repeats`` rounds.

    The readers take turns within each round, so a burst of load from other processes
    hits them alike instead of spoiling all the runs of one.  ``cpu_ms``, when given, is
    filled with each reader's lowest CPU time per image (milliseconds, all threads of this
    process): the work a reader does, which other processes on a shared machine change
    far less than its wall time.
    """
    rates: dict[str, list[float]] = {name: [] for name in epochs}
    for _round in range(repeats):
        for name, epoch in epochs.items():
            start, cpu_start = time.perf_counter(), time.process_time()
            count = epoch()
            seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
            rates[name].append(count / seconds)
            if cpu_ms is not None and count:
                cpu_ms[name] = min(cpu_ms.get(name, float("inf")), 1000 * cpu_seconds / count)
    return {name: statistics.median(values) for name, values in rates.items()}


def count_images(batches) -> int:
    """Images in an epoch of (images, labels) batches or of plain batches."""
    return sum(int((batch[1] if isinstance(batch, tuple) else batch).shape[0]) for batch in batches)


def reader_epochs(split_csv: Path, frame: pd.DataFrame, images: Path, size: int,
                  batch_size: int) -> dict[str, Callable[[], int]]:
    """One epoch of each reader, as a function returning the number of images it read.

    ``image_data_generator`` and ``uncached`` build their reader inside the epoch (end to
    end: a run's first epoch).  ``image_data_generator_later`` and ``uncached_later`` reuse a
    reader built once, as every later epoch of a run does (without a cache each one still
    reads and decodes every file).  The cached readers' caches are filled here by one untimed
    epoch each.
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

    def reader(cache: bool, dtype: str = "uint8"):
        return make_dataset(split_csv, images, "all", size, batch_size, cache=cache, shuffle=False, dtype=dtype)

    built_flow, built_uncached = flow(), reader(False)
    cached, cached_float = reader(True), reader(True, "float32")
    for dataset in (built_uncached, cached, cached_float):
        count_images(dataset)  # traces and starts its functions (and fills a cache), as a run's first epoch did
    return {
        "image_data_generator": lambda: generator_epoch(flow()),
        "uncached": lambda: count_images(reader(False)),
        "image_data_generator_later": lambda: generator_epoch(built_flow),
        "uncached_later": lambda: count_images(built_uncached),
        "cached": lambda: count_images(cached),
        "cached_float32": lambda: count_images(cached_float),
    }


def decode_epochs(images: Path, size: int, batch_size: int, breakdown: bool) -> dict[str, Callable[[], int]]:
    """Where an uncached epoch goes (each built once, then timed like a later epoch): the decode
    ceiling always; with ``breakdown`` also a full-size decode and decoding plus each resize."""
    import tensorflow as tf

    from keras_cnn.data.images import decode_image, load_image, resize_image

    paths = sorted(os.fspath(path) for path in images.iterdir())
    variants = {DECODE_ONLY: lambda encoded: decode_image(encoded, 3, (size, size))}
    if breakdown:
        variants = {
            "decode only, full size": lambda encoded: decode_image(encoded, 3),
            **variants,
            "load_image": lambda encoded: load_image(encoded, (size, size), 3),
            "decode + box-bilinear": lambda encoded: box_bilinear(decode_image(encoded, 3, (size, size)), size),
            "full decode + area resize (before DCT scaling)":
                lambda encoded: resize_image(decode_image(encoded, 3), (size, size)),
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


def sample_photos() -> dict[str, np.ndarray]:
    """scikit-learn's two sample photos (427x640, shipped with it), or none without scikit-learn."""
    try:
        from sklearn.datasets import load_sample_image
    except ImportError:
        return {}
    return {name: load_sample_image(name) for name in ("china.jpg", "flower.jpg")}


def box_bilinear(pixels, size: int):
    """The cheaper resize tried: bilinear sampling to half the size (a 2x2 box average) where a side is
    at least twice the target, then one bilinear step (factors under 4, as after DCT scaling); uint8."""
    import tensorflow as tf

    target = tf.constant([size, size])
    halved = tf.raw_ops.ResizeBilinear(images=pixels[None], size=tf.maximum(target, (tf.shape(pixels)[:2] + 1) // 2),
                                       half_pixel_centers=True)
    resized = tf.raw_ops.ResizeBilinear(images=halved, size=target, half_pixel_centers=True)[0]
    return tf.cast(tf.round(resized), tf.uint8)


def filter_difference(images: Path, size: int, limit: int = 50) -> dict[str, tuple[float, float]]:
    """(mean, worst image's mean) absolute difference in grey levels between the box-bilinear resize
    tried and kcnn's area resize of the same decoded pixels: on the generated images, on each sample photo."""
    import tensorflow as tf

    from keras_cnn.data.images import decode_image, resize_image

    def difference(pixels) -> float:
        box = box_bilinear(pixels, size).numpy().astype(np.float32)
        area = resize_image(pixels, (size, size)).numpy().astype(np.float32)
        return float(np.abs(box - area).mean())

    generated = [difference(decode_image(tf.constant(path.read_bytes()), 3, (size, size)))
                 for path in sorted(images.iterdir())[:limit]]
    result = {"generated images": (float(np.mean(generated)), float(np.max(generated)))}
    for name, pixels in sample_photos().items():
        value = difference(tf.constant(pixels))
        result[f"{name} ({pixels.shape[1]}x{pixels.shape[0]})"] = (value, value)
    return result


def identical_training(split_csv: Path, images: Path, size: int, batch_size: int) -> bool:
    """Whether a small CNN trained two epochs on uint8 batches ends with exactly the weights of the same
    training on float32 batches (cached, shuffled with one seed, the same initial weights)."""
    import keras

    from keras_cnn.data.pipeline import make_dataset

    def train(dtype: str):
        keras.utils.set_random_seed(7)
        inputs = keras.Input((size, size, 3))
        x = keras.layers.Rescaling(1 / 255)(inputs)
        x = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))
        model.compile("adam", "sparse_categorical_crossentropy")
        dataset = make_dataset(split_csv, images, "all", size, batch_size, cache=True, shuffle=True, seed=3,
                               dtype=dtype)
        model.fit(dataset, epochs=2, verbose=0, shuffle=False)   # the dataset shuffles itself
        return model.get_weights()

    return all(np.array_equal(a, b) for a, b in zip(train("uint8"), train("float32")))


def run_benchmark(count: int, width: int, height: int, size: int, batch_size: int, repeats: int,
                  breakdown: bool = False) -> tuple[dict, dict[str, float]]:
    """Generate the JPEGs in a temporary folder and time the readers and the decode on them.

    Returns (a dict of the readers' img/s plus ``"cpu_ms"`` (CPU milliseconds per image of each
    reader), ``"difference"`` (:func:`scaled_decode_difference`), ``"filters"``
    (:func:`filter_difference`), ``"identical"`` (:func:`identical_training`) and
    ``"bits_per_pixel"``; img/s of the decode ceiling and of each breakdown variant).
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
        parts = decode_epochs(images, size, batch_size, breakdown)
        # The decode epochs take turns with the readers, so their rates share the conditions.
        measured = measure({**epochs, **parts}, repeats, cpu_ms)
        rates: dict = {name: measured[name] for name in epochs}
        rates["cpu_ms"] = {name: cpu_ms[name] for name in epochs}
        rates["difference"] = scaled_decode_difference(images, size)
        rates["filters"] = filter_difference(images, size)
        rates["identical"] = identical_training(split_csv, images, size, batch_size)
        total_bytes = sum(path.stat().st_size for path in images.iterdir())
        rates["bits_per_pixel"] = 8 * total_bytes / (count * width * height)
    return rates, {name: measured[name] for name in parts}


def ceiling_line(rates: dict, decode: dict[str, float]) -> str:
    """How far the decoder alone gets against ImageDataGenerator, and how much of it the readers keep."""
    generator, ceiling = rates["image_data_generator_later"], decode[DECODE_ONLY]
    return (f"Ceiling: decoding alone (read + decode as `load_image` does, no resize, no batching) reaches "
            f"{ceiling:,.0f} img/s, {ceiling / generator:.2f}x ImageDataGenerator's later epoch; kcnn's uncached "
            f"later epoch keeps {rates['uncached_later'] / ceiling:.0%} of that rate, its first epoch "
            f"{rates['uncached'] / ceiling:.0%}.")


def cpu_line(cpu_ms: dict[str, float]) -> str:
    """CPU milliseconds per image of each reader and the work ratio (robust to a busy machine)."""
    generator, uncached = cpu_ms["image_data_generator"], cpu_ms["uncached"]
    return (f"CPU time per image (all threads, lowest of the rounds): ImageDataGenerator {generator:.1f} ms, "
            f"`make_dataset` first epoch {uncached:.1f} ms, later epoch {cpu_ms['uncached_later']:.2f} ms, "
            f"cached epoch {cpu_ms['cached']:.2f} ms "
            f"(float32 batches {cpu_ms['cached_float32']:.2f} ms); work ratio ImageDataGenerator / first epoch "
            f"{generator / uncached:.2f}x.")


def batch_line(rates: dict, size: int, batch_size: int) -> str:
    """Bytes of one batch each way, and whether training on either gave the same weights."""
    pixels = batch_size * size * size * 3
    same = "identical" if rates["identical"] else "DIFFERENT"
    return (f"One batch of {batch_size} images: {pixels / 2**20:.1f} MiB as uint8, {4 * pixels / 2**20:.1f} MiB as "
            f"float32; cached epoch with uint8 batches {rates['cached']:,.0f} img/s, with float32 batches "
            f"{rates['cached_float32']:,.0f} img/s ({rates['cached'] / rates['cached_float32']:.2f}x).  A small CNN "
            f"trained two epochs on uint8 and on float32 batches (same seed): weights {same}.")


def filter_line(filters: dict[str, tuple[float, float]]) -> str:
    """The two resize filters' difference on each set of images."""
    parts = [f"{name} {mean:.2f}" + (f" (worst {worst:.2f})" if worst != mean else "")
             for name, (mean, worst) in filters.items()]
    return ("Mean absolute difference between the box-bilinear resize tried and kcnn's area resize of the same pixels "
            f"(grey levels, limit {FILTER_DIFFERENCE_LIMIT}): " + "; ".join(parts) + ".")


def target_rows(arguments, rates: dict, decode: dict[str, float]) -> list[tuple[str, float, float, str]]:
    """(what, measured, target, how it is written) of each target this image size has."""
    generator, later_generator = rates["image_data_generator"], rates["image_data_generator_later"]
    rows = [("cached epoch (uint8 batches) vs ImageDataGenerator", rates["cached"] / generator, TARGETS["cached"],
             "x")]
    if is_photo_size(arguments.width, arguments.height):
        rows.append(("uncached later epoch, share of the decode ceiling",
                     rates["uncached_later"] / decode[DECODE_ONLY], PHOTO_CEILING_SHARE, "%"))
    else:
        rows += [("uncached first epoch vs ImageDataGenerator's", rates["uncached"] / generator, TARGETS["uncached"],
                  "x"),
                 ("uncached later epoch vs ImageDataGenerator's", rates["uncached_later"] / later_generator,
                  TARGETS["uncached"], "x")]
    return rows


def formatted(value: float, unit: str) -> str:
    return f"{value:.0%}" if unit == "%" else f"{value:.2f}x"


def section_lines(arguments, rates: dict, machine: dict[str, str], load_after: str, note: str,
                  decode: dict[str, float]) -> list[str]:
    """The RESULTS.md section of one run: command, machine, tables, breakdown and note."""
    generator, later_generator = rates["image_data_generator"], rates["image_data_generator_later"]
    mean_difference, worst_difference, ratio = rates["difference"]
    ceiling = decode[DECODE_ONLY]
    lines = [
        (f"`python benchmarks/pipeline.py --images {arguments.images} --width {arguments.width} "
         f"--height {arguments.height} --size {arguments.size} --batch-size {arguments.batch_size} "
         f"--repeats {arguments.repeats}{' --breakdown' if arguments.breakdown else ''}`"),
        "",
        describe_machine(machine, load_after),
        "",
        f"Median of {arguments.repeats} rounds; the readers and the decode ceiling took turns in each round.",
        "",
        "| reader | img/s | ratio to ImageDataGenerator | share of the decode ceiling |",
        "|---|---:|---:|---:|",
        (f"| `make_dataset`, first epoch, no cache (reader built in the epoch) | {rates['uncached']:,.0f} | "
         f"{rates['uncached'] / generator:.2f}x | {rates['uncached'] / ceiling:.0%} |"),
        (f"| `make_dataset`, later epoch, no cache (every file read again) | {rates['uncached_later']:,.0f} | "
         f"{rates['uncached_later'] / later_generator:.2f}x of the later epoch below | "
         f"{rates['uncached_later'] / ceiling:.0%} |"),
        f"| `make_dataset`, cached epoch, uint8 batches | {rates['cached']:,.0f} | {rates['cached'] / generator:.2f}x | |",
        (f"| `make_dataset`, cached epoch, float32 batches (`dtype=\"float32\"`) | {rates['cached_float32']:,.0f} | "
         f"{rates['cached_float32'] / generator:.2f}x | |"),
        f"| `ImageDataGenerator.flow_from_dataframe`, first epoch | {generator:,.0f} | 1.00x | |",
        f"| `ImageDataGenerator.flow_from_dataframe`, later epoch | {later_generator:,.0f} | | |",
        f"| decode only (the ceiling) | {ceiling:,.0f} | {ceiling / later_generator:.2f}x of the later epoch | 100% |",
        "",
        "| target | measured | target | verdict |",
        "|---|---:|---:|---|",
        *[f"| {what} | {formatted(value, unit)} | >= {formatted(target, unit)} | {ratio_verdict(value, target)} |"
          for what, value, target, unit in target_rows(arguments, rates, decode)],
        "",
        (f"JPEGs of {rates['bits_per_pixel']:.2f} bits per pixel.  "
         f"JPEG decode ratio used by kcnn: 1/{ratio}.  Mean absolute difference from a full decode + the same "
         f"resize: {mean_difference:.2f} grey levels (0..255; worst image {worst_difference:.2f})."),
        "",
        filter_line(rates["filters"]),
        "",
        batch_line(rates, arguments.size, arguments.batch_size),
        "",
        cpu_line(rates["cpu_ms"]),
        "",
    ]
    if len(decode) > 1:
        lines += ["Where an uncached epoch goes (tf.data, same files, img/s): "
                  + "; ".join(f"{BREAKDOWN_TITLES[name]} {rate:,.0f}" for name, rate in decode.items()) + ".", ""]
    lines += [ceiling_line(rates, decode), ""]
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
    parser.add_argument("--repeats", type=int, default=3, help="rounds of runs; each reader's median is kept")
    parser.add_argument("--results", type=Path, default=RESULTS_PATH, help="Markdown file to append to")
    parser.add_argument("--no-record", action="store_true", help="print only; do not touch RESULTS.md")
    parser.add_argument("--note", default="", help="a sentence added under the table")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time a full-size decode and the decode with each resize (where the time goes)")
    arguments = parser.parse_args(argv)

    machine = machine_description()
    rates, decode = run_benchmark(arguments.images, arguments.width, arguments.height, arguments.size,
                                  arguments.batch_size, arguments.repeats, arguments.breakdown)
    generator = rates["image_data_generator"]
    load_after = load_average()

    print(f"machine: {machine['cpu']}, {machine['cores']} cores, load {machine['load']} -> {load_after}")
    print(f"ImageDataGenerator.flow_from_dataframe : {generator:9,.0f} img/s first epoch, "
          f"{rates['image_data_generator_later']:,.0f} img/s later epoch")
    for key, title in (("uncached", "make_dataset first epoch, no cache"),
                       ("uncached_later", "make_dataset later epoch, no cache"),
                       ("cached", "make_dataset cached epoch (uint8)"),
                       ("cached_float32", "make_dataset cached epoch (float32)")):
        print(f"{title:<39}: {rates[key]:9,.0f} img/s")
    for what, value, target, unit in target_rows(arguments, rates, decode):
        print(f"target: {what}: {formatted(value, unit)} ({ratio_verdict(value, target)} >= {formatted(target, unit)})")
    mean_difference, worst_difference, decode_ratio = rates["difference"]
    print(f"JPEGs of {rates['bits_per_pixel']:.2f} bits per pixel; decode ratio 1/{decode_ratio}; mean absolute "
          f"difference from full decode + resize: {mean_difference:.2f} grey levels (worst image {worst_difference:.2f})")
    print(filter_line(rates["filters"]))
    print(batch_line(rates, arguments.size, arguments.batch_size))
    print(cpu_line(rates["cpu_ms"]))
    for name, rate in decode.items():
        print(f"  breakdown: {BREAKDOWN_TITLES[name]:<54}: {rate:9,.0f} img/s")
    print(ceiling_line(rates, decode))
    if not arguments.no_record:
        append_section(SECTION_TITLE, section_lines(arguments, rates, machine, load_after, arguments.note, decode),
                       arguments.results)
        print(f"appended to {arguments.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
