"""The from-scratch zoo: the Keras book's LeNet and CIFAR-10 nets and networks from blog posts.

Each architecture is written once, as a function returning its layers in order; the
Sequential builder stacks them and the functional builder calls them one after another,
so both APIs always have identical layers and the published parameter counts.
``ARCHITECTURES`` holds every architecture's metadata (default input shape, output
activation, reference optimizer, loss, batch size, epochs): the CLI, the trainer and
``kcnn models`` read that table instead of branching on names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import keras
from keras import layers

from keras_cnn.errors import UserError
from keras_cnn.messages import did_you_mean
from keras_cnn.models.parameters import parameter_counts
from keras_cnn.models.specs import check_api


def _conv(filters: int, padding: str = "same", activation: str | None = "relu", kernel: int = 3, name=None):
    return layers.Conv2D(filters, kernel, padding=padding, activation=activation, name=name)


def lenet_layers(num_classes: int, multi_label: bool = False) -> list[layers.Layer]:
    """LeNet as in the Keras book (chapter 3): two conv/pool stages, Dense 500."""
    return [
        layers.Conv2D(20, 5, padding="same", activation="relu", name="conv1"),
        layers.MaxPooling2D(2, name="pool1"),
        layers.Conv2D(50, 5, padding="same", activation="relu", name="conv2"),
        layers.MaxPooling2D(2, name="pool2"),
        layers.Flatten(name="flatten"),
        layers.Dense(500, activation="relu", name="dense1"),
        *output_layers(num_classes, "softmax", multi_label),
    ]


def cifar10_net_layers(num_classes: int, multi_label: bool = False) -> list[layers.Layer]:
    """The Keras book's first CIFAR-10 network."""
    return [
        _conv(32, name="conv1"),
        layers.MaxPooling2D(2, name="pool1"),
        layers.Dropout(0.25, name="dropout1"),
        _conv(64, name="conv2"),
        layers.MaxPooling2D(2, name="pool2"),
        layers.Flatten(name="flatten"),
        layers.Dense(512, activation="relu", name="dense1"),
        layers.Dropout(0.5, name="dropout2"),
        *output_layers(num_classes, "softmax", multi_label),
    ]


def cifar10_deep_net_layers(num_classes: int, multi_label: bool = False) -> list[layers.Layer]:
    """The Keras book's deeper CIFAR-10 network (same/valid conv pairs)."""
    return [
        _conv(32, name="conv1"),
        _conv(32, padding="valid", name="conv2"),
        layers.MaxPooling2D(2, name="pool1"),
        layers.Dropout(0.25, name="dropout1"),
        _conv(64, name="conv3"),
        _conv(64, padding="valid", name="conv4"),
        layers.MaxPooling2D(2, name="pool2"),
        layers.Dropout(0.25, name="dropout2"),
        layers.Flatten(name="flatten"),
        layers.Dense(512, activation="relu", name="dense1"),
        layers.Dropout(0.5, name="dropout3"),
        *output_layers(num_classes, "softmax", multi_label),
    ]


def lenet5_bn_layers(num_classes: int, multi_label: bool = False) -> list[layers.Layer]:
    """The blog post's LeNet-5 with BatchNorm after each convolution (valid 5x5 convs)."""
    return [
        layers.Conv2D(6, 5, padding="valid", name="conv1"),
        layers.BatchNormalization(name="bn1"),
        layers.ReLU(name="relu1"),
        layers.MaxPooling2D(2, name="pool1"),
        layers.Conv2D(16, 5, padding="valid", name="conv2"),
        layers.BatchNormalization(name="bn2"),
        layers.ReLU(name="relu2"),
        layers.MaxPooling2D(2, name="pool2"),
        layers.Flatten(name="flatten"),
        layers.Dense(120, activation="relu", name="dense1"),
        layers.Dense(84, activation="relu", name="dense2"),
        # The original PyTorch LeNet-5 returns logits for CrossEntropyLoss; softmax + cross-entropy is the same
        # objective and gives the probabilities every kcnn model outputs.
        *output_layers(num_classes, "softmax", multi_label),
    ]


