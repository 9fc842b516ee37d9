"""From-scratch training with augmentation: kcnn's tf.data engine against ImageDataGenerator.flow.

Trains the Keras book's ``cifar10_deep_net`` on generated CIFAR-10-shaped data (32x32x3
uint8, written as a ``cifar-10-python.tar.gz`` in a temporary folder; content does not
change the speed) two ways, with the book's augmentation (shifts of 10 %, horizontal flips):

  kcnn       what ``kcnn train --dataset cifar10 --augment`` runs:
             :func:`keras_cnn.train.stage_data.prepare_array_data` (tf.data: shuffle, batch, Keras
             random preprocessing layers, prefetch) feeding the architecture wrapped by
             ``with_input_scaling`` (it takes 0..255 pixels);
  reference  the book's way on Keras 3: ``ImageDataGenerator(width_shift_range=0.1,
             height_shift_range=0.1, horizontal_flip=True).flow(x / 255, y, batch_size=128)``
             fed to ``model.fit``, with the bare architecture (it takes 0..1 pixels).

Both compile RMSprop 1e-3 (:func:`keras_cnn.optimizers.make_optimizer`, the book's
recipe) with the same loss and Keras's default ``jit_compile``.  Every image is a training
image (no validation part).  After one warm-up epoch each (tracing), the two take turns for
``--rounds`` epochs each (``model.fit(epochs=1)`` per turn), so a burst of load from other
processes hits both alike; each turn also draws one epoch of augmented batches alone (the
input side's own speed, which bounds what a faster accelerator could get).  Prints
images/second per epoch and the ratios, and appends a dated section with the machine to
benchmarks/RESULTS.md (``--no-record`` skips).

    python benchmarks/scratch_training.py                  # 5,000 images, batch 128, 3 rounds
    python benchmarks/scratch_training.py --images 10000 --rounds 2
"""

from __future__ import annotations

import argparse
import io
import os
import pickle
import statistics
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from common import RESULTS_PATH, command_line, describe_machine, load_average, machine_description, publish

SECTION_TITLE = "From-scratch training with augmentation: `cifar10_deep_net`, kcnn vs ImageDataGenerator.flow"
ARCHITECTURE = "cifar10_deep_net"
CIFAR10_BATCHES = [f"data_batch_{index}" for index in range(1, 6)]


