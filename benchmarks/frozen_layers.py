"""Frozen layers in inference mode: cached vs uncached fine-tuning, and dropout in the unfrozen layers.

Two measurements, both through kcnn's own training functions (what ``kcnn transfer`` and
``kcnn finetune`` run):

1. **Cached equals uncached** (EfficientNet-B0 at 224, the base's default ``block7a``): photo crops
   of scikit-learn's two sample photos (``load_sample_images``: a temple and a flower, two
   classes), a base whose BatchNorm statistics come from those crops (so its answers depend on
   the image; no ImageNet weights can be downloaded here), stage 1 on cached features, then
   ``finetune --unfreeze-from block7a --optimizer sgd --learning-rate 0.01`` twice with the same
   seed: on the cached frozen layers (the default) and through the whole model
   (``--no-cache-frozen``).  Stage 1 trains the head only a little (1 epoch at 1e-4), so the
   fine-tuned epochs beat it and the saved best model is a fine-tuned one.  Reported: the
   training and validation loss of each epoch (relative differences), the largest difference
   between the two saved models' weights and how far they moved from stage 1, and how often a
   frozen layer of the base was called with ``training=True`` during the uncached run.

2. **--base-dropout on or off** (the default is chosen from this): a real transfer task on
   scikit-learn's digits (8x8 scans, upsampled to 32x32 RGB): an EfficientNet-B0 trained from
   scratch on the digits 0-4 is the pretrained base; the task is the digits 5-9, split by kcnn's
   SHA-1 rule.  Stage 1 (head, 5 epochs), then fine-tuning from ``block6a`` and from ``all``
   with the base's dropout and stochastic depth on and off, several seeds: test accuracy and
   validation loss.

scikit-learn is needed for this script only.

    python benchmarks/frozen_layers.py                       # both parts
    python benchmarks/frozen_layers.py --parts dropout --seeds 3
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from common import (
    add_recording_arguments,
    command_line,
    describe_machine,
    load_average,
    machine_description,
    publish,
)

SECTION_TITLE = "Frozen layers in inference mode: cached vs uncached fine-tuning, and --base-dropout"


def write_photo_crops(folder: Path, per_class: int, seed: int = 0) -> Path:
    """Class folders of random crops (150-400 px, some mirrored) of scikit-learn's two sample photos."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images()
    rng = np.random.default_rng(seed)
    for name, photo in zip(("temple", "flower"), photos.images):
        target = folder / name
        target.mkdir(parents=True, exist_ok=True)
        height, width = photo.shape[:2]
        for index in range(per_class):
            side = int(rng.integers(150, min(height, width, 400)))
            top, left = int(rng.integers(0, height - side)), int(rng.integers(0, width - side))
            crop = Image.fromarray(photo[top:top + side, left:left + side])
            if rng.random() < 0.5:
                crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
            crop.save(target / f"{name}_{index:03d}.jpg", quality=90)
    return folder


def informative_base_weights(base: str, image_size: int, images: np.ndarray, path: Path) -> str:
    """Weights of ``base`` with random kernels and BatchNorm statistics of ``images``."""
    import keras

    from keras_cnn.models.bases import build_base
    from keras_cnn.models.weights import set_batch_norm_statistics

    keras.utils.set_random_seed(0)
    model = build_base(base, image_size, weights="none")
    set_batch_norm_statistics(model, images)
    model.save_weights(path)
    return str(path)


