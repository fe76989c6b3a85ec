"""codecs.tfrecord against TensorFlow's own TFRecord writer and reader: the same bytes both ways, and damaged files
refused in TensorFlow's words."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
import tensorflow as tf

from pyserving.codecs.tfrecord import TFRecordError, TFRecordWriter, masked_crc32c, read_records

RECORDS = [b"", b"x", b"a PredictionLog, say", os.urandom(70_000)]


def test_files_are_byte_identical_to_tensorflows(tmp_path: Path) -> None:
    with tf.io.TFRecordWriter(str(tmp_path / "tf")) as writer:
        for record in RECORDS:
            writer.write(record)
    with TFRecordWriter(str(tmp_path / "ours")) as ours:
        for record in RECORDS:
            ours.write(record)
    assert (tmp_path / "ours").read_bytes() == (tmp_path / "tf").read_bytes()
    assert list(read_records(str(tmp_path / "tf"))) == RECORDS
    assert [bytes(t.numpy()) for t in tf.data.TFRecordDataset(str(tmp_path / "ours"))] == RECORDS


def test_the_writer_never_overwrites(tmp_path: Path) -> None:
    (tmp_path / "log").write_bytes(b"someone else's")
    with pytest.raises(FileExistsError):
        TFRecordWriter(str(tmp_path / "log"))


def _file(tmp_path: Path, data: bytes) -> str:
    path = tmp_path / "f"
    path.write_bytes(data)
    return str(path)


def test_damage_is_refused_with_the_records_offset(tmp_path: Path) -> None:
    with TFRecordWriter(str(tmp_path / "good")) as writer:
        writer.write(b"first")
        writer.write(b"second")
    good = (tmp_path / "good").read_bytes()
    second = 16 + len(b"first")
    flipped = bytearray(good)
    flipped[second + 12] ^= 1  # a byte of the second record's data
    for data, message, before in [
        (good[:-1], f"truncated record at {second}", [b"first"]),
        (good[:second + 5], f"truncated record at {second}", [b"first"]),
        (bytes(flipped), f"corrupted record at {second}", [b"first"]),
        (b"JSON, not a TFRecord\n", "corrupted record at 0", []),
    ]:
        read: list[bytes] = []
        with pytest.raises(TFRecordError, match=message):
            read.extend(read_records(_file(tmp_path, data)))  # extend keeps what came before the damage
        assert read == before, message


def test_a_huge_length_is_refused_before_reading(tmp_path: Path) -> None:
    # a header whose checksum holds, naming 2**60 bytes: refused from the file's size, nothing allocated
    length = struct.pack("<Q", 1 << 60)
    header = length + struct.pack("<I", masked_crc32c(length))
    with pytest.raises(TFRecordError, match="truncated record at 0"):
        list(read_records(_file(tmp_path, header + b"tiny")))
