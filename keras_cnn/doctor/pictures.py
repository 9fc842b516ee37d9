"""Bad pictures: unreadable, dark, over-exposed, blurry, very small, extreme aspect ratio, grey among colour.

Which check comes from where, and why:

- dark, light, odd_aspect: cleanvision's checks, with its default thresholds
  (``Imagelab.find_issues``); its score (low = bad) becomes ours as 1 - score.
- unreadable: kcnn's own image check (the decoder training uses; cleanvision stops at the
  first file Pillow cannot open, so only readable files are handed to it).
- blurry: cleanvision's edge measure runs Pillow's FIND_EDGES on a picture shrunk to 64
  pixels, where the filter's own border dominates: a picture blurred to a smear scored as
  sharp as a noisy photo here.  Doctor measures the blur effect (Crété-Roffet et al.,
  as ``skimage.measure.blur_effect``; :mod:`keras_cnn.doctor.thumbnails`) and flags a
  picture clearly blurred (at least ``BLUR_FLOOR``) and far blurrier than the set's own
  level (Tukey's far-out rule), so a set of soft pictures is not all "blurry"; blank
  frames are left to the dark and light checks.
- small: cleanvision's ``odd_size`` flags sizes far from the median in both directions;
  what hurts a classifier is a picture blown up to the input size, so doctor flags a
  shorter side under half the set's median shorter side.
- grayscale: cleanvision calls a picture grey when Pillow opens it in mode "L", which
  misses grey photos saved as RGB and flags every image of an all-grey set; doctor
  measures colour on the thumbnail and reports grey pictures only where most are in colour.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from keras_cnn.doctor.findings import empty_findings, finding_rows, ordered_findings
from keras_cnn.doctor.thumbnails import grey as grey_levels
from keras_cnn.doctor.thumbnails import is_flat

# cleanvision issue type -> doctor issue.
CLEANVISION_CHECKS = {"dark": "dark", "light": "light", "odd_aspect_ratio": "odd_aspect"}
# A shorter side under this share of the set's median shorter side is "small".
SMALL_SHARE = 0.5
# Mean spread between the largest and smallest RGB channel (grey levels) under which a
# thumbnail is grey; JPEG chroma noise stays well under it.
GREY_SPREAD = 4.0
# Grey pictures are reported only where at most this share of the set is grey.
GREY_MINORITY = 0.5
# Blurry: a blur effect above the upper quartile by this many inter-quartile ranges, and at least the floor.
BLUR_IQR_FACTOR = 3.0
BLUR_FLOOR = 0.5
# cleanvision's own process pool pays off only on many images; fewer are checked in-process.
PARALLEL_FROM = 2_000


def unreadable_findings(table: pd.DataFrame, bad: Sequence[tuple[str, str]]) -> pd.DataFrame:
    """issues.csv rows (issue ``unreadable``) for the (objectId, reason) pairs of the image check."""
    if not bad:
        return empty_findings()
    position_of = {object_id: position for position, object_id in enumerate(table["objectId"])}
    positions = [position_of[object_id] for object_id, _reason in bad]
    return finding_rows("unreadable", table, positions, [1.0] * len(positions),
                        details=[reason for _object_id, reason in bad])


def cleanvision_findings(table: pd.DataFrame, paths: Sequence[str]) -> pd.DataFrame:
    """Rows for cleanvision's dark, light and odd-aspect checks of readable image files.

    ``table`` holds the images of ``paths``, row for row.  cleanvision's printing and progress
    bars are kept out of kcnn's output.
    """
    from cleanvision import Imagelab

    if not len(paths):
        return empty_findings()
    jobs = None if len(paths) >= PARALLEL_FROM else 1
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lab = Imagelab(filepaths=list(paths), verbose=False)
        lab.find_issues({check: {} for check in CLEANVISION_CHECKS}, n_jobs=jobs, verbose=False)
    issues = lab.issues.reindex([str(path) for path in paths])
    frames = []
    for check, issue in CLEANVISION_CHECKS.items():
        flagged = np.flatnonzero(issues[f"is_{check}_issue"].fillna(False).to_numpy(dtype=bool))
        scores = 1.0 - issues[f"{check}_score"].to_numpy(dtype=np.float64)[flagged]
        frames.append(finding_rows(issue, table, flagged, scores,
                                   details=[f"cleanvision {check} score {1 - score:.3f}" for score in scores]))
    return ordered_findings(frames)


def small_findings(table: pd.DataFrame, sizes: np.ndarray) -> pd.DataFrame:
    """Rows for pictures whose shorter side is under half the set's median shorter side."""
    if not len(sizes):
        return empty_findings()
    shorter = sizes.min(axis=1).astype(np.float64)
    limit = SMALL_SHARE * float(np.median(shorter))
    flagged = np.flatnonzero(shorter < limit)
    scores = 1.0 - shorter[flagged] / limit
    details = [f"{sizes[row, 1]}x{sizes[row, 0]} pixels (limit: shorter side {limit:.0f})" for row in flagged]
    return finding_rows("small", table, flagged, scores, details=details)


def colour_spread(thumbnails: np.ndarray) -> np.ndarray:
    """Mean difference between the largest and smallest channel of each RGB thumbnail (grey levels)."""
    pixels = thumbnails.astype(np.int16)
    return (pixels.max(axis=-1) - pixels.min(axis=-1)).reshape(len(thumbnails), -1).mean(axis=1)


def grayscale_findings(table: pd.DataFrame, thumbnails: np.ndarray) -> pd.DataFrame:
    """Rows for grey pictures in a set that is mostly in colour (none in a grey set)."""
    if not len(thumbnails):
        return empty_findings()
    spread = colour_spread(thumbnails)
    grey = (spread < GREY_SPREAD) & ~is_flat(grey_levels(thumbnails))
    if grey.mean() > GREY_MINORITY:
        return empty_findings()
    flagged = np.flatnonzero(grey)
    scores = 1.0 - spread[flagged] / GREY_SPREAD
    share = f"{grey.mean():.0%} of the set is grey"
    return finding_rows("grayscale", table, flagged, scores,
                        details=[f"colour spread {spread[row]:.1f} grey levels; {share}" for row in flagged])


def blurry_findings(table: pd.DataFrame, blur: np.ndarray, thumbnails: np.ndarray) -> pd.DataFrame:
    """Rows for pictures far blurrier than the set's own (see the module docstring); score = blur effect."""
    if len(blur) < 4:
        return empty_findings()
    lower, upper = np.percentile(blur, [25, 75])
    limit = max(upper + BLUR_IQR_FACTOR * (upper - lower), BLUR_FLOOR)
    flagged = np.flatnonzero((blur > limit) & ~is_flat(grey_levels(thumbnails)))
    details = [f"blur effect {blur[row]:.2f} (limit {limit:.2f}, set's median {np.median(blur):.2f})"
               for row in flagged]
    return finding_rows("blurry", table, flagged, blur[flagged], details=details)
