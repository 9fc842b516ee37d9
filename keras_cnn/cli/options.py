"""Every command-line option that sets a field of :mod:`keras_cnn.config`, each defined once.

A :class:`ConfigOption` ties one flag to one field, named by its path: ``"training.epochs"``
(``TrainingConfig.epochs``), ``"data.regularization.mixup"`` (a key of
``DataConfig.regularization``), ``"finetune.train_bn"`` (``FineTuneConfig.train_bn``).  A
command applies the option (``@epochs(shown_default="5")``: only what its ``--help`` says the
default is may differ between commands) or a group of them, and turns what click parsed
into config objects with :func:`config_values`, which takes every config option's value
out of the command's keyword arguments, converted for its field and grouped by section.
A value's allowed names come from :mod:`keras_cnn.choices`, the same types the dataclasses
carry.

Adding a training option (say ``--label-noise``) is two steps:

1. a field in its dataclass (``TrainingConfig.label_noise: float | None = None``); its
   ``None`` or default value keeps runs made before it resumable;
2. its option here (``label_noise = ConfigOption("training.label_noise", "--label-noise",
   help=..., type=...)``), listed in :data:`OPTIONS` and put in the group the commands
   that take it use (``training_options``, ``recipe_options`` ...) or applied by them.

``tests/test_config_options.py`` fails until every user-settable field has its one option
and round-trips through ``config.json``.  Options several commands share that set no config
field (``--accept-input-changes``) are defined here once too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import click

from keras_cnn.choices import (AugmentEngine, ClassWeight, DatasetName, Layout, ModelApi, OptimizerName, ResizeMode,
                               ScheduleName, StrategyName, Switch, names)
from keras_cnn.cli.common import Choice, FiniteFloatRange, InputPath, option_group
from keras_cnn.config import (DEFAULT_MAX_IMAGE_PIXELS, LARGEST_PIXEL_LIMIT, MAX_BATCH_SIZE, MAX_EPOCHS, MAX_IMAGE_SIDE,
                              MAX_SEED, MAX_UNITS)

SECTIONS = ("data", "model", "training", "finetune")
REGULARIZATION = "data.regularization"


class ConfigParameter(click.Option):
    """A click option that sets a config field (``config_path``), made only by :class:`ConfigOption`."""

    def __init__(self, *args: Any, config_path: str, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.config_path = config_path


@dataclass(frozen=True)
class ConfigOption:
    """One flag for one config field; calling it gives the click decorator.

    ``help`` says what the option does; a command adds its default (``shown_default=``: the
    text of ``[default: ...]``), a sentence of its own (``note=``) and, rarely, click
    attributes of its own (``required=True``).  ``to_config`` turns the
    parsed value into the field's value (``--image-size 96`` -> ``(96, 96)``).
    """

    path: str
    flag: str
    help: str
    to_config: Callable[[Any], Any] | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The keyword argument click passes: the field's name."""
        return self.path.rsplit(".", 1)[-1]

    def __call__(self, shown_default: str | None = None, note: str | None = None, **overrides: Any) -> Callable:
        text = self.help + (f" {note}" if note else "") + (f" [default: {shown_default}]" if shown_default else "")
        return click.option(self.flag, self.name, cls=ConfigParameter, config_path=self.path, help=text,
                            **{**self.attributes, **overrides})


def _option(path: str, flag: str, help: str, to_config: Callable[[Any], Any] | None = None,
            **attributes: Any) -> ConfigOption:
    return ConfigOption(path, flag, help, to_config, attributes)


def _choice(alias: Any) -> click.Choice:
    return Choice(names(alias))


def _optional_list(values: Any) -> list:
    return list(values or ())


def _square(side: int | None) -> tuple[int, int] | None:
    return (side, side) if side else None


def parse_cache(value: str) -> bool | str:
    """``--cache memory|none|PATH`` -> True / False / a file path prefix."""
    return {"memory": True, "none": False}.get(value, value)


# --------------------------------------------------------------------------- data

dataset = _option("data.dataset", "--dataset", "Train on a keras.datasets dataset (downloaded once, or read from "
                  "--dataset-path).", type=_choice(DatasetName), default=None)
dataset_path = _option("data.dataset_path", "--dataset-path", "The dataset archive on disk: mnist.npz, "
                       "cifar-10-python.tar.gz or cifar-10-batches-py/.", type=InputPath(), default=None)
