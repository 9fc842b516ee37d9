"""``run_doctor``: every check of ``kcnn doctor`` on one source, and the files it writes.

Output folder (``--out DIR``; a re-run replaces what an earlier doctor wrote there, and
nothing else)::

    DIR/doctor.html    the report: a section per kind of finding, worst first
    DIR/issues.csv     objectId,issue,score,type,value,suggested_value,other_objectId
    DIR/exclude.txt    the images a user most likely wants out (--exclude reads it)
    DIR/doctor.json    the summary (what --json prints), written last

Images are only read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from keras_cnn.data.files import find_bad_images, resolve_image_paths
from keras_cnn.doctor.balance import balance_summary
from keras_cnn.doctor.duplicates import exact_duplicate_pairs, near_duplicate_pairs, pair_findings
from keras_cnn.doctor.features import FeatureSource, base_feature_source, image_features, run_feature_source
from keras_cnn.doctor.findings import (excluded_paths, issue_counts, ordered_findings, write_exclude_file,
                                       write_issues_csv)
from keras_cnn.doctor.labels import DEFAULT_FOLDS, label_issue_findings, out_of_fold_probabilities
from keras_cnn.doctor.libraries import require_doctor_libraries
from keras_cnn.doctor.neighbours import nearest_neighbours, unit_rows
from keras_cnn.doctor.outliers import OUTLIER_NEIGHBOURS, outlier_findings
from keras_cnn.doctor.pictures import (blurry_findings, cleanvision_findings, grayscale_findings, small_findings,
                                       unreadable_findings)
from keras_cnn.doctor.report import write_doctor_report
from keras_cnn.doctor.source import read_doctor_source
from keras_cnn.doctor.thumbnails import image_sizes, read_pixels
from keras_cnn.errors import UserError
from keras_cnn.io import atomic_write_json, check_output_path
from keras_cnn.progress import say, warn

REPORT_NAME = "doctor.html"
ISSUES_NAME = "issues.csv"
EXCLUDE_NAME = "exclude.txt"
SUMMARY_NAME = "doctor.json"
OUTPUT_NAMES = (REPORT_NAME, ISSUES_NAME, EXCLUDE_NAME, SUMMARY_NAME)
DEFAULT_BATCH_SIZE = 64   # images per batch of the feature pass


@dataclass
class DoctorOptions:
    """What ``kcnn doctor`` is asked to do (its command-line options)."""

    source: str
    out: str
    base: str | None = None            # a frozen base for the features ...
    run: str | None = None             # ... or a trained run's penultimate layer
    weights: str = "imagenet"
    image_size: int | None = None
    images: str | None = None
    layout: str | None = None
    id_column: str = "objectId"
    label_column: str = "value"
    allow_labels: tuple[str, ...] = ()
    test_keys: str = "0-24"
    validation_keys: str = "25-49"
    balance: bool = True
    folds: int = DEFAULT_FOLDS
    seed: int = 1234
    batch_size: int = DEFAULT_BATCH_SIZE


def check_options(options: DoctorOptions) -> None:
    """Refuse option combinations no check can use, before anything is read."""
    if bool(options.base) == bool(options.run):
        raise UserError("give one of --base NAME (a frozen base's features) or --run RUN (a trained model's)")
    if options.run and options.image_size:
        raise UserError("--image-size is for --base; a run's model has its own input size")
    if options.folds < 2:
        raise UserError(f"--folds must be at least 2, received: {options.folds}")
    if options.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, received: {options.batch_size}")


def check_out_folder(out: str | os.PathLike) -> Path:
    """The output folder: new, or holding no doctor file that an earlier doctor did not write."""
    path = check_output_path(out, directory=True, option="--out")
    if path.is_dir() and not (path / SUMMARY_NAME).is_file():
        foreign = [name for name in OUTPUT_NAMES if (path / name).exists()]
        if foreign:
            raise UserError(f"{out} holds {foreign[0]}, which kcnn doctor did not write; choose another --out")
    return path


def feature_source(options: DoctorOptions) -> FeatureSource:
    """The features doctor compares images by (built before any image is read, so a bad name fails fast)."""
    if options.run:
        return run_feature_source(options.run)
    return base_feature_source(options.base, options.weights, options.image_size)


def run_doctor(options: DoctorOptions) -> dict[str, Any]:
    """Check ``options.source`` and write the report, issues.csv, exclude.txt and doctor.json.

    Returns the summary: counts per issue, balance, what was skipped and why, and the paths.
    """
    require_doctor_libraries()
    check_options(options)
    out = check_out_folder(options.out)
    data = read_doctor_source(options.source, options.images, options.layout, options.id_column,
                              options.label_column, options.allow_labels, options.test_keys,
                              options.validation_keys, options.balance)
    say(data.found)
    features_from = feature_source(options)
    notes, skipped = skipped_checks(features_from, data.labels)
    for note in notes:
        warn(note)

    table = data.table
    bad = find_bad_images(data.images, table["objectId"].tolist())
    unreadable = {object_id for object_id, _reason in bad}
    readable = table[~table["objectId"].isin(unreadable)].reset_index(drop=True)
    paths = resolve_image_paths(data.images, readable["objectId"].tolist())
    findings = [unreadable_findings(table, bad), pair_findings(table, exact_duplicate_pairs(table), "exact_duplicate")]
    thumbnails, blur = read_pixels(paths)
    say("[doctor] checking the pictures (exposure, sharpness, size, aspect, colour)")
    findings += [cleanvision_findings(readable, paths), blurry_findings(readable, blur, thumbnails),
                 small_findings(readable, image_sizes(paths)), grayscale_findings(readable, thumbnails)]
    if len(readable) > 1:
        features = image_features(features_from, readable, data.images, options.batch_size)
        findings += feature_findings(readable, features, thumbnails, data.labels, options, skipped)

    findings = ordered_findings(findings)
    excluded = excluded_paths(findings)
    summary = {
        "source": str(options.source), "images": len(table), "labels": data.labels,
        "features": features_from.description, "counts": issue_counts(findings), "excluded": len(excluded),
        "balance": balance_summary(table, data.labels), "skipped": skipped, "notes": notes,
        "report": str(out / REPORT_NAME), "issues": str(out / ISSUES_NAME), "exclude": str(out / EXCLUDE_NAME),
    }
    if summary["balance"]["advice"]:
        say(f"[doctor] {summary['balance']['advice']}")
    write_issues_csv(findings, out / ISSUES_NAME)
    write_exclude_file(excluded, out / EXCLUDE_NAME)
    write_doctor_report(out / REPORT_NAME, findings, table, data.images, summary, skipped)
    atomic_write_json(out / SUMMARY_NAME, summary)
    return summary


def skipped_checks(features_from: FeatureSource, labels: list[str]) -> tuple[list[str], dict[str, str]]:
    """Notes for the user, and the checks that cannot mean anything here (issue -> why)."""
    notes, skipped = [], {}
    if not features_from.meaningful:
        notes.append(f"{features_from.description}: label and outlier findings would be meaningless, so they "
                     "are skipped; the pixel checks still run (use --weights imagenet, a weights file, or --run)")
        skipped.update(label="the features come from random weights", outlier="the features come from random weights")
    if len(labels) < 2:
        skipped["label"] = "the set has one label"
    return notes, skipped


def feature_findings(readable: pd.DataFrame, features: np.ndarray, thumbnails: np.ndarray, labels: list[str],
                     options: DoctorOptions, skipped: dict[str, str]) -> list[pd.DataFrame]:
    """Label issues, outliers and near-duplicates (with leakage) of the readable images."""
    found = []
    say(f"[doctor] finding the nearest neighbours of {len(readable):,} images")
    distances, neighbours = nearest_neighbours(unit_rows(features), OUTLIER_NEIGHBOURS)
    if "label" not in skipped:
        say(f"[doctor] predicting every label out of sample ({options.folds}-fold head on the features)")
        label_indices = label_positions(readable, labels)
        probabilities = out_of_fold_probabilities(features, label_indices, len(labels), options.folds, options.seed)
        found.append(label_issue_findings(readable, label_indices, probabilities, labels))
    if "outlier" not in skipped:
        found.append(outlier_findings(readable, distances))
    say("[doctor] comparing look-alike images (perceptual hash, features, pixels)")
    near = near_duplicate_pairs(thumbnails, neighbours, readable["sha1"].to_numpy(dtype=object))
    found.append(pair_findings(readable, near, "near_duplicate"))
    return found


def label_positions(table: pd.DataFrame, labels: list[str]) -> np.ndarray:
    """Class index of each row's label."""
    index_of = {label: index for index, label in enumerate(labels)}
    return table["value"].map(index_of).to_numpy(dtype=np.int64)