def smile_cnn_layers(num_classes: int, multi_label: bool = False) -> list[layers.Layer]:
    """The CelebA smile classifier: four conv stages, global 8x8 average pool."""
    return [
        _conv(32, name="conv1"),
        layers.MaxPooling2D(2, name="pool1"),
        layers.Dropout(0.5, name="dropout1"),
        _conv(64, name="conv2"),
        layers.MaxPooling2D(2, name="pool2"),
        layers.Dropout(0.5, name="dropout2"),
        _conv(128, name="conv3"),
        layers.MaxPooling2D(2, name="pool3"),
        _conv(256, name="conv4"),
        layers.AveragePooling2D(8, name="avgpool"),
        layers.Flatten(name="flatten"),
        *output_layers(num_classes, "sigmoid", multi_label),
    ]


def mini_alexnet_layers(num_classes: int, multi_label: bool = False) -> list[layers.Layer]:
    """The blog post's "mini AlexNet" for 32x32 images (filter counts are ours)."""
    return [
        _conv(48, activation=None, name="conv1"),
        layers.BatchNormalization(name="bn1"),
        layers.ReLU(name="relu1"),
        layers.MaxPooling2D(2, name="pool1"),
        _conv(128, activation=None, name="conv2"),
        layers.BatchNormalization(name="bn2"),
        layers.ReLU(name="relu2"),
        layers.MaxPooling2D(2, name="pool2"),
        _conv(192, name="conv3"),
        _conv(192, name="conv4"),
        _conv(128, name="conv5"),
        layers.MaxPooling2D(2, name="pool3"),
        layers.Flatten(name="flatten"),
        layers.Dense(512, activation="relu", name="dense1"),
        layers.Dropout(0.5, name="dropout1"),
        layers.Dense(512, activation="relu", name="dense2"),
        layers.Dropout(0.5, name="dropout2"),
        *output_layers(num_classes, "softmax", multi_label),
    ]


