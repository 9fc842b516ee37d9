"""Whether something can be downloaded now: a quick check, so offline runs fail before any work."""

from __future__ import annotations

import urllib.error
import urllib.request

CONNECTIVITY_TIMEOUT_SECONDS = 3.0


def can_download(url: str, timeout: float = CONNECTIVITY_TIMEOUT_SECONDS) -> bool:
    """Whether ``url`` answers a HEAD request within ``timeout`` seconds (proxies honoured)."""
    request = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return 200 <= response.status < 400
    except (urllib.error.URLError, OSError, ValueError):
        return False
