"""Label issues: out-of-sample class probabilities by k-fold, then confident learning (cleanlab).

cleanlab finds label errors only when it is handed out-of-sample predicted probabilities
(``cleanlab.filter.find_label_issues``).  Doctor makes them cheaply: a logistic-regression
head (scikit-learn) on the image features, trained k times, each time predicting the fold
it did not see.  Every image is ranked by cleanlab's label quality (self-confidence: the
probability of its given label); the ones ``find_label_issues`` flags are reported with
score 1 - quality and the most probable label as the suggestion.

Of cleanlab's confident-learning filters, ``prune_by_class`` (per class, the images least
likely to belong to it, as many as the confident joint says are mislabelled there) found
more of 90 flipped labels among 1,827 digit images than the default ``prune_by_noise_rate``
at the same precision (81 of 85 flagged vs 76 of 81); the head's regularisation was
chosen on the same measurement (``tests/test_doctor_digits.py``).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from keras_cnn.doctor.findings import empty_findings, finding_rows

DEFAULT_FOLDS = 5
# Strong L2 regularisation: the head must not memorise a wrong label from a few images.
HEAD_REGULARISATION = 0.1
HEAD_ITERATIONS = 300
LABEL_FILTER = "prune_by_class"


def out_of_fold_probabilities(features: np.ndarray, label_indices: np.ndarray, num_classes: int,
                              folds: int = DEFAULT_FOLDS, seed: int = 0, blas_threads: int | None = 1) -> np.ndarray:
    """(n, num_classes) class probabilities, each row predicted by a head that never saw that image.

    Stratified folds; a class too small to appear in every fold's training part simply
    gets probability 0 from the heads that did not see it.  Features are standardised
    inside each fold (on its training part only).  ``blas_threads``: threads the matrix
    products may use (None: BLAS's own choice).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    label_indices = np.asarray(label_indices, dtype=np.int64)
    folds = max(2, min(int(folds), len(label_indices)))
    probabilities = np.zeros((len(label_indices), num_classes), dtype=np.float64)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    # One BLAS thread: the head's matrices are small, and threads that spin waiting for a
    # busy core made the folds 10-20 times slower on a shared 2-core machine.
    with warnings.catch_warnings(), threadpool_limits(blas_threads, user_api="blas"):
        # A class smaller than the number of folds, a head stopping at its iteration limit:
        # expected on small sets, and the probabilities are still usable.
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", UserWarning)
        for train, held_out in splitter.split(features, label_indices):
            seen = np.unique(label_indices[train])
            if len(seen) == 1:  # one class only: it is all this head can say
                probabilities[np.ix_(held_out, seen)] = 1.0
                continue
            head = make_pipeline(StandardScaler(),
                                 LogisticRegression(C=HEAD_REGULARISATION, max_iter=HEAD_ITERATIONS))
            head.fit(features[train], label_indices[train])
            probabilities[np.ix_(held_out, head.classes_)] = head.predict_proba(features[held_out])
    return probabilities


def label_issue_findings(table: pd.DataFrame, label_indices: np.ndarray, probabilities: np.ndarray,
                         labels: list[str]) -> pd.DataFrame:
    """issues.csv rows (issue ``label``) for the images cleanlab flags, from out-of-sample probabilities.

    ``table``: the images (objectId, value, type) in the rows' order.
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    label_indices = np.asarray(label_indices, dtype=np.int64)
    present = np.unique(label_indices)
    if len(present) < 2:
        return empty_findings()
    # cleanlab wants every class it is told about to have examples: give it the present ones.
    probabilities = probabilities[:, present]
    probabilities = probabilities / np.clip(probabilities.sum(axis=1, keepdims=True), 1e-12, None)
    given = np.searchsorted(present, label_indices)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quality = get_label_quality_scores(given, probabilities, method="self_confidence")
        flagged = np.flatnonzero(find_label_issues(given, probabilities, filter_by=LABEL_FILTER))
    suggested = [labels[present[index]] for index in probabilities[flagged].argmax(axis=1)]
    details = [f"p(given) {probabilities[row, given[row]]:.2f}, p(suggested) {probabilities[row].max():.2f}"
               for row in flagged]
    return finding_rows("label", table, flagged, 1.0 - quality[flagged], suggested=suggested, details=details)
