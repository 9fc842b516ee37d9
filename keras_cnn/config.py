"""Options of a run, as dataclasses with a JSON round trip (``config.json`` in the run).

The CLI collects options into these objects and passes them to pure functions; the same
objects are written into the run directory so a result can be traced and repeated.
``None`` means "use the model's reference default"; the training code resolves it and the
resolved value is what gets written.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from keras_cnn.errors import UserError


@dataclass
class DataConfig:
    """Where the images come from and how they are prepared."""

    dataset: str | None = None            # "mnist" | "cifar10" (keras.datasets) ...
    dataset_path: str | None = None       # ... or the same archive on disk
    split: str | None = None              # split CSV (objectId,value,type) ...
    images: str | None = None             # ... and its image folder; alone: split it into RUN/split.csv
    layout: str | None = None             # how --images is organised: "csv" | "folders" | "split-folders"; None = detect
    allow_labels: list[str] = field(default_factory=list)   # labels that look like missing data but are classes
    exclude: str | None = None            # file of objectIds left out of every part (kcnn doctor's exclude.txt)
    relabel: str | None = None            # objectId,value CSV whose labels replace the read ones
    image_size: tuple[int, int] | None = None
    channels: int | None = None
    resize_mode: str = "stretch"
    augment: bool = False
    augment_engine: str = "layers"        # "layers" (tf.data + preprocessing layers) | "legacy"
    augmentation: dict[str, Any] | None = None   # ImageDataGenerator-style ranges
    # Training-part regularisation (keras_cnn.data.regularize.RegularizationSpec as a dict):
    # label_smoothing, mixup, cutmix, randaugment [N, M], random_erasing; None = none.
    regularization: dict[str, Any] | None = None
    cache: bool | str = True
    skip_bad_images: bool = False
    validation_split: float = 0.2         # only for array datasets without a validation part


@dataclass
class ModelConfig:
    """What network is trained."""

    kind: str = "scratch"                 # "scratch" | "transfer"
    name: str = ""                        # architecture or base name (e.g. "lenet", "efficientnet_b0", "hub:...")
    api: str = "functional"
    num_classes: int | None = None
    input_shape: tuple[int, int, int] | None = None
    weights: str | None = None            # "imagenet" | "none" | PATH (transfer bases)
    head_units: list[int] = field(default_factory=list)
    dropout: float = 0.2
    binary: bool = False                  # one sigmoid unit for two classes


@dataclass
class TrainingConfig:
    """How it is trained."""

    epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    optimizer: str | None = None
    loss: str | None = None
    seed: int = 1234
    class_weight: str = "none"            # "none" | "balanced"
    cache_features: bool | None = None    # transfer stage 1; None = on when not augmenting
    mixed_precision: str = "auto"         # "auto" | "on" | "off"
    xla: str = "auto"                     # "auto" | "on" | "off"
    strategy: str = "auto"                # "auto" | "default" | "mirrored" | "multiworker"
    schedule: str = "constant"            # learning-rate curve: "constant" | "cosine" | "onecycle"
    warmup_epochs: float | None = None    # warm-up length (per step, fractions allowed); None = the schedule's
    ema: float | None = None              # decay of the weight average the saved model uses; None = off
    early_stopping: int | None = None     # patience in epochs; None = train every epoch
    lr_mult: float | None = None          # fine-tuning: head rate / first unfrozen block's rate; None = 1


@dataclass
class FineTuneConfig:
    """Stage 2 of transfer learning (``kcnn finetune``); ``None`` = the default, or stage 1's value.

    Defaults: the base's own unfreeze point and fine-tuning learning rate (see
    ``kcnn models``), 5 epochs, Adam, stage 1's batch size and execution options, the
    frozen layers cached unless stage 1 augmented.
    """

    unfreeze_from: str | None = None      # a layer name, a block prefix, or "all"
    train_bn: bool = False
    epochs: int | None = None
    learning_rate: float | None = None
    optimizer: str | None = None
    batch_size: int | None = None
    mixed_precision: str | None = None
    xla: str | None = None
    strategy: str | None = None
    # The training recipe of stage 2 (not taken from stage 1: the defaults, as for the optimizer).
    schedule: str = "constant"
    warmup_epochs: float | None = None
    ema: float | None = None
    early_stopping: int | None = None
    lr_mult: float | None = None          # head rate / first unfrozen block's rate (fastai's lr_mult)
    cache_frozen: bool | None = None      # None = cache the frozen layers unless stage 1 augmented


@dataclass
class RunConfig:
    """Everything that defines one run; ``config.json`` is its ``to_dict()``."""

    command: str
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    labels: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> "RunConfig":
        """Rebuild from ``config.json``; unknown keys (e.g. ``versions``) are ignored."""

        def build(kind, values):
            names = {item.name for item in dataclasses.fields(kind)}
            return kind(**{key: value for key, value in (values or {}).items() if key in names})

        model = build(ModelConfig, payload.get("model"))
        if model.input_shape is not None:
            model.input_shape = tuple(model.input_shape)
        data = build(DataConfig, payload.get("data"))
        if data.image_size is not None:
            data.image_size = tuple(data.image_size)
        return cls(
            command=payload.get("command", ""),
            model=model,
            data=data,
            training=build(TrainingConfig, payload.get("training")),
            labels=list(payload.get("labels", [])),
            extra=dict(payload.get("extra", {})),
        )


# Option values checked before anything is written: (config section, field, option name).
FINITE_FLOATS = [("training", "learning_rate", "--learning-rate"), ("model", "dropout", "--dropout"),
                 ("data", "validation_split", "--validation-split"), ("training", "warmup_epochs", "--warmup-epochs"),
                 ("training", "ema", "--ema"), ("training", "lr_mult", "--lr-mult")]
POSITIVE_INTEGERS = [("training", "epochs", "--epochs"), ("training", "batch_size", "--batch-size")]


def validate_config(config: RunConfig | FineTuneConfig) -> None:
    """Refuse option values no run can use (NaN or infinite rates, zero epochs...) with one line.

    Called by every training routine before it touches the run folder, so a refused value
    never leaves a changed ``config.json`` behind.
    """
    def value_of(section: str, name: str):
        holder = config if isinstance(config, FineTuneConfig) else getattr(config, section)
        return getattr(holder, name, None)

    for section, name, option in FINITE_FLOATS:
        value = value_of(section, name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UserError(f"{option} must be a finite number, received: {value}")
        if name == "learning_rate" and value <= 0:
            raise UserError(f"{option} must be greater than 0, received: {value}")
        if name in ("dropout", "validation_split") and not 0 <= value < 1:
            raise UserError(f"{option} must be in [0, 1), received: {value}")
    for section, name, option in POSITIVE_INTEGERS:
        value = value_of(section, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UserError(f"{option} must be a whole number of at least 1, received: {value}")
    if isinstance(config, RunConfig) and config.data.layout and config.data.split:
        raise UserError("--layout says how to read --images when there is no --split; a split CSV names its files")
    if isinstance(config, RunConfig) and config.data.dataset and (config.data.exclude or config.data.relabel):
        raise UserError("--exclude and --relabel work on image folders (--images), not on --dataset")
