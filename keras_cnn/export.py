"""Export a finished run for serving: a SavedModel in TF Serving layout, plus ONNX / LiteRT.

Layout of one export (``DIR`` is ``--out``; TF Serving loads the highest numeric version)::

    DIR/<version>/
      saved_model.pb, variables/     the SavedModel (format "saved_model")
      assets/labels.txt              class names in class-index order (a SavedModel asset)
      assets.extra/kcnn.json         metadata: versions, model, input size, labels, metrics,
                                     signatures, files and the verification differences
      model.onnx                     format "onnx"   (TF Serving ignores extra files)
      model.tflite                   format "litert"

The SavedModel is written with Keras 3's ``keras.export.ExportArchive`` and needs neither
kcnn nor any custom object to load: ``tf.saved_model.load(DIR/1)`` is enough.  Signatures:

``serving_default``
    ``image_bytes``: string [batch] of encoded images (JPEG/PNG/GIF/BMP/WebP, any size,
    grey/RGB/RGBA).  Decoding and resizing run in the graph through
    :func:`keras_cnn.data.images.load_image`, the function the training pipeline uses.
``serving_images`` / ``serving_images_uint8``
    ``images``: float32 / uint8 [batch, height, width, channels] of decoded pixels in 0..255
    (channels = the model's).  Images of another size are resized exactly like training;
    images already at the model's size go to the model unchanged.

``serving_tta`` (only with ``kcnn export --tta N``)
    like ``serving_default``, with the probabilities averaged over N fixed test-time
    augmentation views of each image (:mod:`keras_cnn.tta`; their names are in kcnn.json).

Each returns ``probabilities`` (float32 [batch, classes], ``labels.txt`` order; a binary
sigmoid model gives [1 - p, p]), ``class_index`` (int64 [batch]) and ``label`` (string
[batch]).  The label lookup is a table initialised from the ``labels.txt`` asset, so the file
shipped with the model is the one source of the names.

ONNX and LiteRT files hold the Keras model itself: input float32 [batch, height, width,
channels] pixels in 0..255 already at the model's size (the decoded-image path; the caller
decodes and resizes), output the model's own output (softmax [batch, classes], or sigmoid
[batch, 1] for a binary model).  In ONNX they are named ``images`` and ``output``.

Every export is written into a temporary folder beside ``DIR/<version>``, checked, and only
then renamed into place, so a failed export leaves no version folder behind.  The check runs
each written format on a few images (validation images of the run when they can be found,
plus generated images of several sizes and colour modes) and fails when the largest absolute
difference from the Keras model exceeds :data:`TOLERANCE`.

TensorFlow is imported inside the functions so the CLI can read :data:`EXPORT_FORMATS`
without loading it.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.util
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from keras_cnn.config import RunConfig
from keras_cnn.errors import RunFailure, UserError
from keras_cnn.quantize import DEFAULT_MAX_ACCURACY_DROP
from keras_cnn.quantize import check_mode as check_quantization_mode
from keras_cnn.library_chatter import native_stderr_silenced
from keras_cnn.io import atomic_path, atomic_write_json
from keras_cnn.runs import RunDirectory
from keras_cnn.versions import library_versions

TOLERANCE = 1e-4
METADATA_PATH = Path("assets.extra") / "kcnn.json"
LABELS_ASSET_NAME = "labels.txt"
VERIFICATION_IMAGES_FROM_RUN = 4

SIGNATURE_DESCRIPTIONS = {
    "serving_default": "image_bytes: string [batch] of encoded images -> probabilities, class_index, label",
    "serving_images": "images: float32 [batch, height, width, channels] in 0..255 -> probabilities, class_index, label",
    "serving_images_uint8": "images: uint8 [batch, height, width, channels] -> probabilities, class_index, label",
}
TTA_SIGNATURE = "serving_tta"
TTA_SIGNATURE_DESCRIPTION = ("image_bytes: string [batch] of encoded images -> probabilities averaged over the "
                             "test-time augmentation views, class_index, label")


@dataclass(frozen=True)
class ModelSpec:
    """What an export needs to know about the model beyond its weights."""

    labels: tuple[str, ...]
    image_size: tuple[int, int]
    channels: int
    resize_mode: str
    binary: bool              # one sigmoid unit: probabilities are [1 - p, p]
    tta_views: tuple[str, ...] = ()   # views of the serving_tta signature (none: no such signature)


# --------------------------------------------------------------------------- run -> export


def export_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike, version: int | None = None,
               formats: tuple[str, ...] | list[str] = ("saved_model",), verify: bool = True,
               force: bool = False, tta: int | None = None, quantize: str | None = None,
               max_accuracy_drop: float | None = None) -> dict[str, Any]:
    """Export the model of a finished run into ``out_dir/<version>/``.

    ``version`` defaults to 1; an existing version folder is refused unless ``force``.
    ``formats`` is any of :data:`EXPORT_FORMATS` (``saved_model``, ``onnx``, ``litert``).
    With ``verify`` every written format is run on a few images and compared with the Keras
    model (``RunFailure`` above :data:`TOLERANCE`; nothing is left behind).
    ``tta``: add the ``serving_tta`` signature, ``serving_default`` averaged over that many
    test-time augmentation views (:mod:`keras_cnn.tta`); needs the SavedModel format.
    ``quantize`` (dynamic, float16, int8; needs the litert format): also write
    ``model_<mode>.tflite`` and measure both LiteRT files' size and accuracy on the run's
    test part (validation when it has no test part); a quantized model that loses more than
    ``max_accuracy_drop`` accuracy is refused (``UserError``, nothing written) unless ``force``.

    Returns ``{"path", "version", "files": {format: path}, "max_abs_diff": {format: float},
    "metadata": path, "labels", "image_size", "channels"}``.
    """
    formats = _check_formats(formats)
    version = 1 if version is None else version
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise UserError(f"--version must be a positive integer, received: {version!r}")
    version_dir = Path(out_dir) / str(version)
    if version_dir.exists() and not force:
        raise UserError(f"{version_dir} already exists: choose another --version or pass --force to replace it")

    run = RunDirectory(run_dir).require()
    config = RunConfig.from_dict(run.read_config())
    # Registers kcnn's custom layers first; the written export needs none of them.
    from keras_cnn.models.loading import load_model

    model = load_model(run.model_path)
    spec = model_spec(model, run.read_labels(), config)
    if tta:
        from keras_cnn.tta import trained_with_flips, view_names

        if "saved_model" not in formats:
            raise UserError("--tta adds a signature to the SavedModel: add --format saved_model")
        spec = replace(spec, tta_views=tuple(view_names(int(tta), trained_with_flips(config))))
    if quantize is not None:
        check_quantization_mode(quantize)
        if "litert" not in formats:
            raise UserError("--quantize makes a LiteRT file: add --format litert")
    probe_images = verification_images(config, spec) if verify else []
    quantization = None

    files: dict[str, str] = {}
    differences: dict[str, float] = {}
    with atomic_path(version_dir, directory=True) as temporary:
        for name in formats:
            exporter = EXPORT_FORMATS[name]
            written = exporter.write(model, spec, temporary)
            files[name] = str(version_dir / written.relative_to(temporary))
            if verify:
                difference = exporter.verify(model, spec, written, probe_images)
                if not difference <= TOLERANCE:  # also catches NaN
                    raise RunFailure(
                        f"{name} export differs from the Keras model: max abs difference {difference:.3g} "
                        f"> {TOLERANCE:g} on {len(probe_images)} images; nothing was written"
                    )
                differences[name] = difference
        if quantize is not None:
            quantization = quantize_litert(model, spec, config, run, temporary, quantize, force,
                                           DEFAULT_MAX_ACCURACY_DROP if max_accuracy_drop is None
                                           else max_accuracy_drop)
            files[f"litert_{quantize}"] = str(version_dir / quantization["quantized"]["file"])
        metadata = export_metadata(config, spec, run.read_metrics(), run.root, formats, differences)
        metadata["quantization"] = quantization
        atomic_write_json(temporary / METADATA_PATH, metadata)
    return {
        "path": str(version_dir),
        "version": version,
        "files": files,
        "max_abs_diff": differences,
        "verified_on_images": len(probe_images),
        "metadata": str(version_dir / METADATA_PATH),
        "labels": list(spec.labels),
        "image_size": list(spec.image_size),
        "channels": spec.channels,
        "tta": metadata["tta"],
        "quantization": quantization,
    }


def quantize_litert(model, spec: ModelSpec, config: RunConfig, run: RunDirectory, folder: Path, mode: str,
                    force: bool, max_accuracy_drop: float) -> dict[str, Any]:
    """Write ``model_<mode>.tflite`` beside ``model.tflite`` in ``folder``; compare size and accuracy.

    Returns the record that goes into kcnn.json and the result (see :func:`export_run`).
    """
    from keras_cnn.quantize import (REPRESENTATIVE_IMAGES, first_images, litert_accuracy, quantized_file_name,
                                    write_quantized_litert)
    from keras_cnn.run_data import load_part

    batch_size = int(config.training.batch_size or 32)
    representative = None
    if mode == "int8":
        representative = first_images(load_part(run, config, "train", batch_size).images(), REPRESENTATIVE_IMAGES)
    float_path = folder / EXPORT_FORMATS["litert"].file_name
    quantized_path = write_quantized_litert(model, mode, folder / quantized_file_name(mode), representative)
    part, measured = _accuracy_part(config, run, batch_size)
    record: dict[str, Any] = {
        "mode": mode,
        "representative_images": len(representative) if representative is not None else 0,
        "float": {"file": float_path.name, "bytes": float_path.stat().st_size},
        "quantized": {"file": quantized_path.name, "bytes": quantized_path.stat().st_size},
        "size_ratio": round(quantized_path.stat().st_size / float_path.stat().st_size, 4),
        "accuracy_part": part,
        "max_accuracy_drop": max_accuracy_drop,
    }
    if measured is None:
        return record
    true_indices = measured.true_indices
    accuracy = litert_accuracy({"float": float_path, "quantized": quantized_path}, measured.images(), true_indices,
                               len(spec.labels))
    record["images"] = int(len(true_indices))
    record["float"]["accuracy"] = accuracy["float"]
    record["quantized"]["accuracy"] = accuracy["quantized"]
    record["accuracy_change"] = accuracy["quantized"] - accuracy["float"]
    if -record["accuracy_change"] > max_accuracy_drop and not force:
        raise UserError(f"the {mode} LiteRT model is {accuracy['quantized']:.4f} accurate against "
                        f"{accuracy['float']:.4f} for the float one on {len(true_indices)} {part} images "
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


def _check_formats(formats) -> tuple[str, ...]:
    if isinstance(formats, str):
        formats = (formats,)
    unknown = [name for name in formats if name not in EXPORT_FORMATS]
    if unknown or not formats:
        raise UserError(f"export format must be among {sorted(EXPORT_FORMATS)}, received: {list(formats)}")
    for name in formats:
        missing = [module for module in EXPORT_FORMATS[name].requires if importlib.util.find_spec(module) is None]
        if missing:
            raise UserError(f"--format {name} needs {', '.join(missing)}: pip install 'kcnn[export]'")
    # The SavedModel last: tf2onnx serialises the graph collections, and after the
    # SavedModel's label table exists it warns (harmlessly) about its initializer.
    ordered = [name for name in EXPORT_FORMATS if name in formats]
    return tuple(sorted(ordered, key=lambda name: name == "saved_model"))


def model_spec(model, labels: list[str], config: RunConfig) -> ModelSpec:
    """Check the model against the run's labels and config and collect what the export needs."""
    input_shape = tuple(model.input_shape)
    if len(input_shape) != 4 or input_shape[1] is None or input_shape[2] is None:
        raise UserError(f"the model must take images of a fixed size (batch, height, width, channels), "
                        f"received input shape: {input_shape}")
    image_size = tuple(int(value) for value in (config.data.image_size or input_shape[1:3]))
    channels = int(config.data.channels or input_shape[3])
    if image_size != tuple(input_shape[1:3]) or channels != input_shape[3]:
        raise UserError(f"config.json says images are {image_size} x {channels} channels but the model takes "
                        f"{input_shape[1:]}")
    outputs = int(model.output_shape[-1])
    binary = outputs == 1
    if (binary and len(labels) != 2) or (not binary and outputs != len(labels)):
        raise UserError(f"the model has {outputs} output unit(s) but labels.txt has {len(labels)} labels: {labels}")
    return ModelSpec(tuple(labels), image_size, channels, config.data.resize_mode, binary)


