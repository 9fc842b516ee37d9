"""The learning-rate range test: suggestions, divergence stop, weights left untouched."""

import numpy as np
import pytest

from keras_cnn.errors import UserError
from keras_cnn.train.lr_sweep import (NoSuggestion, batch_noise, find_learning_rate, run_sweep, steepest_index,
                                       suggest_learning_rates, sweep_rates, valley_index)


def test_sweep_rates_are_exponential_from_start_to_end():
    rates = sweep_rates(1e-7, 10, 100)
    assert rates[0] == pytest.approx(1e-7) and rates[-1] == pytest.approx(10)
    np.testing.assert_allclose(rates[1:] / rates[:-1], rates[1] / rates[0])


def test_valley_is_half_way_along_the_longest_fall_and_steepest_at_the_fastest_drop():
    losses = np.array([2.0, 2.1, 2.0, 1.9, 1.5, 1.2, 1.1, 1.0, 0.95, 1.3, 3.0])
    assert valley_index(losses) == 4          # the longest fall: index 1 (2.1) down to 8 (0.95)
    rates = np.geomspace(1e-4, 1, len(losses))
    assert steepest_index(rates, losses) == 3  # 1.9 -> 1.5 is the biggest drop per decade


def test_suggestions_ignore_the_noisy_start_and_the_blow_up():
    rates = np.geomspace(1e-7, 10, 100)
    # A noisy dip in the first tenth and a crash in the last five must not be chosen.
    losses = np.concatenate([[5.0, 0.1, 5.0], np.full(37, 2.0), np.linspace(2.0, 0.5, 40), np.linspace(0.6, 3, 15),
                             [0.0, 0.0, 0.0, 0.0, 0.0]])
    suggestions = suggest_learning_rates(rates, losses)
    assert rates[40] < suggestions["steepest"] < rates[80]
    assert rates[40] <= suggestions["valley"] < rates[80]


def test_run_sweep_stops_when_the_smoothed_loss_diverges():
    def train_step(rate):
        return 1.0 if rate < 1e-2 else 1e6

    sweep = run_sweep(train_step, sweep_rates(1e-7, 10, 100))
    assert sweep.diverged
    assert len(sweep.losses) < 100
    assert sweep.learning_rates[-1] >= 1e-2


def test_too_short_a_sweep_is_a_user_error():
    with pytest.raises(UserError, match="only 6 steps were recorded"):
        suggest_learning_rates([1e-3] * 6, [1.0] * 6)


def sweep_of(raw_losses, steps=100):
    """What run_sweep records when the batches give ``raw_losses`` in turn."""
    losses = iter(raw_losses)
    return run_sweep(lambda rate: next(losses), sweep_rates(1e-7, 10, steps))


def test_a_flat_curve_gets_no_suggestion_and_says_why():
    """A model that learns nothing: the loss sits at ln(4) with a little noise, as with random frozen weights."""
    noise = np.random.default_rng(3).normal(scale=1e-4, size=100)
    sweep = sweep_of(np.log(4) + noise)
    assert not sweep.diverged and len(sweep.losses) == 100
    with pytest.raises(NoSuggestion, match=r"did not fall \(smoothed 1\.386.*up to 1\.0e\+01\).*in 100 steps"):
        sweep.suggestions()


def test_a_flat_curve_that_blows_up_at_the_end_is_flat_not_an_early_divergence():
    """97 of 100 steps, then NaN: the reason is the flat curve, and divergence is not called early."""
    losses = np.concatenate([np.full(96, np.log(4)), [np.nan]])
    sweep = sweep_of(losses)
    assert sweep.diverged and len(sweep.losses) == 97
    with pytest.raises(NoSuggestion) as caught:
        sweep.suggestions()
    assert "did not fall" in str(caught.value) and "diverged" not in str(caught.value)


def test_an_early_divergence_is_named_with_the_steps_planned():
    sweep = sweep_of(np.concatenate([np.full(11, 1.0), [1e6]]))
    assert sweep.diverged and len(sweep.losses) == 12
    with pytest.raises(NoSuggestion, match="diverged after 12 of 100 steps, too early"):
        sweep.suggestions()
    # Diverging as early, after a clear fall, still leaves a curve to read.
    sweep = sweep_of(np.concatenate([np.full(10, 2.0), np.linspace(2.0, 0.5, 25), [1e6]]))
    assert sweep.diverged and len(sweep.losses) == 36
    assert sweep.learning_rates[10] < sweep.suggestions()["valley"] < sweep.learning_rates[31]


def test_a_fall_within_the_batch_noise_gets_no_suggestion_but_a_real_noisy_fall_does():
    generator = np.random.default_rng(5)
    flat_noisy = 2.0 + generator.normal(scale=0.3, size=100)
    with pytest.raises(NoSuggestion, match="within the batch-to-batch noise"):
        sweep_of(flat_noisy).suggestions()
    # The same noise on a curve that falls from 2.3 to 0.5 between steps 40 and 80.
    falling = np.concatenate([np.full(40, 2.3), np.linspace(2.3, 0.5, 40), np.linspace(0.5, 1.5, 20)])
    suggestions = sweep_of(falling + generator.normal(scale=0.3, size=100)).suggestions()
    rates = sweep_rates(1e-7, 10, 100)
    assert rates[35] <= suggestions["valley"] <= rates[80] and rates[35] <= suggestions["steepest"] <= rates[80]


def test_batch_noise_is_the_noise_around_the_trend():
    generator = np.random.default_rng(7)
    trend = np.linspace(3, 1, 400)
    assert batch_noise(trend) == pytest.approx(0.0, abs=1e-12)
    assert batch_noise(trend + generator.normal(scale=0.2, size=400)) == pytest.approx(0.2, rel=0.15)


def test_find_learning_rate_leaves_the_weights_as_they_were():
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    images = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    labels = (images[:, 0] > 0).astype("int32")
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.BatchNormalization(), keras.layers.Dense(2, activation="softmax")])
    before = [weight.copy() for weight in model.get_weights()]
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(16)
    sweep = find_learning_rate(model, dataset, "sparse_categorical_crossentropy", "sgd", start=1e-4, end=100,
                               steps=60)
    assert sweep.diverged and len(sweep.losses) < 60
    assert min(sweep.smoothed) < sweep.smoothed[0]     # it did train while sweeping
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)
    suggestions = sweep.suggestions()
    assert 1e-4 < suggestions["valley"] < 100 and 1e-4 < suggestions["steepest"] < 100
