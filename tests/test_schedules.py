"""Learning-rate schedules: shapes, per-step warm-up, serialization, bad input."""

import numpy as np
import pytest

from keras_cnn.errors import UserError
from keras_cnn.train.schedules import LearningRateCurve, learning_rate_for, steps_per_epoch, warmup_step_count


def curve(schedule, steps):
    """The rate at steps 0..steps-1 (the curve is element-wise, so one call does all steps)."""
    return np.asarray(schedule(np.arange(steps)), dtype="float64")


def test_constant_without_warmup_is_a_plain_float():
    assert learning_rate_for("constant", 0.01, epochs=3, steps_per_epoch=7) == 0.01


def test_fractional_warmup_epochs_count_steps_and_rise_linearly():
    schedule = learning_rate_for("constant", 1.0, epochs=4, steps_per_epoch=10, warmup_epochs=0.5)
    rates = curve(schedule, 40)
    np.testing.assert_allclose(rates[:5], [0.2, 0.4, 0.6, 0.8, 1.0], rtol=1e-6)
    np.testing.assert_allclose(rates[5:], 1.0)


def test_cosine_falls_from_the_peak_to_zero_after_warmup():
    rates = curve(learning_rate_for("cosine", 0.1, epochs=2, steps_per_epoch=50, warmup_epochs=0.2), 101)
    assert rates[:10].tolist() == sorted(rates[:10].tolist())            # rising
    assert rates[10] == pytest.approx(0.1)                                # peak right after warm-up
    assert np.all(np.diff(rates[10:]) <= 1e-9)                            # then never rising
    assert rates[55] == pytest.approx(0.05, rel=1e-3)                     # half way: half the peak
    assert rates[100] == pytest.approx(0.0, abs=1e-9)


def test_onecycle_defaults_to_a_quarter_rising_from_peak_over_25():
    rates = curve(learning_rate_for("onecycle", 1.0, epochs=4, steps_per_epoch=25), 100)
    assert rates[0] == pytest.approx(1 / 25)
    assert int(np.argmax(rates)) == 25
    assert rates.max() == pytest.approx(1.0)
    assert rates[-1] < 1e-3


def test_a_curve_round_trips_through_keras_serialization():
    import keras

    schedule = LearningRateCurve("cosine", 0.5, 100, 10)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    np.testing.assert_allclose(curve(restored, 100), curve(schedule, 100))


def test_bad_schedule_options_are_user_errors():
    with pytest.raises(UserError, match="unknown learning-rate schedule"):
        learning_rate_for("linear", 0.1, 1, 1)
    with pytest.raises(UserError, match="covers the whole stage"):
        warmup_step_count("cosine", 3, steps_per_epoch=10, total_steps=30)


def test_steps_per_epoch_reads_the_dataset_or_the_sizes():
    import tensorflow as tf

    assert steps_per_epoch(tf.data.Dataset.range(10).batch(4), None, 4) == 3
    assert steps_per_epoch(tf.data.Dataset.range(10).repeat().batch(4), 10, 4) == 3
