"""Feature vectors of the images, from a frozen base or from a trained run.

- ``--base NAME``: the pooled output of the base, frozen, as ``kcnn transfer`` builds it
  (``--weights``, ``--image-size``); the head ``create_model`` puts on top is cut off by
  :func:`keras_cnn.models.transfer.cut_at_features`.
- ``--run RUN``: the input of the run model's last layer (its penultimate layer), with the
  run's image size, channels and resize mode.

Features of a base with random weights say nothing about labels or outliers; the
:class:`FeatureSource` says so (``meaningful``) and doctor skips those findings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from keras_cnn.config import RunConfig
from keras_cnn.runs import RunDirectory


@dataclass
class FeatureSource:
    """A model mapping images (float 0..255) to vectors, and how to feed it."""

    extractor: object          # keras.Model
    image_size: tuple[int, int]
    channels: int
    resize_mode: str
    meaningful: bool           # False for a base with random weights
    description: str


def base_feature_source(base: str, weights: str = "imagenet", image_size: int | None = None) -> FeatureSource:
    """The frozen base ``base`` (pooled output), as ``kcnn transfer --base`` would build it."""
    from keras_cnn.models.factory import create_model
    from keras_cnn.models.transfer import cut_at_features

    model = create_model(base, 2, image_size=image_size, weights=weights)
    extractor, _head = cut_at_features(model)
    random = str(weights).lower() == "none"
    return FeatureSource(extractor=extractor, image_size=tuple(int(side) for side in model.input_shape[1:3]),
                         channels=3, resize_mode="stretch", meaningful=not random,
                         description=f"{base} ({'random weights' if random else os.fspath(weights)})")


def run_feature_source(run_dir: str | os.PathLike, trust_hub: bool = False) -> FeatureSource:
    """The penultimate layer of the model in ``run_dir``, fed as the run was trained (``trust_hub``:
    the model may load the TF Hub module the run records as its base)."""
    from keras_cnn.models.features import penultimate_model
    from keras_cnn.models.loading import hub_base_of, load_model

    run = RunDirectory(run_dir).require()
    config = RunConfig.from_dict(run.read_config())
    model = load_model(run.model_path, trust_hub=hub_base_of(config.model.name) if trust_hub else None)
    height, width, channels = (int(size) for size in model.input_shape[1:4])
    # A frozen random base under a trained head: the head's input is still random features.
    random = (config.model.kind == "transfer" and str(config.model.weights).lower() == "none"
              and "finetune" not in config.extra.get("stages", {}))
    return FeatureSource(extractor=penultimate_model(model), image_size=(height, width), channels=channels,
                         resize_mode=config.data.resize_mode, meaningful=not random,
                         description=f"the penultimate layer of {run_dir} ({config.model.name})")


def image_features(source: FeatureSource, table: pd.DataFrame, images: str, batch_size: int = 64) -> np.ndarray:
    """One feature row per image of ``table`` (objectId, value, type), in order (float32)."""
    from keras_cnn.data.pipeline import make_dataset
    from keras_cnn.models.features import extract_features

    frame = table[["objectId", "value", "type"]].reset_index(drop=True)
    dataset = make_dataset(frame, images, "all", source.image_size, batch_size, channels=source.channels,
                           cache=False, shuffle=False, resize_mode=source.resize_mode)
    features, _labels = extract_features(source.extractor, dataset, len(frame), description="features")
    return features.reshape(len(features), -1)
