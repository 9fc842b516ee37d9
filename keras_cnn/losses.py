"""kcnn's own loss: binary cross-entropy with a weight per label on the positive targets.

Multi-label ``--class-weight balanced``: Keras's ``class_weight`` weighs whole samples by one
class index, which a multi-hot target does not have.  Instead each label's positive
targets weigh ``negatives / positives`` of that label in the training part (PyTorch's
``BCEWithLogitsLoss(pos_weight=...)``), so a rare label counts as much as its absence.
Registered with Keras, so a model saved compiled with it loads again.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras


@keras.saving.register_keras_serializable(package="kcnn")
class PositiveWeightedBinaryCrossentropy(keras.losses.Loss):
    """Mean over labels of ``-(w * y * log p + (1 - y) * log(1 - p))``, ``w`` one weight per label.

    With every weight 1 this is Keras's ``binary_crossentropy`` on probabilities (same clipping).
    """

    def __init__(self, positive_weights: Sequence[float], name: str = "positive_weighted_binary_crossentropy",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.positive_weights = [float(weight) for weight in positive_weights]

    def call(self, y_true, y_pred):
        ops = keras.ops
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.cast(y_true, y_pred.dtype)
        epsilon = keras.config.epsilon()
        y_pred = ops.clip(y_pred, epsilon, 1.0 - epsilon)
        weights = ops.convert_to_tensor(self.positive_weights, dtype=y_pred.dtype)
        losses = -(weights * y_true * ops.log(y_pred) + (1.0 - y_true) * ops.log(1.0 - y_pred))
        return ops.mean(losses, axis=-1)

    def get_config(self):
        return {**super().get_config(), "positive_weights": self.positive_weights}
