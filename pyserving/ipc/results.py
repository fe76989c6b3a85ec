"""Classify, regress and multi-inference results, and examples, as channel tensors and plain data (labels are
bytes, which JSON cannot hold)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pyserving.ipc.channel import Channel, Payload


def encode_classes(channel: Channel, classes: list[list[tuple[bytes, float]]], payload: Payload) -> list[Any]:
    n = len(classes)
    width = len(classes[0]) if n else 0
    labels = np.empty((n, width), dtype=object)
    scores = np.zeros((n, width), dtype=np.float64)  # float64: Python's floats round-trip exactly
    for i, row in enumerate(classes):
        for j, (label, score) in enumerate(row):
            labels[i, j], scores[i, j] = label, score
    return channel.encode_tensors({"labels": labels, "scores": scores}, payload)


def decode_classes(channel: Channel, meta: list[Any], payload: memoryview) -> list[list[tuple[bytes, float]]]:
    t = channel.decode_tensors(meta, payload)
    labels, scores = t["labels"], t["scores"].tolist()
    return [[(labels[i, j], scores[i][j]) for j in range(labels.shape[1])] for i in range(labels.shape[0])]


def examples_meta(channel: Channel, examples: Sequence[bytes], payload: Payload) -> list[Any]:
    array = np.empty(len(examples), dtype=object)
    array[:] = list(examples)
    return channel.encode_tensors({"x": array}, payload)


def _result(channel: Channel, result: Any, payload: Payload) -> list[Any]:
    if result is None:
        return ["n", None]
    if result and isinstance(result[0], list):
        return ["c", encode_classes(channel, result, payload)]
    return ["r", list(result)]


def encode_results(channel: Channel, api: str, results: Any, payload: Payload) -> list[Any]:
    if api == "multi_inference":
        return [[signature, method, _result(channel, result, payload)] for signature, method, result in results]
    return _result(channel, results, payload)


def decode_results(channel: Channel, api: str, data: Any, payload: memoryview) -> Any:
    def one(item: list[Any]) -> Any:
        kind, value = item
        return None if kind == "n" else decode_classes(channel, value, payload) if kind == "c" else value

    if api == "multi_inference":
        return [(signature, method, one(item)) for signature, method, item in data]
    return one(data)
