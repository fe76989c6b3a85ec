"""The one typed picture of what the user asked for. Built by `config/` from flags and files; tests build it directly."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True, slots=True)
class VersionPolicy:
    """Which of the versions on disk should be served (TF Serving's ServableVersionPolicy)."""

    kind: Literal["latest", "all", "specific"] = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class ShadowTraffic:
    """Mirror `percent` of the split's requests to another version; its answers are measured and dropped."""

    arm: int | str
    percent: int = 100


@dataclass(frozen=True, slots=True)
class RollbackGuard:
    """Take a candidate arm out of rotation when, over the last `window_s` with at least `min_requests` on each
    side, its error rate exceeds the baseline's by more than `max_error_rate_increase` (absolute, 0.05 = 5 points)
    or its p99 latency is more than `max_p99_latency_ratio` times the baseline's."""

    max_error_rate_increase: float = 0.05
    max_p99_latency_ratio: float = 2.0
    window_s: float = 60.0
    min_requests: int = 100


@dataclass(frozen=True, slots=True)
class Promotion:
    """Raise a healthy candidate's weight by `step_percent` every `interval_s`, up to 100."""

    step_percent: int = 10
    interval_s: float = 60.0


@dataclass(frozen=True, slots=True)
class TrafficSplit:
    """The article's `percentage` policy: requests naming no version or label are split by weight.

    Each arm is a version number or a version label; weights are percentages summing to 100. The arm with the
    largest weight (the first on ties) is the baseline; the others are candidates, which `rollback` guards and
    `promotion` advances. With `sticky_key`, requests carrying that header / gRPC metadata key are assigned by a
    hash of its value, so one user always sees one version.
    """

    arms: tuple[tuple[int | str, int], ...]
    sticky_key: str = ""
    shadow: ShadowTraffic | None = None
    rollback: RollbackGuard | None = None
    promotion: Promotion | None = None


@dataclass(frozen=True, slots=True)
class BatchingOptions:
    """TF Serving's BatchingParameters with its library defaults, in TF Serving's units."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = 0
    """0: as many as CPUs (TF Serving's port::MaxParallelism())."""
    thread_pool_name: str = "batch_threads"
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False
    enable_large_batch_splitting: bool = False
    max_execution_batch_size: int = 0
    """0: same as max_batch_size."""


@dataclass(frozen=True, slots=True)
class LoggingOptions:
    """TF Serving's per-model logging_config: which requests to log and where."""

    sampling_rate: float = 0.0
    collector_type: str = ""
    filename_prefix: str = ""


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """One entry of a model_config_list (or the single model named by --model_name/--model_base_path)."""

    name: str
    base_path: str
    platform: str = "tensorflow"
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    version_labels: tuple[tuple[str, int], ...] = ()
    traffic_split: TrafficSplit | None = None
    batching: BatchingOptions | None = None
    logging: LoggingOptions | None = None


@dataclass(frozen=True, slots=True)
class RuntimeOptions:
    """How a runtime loads and runs a model version."""

    saved_model_tags: tuple[str, ...] = ("serve",)
    intra_op_parallelism: int = 0
    inter_op_parallelism: int = 0
    enable_model_warmup: bool = True
    num_request_iterations_for_warmup: int = 0
    """0: replay each warm-up record once (TF Serving's default)."""
    defer_warmup: bool = False
    """Set by the manager: it warms the version up itself, through the version's batcher when it has one."""
    session_config: str = ""
    """--tensorflow_session_config_file's text (a tensorflow.ConfigProto); the flags below override its fields."""
    gpu_memory_fraction: float = 0.0
    """--per_process_gpu_memory_fraction (the article: --tensorflow_gpu_memory_fraction); 0: TensorFlow's default."""
    gpu_allow_growth: bool = False
    gpu_visible_devices: str = ""
    """Comma-separated GPU indices TensorFlow may use (gpu_options.visible_device_list); "": all. ONNX Runtime and
    torch models run on the first one listed (GPU 0 when empty)."""
    allow_python_models: bool = False
    """--allow_python_models: load model_platform "python" versions, whose model.py runs in the server."""
    prefer_tflite_model: bool = False
    """--prefer_tflite_model: a "tensorflow" version with a model.tflite is served from it, not its SavedModel."""
    num_tflite_pools: int = 0
    """0: as many as CPUs (TF Serving's default)."""
    num_tflite_interpreters_per_pool: int = 1


@dataclass(frozen=True, slots=True)
class LifecycleOptions:
    """How versions are discovered, loaded, retried and labelled (TF Serving's flag names, converted units)."""

    file_system_poll_wait_seconds: float = 1.0
    """<= 0: look once at start-up (TF Serving: 0 polls once, < 0 never; both mean no polling here)."""
    max_num_load_retries: int = 5
    load_retry_interval_s: float = 60.0
    num_load_threads: int = 0
    allow_version_labels_for_unavailable_models: bool = False
    model_config_file: str = ""
    model_config_file_poll_wait_seconds: float = 0.0
    allowed_base_paths: tuple[str, ...] = ()
    """--model_base_path_prefix: base paths must lie under one of these directories (empty: anywhere)."""
    absolute_paths_in_errors: bool = False
    """Load errors that clients see (model status) name files by absolute path; by default relative to the
    model's base path (the log always has the whole path)."""


@dataclass(frozen=True, slots=True)
class TlsOptions:
    """TF Serving's SSLConfig (--ssl_config_file): PEM text, not paths. Applied to every listener."""

    server_key: str
    server_cert: str
    custom_ca: str = ""
    client_verify: bool = False
    """Mutual TLS: clients must present a certificate signed by `custom_ca`."""


@dataclass(frozen=True, slots=True)
class RateLimit:
    requests_per_second: float
    burst: int


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    sha256: bytes
    """SHA-256 of the key (the key itself is never stored)."""
    scopes: frozenset[str]
    rate_limit: RateLimit | None = None


@dataclass(frozen=True, slots=True)
class JwtIssuer:
    issuer: str
    audience: str
    algorithms: tuple[str, ...]
    """The only algorithms accepted for this issuer (never "none"; HS* only with a secret, others only with keys)."""
    jwks: str = ""
    """The JWKS document (JSON text) holding the issuer's public keys, or "" with `hs256_secret`."""
    hs256_secret: bytes = b""
    scope_claim: str = "scope"
    rate_limit: RateLimit | None = None


@dataclass(frozen=True, slots=True)
class AuthPolicy:
    """--auth_config_file: who may call what. Scopes are MODEL:ACTION (`*` for any model); actions are predict,
    metadata and admin."""

    api_keys: tuple[ApiKey, ...] = ()
    jwt: tuple[JwtIssuer, ...] = ()
    public: frozenset[str] = frozenset()
    """Endpoints open without credentials besides health: "metrics"."""


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """What one HTTP client may hold of a REST listener (and, where gRPC has the same knob, of the gRPC one).

    Timeouts follow nginx's meaning: the head must arrive whole within `header_timeout_s` of its first byte (or
    of the connection opening), and a body may pause at most `body_timeout_s` between two reads."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keepalive_timeout_s: float = 75.0
    """Idle time before a kept-alive connection is closed; longer than a proxy's (nginx: 60 s) so that the proxy,
    not us, closes first and never reuses a connection we are closing."""
    max_connections: int = 4096
    max_header_count: int = 100
    max_header_bytes: int = 64 << 10
    """Request line plus headers."""


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """Everything `pyserving serve` needs. Ports follow TF Serving: 0 disables that front end."""

    models: tuple[ModelConfig, ...] = ()
    host: str = "0.0.0.0"
    grpc_port: int = 8500
    grpc_socket_path: str = ""
    grpc_channel_arguments: tuple[tuple[str, str | int], ...] = ()
    grpc_max_message_bytes: int = 2**31 - 1
    rest_api_port: int = 8501
    rest_api_timeout_ms: int = 30000
    rest_api_enable_cors_support: bool = False
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)
    lifecycle: LifecycleOptions = field(default_factory=LifecycleOptions)
    enable_signature_method_name_check: bool = False
    enable_serialization_as_tensor_content: bool = False
    enable_grpc_healthcheck_service: bool = False
    batching: BatchingOptions | None = None
    """--enable_batching: every model's versions batch with these (from --batching_parameters_file)."""
    enable_per_model_batching_parameters: bool = False
    """Each version's batching_params.pbtxt decides; a version without one is served unbatched."""
    monitoring_path: str = ""
    """Serve Prometheus metrics on the REST port at this path ("": not there)."""
    metrics_port: int = 0
    """Serve Prometheus metrics at /metrics on this port of its own (the article's --metrics_port; 0: no)."""
    num_worker_threads: int = 0
    """Threads that run model code; 0 picks a default from the CPU count."""
    frontend_processes: int = 0
    """Front-end processes sharing the REST and gRPC ports over this (model) process; 0: one process serves all.
    The command line's default is one per core (config.cpus); a Server built in code runs in one process unless
    asked, since spawning processes from an embedding program is not something to do behind its back."""
    shutdown_grace_s: float = 10.0
    drain_delay_s: float = 0.0
    """On SIGTERM, report not ready (/readyz 503, gRPC health NOT_SERVING) and keep serving this long before the
    listeners close, so that load balancers polling readiness stop sending first. 0: close at once (Kubernetes'
    preStop hook can do the waiting instead)."""
    tls: TlsOptions | None = None
    """--ssl_config_file: TLS on gRPC, REST and the metrics port."""
    auth_config_file: str = ""
    """--auth_config_file: API keys and JWT issuers with per-model scopes, re-read when it changes."""
    auth_poll_seconds: float = 1.0
    max_request_bytes: int = 256 << 20
    """Largest REST body (also once gunzipped, and as decoded JSON), gRPC message or decoded input tensor.
    0: TF Serving's limits (gRPC 2 GiB, REST 100 MiB once unzipped)."""
    http: HttpLimits = field(default_factory=HttpLimits)
    cors_allowed_origins: tuple[str, ...] = ()
    """With CORS on: origins allowed (empty: any, TF Serving's `*`)."""
