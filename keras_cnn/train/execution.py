"""Start of every training command: decide device, strategy and precision, once, and say so."""

from __future__ import annotations

import click

from keras_cnn.config import TrainingConfig


def start_execution(training: TrainingConfig):
    """Resolve and apply ``--mixed-precision``, ``--xla`` and ``--strategy``; returns (plan, strategy).

    The resolved settings are printed once on stderr and recorded by the caller in config.json.
    """
    from keras_cnn.train.devices import apply_execution, describe, resolve_execution

    plan = resolve_execution(training.mixed_precision, training.xla, training.strategy)
    strategy = apply_execution(plan)
    click.echo(describe(plan), err=True)
    return plan, strategy
