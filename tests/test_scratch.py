"""The from-scratch zoo: exact reference parameter counts and API equivalence."""

import numpy as np
import pytest

from keras_cnn.errors import UserError
from keras_cnn.models.parameters import parameter_counts as count_parameters
from keras_cnn.models.specs import APIS
from keras_cnn.models.scratch import (ARCHITECTURES, build_architecture,
                                      with_input_scaling)

# REFERENCES.md §1: total / trainable / non-trainable as model.summary() prints them.
REFERENCE_COUNTS = {
    "lenet": (1_256_080, 1_256_080, 0),
    "cifar10_net": (2_122_186, 2_122_186, 0),
    "cifar10_deep_net": (1_250_858, 1_250_858, 0),
    "lenet5_bn": (62_094, 62_050, 44),
    "smile_cnn": (388_673, 388_673, 0),
    "mini_alexnet": (2_149_002, 2_148_650, 352),
}


def test_every_architecture_has_a_reference():
    assert set(ARCHITECTURES) == set(REFERENCE_COUNTS)


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("name", sorted(REFERENCE_COUNTS))
def test_reference_parameter_counts(name, api):
    counts = count_parameters(build_architecture(name, api=api))
    assert (counts["total_params"], counts["trainable_params"], counts["non_trainable_params"]) == \
        REFERENCE_COUNTS[name]


@pytest.mark.parametrize("name", sorted(REFERENCE_COUNTS))
def test_sequential_and_functional_compute_the_same_function(name):
    sequential = build_architecture(name, api="sequential")
    functional = build_architecture(name, api="functional")
    assert [layer.name for layer in sequential.layers] == [layer.name for layer in functional.layers[1:]]
    functional.set_weights(sequential.get_weights())
    spec = ARCHITECTURES[name]
    images = np.random.default_rng(0).uniform(0, 1, size=(2, *spec.input_shape)).astype("float32")
    np.testing.assert_allclose(sequential(images, training=False), functional(images, training=False),
                               rtol=1e-5, atol=1e-6)


def test_summary_prints_the_reference_total(capsys):
    build_architecture("lenet5_bn").summary()
    printed = capsys.readouterr().out
    assert "62,094" in printed and "44" in printed


def test_class_count_changes_only_the_output_layer():
    model = build_architecture("cifar10_net", num_classes=3)
    assert model.output_shape == (None, 3)
    assert count_parameters(model)["total_params"] == REFERENCE_COUNTS["cifar10_net"][0] - 7 * 513


def test_smile_cnn_is_binary_with_one_sigmoid_unit_and_softmax_beyond_two_classes():
    assert build_architecture("smile_cnn").output_shape == (None, 1)
    assert build_architecture("smile_cnn", num_classes=4).layers[-1].activation.__name__ == "softmax"


def test_input_scaling_wrapper_takes_raw_pixels():
    inner = build_architecture("lenet")
    model = with_input_scaling(inner)
    pixels = np.full((1, 28, 28, 1), 255.0, dtype="float32")
    np.testing.assert_allclose(model(pixels), inner(pixels / 255.0), rtol=1e-5)
    assert count_parameters(model) == count_parameters(inner)


def test_unknown_architecture_and_api_are_refused():
    with pytest.raises(UserError, match="unknown architecture 'resnet'"):
        build_architecture("resnet")
    with pytest.raises(UserError, match="unknown model API"):
        build_architecture("lenet", api="subclass")
