"""TFRecord files without TensorFlow: the request log writes them and every runtime's warm-up reads them.

A record is framed as TensorFlow's record_writer.cc frames it (uncompressed):

    uint64 length (little-endian) | uint32 masked_crc32c(length bytes) | data | uint32 masked_crc32c(data)

so files written here are byte-identical to tf.io.TFRecordWriter's, and tf.data readers read them.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from typing import BinaryIO

import google_crc32c

FRAMING_BYTES = 16
"""Bytes a record adds to its data: the length, and a checksum of it and of the data."""

_MASK_DELTA = 0xA282EAD8
_LENGTH = struct.Struct("<Q")
_CRC = struct.Struct("<I")


class TFRecordError(ValueError):
    """A file that is not (or no longer) TFRecord: the message says where it went wrong, in TensorFlow's words."""


def masked_crc32c(data: bytes) -> int:
    """TensorFlow's masked CRC-32C: a checksum of data that itself holds checksums is not a weak one."""
    crc = google_crc32c.value(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def frame(data: bytes) -> bytes:
    """One record, framed, ready to append to a file."""
    length = _LENGTH.pack(len(data))
    return b"".join((length, _CRC.pack(masked_crc32c(length)), data, _CRC.pack(masked_crc32c(data))))


class TFRecordWriter:
    """Appends records to a new file (fails if it exists: a log never overwrites another's)."""

    def __init__(self, path: str) -> None:
        self._file: BinaryIO = open(path, "xb")  # noqa: SIM115 - closed by close()

    def write(self, data: bytes, /) -> None:
        self._file.write(frame(data))

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> TFRecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_records(path: str) -> Iterator[bytes]:
    """The records of a TFRecord file, checksums verified. Raises OSError when the file cannot be read and
    TFRecordError when it is truncated or corrupted (a record's length is checked against what is left of the
    file before it is read, so a damaged header cannot make this allocate more than the file's size)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        offset = 0
        while True:
            header = f.read(12)
            if not header:
                return
            if len(header) < 12:
                raise TFRecordError(f"truncated record at {offset}")
            length_bytes, (length_crc,) = header[:8], _CRC.unpack(header[8:])
            if masked_crc32c(length_bytes) != length_crc:
                raise TFRecordError(f"corrupted record at {offset}")
            (length,) = _LENGTH.unpack(length_bytes)
            if length + 4 > size - offset - 12:
                raise TFRecordError(f"truncated record at {offset}")
            data = f.read(length)
            footer = f.read(4)
            if len(data) < length or len(footer) < 4:  # the file shrank while being read
                raise TFRecordError(f"truncated record at {offset}")
            if masked_crc32c(data) != _CRC.unpack(footer)[0]:
                raise TFRecordError(f"corrupted record at {offset}")
            yield data
            offset += FRAMING_BYTES + length
