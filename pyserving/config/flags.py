"""TF Serving's command-line flags, spelled as tensorflow_model_server spells them, parsed into ServerOptions.

Syntax as TF Serving's: `--name=value`; also `--name value`; booleans as bare `--name` or `--name=true|false|1|0`.
Every flag of TF Serving's main.cc is known. A flag pyserving does not implement yet is accepted with a warning
that says so (never a silent no-op); an unknown flag or a bad value is an error naming the flag.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pyserving.options import HttpLimits, LifecycleOptions, ModelConfig, RuntimeOptions, ServerOptions


class FlagError(ValueError):
    """A command line that cannot be used; the message names the flag and says what to write instead."""


@dataclass(frozen=True, slots=True)
class Flag:
    name: str
    kind: type  # bool, int, float or str
    default: Any
    help: str
    implemented: bool = True


FLAGS: tuple[Flag, ...] = (
    Flag("port", int, 8500, "gRPC port (0 disables gRPC unless --grpc_socket_path is set)"),
    Flag("grpc_socket_path", str, "", "also serve gRPC on this UNIX socket"),
    Flag("grpc_channel_arguments", str, "", "gRPC server arguments as k=v,k=v (int-looking values are ints)"),
    Flag("grpc_max_threads", int, 0, "TF Serving's gRPC thread cap; pyserving serves gRPC on an event loop", False),
    Flag("rest_api_port", int, 8501, "REST port (0 disables REST). TF Serving's default is 0; ours is 8501"),
    Flag("rest_api_num_threads", int, 0, "TF Serving's HTTP thread count; pyserving serves REST on an event loop", False),
    Flag("rest_api_timeout_in_ms", int, 30000, "timeout of a REST request's model run, in ms"),
    Flag("rest_api_enable_cors_support", bool, False, "add CORS headers to REST responses"),
    Flag("model_name", str, "default", "name of the model (single-model mode)"),
    Flag("model_base_path", str, "", "directory holding the model's numbered version directories"),
    Flag("model_platform", str, "tensorflow", "single-model mode's model_platform: tensorflow, onnx, pytorch, "
         "tflite, python, auto (by each version's files) ... (pyserving; TF Serving serves tensorflow only)"),
    Flag("model_config_file", str, "", "model_config_list text proto (multi-model mode)"),
    Flag("model_config_file_poll_wait_seconds", int, 0, "re-read --model_config_file every N seconds"),
    Flag("file_system_poll_wait_seconds", int, 1, "poll base paths for new versions every N seconds"),
    Flag("flush_filesystem_caches", bool, True, "flush file-system caches after loads", False),
    Flag("num_load_threads", int, 0, "threads that load models"),
    Flag("num_unload_threads", int, 0, "threads that unload models", False),
    Flag("max_num_load_retries", int, 5, "retries of a failed load"),
    Flag("load_retry_interval_micros", int, 60_000_000, "wait between load retries"),
    Flag("allow_version_labels_for_unavailable_models", bool, False, "allow new labels on unloaded versions"),
    Flag("enable_batching", bool, False, "batch requests on the server"),
    Flag("batching_parameters_file", str, "", "BatchingParameters text proto"),
    Flag("enable_per_model_batching_parameters", bool, False, "read batching_params.pbtxt per version"),
    Flag("saved_model_tags", str, "serve", "comma-separated tag set of the MetaGraph to load"),
    Flag("tensorflow_session_parallelism", int, 0, "intra- and inter-op threads of each model (0: intra-op as "
         "TensorFlow picks, ops in the calling thread)"),
    Flag("tensorflow_intra_op_parallelism", int, 0, "intra-op threads of each model (0: TensorFlow picks)"),
    Flag("tensorflow_inter_op_parallelism", int, 0, "inter-op threads of each model (0: none, ops run in the "
         "calling thread, measured faster; N: a pool of N, as TF Serving's default of one per core)"),
    Flag("tensorflow_session_config_file", str, "", "tensorflow.ConfigProto text proto; flags override its fields"),
    Flag("per_process_gpu_memory_fraction", float, 0.0, "fraction of GPU memory each process may take (0: "
         "TensorFlow's default, all of it)"),
    Flag("tensorflow_gpu_memory_fraction", float, 0.0, "the article's spelling of --per_process_gpu_memory_fraction"),
    Flag("gpu_allow_growth", bool, False, "allocate GPU memory as needed instead of up front (pyserving; TF "
         "Serving: TF_FORCE_GPU_ALLOW_GROWTH=true)"),
    Flag("gpu_visible_devices", str, "", "comma-separated GPU indices TensorFlow may use, e.g. 0,2 (pyserving; "
         "gpu_options.visible_device_list)"),
    Flag("allow_python_models", bool, False, 'load model_platform "python" models: their model.py runs in the '
         "server with its rights (pyserving)"),
    Flag("enable_model_warmup", bool, True, "replay assets.extra/tf_serving_warmup_requests before serving"),
    Flag("num_request_iterations_for_warmup", int, 0, "replays of each warm-up record"),
    Flag("monitoring_config_file", str, "", "MonitoringConfig text proto (Prometheus)"),
    Flag("enable_metrics", bool, False, "serve Prometheus metrics (the article's flag)"),
    Flag("metrics_port", int, 0, "port of the metrics endpoint (the article's flag)"),
    Flag("ssl_config_file", str, "", "SSLConfig text proto: TLS (and mTLS) on gRPC, REST and the metrics port"),
    Flag("use_alts_credentials", bool, False, "gRPC ALTS credentials", False),
    Flag("platform_config_file", str, "", "PlatformConfigMap text proto", False),
    Flag("enable_signature_method_name_check", bool, False, "require predict/classify/regress method names"),
    Flag("enable_serialization_as_tensor_content", bool, False, "send gRPC output tensors as tensor_content"),
    Flag("enable_grpc_healthcheck_service", bool, False, "serve grpc.health.v1"),
    Flag("remove_unused_fields_from_bundle_metagraph", bool, True, "keep only signatures in memory", False),
    Flag("prefer_tflite_model", bool, False, "serve a SavedModel directory's model.tflite when present"),
    Flag("num_tflite_pools", int, 0, "TFLite interpreter pools (0: as many as CPUs)"),
    Flag("num_tflite_interpreters_per_pool", int, 1, "TFLite interpreters per pool"),
    Flag("xla_cpu_compilation_enabled", bool, False, "XLA CPU JIT", False),
    Flag("xla_gpu_compilation_enabled", bool, False, "XLA GPU JIT", False),
    Flag("enable_profiler", bool, True, "TensorBoard profiler service", False),
    Flag("thread_pool_factory_config_file", str, "", "ThreadPoolFactoryConfig text proto", False),
    Flag("mixed_precision", str, "", "bfloat16 auto mixed precision", False),
    Flag("skip_initialize_tpu", bool, False, "TPU builds only", False),
    Flag("verbosity", str, "INFO", "log level: DEBUG (adds a line per request), INFO, WARNING or ERROR"),
    Flag("log_dir", str, "", "also write logs into rotating files in this directory (the article's flag)"),
    Flag("version", bool, False, "print the version and exit"),
    # pyserving's own
    Flag("host", str, "0.0.0.0", "address both ports bind to (pyserving; TF Serving binds all interfaces)"),
    Flag("auth_config_file", str, "", "API keys and JWT issuers with per-model scopes (pyserving; re-read on change)"),
    Flag("model_base_path_prefix", str, "", "comma-separated directories model base paths must lie under "
         "(pyserving; refuses configs and reloads pointing elsewhere)"),
    Flag("max_request_bytes", int, 256 << 20, "largest REST body (also gunzipped and as decoded JSON), gRPC "
         "message or decoded input tensor; 0: TF Serving's limits"),
    Flag("http_header_timeout_s", float, 10.0, "a request's line and headers must arrive within this (0: no limit)"),
    Flag("http_body_timeout_s", float, 30.0, "longest pause while a request body arrives (0: no limit)"),
    Flag("http_keepalive_timeout_s", float, 75.0, "idle kept-alive connections (REST) and gRPC connections close "
         "after this (0: no limit)"),
    Flag("absolute_paths_in_errors", bool, False, "model status errors name files by absolute path (default: "
         "relative to the model's base path)"),
    Flag("max_connections", int, 4096, "open connections per REST listener; more get 503 and are closed"),
    Flag("max_header_count", int, 100, "headers per REST request (431 beyond)"),
    Flag("max_header_bytes", int, 64 << 10, "bytes of a REST request's line and headers (431 beyond); gRPC "
         "metadata too"),
    Flag("frontend_processes", int, -1, "pyserving's own: serve REST and gRPC from N processes sharing the ports "
         "(HTTP, JSON, protobuf and auth work spread over N cores), over one process holding the models; 0: one "
         "process for everything; -1 (default): one per usable core (CPU quota and affinity counted), at most "
         "4, and 0 on a single core"),
    Flag("drain_delay_s", float, 0.0, "on SIGTERM, answer /readyz 503 (and gRPC health NOT_SERVING) and keep "
         "serving this long before closing the listeners, so load balancers stop sending first"),
    Flag("shutdown_grace_s", float, 10.0, "on SIGTERM, once the listeners are closed, let the requests in flight "
         "finish for up to this long, then answer the rest 503 (a model call already running still ends before "
         "the process exits). Kubernetes: keep terminationGracePeriodSeconds above --drain_delay_s plus this"),
    Flag("cors_allowed_origins", str, "", "with --rest_api_enable_cors_support: comma-separated allowed origins "
         "(default: any, as TF Serving's *)"),
)
_BY_NAME = {f.name: f for f in FLAGS}
_TRUE, _FALSE = {"true", "1", "yes"}, {"false", "0", "no"}


def _convert(flag: Flag, raw: str) -> Any:
    if flag.kind is bool:
        low = raw.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise FlagError(f"--{flag.name}={raw}: expected true or false")
    try:
        return flag.kind(raw)
    except ValueError:
        what = {int: "an integer", float: "a number"}.get(flag.kind, "a value")
        raise FlagError(f"--{flag.name}={raw}: expected {what}") from None


def parse_flags(argv: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """The values given on the command line (name -> typed value) and warnings for unimplemented flags."""
    values: dict[str, Any] = {}
    warnings: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("-") or arg in ("-", "--"):
            raise FlagError(f"unexpected argument {arg!r}: every setting is a --flag=value")
        name, has_value, raw = arg.lstrip("-").partition("=")
        flag = _BY_NAME.get(name)
        if flag is None:
            close = difflib.get_close_matches(name, _BY_NAME, n=1)
            hint = f"; did you mean --{close[0]}?" if close else "; see `pyserving serve --help`"
            raise FlagError(f"unknown flag --{name}{hint}")
        if not has_value:
            if flag.kind is bool:
                if i < len(args) and args[i].lower() in _TRUE | _FALSE:
                    raw, i = args[i], i + 1
                else:
                    raw = "true"
            elif i < len(args):
                raw, i = args[i], i + 1
            else:
                raise FlagError(f"--{name} needs a value: --{name}=VALUE")
        values[name] = _convert(flag, raw)
        if not flag.implemented and values[name] != flag.default:
            warnings.append(
                f"--{name} is accepted for TensorFlow Serving compatibility but not implemented in this pyserving "
                "version yet: it has no effect."
            )
    return values, warnings


def _channel_arguments(raw: str) -> tuple[tuple[str, str | int], ...]:
    out: list[tuple[str, str | int]] = []
    for item in filter(None, (p.strip() for p in raw.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise FlagError(f"--grpc_channel_arguments: {item!r} is not key=value (write e.g. grpc.max_connection_age_ms=2000)")
        try:
            out.append((key, int(value)))
        except ValueError:
            out.append((key, value))
    return tuple(out)


def _non_negative(values: dict[str, Any], *names: str) -> None:
    for name in names:
        if values.get(name, 0) < 0:
            raise FlagError(f"--{name}={values[name]}: must be 0 or more")


def _gpu_memory_fraction(v: dict[str, Any]) -> float:
    """TF Serving's flag or the article's spelling of it (which real TF Serving does not know); both: must agree."""
    real, article = v["per_process_gpu_memory_fraction"], v["tensorflow_gpu_memory_fraction"]
    for name, value in (("per_process_gpu_memory_fraction", real), ("tensorflow_gpu_memory_fraction", article)):
        if not 0 <= value <= 1:
            raise FlagError(f"--{name}={value}: give a fraction between 0 and 1, e.g. 0.8")
    if real and article and real != article:
        raise FlagError(f"--per_process_gpu_memory_fraction={real} and --tensorflow_gpu_memory_fraction={article} "
                        "disagree; they are the same setting, give one.")
    return real or article


def server_options(values: dict[str, Any], warnings: list[str] | None = None) -> ServerOptions:
    """Validate flag values together and build ServerOptions; notes for the user are appended to `warnings`."""
    v = {f.name: f.default for f in FLAGS} | values
    _non_negative(v, "port", "rest_api_port", "tensorflow_session_parallelism",
                  "tensorflow_intra_op_parallelism", "tensorflow_inter_op_parallelism")
    for name in ("port", "rest_api_port"):
        if v[name] > 65535:
            raise FlagError(f"--{name}={v[name]}: a port is at most 65535")
    if not v["model_base_path"] and not v["model_config_file"]:
        raise FlagError(
            "Both --model_base_path and --model_config_file are empty: give --model_base_path=/models/NAME (and "
            "--model_name=NAME), or a --model_config_file."
        )
    models: tuple[ModelConfig, ...]
    if v["model_config_file"]:
        from pyserving.config.model_config import load_model_config_file

        if v["model_platform"] != "tensorflow":
            raise FlagError(f"--model_platform={v['model_platform']} applies to --model_base_path only: with "
                            "--model_config_file, write model_platform in each model's config")

        try:
            models = tuple(load_model_config_file(v["model_config_file"]))
        except ValueError as exc:
            raise FlagError(f"--model_config_file={v['model_config_file']}: {exc}") from None
    else:
        from pyserving.platforms import PLATFORMS

        if v["model_platform"] not in PLATFORMS:
            raise FlagError(f"--model_platform={v['model_platform']}: use one of {', '.join(sorted(PLATFORMS))}")
        models = (ModelConfig(name=v["model_name"], platform=v["model_platform"],
                              base_path=os.path.abspath(os.path.expanduser(v["model_base_path"]))),)
    _non_negative(v, "max_num_load_retries", "num_load_threads", "num_request_iterations_for_warmup",
                  "num_tflite_pools", "num_tflite_interpreters_per_pool")
    batching = None
    if v["batching_parameters_file"] and not v["enable_batching"]:
        raise FlagError(
            "--batching_parameters_file is set but --enable_batching is not: add --enable_batching=true (or drop "
            "the file)."
        )
    if v["enable_batching"]:
        from pyserving.config.batching_config import load_batching_parameters_file
        from pyserving.options import BatchingOptions

        try:
            batching = (
                load_batching_parameters_file(v["batching_parameters_file"])
                if v["batching_parameters_file"] else BatchingOptions(thread_pool_name="model_server_batch_threads")
            )
        except ValueError as exc:
            raise FlagError(f"--batching_parameters_file={v['batching_parameters_file']}: {exc}") from None
    if v["port"] == 0 and not v["grpc_socket_path"] and v["rest_api_port"] == 0:
        raise FlagError("--port=0 and --rest_api_port=0 leave nothing to serve on; set at least one.")
    session = v["tensorflow_session_parallelism"]
    intra, inter = v["tensorflow_intra_op_parallelism"], v["tensorflow_inter_op_parallelism"]
    if session and intra and inter and warnings is not None:
        # TF Serving refuses this combination, but the article's command uses it: the specific flags win.
        warnings.append(
            "--tensorflow_session_parallelism is ignored because --tensorflow_intra_op_parallelism and "
            "--tensorflow_inter_op_parallelism are both set."
        )
    gpu_fraction = _gpu_memory_fraction(v)
    devices = v["gpu_visible_devices"].replace(" ", "")
    if devices and not all(d.isdigit() for d in devices.split(",")):
        raise FlagError(f"--gpu_visible_devices={v['gpu_visible_devices']}: give GPU indices, e.g. 0 or 0,1")
    session_config = ""
    if v["tensorflow_session_config_file"]:
        from pyserving.config.textproto import read_config_file

        try:
            # Parsed by the TensorFlow runtime (its ConfigProto), so that a server of other models never imports it.
            session_config = read_config_file(v["tensorflow_session_config_file"],
                                              what="--tensorflow_session_config_file")
        except ValueError as exc:
            raise FlagError(f"--tensorflow_session_config_file: {exc}") from None
    tags = tuple(t.strip() for t in v["saved_model_tags"].split(",") if t.strip())
    if not tags:
        raise FlagError("--saved_model_tags is empty: give the tag set to load, e.g. --saved_model_tags=serve")
    if v["rest_api_timeout_in_ms"] < 0:
        raise FlagError(f"--rest_api_timeout_in_ms={v['rest_api_timeout_in_ms']}: must be 0 (no timeout) or more")
    monitoring_path = ""
    if v["monitoring_config_file"]:
        from pyserving.config.monitoring_config import load_monitoring_config_file

        try:
            monitoring_path = load_monitoring_config_file(v["monitoring_config_file"])
        except ValueError as exc:
            raise FlagError(f"--monitoring_config_file={v['monitoring_config_file']}: {exc}") from None
        if monitoring_path and not v["rest_api_port"]:
            raise FlagError("--monitoring_config_file serves metrics on the REST port, but --rest_api_port=0; "
                            "give a REST port (or use --enable_metrics=true --metrics_port=PORT).")
    metrics_port = 0
    if v["enable_metrics"]:
        metrics_port = v["metrics_port"] or 8502
        if metrics_port in (v["port"], v["rest_api_port"]):
            raise FlagError(f"--metrics_port={metrics_port} is already the gRPC or REST port; pick another.")
    elif v["metrics_port"] and warnings is not None:
        warnings.append("--metrics_port has no effect without --enable_metrics=true.")
    tls = None
    if v["ssl_config_file"]:
        from pyserving.config.ssl_config import load_ssl_config_file

        try:
            tls = load_ssl_config_file(v["ssl_config_file"])
        except ValueError as exc:
            raise FlagError(f"--ssl_config_file={v['ssl_config_file']}: {exc}") from None
    auth_file = ""
    if v["auth_config_file"]:
        from pyserving.config.auth_config import load_auth_config_file

        auth_file = os.path.abspath(v["auth_config_file"])
        try:
            load_auth_config_file(auth_file)  # refuse a broken file at start-up; reloads keep the last good one
        except ValueError as exc:
            raise FlagError(f"--auth_config_file={v['auth_config_file']}: {exc}") from None
    _non_negative(v, "max_request_bytes", "http_header_timeout_s", "http_body_timeout_s", "http_keepalive_timeout_s",
                  "drain_delay_s", "shutdown_grace_s")
    if not -1 <= v["frontend_processes"] <= 64:
        raise FlagError(f"--frontend_processes={v['frontend_processes']}: use 0 (one process) to 64, or -1 (one "
                        "per core)")
    if v["frontend_processes"] == -1:
        from pyserving.config.cpus import default_frontend_processes

        v["frontend_processes"] = default_frontend_processes()
    for name in ("max_connections", "max_header_count", "max_header_bytes"):
        if v[name] < 1:
            raise FlagError(f"--{name}={v[name]}: must be 1 or more")
    origins = tuple(o.strip() for o in v["cors_allowed_origins"].split(",") if o.strip())
    if origins and not v["rest_api_enable_cors_support"]:
        raise FlagError("--cors_allowed_origins needs --rest_api_enable_cors_support=true.")
    return ServerOptions(
        tls=tls,
        auth_config_file=auth_file,
        max_request_bytes=v["max_request_bytes"],
        http=HttpLimits(
            header_timeout_s=v["http_header_timeout_s"], body_timeout_s=v["http_body_timeout_s"],
            keepalive_timeout_s=v["http_keepalive_timeout_s"], max_connections=v["max_connections"],
            max_header_count=v["max_header_count"], max_header_bytes=v["max_header_bytes"],
        ),
        cors_allowed_origins=origins,
        drain_delay_s=v["drain_delay_s"],
        shutdown_grace_s=v["shutdown_grace_s"],
        frontend_processes=v["frontend_processes"],
        models=models,
        monitoring_path=monitoring_path,
        metrics_port=metrics_port,
        host=v["host"],
        grpc_port=v["port"],
        grpc_socket_path=v["grpc_socket_path"],
        grpc_channel_arguments=_channel_arguments(v["grpc_channel_arguments"]),
        rest_api_port=v["rest_api_port"],
        rest_api_timeout_ms=v["rest_api_timeout_in_ms"],
        rest_api_enable_cors_support=v["rest_api_enable_cors_support"],
        runtime=RuntimeOptions(
            saved_model_tags=tags,
            intra_op_parallelism=intra or session,
            inter_op_parallelism=inter or session,
            enable_model_warmup=v["enable_model_warmup"],
            num_request_iterations_for_warmup=v["num_request_iterations_for_warmup"],
            session_config=session_config,
            gpu_memory_fraction=gpu_fraction,
            gpu_allow_growth=v["gpu_allow_growth"],
            gpu_visible_devices=devices,
            allow_python_models=v["allow_python_models"],
            prefer_tflite_model=v["prefer_tflite_model"],
            num_tflite_pools=v["num_tflite_pools"],
            num_tflite_interpreters_per_pool=v["num_tflite_interpreters_per_pool"],
        ),
        lifecycle=LifecycleOptions(
            file_system_poll_wait_seconds=float(v["file_system_poll_wait_seconds"]),
            max_num_load_retries=v["max_num_load_retries"],
            load_retry_interval_s=max(v["load_retry_interval_micros"], 0) / 1e6,
            num_load_threads=v["num_load_threads"],
            allow_version_labels_for_unavailable_models=v["allow_version_labels_for_unavailable_models"],
            model_config_file=os.path.abspath(v["model_config_file"]) if v["model_config_file"] else "",
            model_config_file_poll_wait_seconds=float(v["model_config_file_poll_wait_seconds"]),
            absolute_paths_in_errors=v["absolute_paths_in_errors"],
            allowed_base_paths=tuple(p.strip() if "://" in p else os.path.abspath(p.strip())
                                     for p in v["model_base_path_prefix"].split(",") if p.strip()),
        ),
        enable_grpc_healthcheck_service=v["enable_grpc_healthcheck_service"],
        batching=batching,
        enable_per_model_batching_parameters=v["enable_per_model_batching_parameters"],
        enable_signature_method_name_check=v["enable_signature_method_name_check"],
        enable_serialization_as_tensor_content=v["enable_serialization_as_tensor_content"],
    )


def usage() -> str:
    lines = ["usage: pyserving serve [--flag=value ...]", "", "Flags (TensorFlow Serving's names):"]
    for f in FLAGS:
        default = str(f.default).lower() if f.kind is bool else repr(f.default) if f.kind is str else f.default
        note = "" if f.implemented else "  [accepted, not implemented yet]"
        lines.append(f"  --{f.name}={default}\t{f.help}{note}")
    return "\n".join(lines)


