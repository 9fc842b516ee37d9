"""``kcnn doctor``: check labelled images before training (labels, duplicates, leakage, outliers, pictures)."""

from __future__ import annotations

from typing import Any

import click

from keras_cnn.cli import options
from keras_cnn.cli.common import InputPath, debug_option, json_option, run_command
from keras_cnn.cli.source_options import source_options, split_rule_options
from keras_cnn.config import MAX_BATCH_SIZE, MAX_SEED
from keras_cnn.models.applications import check_base_name


@click.command()
@click.argument("source", metavar="SOURCE", type=InputPath())
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), metavar="DIR",
              help="Folder for doctor.html, issues.csv, exclude.txt and doctor.json (a re-run replaces them).")
@click.option("--base", default=None,
              help="Compare images by the features of this frozen base (as `kcnn transfer --base`; "
                   "`kcnn models` lists them). With --weights none only the pixel checks mean anything.")
@click.option("--run", "run_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Compare images by the penultimate layer of this run's model (its input size and channels).")
@options.image_size(shown_default="the base's own, e.g. 224; smaller is faster")
@options.weights()
@source_options()
@split_rule_options()
@click.option("--folds", type=click.IntRange(min=2), default=5, show_default=True,
              help="Folds of the head that predicts every label out of sample.")
@click.option("--seed", type=click.IntRange(0, MAX_SEED), default=1234, show_default=True,
              help="How the images are dealt into the folds (no model is trained).")
@click.option("--batch-size", type=click.IntRange(1, MAX_BATCH_SIZE), default=None,
              help="Images per batch while extracting features [default: 64].")
@options.trust_hub
@json_option
@debug_option
def doctor(source, out_dir, base, run_dir, image_size, weights, images, layout, id_column, label_column,
           allow_labels, test_keys, validation_keys, balance, folds, seed, batch_size, trust_hub, as_json) -> None:
    """Check images before training: label errors, duplicates leaking across parts, outliers, bad pictures.

    \b
    SOURCE is anything `kcnn split` reads (class folders, a train/val/test tree, a label
    CSV with --images), split by the same rule and options, or a split CSV with --images,
    whose parts are kept. Identical files are reported, not refused. Images are only read.

    \b
    Findings (issues.csv: objectId,issue,score,type,value,suggested_value,other_objectId):
      leakage          a copy of an image in another part (the score would partly measure memory)
      exact_duplicate  identical files in one part
      label            the out-of-sample model (k-fold head on the features + cleanlab)
                       doubts the label; suggested_value is its choice
      unreadable       missing, empty, not an image, truncated
      near_duplicate   re-encoded, resized, slightly cropped or brightened copies in one part
      outlier          far from every other image in feature space
      dark, light, blurry, small, odd_aspect, grayscale   the pictures themselves
    doctor.html shows them worst first with thumbnails; exclude.txt lists leakage copies,
    extra exact copies, label suspects and unreadable files, for --exclude of
    split/train/transfer/lr-find. Needs pip install 'kcnn[doctor]'.

    \b
    Examples:
      kcnn doctor photos/ --base efficientnet_b0 --out doctor/
      kcnn doctor digits/ --run runs/lenet --out doctor/
      kcnn train lenet --images digits/ --exclude doctor/exclude.txt
    """
    from keras_cnn.doctor.libraries import require_doctor_libraries
    from keras_cnn.doctor.run import DEFAULT_BATCH_SIZE

    require_doctor_libraries()  # before TensorFlow starts: a missing extra is one line at once
    if base:
        check_base_name(base)  # so is a misspelt base

    def work() -> dict[str, Any]:
        from keras_cnn.doctor.run import DoctorOptions, run_doctor  # scikit-learn, TensorFlow: after --help

        return run_doctor(DoctorOptions(
            source=source, out=out_dir, base=base, run=run_dir, weights=weights, image_size=image_size,
            images=images, layout=layout, id_column=id_column, label_column=label_column,
            allow_labels=tuple(allow_labels), test_keys=test_keys, validation_keys=validation_keys,
            balance=balance, folds=folds, seed=seed, batch_size=batch_size or DEFAULT_BATCH_SIZE,
            trust_hub=trust_hub))

    run_command(as_json, work, render_doctor)


def render_doctor(result: dict[str, Any]) -> None:
    """The human form: the findings that were found, then where the files are."""
    found = [f"{issue} {count:,}" for issue, count in result["counts"].items() if count]
    click.echo(f"{result['images']:,} images: " + (", ".join(found) if found else "no findings"))
    if result["balance"].get("advice"):
        click.echo(result["balance"]["advice"])
    click.echo(f"report: {result['report']}; {result['excluded']:,} images in {result['exclude']}")
