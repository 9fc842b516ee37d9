"""What an export needs to know about a run's model beyond its weights, checked against the run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from keras_cnn.config import RunConfig
from keras_cnn.errors import UserError


@dataclass(frozen=True)
class ModelSpec:
    """What an export needs to know about the model beyond its weights."""

    labels: tuple[str, ...]
    image_size: tuple[int, int]
    channels: int
    resize_mode: str
    binary: bool              # one sigmoid unit: probabilities are [1 - p, p]
    tta_views: tuple[str, ...] = ()   # views of the serving_tta signature (none: no such signature)
    temperature: float | None = None  # the run's calibration, already inside the exported model
    # The model opened up (keras_cnn.models.opened.OpenedModel) when it has a feature map to
    # explain: the SavedModel then gets the serving_explain signature.
    explainer: Any = field(default=None, compare=False, repr=False)
    multi_label: bool = False         # one sigmoid per label; a label is predicted at or above its threshold
    thresholds: tuple[float, ...] = ()   # multi-label: each label's threshold, labels.txt order


def model_spec(model, labels: list[str], config: RunConfig, thresholds=None) -> ModelSpec:
    """Check the model against the run's labels and config and collect what the export needs.

    ``thresholds``: a multi-label run's per-label thresholds (labels.txt order).
    """
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
    multi_label = bool(config.data.multi_label)
    binary = outputs == 1 and not multi_label
    if (binary and len(labels) != 2) or (not binary and outputs != len(labels)):
        raise UserError(f"the model has {outputs} output unit(s) but labels.txt has {len(labels)} labels: {labels}")
    chosen = tuple(float(value) for value in thresholds) if multi_label and thresholds is not None else ()
    return ModelSpec(tuple(labels), image_size, channels, config.data.resize_mode, binary, multi_label=multi_label,
                     thresholds=chosen)
