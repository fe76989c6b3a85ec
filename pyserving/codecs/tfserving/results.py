"""Classification and regression results -> TF Serving's result messages (gRPC answers and request logs)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def label_text(label: bytes | str) -> str:
    # Class.label is a proto string: it must be UTF-8.
    return label.decode("utf-8", "replace") if isinstance(label, bytes) else str(label)


def fill_classifications(out: Any, classes: Sequence[Sequence[tuple[bytes, float]]]) -> None:
    """`out` is a ClassificationResult; per example, its (label, score) pairs."""
    for per_example in classes:
        classification = out.classifications.add()
        for label, score in per_example:
            classification.classes.add(label=label_text(label), score=float(score))


def fill_regressions(out: Any, values: Sequence[float]) -> None:
    """`out` is a RegressionResult."""
    for value in values:
        out.regressions.add(value=float(value))
