"""The best-model checkpoint of a stage that trains one part of a model on cached inputs.

When a head trains on cached features, or the top of a base on cached boundary tensors,
an epoch takes a fraction of a second, and saving the whole model (base, head, optimizer
state) after every improving epoch would cost more than the epoch.  ``BestPartCheckpoint``
writes only the trained part's weights on an improvement (atomically, to a small file, so a
killed run resumes with its best weights) and assembles and saves the whole model once,
when the stage ends.
"""

from __future__ import annotations

from pathlib import Path

import keras

from keras_cnn.runs import atomic_path
from keras_cnn.train.callbacks import BestModelCheckpoint


class BestPartCheckpoint(BestModelCheckpoint):
    """Like ``BestModelCheckpoint`` for ``whole_model``, but the fitted part is saved per epoch.

    ``part_weights_path`` (``*.weights.h5``) holds the fitted part's best weights while the
    stage runs; at its end they are loaded into the part (its weights are the whole model's
    own) and the whole model is written to ``path``, then the part file is removed.  A
    stage that never beat ``initial_best`` leaves ``path`` as it was.
    """

    def __init__(self, path: str | Path, part_weights_path: str | Path, whole_model: keras.Model, **options):
        super().__init__(path, whole_model=whole_model, **options)
        self.part_weights_path = Path(part_weights_path)

    def save(self, model: keras.Model) -> None:
        """An improvement: keep the fitted part's weights (``model`` is the whole model, saved at the end)."""
        with atomic_path(self.part_weights_path) as temporary:
            self.model.save_weights(temporary)

    def on_train_end(self, logs=None):
        self.assemble()

    def assemble(self) -> None:
        """Write the whole model with the part's best weights (if any epoch improved); idempotent.

        Also called when a fit stops on an error or an interrupt, so the best model so far is
        kept; only a hard kill leaves the part file, which the resumed stage picks up.
        """
        if self.model is not None and self.part_weights_path.exists():
            self.model.load_weights(self.part_weights_path)
            super().save(self.whole_model)
            self.part_weights_path.unlink()
