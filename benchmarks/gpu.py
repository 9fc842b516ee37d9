"""EfficientNet-B0 training speed: float32 against mixed_float16 + XLA, and the input wait.

Generates JPEGs named by their SHA-1, reads them through kcnn's own pipeline
(``keras_cnn.data.make_dataset``: decode, resize, cache, shuffle, optional augmentation,
batch, prefetch; in-memory tensors when the pipeline cannot be imported) and trains a
whole EfficientNet-B0 (``weights=None``: speed does not depend on the weights' values)
with a float32 softmax head, once per setting:

  float32          the plain baseline;
  mixed+xla        ``mixed_float16`` policy (loss scaling by Keras) and ``jit_compile=True``,
                   what ``--mixed-precision auto --xla auto`` picks on a GPU of compute
                   capability >= 7.0.

For each setting it reports
  * images/second of ``model.fit`` over ``--steps`` steps (after warm-up steps that
    compile the step and fill the pipeline's cache), and
  * the input-wait share: a loop of ``train_on_batch`` calls timing ``next(iterator)``
    apart from the step; the share of wall time spent waiting for the next batch (the
    target is < 5 %: the pipeline must keep the GPU busy).

Prints the table and the speed-up, and appends it with the device name to
benchmarks/RESULTS.md (``--no-record`` skips; ``--quick`` is a small CPU smoke run that
records nothing unless ``--record`` is given).

    python benchmarks/gpu.py                      # on a GPU machine
    python benchmarks/gpu.py --quick              # smoke run, anywhere
"""

from __future__ import annotations

import argparse
import hashlib
import io
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from common import (
    RESULTS_PATH,
    append_section,
    command_line,
    cpu_model,
    describe_machine,
    gpu_names,
    load_average,
    machine_description,
    usable_cores,
)

INPUT_WAIT_TARGET = 0.05
SETTINGS = {
    "float32": {"policy": "float32", "jit_compile": False},
    "mixed+xla": {"policy": "mixed_float16", "jit_compile": True},
    "mixed": {"policy": "mixed_float16", "jit_compile": False},
    "xla": {"policy": "float32", "jit_compile": True},
}


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2048, help="JPEGs generated (one epoch)")
    parser.add_argument("--source-size", type=int, nargs=2, default=(320, 240), metavar=("W", "H"),
                        help="size of the generated JPEGs before resizing")
    parser.add_argument("--size", type=int, default=224, help="model input side")
    parser.add_argument("--batch-size", type=int, default=128, help="global batch size")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=60, help="timed steps per setting")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed steps first (default: one epoch, so the cache is full)")
    parser.add_argument("--settings", nargs="+", default=["float32", "mixed+xla"], choices=sorted(SETTINGS))
    parser.add_argument("--augment", action="store_true",
                        help="random flip + rotation in the tf.data pipeline")
    parser.add_argument("--no-cache", action="store_true", help="decode every epoch (no memory cache)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 64 images of 64 px, batch 8, 3 steps (records only with --record)")
    parser.add_argument("--record", dest="record", action="store_true", default=None,
                        help="append the results to benchmarks/RESULTS.md (default unless --quick)")
    parser.add_argument("--no-record", dest="record", action="store_false")
    arguments = parser.parse_args(argv)
    if arguments.quick:
        arguments.images, arguments.size, arguments.batch_size = 64, 64, 8
        arguments.source_size, arguments.steps = (96, 72), 3
        arguments.warmup = 2 if arguments.warmup is None else arguments.warmup
    if arguments.record is None:
        arguments.record = not arguments.quick
    if arguments.warmup is None:
        arguments.warmup = math.ceil(arguments.images / arguments.batch_size)
    return arguments


