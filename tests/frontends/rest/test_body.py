"""The decoded-size check that refuses a JSON body before it is parsed: the same documents refused as by its
formula (commas, opening brackets and strings counted), whichever way it gets there."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pyserving.errors import RequestTooLarge
from pyserving.frontends.rest import body as body_mod
from pyserving.frontends.rest.body import check_decoded_size


def formula(doc: bytes) -> int:
    """The estimate the check documents: 8 bytes a value, 56 more a string."""
    values = doc.count(b",") + doc.count(b"[") + doc.count(b"{")
    return values * 8 + doc.count(b'"') // 2 * 56


def refused(doc: bytes, limit: int | None) -> bool:
    try:
        check_decoded_size(doc, limit)
    except RequestTooLarge as exc:
        assert f"would decode to about {formula(doc)} bytes" in exc.message
        assert "--max_request_bytes" in exc.message
        return True
    return False


NUMBERS = json.dumps({"instances": np.random.default_rng(0).random((4, 64, 3)).round(3).tolist()}).encode()
ZEROS = b'{"instances": [' + b"0," * 50_000 + b"0]}"
STRINGS = json.dumps({"instances": ["ab"] * 20_000}).encode()
COMMAS_IN_STRINGS = json.dumps({"instances": [",,,,[[{{"] * 5_000}).encode()
EMPTY_ARRAYS = b'{"instances": [' + b"[]," * 30_000 + b"[]]}"


@pytest.mark.parametrize("doc", [NUMBERS, ZEROS, STRINGS, COMMAS_IN_STRINGS, EMPTY_ARRAYS],
                         ids=["numbers", "zeros", "strings", "commas-in-strings", "empty-arrays"])
def test_refuses_exactly_what_the_formula_refuses(doc: bytes) -> None:
    estimate = formula(doc)
    # around the estimate, and around the one-count bound (every non-quote byte a value) that decides first
    bound = (len(doc) - doc.count(b'"')) * 8 + doc.count(b'"') // 2 * 56
    for limit in {estimate - 1, estimate, estimate + 1, bound - 1, bound, bound + 1, len(doc) * 64 - 1,
                  len(doc) * 64, max(1, estimate // 2)}:
        assert refused(doc, limit) == (estimate > limit), limit
    assert not refused(doc, None)  # --max_request_bytes=0: TF Serving's limits, none of its own


def test_counts_across_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    # the counts are taken a slice at a time: with slices of 7 bytes, every slice edge falls somewhere odd
    monkeypatch.setattr(body_mod, "_COUNT_STEP", 7)
    for doc in (NUMBERS, COMMAS_IN_STRINGS, EMPTY_ARRAYS):
        estimate = formula(doc)
        assert refused(doc, estimate - 1) and not refused(doc, estimate)