split = _option("data.split", "--split", "Split CSV (objectId,value,type) from `kcnn split`.",
                type=InputPath(dir_okay=False), default=None)
images = _option("data.images", "--images", "Image folder: a folder per class (DIR/<label>/…), a train/val/test "
                 "tree, or DIR/label.csv; with --split, the folder it names (flat or ab/cd/ sharded).",
                 type=click.Path(exists=True, file_okay=False), default=None)
layout = _option("data.layout", "--layout", "How the images are organised [default: detected]: folders = "
                 "DIR/<label>/…, split-folders = DIR/{train,val,test}/<label>/…, csv = a label CSV (DIR/label.csv).",
                 type=_choice(Layout), default=None)
allow_labels = _option("data.allow_labels", "--allow-label", "Accept LABEL (nan, None, null, NA...) as a real class "
                       "(repeatable); refused by default as it usually means missing data.", _optional_list,
                       multiple=True, metavar="LABEL")
image_size = _option("data.image_size", "--image-size", f"Input side in pixels (32 to {MAX_IMAGE_SIDE}).", _square,
                     type=click.IntRange(32, MAX_IMAGE_SIDE), default=None)
resize_mode = _option("data.resize_mode", "--resize-mode", "How image-folder pictures are fitted to the input size.",
                      type=_choice(ResizeMode), default="stretch", show_default=True)
augment = _option("data.augment", "--augment/--no-augment", "Augment training images in the tf.data pipeline: "
                  "flips, small rotations, shifts and zoom for a transfer base; the Keras book's CIFAR-10 recipe "
                  "(shifts 0.1, horizontal flip) for a from-scratch network.", default=False, show_default=True)
augment_engine = _option("data.augment_engine", "--augment-engine", "layers = Keras preprocessing layers in tf.data; "
                         "legacy = ImageDataGenerator (--dataset only).", type=_choice(AugmentEngine),
                         default="layers", show_default=True)
cache = _option("data.cache", "--cache", "Cache decoded images: memory, none, or a file path prefix (large sets; "
                "writes PREFIX-<part>-<hash>* files).", parse_cache, default="memory", show_default=True)
exclude = _option("data.exclude", "--exclude", "Leave the images FILE lists out of every part: one path under the "
                  "image folder per line (`kcnn doctor`'s exclude.txt); counted in the 'found' line, recorded in a "
                  "run's config.json. The files themselves are not touched.",
                  type=InputPath(dir_okay=False), default=None, metavar="FILE")
relabel = _option("data.relabel", "--relabel", "New labels for the images an objectId,value CSV names (a label "
                  "CSV); counted in the 'found' line, recorded in a run's config.json.",
                  type=InputPath(dir_okay=False), default=None, metavar="CSV")
multi_label = _option("data.multi_label", "--multi-label", "Images may have several labels (or none): a label "
                      "CSV's cells hold labels joined by --label-delimiter (an empty cell = no label), and the same "
                      "picture under several class folders is one image with all their labels. The model gets one "
                      "sigmoid per label and binary cross-entropy; the split is not balanced. A split CSV written "
                      "with it records it (its label column is 'labels'), so later commands need no flag.",
                      is_flag=True)
label_delimiter = _option("data.label_delimiter", "--label-delimiter", "With --multi-label: what joins an image's "
                          "labels in a label CSV cell.", default=";", show_default=True, metavar="TEXT")
skip_bad_images = _option("data.skip_bad_images", "--skip-bad-images", "Train on the readable images and list the "
                          "others in RUN/skipped_images.csv (refused if a label would lose all its images in a part).",
                          is_flag=True)
max_image_pixels = _option("data.max_image_pixels", "--max-image-pixels", "Refuse images of more pixels than this "
                           "(width x height, read from the file's header before anything decodes it); 0: no limit. "
                           "The default is Pillow's limit against decompression bombs.",
                           type=click.IntRange(0, LARGEST_PIXEL_LIMIT), default=DEFAULT_MAX_IMAGE_PIXELS,
                           show_default=True)
validation_split = _option("data.validation_split", "--validation-split", "Fraction of the --dataset training "
                           "images held out for validation (the last ones).",
                           type=FiniteFloatRange(0, 1, max_open=True), default=0.2, show_default=True)
label_smoothing = _option(f"{REGULARIZATION}.label_smoothing", "--label-smoothing",
                          "Train on targets (1 - E) x one-hot + E / classes (Inception-v3's label smoothing). Off so "
                          "the reference recipes stay reproducible; 0.1 gave the best test accuracy of these options "
                          "on the digits benchmark (benchmarks/RESULTS.md).",
                          type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True)
