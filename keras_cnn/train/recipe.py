"""A stage's training recipe: learning-rate schedule, per-block rates, weight averaging, early stopping.

``stage_optimizer`` turns the options of ``TrainingConfig`` into one optimizer;
``ema_callbacks`` and ``early_stopping_callbacks`` give the callbacks that go with them.

Weight averaging (``--ema DECAY``, Polyak averaging as timm's ``--model-ema``): the Keras
optimizer keeps an exponential moving average of the trainable weights
(``use_ema``/``ema_momentum``); at the end of every epoch :class:`AveragedWeights` puts the
averaged weights into the model, so validation, the best-model checkpoint and therefore
evaluation and export all see the averaged model, and swaps the raw weights back before
the next epoch trains on.  The averaging starts at the first step (no bias correction),
so a decay d averages over roughly the last 1/(1-d) steps.
"""

from __future__ import annotations

from typing import Callable

import keras

from keras_cnn.config import TrainingConfig
from keras_cnn.errors import UserError
from keras_cnn.keras_internals import set_ema_weights_in_model
from keras_cnn.train.discriminative import layer_rate_class
from keras_cnn.train.early_stopping import ResumableEarlyStopping
from keras_cnn.optimizers import make_optimizer
from keras_cnn.train.schedules import check_schedule, learning_rate_for


def check_recipe(training) -> None:
    """Refuse out-of-range recipe options with one line, before any work.

    ``training``: a ``TrainingConfig`` or a ``FineTuneConfig`` (both carry the recipe fields).
    """
    check_schedule(training.schedule)
    if training.ema is not None and not 0.0 < float(training.ema) < 1.0:
        raise UserError(f"--ema is a decay between 0 and 1 (e.g. 0.999), received: {training.ema}")
    if training.early_stopping is not None and int(training.early_stopping) < 1:
        raise UserError(f"--early-stopping is a patience in epochs (1 or more), received: {training.early_stopping}")
    if training.warmup_epochs is not None and float(training.warmup_epochs) < 0:
        raise UserError(f"--warmup-epochs must be 0 or more, received: {training.warmup_epochs}")
    epochs = getattr(training, "epochs", None)
    if training.warmup_epochs is not None and epochs and float(training.warmup_epochs) > epochs:
        # Known before any image is read; a warm-up of the very stage length is found once steps are known.
        raise UserError(f"--warmup-epochs {training.warmup_epochs} is longer than the stage ({epochs} epochs); "
                        "use fewer warm-up epochs or more --epochs")
    if training.lr_mult is not None and float(training.lr_mult) < 1:
        raise UserError(f"--lr-mult must be 1 or more (the head's rate / the first unfrozen block's), "
                        f"received: {training.lr_mult}")


def stage_optimizer(training: TrainingConfig, epochs: int, steps_per_epoch: int,
                    rate_factors: dict[str, float] | None = None) -> keras.optimizers.Optimizer:
    """The stage's optimizer: ``training.optimizer`` at ``training.learning_rate`` along ``training.schedule``.

    ``training.ema`` switches on weight averaging; ``rate_factors`` (variable path ->
    factor, from ``discriminative.layer_rate_factors``) gives each variable its own rate.
    """
    check_recipe(training)
    averaging = {"use_ema": True, "ema_momentum": float(training.ema)} if training.ema else {}
    optimizer = make_optimizer(training.optimizer, training.learning_rate, **averaging)
    learning_rate = learning_rate_for(training.schedule, training.learning_rate, epochs, steps_per_epoch,
                                      training.warmup_epochs)
    if isinstance(learning_rate, float) and not rate_factors:
        return optimizer
    # Rebuild from the validated optimizer's config with the curve and the rates in place.
    optimizer_class = layer_rate_class(type(optimizer)) if rate_factors else type(optimizer)
    extra = {"rate_factors": rate_factors} if rate_factors else {}
    return optimizer_class.from_config({**optimizer.get_config(), "learning_rate": learning_rate, **extra})


class AveragedWeights(keras.callbacks.SwapEMAWeights):
    """``SwapEMAWeights(swap_on_epoch=True)`` that also resumes: put it before the checkpoint.

    The checkpoint then saves the state with the average in the model and the raw weights
    in the optimizer's average slots (the exchange is exact).  A resumed fit (its first
    epoch is not 0) loads that state, so the first thing to do is to swap back.
    """

    def __init__(self):
        super().__init__(swap_on_epoch=True)
        self._first_epoch = True

    def on_train_begin(self, logs=None):
        self._first_epoch = True

    def on_epoch_begin(self, epoch, logs=None):
        if self._first_epoch:
            self._first_epoch = False
            # The state was saved after an epoch's end, with the averaged weights swapped in.
            set_ema_weights_in_model(self, epoch > 0)
        super().on_epoch_begin(epoch, logs)


def ema_callbacks(training: TrainingConfig) -> list[keras.callbacks.Callback]:
    """``[AveragedWeights]`` with ``--ema``; place it before the callbacks that save or judge the model."""
    if not training.ema:
        return []
    return [AveragedWeights()]


def early_stopping_callbacks(training: TrainingConfig, monitor: str, stage: str = "",
                             earlier_values: Callable[[], list[float]] | None = None
                             ) -> list[keras.callbacks.Callback]:
    """``[ResumableEarlyStopping]`` with ``--early-stopping N``; place it after the checkpoint."""
    if not training.early_stopping:
        return []
    return [ResumableEarlyStopping(int(training.early_stopping), monitor=monitor, stage=stage,
                                   earlier_values=earlier_values)]
