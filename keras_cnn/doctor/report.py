"""``doctor.html``: one page, a section per kind of finding (worst first), thumbnails inline.

The page is a single file that renders offline: thumbnails are JPEG ``data:`` URIs made
from the images (nothing links to the image folder, a CDN or a script), and every text
goes through :func:`html.escape`.  A section shows its first ``MAX_ROWS_SHOWN`` findings;
``issues.csv`` has them all.
"""

from __future__ import annotations

import base64
import html
import io
import os
from functools import lru_cache
from typing import Any

import pandas as pd
from PIL import Image

from keras_cnn.data.files import locate_image
from keras_cnn.data.split import PARTS, TOTAL
from keras_cnn.doctor.findings import ISSUE_TYPES, IssueType
from keras_cnn.io import atomic_write_text

MAX_ROWS_SHOWN = 100
THUMBNAIL_PIXELS = 96

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 72em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: .5em 0; } td, th { padding: .25em .6em; border: 1px solid #ddd;
  vertical-align: middle; text-align: left; } th { background: #f4f4f4; } td.number { text-align: right; }
img.thumbnail { width: 96px; height: 96px; object-fit: contain; background: #eee; display: block; }
.pair { display: flex; gap: .4em; } .missing { width: 96px; height: 96px; background: #fdd; display: flex;
  align-items: center; justify-content: center; font-size: .8em; }
.note { color: #555; } .advice { background: #ffd; padding: .4em .6em; } code { font-size: .95em; }
"""


@lru_cache(maxsize=4096)
def _thumbnail_uri(path: str) -> str | None:
    """A small JPEG of the image at ``path`` as a data URI (None when Pillow cannot read it)."""
    try:
        with Image.open(path) as image:
            image.thumbnail((THUMBNAIL_PIXELS, THUMBNAIL_PIXELS))
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="JPEG", quality=85)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _thumbnail(images: str, object_id: str) -> str:
    path = locate_image(images, object_id)
    uri = _thumbnail_uri(os.fspath(path)) if path is not None else None
    if uri is None:
        return '<div class="missing">unreadable</div>'
    return f'<img class="thumbnail" src="{uri}" alt="{html.escape(object_id, quote=True)}">'


def _text(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _table(header: list[str], rows: list[list[str]], classes: list[str] | None = None) -> str:
    classes = classes or [""] * len(header)
    head = "".join(f"<th>{_text(name)}</th>" for name in header)
    body = "".join("<tr>" + "".join(f'<td class="{css}">{cell}</td>' if css else f"<td>{cell}</td>"
                                    for cell, css in zip(row, classes)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _balance_section(balance: dict[str, Any]) -> str:
    counts = balance["counts"]
    labels = list(counts[TOTAL])
    header = ["label", *PARTS, TOTAL]
    rows = [[_text(label), *(str(counts[part][label]) for part in (*PARTS, TOTAL))] for label in labels]
    ratio = balance.get("ratio")
    summary = (f"<p>Largest label {_text(balance['largest'])} / smallest {_text(balance['smallest'])}: "
               f"{ratio:.2f}x.</p>" if ratio is not None else "<p>One label only.</p>")
    advice = f'<p class="advice">{_text(balance["advice"])}</p>' if balance.get("advice") else ""
    table = _table(header, rows, ["", *["number"] * (len(header) - 1)])
    return f'<section id="balance"><h2>Balance</h2>{summary}{advice}{table}</section>'


def _finding_rows(issue: IssueType, rows: pd.DataFrame, images: str,
                  lookup: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """The header and cells of a section's table (pairs side by side; label issues with the suggestion)."""
    if issue.pair:
        header = ["pictures", "image", "part", "label", "other image", "other's part", "other's label", "score",
                  "detail"]
        table = []
        for row in rows.itertuples(index=False):
            other = row.other_objectId
            other_row = lookup.get(other, {})
            pictures = f'<div class="pair">{_thumbnail(images, row.objectId)}{_thumbnail(images, other)}</div>'
            table.append([pictures, _text(row.objectId), _text(row.type), _text(row.value), _text(other),
                          _text(other_row.get("type", "")), _text(other_row.get("value", "")),
                          f"{row.score:.3f}", _text(row.detail)])
        return header, table
    if issue.name == "label":
        header = ["picture", "image", "part", "given label", "suggested label", "score", "detail"]
        return header, [[_thumbnail(images, row.objectId), _text(row.objectId), _text(row.type), _text(row.value),
                         f"<strong>{_text(row.suggested_value)}</strong>", f"{row.score:.3f}", _text(row.detail)]
                        for row in rows.itertuples(index=False)]
    header = ["picture", "image", "part", "label", "score", "detail"]
    return header, [[_thumbnail(images, row.objectId), _text(row.objectId), _text(row.type), _text(row.value),
                     f"{row.score:.3f}", _text(row.detail)] for row in rows.itertuples(index=False)]


def _issue_section(issue: IssueType, findings: pd.DataFrame, images: str, lookup: dict[str, dict],
                   skipped: dict[str, str]) -> str:
    rows = findings[findings["issue"] == issue.name]
    title = f"{issue.title} ({len(rows):,})"
    parts = [f'<section id="{issue.name}"><h2>{_text(title)}</h2><p class="note">{_text(issue.explanation)}</p>']
    if issue.name in skipped:
        parts.append(f"<p>Not checked: {_text(skipped[issue.name])}.</p>")
    elif rows.empty:
        parts.append("<p>None found.</p>")
    else:
        header, table = _finding_rows(issue, rows.head(MAX_ROWS_SHOWN), images, lookup)
        parts.append(_table(header, table))
        if len(rows) > MAX_ROWS_SHOWN:
            parts.append(f"<p class=\"note\">{len(rows) - MAX_ROWS_SHOWN:,} more in issues.csv.</p>")
    parts.append("</section>")
    return "".join(parts)


def write_doctor_report(path: str | os.PathLike, findings: pd.DataFrame, table: pd.DataFrame, images: str,
                        summary: dict[str, Any], skipped: dict[str, str]) -> None:
    """Write ``doctor.html`` atomically.

    ``findings``: issues.csv's rows (plus ``detail``), in report order; ``table``: every image
    (objectId, value, type); ``summary``: source, images, labels, features, notes, counts,
    balance, excluded; ``skipped``: issue name -> why it was not checked.
    """
    lookup = {row.objectId: {"type": row.type, "value": row.value} for row in table.itertuples(index=False)}
    counts = summary["counts"]
    overview = _table(["finding", "images"],
                      [[f'<a href="#{issue.name}">{_text(issue.title)}</a>',
                        "not checked" if issue.name in skipped else f"{counts.get(issue.name, 0):,}"]
                       for issue in ISSUE_TYPES], ["", "number"])
    notes = "".join(f'<p class="advice">{_text(note)}</p>' for note in summary.get("notes", []))
    facts = (f"<p>{summary['images']:,} images in {len(summary['labels'])} labels, read from "
             f"<code>{_text(summary['source'])}</code>; features: {_text(summary['features'])}. "
             f"{summary['excluded']:,} images are listed in <code>exclude.txt</code> "
             f"(<code>kcnn train ... --exclude exclude.txt</code> leaves them out).</p>")
    sections = "".join(_issue_section(issue, findings, images, lookup, skipped) for issue in ISSUE_TYPES)
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>kcnn doctor</title>'
            f"<style>{_STYLE}</style></head><body><h1>kcnn doctor</h1>{facts}{notes}"
            f'<section id="overview"><h2>Findings</h2>{overview}</section>'
            f"{_balance_section(summary['balance'])}{sections}</body></html>\n")
    atomic_write_text(path, page)
