"""--model_config_file: TF Serving's ModelServerConfig, the article's superset, and every check (pure, no server)."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from pyserving.config.model_config import (
    ConfigError,
    load_model_config_file,
    model_config_to_text,
    model_server_config_schemas,
    parse_model_server_config,
)
from pyserving.options import BatchingOptions, LoggingOptions, ModelConfig, TrafficSplit, VersionPolicy

# The article's snippets, verbatim (sections 3.2, 3.3 and 4.2), comments included.
ARTICLE_3_2 = """\
model_config_list {
config {
name: "my_model"
base_path: "/models/my_model"
model_platform: "tensorflow"
# 可选:指定默认版本(若不设置,默认使用最高版本)
default_version_policy {
latest {
num_versions: 1
}
}
}
}
"""
ARTICLE_3_3 = """\
model_config_list {
config {
name: "my_model"
base_path: "/models/my_model"
model_platform: "tensorflow"
default_version_policy {
# 70%流量走v2,30%走v3
percentage {
version: "2"
value: 70
}
percentage {
version: "3"
value: 30
}
}
}
}
"""
ARTICLE_4_2 = """\
model_config_list {
config {
name: "my_model"
base_path: "/models/my_model"
model_platform: "tensorflow"
batching_parameters {
max_batch_size: 16
batch_timeout_micros: 10000 # 10ms超时
num_batch_threads: 4 # 并行批处理线程数
}
}
}
"""

MY_MODEL = ModelConfig(name="my_model", base_path="/models/my_model")


def one(body: str) -> str:
    """A config with one model "m" at /m whose config block also holds `body`."""
    return f'model_config_list {{\n  config {{\n    name: "m"\n    base_path: "/m"\n{body}\n  }}\n}}\n'


M = ModelConfig(name="m", base_path="/m")
LATEST = VersionPolicy()


def spec(*versions: int) -> VersionPolicy:
    return VersionPolicy(kind="specific", versions=versions)


# (config text, the models it means). Entries marked tfs=True are plain TF Serving syntax.
GOOD: list[tuple[str, str, tuple[ModelConfig, ...], bool]] = [
    ("empty text", "", (), True),
    ("only a comment", "# nothing yet\n", (), True),
    ("empty list", "model_config_list {}", (), True),
    ("empty list, colon", "model_config_list: { }", (), True),
    ("article 3.2", ARTICLE_3_2, (MY_MODEL,), False),
    ("article 3.3", ARTICLE_3_3,
     (ModelConfig(name="my_model", base_path="/models/my_model", version_policy=spec(2, 3),
                  traffic_split=TrafficSplit(arms=((2, 70), (3, 30)))),), False),
    ("article 4.2", ARTICLE_4_2,
     (ModelConfig(name="my_model", base_path="/models/my_model",
                  batching=BatchingOptions(max_batch_size=16, batch_timeout_micros=10000, num_batch_threads=4)),),
     False),
    ("tf serving commas and colons",
     'model_config_list: {\n config: {\n  name: "a",\n  base_path: "/a",\n  model_platform: "tensorflow"\n },\n'
     ' config: {\n  name: "b",\n  base_path: "/b",\n  model_platform: "tensorflow"\n }\n}',
     (ModelConfig(name="a", base_path="/a"), ModelConfig(name="b", base_path="/b")), True),
    ("angle brackets and a list of configs",
     'model_config_list < config: [ < name: "a" base_path: "/a" >, { name: "b" base_path: "/b" } ] >',
     (ModelConfig(name="a", base_path="/a"), ModelConfig(name="b", base_path="/b")), True),
    ("no platform means tensorflow", one(""), (M,), True),
    ("model_type TENSORFLOW", one("model_type: TENSORFLOW"), (M,), True),
    ("URI base path", 'model_config_list { config { name: "m" base_path: "gs://bucket/models/m" } }',
     (ModelConfig(name="m", base_path="gs://bucket/models/m"),), True),
    ("latest 0 means 1", one("model_version_policy { latest { num_versions: 0 } }"), (M,), True),
    ("latest 3", one("model_version_policy { latest { num_versions: 3 } }"),
     (ModelConfig(name="m", base_path="/m", version_policy=VersionPolicy(num_versions=3)),), True),
    ("empty policy means latest", one("model_version_policy {}"), (M,), True),
    ("all", one("model_version_policy { all {} }"),
     (ModelConfig(name="m", base_path="/m", version_policy=VersionPolicy(kind="all")),), True),
    ("specific, sorted and unique", one("model_version_policy { specific { versions: 3 versions: 1 versions: 3 } }"),
     (ModelConfig(name="m", base_path="/m", version_policy=spec(1, 3)),), True),
    ("specific as a list", one("model_version_policy { specific { versions: [1, 2] } }"),
     (ModelConfig(name="m", base_path="/m", version_policy=spec(1, 2)),), True),
    ("default_version_policy all", one("default_version_policy { all {} }"),
     (ModelConfig(name="m", base_path="/m", version_policy=VersionPolicy(kind="all")),), False),
    ("default_version_policy specific", one("default_version_policy { specific { versions: 7 } }"),
     (ModelConfig(name="m", base_path="/m", version_policy=spec(7)),), False),
    ("version labels, sorted",
     one("model_version_policy { specific { versions: 1 versions: 2 } }\n"
         'version_labels { key: "stable" value: 1 }\nversion_labels { key: "canary" value: 2 }'),
     (ModelConfig(name="m", base_path="/m", version_policy=spec(1, 2),
                  version_labels=(("canary", 2), ("stable", 1))),), True),
    ("split on a label serves the label's version",
     one('version_labels { key: "canary" value: 3 }\n'
         'default_version_policy { percentage { version: "2" value: 90 } percentage { label: "canary" value: 10 } }'),
     (ModelConfig(name="m", base_path="/m", version_policy=spec(2, 3), version_labels=(("canary", 3),),
                  traffic_split=TrafficSplit(arms=((2, 90), ("canary", 10)))),), False),
    ("split of one arm, zero-weight arm",
     one('default_version_policy { percentage { version: "0002" value: 100 } percentage { version: "1" value: 0 } }'),
     (ModelConfig(name="m", base_path="/m", version_policy=spec(1, 2),
                  traffic_split=TrafficSplit(arms=((2, 100), (1, 0)))),), False),
    ("split with a wider explicit specific policy",
     one("model_version_policy { specific { versions: [1, 2, 3] } }\n"
         'default_version_policy { percentage { version: "2" value: 50 } percentage { version: "3" value: 50 } }'),
     (ModelConfig(name="m", base_path="/m", version_policy=spec(1, 2, 3),
                  traffic_split=TrafficSplit(arms=((2, 50), (3, 50)))),), False),
    ("split with an explicit all policy",
     one("model_version_policy { all {} }\n"
         'default_version_policy { percentage { version: "2" value: 50 } percentage { version: "3" value: 50 } }'),
     (ModelConfig(name="m", base_path="/m", version_policy=VersionPolicy(kind="all"),
                  traffic_split=TrafficSplit(arms=((2, 50), (3, 50)))),), False),
    ("every batching field, unwrapped",
     one("batching_parameters {\n max_batch_size: 32\n batch_timeout_micros: 0\n max_enqueued_batches: 100\n"
         ' num_batch_threads: 2\n thread_pool_name: "pool"\n allowed_batch_sizes: [8, 16]\n'
         " pad_variable_length_inputs: true\n enable_large_batch_splitting: true\n max_execution_batch_size: 16\n}"),
     (ModelConfig(name="m", base_path="/m", batching=BatchingOptions(
         max_batch_size=32, max_enqueued_batches=100, num_batch_threads=2, thread_pool_name="pool",
         allowed_batch_sizes=(8, 16), pad_variable_length_inputs=True, enable_large_batch_splitting=True,
         max_execution_batch_size=16)),), False),
    ("batching, TF Serving's wrapped spelling",
     one("batching_parameters { max_batch_size { value: 8 } allowed_batch_sizes: 4 allowed_batch_sizes: 8 "
         "enable_large_batch_splitting { value: false } }"),
     (ModelConfig(name="m", base_path="/m", batching=BatchingOptions(max_batch_size=8, allowed_batch_sizes=(4, 8))),),
     False),
    ("empty batching block: TF Serving's defaults", one("batching_parameters {}"),
     (ModelConfig(name="m", base_path="/m", batching=BatchingOptions()),), False),
    ("logging_config",
     one('logging_config { log_collector_config { type: "jsonl" filename_prefix: "/tmp/log" } '
         "sampling_config { sampling_rate: 0.25 } }"),
     (ModelConfig(name="m", base_path="/m",
                  logging=LoggingOptions(sampling_rate=0.25, collector_type="jsonl", filename_prefix="/tmp/log")),),
     True),
]


@pytest.mark.parametrize(("text", "expected"), [g[1:3] for g in GOOD], ids=[g[0] for g in GOOD])
def test_configs(text: str, expected: tuple[ModelConfig, ...]) -> None:
    assert parse_model_server_config(text) == expected


@pytest.mark.parametrize("text", [g[1] for g in GOOD if g[3]], ids=[g[0] for g in GOOD if g[3]])
def test_tf_serving_syntax_is_also_valid_for_tf_serving(text: str) -> None:
    """The rows that claim TF Serving syntax parse with TF Serving's own proto (so the table tests compatibility)."""
    text_format.Parse(text, model_server_config_pb2.ModelServerConfig())


