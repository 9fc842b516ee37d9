"""Images per second of ``kcnn predict`` on a folder of JPEGs, against what the machine allows.

Times :func:`keras_cnn.predict.predict_files` (what ``kcnn predict DIR`` runs: a tf.data
pipeline decodes the files in parallel, a batch ahead, while the exported graph classifies
the batch before) on generated photo-like JPEGs, and in the same rounds:

- the model alone: the export's ``serving_images_uint8`` signature on decoded batches held in
  memory (all cores);
- the decoding alone: the same tf.data pipeline without the model (all cores);
- the combined limit: 1 / (model seconds per image + decode seconds per image), what the
  two allow together when they share the cores;
- a plain PIL loop: open, convert to RGB and resize each file with Pillow (bilinear, no
  ``draft``), then the same exported graph per batch;
- the export's own graph fed encoded bytes per batch (``serving_default``, which decodes
  inside the graph; how ``kcnn predict`` ran before, and still runs with ``--tta``).

Each is the median of ``--repeats`` rounds, taking turns.  Start-up (loading the SavedModel,
the first batch that traces the pipeline) is reported apart.  Without ``--model`` an
EfficientNet-B0 (``--base``, random weights: speed does not depend on them) is put into a run
folder and exported with ``kcnn export``'s API.  Appends a section to
``benchmarks/RESULTS.md`` with the machine it ran on.

    python benchmarks/predict.py                                  # EfficientNet-B0 224, 1600x1200 JPEGs
    python benchmarks/predict.py --model export/ --images 256 --batch-size 64
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from common import (RESULTS_PATH, command_line, describe_machine, load_average, machine_description, publish,
                    ratio_verdict)

SECTION_TITLE = "kcnn predict throughput (exported SavedModel)"
SHARE_TARGET = 0.9      # of the combined decode + model limit
PIL_TARGET = 2.0        # times the plain PIL loop


def build_export(root: Path, base: str, image_size: int, classes: int = 10) -> Path:
    """A run with ``base`` (a transfer base, random weights; or ``small_cnn``: two conv blocks) exported
    to root/export."""
    import keras

    from keras_cnn.config import DataConfig, ModelConfig, RunConfig
    from keras_cnn.export import export_run
    from keras_cnn.models.factory import create_model
    from keras_cnn.runs import RunDirectory

    run = RunDirectory(root / "run").create()
    keras.utils.set_random_seed(0)
    if base == "small_cnn":
        inputs = keras.Input((image_size, image_size, 3))
        x = keras.layers.Rescaling(1 / 255)(inputs)
        for filters in (16, 32):
            x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
            x = keras.layers.MaxPooling2D()(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        model = keras.Model(inputs, keras.layers.Dense(classes, activation="softmax")(x))
        kind = "scratch"
    else:
        model = create_model(base, classes, image_size=image_size, weights="none")
        kind = "transfer"
    model.save(run.model_path)
    run.write_labels([f"class_{index}" for index in range(classes)])
    run.write_config(RunConfig("benchmark", ModelConfig(kind=kind, name=base),
                               DataConfig(image_size=(image_size, image_size), channels=3)).to_dict())
    export_run(run.root, root / "export", verify=False)
    return root / "export"


def write_images(folder: Path, count: int, height: int, width: int) -> list[Path]:
    """``count`` JPEG files of smooth random content with grain (camera-like size, not the model's)."""
    import numpy as np
    from PIL import Image

    generator = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    for index in range(count):
        phase = generator.uniform(0, 6.28, 3)
        pixels = np.stack([127 + 120 * np.sin(x / 17.0 + phase[0]), 127 + 120 * np.cos(y / 13.0 + phase[1]),
                           127 + 120 * np.sin((x + y) / 29.0 + phase[2])], axis=-1)
        pixels = np.clip(pixels + generator.normal(0, 10, pixels.shape), 0, 255).astype(np.uint8)
        path = folder / f"{index:05d}.jpg"
        Image.fromarray(pixels).save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def decode_dataset(model, paths: list[Path], batch_size: int):
    """The decoding ``kcnn predict`` does, alone: the same tf.data pipeline, no model."""
    import tensorflow as tf

    from keras_cnn.data.images import load_image

    image_size, channels, resize_mode = model.input_description()
    dataset = tf.data.Dataset.from_tensor_slices([os.fspath(path) for path in paths])
    dataset = dataset.map(lambda path: load_image(tf.io.read_file(path), image_size, channels, resize_mode),
                          num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def pil_loop(model, paths: list[Path], batch_size: int) -> int:
    """Open, convert and resize each file with Pillow, then the exported graph per batch; images classified."""
    import numpy as np
    import tensorflow as tf
    from PIL import Image

    from keras_cnn.export_layout import IMAGES_UINT8_SIGNATURE

    (height, width), _channels, _mode = model.input_description()
    classify = model.saved_model.signatures[IMAGES_UINT8_SIGNATURE]
    count = 0
    for start in range(0, len(paths), batch_size):
        batch = []
        for path in paths[start:start + batch_size]:
            with Image.open(path) as image:
                batch.append(np.asarray(image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)))
        outputs = classify(images=tf.constant(np.stack(batch)))
        count += int(outputs["class_index"].shape[0])
    return count


def graph_decode(model, paths: list[Path], batch_size: int) -> int:
    """Encoded bytes per batch to the export's ``serving_default`` (it decodes inside the graph)."""
    count = 0
    for start in range(0, len(paths), batch_size):
        outputs = model.classify([path.read_bytes() for path in paths[start:start + batch_size]])
        count += len(outputs["class_index"])
    return count


def median_rates(passes: dict[str, Callable[[], int]], repeats: int) -> dict[str, float]:
    """Images per second of each pass: the median of ``repeats`` rounds, the passes taking turns."""
    rates: dict[str, list[float]] = {name: [] for name in passes}
    for _round in range(repeats):
        for name, one_pass in passes.items():
            start = time.perf_counter()
            count = one_pass()
            rates[name].append(count / (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in rates.items()}


def measure_predict(model_dir: str | Path | None, base: str, images: int, image_height: int, image_width: int,
                    model_size: int, batch_size: int, repeats: int) -> dict:
    """Time kcnn predict, the model alone, the decode alone, the PIL loop and the graph's own decode."""
    import numpy as np

    from keras_cnn.export_layout import IMAGES_UINT8_SIGNATURE
    from keras_cnn.predict import load_exported_model, predict_files

    with tempfile.TemporaryDirectory(prefix="kcnn-bench-predict-") as scratch:
        scratch = Path(scratch)
        export_dir = Path(model_dir) if model_dir else build_export(scratch, base, model_size)
        paths = write_images(scratch / "images", images, image_height, image_width)
        start = time.perf_counter()
        model = load_exported_model(export_dir)
        load_seconds = time.perf_counter() - start
        if not model.decodes_in_pipeline():
            raise SystemExit(f"{export_dir} does not record its resize filter or lacks {IMAGES_UINT8_SIGNATURE}: "
                             "export it again with this kcnn")
        start = time.perf_counter()
        predict_files(model, paths[:batch_size], batch_size=batch_size)   # traces the pipeline and the graph
        first_batch_seconds = time.perf_counter() - start

        decoded = decode_dataset(model, paths, batch_size)
        batches = [batch for batch in decoded]     # the model alone classifies decoded pixels held in memory
        classify = model.saved_model.signatures[IMAGES_UINT8_SIGNATURE]

        def model_alone() -> int:
            return sum(int(classify(images=batch)["class_index"].shape[0]) for batch in batches)

        def kcnn_predict() -> int:
            results, failures = predict_files(model, [scratch / "images"], batch_size=batch_size)
            if failures or len(results) != len(paths):
                raise RuntimeError(f"predicted {len(results)} of {len(paths)} files; failures: {failures[:3]}")
            return len(results)

        for warm_up in (model_alone, lambda: pil_loop(model, paths[:batch_size], batch_size),
                        lambda: graph_decode(model, paths[:batch_size], batch_size)):
            warm_up()
        rates = median_rates({
            "predict": kcnn_predict,
            "model_alone": model_alone,
            "decode_alone": lambda: sum(int(batch.shape[0]) for batch in decoded),
            "pil": lambda: pil_loop(model, paths, batch_size),
            "graph": lambda: graph_decode(model, paths, batch_size),
        }, repeats)
        agreement = float(np.abs(
            np.array([record["probabilities"] for record in predict_files(model, paths[:batch_size],
                                                                          batch_size=batch_size)[0]])
            - model.classify([path.read_bytes() for path in paths[:batch_size]])["probabilities"]).max())
    rates["combined"] = 1.0 / (1.0 / rates["model_alone"] + 1.0 / rates["decode_alone"])
    metadata = model.metadata
    return {**rates, "load_seconds": load_seconds, "first_batch_seconds": first_batch_seconds,
            "agreement": agreement, "model": metadata.get("base") or str(export_dir),
            "input_size": metadata.get("input", {}).get("image_size", "?"),
            "resize_filter": metadata.get("input", {}).get("resize_filter", "?"), "classes": len(model.labels)}


def targets(result: dict) -> list[tuple[str, float, float, str]]:
    """(what, measured, target, unit) of the two targets."""
    return [("share of the combined decode + model limit", result["predict"] / result["combined"], SHARE_TARGET, "%"),
            ("ratio to the PIL loop", result["predict"] / result["pil"], PIL_TARGET, "x")]


def formatted(value: float, unit: str) -> str:
    return f"{value:.0%}" if unit == "%" else f"{value:.2f}x"


def section_lines(result: dict, arguments, machine: dict[str, str], load_after: str,
                  argv: list[str] | None) -> list[str]:
    """The RESULTS.md section: machine, model, tables, start-up and the command."""
    command = command_line(__file__, argv)
    predict = result["predict"]
    rows = [
        ("`kcnn predict` (tf.data decode in parallel with the model)", predict),
        ("the model alone (decoded batches in memory, `serving_images_uint8`)", result["model_alone"]),
        ("the decoding alone (the same tf.data pipeline)", result["decode_alone"]),
        ("combined limit: 1 / (model s/img + decode s/img)", result["combined"]),
        ("PIL loop: open, convert, resize (bilinear, no draft), graph per batch", result["pil"]),
        ("encoded bytes to `serving_default` per batch (decoded inside the graph)", result["graph"]),
    ]
    return [
        describe_machine(machine, load_after),
        "",
        (f"Model: {result['model']}, input {result['input_size']}, {result['classes']} classes, resize filter "
         f"{result['resize_filter']}; {arguments.images} JPEG files of {arguments.image_width}x"
         f"{arguments.image_height}; batches of {arguments.batch_size}; median of {arguments.repeats} rounds, "
         "the passes taking turns."),
        "",
        "| pass | images/s | `kcnn predict` / this |",
        "|---|---:|---:|",
        *[f"| {title} | {rate:,.1f} | {predict / rate:.2f}x |" for title, rate in rows],
        "",
        "| target | measured | target | verdict |",
        "|---|---:|---:|---|",
        *[f"| {what} | {formatted(value, unit)} | >= {formatted(target, unit)} | {ratio_verdict(value, target)} |"
          for what, value, target, unit in targets(result)],
        "",
        (f"Start-up, apart from the rates: loading the SavedModel {result['load_seconds']:.2f} s, the first batch "
         f"(tracing the pipeline) {result['first_batch_seconds']:.2f} s.  Largest difference between the "
         f"probabilities of `kcnn predict` and of `serving_default` on the same files: {result['agreement']:.1e}."),
        f"Command: `{command}`",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="Export directory to time (default: export --base with random weights).")
    parser.add_argument("--base", default="efficientnet_b0",
                        help="Transfer base of the built export, or small_cnn (two conv blocks).")
    parser.add_argument("--images", type=int, default=128, help="Number of JPEG files.")
    parser.add_argument("--image-height", type=int, default=1200)
    parser.add_argument("--image-width", type=int, default=1600)
    parser.add_argument("--model-size", type=int, default=224, help="Input size of the built model.")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--results", type=Path, default=RESULTS_PATH, help="Markdown file to append to.")
    parser.add_argument("--no-record", "--no-write", dest="no_record", action="store_true",
                        help="Print only; do not append to RESULTS.md.")
    parser.add_argument("--note", default="", help="a sentence added under the tables")
    arguments = parser.parse_args(argv)

    machine = machine_description()
    result = measure_predict(arguments.model, arguments.base, arguments.images, arguments.image_height,
                             arguments.image_width, arguments.model_size, arguments.batch_size, arguments.repeats)
    for what, value, target, unit in targets(result):
        print(f"target: {what}: {formatted(value, unit)} ({ratio_verdict(value, target)} >= "
              f"{formatted(target, unit)})")
    publish(SECTION_TITLE, section_lines(result, arguments, machine, load_average(), argv), arguments)
    return 0


if __name__ == "__main__":
    sys.exit(main())