def export_metadata(config: RunConfig, spec: ModelSpec, metrics: dict[str, Any], run_root: Path,
                    formats: tuple[str, ...], differences: dict[str, float]) -> dict[str, Any]:
    """The ``kcnn.json`` written beside the SavedModel (``assets.extra/``)."""
    from keras_cnn.tta import trained_with_flips

    return {
        "versions": library_versions(),
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "run": str(run_root.resolve()),
        "kind": config.model.kind,
        "base": config.model.name,
        "input": {"image_size": list(spec.image_size), "channels": spec.channels,
                  "resize_mode": spec.resize_mode, "dtype": "float32", "range": [0, 255]},
        "output": {"activation": "sigmoid" if spec.binary else "softmax", "classes": len(spec.labels)},
        "labels": list(spec.labels),
        "metrics": metrics,
        "signatures": signature_descriptions(spec) if "saved_model" in formats else {},
        "tta": {"signature": TTA_SIGNATURE, "views": list(spec.tta_views)} if spec.tta_views else None,
        # Lets `kcnn predict --tta N` choose the same views as `kcnn evaluate --tta N`.
        "trained_with_horizontal_flips": trained_with_flips(config),
        "files": {name: EXPORT_FORMATS[name].file_name for name in formats},
        "max_abs_diff": differences,
    }


