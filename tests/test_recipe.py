"""A stage's recipe: optimizer with schedule / EMA / per-block rates, EMA swap, resumable early stopping."""

import numpy as np
import pytest

from keras_cnn.config import TrainingConfig
from keras_cnn.errors import UserError
from keras_cnn.train.recipe import check_recipe, early_stopping_callbacks, ema_callbacks, stage_optimizer


def tiny_model():
    import keras

    keras.utils.set_random_seed(3)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="relu"),
                             keras.layers.Dense(2, activation="softmax")])


def tiny_data(count=32):
    rng = np.random.default_rng(1)
    images = rng.normal(size=(count, 4)).astype("float32")
    return images, (images[:, 0] > 0).astype("int32")


def test_stage_optimizer_carries_schedule_ema_and_layer_rates():
    from keras_cnn.train.discriminative import LayerRates
    from keras_cnn.train.schedules import LearningRateCurve

    training = TrainingConfig(optimizer="adam", learning_rate=0.01, schedule="cosine", warmup_epochs=0.5, ema=0.9)
    optimizer = stage_optimizer(training, epochs=2, steps_per_epoch=10, rate_factors={"dense/kernel": 0.5})
    assert isinstance(optimizer, LayerRates) and optimizer.rate_factors == {"dense/kernel": 0.5}
    assert optimizer.use_ema and optimizer.ema_momentum == 0.9
    assert isinstance(optimizer._learning_rate, LearningRateCurve)
    assert optimizer._learning_rate.warmup_steps == 5 and optimizer._learning_rate.total_steps == 20
    plain = stage_optimizer(TrainingConfig(optimizer="sgd", learning_rate=0.1), epochs=2, steps_per_epoch=10)
    assert not plain.use_ema and float(plain.learning_rate) == pytest.approx(0.1)


@pytest.mark.parametrize("field, value, message", [
    ("ema", 1.0, "--ema"), ("early_stopping", 0, "--early-stopping"), ("schedule", "step", "schedule"),
    ("warmup_epochs", -1.0, "--warmup-epochs"),
])
def test_out_of_range_recipe_options_are_user_errors(field, value, message):
    with pytest.raises(UserError, match=message):
        check_recipe(TrainingConfig(**{field: value}))


def test_the_model_judged_and_saved_at_epoch_end_holds_the_averaged_weights():
    import keras

    decay = 0.6
    training = TrainingConfig(optimizer="sgd", learning_rate=0.5, ema=decay)
    model = tiny_model()
    model.compile(optimizer=stage_optimizer(training, epochs=2, steps_per_epoch=4),
                  loss="sparse_categorical_crossentropy")

    class Track(keras.callbacks.Callback):
        """Our own average of the raw weights after every step, and what the model holds at epoch end."""

        average, raw, at_epoch_end = None, None, []

        def on_train_batch_end(self, batch, logs=None):
            self.raw = [weight.copy() for weight in self.model.get_weights()]
            self.average = self.raw if self.average is None else [
                decay * old + (1 - decay) * new for old, new in zip(self.average, self.raw)]

        def on_epoch_end(self, epoch, logs=None):
            self.at_epoch_end.append((self.model.get_weights(), self.average, self.raw))

    track = Track()
    images, labels = tiny_data()
    model.fit(images, labels, batch_size=8, epochs=2, verbose=0, callbacks=[*ema_callbacks(training), track])
    for held, average, raw in track.at_epoch_end:
        for held_weight, average_weight, raw_weight in zip(held, average, raw):
            np.testing.assert_allclose(held_weight, average_weight, rtol=1e-5, atol=1e-6)
        assert any(np.abs(held_weight - raw_weight).max() > 1e-3 for held_weight, raw_weight in zip(held, raw))


def test_a_resumed_fit_trains_on_from_the_raw_weights_not_the_average(tmp_path):
    import keras

    training = TrainingConfig(optimizer="sgd", learning_rate=0.5, ema=0.6)
    images, labels = tiny_data()

    class Watch(keras.callbacks.Callback):
        """The raw weights after the last step; the weights the next fit starts from; the saved state."""

        raw_end = first_start = None

        def on_train_batch_begin(self, batch, logs=None):
            if self.first_start is None:
                self.first_start = self.model.get_weights()

        def on_train_batch_end(self, batch, logs=None):
            self.raw_end = self.model.get_weights()

        def on_epoch_end(self, epoch, logs=None):   # a checkpoint after the swap, as the stage runner has it
            self.model.save_weights(tmp_path / "state.weights.h5")
            self.model.stop_training = True          # ... and a kill after epoch 1 of 2

    def compiled():
        model = tiny_model()
        model.compile(optimizer=stage_optimizer(training, epochs=2, steps_per_epoch=4),
                      loss="sparse_categorical_crossentropy")
        return model

    first, before_kill = compiled(), Watch()
    first.fit(images, labels, batch_size=8, epochs=2, verbose=0, callbacks=[*ema_callbacks(training), before_kill])
    resumed, after_resume = compiled(), Watch()
    resumed.optimizer.build(resumed.trainable_variables)
    resumed.load_weights(tmp_path / "state.weights.h5")
    resumed.fit(images, labels, batch_size=8, epochs=2, initial_epoch=1, verbose=0,
                callbacks=[*ema_callbacks(training), after_resume])
    for raw, start in zip(before_kill.raw_end, after_resume.first_start):
        np.testing.assert_allclose(start, raw, rtol=1e-6, atol=1e-7)


def run_epochs(callback, values, start=0):
    """Drive ``callback`` through epochs ``start``.. with these monitored values; returns epochs run."""
    model = tiny_model()
    callback.set_model(model)
    model.stop_training = False
    callback.on_train_begin()
    ran = 0
    for epoch, value in enumerate(values[start:], start=start):
        callback.on_epoch_begin(epoch)
        model.layers[-1].kernel.assign(np.full((3, 2), float(epoch), "float32"))   # the epoch's weights
        callback.on_epoch_end(epoch, {"val_loss": value})
        ran += 1
        if model.stop_training:
            break
    callback.on_train_end()
    return ran, model


def test_early_stopping_stops_after_patience_and_restores_the_best_epoch():
    values = [1.0, 0.8, 0.9, 0.95, 0.7, 0.6]
    (callback,) = early_stopping_callbacks(TrainingConfig(early_stopping=2), "val_loss", "train")
    ran, model = run_epochs(callback, values)
    assert ran == 4 and callback.stopped_epoch == 4 and callback.best_epoch == 2
    assert float(model.layers[-1].kernel.numpy()[0, 0]) == 1.0   # the weights of epoch 2 (index 1)


def test_early_stopping_remembers_its_patience_across_a_resume():
    values = [1.0, 0.8, 0.9, 0.95, 0.7, 0.6]
    (callback,) = early_stopping_callbacks(TrainingConfig(early_stopping=2), "val_loss", "train",
                                           earlier_values=lambda: values[:3])
    ran, _ = run_epochs(callback, values, start=3)   # killed after epoch 3, resumed at epoch 4
    assert ran == 1 and callback.stopped_epoch == 4 and callback.best_epoch == 2
    (forgetful,) = early_stopping_callbacks(TrainingConfig(early_stopping=2), "val_loss", "train")
    assert run_epochs(forgetful, values, start=3)[0] == 3   # without the history it would train on


def test_no_recipe_options_no_extra_callbacks():
    assert ema_callbacks(TrainingConfig()) == [] and early_stopping_callbacks(TrainingConfig(), "loss") == []
