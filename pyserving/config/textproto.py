"""What pyserving's config-file readers share: `ConfigError`, and reading a text proto so that every error names
the file, the line and the field (`TextProto`); building message schemas at run time."""

from __future__ import annotations

import difflib
import functools
from collections.abc import Sequence
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from google.protobuf.message import Message

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
    # TF Serving's messages live in our private proto package (no TensorFlow needed): name them as users know them.
    message = message.replace('"pyserving.tfs.', '"tensorflow.serving.')
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


def read_config_file(path: str, *, what: str, if_empty: str = "") -> str:
    """The text of a config file, or a ConfigError that names it and says why it could not be read.

    With `if_empty` (what to write instead), a blank file is refused rather than read as an empty message: that
    is what an editor or a `>` redirect leaves for a moment mid-write, and a file that is re-read while serving
    must not turn that moment into "no models" or "no credentials"."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
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
    if if_empty and not text.strip():
        raise ConfigError(f"the file is empty (a write in progress?); the configuration in force keeps serving. "
                          f"{if_empty}", source=path)
    return text


_SCALARS = {
    "string": descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
    "bool": descriptor_pb2.FieldDescriptorProto.TYPE_BOOL,
    "int64": descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
    "double": descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE,
}


def define_schema(file_name: str, package: str, messages: dict[str, list[tuple[str, int, str, bool]]]) -> None:
    """Add a proto3 file of `messages` to the default pool: message -> [(field, number, type, repeated)], where
    type is a scalar name (string, bool, int64, double) or another message's name in the same file."""
    file = descriptor_pb2.FileDescriptorProto(name=file_name, package=package, syntax="proto3")
    for message_name, fields in messages.items():
        message = file.message_type.add(name=message_name)
        for name, number, type_, repeated in fields:
            label = (descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED if repeated
                     else descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
            if type_ in _SCALARS:
                message.field.add(name=name, number=number, type=_SCALARS[type_], label=label)
            else:
                message.field.add(name=name, number=number, label=label, type_name=f".{package}.{type_}",
                                  type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE)
    build_file(file)
