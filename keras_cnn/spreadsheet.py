"""CSV files written for people to open in a spreadsheet: no cell runs as a formula.

A spreadsheet treats a cell starting with ``=``, ``+``, ``-`` or ``@`` (and, in some, a tab
or a carriage return) as a formula, so a label or file name such as
``=HYPERLINK("http://…")`` in ``predictions.csv`` would run when the file is opened (CSV
injection).  Such a cell is written with a ``'`` in front, which spreadsheets show as the
text itself (OWASP's advice); a cell that is a number (``-0.5``, ``+3``, ``1e-5``) stays
as it is, and so does a cell starting with ``'`` gets one more, so :func:`unescape_cell`
gives every cell back exactly.

Files kcnn reads back as data (the split CSV, which must stay byte-identical to the
original split script's, ``history.csv``) are not written through here.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
ESCAPE = "'"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def escape_cell(value: Any) -> Any:
    """``value`` as a spreadsheet shows it as text: ``'`` in front of a would-be formula (or of a ``'``)."""
    if not isinstance(value, str) or not value:
        return value
    if value.startswith(ESCAPE) or (value.startswith(FORMULA_STARTS) and not _is_number(value)):
        return ESCAPE + value
    return value


def unescape_cell(value: str) -> str:
    """The cell :func:`escape_cell` was given."""
    if value.startswith(ESCAPE) and len(value) > 1 and value[1:].startswith((ESCAPE, *FORMULA_STARTS)):
        return value[1:]
    return value


def csv_text(header: Sequence[Any], rows: Iterable[Sequence[Any]]) -> str:
    """CSV text (``\\n`` line ends) of ``header`` and ``rows``, every text cell escaped."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([escape_cell(cell) for cell in header])
    writer.writerows([escape_cell(cell) for cell in row] for row in rows)
    return buffer.getvalue()


def frame_csv_text(frame, float_format: str | None = None) -> str:
    """A pandas frame's CSV text (no index), its column names and text cells escaped."""
    from pandas.api.types import is_numeric_dtype

    escaped = frame.rename(columns=escape_cell)
    for column in escaped.columns:
        if not is_numeric_dtype(escaped[column]):   # text, whichever dtype pandas gave it
            escaped[column] = escaped[column].map(escape_cell)
    return escaped.to_csv(index=False, float_format=float_format, lineterminator="\n")
