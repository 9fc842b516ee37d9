"""Quantized LiteRT exports (``kcnn export --format litert --quantize MODE``) and their accuracy.

Three modes, all through the TFLite converter that Keras' LiteRT export drives:

``dynamic``  weights stored as int8, activations float (no calibration data needed);
``float16``  weights stored as float16 (about half the float file);
``int8``     weights and activations int8, calibrated on images of the run's training part
             (the "representative dataset"); input and output stay float32, so the file
             takes the same 0..255 pixels as the float one.

:func:`write_quantized_litert` writes the file beside the float ``model.tflite``;
:func:`litert_accuracy` runs a ``.tflite`` file on a part of the run's data, so the export
can put the two accuracies (and sizes) side by side and refuse a quantized model that lost
too much.  For a multi-label model the score compared is the macro mAP instead of accuracy
(:func:`litert_macro_map`); the record names it (``"metric"``).

numpy and TensorFlow are imported inside the functions: ``kcnn --help`` reads the constants.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

from keras_cnn.choices import QuantizationMode, names
from keras_cnn.config import RunConfig
from keras_cnn.errors import RunFailure, UserError
from keras_cnn.export.portable import litert_outputs
from keras_cnn.export.spec import ModelSpec
from keras_cnn.export_layout import LITERT_FILE, quantized_litert_file
from keras_cnn.library_chatter import native_stderr_silenced
from keras_cnn.runs import RunDirectory

QUANTIZATION_MODES = names(QuantizationMode)
REPRESENTATIVE_IMAGES = 200            # int8 calibration images from the training part
DEFAULT_MAX_ACCURACY_DROP = 0.01       # refuse a quantized model more than 1 point less accurate


def check_mode(mode: str) -> str:
    """``mode`` when it is one of :data:`QUANTIZATION_MODES`, else a one-line ``UserError``."""
    if mode not in QUANTIZATION_MODES:
        raise UserError(f"--quantize must be one of {', '.join(QUANTIZATION_MODES)}, received: {mode!r}")
    return mode


def converter_options(mode: str, representative_images: Iterable[Any] | None = None) -> dict[str, Any]:
    """Keyword arguments for ``model.export(format="litert")`` (TFLite converter attributes)."""
    import numpy as np
    import tensorflow as tf

    check_mode(mode)
    options: dict[str, Any] = {"optimizations": [tf.lite.Optimize.DEFAULT]}
    if mode == "float16":
        options["target_spec"] = {"supported_types": [tf.float16]}
    elif mode == "int8":
        images = list(representative_images or [])
        if not images:
            raise UserError("--quantize int8 needs images of the run's training part to calibrate on; none were found")

        def representative_dataset():
            for image in images:
                yield [np.asarray(image, np.float32)[None]]

        options["representative_dataset"] = representative_dataset
    return options


def write_quantized_litert(model, mode: str, path: str | os.PathLike,
                           representative_images: Iterable[Any] | None = None) -> Path:
    """Write ``model`` as a quantized ``.tflite`` file (float32 input and output)."""
    options = converter_options(mode, representative_images)
    with native_stderr_silenced():   # the converter's report of its settings ("fully_quantize: 0, ...")
        model.export(os.fspath(path), format="litert", verbose=False, **options)
    return Path(path)


def first_images(dataset, limit: int) -> list:
    """Up to ``limit`` single images (float32 0..255 numpy arrays) from a dataset of image batches."""
    import numpy as np

    images: list = []
    for batch in dataset:
        images.extend(np.asarray(batch, np.float32))
        if len(images) >= limit:
            break
    return images[:limit]


def litert_accuracy(paths: dict[str, Path], dataset, true_indices, num_classes: int) -> dict[str, float]:
    """Accuracy of each ``.tflite`` file in ``paths`` on the batches of ``dataset`` (labels ``true_indices``).

    The images are read once and each file runs on all of them.
    """
    import numpy as np

    from keras_cnn.metrics import outputs_to_probabilities

    images = np.concatenate([np.asarray(batch, np.float32) for batch in dataset], axis=0)
    if len(images) != len(true_indices):
        raise RunFailure(f"the data gave {len(images)} images but the split lists {len(true_indices)}")
    accuracies = {}
    for name, path in paths.items():
        predicted = outputs_to_probabilities(litert_outputs(path, images), num_classes).argmax(axis=1)
        accuracies[name] = float(np.mean(predicted == true_indices))
    return accuracies


def litert_macro_map(paths: dict[str, Path], dataset, targets, num_labels: int) -> dict[str, float]:
    """Macro mAP of each multi-label ``.tflite`` file in ``paths`` on the batches of ``dataset`` (multi-hot
    ``targets``); labels without a positive there are left out (NaN when none has one)."""
    import numpy as np

    from keras_cnn.metrics import compute_multi_label_metrics

    images = np.concatenate([np.asarray(batch, np.float32) for batch in dataset], axis=0)
    if len(images) != len(targets):
        raise RunFailure(f"the data gave {len(images)} images but the split lists {len(targets)}")
    scores = {}
    for name, path in paths.items():
        found = compute_multi_label_metrics(targets, litert_outputs(path, images), [str(index) for index in
                                                                                     range(num_labels)])["macro_map"]
        scores[name] = float("nan") if found is None else found
    return scores


def quantize_litert(model, spec: ModelSpec, config: RunConfig, run: RunDirectory, folder: Path, mode: str,
                    force: bool, max_accuracy_drop: float) -> dict[str, Any]:
    """Write ``model_<mode>.tflite`` beside ``model.tflite`` in ``folder``; compare size and accuracy.

    Returns the record that goes into kcnn.json and the result (see ``export_run``).  A
    multi-label model is judged on its macro mAP: the record's ``"metric"`` is ``macro_map``
    and the scores sit under that name (``"accuracy"`` for every other model).
    """
    from keras_cnn.run_data import load_part

    batch_size = int(config.training.batch_size or 32)
    representative = None
    if mode == "int8":
        representative = first_images(load_part(run, config, "train", batch_size).images(), REPRESENTATIVE_IMAGES)
    float_path = folder / LITERT_FILE
    quantized_path = write_quantized_litert(model, mode, folder / quantized_litert_file(check_mode(mode)),
                                            representative)
    part, measured = _accuracy_part(config, run, batch_size)
    record: dict[str, Any] = {
        "mode": mode,
        "representative_images": len(representative) if representative is not None else 0,
        "float": {"file": float_path.name, "bytes": float_path.stat().st_size},
        "quantized": {"file": quantized_path.name, "bytes": quantized_path.stat().st_size},
        "size_ratio": round(quantized_path.stat().st_size / float_path.stat().st_size, 4),
        "accuracy_part": part,
        "max_accuracy_drop": max_accuracy_drop,
        "metric": "macro_map" if spec.multi_label else "accuracy",
    }
    if measured is None:
        return record
    metric, targets = record["metric"], measured.targets
    measure = litert_macro_map if spec.multi_label else litert_accuracy
    scores = measure({"float": float_path, "quantized": quantized_path}, measured.images(), targets, len(spec.labels))
    record["images"] = int(len(targets))
    record["float"][metric] = scores["float"]
    record["quantized"][metric] = scores["quantized"]
    record[f"{metric}_change"] = scores["quantized"] - scores["float"]
    if -record[f"{metric}_change"] > max_accuracy_drop and not force:
        score = f"has mAP {scores['quantized']:.4f}" if spec.multi_label else f"is {scores['quantized']:.4f} accurate"
        raise UserError(f"the {mode} LiteRT model {score} against "
                        f"{scores['float']:.4f} for the float one on {len(targets)} {part} images "
                        f"(a drop of more than {max_accuracy_drop:g}); nothing was written; pass --force to keep it")
    return record


def _accuracy_part(config: RunConfig, run: RunDirectory, batch_size: int):
    """The part to measure accuracy on: (name, its Part), test first; (None, None) when both are empty."""
    from keras_cnn.data.pipeline import EmptyPart
    from keras_cnn.run_data import load_part

    for name in ("test", "validation"):
        try:
            return name, load_part(run, config, name, batch_size)
        except EmptyPart:
            continue
    return None, None