def folder_images(folder: Path, image_size: int, count: int) -> np.ndarray:
    from keras_cnn.data.images import load_image

    files = sorted(folder.rglob("*.jpg"))
    files = files[::max(1, len(files) // count)][:count]
    return np.stack([np.asarray(load_image(file.read_bytes(), (image_size, image_size), 3)) for file in files]
                    ).astype("float32")


class DropoutSpy:
    """Counts, per Dropout layer, the calls made with ``training=True`` (installed on the class)."""

    def __init__(self):
        import keras

        self.calls: dict[str, int] = {}
        self._original = keras.layers.Dropout.call
        spy = self

        def call(layer, inputs, training=False):
            if training is True:
                spy.calls[layer.name] = spy.calls.get(layer.name, 0) + 1
            return spy._original(layer, inputs, training=training)

        keras.layers.Dropout.call = call

    def remove(self):
        import keras

        keras.layers.Dropout.call = self._original


def history(run: Path, stage: str) -> list[dict]:
    import csv

    with open(run / "history.csv", newline="") as handle:
        return [row for row in csv.DictReader(handle) if row["stage"] == stage]


def measure_equality(work: Path, per_class: int, epochs: int) -> list[str]:
    import keras

    from keras_cnn.config import DataConfig, FineTuneConfig, ModelConfig, RunConfig, TrainingConfig
    from keras_cnn.models.loading import load_model
    from keras_cnn.models.transfer import get_base_layer
    from keras_cnn.train.two_stage import fine_tune_run, train_head

    images = write_photo_crops(work / "photos", per_class)
    weights = informative_base_weights("efficientnet_b0", 224, folder_images(images, 224, 32),
                                       work / "base.weights.h5")
    stage1 = work / "stage1"
    print("stage 1 (cached features) ...", file=sys.stderr, flush=True)
    train_head(RunConfig(command="transfer", model=ModelConfig(kind="transfer", name="efficientnet_b0", weights=weights),
                         data=DataConfig(images=str(images), image_size=(224, 224)),
                         training=TrainingConfig(epochs=1, batch_size=16, learning_rate=1e-4, seed=3)), stage1)
    runs, spies = {}, {}
    for cached in (True, False):
        name = "cached" if cached else "uncached"
        print(f"fine-tuning {name} ...", file=sys.stderr, flush=True)
        spy = DropoutSpy()
        try:
            fine_tune_run(FineTuneConfig(unfreeze_from="block7a", cache_frozen=cached,
                                         training=TrainingConfig(epochs=epochs, optimizer="sgd", learning_rate=0.01)),
                          stage1, work / name)
        finally:
            spy.remove()
        runs[name], spies[name] = work / name, spy.calls
    rows = {name: history(run, "finetune") for name, run in runs.items()}
    losses = {name: [(float(row["loss"]), float(row["val_loss"])) for row in rows[name]] for name in runs}
    models = {name: load_model(run / "model.keras") for name, run in runs.items()}
    weight_difference = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                            for a, b in zip(models["cached"].weights, models["uncached"].weights))
    start = load_model(stage1 / "model.keras")
    moved = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                for a, b in zip(models["uncached"].weights, start.weights))
    base = get_base_layer(models["uncached"])
    frozen = {layer.name for layer in base.layers if not layer.trainable}
    frozen_calls = sum(count for layer, count in spies["uncached"].items() if layer in frozen)
    keras.backend.clear_session()
    lines = [
        f"### 1. Cached equals uncached: EfficientNet-B0 at 224 from `block7a`, SGD 0.01, {epochs} epochs, seed 3",
        "",
        (f"{2 * per_class} crops of scikit-learn's two sample photos in two class folders, split by kcnn's rule; "
         "BatchNorm statistics of the base from 32 of them; stage 1: 1 epoch at 1e-4 on cached features."),
        "",
        "| epoch | loss, cached | loss, uncached | val loss, cached | val loss, uncached | largest relative difference |",
        "|---:|---:|---:|---:|---:|---:|",
        *[f"| {index} | {cached[0]:.6f} | {uncached[0]:.6f} | {cached[1]:.6f} | {uncached[1]:.6f} | "
          f"{max(abs(a - b) / abs(b) for a, b in zip(cached, uncached)):.2e} |"
          for index, (cached, uncached) in enumerate(zip(losses["cached"], losses["uncached"]), start=1)],
        "",
        (f"Largest weight difference between the two fine-tuned models: {weight_difference:.2e} (the weights moved "
         f"by up to {moved:.2e} from stage 1).  Calls of a frozen base layer with training=True during the "
         f"uncached fine-tuning: {frozen_calls}."),
        "",
    ]
    return lines


