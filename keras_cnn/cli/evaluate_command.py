"""``kcnn evaluate``: metrics, pictures and an HTML report for a finished run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from keras_cnn.choices import EvaluationPart, names
from keras_cnn.cli import options
from keras_cnn.cli.common import Choice, FiniteFloatRange, debug_option, json_option, run_command
from keras_cnn.config import MAX_BATCH_SIZE
from keras_cnn.runs import RunDirectory, RunLock


MULTI_LABEL_LINES = (("mAP (macro)", "macro_map"), ("mAP (micro)", "micro_map"), ("macro F1", "macro_f1"),
                     ("micro F1", "micro_f1"), ("exact match", "exact_match"), ("Hamming loss", "hamming_loss"),
                     ("loss", "loss"))


def _number(value: float | None) -> str:
    return f"{value:.4f}" if value is not None else "-"


def render_calibration(summary: dict[str, Any]) -> None:
    """The calibration line: the temperature and ECE, NLL, Brier before and after it (or that there is none)."""
    calibration = summary.get("calibration") or {}
    if calibration.get("temperature") is not None:
        click.echo(f"  calibration: temperature {calibration['temperature']:.3g}; ECE {calibration['ece_before']:.4f} "
                   f"-> {calibration['ece_after']:.4f}, NLL {calibration['nll_before']:.4f} -> "
                   f"{calibration['nll_after']:.4f}, Brier {calibration['brier_before']:.4f} -> "
                   f"{calibration['brier_after']:.4f}")
    elif calibration:
        click.echo(f"  calibration: not calibrated (ECE {calibration['ece_before']:.4f}; kcnn calibrate --run RUN)")


def render_multi_label_summary(summary: dict[str, Any]) -> None:
    """The human form of a multi-label run's evaluation (scored at its per-label thresholds)."""
    click.echo(f"{summary['subset']} part of {summary['run']}: {summary['num_samples']} images, multi-label "
               "(each label at its threshold)")
    for title, key in MULTI_LABEL_LINES:
        click.echo(f"  {title:<13}{_number(summary.get(key))}")
    render_calibration(summary)   # over every (image, label) pair
    tta = summary.get("tta")
    if tta:
        click.echo(f"  with TTA ({len(tta['views'])} views): mAP {_number(tta['macro_map'])}, "
                   f"micro F1 {_number(tta['micro_f1'])}, loss {_number(tta['loss'])}")
    click.echo(f"report: {summary['files']['report']}")


def render_summary(summary: dict[str, Any]) -> None:
    """The human form of :func:`keras_cnn.evaluate.evaluate_run`'s summary."""
    if summary.get("multi_label"):
        render_multi_label_summary(summary)
        return
    loss = summary.get("loss")
    click.echo(f"{summary['subset']} part of {summary['run']}: {summary['num_samples']} images")
    click.echo(f"  accuracy  {summary['accuracy']:.4f}")
    click.echo(f"  loss      {loss:.4f}" if loss is not None else "  loss      -")
    click.echo(f"  macro F1  {summary['macro_f1']:.4f}")
    if summary.get("roc_auc") is not None:
        click.echo(f"  ROC AUC   {summary['roc_auc']:.4f}")
    render_calibration(summary)
    selective = summary.get("selective")
    if selective and selective.get("threshold") is not None:
        accuracy = selective["accuracy"]
        click.echo(f"  answering when the top probability is at least {selective['threshold']:.4g}: "
                   f"{selective['accepted']} of {selective['num_samples']} images (coverage "
                   f"{selective['coverage']:.4f}), accuracy " + (f"{accuracy:.4f}" if accuracy is not None else "-"))
    elif selective:
        click.echo(f"  no threshold reaches accuracy {selective['target_accuracy']:g} on the validation part")
    tta = summary.get("tta")
    if tta:
        click.echo(f"  with TTA ({len(tta['views'])} views): accuracy {tta['accuracy']:.4f}, "
                   f"loss {tta['loss']:.4f}, macro F1 {tta['macro_f1']:.4f}")
    for note in summary.get("notes", []):
        click.echo(f"  note: {note}")
    click.echo(f"report: {summary['files']['report']}")


@click.command()
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run directory written by `kcnn train` / `kcnn transfer` / `kcnn finetune`.")
@click.option("--subset", type=Choice(names(EvaluationPart)), default="test", show_default=True,
              help="Which part of the run's data to evaluate.")
@click.option("--batch-size", type=click.IntRange(1, MAX_BATCH_SIZE), default=None,
              help="Prediction batch size [default: the run's training batch size].")
@click.option("--tta", type=click.IntRange(min=1), default=None,
              help="Also report test-time augmentation: average each image's probabilities over N fixed "
                   "views (the image, centre and corner crops of 90 %, and their mirror images when the "
                   "run trained with flips); plain and TTA metrics side by side.")
@click.option("--target-accuracy", type=FiniteFloatRange(0, 1, min_open=True), default=None, metavar="A",
              help="Choose on the validation part the lowest threshold on the top (calibrated) probability whose "
                   "answered images reach accuracy A, store it in the run (export copies it: predict and serve "
                   "then answer 'unknown' below it) and report coverage and accuracy at it [default: the threshold "
                   "stored before, if any].")
@options.trust_hub
@options.accept_input_changes
@json_option
@debug_option
def evaluate(run_dir: Path, subset: str, batch_size: int | None, tta: int | None, target_accuracy: float | None,
             trust_hub: bool, accept_input_changes: bool,
             as_json: bool) -> None:
    """Evaluate a run: write RUN/eval/ (metrics.json, predictions.csv, plots, report.html);
    the validation part goes to RUN/eval/validation/.

    Metrics: accuracy, loss, top-k accuracy, macro/weighted precision, recall and F1,
    ROC AUC for two classes, per-class numbers, the confusion matrix and the most
    confused pairs; calibration (ECE, NLL, Brier before and after the run's temperature,
    with a reliability diagram); coverage and accuracy when answering only above a
    threshold; heat maps over the most confident mistakes. Open RUN/eval/report.html in a
    browser to read them.

    A multi-label run is scored at its per-label thresholds on its calibrated probabilities:
    mAP (macro, micro), precision/recall/F1 (macro, micro), exact match, Hamming loss, a
    per-label table, calibration over every (image, label) pair, precision-recall curves
    and the labels most often missed or added.
    """
    from keras_cnn.evaluate import check_evaluation_options   # here: pandas is not needed for --help

    # Fail fast (and without importing TensorFlow) when the folder is not a run, an option does not fit
    # it or another process writes it.
    check_evaluation_options(RunDirectory(run_dir).require(), subset, tta, target_accuracy)

    def work() -> dict[str, Any]:
        from keras_cnn.evaluate import evaluate_run

        return evaluate_run(run_dir, subset=subset, batch_size=batch_size, tta=tta, target_accuracy=target_accuracy,
                            trust_hub=trust_hub, accept_input_changes=accept_input_changes)

    with RunLock(run_dir, reentrant=True):
        run_command(as_json, work, render_summary)
