"""Bounded user-facing messages: long lists go to a file, the message names it.

Every message kcnn prints stays one readable line (about 300 characters at most).  A
message that would list many items (missing files, bad images, duplicates) shows the
first few and says where the full list was written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from keras_cnn.io import atomic_write_text

MAX_LINE = 300        # characters; longer message lines are shortened
MAX_ITEMS = 5         # items shown in a message before "and N more"


def summarize_items(items: Iterable[object], full_list_path: str | os.PathLike | None = None,
                    limit: int = MAX_ITEMS) -> str:
    """``"a, b, c, d, e and 7 more (full list: PATH)"`` for a message line.

    With more than ``limit`` items and a ``full_list_path``, every item is written there
    (one per line, atomically) and the path is named; without a path only the count is.
    """
    items = [str(item) for item in items]
    shown = ", ".join(items[:limit])
    hidden = len(items) - limit
    if hidden <= 0:
        return shown
    # With limit 0 (no room for examples) the count alone is given.
    more = f"{shown} and {hidden} more" if shown else f"{hidden}"
    if full_list_path is None:
        return more
    path = Path(full_list_path)
    atomic_write_text(path, "".join(f"{item}\n" for item in items))
    return f"{more} (full list: {path})"


def bound_line(message: str, limit: int = MAX_LINE) -> str:
    """Shorten each line of ``message`` to ``limit`` characters (an ellipsis marks a cut)."""
    return "\n".join(line if len(line) <= limit else line[: limit - 1] + "…" for line in message.splitlines())


def frozen_random_base_warning(base: str, frozen: str = "frozen layers") -> str:
    """The warning for a base that keeps random weights while (part of) it stays frozen.

    Such layers pass on almost nothing the head can learn from, so accuracy stays near
    chance; said by ``kcnn transfer --weights none``, ``kcnn finetune`` on such a run, and
    ``kcnn demo`` when it cannot get ImageNet weights.
    """
    return (f"{base} has random weights (--weights none) and its {frozen} cannot learn, so expect "
            "accuracy near chance; use --weights imagenet (or a weights file), or train every layer with "
            "`kcnn finetune --unfreeze-from all`")
