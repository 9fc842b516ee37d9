"""Where the model looked: Grad-CAM heat maps (Selvaraju et al., 2017), batched, in TensorFlow.

For each image, the class it is explained for (the predicted one unless given) has a logit;
its gradient with respect to the last spatial feature map (found from the model's
structure, :mod:`keras_cnn.models.opened`), averaged over the map's pixels, weighs the
map's channels; the weighted sum, without its negative part, is the heat map.  Each map is
scaled to 0..1 (its own maximum) and resized to the model's input size.  One forward and
one backward pass per batch: the probabilities of the same forward pass are returned beside
the maps, divided by the run's temperature when it was calibrated.

:func:`explain_images` runs eagerly (``kcnn evaluate``'s mistakes grid) or inside a traced
function (the export's ``serving_explain`` signature); a binary sigmoid model is explained
for class 1 with its logit and for class 0 with the negated logit.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from keras_cnn.models.opened import SIGMOID, OpenedModel

# Keeps an all-zero map at zero instead of dividing by zero.
_EPSILON = 1e-12


def class_probabilities(logits: tf.Tensor, activation: str, temperature: float | None) -> tf.Tensor:
    """(batch, classes) probabilities of ``logits / temperature``: a softmax, or ``[1 - p, p]`` for one sigmoid unit."""
    scaled = logits / float(temperature or 1.0)
    if activation == SIGMOID or logits.shape[-1] == 1:
        positive = tf.sigmoid(scaled)
        return tf.concat([1.0 - positive, positive], axis=-1)
    return tf.nn.softmax(scaled, axis=-1)


def _class_scores(logits: tf.Tensor, class_index: tf.Tensor) -> tf.Tensor:
    """The logit of each image's class (one sigmoid unit: z for class 1, -z for class 0)."""
    if logits.shape[-1] == 1:
        sign = tf.where(tf.equal(class_index, 1), 1.0, -1.0)
        return sign * logits[:, 0]
    return tf.gather(logits, class_index, axis=1, batch_dims=1)


def explain_images(opened: OpenedModel, images: Any, temperature: float | None = None,
                   class_index: Any = None) -> dict[str, tf.Tensor]:
    """Probabilities, class index and Grad-CAM heat map of a batch of float32 images (0..255, the model's size).

    Returns ``probabilities`` (batch, classes), ``class_index`` (int64, batch; the predicted
    class unless ``class_index`` is given) and ``heatmap`` (float32, batch x height x width
    of the model's input, 0..1).
    """
    if not opened.has_feature_map:
        raise ValueError(f"no heat map for this model: {opened.no_feature_map}")
    images = tf.cast(images, tf.float32)
    with tf.GradientTape() as tape:
        outputs = opened.graph(images, training=False)
        features = outputs["features"]
        tape.watch(features)
        logits = tf.convert_to_tensor(opened.logits(outputs["penultimate"]))
        probabilities = class_probabilities(logits, opened.activation, temperature)
        if class_index is None:
            chosen = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
        else:
            chosen = tf.cast(tf.reshape(class_index, [-1]), tf.int64)
        # Images do not interact in inference mode, so one sum gives every image its own gradient.
        total = tf.reduce_sum(_class_scores(logits, chosen))
    gradients = tf.cast(tape.gradient(total, features), tf.float32)
    features = tf.cast(features, tf.float32)
    weights = tf.reduce_mean(gradients, axis=[1, 2], keepdims=True)
    maps = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1))
    maps = maps / (tf.reduce_max(maps, axis=[1, 2], keepdims=True) + _EPSILON)
    height, width = int(images.shape[1]), int(images.shape[2])
    heatmap = tf.image.resize(maps[..., None], [height, width], method="bilinear")[..., 0]
    return {"probabilities": probabilities, "class_index": chosen,
            "heatmap": tf.clip_by_value(heatmap, 0.0, 1.0)}
