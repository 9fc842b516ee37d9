"""``kcnn lr-find``: the learning-rate range test on exactly what a stage would train.

Three cases, as the training commands have them:
- a from-scratch architecture (the options of ``kcnn train``);
- the head on a frozen base (the options of ``kcnn transfer``; on cached base features,
  as stage 1 trains, unless augmenting);
- stage 2 of a run (``run_dir`` + ``unfreeze_from``): the run's model with the base
  unfrozen from that layer.
The run's files are never written except the picture and the table of the sweep (and,
for ``--images`` without ``--split``, the split it made, beside them); the weights in
memory are put back after the sweep (see ``lr_finder``).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from keras_cnn.config import RunConfig
from keras_cnn.data.collection import needs_split_file, split_images
from keras_cnn.errors import UserError
from keras_cnn.progress import say
from keras_cnn.runs import RunDirectory, atomic_write_text
from keras_cnn.train.lr_finder import DEFAULT_END, DEFAULT_START, DEFAULT_STEPS, LearningRateSweep, find_learning_rate

PLOT_NAME = "lr_find.png"
# Written beside the picture when --images comes without --split.
SPLIT_NAME = "lr_find_split.csv"
TABLE_NAME = "lr_find.csv"


def lr_find(config: RunConfig | None = None, run_dir: str | Path | None = None, unfreeze_from: str | None = None,
            train_bn: bool = False, out: str | Path | None = None, start: float = DEFAULT_START,
            end: float = DEFAULT_END, steps: int = DEFAULT_STEPS, batch_size: int | None = None,
            optimizer: str | None = None) -> dict[str, Any]:
    """Run the range test and write ``lr_find.png`` and ``lr_find.csv``; returns the suggestions.

    ``config`` (command ``train`` or ``transfer``) for a new model, or ``run_dir`` for
    stage 2 of that run.  ``out``: the picture's path [default: ``RUN/lr_find.png`` with a
    run, else ``./lr_find.png``]; the table goes beside it.
    """
    import keras

    if (config is None) == (run_dir is None):
        raise UserError("lr-find needs either the data and model options of train / transfer, or --run RUN")
    if run_dir is not None:
        model, dataset, loss, optimizer, seed, stage = _finetune_setup(run_dir, unfreeze_from, train_bn,
                                                                       batch_size, optimizer)
        default_out = Path(run_dir) / PLOT_NAME
    else:
        if unfreeze_from:
            raise UserError("--unfreeze-from needs --run RUN (a stage-1 run to fine-tune)")
        config = replace(config, training=replace(config.training, batch_size=batch_size or config.training.batch_size,
                                                  optimizer=optimizer or config.training.optimizer))
        default_out = Path(PLOT_NAME)
        if needs_split_file(config.data):
            # --images without --split (or a split that --exclude / --relabel change): split as
            # train/transfer would, into a file beside the picture, so the sweep's data can be
            # looked at and reused (--split).
            picture = Path(out) if out is not None else default_out
            config = replace(config, data=split_images(config.data, picture.with_name(SPLIT_NAME),
                                                       list_prefix=str(picture.with_name("lr_find_"))))
        keras.utils.set_random_seed(config.training.seed)
        setup = _scratch_setup if config.model.kind == "scratch" else _head_setup
        model, dataset, loss, optimizer, seed, stage = setup(config)

    def progress(step: int, rate: float, smoothed: float) -> None:
        if (step + 1) % max(1, steps // 10) == 0:
            say(f"[lr-find] step {step + 1}/{steps}: learning rate {rate:.2e}, smoothed loss {smoothed:.4f}")

    keras.utils.set_random_seed(seed)
    sweep = find_learning_rate(model, dataset, loss, optimizer, start=start, end=end, steps=steps,
                               progress=progress)
    suggestions = sweep.suggestions()
    plot = Path(out) if out is not None else default_out
    table = plot.with_suffix(".csv")
    write_sweep(sweep, suggestions, plot, table)
    return {"stage": stage, "optimizer": optimizer, "suggestions": suggestions, "steps": len(sweep.losses),
            "diverged": sweep.diverged, "start": start, "end": end, "plot": str(plot), "table": str(table)}


def write_sweep(sweep: LearningRateSweep, suggestions: dict[str, float], plot: Path, table: Path) -> None:
    """The picture and the CSV (learning_rate, loss, smoothed_loss) of a sweep."""
    from keras_cnn.report import plot_learning_rate_sweep

    rows = ["learning_rate,loss,smoothed_loss"]
    rows += [f"{rate:.6e},{loss:.6g},{smoothed:.6g}"
             for rate, loss, smoothed in zip(sweep.learning_rates, sweep.losses, sweep.smoothed)]
    atomic_write_text(table, "\n".join(rows) + "\n")
    plot_learning_rate_sweep(sweep.learning_rates, sweep.losses, sweep.smoothed, suggestions, plot)


def _scratch_setup(config: RunConfig):
    from keras_cnn.models.factory import create_model
    from keras_cnn.models.scratch import get_architecture
    from keras_cnn.train.data import as_model_targets, prepare_array_data, prepare_folder_data
    from keras_cnn.train.fit import resolve_scratch_config

    if bool(config.data.dataset) == bool(config.data.split):
        raise UserError("give either --dataset mnist|cifar10 or --images DIR [--split SPLIT_CSV]")
    config = resolve_scratch_config(config)
    training = config.training
    if config.data.dataset:
        data = prepare_array_data(config.data, config.model.input_shape, training.batch_size, training.seed)
    else:
        data = prepare_folder_data(config.data, config.data.image_size, config.data.channels,
                                   training.batch_size, training.seed)
    spec = get_architecture(config.model.name)
    model = create_model(config.model.name, len(data.labels), input_shape=config.model.input_shape,
                         api=config.model.api)
    single_sigmoid = model.output_shape[-1] == 1
    return (model, as_model_targets(data.train, single_sigmoid), spec.loss(len(data.labels)), training.optimizer,
            training.seed, "train")


def _head_setup(config: RunConfig):
    from keras_cnn.models.factory import create_model
    from keras_cnn.models.transfer import split_feature_model
    from keras_cnn.train.data import as_model_targets, prepare_folder_data
    from keras_cnn.train.features import extract_features, feature_dataset
    from keras_cnn.train.two_stage import HEAD_STAGE, resolve_transfer_config

    if not config.data.split or not config.data.images:
        raise UserError("lr-find for a transfer head needs --images DIR [--split SPLIT_CSV]")
    config = resolve_transfer_config(config)
    training = config.training
    data = prepare_folder_data(config.data, config.data.image_size, 3, training.batch_size, training.seed)
    model = create_model(config.model.name, len(data.labels), image_size=config.data.image_size,
                         weights=config.model.weights, head_units=config.model.head_units,
                         dropout=config.model.dropout, binary=config.model.binary, api=config.model.api,
                         seed=training.seed)
    single_sigmoid = model.output_shape[-1] == 1
    loss = "binary_crossentropy" if single_sigmoid else "sparse_categorical_crossentropy"
    if training.cache_features:
        # Stage 1 trains the head on the frozen base's features: sweep exactly that.
        extractor, head = split_feature_model(model)
        features, labels = extract_features(extractor, data.train, data.sizes["train"], description="train features")
        dataset = feature_dataset(features, labels, training.batch_size, shuffle=True, seed=training.seed)
        return head, as_model_targets(dataset, single_sigmoid), loss, training.optimizer, training.seed, HEAD_STAGE
    return model, as_model_targets(data.train, single_sigmoid), loss, training.optimizer, training.seed, HEAD_STAGE


def _finetune_setup(run_dir, unfreeze_from, train_bn, batch_size, optimizer):
    from keras_cnn.models.bases import get_base_spec
    from keras_cnn.models.loading import load_model
    from keras_cnn.models.transfer import unfreeze_from as unfreeze
    from keras_cnn.train.data import as_model_targets, prepare_folder_data
    from keras_cnn.train.two_stage import FINETUNE_DEFAULTS, FINETUNE_STAGE, HEAD_STAGE

    run = RunDirectory(run_dir).require()
    config = RunConfig.from_dict(run.read_config())
    if config.model.kind != "transfer":
        raise UserError(f"{run_dir} is a {config.model.kind or 'non-transfer'} run; lr-find --run needs a "
                        "`kcnn transfer` run (for a from-scratch model give its training options instead)")
    # Stage 1's best model, as `kcnn finetune` starts from (model.keras may be a fine-tuned one).
    start = run.stage_model_path(HEAD_STAGE)
    start = start if start.exists() else run.model_path
    if not start.exists():
        raise UserError(f"{run_dir} has no model.keras yet; train stage 1 first (kcnn transfer)")
    model = load_model(start)   # a copy in memory: the run's files are only read
    unfreeze(model, unfreeze_from or get_base_spec(config.model.name).default_unfreeze, train_bn=train_bn)
    batch_size = batch_size or config.training.batch_size
    data = prepare_folder_data(config.data, config.data.image_size, 3, batch_size, config.training.seed,
                               labels=config.labels)
    single_sigmoid = model.output_shape[-1] == 1
    return (model, as_model_targets(data.train, single_sigmoid), config.training.loss,
            optimizer or FINETUNE_DEFAULTS["optimizer"], config.training.seed, FINETUNE_STAGE)
