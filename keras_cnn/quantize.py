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
too much.

numpy and TensorFlow are imported inside the functions: ``kcnn --help`` reads the constants.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

from keras_cnn.choices import QuantizationMode, names
from keras_cnn.errors import RunFailure, UserError

QUANTIZATION_MODES = names(QuantizationMode)
REPRESENTATIVE_IMAGES = 200            # int8 calibration images from the training part
DEFAULT_MAX_ACCURACY_DROP = 0.01       # refuse a quantized model more than 1 point less accurate


def quantized_file_name(mode: str) -> str:
    """``model_int8.tflite`` etc."""
    check_mode(mode)
    return f"model_{mode}.tflite"


def check_mode(mode: str) -> str:
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


def litert_outputs(path: str | os.PathLike, images, batch_size: int = 64):
    """Run a ``.tflite`` file on float32 images [n, H, W, C]; returns its outputs [n, K] (numpy)."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=os.fspath(path))
    input_detail = interpreter.get_input_details()[0]
    output_index = interpreter.get_output_details()[0]["index"]
    allocated = None
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = np.ascontiguousarray(images[start:start + batch_size], dtype=np.float32)
        if allocated != len(batch):
            interpreter.resize_tensor_input(input_detail["index"], list(batch.shape))
            interpreter.allocate_tensors()
            allocated = len(batch)
        interpreter.set_tensor(input_detail["index"], batch)
        interpreter.invoke()
        outputs.append(np.array(interpreter.get_tensor(output_index)))
    return np.concatenate(outputs, axis=0)


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