def write_digits(folder: Path, digits_wanted: range) -> Path:
    """The scikit-learn digits in ``digits_wanted`` as 32x32 RGB PNG class folders."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for index, (image, label) in enumerate(zip(digits.images, digits.target)):
        if label not in digits_wanted:
            continue
        pixels = np.clip(np.round(image * (255.0 / 16.0)), 0, 255).astype(np.uint8)
        picture = Image.fromarray(pixels, "L").resize((32, 32), Image.BILINEAR).convert("RGB")
        target = folder / str(label)
        target.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        picture.save(buffer, "PNG")
        (target / f"{index:04d}.png").write_bytes(buffer.getvalue())
    return folder


def pretrained_digit_base(work: Path, epochs: int) -> str:
    """EfficientNet-B0 (32 px) trained from scratch on the digits 0-4; returns its base weights file."""
    import keras

    from keras_cnn.data.images import load_image
    from keras_cnn.models.bases import build_base

    folder = write_digits(work / "source", range(5))
    files = sorted(folder.rglob("*.png"))
    images = np.stack([np.asarray(load_image(file.read_bytes(), (32, 32), 3)) for file in files]).astype("float32")
    labels = np.array([int(file.parent.name) for file in files])
    keras.utils.set_random_seed(0)
    base = build_base("efficientnet_b0", 32, weights="none")
    outputs = keras.layers.Dense(5, activation="softmax")(keras.layers.GlobalAveragePooling2D()(base.output))
    model = keras.Model(base.input, outputs)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    print(f"pre-training the base on digits 0-4 ({len(files)} images, {epochs} epochs) ...", file=sys.stderr,
          flush=True)
    fit = model.fit(images, labels, epochs=epochs, batch_size=32, verbose=0, shuffle=True)
    print(f"pre-training accuracy {fit.history['accuracy'][-1]:.3f}", file=sys.stderr, flush=True)
    path = work / "digits04.weights.h5"
    base.save_weights(path)
    return str(path)


def measure_base_dropout(work: Path, seeds: int, pretrain_epochs: int, epochs: int, points: list[str]) -> list[str]:
    import keras

    from keras_cnn.config import DataConfig, FineTuneConfig, ModelConfig, RunConfig, TrainingConfig
    from keras_cnn.train.two_stage import fine_tune_run, train_head

    weights = pretrained_digit_base(work, pretrain_epochs)
    images = write_digits(work / "target", range(5, 10))
    results: dict[tuple[str, bool], list[tuple[float, float]]] = {}
    for seed in range(seeds):
        stage1 = work / f"stage1-{seed}"
        train_head(RunConfig(command="transfer",
                             model=ModelConfig(kind="transfer", name="efficientnet_b0", weights=weights),
                             data=DataConfig(images=str(images), image_size=(32, 32)),
                             training=TrainingConfig(epochs=5, batch_size=32, seed=seed)), stage1)
        for point in points:
            for on in (False, True):
                print(f"seed {seed}: fine-tuning from {point}, base dropout {'on' if on else 'off'} ...",
                      file=sys.stderr, flush=True)
                summary = fine_tune_run(FineTuneConfig(unfreeze_from=point, base_dropout=on,
                                                       training=TrainingConfig(epochs=epochs, learning_rate=1e-4)),
                                        stage1,
                                        work / f"{point}-{on}-{seed}")
                results.setdefault((point, on), []).append((summary["test_accuracy"], summary["val_loss"]))
                keras.backend.clear_session()
    lines = [
        (f"### 2. --base-dropout: digits 5-9 on an EfficientNet-B0 pre-trained on digits 0-4 ({pretrain_epochs} "
         f"epochs), 32 px; stage 1: 5 epochs; fine-tuning: {epochs} epochs, Adam 1e-4; {seeds} seed(s)"),
        "",
        "| unfreeze from | base dropout | test accuracy (each seed) | mean | last val loss (mean) |",
        "|---|---|---|---:|---:|",
    ]
    for (point, on), rows in results.items():
        accuracies = [accuracy for accuracy, _ in rows]
        lines.append(f"| `{point}` | {'on' if on else 'off'} | {', '.join(f'{value:.4f}' for value in accuracies)} | "
                     f"{statistics.fmean(accuracies):.4f} | {statistics.fmean(loss for _, loss in rows):.4f} |")
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", default=["equality", "dropout"], choices=["equality", "dropout"])
    parser.add_argument("--photos", type=int, default=96, help="crops per photo (part 1)")
    parser.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs of part 1")
    parser.add_argument("--seeds", type=int, default=2, help="seeds of part 2")
    parser.add_argument("--pretrain-epochs", type=int, default=15, help="epochs of the digits 0-4 base (part 2)")
    parser.add_argument("--finetune-epochs", type=int, default=5, help="fine-tuning epochs of part 2")
    parser.add_argument("--unfreeze", nargs="+", default=["block6a", "all"], help="unfreeze points of part 2")
    add_recording_arguments(parser)
    arguments = parser.parse_args(argv)

    machine = machine_description()
    lines = [f"`{command_line(__file__, argv)}`", "", describe_machine(machine), ""]
    with tempfile.TemporaryDirectory(prefix="kcnn-bench-frozen-") as work:
        if "equality" in arguments.parts:
            lines += measure_equality(Path(work) / "equality", arguments.photos, arguments.epochs)
        if "dropout" in arguments.parts:
            lines += measure_base_dropout(Path(work) / "dropout", arguments.seeds, arguments.pretrain_epochs,
                                          arguments.finetune_epochs, arguments.unfreeze)
    lines[2] = describe_machine(machine, load_average())
    publish(SECTION_TITLE, lines, arguments)
    return 0


if __name__ == "__main__":
    sys.exit(main())
