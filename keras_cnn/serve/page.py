"""The page at ``/``: one self-contained HTML file (its CSS and script inline; nothing from a CDN)."""

from __future__ import annotations

import functools
from importlib import resources


@functools.cache
def page_html() -> str:
    """The page's HTML (read once from the package)."""
    return resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")