def write_cifar10_archive(folder: Path, train_images: int, test_images: int = 100, seed: int = 0) -> Path:
    """A ``cifar-10-python.tar.gz`` in the official layout holding ``train_images`` random images.

    The training images are spread over the five ``data_batch_N`` pickles (rows of 3072
    bytes: the red, green and blue planes), plus a ``test_batch`` of ``test_images``.
    """
    rng = np.random.default_rng(seed)
    sizes = [train_images // 5 + (1 if index < train_images % 5 else 0) for index in range(5)]
    payloads = {}
    for name, count in [*zip(CIFAR10_BATCHES, sizes), ("test_batch", test_images)]:
        data = rng.integers(0, 256, size=(count, 3072), dtype=np.uint8)
        labels = [int(value) for value in rng.integers(0, 10, size=count)]
        payloads[name] = pickle.dumps({b"data": data, b"labels": labels})
    path = Path(folder) / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for name, payload in payloads.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    return path


def compile_like_the_book(model):
    """RMSprop 1e-3 and the architecture's loss, as kcnn compiles it (Keras's default jit_compile)."""
    from keras_cnn.models.scratch import get_architecture
    from keras_cnn.optimizers import make_optimizer

    spec = get_architecture(ARCHITECTURE)
    model.compile(optimizer=make_optimizer(spec.optimizer, spec.learning_rate), loss=spec.loss(10),
                  metrics=["accuracy"])
    return model


def kcnn_setup(archive: Path, batch_size: int, seed: int):
    """(model, training dataset, images per epoch) as ``kcnn train --dataset cifar10 --augment`` builds them."""
    from keras_cnn.config import DataConfig
    from keras_cnn.models.scratch import build_architecture, get_architecture, with_input_scaling
    from keras_cnn.train.stage_data import prepare_array_data

    spec = get_architecture(ARCHITECTURE)
    data = prepare_array_data(DataConfig(dataset="cifar10", dataset_path=str(archive), augment=True,
                                         validation_split=0.0), spec.input_shape, batch_size, seed)
    model = compile_like_the_book(with_input_scaling(build_architecture(ARCHITECTURE, spec.input_shape, 10)))
    return model, data.train, data.sizes["train"]


def reference_setup(archive: Path, batch_size: int, seed: int):
    """(model, ImageDataGenerator.flow iterator, images per epoch): the Keras book's script on Keras 3."""
    from keras_cnn.data.augment import REFERENCE_CIFAR10_AUGMENTATION, legacy_image_data_generator
    from keras_cnn.data.datasets import load_dataset
    from keras_cnn.models.scratch import build_architecture, get_architecture

    spec = get_architecture(ARCHITECTURE)
    arrays = load_dataset("cifar10", archive)
    x_train = arrays.x_train.astype("float32") / 255.0
    generator = legacy_image_data_generator(REFERENCE_CIFAR10_AUGMENTATION)
    flow = generator.flow(x_train, arrays.y_train, batch_size=batch_size, seed=seed)
    model = compile_like_the_book(build_architecture(ARCHITECTURE, spec.input_shape, 10))
    return model, flow, len(x_train)


def epoch_runner(model, data) -> Callable[[], float]:
    """A function that trains one epoch of ``model`` on ``data`` and returns its seconds."""
    def epoch() -> float:
        start = time.perf_counter()
        model.fit(data, epochs=1, verbose=0, shuffle=False)
        return time.perf_counter() - start

    return epoch


def input_runner(data) -> Callable[[], float]:
    """A function that draws one epoch of augmented batches from ``data`` alone and returns its seconds.

    How fast the input side could feed a faster accelerator.  The training epochs include it:
    both prefetch (Keras 3 wraps ImageDataGenerator's iterator in ``from_generator`` with
    prefetch), but on a CPU the input's work competes with the step for the same cores.
    """
    def epoch() -> float:
        start = time.perf_counter()
        if hasattr(data, "__getitem__") and hasattr(data, "__len__"):  # ImageDataGenerator's iterator
            for index in range(len(data)):
                data[index]
        else:
            for _batch in data:
                pass
        return time.perf_counter() - start

    return epoch


def measure_training(archive: Path, batch_size: int = 128, rounds: int = 3, seed: int = 0) -> dict:
    """Images/second per measured epoch of each approach (after one warm-up epoch each).

    In each round each approach draws one epoch of input alone, then trains one epoch.
    Returns ``{"training": {name: [img/s, ...]}, "input": {name: [...]}, "images": N,
    "warmup": {name: seconds}}`` with names ``kcnn`` and ``reference``.
    """
    import keras

    keras.utils.set_random_seed(seed)
    setups = {"kcnn": kcnn_setup(archive, batch_size, seed), "reference": reference_setup(archive, batch_size, seed)}
    images = {name: count for name, (_model, _data, count) in setups.items()}
    if len(set(images.values())) != 1:
        raise RuntimeError(f"the two approaches see different numbers of images: {images}")
    count = images["kcnn"]
    training = {name: epoch_runner(model, data) for name, (model, data, _count) in setups.items()}
    drawing = {name: input_runner(data) for name, (_model, data, _count) in setups.items()}
    warmup = {name: epoch() for name, epoch in training.items()}
    rates: dict[str, dict[str, list[float]]] = {"training": {name: [] for name in setups},
                                                 "input": {name: [] for name in setups}}
    for _round in range(rounds):
        for name in setups:
            rates["input"][name].append(count / drawing[name]())
            rates["training"][name].append(count / training[name]())
    return {**rates, "images": count, "warmup": warmup}


def summarise(result: dict) -> dict[str, float]:
    """Mean and best training images/second of each approach, the ratios kcnn / reference,
    and the mean input-alone rates."""
    training = result["training"]
    summary = {}
    for name in ("kcnn", "reference"):
        summary[f"{name}_mean"] = statistics.fmean(training[name])
        summary[f"{name}_best"] = max(training[name])
        summary[f"{name}_input"] = statistics.fmean(result["input"][name])
    summary["ratio_mean"] = summary["kcnn_mean"] / summary["reference_mean"]
    summary["ratio_best"] = summary["kcnn_best"] / summary["reference_best"]
    summary["ratio_input"] = summary["kcnn_input"] / summary["reference_input"]
    return summary


def table_lines(result: dict, summary: dict[str, float]) -> list[str]:
    """The result as a Markdown table plus the ratios."""
    def rates(values):
        return ", ".join(f"{value:,.0f}" for value in values)

    titles = {"kcnn": "kcnn: `prepare_array_data` (tf.data + preprocessing layers)",
              "reference": "reference: `ImageDataGenerator.flow` + `fit`"}
    lines = ["| approach | training img/s per epoch | mean | best | warm-up epoch (s) | input alone, img/s |",
             "|---|---|---:|---:|---:|---:|"]
    for name, title in titles.items():
        lines.append(f"| {title} | {rates(result['training'][name])} | {summary[f'{name}_mean']:,.0f} | "
                     f"{summary[f'{name}_best']:,.0f} | {result['warmup'][name]:.1f} | "
                     f"{summary[f'{name}_input']:,.0f} |")
    return lines + [
        "",
        (f"Ratio kcnn / reference, training: **{summary['ratio_mean']:.2f}x** on the means "
         f"({summary['ratio_best']:.2f}x on the best epochs); input alone: {summary['ratio_input']:.2f}x."),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000, help="generated training images (32x32x3)")
    parser.add_argument("--batch-size", type=int, default=128, help="the book's batch size")
    parser.add_argument("--rounds", type=int, default=3, help="measured epochs of each approach, taking turns")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", type=Path, default=RESULTS_PATH, help="Markdown file to append to")
    parser.add_argument("--no-record", action="store_true", help="print only; do not touch RESULTS.md")
    parser.add_argument("--note", default="", help="a sentence added under the table")
    arguments = parser.parse_args(argv)
    if arguments.images < 5 or arguments.rounds < 1:
        parser.error(f"--images must be >= 5 and --rounds >= 1, received: {arguments.images}, {arguments.rounds}")

    machine = machine_description()
    with tempfile.TemporaryDirectory(prefix="kcnn-bench-scratch-") as work:
        archive = write_cifar10_archive(Path(work), arguments.images, seed=arguments.seed)
        result = measure_training(archive, arguments.batch_size, arguments.rounds, arguments.seed)
    summary = summarise(result)
    command = command_line(__file__, argv)
    lines = [
        f"`{command}`",
        "",
        describe_machine(machine, load_average()),
        "",
        (f"`{ARCHITECTURE}` from scratch, {result['images']:,} generated 32x32x3 training images, batch "
         f"{arguments.batch_size}, RMSprop 1e-3, augmentation: shifts 0.1 + horizontal flip; one warm-up "
         f"epoch each, then {arguments.rounds} epochs each, taking turns."),
        "",
        *table_lines(result, summary),
        "",
    ]
    publish(SECTION_TITLE, lines, arguments)
    return 0


if __name__ == "__main__":
    sys.exit(main())
