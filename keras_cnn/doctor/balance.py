"""Balance: images per label and part, the imbalance ratio, and what to do about it."""

from __future__ import annotations

from typing import Any

import pandas as pd

from keras_cnn.data.split import TOTAL, split_counts

# From this ratio of the largest to the smallest label on, the report suggests class weights.
IMBALANCE_ADVICE_RATIO = 1.5


def balance_summary(table: pd.DataFrame, labels: list[str]) -> dict[str, Any]:
    """``{"counts": {part: {label: n}}, "ratio", "largest", "smallest", "advice"}`` for ``table``.

    ``ratio``: images of the largest label over the smallest, over all parts (None with one
    label); ``advice``: the option that compensates, or "" when the labels are near even.
    """
    counts = split_counts(table[["objectId", "value", "type"]], labels)
    totals = counts[TOTAL]
    present = {label: count for label, count in totals.items() if count}
    if len(present) < 2:
        return {"counts": counts, "ratio": None, "largest": None, "smallest": None, "advice": ""}
    largest = max(present, key=present.get)
    smallest = min(present, key=present.get)
    ratio = present[largest] / present[smallest]
    advice = ""
    if ratio >= IMBALANCE_ADVICE_RATIO:
        advice = (f"label {largest!r} has {ratio:.1f}x the images of {smallest!r}: train with "
                  "--class-weight balanced (or gather more of the small labels)")
    return {"counts": counts, "ratio": round(ratio, 3), "largest": largest, "smallest": smallest,
            "advice": advice}
