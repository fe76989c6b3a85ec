"""Pure: which arm of a traffic split a request goes to, and what servable an arm names."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TypeVar

from pyserving.core.ids import ServableRequest

Arm = TypeVar("Arm")


def sticky_point(key: str) -> float:
    """A stable point in [0, 100) for a routing key: the same key always maps to the same point, in every process
    (blake2b, not Python's salted hash)."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 * 100


def choose_arm(weights: Sequence[tuple[Arm, float]], point: float) -> Arm:
    """The arm whose cumulative weight range holds `point` (0 <= point < total weight). Zero weights are never
    chosen. Raises ValueError when every weight is zero."""
    total = sum(w for _, w in weights)
    if total <= 0:
        raise ValueError("every arm has weight 0")
    point = point * total / 100
    upto = 0.0
    last = None
    for arm, weight in weights:
        if weight <= 0:
            continue
        upto += weight
        last = arm
        if point < upto:
            return arm
    assert last is not None
    return last  # point == total after rounding


def resolve(model: str, arm: int | str) -> ServableRequest:
    """The request a traffic split's arm stands for: a version number, or a version label."""
    return ServableRequest(model, label=arm) if isinstance(arm, str) else ServableRequest(model, arm)
