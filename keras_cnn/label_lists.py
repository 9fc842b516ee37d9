"""Two lists of a model's labels compared: they must agree in content and order.

A class index is a position in a run's ``labels.txt`` and ``config.json``, and in an
export's ``assets/labels.txt`` and ``assets.extra/kcnn.json``: two swapped lines would name
every answer wrongly, so any difference is refused with one line naming both files, where
they first differ and what to do.  Labels are compared Unicode-normalised (NFC,
:func:`keras_cnn.io.normalize_label`).  Reads no file and imports no TensorFlow: ``predict``
and ``serve`` check an export with it before starting TensorFlow.
"""

from __future__ import annotations

import os
from typing import Sequence

from keras_cnn.errors import UserError
from keras_cnn.io import normalize_label
from keras_cnn.messages import MAX_MESSAGE

# Why order matters, said when the line has room for it (a long run path may leave none).
_WHY = "a class index is a position in both lists"


def _shown_label(label: str, limit: int) -> str:
    text = repr(label)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def _difference(first: list[str], second: list[str], one: str, other: str, limit: int, each: int) -> str:
    """Where the lists differ: the first class index whose label differs, or labels only one has
    (``limit``: the longest a label is shown; ``each``: how many of each list's own are shown)."""
    if sorted(first) == sorted(second):
        position = next(index for index, (mine, theirs) in enumerate(zip(first, second)) if mine != theirs)
        if not each:
            return f"the same labels in another order from class {position} on"
        return (f"the same labels in another order (class {position} is {_shown_label(first[position], limit)} in "
                f"{one}, {_shown_label(second[position], limit)} in {other})")
    shown = [f"{_shown_label(label, limit)} only in {one}" for label in first if label not in set(second)][:each]
    shown += [f"{_shown_label(label, limit)} only in {other}" for label in second if label not in set(first)][:each]
    return f"{one} has {len(first)} labels, {other} {len(second)}" + (f" ({', '.join(shown)})" if shown else "")


def _common_folder(first_path: str | os.PathLike, second_path: str | os.PathLike) -> tuple[str, str, str]:
    """The folder holding both files (as the caller spelt it: a relative run path stays short) and each
    file's path inside it."""
    paths = [os.path.normpath(os.fspath(path)) for path in (first_path, second_path)]
    try:
        folder = os.path.commonpath(paths)
    except ValueError:   # one relative, one absolute
        paths = [os.path.abspath(path) for path in paths]
        folder = os.path.commonpath(paths)
    return folder, os.path.relpath(paths[0], folder), os.path.relpath(paths[1], folder)


def check_same_labels(first_path: str | os.PathLike, first: Sequence[str], second_path: str | os.PathLike,
                      second: Sequence[str], remedy: str) -> list[str]:
    """The labels (NFC) when both lists hold the same ones in the same order; else one ``UserError`` line
    naming both files, where they first differ, and ``remedy`` (what to do about it).

    The line keeps to a message's length: the reason order matters, then the labels, then the
    file names said a second time give way to the names of the files and the remedy.
    """
    first = [normalize_label(str(label)) for label in first]
    second = [normalize_label(str(label)) for label in second]
    if first == second:
        return first
    folder, one, other = _common_folder(first_path, second_path)
    # Shorter and shorter: the reason, then the labels, then the file names said again give way.
    candidates = [f"{folder}: {one} and {other} disagree: {_difference(first, second, *names, *shown)}; {remedy}{why}"
                  for names, shown, why in (((one, other), (60, 2), f" ({_WHY})"), ((one, other), (60, 2), ""),
                                            ((one, other), (24, 1), ""), ((one, other), (24, 0), ""),
                                            (("the first", "the second"), (24, 0), ""))]
    raise UserError(next((line for line in candidates if len(line) <= MAX_MESSAGE), candidates[-1]))
