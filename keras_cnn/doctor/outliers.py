"""Outliers: images far from their nearest neighbours in feature space.

An image unlike everything else (another subject, a screenshot among photos, a blank
frame) has no close neighbours, whatever its label: its mean distance to its k nearest
neighbours is large.  The same measure as cleanlab's feature-based out-of-distribution
score, computed from the neighbours doctor has already found (no second search).  An image
is an outlier when that distance is beyond the upper quartile plus ``IQR_FACTOR``
inter-quartile ranges (Tukey's far-out rule, as cleanvision flags odd sizes); its score is
the share of images that are closer to their neighbours.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from keras_cnn.doctor.findings import empty_findings, finding_rows

OUTLIER_NEIGHBOURS = 10
IQR_FACTOR = 3.0


def outlier_findings(table: pd.DataFrame, neighbour_distances: np.ndarray) -> pd.DataFrame:
    """issues.csv rows (issue ``outlier``) from each image's distances to its nearest neighbours."""
    if len(table) < 4 or neighbour_distances.shape[1] == 0:
        return empty_findings()
    mean_distance = neighbour_distances[:, :OUTLIER_NEIGHBOURS].mean(axis=1)
    lower, upper = np.percentile(mean_distance, [25, 75])
    limit = upper + IQR_FACTOR * (upper - lower)
    flagged = np.flatnonzero(mean_distance > limit)
    # Share of images with a smaller mean distance: 0.99 = farther than 99 % of the set.
    order = np.sort(mean_distance)
    scores = np.searchsorted(order, mean_distance[flagged], side="left") / len(mean_distance)
    details = [f"mean distance to {neighbour_distances[:, :OUTLIER_NEIGHBOURS].shape[1]} nearest "
               f"{mean_distance[row]:.3f} (limit {limit:.3f})" for row in flagged]
    return finding_rows("outlier", table, flagged, scores, details=details)
