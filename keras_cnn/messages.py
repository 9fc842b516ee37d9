"""Bounded user-facing messages: long lists go to a file, the message names it.

Every message kcnn prints stays one readable line (about 300 characters at most).  A
message that would list many items (missing files, bad images, duplicates) shows the
first few and says where the full list was written.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Iterable

from keras_cnn.io import atomic_write_text

MAX_LINE = 300        # characters; longer message lines are shortened
# The room a message has once "kcnn: error: " or "kcnn: warning: " leads its line.
MAX_MESSAGE = MAX_LINE - len("kcnn: warning: ")
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


# Characters people swap when typing a name they have read: 0/o and 1/l/i compare as equal.
_LOOKALIKES = str.maketrans("oli", "011")
CLOSE_ENOUGH = 0.6        # difflib's similarity ratio a suggestion needs
NEAR_THE_BEST = 0.05      # suggestions that far below the closest are left out


def did_you_mean(name: object, candidates: Iterable[str], limit: int = 3) -> str:
    """``"; did you mean 'efficientnet_b0'?"`` for a misspelt ``name``, or ``""`` when nothing is close.

    Names are compared with :class:`difflib.SequenceMatcher`, ignoring case and the
    look-alike characters 0/o and 1/l/i; only the closest names are offered (those nearly as
    close as the best, at most ``limit``).  An error message appends the result to its sentence.
    """
    folded_name = str(name).strip().lower().translate(_LOOKALIKES)
    scored = []
    for candidate in dict.fromkeys(str(candidate) for candidate in candidates):
        matcher = difflib.SequenceMatcher(None, folded_name, candidate.lower().translate(_LOOKALIKES))
        scored.append((matcher.ratio(), candidate))
    scored = sorted((item for item in scored if item[0] >= CLOSE_ENOUGH), key=lambda item: -item[0])
    if not scored:
        return ""
    quoted = [f"'{candidate}'" for score, candidate in scored[:limit] if score >= scored[0][0] - NEAR_THE_BEST]
    choices = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]
    return f"; did you mean {choices}?"


# What trains a base that has random weights: every layer, at a rate for training from scratch
# (the fine-tuning default, 1e-5, is made for pretrained weights and leaves random ones where they are).
RANDOM_BASE_RATE = 1e-3
RANDOM_BASE_ADVICE = f"`kcnn finetune --unfreeze-from all --learning-rate {RANDOM_BASE_RATE:g}`"


def frozen_random_base_warning(base: str, frozen: str = "frozen layers") -> str:
    """The warning for a base that keeps random weights while (part of) it stays frozen.

    Such layers pass on almost nothing the head can learn from, so accuracy stays near
    chance; said by ``kcnn transfer --weights none``, ``kcnn finetune`` and ``kcnn lr-find``
    on such a run, and ``kcnn demo`` when it cannot get ImageNet weights.
    """
    return (f"{base} has random weights (--weights none) and its {frozen} cannot learn, so expect "
            "accuracy near chance; use --weights imagenet (or a weights file), or train every layer at a "
            f"from-scratch rate with {RANDOM_BASE_ADVICE}")


def slow_random_base_warning(base: str, learning_rate: float) -> str:
    """The warning for training every layer of a random-weights base at a fine-tuning rate."""
    return (f"{base} has random weights (--weights none): at the fine-tuning rate {learning_rate:g}, made for "
            f"pretrained weights, they barely move and the loss stays near chance; train them at a from-scratch "
            f"rate, e.g. --learning-rate {RANDOM_BASE_RATE:g}")
