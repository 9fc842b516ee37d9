"""Fine-tuning epochs on cached frozen layers vs through the whole model, and checkpoint costs.

For each base (EfficientNet-B0 at 224 unfreezing ``block7a``; InceptionV3 at 299 unfreezing
``mixed8``, the Keras guide's recipe), with random weights (``weights=None``: no download is
possible here, and speed does not depend on the weights' values), on random images held in
memory (as the pipeline's memory cache holds them):

  uncached  ``model.fit`` of the whole model, the base unfrozen from the boundary on (what
            ``kcnn finetune --no-cache-frozen`` trains): every epoch runs the frozen layers too;
  cached    kcnn's own pieces of ``kcnn finetune`` (the default without augmentation):
            :func:`keras_cnn.models.boundary.cut_at_frozen_boundary` cuts the model, the
            bottom runs once over the images (:func:`keras_cnn.train.features.extract_features`,
            timed as "extraction"), and the top trains on the cached boundary tensors.

Epoch times are the median of the epochs after the first (which traces the step): a cached
epoch lasts well under a second, so one hiccup of a shared machine would move a mean.  The
cached run has at least 5 such epochs (they are cheap).  Use enough images that an epoch's
work outweighs its fixed cost (iterator, callbacks): with very few, both runs measure mostly
that cost.  Also printed: the boundary layer and the cache's bytes per image.

Checkpoint cost (the overhead of a cached epoch beyond its training step): a cached stage
(stage-1 head on pooled features, or the fine-tune top on boundary tensors) used to save the
whole model after every improving epoch; it now saves the trained part's weights only and
the whole model once at the end (``StageCheckpoint`` in ``keras_cnn.train.callbacks``).  Both saves are
timed (best of 3) on the same model.

    python benchmarks/finetune_cache.py                       # both bases, 128 images each
    python benchmarks/finetune_cache.py --images 32 --bases efficientnet_b0
"""

from __future__ import annotations

import argparse
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
    steady_epoch_seconds,
)

SECTION_TITLE = "Fine-tuning on cached frozen layers vs through the whole model"
TARGET_RATIO = 5.0
CACHED_EPOCHS = 6  # the first traces; the median of the other five is reported
CASES = {  # base -> (image size, unfreeze point)
    "efficientnet_b0": (224, "block7a"),
    "inception_v3": (299, "mixed8"),
}


class EpochTimes:
    """A Keras callback factory: wall seconds of every epoch."""

    def __init__(self):
        import keras

        times = self.seconds = []

        class Callback(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.started = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                times.append(time.perf_counter() - self.started)

        self.callback = Callback()


def best_of(function, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def measure_base(base: str, image_size: int, unfreeze: str, count: int, batch_size: int, epochs: int,
                 work: Path) -> dict:
    """Epoch times cached vs uncached and the checkpoint costs for one base."""
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_cnn.models.boundary import cut_at_frozen_boundary
    from keras_cnn.models.transfer import build_transfer_model, cut_at_features, unfreeze_from
    from keras_cnn.train.features import compiled_forward, extract_features, feature_dataset

    keras.utils.set_random_seed(0)
    classes = 3
    model = build_transfer_model(base, classes, image_size=image_size, weights=None, seed=0)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (count, image_size, image_size, 3)).astype("float32")
    labels = rng.integers(0, classes, count).astype("int32")

    # Stage-1 checkpoint costs, measured on the frozen model: whole model vs head weights.
    _, head = cut_at_features(model)
    for part in (model, head):
        part.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    stage1_whole = best_of(lambda: model.save(work / "whole.keras"))
    stage1_part = best_of(lambda: head.save_weights(work / "head.weights.h5"))

    unfreeze_from(model, unfreeze)
    cut = cut_at_frozen_boundary(model)
    optimizer = lambda: keras.optimizers.Adam(1e-5)  # noqa: E731 - one fresh optimizer per fit

    # Uncached: the whole model on the images.
    model.compile(optimizer=optimizer(), loss="sparse_categorical_crossentropy")
    images_dataset = tf.data.Dataset.from_tensor_slices((images, labels)).shuffle(count, seed=0).batch(batch_size)
    uncached = EpochTimes()
    print(f"{base}: uncached fine-tuning ...", file=sys.stderr, flush=True)
    model.fit(images_dataset, epochs=epochs, verbose=0, callbacks=[uncached.callback])

    # Cached: the bottom once, then the top on the boundary tensors.
    print(f"{base}: cached fine-tuning ...", file=sys.stderr, flush=True)
    ordered = tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size)
    start = time.perf_counter()
    boundary, boundary_labels = extract_features(cut.bottom, ordered, count, work / "boundary.npy",
                                                 f"{base} boundary", forward=compiled_forward(cut.bottom))
    extraction = time.perf_counter() - start
    cut.top.compile(optimizer=optimizer(), loss="sparse_categorical_crossentropy")
    cached = EpochTimes()
    cut.top.fit(feature_dataset(boundary, boundary_labels, batch_size, shuffle=True, seed=0),
                  epochs=max(epochs + 1, CACHED_EPOCHS), verbose=0, callbacks=[cached.callback])

    # Stage-2 checkpoint costs: whole model (with the top's optimizer state) vs the top's weights.
    stage2_whole = best_of(lambda: model.save(work / "whole.keras"))
    stage2_part = best_of(lambda: cut.top.save_weights(work / "top.weights.h5"))
    uncached_epoch = steady_epoch_seconds(uncached.seconds, "median")
    cached_epoch = steady_epoch_seconds(cached.seconds, "median")
    return {
        "base": base, "image_size": image_size, "unfreeze": unfreeze, "boundary_layer": cut.boundary_layer,
        "boundary_shape": cut.boundary_shape, "bytes_per_image": cut.bytes_per_image,
        "uncached_epochs": uncached.seconds, "cached_epochs": cached.seconds, "extraction": extraction,
        "uncached": uncached_epoch, "cached": cached_epoch, "ratio": uncached_epoch / cached_epoch,
        "stage1_whole_save": stage1_whole, "stage1_part_save": stage1_part,
        "stage2_whole_save": stage2_whole, "stage2_part_save": stage2_part,
        "trainable_params": int(sum(np.prod(weight.shape) for weight in model.trainable_weights)),
        "image_bytes": image_size * image_size * 3,
    }


