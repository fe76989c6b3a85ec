"""TF Serving's `BatchingParameters` text proto (`--batching_parameters_file`), read into BatchingOptions.

The schema is TF Serving's (tensorflow_serving/servables/tensorflow/session_bundle_config.proto). That proto is not
in the tensorflow-serving-api wheel, so this module defines the same message, with the same field names, numbers and
types, as `pyserving.config.BatchingParameters`:

    message BatchingParameters {
      google.protobuf.Int64Value  max_batch_size = 1;                // unset: 1000
      google.protobuf.Int64Value  batch_timeout_micros = 2;          // unset: 0
      google.protobuf.Int64Value  max_enqueued_batches = 3;          // unset: 10
      google.protobuf.Int64Value  num_batch_threads = 4;             // unset: one per CPU
      google.protobuf.StringValue thread_pool_name = 5;              // unset: "batch_threads"
      repeated int64              allowed_batch_sizes = 6;           // unset: any size
      bool                        pad_variable_length_inputs = 7;    // unset: false
      google.protobuf.BoolValue   enable_large_batch_splitting = 8;  // unset: false
      google.protobuf.Int64Value  max_execution_batch_size = 9;      // unset: max_batch_size
    }

so a TF Serving file reads unchanged: `max_batch_size { value: 128 } batch_timeout_micros { value: 0 }`.

pyserving also reads the unwrapped spelling that the article uses inside a model's `batching_parameters` block,
`max_batch_size: 128 batch_timeout_micros: 0` (message `pyserving.config.UnwrappedBatchingParameters`: the same
field names and numbers, as plain `optional` scalars). One file or block uses one spelling throughout.

Checks, with TF Serving's wording where it has one: max_batch_size > 0; batch_timeout_micros >= 0;
max_enqueued_batches > 0; num_batch_threads >= 0 (0: one per CPU; TF Serving requires >= 1); allowed_batch_sizes
positive and strictly increasing, the last equal to max_batch_size (to max_execution_batch_size when
enable_large_batch_splitting is on); 0 < max_execution_batch_size <= max_batch_size.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, NoReturn

from google.protobuf import descriptor_pb2, wrappers_pb2
from google.protobuf.message import Message

from pyserving.config.textproto import (
    ConfigError,
    DynamicMessage,
    TextProto,
    add_optional_scalar,
    build_file,
    message_class,
    read_config_file,
)
from pyserving.options import BatchingOptions, ModelConfig

PACKAGE = "pyserving.config"
_INT64, _STRING, _BOOL = "int64", "string", "bool"



_BATCHING_FIELDS: tuple[tuple[str, int, str, bool], ...] = (
    # name, number, scalar type, wrapped in TF Serving's message
    ("max_batch_size", 1, _INT64, True),
    ("batch_timeout_micros", 2, _INT64, True),
    ("max_enqueued_batches", 3, _INT64, True),
    ("num_batch_threads", 4, _INT64, True),
    ("thread_pool_name", 5, _STRING, True),
    ("allowed_batch_sizes", 6, _INT64, False),
    ("pad_variable_length_inputs", 7, _BOOL, False),
    ("enable_large_batch_splitting", 8, _BOOL, True),
    ("max_execution_batch_size", 9, _INT64, True),
)
_SCALAR_TYPES = {
    _INT64: descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
    _STRING: descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
    _BOOL: descriptor_pb2.FieldDescriptorProto.TYPE_BOOL,
}
_WRAPPERS = {_INT64: ".google.protobuf.Int64Value", _STRING: ".google.protobuf.StringValue",
             _BOOL: ".google.protobuf.BoolValue"}
_FILE_NAME = "pyserving/config/batching_parameters.proto"


@functools.cache
def batching_schemas() -> tuple[type[Message], type[Message]]:
    """The (unwrapped, TF Serving's wrapped) BatchingParameters message classes, defined on first use."""
    file = descriptor_pb2.FileDescriptorProto(name=_FILE_NAME, package=PACKAGE, syntax="proto3",
                                              dependency=[wrappers_pb2.DESCRIPTOR.name])
    wrapped = file.message_type.add(name="BatchingParameters")
    plain = file.message_type.add(name="UnwrappedBatchingParameters")
    repeated, optional = (descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED,
                          descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    # Real oneofs must come before the synthetic ones of proto3 `optional`; there are none here.
    for name, number, kind, is_wrapped in _BATCHING_FIELDS:
        if name == "allowed_batch_sizes":
            for m in (wrapped, plain):
                m.field.add(name=name, number=number, type=_SCALAR_TYPES[kind], label=repeated)
        elif not is_wrapped:  # pad_variable_length_inputs: a plain bool in TF Serving too
            for m in (wrapped, plain):
                m.field.add(name=name, number=number, type=_SCALAR_TYPES[kind], label=optional)
        else:
            wrapped.field.add(name=name, number=number, label=optional,
                              type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE, type_name=_WRAPPERS[kind])
            add_optional_scalar(plain, name, number, _SCALAR_TYPES[kind])
    build_file(file)
    return message_class(f"{PACKAGE}.UnwrappedBatchingParameters"), message_class(f"{PACKAGE}.BatchingParameters")


# ---------------------------------------------------------------------------------------------------------------
# Conversion and checks

Fail = Callable[[str, str], NoReturn]
"""fail(field, message): raise a ConfigError that points at `field` of the block being checked."""


def batching_options_from_message(message: DynamicMessage, *, fail: Fail) -> BatchingOptions:
    """BatchingOptions from either BatchingParameters spelling: unset fields get TF Serving's defaults. Checked."""
    values: dict[str, Any] = {}
    for name, _, _, _ in _BATCHING_FIELDS:
        if name == "allowed_batch_sizes":
            values[name] = tuple(int(v) for v in message.allowed_batch_sizes)
        elif name == "pad_variable_length_inputs":
            values[name] = bool(message.pad_variable_length_inputs)
        elif message.HasField(name):
            value = getattr(message, name)
            is_wrapper = message.DESCRIPTOR.fields_by_name[name].message_type is not None
            values[name] = value.value if is_wrapper else value
    options = BatchingOptions(**values)
    check_batching_options(options, fail=fail)
    return options


def check_batching_options(options: BatchingOptions, *, fail: Fail) -> None:
    """Refuse settings TF Serving refuses (at load time there; up front here)."""
    if options.max_batch_size <= 0:
        fail("max_batch_size", f"must be positive; was {options.max_batch_size}")
    if options.batch_timeout_micros < 0:
        fail("batch_timeout_micros", f"must be 0 or more; was {options.batch_timeout_micros}")
    if options.max_enqueued_batches <= 0:
        fail("max_enqueued_batches", f"must be positive; was {options.max_enqueued_batches}")
    if options.num_batch_threads < 0:
        fail("num_batch_threads", f"must be positive (or 0 for one per CPU); was {options.num_batch_threads}")
    if options.max_execution_batch_size < 0:
        fail("max_execution_batch_size", f"must be positive; was {options.max_execution_batch_size}")
    if options.max_execution_batch_size > options.max_batch_size:
        fail("max_execution_batch_size", f"must be at most max_batch_size ({options.max_batch_size}); was "
             f"{options.max_execution_batch_size}")
    sizes = options.allowed_batch_sizes
    if sizes:
        if sizes[0] <= 0:
            fail("allowed_batch_sizes", f"entries must be positive; the first is {sizes[0]}")
        if any(b <= a for a, b in zip(sizes, sizes[1:])):
            fail("allowed_batch_sizes",
                 f"allowed_batch_sizes entries must be monotonically increasing; got {list(sizes)}")
        if options.enable_large_batch_splitting:
            limit = options.max_execution_batch_size or options.max_batch_size
            if sizes[-1] != limit:
                fail("allowed_batch_sizes",
                     "final entry in allowed_batch_sizes must equal max_execution_batch_size when "
                     f"enable_large_batch_splitting is true; last entry was {sizes[-1]}, expected {limit}")
        elif sizes[-1] != options.max_batch_size:
            fail("allowed_batch_sizes",
                 f"final entry in allowed_batch_sizes must equal max_batch_size; last entry was {sizes[-1]}, "
                 f"expected {options.max_batch_size} (or set max_batch_size: {sizes[-1]})")


# ---------------------------------------------------------------------------------------------------------------
# Public API


def parse_batching_parameters(text: str, *, source: str = "<batching parameters>") -> BatchingOptions:
    """BatchingOptions from a BatchingParameters text proto (TF Serving's wrapped spelling, or the unwrapped one).

    Raises ConfigError naming the line and field of the first problem.
    """
    plain, wrapped = batching_schemas()
    parsed = TextProto.parse(text, (wrapped, plain), source=source,
                             hint="expected a BatchingParameters text proto, e.g. max_batch_size { value: 128 }")

    def fail(field: str, message: str) -> NoReturn:
        raise parsed.error(((field, 0),), message, field=field)

    return batching_options_from_message(parsed.message, fail=fail)


def load_batching_parameters_file(path: str) -> BatchingOptions:
    """Read and parse `path` (as given to --batching_parameters_file); errors name the path."""
    return parse_batching_parameters(read_config_file(path, what="--batching_parameters_file"), source=path)



PER_VERSION_FILE = "batching_params.pbtxt"


def batching_for_version(
    model: ModelConfig,
    version_dir: str,
    *,
    global_options: BatchingOptions | None,
    per_model_files: bool,
) -> BatchingOptions | None:
    """How one loaded version batches, or None for unbatched. Precedence (documented in the README):

    1. with --enable_per_model_batching_parameters, the version's own `batching_params.pbtxt` (TF Serving's
       rule: a version without one is unbatched, unless its model config has a `batching_parameters` block);
    2. the model's `batching_parameters { ... }` block in the model config (the article's form);
    3. --enable_batching with --batching_parameters_file (or TF Serving's defaults).
    A version file and a model block for the same model conflict: that is an error, never a silent choice.
    The global file's num_batch_threads/thread_pool_name still pick the shared thread pool in cases 1 and 2.
    """
    if per_model_files:
        path = os.path.join(version_dir, PER_VERSION_FILE)
        if os.path.isfile(path):
            if model.batching is not None:
                raise ConfigError(
                    f"model {model.name!r} has both a batching_parameters block in the model config and {path}; "
                    "keep one of them",
                    source=path,
                )
            # Re-read at every version load, maybe mid-write: a blank file fails the load (it is retried) rather
            # than quietly batching with defaults.
            text = read_config_file(path, what=PER_VERSION_FILE, if_empty=(
                "For TF Serving's defaults write a comment line, e.g. # defaults"))
            return parse_batching_parameters(text, source=path)
        return model.batching
    if model.batching is not None:
        return model.batching
    return global_options
