"""The TF Serving flag set: spellings, syntaxes, defaults, warnings and errors (pure: no server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyserving.config.flags import FlagError, parse_flags, server_options


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--port=9000"], {"port": 9000}),
        (["--port", "9000"], {"port": 9000}),
        (["-port=9000"], {"port": 9000}),
        (["--enable_batching"], {"enable_batching": True}),
        (["--enable_batching=true"], {"enable_batching": True}),
        (["--enable_batching=false"], {"enable_batching": False}),
        (["--enable_batching=0"], {"enable_batching": False}),
        (["--enable_batching", "false"], {"enable_batching": False}),
        (["--rest_api_enable_cors_support", "--port=1"], {"rest_api_enable_cors_support": True, "port": 1}),
        (["--saved_model_tags=serve,gpu"], {"saved_model_tags": "serve,gpu"}),
        (["--per_process_gpu_memory_fraction=0.5"], {"per_process_gpu_memory_fraction": 0.5}),
    ],
)
def test_syntaxes(argv: list[str], expected: dict[str, object]) -> None:
    values, _ = parse_flags(argv)
    assert values == expected


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port=abc"], "--port=abc: expected an integer"),
        (["--enable_batching=maybe"], "--enable_batching=maybe: expected true or false"),
        (["--rest_api_prot=1"], "unknown flag --rest_api_prot; did you mean --rest_api_port?"),
        (["--model_name"], "--model_name needs a value"),
        (["serve"], "unexpected argument 'serve'"),
    ],
)
def test_errors_name_the_flag(argv: list[str], message: str) -> None:
    with pytest.raises(FlagError, match=message.replace("?", r"\?").replace("(", r"\(")):
        parse_flags(argv)


def test_unimplemented_flags_warn_only_when_given() -> None:
    _, warnings = parse_flags(["--xla_cpu_compilation_enabled=true", "--enable_model_warmup=true"])
    assert len(warnings) == 1
    assert "--xla_cpu_compilation_enabled" in warnings[0] and "not implemented" in warnings[0]


def test_article_only_flags_are_accepted() -> None:
    values, warnings = parse_flags(
        ["--enable_metrics=true", "--metrics_port=8502", "--tensorflow_gpu_memory_fraction=0.8",
         "--verbosity=INFO", "--log_dir=/tmp/x"]
    )
    assert values["metrics_port"] == 8502
    assert warnings == []  # --tensorflow_gpu_memory_fraction is TF Serving's --per_process_gpu_memory_fraction


def test_defaults_follow_tf_serving_except_rest_port() -> None:
    options = server_options({"model_base_path": "/models/m"})
    assert options.grpc_port == 8500
    assert options.rest_api_port == 8501
    assert options.rest_api_timeout_ms == 30000
    assert options.models[0].name == "default"
    assert options.runtime.saved_model_tags == ("serve",)


def test_session_parallelism_sets_both_pools() -> None:
    options = server_options({"model_base_path": "/m", "tensorflow_session_parallelism": 4,
                              "tensorflow_intra_op_parallelism": 2})
    assert (options.runtime.intra_op_parallelism, options.runtime.inter_op_parallelism) == (2, 4)


def test_articles_parallelism_flags_work_together() -> None:
    warnings: list[str] = []
    options = server_options({"model_base_path": "/m", "tensorflow_session_parallelism": 4,
                              "tensorflow_intra_op_parallelism": 2, "tensorflow_inter_op_parallelism": 3}, warnings)
    assert (options.runtime.intra_op_parallelism, options.runtime.inter_op_parallelism) == (2, 3)
    assert "--tensorflow_session_parallelism is ignored" in warnings[0]


def test_repeated_flag_last_one_wins() -> None:
    # The Docker entrypoint passes TF Serving's defaults first and `docker run IMAGE FLAGS` after them.
    values, _ = parse_flags(["--rest_api_port=8501", "--model_name=model", "--rest_api_port=9001", "--model_name=m"])
    assert values == {"rest_api_port": 9001, "model_name": "m"}


def test_config_file_wins_over_model_name_and_base_path(tmp_path: Path) -> None:
    """As TF Serving (which builds the single-model config only when --model_config_file is empty): the image's
    entrypoint always passes --model_name/--model_base_path, and `docker run IMAGE --model_config_file=...` must
    serve the config's models only."""
    config = tmp_path / "config.conf"
    config.write_text('model_config_list { config { name: "a" base_path: "/srv/a" model_platform: "tensorflow" } }',
                      encoding="utf-8")
    options = server_options({"model_name": "model", "model_base_path": "/models/model",
                              "model_config_file": str(config)})
    assert [(m.name, m.base_path) for m in options.models] == [("a", "/srv/a")]


def test_grpc_channel_arguments() -> None:
    options = server_options({"model_base_path": "/m",
                              "grpc_channel_arguments": "grpc.max_connection_age_ms=2000,grpc.primary_user_agent=x"})
    assert options.grpc_channel_arguments == (("grpc.max_connection_age_ms", 2000), ("grpc.primary_user_agent", "x"))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "--model_base_path and --model_config_file are empty"),
        ({"model_base_path": "/m", "port": -1}, "--port=-1: must be 0 or more"),
        ({"model_base_path": "/m", "port": 0, "rest_api_port": 0}, "nothing to serve"),
        ({"model_base_path": "/m", "saved_model_tags": " , "}, "--saved_model_tags is empty"),
        ({"model_base_path": "/m", "grpc_channel_arguments": "novalue"}, "is not key=value"),
    ],
)
def test_inconsistent_settings_are_errors(values: dict[str, object], message: str) -> None:
    with pytest.raises(FlagError, match=message):
        server_options(values)


def test_model_platform_picks_the_single_models_runtime(tmp_path: Path) -> None:
    values, warnings = parse_flags([f"--model_base_path={tmp_path}", "--model_platform=onnx"])
    assert server_options(values, warnings).models[0].platform == "onnx"
    values, warnings = parse_flags([f"--model_base_path={tmp_path}"])
    assert server_options(values, warnings).models[0].platform == "tensorflow"  # TF Serving's only platform
    with pytest.raises(FlagError, match="--model_platform=keras: use one of auto, memory, onnx"):
        server_options(*parse_flags([f"--model_base_path={tmp_path}", "--model_platform=keras"]))
    config = tmp_path / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "m" base_path: "{tmp_path}" }} }}')
    with pytest.raises(FlagError, match="applies to --model_base_path only"):
        server_options(*parse_flags([f"--model_config_file={config}", "--model_platform=onnx"]))