@pytest.mark.parametrize("models", [g[2] for g in GOOD], ids=[g[0] for g in GOOD])
def test_text_round_trips(models: tuple[ModelConfig, ...]) -> None:
    assert parse_model_server_config(model_config_to_text(models)) == models


def test_text_round_trips_a_split_over_latest() -> None:
    models = (ModelConfig(name="m", base_path="/m", traffic_split=TrafficSplit(arms=((1, 100),))),)
    assert parse_model_server_config(model_config_to_text(models)) == models


def test_text_uses_tf_serving_fields_where_it_can() -> None:
    models = (ModelConfig(name="m", base_path="/m", version_policy=spec(1, 2), version_labels=(("stable", 1),)),)
    text = model_config_to_text(models)
    parsed = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    assert list(parsed.model_config_list.config[0].model_version_policy.specific.versions) == [1, 2]


def with_placeholders(testdata: Path) -> str:
    """TF Serving's good_model_config.txt with its base-path placeholders filled in, as TF Serving's tests do."""
    text = (testdata / "good_model_config.txt").read_text()
    return (text.replace("${TEST_HALF_PLUS_TWO_DIR}", str(testdata / "saved_model_half_plus_two_cpu"))
                .replace("${TEST_HALF_PLUS_THREE_DIR}", str(testdata / "saved_model_half_plus_three")))