mixup = _option(f"{REGULARIZATION}.mixup", "--mixup", "MixUp: blend image pairs and their labels by Beta(ALPHA, "
                "ALPHA) weights; 0 = off (timm uses 0.8 for ImageNet, 0.2 is milder).",
                type=click.FloatRange(min=0), default=0.0, show_default=True)
cutmix = _option(f"{REGULARIZATION}.cutmix", "--cutmix", "CutMix: paste a box of another image, labels mixed by its "
                 "area, Beta(ALPHA, ALPHA); 0 = off. With --mixup too, each batch gets one of the two.",
                 type=click.FloatRange(0, 1), default=0.0, show_default=True)
randaugment = _option(f"{REGULARIZATION}.randaugment", "--randaugment", "RandAugment: N operations per image (of "
                      "11) at magnitude M of 10, e.g. 2,9 (timm's rand-m9).", default=None, metavar="N,M")
random_erasing = _option(f"{REGULARIZATION}.random_erasing", "--random-erasing", "Erase one random rectangle "
                         "(2-33 % of the image) with noise in this fraction of images.",
                         type=click.FloatRange(0, 1), default=0.0, show_default=True)

# --------------------------------------------------------------------------- model

api = _option("model.api", "--api", "Keras API that assembles the model (same layers either way).",
              type=_choice(ModelApi), default="functional", show_default=True)
weights = _option("model.weights", "--weights", "imagenet (downloaded once into the Keras cache), none (random), "
                  "or a weights file PATH.", default="imagenet", show_default=True)
head_units = _option("model.head_units", "--head-units", "Hidden Dense layer(s) of the head, e.g. --head-units 1024 "
                     "(repeatable) [default: none].", _optional_list, type=click.IntRange(1, MAX_UNITS),
                     multiple=True)
dropout = _option("model.dropout", "--dropout", "Dropout before the classifier.",
                  type=FiniteFloatRange(0, 1, max_open=True), default=0.2, show_default=True)
binary = _option("model.binary", "--binary", "Two labels: one sigmoid unit instead of a 2-way softmax.", is_flag=True)

# --------------------------------------------------------------------------- training

epochs = _option("training.epochs", "--epochs", "Number of epochs.", type=click.IntRange(1, MAX_EPOCHS), default=None)
batch_size = _option("training.batch_size", "--batch-size", "Batch size (global across replicas).",
                     type=click.IntRange(1, MAX_BATCH_SIZE), default=None)
learning_rate = _option("training.learning_rate", "--learning-rate", "Learning rate (the peak of --schedule).",
                        type=FiniteFloatRange(min=0, min_open=True), default=None)
optimizer = _option("training.optimizer", "--optimizer", "Optimizer.", type=_choice(OptimizerName), default=None)
seed = _option("training.seed", "--seed", "Random seed for weights, shuffling and augmentation (0 to 2^32 - 1); the "
               "same seed gives the same run, resumed or not.", type=click.IntRange(0, MAX_SEED), default=1234,
               show_default=True)
class_weight = _option("training.class_weight", "--class-weight", "Weight classes inversely to their frequency in "
                       "the training part.", type=_choice(ClassWeight), default="none", show_default=True)
cache_features = _option("training.cache_features", "--cache-features/--no-cache-features", "Run the frozen base "
                         "once and train the head on its features [default: on unless --augment or a "
                         "regularisation option is given].", default=None)
mixed_precision = _option("training.mixed_precision", "--mixed-precision", "Mixed precision; auto = on for GPUs "
                          "with compute capability >= 7.0, off on CPU.", type=_choice(Switch), default=None)
xla = _option("training.xla", "--xla", "XLA compilation (jit_compile); auto = on with GPUs, off on CPU (slower "
              "there).", type=_choice(Switch), default=None)
strategy = _option("training.strategy", "--strategy", "tf.distribute strategy; auto = mirrored with several GPUs, "
                   "multiworker when TF_CONFIG names several workers. --batch-size is global across replicas.",
                   type=_choice(StrategyName), default=None)
