"""Counting a model's parameters, the one way kcnn does it everywhere."""

from __future__ import annotations

from typing import Any


def _count(weights) -> int:
    # A weight shared by two layers is one set of parameters (as model.summary() counts it).
    unique: dict[int, Any] = {}
    for weight in weights:
        unique.setdefault(id(weight), weight)
    total = 0
    for weight in unique.values():
        size = 1
        for dimension in weight.shape:
            size *= int(dimension)
        total += size
    return total


def parameter_counts(model) -> dict[str, int]:
    """Trainable / non-trainable / total parameters of a Keras model, as ``model.summary()`` counts them."""
    trainable = _count(model.trainable_weights)
    non_trainable = _count(model.non_trainable_weights)
    return {
        "trainable_params": trainable,
        "non_trainable_params": non_trainable,
        "total_params": trainable + non_trainable,
    }
