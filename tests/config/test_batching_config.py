"""--batching_parameters_file: TF Serving's BatchingParameters text proto, defaults and checks (pure, no server)."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import descriptor

from pyserving.config.batching_config import (
    ConfigError,
    batching_schemas,
    load_batching_parameters_file,
    parse_batching_parameters,
)
from pyserving.options import BatchingOptions

EVERY_FIELD_WRAPPED = """\
max_batch_size { value: 32 }
batch_timeout_micros { value: 5000 }
max_enqueued_batches { value: 100 }
num_batch_threads { value: 2 }
thread_pool_name { value: "pool" }
allowed_batch_sizes: 8
allowed_batch_sizes: 16
pad_variable_length_inputs: true
enable_large_batch_splitting { value: true }
max_execution_batch_size { value: 16 }
"""
EVERY_FIELD = BatchingOptions(
    max_batch_size=32, batch_timeout_micros=5000, max_enqueued_batches=100, num_batch_threads=2,
    thread_pool_name="pool", allowed_batch_sizes=(8, 16), pad_variable_length_inputs=True,
    enable_large_batch_splitting=True, max_execution_batch_size=16,
)

GOOD: list[tuple[str, str, BatchingOptions]] = [
    ("empty: TF Serving's defaults", "", BatchingOptions()),
    ("TF Serving's serving_config.md example",
     "max_batch_size { value: 128 } batch_timeout_micros { value: 0 } max_enqueued_batches { value: 1000000 } "
     "num_batch_threads { value: 8 }",
     BatchingOptions(max_batch_size=128, max_enqueued_batches=1000000, num_batch_threads=8)),
    ("every field, wrapped", EVERY_FIELD_WRAPPED, EVERY_FIELD),
    ("every field, unwrapped",
     "max_batch_size: 32 batch_timeout_micros: 5000 max_enqueued_batches: 100 num_batch_threads: 2\n"
     'thread_pool_name: "pool" allowed_batch_sizes: [8, 16] pad_variable_length_inputs: true\n'
     "enable_large_batch_splitting: true max_execution_batch_size: 16  # the article's spelling",
     EVERY_FIELD),
    ("unwrapped, the article's values", "max_batch_size: 16\nbatch_timeout_micros: 10000 # 10ms\nnum_batch_threads: 4",
     BatchingOptions(max_batch_size=16, batch_timeout_micros=10000, num_batch_threads=4)),
    ("a set default is still set", "max_enqueued_batches { value: 10 } thread_pool_name { value: \"batch_threads\" }",
     BatchingOptions()),
    ("num_batch_threads 0: one per CPU", "num_batch_threads { value: 0 }", BatchingOptions(num_batch_threads=0)),
    ("splitting: last allowed size is the execution size",
     "max_batch_size: 64 enable_large_batch_splitting: true max_execution_batch_size: 16 allowed_batch_sizes: [4, 16]",
     BatchingOptions(max_batch_size=64, enable_large_batch_splitting=True, max_execution_batch_size=16,
                     allowed_batch_sizes=(4, 16))),
    ("splitting without an execution size: max_batch_size",
     "max_batch_size: 64 enable_large_batch_splitting: true allowed_batch_sizes: [32, 64]",
     BatchingOptions(max_batch_size=64, enable_large_batch_splitting=True, allowed_batch_sizes=(32, 64))),
]


@pytest.mark.parametrize(("text", "expected"), [g[1:] for g in GOOD], ids=[g[0] for g in GOOD])
def test_parameters(text: str, expected: BatchingOptions) -> None:
    assert parse_batching_parameters(text) == expected


def test_tf_serving_batching_config_file(testdata: Path) -> None:
    assert load_batching_parameters_file(str(testdata / "batching_config.txt")) == BatchingOptions(
        max_batch_size=128, batch_timeout_micros=0, max_enqueued_batches=1000000, num_batch_threads=8
    )


def test_schema_is_tf_serving_batching_parameters() -> None:
    """Field names, numbers and types of session_bundle_config.proto's BatchingParameters."""
    _, wrapped = batching_schemas()
    fields = {f.name: (f.number, f.message_type.full_name if f.message_type else f.type)
              for f in wrapped.DESCRIPTOR.fields}
    assert fields == {
        "max_batch_size": (1, "google.protobuf.Int64Value"),
        "batch_timeout_micros": (2, "google.protobuf.Int64Value"),
        "max_enqueued_batches": (3, "google.protobuf.Int64Value"),
        "num_batch_threads": (4, "google.protobuf.Int64Value"),
        "thread_pool_name": (5, "google.protobuf.StringValue"),
        "allowed_batch_sizes": (6, descriptor.FieldDescriptor.TYPE_INT64),
        "pad_variable_length_inputs": (7, descriptor.FieldDescriptor.TYPE_BOOL),
        "enable_large_batch_splitting": (8, "google.protobuf.BoolValue"),
        "max_execution_batch_size": (9, "google.protobuf.Int64Value"),
    }


