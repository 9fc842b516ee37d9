"""The SavedModel of an export (TF Serving layout), its serving signatures, and how it is checked.

Written with Keras 3's ``keras.export.ExportArchive``; plain ``tf.saved_model.load`` reads it
without kcnn or any custom object.  Signatures (names in :mod:`keras_cnn.export_layout`):

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
``serving_explain`` (when the model has a spatial feature map, :mod:`keras_cnn.models.opened`)
    like ``serving_default``, plus ``heatmap``: float32 [batch, height, width] of the model's
    input, 0..1, Grad-CAM for the class answered (:mod:`keras_cnn.explain`): where the model
    looked.  One forward and one backward pass per batch.

Each returns ``probabilities`` (float32 [batch, classes], ``labels.txt`` order; a binary
sigmoid model gives [1 - p, p]; calibrated when the run was: the model given to
:func:`write_saved_model` already divides its logits by the temperature), ``class_index``
(int64 [batch]) and ``label`` (string [batch]).  The label lookup is a table initialised from
the ``labels.txt`` asset, so the file shipped with the model is the one source of the names.

A multi-label model's ``probabilities`` are one independent probability per label; besides
the most probable label (``class_index``, ``label``) it returns ``above_threshold`` (bool
[batch, labels]: the probability is at or above the label's threshold, the thresholds
chosen on the run's validation part and written into the graph) and ``labels`` (string
[batch]: those labels joined by ``;`` in ``labels.txt`` order, empty when none).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

from keras_cnn.errors import RunFailure
from keras_cnn.export.spec import ModelSpec
from keras_cnn.export.verify import decoded_pixels, keras_probabilities
from keras_cnn.export_layout import (EXPLAIN_SIGNATURE, HEATMAP_OUTPUT, IMAGES_SIGNATURE, IMAGES_UINT8_SIGNATURE,
                                     LABELS_ASSET, SERVING_SIGNATURE, TTA_SIGNATURE)

SIGNATURE_DESCRIPTIONS = {
    SERVING_SIGNATURE: "image_bytes: string [batch] of encoded images -> probabilities, class_index, label",
    IMAGES_SIGNATURE: "images: float32 [batch, height, width, channels] in 0..255 -> probabilities, class_index, label",
    IMAGES_UINT8_SIGNATURE: "images: uint8 [batch, height, width, channels] -> probabilities, class_index, label",
}
TTA_SIGNATURE_DESCRIPTION = ("image_bytes: string [batch] of encoded images -> probabilities averaged over the "
                             "test-time augmentation views, class_index, label")
EXPLAIN_SIGNATURE_DESCRIPTION = ("image_bytes: string [batch] of encoded images -> probabilities, class_index, label, "
                                 f"{HEATMAP_OUTPUT} (float32 [batch, height, width], 0..1: Grad-CAM of the class "
                                 "answered)")
MULTI_LABEL_OUTPUTS = ("probabilities (one per label), class_index, label (the most probable), above_threshold, "
                       "labels (those at or above their thresholds, joined by ';')")
LABEL_JOINER = ";"


def signature_descriptions(spec: ModelSpec) -> dict[str, str]:
    """What each signature of the SavedModel takes and returns (for kcnn.json)."""
    descriptions = dict(SIGNATURE_DESCRIPTIONS)
    if spec.tta_views:
        descriptions[TTA_SIGNATURE] = f"{TTA_SIGNATURE_DESCRIPTION} ({', '.join(spec.tta_views)})"
    if spec.explainer is not None:
        descriptions[EXPLAIN_SIGNATURE] = EXPLAIN_SIGNATURE_DESCRIPTION
    if spec.multi_label:
        descriptions = {name: text.replace("probabilities, class_index, label", MULTI_LABEL_OUTPUTS)
                        for name, text in descriptions.items()}
    return descriptions


def write_saved_model(model, spec: ModelSpec, folder: Path) -> Path:
    """Write the serving SavedModel of ``model`` into ``folder`` (missing or empty); returns the folder.

    See the module docstring for the signatures; ``spec.tta_views`` adds ``serving_tta``.
    Not atomic by itself: ``export_run`` writes into a temporary folder and renames it.
    """
    import keras
    import tensorflow as tf

    path = Path(folder)
    with tempfile.TemporaryDirectory(prefix="kcnn-labels-") as labels_folder:
        # tf.saved_model.save copies an asset under its base name: assets/labels.txt.
        labels_file = Path(labels_folder) / LABELS_ASSET.name
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
        for name in (SERVING_SIGNATURE, TTA_SIGNATURE, EXPLAIN_SIGNATURE):
            if name in endpoints:
                archive.add_endpoint(name, endpoints[name],
                                     input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        for name, dtype in ((IMAGES_SIGNATURE, tf.float32), (IMAGES_UINT8_SIGNATURE, tf.uint8)):
            archive.add_endpoint(name, endpoints[name], input_signature=[
                tf.TensorSpec([None, None, None, spec.channels], dtype, name="images")])
        archive.write_out(str(path), verbose=False)
    return path


def serving_functions(model, spec: ModelSpec, label_table) -> dict[str, Callable]:
    """The Python functions behind the signatures (traced by ``ExportArchive``)."""
    import tensorflow as tf

    from keras_cnn.data.images import load_image, resize_image
    from keras_cnn.explain import explain_images
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
        outputs = {"probabilities": probabilities, "class_index": class_index, "label": label_table.lookup(class_index)}
        if spec.multi_label:
            outputs.update(labels_above_thresholds(probabilities, spec.thresholds, label_table))
        return outputs

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

    def explain(image_bytes):
        explained = explain_images(spec.explainer, decode(image_bytes), spec.temperature)
        class_index = explained["class_index"]
        return {"probabilities": explained["probabilities"], "class_index": class_index,
                "label": label_table.lookup(class_index), HEATMAP_OUTPUT: explained["heatmap"]}

    functions = {SERVING_SIGNATURE: from_bytes, IMAGES_SIGNATURE: from_pixels, IMAGES_UINT8_SIGNATURE: from_pixels}
    if spec.tta_views:
        functions[TTA_SIGNATURE] = from_bytes_with_tta
    if spec.explainer is not None:
        functions[EXPLAIN_SIGNATURE] = explain
    return functions


def labels_above_thresholds(probabilities, thresholds, label_table) -> dict:
    """``above_threshold`` (bool [batch, labels]) and ``labels`` (the names at or above, joined by ``;``)."""
    import tensorflow as tf

    above = probabilities >= tf.constant(thresholds, tf.float32)
    names = label_table.lookup(tf.range(len(thresholds), dtype=tf.int64))
    chosen = tf.ragged.boolean_mask(tf.broadcast_to(names, tf.shape(above)), above)
    return {"above_threshold": above, "labels": tf.strings.reduce_join(chosen, axis=-1, separator=LABEL_JOINER)}


def compare_saved_model(model, spec: ModelSpec, path: Path, images: list[bytes]) -> list[tuple]:
    """Load the SavedModel back: (Keras probabilities, each signature's) on ``images``.

    The labels each signature returns must follow its own probabilities (``RunFailure``).
    """
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    pixels = decoded_pixels(images, spec)
    expected = keras_probabilities(model, pixels, spec)
    from_bytes = loaded.signatures[SERVING_SIGNATURE](image_bytes=tf.constant(images))
    from_pixels = loaded.signatures[IMAGES_SIGNATURE](images=tf.constant(pixels))
    checked = [from_bytes, from_pixels]
    pairs = [(expected, from_bytes["probabilities"].numpy()), (expected, from_pixels["probabilities"].numpy())]
    if spec.tta_views:
        from keras_cnn.tta import average_views, tta_views

        views = list(spec.tta_views)
        expected_tta = average_views(keras_probabilities(model, tta_views(pixels, views).numpy(), spec),
                                     len(views)).numpy()
        with_tta = loaded.signatures[TTA_SIGNATURE](image_bytes=tf.constant(images))
        checked.append(with_tta)
        pairs.append((expected_tta, with_tta["probabilities"].numpy()))
    if spec.explainer is not None:
        explained = loaded.signatures[EXPLAIN_SIGNATURE](image_bytes=tf.constant(images))
        checked.append(explained)
        pairs.append((expected, explained["probabilities"].numpy()))
        _check_heatmaps(explained[HEATMAP_OUTPUT].numpy(), len(images), spec)
    for outputs in checked:
        # Labels must follow the export's own probabilities (comparing with the Keras model's
        # argmax would flag near-ties that differ by rounding only).
        class_index = outputs["class_index"].numpy()
        labels = [value.decode("utf-8") for value in outputs["label"].numpy()]
        if (class_index != outputs["probabilities"].numpy().argmax(axis=-1)).any() or \
                labels != [spec.labels[index] for index in class_index]:
            raise RunFailure(f"saved_model export returns labels {labels} for class indices {class_index.tolist()}, "
                             f"which do not match labels.txt {list(spec.labels)}")
        if spec.multi_label:
            _check_labels_above_thresholds(outputs, spec)
    return pairs


def _check_heatmaps(heatmaps, count: int, spec: ModelSpec) -> None:
    """``RunFailure`` unless the heat maps are [count, height, width] of finite values in 0..1."""
    import numpy as np

    if heatmaps.shape != (count, *spec.image_size) or not np.all(np.isfinite(heatmaps)) or \
            heatmaps.min() < 0 or heatmaps.max() > 1:
        raise RunFailure(f"saved_model export: {EXPLAIN_SIGNATURE} returns heat maps of shape {heatmaps.shape} "
                         f"with values from {heatmaps.min():.3g} to {heatmaps.max():.3g}; expected "
                         f"({count}, {spec.image_size[0]}, {spec.image_size[1]}) in 0..1")


def _check_labels_above_thresholds(outputs, spec: ModelSpec) -> None:
    """The multi-label outputs must follow the export's own probabilities and the run's thresholds."""
    import numpy as np

    above = outputs["probabilities"].numpy() >= np.asarray(spec.thresholds, np.float32)
    joined = [value.decode("utf-8") for value in outputs["labels"].numpy()]
    expected = [LABEL_JOINER.join(label for label, on in zip(spec.labels, row) if on) for row in above]
    if (outputs["above_threshold"].numpy() != above).any() or joined != expected:
        raise RunFailure(f"saved_model export returns the labels {joined} above their thresholds where its "
                         f"probabilities give {expected}")
