"""``kcnn calibrate``: fit (again) the temperature of a finished run on its validation part."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from keras_cnn.cli import options
from keras_cnn.cli.common import debug_option, json_option, run_command
from keras_cnn.config import MAX_BATCH_SIZE
from keras_cnn.runs import RunDirectory, RunLock


def render(result: dict[str, Any]) -> None:
    """The human form of :func:`keras_cnn.run_calibration.calibrate_run`'s result."""
    from keras_cnn.run_calibration import describe_calibration, summary_of

    click.echo(f"{result['run']}: {describe_calibration(summary_of(result))}")
    click.echo(f"  written to {Path(result['run']) / 'calibration.json'}; evaluate, export and predict use it")


@click.command()
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run directory written by `kcnn train` / `kcnn transfer` / `kcnn finetune`.")
@click.option("--batch-size", type=click.IntRange(1, MAX_BATCH_SIZE), default=None,
              help="Prediction batch size [default: the run's training batch size].")
@options.trust_hub
@options.accept_input_changes
@json_option
@debug_option
def calibrate(run_dir: Path, batch_size: int | None, trust_hub: bool, accept_input_changes: bool,
              as_json: bool) -> None:
    """Fit the temperature of RUN on its validation part: writes RUN/calibration.json.

    Temperature scaling divides the model's logits by one number T, fitted to minimise the
    negative log-likelihood of the validation part, so that a probability of 0.9 is right
    about 9 times in 10; the predictions and the accuracy do not change.  Training stages do
    this when they end (--calibrate, the default); this command does it for a run trained
    with --no-calibrate or by an older kcnn.  Prints the temperature and the expected
    calibration error and negative log-likelihood before and after it (on the test part when
    the run has one).  A threshold chosen with evaluate --target-accuracy for the old
    temperature is dropped.  A multi-label run has one temperature for every label's
    sigmoid, fitted on the binary cross-entropy over all labels; each label's threshold is
    then chosen again on the calibrated validation probabilities (RUN/thresholds.json).
    """
    # Fail fast (and without importing TensorFlow) when the folder is not a run or another process writes it.
    RunDirectory(run_dir).require()

    def work() -> dict[str, Any]:
        from keras_cnn.run_calibration import calibrate_run

        return calibrate_run(run_dir, batch_size=batch_size, trust_hub=trust_hub,
                             accept_input_changes=accept_input_changes)

    with RunLock(run_dir, reentrant=True):
        run_command(as_json, work, render)