# (text, line of the error, what the message must say)
BAD: list[tuple[str, str, int, str]] = [
    ("not batching parameters", "improperly formatted file", 1,
     "expected a BatchingParameters text proto, e.g. max_batch_size { value: 128 }"),
    ("misspelled field", "\nmax_batch_sze { value: 1 }", 2, 'has no field named "max_batch_sze"; did you mean '
                                                           "max_batch_size?"),
    ("a string for a number", 'max_batch_size { value: "x" }', 1, "Couldn't parse integer"),
    ("field twice", "max_batch_size { value: 1 }\nmax_batch_size { value: 2 }", 2,
     'should not have multiple "max_batch_size" fields'),
    ("spellings mixed", "max_batch_size: 4\nmax_enqueued_batches { value: 3 }", 2, 'Expected ":"'),
    ("max_batch_size 0", "num_batch_threads: 1\nmax_batch_size: 0", 2, "max_batch_size: must be positive; was 0"),
    ("negative max_batch_size", "max_batch_size { value: -4 }", 1, "max_batch_size: must be positive; was -4"),
    ("negative timeout", "\nbatch_timeout_micros { value: -1 }", 2, "batch_timeout_micros: must be 0 or more"),
    ("no queue", "max_enqueued_batches: 0", 1, "max_enqueued_batches: must be positive"),
    ("negative threads", "num_batch_threads: -1", 1, "num_batch_threads: must be positive (or 0 for one per CPU)"),
    ("execution size over max", "max_batch_size: 4\n\nmax_execution_batch_size: 5", 3,
     "max_execution_batch_size: must be at most max_batch_size (4); was 5"),
    ("negative execution size", "max_execution_batch_size: -5", 1, "max_execution_batch_size: must be positive"),
    ("sizes not increasing", "max_batch_size: 8\nallowed_batch_sizes: [2, 2, 8]", 2,
     "allowed_batch_sizes entries must be monotonically increasing; got [2, 2, 8]"),
    ("sizes decreasing", "max_batch_size: 8\nallowed_batch_sizes: 4\nallowed_batch_sizes: 2\nallowed_batch_sizes: 8", 2,
     "allowed_batch_sizes entries must be monotonically increasing"),
    ("size 0", "max_batch_size: 8\nallowed_batch_sizes: [0, 8]", 2, "entries must be positive"),
    ("last size not max", "max_batch_size { value: 16 }\nallowed_batch_sizes: [2, 8]", 2,
     "final entry in allowed_batch_sizes must equal max_batch_size; last entry was 8, expected 16"),
    ("last size with the default max", "allowed_batch_sizes: 8", 1,
     "final entry in allowed_batch_sizes must equal max_batch_size; last entry was 8, expected 1000"),
    ("last size not the execution size when splitting",
     "max_batch_size: 64\nenable_large_batch_splitting: true\nmax_execution_batch_size: 16\n"
     "allowed_batch_sizes: [4, 64]", 4,
     "final entry in allowed_batch_sizes must equal max_execution_batch_size when enable_large_batch_splitting is "
     "true; last entry was 64, expected 16"),
]


@pytest.mark.parametrize(("text", "line", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_errors_name_line_field_and_fix(text: str, line: int, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_batching_parameters(text, source="batching.conf")
    assert str(err.value).startswith(f"batching.conf:{line}:"), str(err.value)
    assert err.value.line == line
    assert message in str(err.value)


def test_file_errors_name_the_path(tmp_path: Path) -> None:
    path = tmp_path / "batching.conf"
    path.write_text("max_batch_size { value: 128 }\nbatch_timeout_micros { value: -5 }\n")
    with pytest.raises(ConfigError) as err:
        load_batching_parameters_file(str(path))
    assert str(err.value).startswith(f"{path}:2: batch_timeout_micros: must be 0 or more; was -5")
    with pytest.raises(ConfigError, match="cannot read --batching_parameters_file: no such file") as err:
        load_batching_parameters_file(str(tmp_path / "missing.conf"))
    assert err.value.source == str(tmp_path / "missing.conf")
