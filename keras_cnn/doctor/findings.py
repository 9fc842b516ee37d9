"""What ``kcnn doctor`` can find (one table of issue types) and the files it writes about them.

Every finding is one row of ``issues.csv``::

    objectId,issue,score,type,value,suggested_value,other_objectId

``objectId`` is the image's path under the images root (as in a split CSV), ``type`` its
part, ``value`` its label, ``score`` in 0..1 (higher = more certain), ``suggested_value``
the label the out-of-sample model prefers (label issues), ``other_objectId`` the other
member of a pair (duplicates, leakage).  Rows come in the order of :data:`ISSUE_TYPES`
(worst first), then by score.  ``exclude.txt`` lists the images a user most likely wants
out of training (the types marked ``exclude``), one path per line: what ``--exclude`` reads.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from keras_cnn.io import atomic_write_text

ISSUE_COLUMNS = ["objectId", "issue", "score", "type", "value", "suggested_value", "other_objectId"]
# Shown in the report beside each row; not a column of issues.csv.
DETAIL_COLUMN = "detail"


@dataclass(frozen=True)
class IssueType:
    """One kind of finding: its name in issues.csv, how the report titles and explains it."""

    name: str
    title: str
    explanation: str
    pair: bool = False          # a row names two images (objectId and other_objectId)
    exclude: bool = False       # its objectIds go to exclude.txt


# Report and CSV order: what corrupts a measurement or training first.
ISSUE_TYPES = (
    IssueType("leakage", "Leakage: the same picture in two parts",
              "A copy (identical or near-identical) of an image sits in another part, so the validation or "
              "test score partly measures memory. The copy in the later part (test, then validation) is "
              "listed first and goes to exclude.txt.", pair=True, exclude=True),
    IssueType("exact_duplicate", "Exact duplicates",
              "Files with identical bytes in the same part; the later copy goes to exclude.txt. Under two "
              "labels one of them is wrong.", pair=True, exclude=True),
    IssueType("label", "Label issues",
              "Images whose given label the out-of-sample model finds unlikely (confident learning, "
              "cleanlab), with the label it suggests; check them, then fix them with --relabel or leave "
              "them out with --exclude.", exclude=True),
    IssueType("unreadable", "Unreadable files",
              "Files that are missing, empty, not images, or truncated: training would stop on them.",
              exclude=True),
    IssueType("near_duplicate", "Near-duplicates in one part",
              "Re-encoded, resized, slightly cropped or brightened copies of another image in the same part."
              " They count twice in training or in a score.", pair=True),
    IssueType("outlier", "Outliers",
              "Images far from their nearest neighbours in feature space: unlike anything else in the set "
              "(another subject, a screenshot, a blank frame)."),
    IssueType("dark", "Dark pictures", "Mostly black or much darker than a normal exposure."),
    IssueType("light", "Over-exposed pictures", "Mostly white or washed out."),
    IssueType("blurry", "Blurry pictures", "Few sharp edges: out of focus or heavily smoothed."),
    IssueType("small", "Very small pictures", "Much smaller than the typical picture of the set "
              "(less than half its shorter side): they are blown up to the model's input size."),
    IssueType("odd_aspect", "Extreme aspect ratios", "Very wide or very tall: a resize to a square "
              "input distorts them."),
    IssueType("grayscale", "Greyscale among colour", "Grey pictures in a set that is mostly in colour."),
)
ISSUES_BY_NAME = {issue.name: issue for issue in ISSUE_TYPES}


def empty_findings() -> pd.DataFrame:
    """A findings frame without rows (the columns of issues.csv plus the report's detail)."""
    return pd.DataFrame({column: pd.Series(dtype=object) for column in [*ISSUE_COLUMNS, DETAIL_COLUMN]})


def finding_rows(issue: str, table: pd.DataFrame, positions, scores, others=None, suggested=None,
                 details=None) -> pd.DataFrame:
    """Rows of one issue type for the images at ``positions`` of ``table`` (objectId, value, type).

    ``others``: positions of the other member of each pair; ``suggested``: suggested labels;
    ``details``: a short text per row for the report.
    """
    if issue not in ISSUES_BY_NAME:
        raise ValueError(f"unknown issue type {issue!r}; known: {', '.join(ISSUES_BY_NAME)}")
    positions = list(positions)
    rows = table.iloc[positions]
    count = len(positions)
    frame = pd.DataFrame({
        "objectId": rows["objectId"].to_numpy(dtype=object),
        "issue": [issue] * count,
        "score": [float(min(1.0, max(0.0, score))) for score in scores],
        "type": rows["type"].to_numpy(dtype=object),
        "value": rows["value"].to_numpy(dtype=object),
        "suggested_value": list(suggested) if suggested is not None else [""] * count,
        "other_objectId": (table["objectId"].to_numpy(dtype=object)[list(others)] if others is not None
                           else [""] * count),
        DETAIL_COLUMN: list(details) if details is not None else [""] * count,
    })
    return frame


def ordered_findings(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """All findings in report order: by issue type (worst first), then by score, highest first."""
    frames = [frame for frame in frames if len(frame)]
    if not frames:
        return empty_findings()
    findings = pd.concat(frames, ignore_index=True)
    rank = {issue.name: position for position, issue in enumerate(ISSUE_TYPES)}
    findings = findings.assign(_rank=findings["issue"].map(rank))
    findings = findings.sort_values(["_rank", "score", "objectId"], ascending=[True, False, True], kind="stable")
    return findings.drop(columns="_rank").reset_index(drop=True)


def issue_counts(findings: pd.DataFrame) -> dict[str, int]:
    """Rows per issue type, every type present (0 when none)."""
    counts = findings["issue"].value_counts()
    return {issue.name: int(counts.get(issue.name, 0)) for issue in ISSUE_TYPES}


def excluded_paths(findings: pd.DataFrame) -> list[str]:
    """The objectIds exclude.txt lists: those of the issue types marked ``exclude``, each once, in report order."""
    wanted = {issue.name for issue in ISSUE_TYPES if issue.exclude}
    return list(dict.fromkeys(findings.loc[findings["issue"].isin(wanted), "objectId"]))


def write_issues_csv(findings: pd.DataFrame, path: str | os.PathLike) -> Path:
    """``issues.csv`` atomically: the columns of :data:`ISSUE_COLUMNS`, scores with 4 decimals."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(ISSUE_COLUMNS)
    for row in findings[ISSUE_COLUMNS].itertuples(index=False):
        values = list(row)
        values[ISSUE_COLUMNS.index("score")] = f"{float(row.score):.4f}"
        writer.writerow(values)
    return atomic_write_text(path, buffer.getvalue())


def write_exclude_file(paths: list[str], path: str | os.PathLike) -> Path:
    """``exclude.txt`` atomically: a comment line saying what it is for, then one path per line."""
    header = "# images kcnn doctor suggests leaving out: kcnn train/transfer/split --exclude THIS_FILE\n"
    return atomic_write_text(path, header + "".join(f"{item}\n" for item in paths))
