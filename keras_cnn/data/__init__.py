"""Data: the SHA-1 split, tf.data pipelines, augmentation, datasets and sample images."""


def make_dataset(*args, **kwargs):
    """See :func:`keras_cnn.data.pipeline.make_dataset` (imported lazily: it needs TensorFlow)."""
    from keras_cnn.data.pipeline import make_dataset as _make_dataset

    return _make_dataset(*args, **kwargs)
