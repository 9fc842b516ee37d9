"""The portable formats of an export: ONNX and LiteRT, and how each is checked.

Both hold the Keras model itself: input float32 [batch, height, width, channels] pixels in
0..255 already at the model's size (the decoded-image path; the caller decodes and
resizes), output the model's own output (softmax [batch, classes], or sigmoid [batch, 1]
for a binary model).  In ONNX they are named ``images`` and ``output``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from keras_cnn.export.spec import ModelSpec
from keras_cnn.export.verify import call_once, decoded_pixels, keras_outputs
from keras_cnn.export_layout import LITERT_FILE, ONNX_FILE
from keras_cnn.library_chatter import native_stderr_silenced


def write_onnx(model, spec: ModelSpec, folder: Path) -> Path:
    """Freeze the model's forward pass and convert it with tf2onnx.

    Not ``model.export(format="onnx")``: that hands tf2onnx a function whose captured
    tensors (e.g. the mean and variance of EfficientNet's Normalization layer, which Keras
    keeps as tensors, not variables) become extra ONNX inputs that nobody can feed.
    Freezing first turns every capture into a constant; the ONNX model then has one input.
    """
    import tensorflow as tf
    import tf2onnx
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    from keras_cnn.keras_internals import patch_tf2onnx

    patch_tf2onnx()   # Keras' numpy-2 compatibility shim for tf2onnx (what model.export applies too)
    path = folder / ONNX_FILE
    forward = tf.function(lambda images: model(images, training=False))
    concrete = forward.get_concrete_function(
        tf.TensorSpec([None, *spec.image_size, spec.channels], tf.float32, name="images"))
    with quiet_tensorflow_logger():
        frozen = convert_variables_to_constants_v2(concrete)
        [input_tensor], [output_tensor] = frozen.inputs, frozen.outputs
        tf2onnx.convert.from_graph_def(
            frozen.graph.as_graph_def(), input_names=[input_tensor.name], output_names=[output_tensor.name],
            tensors_to_rename={input_tensor.name: "images", output_tensor.name: "output"},
            output_path=str(path),
        )
    return path


@contextlib.contextmanager
def quiet_tensorflow_logger():
    """Hide TensorFlow's v1-API deprecation warnings that tf2onnx's freezing triggers."""
    import tensorflow as tf

    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")
    try:
        yield
    finally:
        logger.setLevel(level)


def compare_onnx(model, spec: ModelSpec, path: Path, images: list[bytes]) -> list[tuple]:
    """(Keras outputs, ONNX Runtime's) on the decoded ``images``."""
    import onnxruntime

    pixels = decoded_pixels(images, spec)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [(keras_outputs(model, pixels), session.run(None, {session.get_inputs()[0].name: pixels})[0])]


def write_litert(model, spec: ModelSpec, folder: Path) -> Path:
    """The float LiteRT file (``model.tflite``), through Keras's LiteRT export."""
    path = folder / LITERT_FILE
    call_once(model, spec)
    with native_stderr_silenced():   # the converter's report of its settings ("fully_quantize: 0, ...")
        model.export(str(path), format="litert", verbose=False)
    return path


def compare_litert(model, spec: ModelSpec, path: Path, images: list[bytes]) -> list[tuple]:
    """(Keras outputs, the LiteRT interpreter's) on the decoded ``images``."""
    pixels = decoded_pixels(images, spec)
    return [(keras_outputs(model, pixels), litert_outputs(path, pixels))]


def litert_outputs(path: str | os.PathLike, images, batch_size: int = 64):
    """Run a ``.tflite`` file on float32 images [n, H, W, C]; returns its outputs [n, K] (numpy)."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    with native_stderr_silenced():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
        interpreter = Interpreter(model_path=os.fspath(path))
    input_detail = interpreter.get_input_details()[0]
    output_index = interpreter.get_output_details()[0]["index"]
    allocated = None
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = np.ascontiguousarray(images[start:start + batch_size], dtype=np.float32)
        if allocated != len(batch):
            with native_stderr_silenced():
                interpreter.resize_tensor_input(input_detail["index"], list(batch.shape))
                interpreter.allocate_tensors()
            allocated = len(batch)
        interpreter.set_tensor(input_detail["index"], batch)
        interpreter.invoke()
        outputs.append(np.array(interpreter.get_tensor(output_index)))
    return np.concatenate(outputs, axis=0)
