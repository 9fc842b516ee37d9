"""Images per second of ``kcnn predict`` on an exported SavedModel: batched vs one by one.

Times :func:`keras_cnn.predict.predict_files` (what ``kcnn predict`` runs: read the files,
send encoded bytes to ``serving_default``, which decodes, resizes and classifies in the
graph) on generated JPEG files, once with ``--batch-size`` N and once with 1, and appends a
section to ``benchmarks/RESULTS.md`` with the machine it ran on.

Without ``--model`` a small CNN (two conv blocks) is built, put into a run directory and
exported with ``kcnn export``'s API; pass ``--model EXPORT_DIR`` to time a real export.

    python benchmarks/predict.py                       # defaults: 256 images, 96x96 model
    python benchmarks/predict.py --model export/ --images 512 --batch-size 64
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from common import RESULTS_PATH, command_line, describe_machine, load_average, machine_description, publish

SECTION_TITLE = "kcnn predict throughput (exported SavedModel)"


def build_small_export(root: Path, image_size: int) -> Path:
    """A two-block CNN (untrained: speed does not depend on the weights) exported to root/export."""
    import keras

    from keras_cnn.config import DataConfig, ModelConfig, RunConfig
    from keras_cnn.export import export_run
    from keras_cnn.runs import RunDirectory

    run = RunDirectory(root / "run").create()
    keras.utils.set_random_seed(0)
    inputs = keras.Input((image_size, image_size, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    for filters in (16, 32):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x)).save(run.model_path)
    run.write_labels([f"class_{index}" for index in range(10)])
    run.write_config(RunConfig("benchmark", ModelConfig(name="small_cnn"),
                               DataConfig(image_size=(image_size, image_size), channels=3)).to_dict())
    export_run(run.root, root / "export")
    return root / "export"


def write_images(folder: Path, count: int, height: int, width: int) -> list[Path]:
    """``count`` JPEG files of smooth random content (camera-like size, not the model's)."""
    import numpy as np
    from PIL import Image

    generator = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    y, x = np.mgrid[0:height, 0:width]
    for index in range(count):
        phase = generator.uniform(0, 6.28, 3)
        pixels = np.stack([127 + 120 * np.sin(x / 17.0 + phase[0]), 127 + 120 * np.cos(y / 13.0 + phase[1]),
                           127 + 120 * np.sin((x + y) / 29.0 + phase[2])], axis=-1)
        pixels = np.clip(pixels + generator.normal(0, 10, pixels.shape), 0, 255).astype(np.uint8)
        path = folder / f"{index:05d}.jpg"
        Image.fromarray(pixels).save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def images_per_second(model, paths, batch_size: int, repeats: int) -> float:
    """Best of ``repeats`` timed passes over all files (after one warm-up pass that traces)."""
    from keras_cnn.predict import predict_files

    predict_files(model, paths[: max(batch_size, 1) * 2], batch_size=batch_size)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        results, failures = predict_files(model, paths, batch_size=batch_size)
        best = min(best, time.perf_counter() - start)
        if len(results) != len(paths) or failures:
            raise RuntimeError(f"predicted {len(results)} of {len(paths)} files; failures: {failures[:3]}")
    return len(paths) / best


def measure_predict(model_dir: str | Path | None, images: int, image_height: int, image_width: int,
                    model_size: int, batch_size: int, repeats: int) -> dict:
    """Time ``predict_files`` batched and one by one on generated JPEGs; returns the numbers.

    ``model_dir`` ``None`` builds and exports the small CNN in a temporary folder.  Keys:
    batched, single (images/s), load_seconds, model (name), input_size, classes.
    """
    from keras_cnn.predict import load_exported_model

    with tempfile.TemporaryDirectory(prefix="kcnn-bench-predict-") as scratch:
        scratch = Path(scratch)
        export_dir = Path(model_dir) if model_dir else build_small_export(scratch, model_size)
        paths = write_images(scratch / "images", images, image_height, image_width)
        start = time.perf_counter()
        model = load_exported_model(export_dir)
        load_seconds = time.perf_counter() - start
        batched = images_per_second(model, paths, batch_size, repeats)
        single = images_per_second(model, paths, 1, repeats)
    metadata = model.metadata
    return {
        "batched": batched, "single": single, "load_seconds": load_seconds,
        "model": metadata.get("base") or str(export_dir),
        "input_size": metadata.get("input", {}).get("image_size", "?"),
        "classes": len(model.labels),
    }


def section_lines(result: dict, arguments, machine: dict[str, str], load_after: str,
                  argv: list[str] | None) -> list[str]:
    """The RESULTS.md section: machine, model, table, load time and the command."""
    command = command_line(__file__, argv)
    return [
        describe_machine(machine, load_after),
        "",
        (f"Model: {result['model']}, input {result['input_size']}, {result['classes']} classes; "
         f"{arguments.images} JPEG files of {arguments.image_width}x{arguments.image_height} "
         f"(decoded and resized inside the SavedModel); best of {arguments.repeats} passes."),
        "",
        "| mode | images/s |",
        "|---|---|",
        f"| batch of {arguments.batch_size} | {result['batched']:,.0f} |",
        f"| one by one | {result['single']:,.0f} |",
        f"| ratio | {result['batched'] / result['single']:.1f}x |",
        "",
        f"Loading the SavedModel took {result['load_seconds']:.2f} s.",
        f"Command: `{command}`",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="Export directory to time (default: build a small CNN export).")
    parser.add_argument("--images", type=int, default=256, help="Number of JPEG files.")
    parser.add_argument("--image-height", type=int, default=240)
    parser.add_argument("--image-width", type=int, default=320)
    parser.add_argument("--model-size", type=int, default=96, help="Input size of the built model.")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--results", type=Path, default=RESULTS_PATH, help="Markdown file to append to.")
    parser.add_argument("--no-record", "--no-write", dest="no_record", action="store_true",
                        help="Print only; do not append to RESULTS.md.")
    arguments = parser.parse_args(argv)

    machine = machine_description()
    result = measure_predict(arguments.model, arguments.images, arguments.image_height, arguments.image_width,
                             arguments.model_size, arguments.batch_size, arguments.repeats)
    publish(SECTION_TITLE, section_lines(result, arguments, machine, load_average(), argv), arguments)
    return 0


if __name__ == "__main__":
    sys.exit(main())
