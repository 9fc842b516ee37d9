"""The options whose value is one of a few names: each set of names, once, as a type.

The dataclasses of :mod:`keras_cnn.config` annotate their fields with these aliases, the
command line offers exactly these names (``click.Choice(names(Alias))``), and the registry
that implements each set (its comment names it) has one entry per name; a test holds the
three together, so a registry cannot gain a name the command line does not offer.

Adding a choice: add the name to its alias here and its entry to the registry.
This module imports nothing, so ``kcnn --help`` can read it without TensorFlow.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

DatasetName = Literal["mnist", "cifar10"]                           # data.datasets.LOADERS
Layout = Literal["csv", "folders", "split-folders"]                 # data.collection: how --images is organised
ResizeMode = Literal["stretch", "pad", "crop"]                      # data.images.resize_image
PixelType = Literal["uint8", "float32"]                             # data.pipeline: the dtype of image batches
AugmentEngine = Literal["layers", "legacy"]                         # train.stage_data (legacy: ImageDataGenerator)
Part = Literal["train", "validation", "test"]                       # data.split: the parts of a split
EvaluationPart = Literal["test", "validation"]                      # the parts `kcnn evaluate --subset` reports on
ModelKind = Literal["scratch", "transfer"]
ModelApi = Literal["functional", "sequential"]                      # models.scratch.BUILDERS
OptimizerName = Literal["adam", "sgd", "rmsprop", "adamw"]          # optimizers.OPTIMIZERS
ScheduleName = Literal["constant", "cosine", "onecycle"]            # train.schedules.SCHEDULES
ClassWeight = Literal["none", "balanced"]                           # train.stage_data.balanced_class_weights
Switch = Literal["auto", "on", "off"]                               # --mixed-precision, --xla (train.devices)
StrategyName = Literal["auto", "default", "mirrored", "multiworker"]   # train.devices.STRATEGY_BUILDERS + auto
ExportFormatName = Literal["saved_model", "onnx", "litert"]         # export.EXPORT_FORMATS
QuantizationMode = Literal["dynamic", "float16", "int8"]            # export.quantize.converter_options


def names(alias: Any) -> tuple[str, ...]:
    """The names a ``Literal`` alias allows, in their declared order."""
    return tuple(get_args(alias))