schedule = _option("training.schedule", "--schedule", "How the learning rate moves during the stage, batch by "
                   "batch: constant; cosine (down to 0 by the last batch); onecycle (fastai's fit_one_cycle: up from "
                   "rate/25 to the rate during the warm-up, then down to nearly 0). --learning-rate is the peak. The "
                   "default keeps the reference recipes as published, and in a measurement on scikit-learn's digits "
                   "(benchmarks/schedules.py) cosine and onecycle did not beat it over 12 epochs; they tend to pay "
                   "off on longer runs.", type=_choice(ScheduleName), default="constant", show_default=True)
warmup_epochs = _option("training.warmup_epochs", "--warmup-epochs", "Epochs (fractions allowed) over which the "
                        "rate rises to --learning-rate, batch by batch [default: none; onecycle: a quarter of the "
                        "stage].", type=FiniteFloatRange(min=0), default=None)
ema = _option("training.ema", "--ema", "Keep an exponential moving average of the weights with this decay (e.g. "
              "0.999: about the last 1,000 batches); validation, the saved model, evaluate and export use the "
              "averaged weights [default: off].", type=FiniteFloatRange(0, 1, min_open=True, max_open=True),
              default=None, metavar="DECAY")
early_stopping = _option("training.early_stopping", "--early-stopping", "Stop after PATIENCE epochs without a "
                         "better validation loss; the best epoch's model is the one kept [default: train every "
                         "epoch].", type=click.IntRange(1, MAX_EPOCHS), default=None, metavar="PATIENCE")
lr_mult = _option("training.lr_mult", "--lr-mult", "Discriminative learning rates (fastai's lr_mult): the head "
                  "trains at --learning-rate, the first unfrozen block of the base at --learning-rate/K, the blocks "
                  "between at rates growing geometrically [default: 1, one rate for all]. `kcnn lr-find --run RUN` "
                  "helps pick the rate.", type=FiniteFloatRange(min=1), default=None, metavar="K")

calibrate = _option("training.calibrate", "--calibrate/--no-calibrate", "When the stage ends, fit a temperature on "
                    "the validation part so its probabilities mean what they say (temperature scaling: evaluate, "
                    "export and predict use it; the stage result shows the calibration error before and after). A "
                    "multi-label run gets one temperature for every label and chooses its labels' thresholds "
                    "after it, on the calibrated probabilities. A run without a validation part stays "
                    "uncalibrated and says so.", default=True, show_default=True)

# --------------------------------------------------------------------------- fine-tuning

unfreeze_from = _option("finetune.unfreeze_from", "--unfreeze-from", "First base layer to train: a layer name "
                        "(mixed8), a block prefix (block7a), or all [default: the base's own, see `kcnn models`].",
                        default=None)
train_bn = _option("finetune.train_bn", "--train-bn", "Also train BatchNorm layers (frozen by default, as advised).",
                   is_flag=True)
base_dropout = _option("finetune.base_dropout", "--base-dropout/--no-base-dropout", "While fine-tuning, let dropout "
                       "and stochastic depth (EfficientNet's, ConvNeXt's) act in the unfrozen layers of the base, as "
                       "timm and fastai fine-tune; off, they run in inference mode as in the Keras fine-tuning recipe. "
                       "Frozen layers always run in inference mode.", default=False, show_default=True)
cache_frozen = _option("finetune.cache_frozen", "--cache-frozen/--no-cache-frozen", "Run the frozen layers below "
                       "--unfreeze-from once per image and train only the layers above on their cached output; "
                       "same results, several times faster per epoch [default: on unless stage 1 augmented; where "
                       "the boundary is not a single tensor the whole model trains and a line says why].",
                       default=None)

# --------------------------------------------------------------------------- not config fields

trust_hub = click.option(
    "--trust-hub", is_flag=True,
    help="Let the run's model load the TF Hub module the run records as its base. A SavedModel is a program "
         "that Keras's safe mode cannot vet, so a model with a TF Hub base is refused without this; a model "
         "naming any other module is refused even with it.")
allow_unfinished = click.option(
    "--allow-unfinished", is_flag=True,
    help="Export a run whose last stage has not finished (stopped, or training now): its best model so far. "
         "Recorded in kcnn.json.")

OPTIONS: dict[str, ConfigOption] = {option.path: option for option in (
    dataset, dataset_path, split, images, layout, allow_labels, exclude, relabel, multi_label, label_delimiter,
    image_size, resize_mode, augment, augment_engine, cache, skip_bad_images, max_image_pixels, validation_split,
    label_smoothing, mixup, cutmix, randaugment, random_erasing,
    api, weights, head_units, dropout, binary,
    epochs, batch_size, learning_rate, optimizer, seed, class_weight, cache_features, mixed_precision, xla, strategy,
    schedule, warmup_epochs, ema, early_stopping, lr_mult, calibrate,
    unfreeze_from, train_bn, base_dropout, cache_frozen,
)}
if len({option.name for option in OPTIONS.values()}) != len(OPTIONS):
    raise RuntimeError("two config options would pass the same keyword argument")

