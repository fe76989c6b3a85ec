"""TF Serving's `--monitoring_config_file`: a text-format MonitoringConfig, read into the metrics path.

The tensorflow-serving-api wheel does not ship monitoring_config.proto, so its two messages are defined here with
TF Serving's names and numbers:

    message MonitoringConfig { PrometheusConfig prometheus_config = 1; }
    message PrometheusConfig { bool enable = 1; string path = 2; }  // default path /monitoring/prometheus/metrics
"""

from __future__ import annotations

import functools

from google.protobuf import text_format
from google.protobuf.message import Message

from pyserving.config.textproto import ConfigError, define_schema, message_class, read_config_file

DEFAULT_PATH = "/monitoring/prometheus/metrics"
_PACKAGE = "pyserving.config.monitoring"


@functools.cache
def _schema() -> type[Message]:
    define_schema("pyserving/config/monitoring_config.proto", _PACKAGE, {
        "PrometheusConfig": [("enable", 1, "bool", False), ("path", 2, "string", False)],
        "MonitoringConfig": [("prometheus_config", 1, "PrometheusConfig", False)],
    })
    return message_class(f"{_PACKAGE}.MonitoringConfig")


def parse_monitoring_config(text: str, *, source: str = "<monitoring config>") -> str:
    """The REST path metrics are served on, or "" when Prometheus export is not enabled."""
    message = _schema()()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise ConfigError(
            f"{exc}. A monitoring config looks like: prometheus_config {{ enable: true path: \"{DEFAULT_PATH}\" }}",
            source=source,
        ) from None
    prometheus = message.prometheus_config  # type: ignore[attr-defined]
    if not prometheus.enable:
        return ""
    path = prometheus.path or DEFAULT_PATH
    if not path.startswith("/") or path.lower().startswith("/v1/"):
        raise ConfigError(f'prometheus_config.path "{path}" must start with "/" and not be under /v1/', source=source)
    return path


def load_monitoring_config_file(path: str) -> str:
    return parse_monitoring_config(read_config_file(path, what="monitoring config"), source=path)
