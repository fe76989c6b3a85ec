"""Big answers are written in slices (so a thread encoding them lets the event loop run between slices): the
bytes must be exactly those of one orjson call, for every shape, dtype and the NaN/Infinity rewrite."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from pyserving.frontends.rest import json_codec


@pytest.mark.parametrize("array", [
    np.arange(1000, dtype=np.int64),
    np.linspace(0, 1, 3000, dtype=np.float32).reshape(300, 10),
    np.linspace(-5, 5, 2400).reshape(20, 30, 4),
    np.array([True, False] * 500),
    np.ones((3, 700), np.float64),  # rows bigger than a slice
    np.zeros((0, 4), np.float32),
], ids=["int-1d", "float32-2d", "float64-3d", "bool", "wide-rows", "empty"])
@pytest.mark.parametrize("row_format", [True, False])
def test_slices_write_the_same_bytes_as_one_call(monkeypatch: pytest.MonkeyPatch, array: np.ndarray,
                                                 row_format: bool) -> None:
    monkeypatch.setattr(json_codec, "_CHUNK_BYTES", 256)  # many slices from small arrays
    key = "predictions" if row_format else "outputs"
    assert json_codec.encode_predict({"y": array}, row_format) == orjson.dumps({key: array},
                                                                             option=orjson.OPT_SERIALIZE_NUMPY)


def test_non_finite_values_in_a_sliced_answer_are_tf_servings_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(json_codec, "_CHUNK_BYTES", 64)
    array = np.full((50, 4), 0.5, np.float32)
    array[37, 2] = np.nan
    array[3, 0] = -np.inf
    body = json_codec.encode_predict({"y": array}, True)
    assert body.count(b"NaN") == 1 and body.count(b"-Infinity") == 1 and b"null" not in body