# --------------------------------------------------------------------------- shared options that set no config field

accept_input_changes = click.option(
    "--accept-input-changes", is_flag=True,
    help="Go on although the run's images or its split changed since the run recorded them (bytes replaced, "
         "images missing or added, split rows edited): the run's input record (RUN/inputs.json) takes them as "
         "they are now and logs what changed. Without it such changes are refused and listed in "
         "RUN/input_changes.csv.")

# --------------------------------------------------------------------------- groups


def data_source_options(split_default: str, images_note: str | None = None) -> Callable:
    """``--dataset``, ``--dataset-path``, ``--split``, ``--images``: where training images come from."""
    return option_group(dataset(), dataset_path(), split(shown_default=split_default), images(note=images_note))


def transfer_model_options() -> Callable:
    """``--image-size``, ``--weights``, ``--head-units``, ``--dropout``, ``--binary``: a base + new head."""
    return option_group(image_size(shown_default="the base's own, e.g. 224; smaller is faster"), weights(), head_units(),
                        dropout(), binary())


def training_options(epochs_default: str, batch_size_default: str, learning_rate_default: str,
                     optimizer_default: str) -> Callable:
    """``--epochs``, ``--batch-size``, ``--learning-rate``, ``--optimizer``, each with the stage's default."""
    return option_group(epochs(shown_default=epochs_default), batch_size(shown_default=batch_size_default),
                        learning_rate(shown_default=learning_rate_default), optimizer(shown_default=optimizer_default))


def recipe_options() -> Callable:
    """``--schedule``, ``--warmup-epochs``, ``--ema``, ``--early-stopping``: a stage's training recipe."""
    return option_group(schedule(), warmup_epochs(), ema(), early_stopping())


def image_folder_options() -> Callable:
    """How image folders are read and what the loss weighs: class weights, resizing, cache, bad images, layout."""
    return option_group(class_weight(), resize_mode(), cache(), skip_bad_images(),
                        max_image_pixels(note="Such images are bad images (see --skip-bad-images)."), layout(),
                        allow_labels())


def multi_label_options() -> Callable:
    """``--multi-label``, ``--label-delimiter``: images with several labels."""
    return option_group(multi_label(), label_delimiter())


def data_edit_options() -> Callable:
    """``--exclude``, ``--relabel``: recorded changes to the images a command reads."""
    return option_group(exclude(), relabel())


def regularization_options() -> Callable:
    """Training-part regularisation in the tf.data pipeline (validation and test stay untouched)."""
    return option_group(label_smoothing(), mixup(), cutmix(), randaugment(), random_erasing())


def execution_options(shown_default: str) -> Callable:
    """``--mixed-precision``, ``--xla`` and ``--strategy`` (GPU and multi-device switches)."""
    return option_group(mixed_precision(shown_default=shown_default), xla(shown_default=shown_default),
                        strategy(shown_default=shown_default))


# --------------------------------------------------------------------------- values -> config


def config_values(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Take every config option's value out of ``values`` (a command's keyword arguments).

    Returns ``{"data": {...}, "model": {...}, "training": {...}, "finetune": {...}}`` of
    field values, ready for the dataclasses; the regularisation options become
    ``data["regularization"]`` (checked, ``None`` when all are off).
    """
    sections: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
    regularization: dict[str, Any] = {}
    for option in OPTIONS.values():
        if option.name not in values:
            continue
        value = values.pop(option.name)
        if option.to_config is not None:
            value = option.to_config(value)
        if option.path.startswith(f"{REGULARIZATION}."):
            regularization[option.name] = value
        else:
            sections[option.path.split(".", 1)[0]][option.name] = value
    if regularization:
        sections["data"]["regularization"] = regularization_config(regularization)
    return sections


def regularization_config(values: dict[str, Any]) -> dict[str, Any] | None:
    """The ``DataConfig.regularization`` dict of the regularisation options (checked), None when all are off."""
    from keras_cnn.data.regularize import RegularizationSpec

    spec = RegularizationSpec(**values)
    return None if spec.is_identity else spec.to_dict()