def test_tf_serving_good_model_config(testdata: Path, tmp_path: Path) -> None:
    path = tmp_path / "models.config"
    path.write_text(with_placeholders(testdata))
    assert load_model_config_file(str(path)) == (
        ModelConfig(name="half_plus_two", base_path=str(testdata / "saved_model_half_plus_two_cpu")),
        ModelConfig(name="half_plus_three", base_path=str(testdata / "saved_model_half_plus_three")),
    )


def test_superset_reads_tf_serving_configs_field_for_field(testdata: Path) -> None:
    """Where a text is TF Serving's, pyserving reads exactly what TF Serving reads (wire-identical messages)."""
    for text in [with_placeholders(testdata)] + [g[1] for g in GOOD if g[3]]:
        real = model_server_config_pb2.ModelServerConfig()
        ours = model_server_config_schemas()[0]()
        text_format.Parse(text, real)
        text_format.Parse(text, ours)
        assert model_server_config_pb2.ModelServerConfig.FromString(ours.SerializeToString()) == real


def test_placeholders_are_not_expanded(testdata: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_model_config_file(str(testdata / "good_model_config.txt"))
    message = str(err.value)
    assert message.startswith(f"{testdata / 'good_model_config.txt'}:4: base_path of model \"half_plus_two\"")
    assert "must be an absolute path or URI" in message and "${TEST_HALF_PLUS_TWO_DIR}" in message
    assert "not expanded" in message


def test_tf_serving_bad_model_config(testdata: Path) -> None:
    path = str(testdata / "bad_model_config.txt")
    with pytest.raises(ConfigError) as err:
        load_model_config_file(path)
    assert str(err.value).startswith(f"{path}:1:1: ")
    assert 'has no field named "improperly"' in str(err.value)
    assert "model_config_list { config {" in str(err.value)  # says what a config looks like
    assert (err.value.source, err.value.line, err.value.column) == (path, 1, 1)


def test_unreadable_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file") as err:
        load_model_config_file(str(tmp_path / "missing.config"))
    assert str(tmp_path / "missing.config") in str(err.value)
    with pytest.raises(ConfigError, match="is a directory"):
        load_model_config_file(str(tmp_path))
    binary = tmp_path / "binary.config"
    binary.write_bytes(b"\x0a\xff\xfe")
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_model_config_file(str(binary))


def test_source_names_the_text() -> None:
    with pytest.raises(ConfigError, match=r"^<model config>:1:1: "):
        parse_model_server_config("nope: 1")
    with pytest.raises(ConfigError, match=r"^my.conf:1:1: "):
        parse_model_server_config("nope: 1", source="my.conf")


# (config text, line of the error, what the message must say)
BAD: list[tuple[str, str, int, str]] = [
    ("unknown field, close name", one("nmae: 'x'"), 5, 'has no field named "nmae"; did you mean name?'),
    ("unknown field in the list", "model_config_list { cofnig {} }", 1, "did you mean config?"),
    ("unknown top-level field", "models { }", 1, "the fields of ModelServerConfig are: custom_model_config, "
                                                 "model_config_list"),
    ("bad value", one("model_type: PYTORCH"), 5, 'Enum type "tensorflow.serving.ModelType" has no value named '
                                                 "PYTORCH"),
    ("string for a number", one('model_version_policy { latest { num_versions: "two" } }'), 5,
     "Couldn't parse integer"),
    ("unbalanced braces", "model_config_list {\n config {\n name: \"m\"\n", 3, 'Expected "}"'),
    ("field given twice", one('base_path: "/n"'), 5, 'should not have multiple "base_path" fields'),
    ("two policy choices", one("model_version_policy { latest {} all {} }"), 5,
     'Field "all" is specified along with field "latest", another member of oneof "policy_choice"'),
    ("version and label in one arm", one('default_version_policy { percentage { version: "1" label: "a" value: 1 } }'),
     5, 'another member of oneof "arm"'),
    ("unquoted split version", one("default_version_policy { percentage { version: 2 value: 100 } }"), 5,
     "Expected string"),
    ("custom_model_config", 'custom_model_config { type_url: "type.googleapis.com/x.Y" }', 1,
     "custom_model_config: not supported"),
    ("empty name", 'model_config_list {\n config {\n base_path: "/m"\n }\n}', 2,
     "name of config entry 1: is empty"),
    ("duplicate model", 'model_config_list {\n config { name: "m" base_path: "/a" }\n'
                        ' config { name: "m" base_path: "/b" }\n}', 3,
     "Illegal to list model m multiple times in config list"),
    ("list syntax", 'model_config_list {\n config: [\n { name: "a" base_path: "/a" },\n'
                    ' { name: "b" base_path: "b" }\n ]\n}', 4, 'base_path of model "b": must be an absolute path'),
    ("empty base_path", 'model_config_list {\n config {\n name: "m"\n }\n}', 2,
     'base_path of model "m": is empty'),
    ("relative base_path", 'model_config_list {\n config {\n name: "m"\n base_path: "models/m"\n }\n}', 4,
     'base_path of model "m": must be an absolute path or URI; was "models/m"'),
    ("env var base_path", 'model_config_list { config { name: "m" base_path: "$HOME/m" } }', 1, "not expanded"),
    ("both model_type and model_platform", one('model_type: TENSORFLOW\nmodel_platform: "tensorflow"'), 5,
     "Illegal setting both model_type (deprecated) and model_platform"),
    ("model_type OTHER", one("model_type: OTHER"), 5, 'model_type of model "m": OTHER is not supported'),
    ("unknown platform", one('model_platform: "caffe"'), 5,
     '"caffe" is not supported; supported platforms: "auto", "memory", "onnx", "python", "pytorch", "tensorflow", "tflite"'),
    ("empty label", one('version_labels { key: "" value: 1 }'), 5, "a label is empty"),
    ("negative label", one('version_labels { key: "a" value: -1 }'), 5, 'label "a" points at version -1'),
    ("specific without versions", one("model_version_policy {\nspecific {}\n}"), 6,
     "model_version_policy.specific of model \"m\": lists no versions"),
    ("negative specific version", one("model_version_policy { specific { versions: -1 } }"), 5,
     "version -1 is not a version"),
    ("both policy names", one("model_version_policy { all {} }\ndefault_version_policy { all {} }"), 6,
     "default_version_policy (the article's name) and model_version_policy (TF Serving's) say the same thing"),
    ("split with a choice", one('default_version_policy {\nlatest {}\npercentage { version: "1" value: 100 } }'), 5,
     "percentage cannot be combined with latest in one default_version_policy"),
    ("split not summing to 100",
     one('default_version_policy {\npercentage { version: "2" value: 70 }\npercentage { version: "3" value: 20 }\n}'),
     5, "percentage values must sum to 100; they sum to 90 (version 2: 70, version 3: 20)"),
    ("split weight over 100", one('default_version_policy {\npercentage { version: "2" value: 110 }\n}'), 6,
     "value 110 for version 2 is not a percentage"),
    ("negative split weight", one('default_version_policy {\npercentage { version: "2" value: -10 }\n}'), 6,
     "value -10 for version 2 is not a percentage"),
    ("split weight missing", one('default_version_policy {\npercentage { version: "2" }\n}'), 6, "has no value"),
    ("split arm names nothing", one("default_version_policy {\npercentage { value: 100 }\n}"), 6,
     "names no version"),
    ("split version not a number", one('default_version_policy {\npercentage { version: "v2" value: 100 }\n}'), 6,
     'version "v2" is not a version number'),
    ("split version negative", one('default_version_policy {\npercentage { version: "-2" value: 100 }\n}'), 6,
     'version "-2" is not a version number'),
    ("split arm twice",
     one('default_version_policy {\npercentage { version: "2" value: 50 }\npercentage { version: "02" value: 50 }\n}'),
     7, "version 2 is listed twice"),
    ("split label arm twice",
     one('version_labels { key: "a" value: 1 }\ndefault_version_policy {\npercentage { label: "a" value: 50 }\n'
         'percentage { label: "a" value: 50 }\n}'), 8, 'label "a" is listed twice'),
    ("split on an unknown label", one('default_version_policy {\npercentage { label: "canary" value: 100 }\n}'), 6,
     'label "canary" is not one of this model\'s version_labels (known: none)'),
    ("split outside the specific versions",
     one('model_version_policy { specific { versions: 2 } }\n'
         'default_version_policy { percentage { version: "2" value: 50 } percentage { version: "3" value: 50 } }'),
     5, "the traffic split sends requests to version(s) 3, which specific does not serve"),
    ("batching max_batch_size 0", one("batching_parameters {\nmax_batch_size: 0\n}"), 6,
     'batching_parameters.max_batch_size of model "m": must be positive; was 0'),
    ("batching negative timeout", one("batching_parameters {\nbatch_timeout_micros: -1\n}"), 6,
     "batching_parameters.batch_timeout_micros of model \"m\": must be 0 or more"),
    ("batching sizes not increasing",
     one("batching_parameters {\nmax_batch_size: 8\nallowed_batch_sizes: [4, 2, 8]\n}"), 7,
     "allowed_batch_sizes entries must be monotonically increasing"),
    ("batching last size", one("batching_parameters {\nmax_batch_size: 8\nallowed_batch_sizes: [2, 4]\n}"), 7,
     "final entry in allowed_batch_sizes must equal max_batch_size"),
    ("batching unknown field", one("batching_parameters {\nmax_batch: 8\n}"), 6, "did you mean max_batch_size?"),
    ("batching spellings mixed", one("batching_parameters {\nmax_batch_size: 8\nnum_batch_threads { value: 2 }\n}"), 7,
     'Expected ":"'),
    ("sampling rate over 1", one("logging_config {\nsampling_config {\nsampling_rate: 1.5\n}\n}"), 7,
     "logging_config.sampling_config.sampling_rate of model \"m\": must be within [0, 1]"),
    ("custom logging", one('logging_config { custom_logging_config { type_url: "x" } }'), 5,
     "custom_logging_config of model \"m\": is not supported"),
]


@pytest.mark.parametrize(("text", "line", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_errors_name_line_field_and_fix(text: str, line: int, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_model_server_config(text, source="models.config")
    assert str(err.value).startswith(f"models.config:{line}:"), str(err.value)
    assert err.value.line == line
    assert message in str(err.value)


def test_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)