def output_layers(num_classes: int, activation: str, multi_label: bool = False) -> list[layers.Layer]:
    """The classifier layer: one sigmoid unit for a two-class sigmoid net, else N-way softmax;
    ``multi_label``: one sigmoid unit per label (any number of labels per image, at least one label).

    ``dtype="float32"`` keeps the probabilities in float32 under mixed precision.
    """
    if multi_label:
        return [multi_label_output(num_classes)]
    if num_classes < 2:
        raise UserError(f"a classifier needs at least 2 classes, received: {num_classes}")
    if activation == "sigmoid" and num_classes == 2:
        return [layers.Dense(1, activation="sigmoid", dtype="float32", name="predictions")]
    return [layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")]


def multi_label_output(num_labels: int, **settings) -> layers.Dense:
    """The multi-label classifier: one independent sigmoid unit per label, in float32, named ``predictions``."""
    if num_labels < 1:
        raise UserError(f"a multi-label classifier needs at least 1 label, received: {num_labels}")
    return layers.Dense(num_labels, activation="sigmoid", dtype="float32", name="predictions", **settings)


@dataclass(frozen=True)
class ArchitectureSpec:
    """Metadata of one from-scratch architecture: everything but its layers' details."""

    name: str
    layers: Callable[[int, bool], list[layers.Layer]]   # (classes, multi_label) -> the layers in order
    input_shape: tuple[int, int, int]
    num_classes: int
    output_activation: str
    optimizer: str
    learning_rate: float
    batch_size: int
    epochs: int
    source: str
    augmented_epochs: int | None = None   # the reference recipe's epochs when augmenting

    def loss(self, num_classes: int, multi_label: bool = False) -> str:
        """The loss matching the output layer for ``num_classes`` (labels are class indices; multi-label:
        multi-hot targets and one sigmoid per label)."""
        if multi_label or (self.output_activation == "sigmoid" and num_classes == 2):
            return "binary_crossentropy"
        return "sparse_categorical_crossentropy"


ARCHITECTURES: dict[str, ArchitectureSpec] = {
    spec.name: spec
    for spec in (
        ArchitectureSpec("lenet", lenet_layers, (28, 28, 1), 10, "softmax", "adam", 1e-3, 128, 12,
                         "Keras book ch. 3 (MNIST)"),
        ArchitectureSpec("cifar10_net", cifar10_net_layers, (32, 32, 3), 10, "softmax", "rmsprop", 1e-3, 128, 12,
                         "Keras book ch. 3 (CIFAR-10)"),
        ArchitectureSpec("cifar10_deep_net", cifar10_deep_net_layers, (32, 32, 3), 10, "softmax", "rmsprop", 1e-3,
                         128, 12, "Keras book ch. 3 (CIFAR-10, deeper; 15 epochs with augmentation)",
                         augmented_epochs=15),
        ArchitectureSpec("lenet5_bn", lenet5_bn_layers, (32, 32, 3), 10, "softmax", "adam", 1e-2, 64, 10,
                         "blog post: LeNet-5 + BatchNorm (CIFAR-10)"),
        ArchitectureSpec("smile_cnn", smile_cnn_layers, (64, 64, 3), 2, "sigmoid", "adam", 1e-3, 32, 30,
                         "CelebA smile classifier"),
        ArchitectureSpec("mini_alexnet", mini_alexnet_layers, (32, 32, 3), 10, "softmax", "adam", 1e-3, 64, 20,
                         "blog post: mini AlexNet (CIFAR-10)"),
    )
}


def get_architecture(name: str) -> ArchitectureSpec:
    """Look up an architecture, with a one-line error listing the known names."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise UserError(
            f"unknown architecture {name!r}{did_you_mean(name, ARCHITECTURES)} (the architectures: "
            f"{', '.join(ARCHITECTURES)})"
        ) from None


def build_sequential(name: str, input_shape=None, num_classes: int | None = None,
                     multi_label: bool = False) -> keras.Sequential:
    """Build architecture ``name`` as a ``keras.Sequential`` (uncompiled)."""
    spec = get_architecture(name)
    input_shape = tuple(input_shape or spec.input_shape)
    num_classes = num_classes or spec.num_classes
    return keras.Sequential([keras.Input(shape=input_shape, name="image"), *spec.layers(num_classes, multi_label)],
                            name=name)


def build_functional(name: str, input_shape=None, num_classes: int | None = None,
                     multi_label: bool = False) -> keras.Model:
    """Build architecture ``name`` with the functional API (same layers as the Sequential one)."""
    spec = get_architecture(name)
    input_shape = tuple(input_shape or spec.input_shape)
    num_classes = num_classes or spec.num_classes
    inputs = keras.Input(shape=input_shape, name="image")
    outputs = inputs
    for layer in spec.layers(num_classes, multi_label):
        outputs = layer(outputs)
    return keras.Model(inputs, outputs, name=name)


BUILDERS = {"sequential": build_sequential, "functional": build_functional}


def build_architecture(name: str, input_shape=None, num_classes: int | None = None,
                       api: str = "functional", multi_label: bool = False) -> keras.Model:
    """Build ``name`` with the chosen ``api`` ("functional" or "sequential"); uncompiled.

    ``multi_label``: one sigmoid unit per label in place of the reference output layer.
    """
    return BUILDERS[check_api(api)](name, input_shape, num_classes, multi_label)


def with_input_scaling(model: keras.Model, scale: float = 1 / 255.0) -> keras.Model:
    """Wrap a built architecture so it takes raw 0..255 pixels (kcnn's model contract).

    The Keras book scales images to 0..1 before training; putting that scaling in the
    model means exports and ``kcnn predict`` take raw images.  The architecture stays one
    nested layer, so its own summary and counts are untouched.
    """
    inputs = keras.Input(shape=model.input_shape[1:], name="pixels")
    scaled = layers.Rescaling(scale, name="scale_to_unit")(inputs)
    return keras.Model(inputs, model(scaled), name=f"{model.name}_classifier")


def describe_architectures() -> list[dict]:
    """One row per architecture for ``kcnn models`` (builds each model once, small and fast)."""
    rows = []
    for spec in ARCHITECTURES.values():
        counts = parameter_counts(build_functional(spec.name))
        rows.append({
            "name": spec.name, "kind": "scratch", "input_shape": list(spec.input_shape),
            "params": counts["total_params"], "trainable_params": counts["trainable_params"],
            "num_classes": spec.num_classes, "optimizer": spec.optimizer,
            "learning_rate": spec.learning_rate, "batch_size": spec.batch_size,
            "epochs": spec.epochs, "source": spec.source,
        })
    return rows