def signature_descriptions(spec: ModelSpec) -> dict[str, str]:
    """What each signature of the SavedModel takes and returns (for kcnn.json)."""
    if not spec.tta_views:
        return dict(SIGNATURE_DESCRIPTIONS)
    return {**SIGNATURE_DESCRIPTIONS, TTA_SIGNATURE: f"{TTA_SIGNATURE_DESCRIPTION} ({', '.join(spec.tta_views)})"}


# --------------------------------------------------------------------------- SavedModel


def export_saved_model(model, labels, image_size, channels, resize_mode, path, metadata=None,
                       tta_views: tuple[str, ...] = ()) -> Path:
    """Write the serving SavedModel of ``model`` into ``path`` (missing or empty folder).

    See the module docstring for the signatures; ``tta_views`` adds ``serving_tta``.
    ``metadata`` (a dict), when given, goes to
    ``path/assets.extra/kcnn.json``.  Not atomic by itself: :func:`export_run` writes into a
    temporary folder and renames it.
    """
    import keras
    import tensorflow as tf

    spec = ModelSpec(tuple(labels), tuple(image_size), int(channels), resize_mode, int(model.output_shape[-1]) == 1,
                     tuple(tta_views))
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="kcnn-labels-") as labels_folder:
        # tf.saved_model.save copies an asset under its base name: assets/labels.txt.
        labels_file = Path(labels_folder) / LABELS_ASSET_NAME
        labels_file.write_text("".join(f"{label}\n" for label in spec.labels), encoding="utf-8")
        label_table = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(
                tf.saved_model.Asset(str(labels_file)),
                key_dtype=tf.int64, key_index=tf.lookup.TextFileIndex.LINE_NUMBER,
                value_dtype=tf.string, value_index=tf.lookup.TextFileIndex.WHOLE_LINE,
            ),
            default_value="",
        )
        endpoints = serving_functions(model, spec, label_table)
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.track(label_table)  # tracked resources bring their asset into the SavedModel
        for name in ("serving_default", TTA_SIGNATURE):
            if name in endpoints:
                archive.add_endpoint(name, endpoints[name],
                                     input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        for name, dtype in (("serving_images", tf.float32), ("serving_images_uint8", tf.uint8)):
            archive.add_endpoint(name, endpoints[name], input_signature=[
                tf.TensorSpec([None, None, None, spec.channels], dtype, name="images")])
        archive.write_out(str(path), verbose=False)
    if metadata is not None:
        atomic_write_json(path / METADATA_PATH, metadata)
    return path


def serving_functions(model, spec: ModelSpec, label_table) -> dict[str, Callable]:
    """The Python functions behind the signatures (traced by ``ExportArchive``)."""
    import tensorflow as tf

    from keras_cnn.data.images import load_image, resize_image
    from keras_cnn.tta import average_views, tta_views

    height, width = spec.image_size

    def probabilities_of(pixels):
        output = tf.cast(model(pixels, training=False), tf.float32)
        return tf.concat([1.0 - output, output], axis=-1) if spec.binary else output

    def classify(pixels, views=()):
        if views:
            probabilities = average_views(probabilities_of(tta_views(pixels, list(views))), len(views))
        else:
            probabilities = probabilities_of(pixels)
        class_index = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
        return {"probabilities": probabilities, "class_index": class_index, "label": label_table.lookup(class_index)}

    def decode(image_bytes):
        images = tf.map_fn(
            lambda encoded: load_image(encoded, spec.image_size, spec.channels, spec.resize_mode),
            image_bytes,
            fn_output_signature=tf.TensorSpec([height, width, spec.channels], tf.uint8),
        )
        return tf.cast(images, tf.float32)

    def from_bytes(image_bytes):
        return classify(decode(image_bytes))

    def from_bytes_with_tta(image_bytes):
        return classify(decode(image_bytes), spec.tta_views)

    def from_pixels(images):
        shape = tf.shape(images)
        at_model_size = tf.logical_and(tf.equal(shape[1], height), tf.equal(shape[2], width))
        pixels = tf.cond(
            at_model_size,
            lambda: tf.cast(images, tf.float32),
            # The same uint8 round trip as training: resize, round, then float.
            lambda: tf.cast(resize_image(images, spec.image_size, spec.resize_mode), tf.float32),
        )
        return classify(tf.ensure_shape(pixels, [None, height, width, spec.channels]))

    functions = {"serving_default": from_bytes, "serving_images": from_pixels, "serving_images_uint8": from_pixels}
    if spec.tta_views:
        functions[TTA_SIGNATURE] = from_bytes_with_tta
    return functions


def _write_saved_model(model, spec: ModelSpec, folder: Path) -> Path:
    return export_saved_model(model, spec.labels, spec.image_size, spec.channels, spec.resize_mode, folder,
                              tta_views=spec.tta_views)


def _verify_saved_model(model, spec: ModelSpec, path: Path, images: list[bytes]) -> float:
    """Load the SavedModel back and compare both signatures with the Keras model."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    pixels = decoded_pixels(images, spec)
    expected = keras_probabilities(model, pixels, spec)
    from_bytes = loaded.signatures["serving_default"](image_bytes=tf.constant(images))
    from_pixels = loaded.signatures["serving_images"](images=tf.constant(pixels))
    checked = [from_bytes, from_pixels]
    differences = [max_abs_difference(expected, from_bytes["probabilities"].numpy()),
                   max_abs_difference(expected, from_pixels["probabilities"].numpy())]
    if spec.tta_views:
        from keras_cnn.tta import average_views, tta_views

        views = list(spec.tta_views)
        expected_tta = average_views(keras_probabilities(model, tta_views(pixels, views).numpy(), spec),
                                     len(views)).numpy()
        with_tta = loaded.signatures[TTA_SIGNATURE](image_bytes=tf.constant(images))
        checked.append(with_tta)
        differences.append(max_abs_difference(expected_tta, with_tta["probabilities"].numpy()))
    for outputs in checked:
        # Labels must follow the export's own probabilities (comparing with the Keras model's
        # argmax would flag near-ties that differ by rounding only).
        class_index = outputs["class_index"].numpy()
        labels = [value.decode("utf-8") for value in outputs["label"].numpy()]
        if (class_index != outputs["probabilities"].numpy().argmax(axis=-1)).any() or \
                labels != [spec.labels[index] for index in class_index]:
            raise RunFailure(f"saved_model export returns labels {labels} for class indices {class_index.tolist()}, "
                             f"which do not match labels.txt {list(spec.labels)}")
    return max(differences)


# --------------------------------------------------------------------------- ONNX and LiteRT


def _write_onnx(model, spec: ModelSpec, folder: Path) -> Path:
    """Freeze the model's forward pass and convert it with tf2onnx.

    Not ``model.export(format="onnx")``: that hands tf2onnx a function whose captured
    tensors (e.g. the mean and variance of EfficientNet's Normalization layer, which Keras
    keeps as tensors, not variables) become extra ONNX inputs that nobody can feed.
    Freezing first turns every capture into a constant; the ONNX model then has one input.
    """
    import tensorflow as tf
    import tf2onnx
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    try:  # Keras' numpy-2 compatibility shim for tf2onnx (what model.export applies too)
        from keras.src.export.tf2onnx_lib import patch_tf2onnx
    except ImportError:
        pass
    else:
        patch_tf2onnx()
    path = folder / EXPORT_FORMATS["onnx"].file_name
    forward = tf.function(lambda images: model(images, training=False))
    concrete = forward.get_concrete_function(
        tf.TensorSpec([None, *spec.image_size, spec.channels], tf.float32, name="images"))
    with _quiet_tensorflow_logger():
        frozen = convert_variables_to_constants_v2(concrete)
        [input_tensor], [output_tensor] = frozen.inputs, frozen.outputs
        tf2onnx.convert.from_graph_def(
            frozen.graph.as_graph_def(), input_names=[input_tensor.name], output_names=[output_tensor.name],
            tensors_to_rename={input_tensor.name: "images", output_tensor.name: "output"},
            output_path=str(path),
        )
    return path


@contextlib.contextmanager
def _quiet_tensorflow_logger():
    """Hide TensorFlow's v1-API deprecation warnings that tf2onnx's freezing triggers."""
    import tensorflow as tf

    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")
    try:
        yield
    finally:
        logger.setLevel(level)


def _verify_onnx(model, spec: ModelSpec, path: Path, images: list[bytes]) -> float:
    import onnxruntime

    pixels = decoded_pixels(images, spec)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    actual = session.run(None, {session.get_inputs()[0].name: pixels})[0]
    return max_abs_difference(keras_outputs(model, pixels), actual)


def _write_litert(model, spec: ModelSpec, folder: Path) -> Path:
    path = folder / EXPORT_FORMATS["litert"].file_name
    _call_once(model, spec)
    model.export(str(path), format="litert", verbose=False)
    return path


def _verify_litert(model, spec: ModelSpec, path: Path, images: list[bytes]) -> float:
    from ai_edge_litert.interpreter import Interpreter

    pixels = decoded_pixels(images, spec)
    with native_stderr_silenced():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
        interpreter = Interpreter(model_path=str(path))
        input_detail = interpreter.get_input_details()[0]
        interpreter.resize_tensor_input(input_detail["index"], list(pixels.shape))
        interpreter.allocate_tensors()
    interpreter.set_tensor(input_detail["index"], pixels)
    interpreter.invoke()
    actual = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    return max_abs_difference(keras_outputs(model, pixels), actual)


@dataclass(frozen=True)
class ExportFormat:
    """One export format: where it goes, how it is written, how it is checked."""

    file_name: str
    write: Callable[..., Path]      # (model, spec, folder) -> written path
    verify: Callable[..., float]    # (model, spec, path, encoded images) -> max abs difference
    requires: tuple[str, ...] = ()  # modules beyond TensorFlow/Keras (the "export" extra)


EXPORT_FORMATS: dict[str, ExportFormat] = {
    "saved_model": ExportFormat("saved_model.pb", _write_saved_model, _verify_saved_model),
    "onnx": ExportFormat("model.onnx", _write_onnx, _verify_onnx, ("tf2onnx", "onnxruntime")),
    "litert": ExportFormat("model.tflite", _write_litert, _verify_litert, ("ai_edge_litert",)),
}


# --------------------------------------------------------------------------- verification


def _call_once(model, spec: ModelSpec) -> None:
    import numpy as np

    model(np.zeros((1, *spec.image_size, spec.channels), np.float32), training=False)


def decoded_pixels(images: list[bytes], spec: ModelSpec):
    """Encoded images -> float32 [batch, height, width, channels], exactly as training sees them."""
    import numpy as np
    import tensorflow as tf

    from keras_cnn.data.images import load_image

    # Traced with unknown image shapes, as in the tf.data pipeline and the serving graph.
    decode = tf.function(
        lambda encoded: load_image(encoded, spec.image_size, spec.channels, spec.resize_mode),
        input_signature=[tf.TensorSpec([], tf.string)], autograph=False,
    )
    return np.stack([decode(tf.constant(encoded)).numpy() for encoded in images]).astype(np.float32)


def keras_outputs(model, pixels):
    """The Keras model's raw output (softmax or sigmoid) as float32 numpy."""
    import numpy as np

    return np.asarray(model(pixels, training=False), dtype=np.float32)


def keras_probabilities(model, pixels, spec: ModelSpec):
    """The Keras model's class probabilities (a binary sigmoid becomes [1 - p, p])."""
    import numpy as np

    output = keras_outputs(model, pixels)
    return np.concatenate([1.0 - output, output], axis=-1) if spec.binary else output


def max_abs_difference(expected, actual) -> float:
    """Largest absolute difference between two arrays (inf when their shapes differ)."""
    import numpy as np

    expected, actual = np.asarray(expected, np.float64), np.asarray(actual, np.float64)
    if expected.shape != actual.shape:
        return float("inf")
    return float(np.max(np.abs(expected - actual))) if expected.size else 0.0


def verification_images(config: RunConfig, spec: ModelSpec) -> list[bytes]:
    """A few encoded images to check an export with: the run's own plus generated ones.

    The generated images cover what the serving signature must handle: grey, RGB and RGBA,
    PNG and JPEG, sizes smaller, larger and of another aspect ratio than the model's input.
    """
    return run_validation_images(config, VERIFICATION_IMAGES_FROM_RUN) + generated_images(spec.image_size)


def run_validation_images(config: RunConfig, limit: int) -> list[bytes]:
    """Bytes of up to ``limit`` validation images of the run's split, if they are still on disk."""
    from keras_cnn.data.files import locate_image
    from keras_cnn.data.split import read_split_csv

    if not config.data.split or not config.data.images:
        return []
    try:
        frame = read_split_csv(config.data.split, config.data.allow_labels)
    except UserError:
        return []  # verification still runs on the generated images
    found: list[bytes] = []
    for object_id in frame.loc[frame["type"] == "validation", "objectId"]:
        path = locate_image(config.data.images, object_id)
        if path is not None:
            found.append(path.read_bytes())
        if len(found) >= limit:
            break
    return found


def generated_images(image_size: tuple[int, int]) -> list[bytes]:
    """Deterministic smooth test images (gradients plus noise) in several sizes and modes."""
    import numpy as np
    import tensorflow as tf

    height, width = image_size
    generator = np.random.default_rng(0)
    sizes = [(height, width), (max(height // 2, 8), max(width // 3, 8)), (height * 2 + 3, width + 17)]
    encoded = []
    for number, (rows, columns) in enumerate(sizes):
        y, x = np.mgrid[0:rows, 0:columns]
        base = np.stack([255 * y / max(rows - 1, 1), 255 * x / max(columns - 1, 1),
                         127 + 120 * np.sin((x + y) / 5.0)], axis=-1)
        pixels = np.clip(base + generator.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        if number == 0:
            encoded.append(tf.io.encode_png(pixels).numpy())                                      # RGB PNG
            encoded.append(tf.io.encode_jpeg(pixels, quality=90).numpy())                         # RGB JPEG
        elif number == 1:
            encoded.append(tf.io.encode_png(pixels[..., :1]).numpy())                             # grey PNG
        else:
            alpha = np.full((rows, columns, 1), 200, np.uint8)
            encoded.append(tf.io.encode_png(np.concatenate([pixels, alpha], axis=-1)).numpy())  # RGBA PNG
    return encoded
