"""Options of a run, as dataclasses with a JSON round trip (``config.json`` in the run).

The CLI collects options into these objects and passes them to pure functions; the same
objects are written into the run directory so a result can be traced and repeated.
``None`` means "use the model's reference default"; the training code resolves it and the
resolved value is what gets written.  A field whose value is one of a few names has its
type in :mod:`keras_cnn.choices`.

Adding an option: one field here (a default of ``None``, or the value runs had before it
existed, keeps older runs resumable) and one command-line option in
:mod:`keras_cnn.cli.options`; fine-tuning takes a new training field from its own options
by itself (see ``keras_cnn.train.two_stage``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from keras_cnn.choices import (AugmentEngine, ClassWeight, DatasetName, Layout, ModelApi, ModelKind, OptimizerName,
                               ResizeMode, ScheduleName, StrategyName, Switch)
from keras_cnn.data.pixel_limit import DEFAULT_MAX_IMAGE_PIXELS, LARGEST_PIXEL_LIMIT
from keras_cnn.errors import UserError

# The largest values options take: a few extra digits typed by mistake are refused at once,
# not after minutes of work and an out-of-memory failure.
MAX_IMAGE_SIDE = 4096          # pixels; a batch of 32 such RGB images is already 6 GB of float32
MAX_SEED = 2**32 - 1           # numpy's (and so Keras's) seeds are 32-bit
MAX_BATCH_SIZE = 65_536
MAX_EPOCHS = 100_000
MAX_UNITS = 65_536             # Dense units of a head layer
MAX_SAMPLE_PER_CLASS = 100_000   # images per class of the generated sample set


@dataclass
class DataConfig:
    """Where the images come from and how they are prepared."""

    dataset: DatasetName | None = None    # a keras.datasets dataset ...
    dataset_path: str | None = None       # ... or the same archive on disk
    split: str | None = None              # split CSV (objectId,value,type) ...
    images: str | None = None             # ... and its image folder; alone: split it into RUN/split.csv
    layout: Layout | None = None          # how --images is organised; None = detect
    allow_labels: list[str] = field(default_factory=list)   # labels that look like missing data but are classes
    exclude: str | None = None            # file of objectIds left out of every part (kcnn doctor's exclude.txt)
    relabel: str | None = None            # objectId,value CSV whose labels replace the read ones
    multi_label: bool = False             # images have any number of labels (sigmoid per label)
    label_delimiter: str = ";"            # joins an image's labels in a label CSV cell (multi-label)
    image_size: tuple[int, int] | None = None
    channels: int | None = None
    resize_mode: ResizeMode = "stretch"
    augment: bool = False
    augment_engine: AugmentEngine = "layers"
    augmentation: dict[str, Any] | None = None   # ImageDataGenerator-style ranges
    # Training-part regularisation (keras_cnn.data.regularize.RegularizationSpec as a dict):
    # label_smoothing, mixup, cutmix, randaugment [N, M], random_erasing; None = none.
    regularization: dict[str, Any] | None = None
    cache: bool | str = True
    skip_bad_images: bool = False
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS   # larger images are bad images (0: no limit)
    validation_split: float = 0.2         # only for array datasets without a validation part


@dataclass
class ModelConfig:
    """What network is trained."""

    kind: ModelKind = "scratch"
    name: str = ""                        # architecture or base name (e.g. "lenet", "efficientnet_b0", "hub:...")
    api: ModelApi = "functional"
    num_classes: int | None = None
    input_shape: tuple[int, int, int] | None = None
    weights: str | None = None            # "imagenet" | "none" | PATH (transfer bases)
    head_units: list[int] = field(default_factory=list)
    dropout: float = 0.2
    binary: bool = False                  # one sigmoid unit for two classes


@dataclass
class TrainingConfig:
    """How one training stage trains; ``None`` = the stage's default.

    The first stage of a run (``train``, ``transfer``) fills ``None`` from its recipe (the
    architecture's, or the head's); stage 2 (``finetune``, :class:`FineTuneConfig`) from
    its own defaults and stage 1's run (see ``keras_cnn.train.two_stage``).
    """

    epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    optimizer: OptimizerName | None = None
    loss: str | None = None
    seed: int = 1234
    class_weight: ClassWeight = "none"
    cache_features: bool | None = None    # transfer stage 1; None = on when not augmenting
    mixed_precision: Switch | None = None   # None = auto (stage 2: stage 1's)
    xla: Switch | None = None               # None = auto (stage 2: stage 1's)
    strategy: StrategyName | None = None    # None = auto (stage 2: stage 1's)
    schedule: ScheduleName = "constant"   # learning-rate curve
    warmup_epochs: float | None = None    # warm-up length (per step, fractions allowed); None = the schedule's
    ema: float | None = None              # decay of the weight average the saved model uses; None = off
    early_stopping: int | None = None     # patience in epochs; None = train every epoch
    lr_mult: float | None = None          # fine-tuning: head rate / first unfrozen block's rate; None = 1
    calibrate: bool = True                # fit a temperature on the validation part when the stage ends


@dataclass
class FineTuneConfig:
    """Stage 2 of transfer learning (``kcnn finetune``): what only fine-tuning has, and how it trains.

    ``training`` is stage 2's :class:`TrainingConfig`; its ``None`` fields take the
    defaults of stage 2 (5 epochs, Adam, the base's fine-tuning learning rate, see ``kcnn
    models``) or, for the batch size and the execution options, stage 1's.  The seed, the
    class weights and the loss are always stage 1's.
    """

    unfreeze_from: str | None = None      # a layer name, a block prefix, or "all"; None = the base's own
    train_bn: bool = False
    # Dropout and stochastic depth in the unfrozen layers of the base act while training
    # (frozen layers never do); off = the keras-io recipe, on = timm's and fastai's.
    base_dropout: bool = False
    cache_frozen: bool | None = None      # None = cache the frozen layers unless stage 1 augmented
    training: TrainingConfig = field(default_factory=TrainingConfig)


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
# (section, field, option, largest value): whole numbers from 1 to the largest.
POSITIVE_INTEGERS = [("training", "epochs", "--epochs", MAX_EPOCHS),
                     ("training", "batch_size", "--batch-size", MAX_BATCH_SIZE),
                     ("training", "early_stopping", "--early-stopping", MAX_EPOCHS)]


def validate_config(config: RunConfig | FineTuneConfig) -> None:
    """Refuse option values no run can use (NaN or infinite rates, zero epochs...) with one line.

    Called by every training routine before it touches the run folder, so a refused value
    never leaves a changed ``config.json`` behind.
    """
    sections = vars(config) if isinstance(config, RunConfig) else {"training": config.training}

    def value_of(section: str, name: str):
        return getattr(sections.get(section), name, None)

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
    for section, name, option, largest in POSITIVE_INTEGERS:
        _check_whole_number(option, value_of(section, name), 1, largest)
    _check_whole_number("--seed", value_of("training", "seed"), 0, MAX_SEED)
    if not isinstance(config, RunConfig):
        return
    for units in config.model.head_units or ():
        _check_whole_number("--head-units", units, 1, MAX_UNITS)
    for side in config.data.image_size or ():
        _check_whole_number("--image-size", side, 1, MAX_IMAGE_SIDE)
    _check_whole_number("--max-image-pixels", config.data.max_image_pixels, 0, LARGEST_PIXEL_LIMIT)
    if config.data.layout and config.data.split:
        raise UserError("--layout says how to read --images when there is no --split; a split CSV names its files")
    if config.data.dataset and (config.data.exclude or config.data.relabel):
        raise UserError("--exclude and --relabel work on image folders (--images), not on --dataset")
    if config.data.multi_label:
        if config.model.binary:
            raise UserError("--binary is one sigmoid unit for two classes; --multi-label already gives one "
                            "sigmoid per label: drop --binary")
        if config.data.dataset:
            raise UserError("--multi-label works on image folders and label CSVs (--images), not on --dataset")
        if not config.data.label_delimiter:
            raise UserError("--label-delimiter must be at least one character")


def _check_whole_number(option: str, value: Any, smallest: int, largest: int | None) -> None:
    """``value`` (None: not given) must be a whole number from ``smallest`` to ``largest`` (None: no limit)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < smallest \
            or (largest is not None and value > largest):
        bound = f"from {smallest:,} to {largest:,}" if largest is not None else f"of at least {smallest:,}"
        raise UserError(f"{option} must be a whole number {bound}, received: {value}")
