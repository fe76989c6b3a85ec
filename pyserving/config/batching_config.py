"""TF Serving's `BatchingParameters` text proto (`--batching_parameters_file`), read into BatchingOptions.

This module also owns what pyserving's config-file readers share: `ConfigError`, and reading a text proto so that
every error names the file, the line and the field (`TextProto`).

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

import os

import difflib
import functools
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2
from google.protobuf.message import Message

from pyserving.options import BatchingOptions, ModelConfig

PACKAGE = "pyserving.config"

DynamicMessage = Any
"""A message of a schema built at run time: the type checker cannot know its fields."""

FieldPath = tuple[tuple[str, int], ...]
"""Where a value sits in a text proto: (field name, index among that field's repeats) from the top message down."""


class ConfigError(ValueError):
    """A config file (or text) that cannot be used. Says which file, line and field are wrong and what to write instead.

    `source`, `line` (1-based; None when unknown), `column` and `field` are also attributes, for tools.
    """

    def __init__(self, message: str, *, source: str = "", line: int | None = None, column: int | None = None,
                 field: str = "") -> None:
        self.message, self.source, self.line, self.column, self.field = message, source, line, column, field
        where = source
        if line is not None:
            where += f":{line}" + (f":{column}" if column is not None else "")
        text = f"{field}: {message}" if field else message
        super().__init__(f"{where}: {text}" if where else text)


# ---------------------------------------------------------------------------------------------------------------
# Reading text protos


class TextProto:
    """One config text parsed into one of a few candidate schemas, able to say where each field was written.

    Built by `parse`; `error(path, ...)` makes a ConfigError that points at the line of `path` (or of its closest
    enclosing field that was written). Immutable after construction; safe to share.
    """

    def __init__(self, text: str, message: DynamicMessage, *, source: str) -> None:
        self.text, self.message, self.source = text, message, source

    @classmethod
    def parse(cls, text: str, schemas: Sequence[type[Message]], *, source: str, hint: str = "") -> TextProto:
        """Parse `text` with the first schema that accepts it; if none does, raise the error of the one that got
        furthest (on a tie, the earliest schema's). `hint` (what the text should look like) is added when the very
        first field name is unknown: then the text is probably not this kind of config at all."""
        failures: list[text_format.ParseError] = []
        for schema in schemas:
            message = schema()
            try:
                text_format.Parse(text, message)
            except text_format.ParseError as e:
                failures.append(e)
                continue
            return cls(text, message, source=source)
        # max() keeps the first of equal keys, so the earliest schema wins a tie.
        best = max(failures, key=lambda e: (e.GetLine() or 0, e.GetColumn() or 0))
        raise _config_error_from(best, text, source=source, hint=hint) from None

    @functools.cached_property
    def _lines(self) -> dict[FieldPath, int]:
        return field_lines(self.text)

    def line_of(self, path: FieldPath) -> int | None:
        """The line where `path` (or its closest written ancestor) starts; None if unknown."""
        lines = self._lines
        for end in range(len(path), 0, -1):
            if path[:end] in lines:
                return lines[path[:end]]
        return None

    def error(self, path: FieldPath, message: str, *, field: str = "") -> ConfigError:
        return ConfigError(message, source=self.source, line=self.line_of(path), field=field)


def _config_error_from(e: text_format.ParseError, text: str, *, source: str, hint: str) -> ConfigError:
    line, column = e.GetLine(), e.GetColumn()
    message = str(e)
    if line is not None:
        prefix = f"{line}:{column} : " if column is not None else f"{line} : "
        message = message.removeprefix(prefix)
    field_hint, is_close = _unknown_field_hint(message)
    if field_hint:
        message = message.rstrip(".") + field_hint
    if hint and not is_close and (line, column) == _first_token_position(text):
        # The very first name is wrong: likely not this kind of file at all.
        message += f" ({hint})"
    return ConfigError(message, source=source, line=line, column=column)


def _first_token_position(text: str) -> tuple[int | None, int | None]:
    try:
        e = text_format.Tokenizer(text.split("\n")).ParseError("")  # type: ignore[arg-type]  # stub says Message
    except text_format.ParseError:
        return None, None
    return e.GetLine(), e.GetColumn()


def _unknown_field_hint(parser_message: str) -> tuple[str, bool]:
    """("; did you mean X?", True) or ("; the fields of T are: ...", False) for an unknown field; else ("", False)."""
    # The parser says: Message type "pkg.Type" has no field named "nmae".
    _, sep, rest = parser_message.partition('Message type "')
    if not sep or '" has no field named "' not in rest:
        return "", False
    type_name, _, rest = rest.partition('" has no field named "')
    name = rest.partition('"')[0]
    try:
        descriptor = descriptor_pool.Default().FindMessageTypeByName(type_name)
    except KeyError:
        return "", False
    known = sorted(descriptor.fields_by_name)
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        return f"; did you mean {close[0]}?", True
    return f"; the fields of {descriptor.name} are: {', '.join(known)}", False


def field_lines(text: str) -> dict[FieldPath, int]:
    """The 1-based line on which each field of an already-valid text proto starts.

    Best effort: a text this walker does not follow yields fewer entries, never an error.
    """
    out: dict[FieldPath, int] = {}
    try:
        tokenizer = text_format.Tokenizer(text.split("\n"))
        _walk_message(tokenizer, (), out, end=None)
    except (text_format.ParseError, ValueError, IndexError):
        pass
    return out


def _token_line(tokenizer: text_format.Tokenizer) -> int:
    line = tokenizer.ParseError("").GetLine()  # type: ignore[arg-type]  # the stub says Message; it takes a str
    return int(line) if line is not None else 0


def _walk_message(tokenizer: text_format.Tokenizer, prefix: FieldPath, out: dict[FieldPath, int],
                  *, end: str | None) -> None:
    counts: dict[str, int] = {}
    while not (tokenizer.AtEnd() if end is None else tokenizer.TryConsume(end)):
        line = _token_line(tokenizer)
        if tokenizer.TryConsume("["):  # an extension or Any type URL: keep its text as the name
            parts = []
            while not tokenizer.TryConsume("]"):
                parts.append(tokenizer.token)
                tokenizer.NextToken()
            name = "[" + "".join(parts) + "]"
        else:
            name = tokenizer.ConsumeIdentifierOrNumber()
        tokenizer.TryConsume(":")

        def one_value(value_line: int, name: str = name) -> None:
            index = counts.get(name, 0)
            counts[name] = index + 1
            path = (*prefix, (name, index))
            out.setdefault(path, value_line)
            if tokenizer.TryConsume("{"):
                _walk_message(tokenizer, path, out, end="}")
            elif tokenizer.TryConsume("<"):
                _walk_message(tokenizer, path, out, end=">")
            else:
                tokenizer.NextToken()
                while tokenizer.token[:1] in ("'", '"'):  # "adjacent" "strings" concatenate
                    tokenizer.NextToken()

        if tokenizer.TryConsume("["):
            first = True
            while not tokenizer.TryConsume("]"):
                if not first:
                    tokenizer.Consume(",")
                one_value(line if first else _token_line(tokenizer))
                first = False
        else:
            one_value(line)
        if not tokenizer.TryConsume(","):
            tokenizer.TryConsume(";")


# ---------------------------------------------------------------------------------------------------------------
# The BatchingParameters schemas

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


def add_optional_scalar(message: descriptor_pb2.DescriptorProto, name: str, number: int,
                        type_: descriptor_pb2.FieldDescriptorProto.Type.ValueType) -> None:
    """Add a proto3 `optional` scalar field (it has presence: unset is not the same as 0)."""
    f = message.field.add(name=name, number=number, type=type_,
                          label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    f.proto3_optional = True
    f.oneof_index = len(message.oneof_decl)
    message.oneof_decl.add(name=f"_{name}")


def build_file(file: descriptor_pb2.FileDescriptorProto) -> None:
    """Add `file` to the default descriptor pool unless a file of that name is there already."""
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(file.name)
    except KeyError:
        pool.AddSerializedFile(file.SerializeToString())


def message_class(full_name: str) -> type[Message]:
    return message_factory.GetMessageClass(descriptor_pool.Default().FindMessageTypeByName(full_name))


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


def read_config_file(path: str, *, what: str) -> str:
    """The text of a config file, or a ConfigError that names it and says why it could not be read."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise ConfigError(f"cannot read {what}: no such file", source=path) from None
    except IsADirectoryError:
        raise ConfigError(f"cannot read {what}: it is a directory; give the path of a text proto file",
                          source=path) from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"cannot read {what}: not UTF-8 text ({e.reason} at byte {e.start}); write the config as "
                          "a text proto, not a binary one", source=path) from None
    except OSError as e:
        raise ConfigError(f"cannot read {what}: {e.strerror}", source=path) from None



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
            return load_batching_parameters_file(path)
        return model.batching
    if model.batching is not None:
        return model.batching
    return global_options
