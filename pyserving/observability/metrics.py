"""Every metric pyserving exports, defined once.

Two families, in one registry:
* the article's names (`tensorflow_serving_*`), with the labels its dashboards need: model, version, signature,
  api (predict/classify/regress/multi_inference/metadata/status), protocol (rest/grpc) and code (OK,
  NOT_FOUND, ...). Failed requests are counted and timed too. Counters carry Prometheus' `_total` suffix on their
  samples (`tensorflow_serving_request_count_total`); the family name is the article's.
* TF Serving's own names (`:tensorflow:serving:request_count`, `:tensorflow:serving:request_latency`, ...), with
  its labels and buckets, so dashboards written for TF Serving keep working. TF Serving prints its counters
  without `_total`; prometheus_client cannot type such a sample a counter, so those come out untyped, with TF
  Serving's exact sample names.

Recording is cheap and thread-safe (prometheus_client's own locks); the event loop records requests, the control
thread records loads, worker threads record batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

from prometheus_client import (
    GCCollector,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

# TF Serving's request/runtime latency buckets: exponential, scale 10, growth 1.8, 33 buckets (microseconds).
LATENCY_BUCKETS_MICROS = tuple(10 * 1.8**i for i in range(33))
# TF Serving's batch-size buckets: 1, 2, 4, ..., 2^13.
BATCH_SIZE_BUCKETS = tuple(2.0**i for i in range(14))
# TF Serving's queuing latency buckets: exponential, scale 100, growth 1.2, 52 buckets (microseconds).
QUEUE_BUCKETS_MICROS = tuple(100 * 1.2**i for i in range(52))
LOAD_TIME_BUCKETS_S = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)

REQUEST_LABELS = ("model", "version", "signature", "api", "protocol", "code")
_TFS_API = {"predict": "Predict", "classify": "Classify", "regress": "Regress", "multi_inference": "MultiInference",
            "metadata": "GetModelMetadata", "status": "GetModelStatus"}


class _TfServingCounters(Collector):
    """TF Serving's counters with its exact sample names (no `_total`), typed untyped."""

    def __init__(self) -> None:
        self.request_count: dict[tuple[str, str], float] = {}
        self.load_attempts: dict[tuple[str, str], float] = {}
        self.load_latency: dict[str, float] = {}

    def collect(self) -> Iterator[Metric]:
        for name, labels, values in (
            (":tensorflow:serving:request_count", ("model_name", "status"), self.request_count),
            (":tensorflow:cc:saved_model:load_attempt_count", ("model_path", "status"), self.load_attempts),
            (":tensorflow:cc:saved_model:load_latency", ("model_path",), self.load_latency),
        ):
            metric = Metric(name, "", "unknown")
            for key, value in list(values.items()):
                key_tuple = key if isinstance(key, tuple) else (key,)
                metric.add_sample(name, dict(zip(labels, key_tuple)), value)
            yield metric


class _Refresher(Collector):
    """Registered first, so gauges read from live objects are fresh before the others are collected."""

    def __init__(self, hooks: list[Callable[[], None]]) -> None:
        self._hooks = hooks

    def collect(self) -> Iterator[Metric]:
        for hook in self._hooks:
            hook()
        return iter(())


class Gauges(Protocol):
    """Gauges read from live state before each scrape, as plain values (core.control.GaugeValues has this shape;
    observability imports nothing from core)."""

    states: Sequence[tuple[str, int, str]]
    """(model, version, state name) for every version."""
    queue_lengths: Sequence[tuple[str, int, int]]
    """(model, version, requests waiting) for every batched version."""
    canary_weights: Sequence[tuple[str, str, float]]
    """(model, arm, weight now) for every traffic split's arm."""


_GONE_KEPT = 1024
"""Forgotten versions remembered for late reports (a report is seconds late at most)."""


