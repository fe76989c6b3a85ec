"""TF Serving's `--ssl_config_file`: a text-format SSLConfig, read into TlsOptions.

The tensorflow-serving-api wheel does not ship ssl_config.proto, so its message is defined here with TF Serving's
names and numbers (PEM text inline, not paths):

    message SSLConfig { string server_key = 1; string server_cert = 2; string custom_ca = 3; bool client_verify = 4; }
"""

from __future__ import annotations

import functools

from google.protobuf import text_format
from google.protobuf.message import Message

from pyserving.config.textproto import ConfigError, define_schema, message_class, read_config_file
from pyserving.options import TlsOptions

_PACKAGE = "pyserving.config.ssl"
_EXAMPLE = 'server_key: "-----BEGIN PRIVATE KEY-----\\n..." server_cert: "-----BEGIN CERTIFICATE-----\\n..."'


@functools.cache
def _schema() -> type[Message]:
    define_schema("pyserving/config/ssl_config.proto", _PACKAGE, {"SSLConfig": [
        ("server_key", 1, "string", False), ("server_cert", 2, "string", False),
        ("custom_ca", 3, "string", False), ("client_verify", 4, "bool", False),
    ]})
    return message_class(f"{_PACKAGE}.SSLConfig")


def parse_ssl_config(text: str, *, source: str = "<ssl config>") -> TlsOptions:
    message = _schema()()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise ConfigError(f"{exc}. An SSL config looks like: {_EXAMPLE}", source=source) from None
    key, cert = message.server_key, message.server_cert  # type: ignore[attr-defined]
    ca, verify = message.custom_ca, message.client_verify  # type: ignore[attr-defined]
    if not key or not cert:
        raise ConfigError("server_key and server_cert are both required (PEM text, inline); " + _EXAMPLE,
                          source=source)
    for field, value, marker in (("server_key", key, "PRIVATE KEY-----"), ("server_cert", cert, "CERTIFICATE-----"),
                                 ("custom_ca", ca, "CERTIFICATE-----")):
        if value and marker not in value:
            raise ConfigError(f"{field} must hold PEM text (-----BEGIN ...{marker}), not a file path", source=source)
    if verify and not ca:
        raise ConfigError("client_verify: true needs custom_ca: the PEM certificates that sign client certificates",
                          source=source)
    return TlsOptions(server_key=key, server_cert=cert, custom_ca=ca, client_verify=verify)


def load_ssl_config_file(path: str) -> TlsOptions:
    return parse_ssl_config(read_config_file(path, what="--ssl_config_file"), source=path)