def result_lines(results: list[dict], count: int, batch_size: int) -> list[str]:
    lines = [
        (f"{count} random images per base held in memory, batch {batch_size}, Adam; epoch time = median of the "
         "epochs after the first (all epochs listed below the table)."),
        "",
        ("| base, unfreeze point | boundary tensor (per image) | cache bytes / image (uint8 image) | "
         "uncached epoch (s) | extraction (s) | cached epoch (s) | ratio | target |"),
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        shape = "x".join(str(size) for size in result["boundary_shape"])
        verdict = "met" if result["ratio"] >= TARGET_RATIO else "**missed**"
        lines.append(
            f"| {result['base']} at {result['image_size']}, `{result['unfreeze']}` | {result['boundary_layer']} "
            f"{shape} | {result['bytes_per_image']:,} ({result['image_bytes']:,}) | {result['uncached']:.2f} | "
            f"{result['extraction']:.2f} | {result['cached']:.3f} | **{result['ratio']:.1f}x** | "
            f">= {TARGET_RATIO:.0f}x: {verdict} |")
    lines.append("")
    for result in results:
        lines.append(f"All epochs of {result['base']} (s): uncached "
                     + ", ".join(f"{seconds:.2f}" for seconds in result["uncached_epochs"]) + "; cached "
                     + ", ".join(f"{seconds:.3f}" for seconds in result["cached_epochs"]) + ".")
    lines += [
        "",
        ("Checkpoint cost of one improving cached epoch (best of 3), before (whole model) and after (trained "
         "part only; the whole model is saved once at the end of the stage):"),
        "",
        "| base | stage 1 head: whole model → head weights (s) | fine-tune top: whole model → top weights (s) |",
        "|---|---:|---:|",
    ]
    for result in results:
        lines.append(f"| {result['base']} | {result['stage1_whole_save']:.3f} → {result['stage1_part_save']:.3f} | "
                     f"{result['stage2_whole_save']:.3f} → {result['stage2_part_save']:.3f} |")
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--images", type=int, default=128, help="images per base")
    parser.add_argument("--image-size", type=int, default=None, help="override every base's input size")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3,
                        help=f"uncached epochs (>= 2; the cached run has one more, at least {CACHED_EPOCHS})")
    add_recording_arguments(parser)
    arguments = parser.parse_args(argv)
    if arguments.epochs < 2:
        parser.error(f"--epochs must be at least 2 (the first epoch traces), received: {arguments.epochs}")

    machine = machine_description()
    results = []
    with tempfile.TemporaryDirectory(prefix="kcnn-bench-finetune-") as work:
        for base in arguments.bases:
            image_size, unfreeze = CASES[base]
            results.append(measure_base(base, arguments.image_size or image_size, unfreeze, arguments.images,
                                        arguments.batch_size, arguments.epochs, Path(work)))
    lines = [f"`{command_line(__file__, argv)}`", "", describe_machine(machine, load_average()), "",
             *result_lines(results, arguments.images, arguments.batch_size)]
    publish(SECTION_TITLE, lines, arguments)
    return 0


if __name__ == "__main__":
    sys.exit(main())