class Metrics:
    """The server's metrics. One per server; `registry` is what the endpoints expose."""

    def __init__(self) -> None:
        disable_created_metrics()  # `_created` series double every counter and no dashboard uses them
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._collect_hooks: list[Callable[[], None]] = []
        r.register(_Refresher(self._collect_hooks))
        self.request_count = Counter(
            "tensorflow_serving_request_count", "Requests, by outcome (failed ones too).", REQUEST_LABELS, registry=r
        )
        self.request_latency = Histogram(
            "tensorflow_serving_request_latency_micros", "End-to-end request latency in microseconds (failed "
            "requests too); P50/P90/P99 come from its buckets.", REQUEST_LABELS, buckets=LATENCY_BUCKETS_MICROS,
            registry=r,
        )
        self.in_flight = Gauge(
            "tensorflow_serving_requests_in_flight", "Requests being served now.", ("protocol",), registry=r
        )
        self.queue_length = Gauge(
            "tensorflow_serving_batching_queue_length", "Requests waiting in a version's batch queues.",
            ("model", "version"), registry=r,
        )
        self.batch_size = Histogram(
            "tensorflow_serving_batch_size", "Rows per executed batch, padding included.", ("model", "version"),
            buckets=BATCH_SIZE_BUCKETS, registry=r,
        )
        self.batch_queueing = Histogram(
            "tensorflow_serving_batch_queueing_latency_micros", "Time a request waited in a batch queue.",
            ("model", "version"), buckets=QUEUE_BUCKETS_MICROS, registry=r,
        )
        self.load_time = Gauge(
            "tensorflow_serving_model_load_time_seconds", "How long the last load of a version took (warm-up "
            "included).", ("model", "version"), registry=r,
        )
        self.load_time_histogram = Histogram(
            "tensorflow_serving_model_load_duration_seconds", "Load durations (warm-up included).", ("model",),
            buckets=LOAD_TIME_BUCKETS_S, registry=r,
        )
        self.model_state = Gauge(
            "tensorflow_serving_model_state", "1 for the state each version is in (START, LOADING, AVAILABLE, "
            "UNLOADING, END).", ("model", "version", "state"), registry=r,
        )
        self.load_failures = Counter(
            "tensorflow_serving_model_load_failures", "Failed load attempts.", ("model", "version"), registry=r,
        )
        self.canary_rollbacks = Counter(
            "tensorflow_serving_canary_rollbacks", "Candidates taken out of a traffic split by its guard.",
            ("model", "version"), registry=r,
        )
        self.canary_weight = Gauge(
            "tensorflow_serving_canary_weight_percent", "The weight each arm of a traffic split has now.",
            ("model", "arm"), registry=r,
        )
        self.shadow_dropped = Counter(
            "tensorflow_serving_shadow_dropped", "Mirrored requests dropped because too many were in flight.",
            ("model",), registry=r,
        )
        self.tfs_request_latency = Histogram(
            ":tensorflow:serving:request_latency", "", ("model_name", "API", "entrypoint"),
            buckets=LATENCY_BUCKETS_MICROS, registry=r,
        )
        self.tfs_runtime_latency = Histogram(
            ":tensorflow:serving:runtime_latency", "", ("model_name", "API", "runtime"),
            buckets=LATENCY_BUCKETS_MICROS, registry=r,
        )
        self.tfs_queuing_latency = Histogram(
            ":tensorflow:serving:batching_session:queuing_latency", "", ("thread_pool_name",),
            buckets=QUEUE_BUCKETS_MICROS, registry=r,
        )
        self.tfs_input_batch_size = Histogram(
            ":tensorflow:serving:batching_session:input_batch_size", "", (), buckets=BATCH_SIZE_BUCKETS, registry=r,
        )
        self.tfs_processed_batch_size = Histogram(
            ":tensorflow:serving:batching_session:processed_batch_size", "", (), buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self._request_children: dict[tuple[str, ...], tuple[Any, Any, Any]] = {}
        self._gone: dict[tuple[str, str], None] = {}
        """(model, version) forgotten lately, oldest first: front ends' late reports of them are dropped."""
        self._runtime_children: dict[tuple[str, str], Any] = {}
        self._batch_children: dict[tuple[str, int, str], tuple[Any, Any, Any]] = {}
        self._tfs = _TfServingCounters()
        r.register(self._tfs)
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_cpu_seconds_total, open fds
        GCCollector(registry=r)

    # --- recording ------------------------------------------------------------------------------------------

    def observe_request(
        self, *, model: str, version: str, signature: str, api: str, protocol: str, code: str, latency_s: float
    ) -> None:
        micros = latency_s * 1e6
        key = (model, version, signature, api, protocol, code)
        children = self._request_children.get(key) or self._children(key)
        count, latency, tfs_latency = children
        count.inc()
        latency.observe(micros)
        tfs_key = (model, code)
        self._tfs.request_count[tfs_key] = self._tfs.request_count.get(tfs_key, 0) + 1
        if tfs_latency is not None:
            tfs_latency.observe(micros)

    def _children(self, key: tuple[str, ...]) -> tuple[Any, Any, Any]:
        # labels() costs a few microseconds per call; a request pays it once per distinct label set
        model, _, _, api, protocol, code = key
        tfs_api = _TFS_API.get(api, api) if protocol == "grpc" else (api if api in ("predict", "classify", "regress") else "")
        children = self._request_children[key] = (
            self.request_count.labels(*key), self.request_latency.labels(*key),
            self.tfs_request_latency.labels(model, tfs_api, protocol.upper()) if code == "OK" else None,
        )
        return children

    def observe_requests(self, records: Iterable[Sequence[Any]]) -> None:
        """Many finished requests at once (a front end's report): `(model, version, signature, api, protocol,
        code, latency_s)` each. Counters go up once per label set, not once per request."""
        counts: dict[tuple[str, ...], list[Any]] = {}  # label set: [its children, requests]
        cache = self._request_children
        gone = self._gone
        for model, version, signature, api, protocol, code, latency_s in records:
            if gone and (model, version) in gone:  # reported after its version was forgotten: its series are gone
                continue
            key = (model, version, signature, api, protocol, code)
            counted = counts.get(key)
            if counted is None:
                counted = counts[key] = [cache.get(key) or self._children(key), 0]
            counted[1] += 1
            _, latency, tfs_latency = counted[0]
            micros = latency_s * 1e6
            latency.observe(micros)
            if tfs_latency is not None:
                tfs_latency.observe(micros)
        tfs_counts = self._tfs.request_count
        for key, (children, n) in counts.items():
            children[0].inc(n)
            tfs_key = (key[0], key[5])
            tfs_counts[tfs_key] = tfs_counts.get(tfs_key, 0) + n

    def observe_runtime(self, *, model: str, api: str, seconds: float) -> None:
        child = self._runtime_children.get((model, api))
        if child is None:  # labels() once per model and API, as for requests
            child = self._runtime_children[(model, api)] = self.tfs_runtime_latency.labels(
                model, _TFS_API.get(api, api), "TF1")
        child.observe(seconds * 1e6)

    def observe_load(self, *, model: str, version: int, path: str, seconds: float, ok: bool) -> None:
        status = "success" if ok else "fail"
        key = (path, status)
        self._tfs.load_attempts[key] = self._tfs.load_attempts.get(key, 0) + 1
        if ok:
            self._gone.pop((model, str(version)), None)  # served again
            self.load_time.labels(model, str(version)).set(seconds)
            self.load_time_histogram.labels(model).observe(seconds)
            self._tfs.load_latency[path] = self._tfs.load_latency.get(path, 0) + seconds * 1e6
        else:
            self.load_failures.labels(model, str(version)).inc()

    def observe_batch(self, *, model: str, version: int, pool: str, size: int, task_sizes: list[int],
                      queued_s: list[float]) -> None:
        key = (model, version, pool)
        children = self._batch_children.get(key)
        if children is None:  # labels() once per version and pool, not three times per batch and task
            children = self._batch_children[key] = (
                self.batch_size.labels(model, str(version)), self.batch_queueing.labels(model, str(version)),
                self.tfs_queuing_latency.labels(pool))
        batch_size, queueing, tfs_queuing = children
        batch_size.observe(size)
        self.tfs_processed_batch_size.observe(size)
        input_size = self.tfs_input_batch_size
        for n in task_sizes:
            input_size.observe(n)
        for seconds in queued_s:
            queueing.observe(seconds * 1e6)
            tfs_queuing.observe(seconds * 1e6)

    # The service's events (core.service.ServiceEvents), as they happen.

    def forget_version(self, model: str, version: int, path: str) -> None:
        """Drop a version's series once the server no longer knows the version, so that a server swapping
        versions for months does not export (and keep) every version it ever served."""
        v = str(version)
        # Front ends report their requests in batches: one for this version may arrive after this, and must not
        # bring its series back (a server swapping versions all day would export every version it served).
        self._gone[(model, v)] = None
        while len(self._gone) > _GONE_KEPT:
            self._gone.pop(next(iter(self._gone)))
        # (called from the lifecycle's thread while the event loop adds keys: list() copies atomically)
        for key in [k for k in list(self._request_children) if k[0] == model and k[1] == v]:
            self._request_children.pop(key, None)
            self.request_count.remove(*key)
            self.request_latency.remove(*key)
        for metric in (self.load_time, self.load_failures, self.batch_size, self.batch_queueing,
                       self.canary_rollbacks):
            try:
                metric.remove(model, v)
            except KeyError:  # never observed for this version
                pass
        # After the removals: a batch finishing meanwhile either feeds a child removed with its series or (the
        # cache entry gone) makes a fresh one, never keeps a removed child cached for a reloaded version.
        for key in [k for k in list(self._batch_children) if k[0] == model and k[1] == version]:
            self._batch_children.pop(key, None)
        for status in ("success", "fail"):
            self._tfs.load_attempts.pop((path, status), None)
        self._tfs.load_latency.pop(path, None)

    def on_runtime(self, model: str, api: str, seconds: float) -> None:
        self.observe_runtime(model=model, api=api, seconds=seconds)

    def on_rollback(self, model: str, arm: str) -> None:
        self.canary_rollbacks.labels(model, arm).inc()

    def on_shadow_dropped(self, model: str) -> None:
        self.shadow_dropped.labels(model).inc()

    def set_gauges(self, gauges: Gauges) -> None:
        """Replace the gauges read from live state (before a scrape)."""
        self.model_state.clear()
        for model, version, state in gauges.states:
            self.model_state.labels(model, str(version), state).set(1)
        self.queue_length.clear()
        for model, version, length in gauges.queue_lengths:
            self.queue_length.labels(model, str(version)).set(length)
        for model, arm, weight in gauges.canary_weights:
            self.canary_weight.labels(model, arm).set(weight)

    def on_collect(self, hook: Callable[[], None]) -> None:
        """Run `hook` before every scrape (to refresh gauges read from live objects: states, queue lengths)."""
        self._collect_hooks.append(hook)

