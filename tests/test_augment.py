"""Augmentation specs, their Keras layers, and the legacy ImageDataGenerator (keras_cnn.data.augment)."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from keras_cnn.data.augment import (
    DEFAULT_IMAGE_AUGMENTATION,
    REFERENCE_CIFAR10_AUGMENTATION,
    AugmentationSpec,
    as_augmentation_spec,
    augment_dataset,
    build_augmentation_layers,
    legacy_image_data_generator,
)
from keras_cnn.errors import UserError


def batches(count=8, size=16, seed=0):
    images = np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    return images, tf.data.Dataset.from_tensor_slices((images, np.arange(count, dtype=np.int32))).batch(4)


def collect(dataset):
    return np.concatenate([images.numpy() for images, _labels in dataset])


def test_reference_recipes():
    assert REFERENCE_CIFAR10_AUGMENTATION == AugmentationSpec(
        width_shift_range=0.1, height_shift_range=0.1, horizontal_flip=True, fill_mode="nearest")
    assert not DEFAULT_IMAGE_AUGMENTATION.is_identity
    assert DEFAULT_IMAGE_AUGMENTATION.horizontal_flip and DEFAULT_IMAGE_AUGMENTATION.rotation_range == 10
    assert AugmentationSpec().is_identity
    assert AugmentationSpec(fill_mode="wrap").is_identity  # a fill mode alone changes nothing


def test_spec_round_trips_and_reads_image_data_generator_pairs():
    spec = AugmentationSpec(rotation_range=15, zoom_range=0.2, vertical_flip=True, contrast_range=0.1)
    assert AugmentationSpec.from_dict(spec.to_dict()) == spec
    legacy_style = AugmentationSpec.from_dict({"zoom_range": [0.9, 1.1], "brightness_range": (0.8, 1.2)})
    assert legacy_style.zoom_range == pytest.approx(0.1)
    assert legacy_style.brightness_range == pytest.approx(0.2)
    assert as_augmentation_spec({"horizontal_flip": True}) == AugmentationSpec(horizontal_flip=True)
    assert as_augmentation_spec({}) is None and as_augmentation_spec(None) is None


@pytest.mark.parametrize("values, message", [
    ({"rotation": 10}, "unknown augmentation option"),
    ({"zoom_range": [0.8, 1.1]}, "symmetric around 1"),
    ({"width_shift_range": 1.5}, "must be < 1"),
    ({"rotation_range": -5}, "must be >= 0"),
    ({"rotation_range": 270}, "<= 180"),
    ({"horizontal_flip": "yes"}, "true or false"),
    ({"fill_mode": "mirror"}, "'mirror'"),
    ({"contrast_range": "0.2"}, "must be a number"),
])
def test_bad_specs_are_user_errors_naming_the_value(values, message):
    with pytest.raises(UserError, match=message):
        AugmentationSpec.from_dict(values)


def test_ranges_map_faithfully_onto_keras_layers():
    spec = AugmentationSpec(rotation_range=36, width_shift_range=0.1, height_shift_range=0.2, zoom_range=0.15,
                            horizontal_flip=True, vertical_flip=True, brightness_range=0.2,
                            contrast_range=0.3, fill_mode="reflect")
    layers = {layer.name: layer for layer in build_augmentation_layers(spec, seed=5).layers}
    assert {name: type(layer).__name__ for name, layer in layers.items()} == {
        "flip": "RandomFlip", "rotation": "RandomRotation", "translation": "RandomTranslation",
        "zoom": "RandomZoom", "brightness": "RandomBrightness", "contrast": "RandomContrast",
    }
    config = {name: layer.get_config() for name, layer in layers.items()}
    assert config["flip"]["mode"] == "horizontal_and_vertical"
    assert config["rotation"]["factor"] == pytest.approx((-0.1, 0.1))  # 36 degrees = a tenth of a turn
    assert (config["translation"]["width_factor"], config["translation"]["height_factor"]) == (0.1, 0.2)
    assert config["zoom"]["height_factor"] == config["zoom"]["width_factor"] == (-0.15, 0.15)
    assert config["brightness"]["factor"] == (-0.2, 0.2)
    assert tuple(config["brightness"]["value_range"]) == (0, 255)
    assert config["contrast"]["factor"] == (0.3, 0.3)  # -> a contrast factor in [0.7, 1.3]
    for name in ("rotation", "translation", "zoom"):
        assert config[name]["fill_mode"] == "reflect"
    assert len({layer.seed for layer in layers.values()}) == len(layers), "each layer draws its own stream"

    only_flip = build_augmentation_layers({"horizontal_flip": True})
    assert [type(layer).__name__ for layer in only_flip.layers] == ["RandomFlip"]
    assert only_flip.layers[0].get_config()["mode"] == "horizontal"


def test_contrast_goes_both_ways():
    """Keras 3.15 would only raise contrast from a float factor; the spec lowers it too."""
    layer = build_augmentation_layers({"contrast_range": 0.5}, seed=1).layers[0]
    image = np.random.default_rng(1).uniform(64, 192, (64, 8, 8, 3)).astype("float32")
    spread = np.asarray(layer(image, training=True)).std(axis=(1, 2, 3)) / image.std(axis=(1, 2, 3))
    assert spread.min() < 0.95 and spread.max() > 1.05


def test_augment_dataset_keeps_pixels_in_range_and_changes_every_epoch():
    images, dataset = batches()
    augmented = augment_dataset(dataset, {
        "rotation_range": 20, "zoom_range": 0.2, "brightness_range": 0.3, "contrast_range": 0.3,
        "horizontal_flip": True}, seed=3)
    first, second = collect(augmented), collect(augmented)
    assert first.dtype == np.float32 and first.shape == images.shape
    assert 0.0 <= first.min() and first.max() <= 255.0
    assert not np.allclose(first, second)
    assert [labels.numpy().tolist() for _images, labels in augmented] == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_a_flip_only_spec_either_keeps_or_mirrors_each_image():
    images, dataset = batches(count=16)
    flipped = collect(augment_dataset(dataset, {"horizontal_flip": True}, seed=0))
    mirrored = images[:, :, ::-1, :].astype("float32")
    kept = np.all(flipped == images.astype("float32"), axis=(1, 2, 3))
    turned = np.all(flipped == mirrored, axis=(1, 2, 3))
    assert np.all(kept | turned) and kept.any() and turned.any()


def test_identity_spec_leaves_the_dataset_alone():
    _images, dataset = batches()
    assert augment_dataset(dataset, AugmentationSpec()) is dataset
    assert augment_dataset(dataset, None) is dataset


def test_legacy_image_data_generator_gets_the_same_ranges():
    generator = legacy_image_data_generator(REFERENCE_CIFAR10_AUGMENTATION)
    assert type(generator).__name__ == "ImageDataGenerator"
    assert (generator.width_shift_range, generator.height_shift_range) == (0.1, 0.1)
    assert generator.horizontal_flip and not generator.vertical_flip
    assert generator.fill_mode == "nearest" and generator.rotation_range == 0
    assert generator.brightness_range is None

    spec = AugmentationSpec(rotation_range=12, zoom_range=0.1, brightness_range=0.2, contrast_range=0.2)
    generator = legacy_image_data_generator(spec, seed=4, rescale=None)
    assert generator.rotation_range == 12
    assert generator.zoom_range == pytest.approx([0.9, 1.1])
    assert generator.brightness_range == pytest.approx((0.8, 1.2))
    images, _dataset = batches(count=4)
    batch, labels = next(generator.flow(images.astype("float32"), np.arange(4), batch_size=4, shuffle=False,
                                        seed=4))
    assert batch.shape == images.shape and labels.tolist() == [0, 1, 2, 3]
    assert 0.0 <= batch.min() and batch.max() <= 255.0