def generate_images(folder: Path, count: int, width: int, height: int, classes: int, seed: int = 0) -> Path:
    """Write ``count`` photo-like JPEGs named ``<sha1>.jpg`` and a split CSV (all train); return the CSV."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    rows = ["objectId,value,type"]
    for index in range(count):
        start, end = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        mix = x * rng.uniform(0.2, 0.8) + y * rng.uniform(0.2, 0.8)
        pixels = start * (1 - mix) + end * mix + rng.normal(0, 8, (height, width, 3))
        buffer = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
        data = buffer.getvalue()
        object_id = f"{hashlib.sha1(data).hexdigest()}.jpg"
        (folder / object_id).write_bytes(data)
        rows.append(f"{object_id},{index % classes},train")
    split_csv = folder / "split.csv"
    split_csv.write_text("\n".join(rows) + "\n")
    return split_csv


def make_input(arguments, folder: Path):
    """(repeated dataset of (float32 images 0..255, labels), description of the source)."""
    import tensorflow as tf

    try:
        from keras_cnn.data import make_dataset

        split_csv = generate_images(folder, arguments.images, *arguments.source_size, arguments.classes)
        augment = {"horizontal_flip": True, "rotation_range": 10.0} if arguments.augment else None
        dataset = make_dataset(split_csv, folder, "train", arguments.size, arguments.batch_size,
                               augment=augment, cache=not arguments.no_cache, shuffle=True, seed=0,
                               drop_remainder=True)
        source = "kcnn make_dataset (JPEG decode + resize" + (", cache" if not arguments.no_cache else "") + \
            (", augment" if arguments.augment else "") + ")"
    except ImportError as error:  # an older checkout without the pipeline
        print(f"make_dataset unavailable ({error}); using in-memory tensors", file=sys.stderr)
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (arguments.images, arguments.size, arguments.size, 3), dtype=np.uint8)
        labels = rng.integers(0, arguments.classes, arguments.images).astype("int32")
        dataset = (tf.data.Dataset.from_tensor_slices((images, labels)).shuffle(arguments.images, seed=0)
                   .batch(arguments.batch_size, drop_remainder=True)
                   .map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE)
                   .prefetch(tf.data.AUTOTUNE))
        source = "in-memory tensors"
    return dataset.repeat(), source


def build_model(size: int, classes: int):
    """Whole EfficientNet-B0 (all layers trainable) with a float32 softmax head."""
    import keras

    inputs = keras.Input((size, size, 3), name="image")
    base = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(size, size, 3),
                                             pooling="avg")
    head = keras.layers.Dense(classes, activation="softmax", dtype="float32", name="predictions")
    outputs = head(base(inputs))
    return keras.Model(inputs, outputs)


def measure(setting: str, dataset, arguments) -> dict[str, float]:
    """Train one setting: fit throughput, then the input-wait share of a train_on_batch loop."""
    import keras

    options = SETTINGS[setting]
    keras.mixed_precision.set_global_policy(options["policy"])
    keras.utils.set_random_seed(0)
    model = build_model(arguments.size, arguments.classes)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss="sparse_categorical_crossentropy",
                  jit_compile=options["jit_compile"])

    started = time.perf_counter()
    model.fit(dataset, steps_per_epoch=arguments.warmup, epochs=1, shuffle=False, verbose=0)
    warmup_seconds = time.perf_counter() - started
    started = time.perf_counter()
    model.fit(dataset, steps_per_epoch=arguments.steps, epochs=1, shuffle=False, verbose=0)
    fit_seconds = time.perf_counter() - started

    # Same model, same compiled step: time getting each batch apart from running on it.
    iterator = iter(dataset)
    model.train_on_batch(*next(iterator))  # the iterator's own start-up is not a wait
    waiting = 0.0
    started = time.perf_counter()
    for _ in range(arguments.steps):
        before = time.perf_counter()
        images, labels = next(iterator)
        waiting += time.perf_counter() - before
        model.train_on_batch(images, labels)  # returns numbers, so the step has finished
    loop_seconds = time.perf_counter() - started
    keras.mixed_precision.set_global_policy("float32")
    return {
        "images_per_second": arguments.steps * arguments.batch_size / fit_seconds,
        "step_ms": 1000 * fit_seconds / arguments.steps,
        "loop_images_per_second": arguments.steps * arguments.batch_size / loop_seconds,
        "input_wait": waiting / loop_seconds,
        "warmup_seconds": warmup_seconds,
    }


def device_name() -> str:
    """The GPU's name and driver (nvidia-smi), else what TensorFlow sees, else the CPU."""
    try:
        names = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=30, check=True).stdout.strip()
        if names:
            gpus = names.splitlines()
            return f"{len(gpus)}x {gpus[0].split(',')[0].strip()} (driver {gpus[0].split(',')[1].strip()})"
    except (OSError, subprocess.SubprocessError, IndexError):
        pass
    gpus = gpu_names()
    if gpus:
        return f"{len(gpus)}x {gpus[0]}"
    return f"CPU only: {cpu_model()}, {usable_cores()} usable cores"


def render(results: dict[str, dict[str, float]], arguments) -> list[str]:
    baseline = results.get("float32", next(iter(results.values())))["images_per_second"]
    lines = [
        "| setting | img/s (fit) | step ms | img/s (loop) | input wait | vs float32 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for setting, numbers in results.items():
        lines.append(
            f"| {setting} | {numbers['images_per_second']:,.0f} | {numbers['step_ms']:.1f} | "
            f"{numbers['loop_images_per_second']:,.0f} | {100 * numbers['input_wait']:.1f} % | "
            f"{numbers['images_per_second'] / baseline:.2f}x |"
        )
    return lines


def record(results, arguments, device: str, source: str, machine: dict[str, str], command: str) -> None:
    worst_wait = max(numbers["input_wait"] for numbers in results.values())
    append_section("GPU training: EfficientNet-B0, float32 vs mixed precision + XLA", [
        f"`{command}`",
        "",
        f"Device: {device}.  {describe_machine(machine, load_average())}",
        (f"Input: {source}, {arguments.images} images, {arguments.size} px, global batch "
         f"{arguments.batch_size}; {arguments.warmup} warm-up steps, {arguments.steps} timed steps."),
        "",
        *render(results, arguments),
        "",
        (f"Input-wait target < {100 * INPUT_WAIT_TARGET:.0f} %: "
         f"{'met' if worst_wait < INPUT_WAIT_TARGET else 'NOT met'} (worst {100 * worst_wait:.1f} %)."),
    ])


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    machine = machine_description()
    device = device_name()
    print(f"device: {device}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="kcnn-gpu-bench-") as folder:
        dataset, source = make_input(arguments, Path(folder))
        results = {}
        for setting in arguments.settings:
            results[setting] = measure(setting, dataset, arguments)
            print(f"{setting}: {results[setting]['images_per_second']:,.0f} img/s, input wait "
                  f"{100 * results[setting]['input_wait']:.1f} % "
                  f"(warm-up {results[setting]['warmup_seconds']:.0f} s)", file=sys.stderr)
    print("\n".join(render(results, arguments)))
    if "float32" in results and "mixed+xla" in results:
        ratio = results["mixed+xla"]["images_per_second"] / results["float32"]["images_per_second"]
        print(f"mixed precision + XLA vs float32: {ratio:.2f}x")
    if arguments.record:
        record(results, arguments, device, source, machine, command_line(__file__, argv))
        print(f"appended to {RESULTS_PATH}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
