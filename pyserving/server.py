"""The composition root: builds manager, service and both front ends, and owns start-up and shutdown order.

One process, one asyncio loop for REST (uvicorn) and gRPC (grpc.aio); model code runs in a thread pool.
Shutdown: stop accepting -> drain in-flight requests -> unload models.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import grpc
import uvicorn
from prometheus_client import start_http_server

from pyserving.config.model_config import load_model_config_file, parse_model_server_config
from pyserving.config.batching_config import batching_for_version
from pyserving.core.batching import Batcher, BatchScheduler
from pyserving.core.ids import ServableId
from pyserving.core.lifecycle import ModelLifecycle
from pyserving.core.manager import ModelManager
from pyserving.core.service import InferenceService
from pyserving.errors import Code, ServingError
from pyserving.frontends.grpc.prediction_service import add_services
from pyserving.frontends.rest.app import RestApi
from pyserving.observability.gpu import add_gpu_metrics
from pyserving.observability.metrics import Metrics
from pyserving.observability.request_log import RequestLogger
from pyserving.observability.requests import RequestObserver
from pyserving.options import ModelConfig, ServerOptions
from pyserving.runtimes.base import Servable
from pyserving.runtimes.registry import get_runtime

log = logging.getLogger("pyserving.server")


class StartupError(RuntimeError):
    """The server could not start (a model failed to load, a port is taken); the message says what to fix."""


class _UvicornServer(uvicorn.Server):
    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        # Signals belong to Server: it must stop gRPC and REST together, in order.
        yield


class Server:
    """A running pyserving instance. `start()` then `wait()`; `stop()` from the same loop (or a signal).

    Threads: the event loop serves both front ends; `pyserving-model` threads run model code; one
    `pyserving-control` thread runs every load, unload, poll and reload, one at a time.
    """

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        workers = options.num_worker_threads or max(4, 2 * (os.cpu_count() or 1))
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pyserving-model")
        self._control = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pyserving-control")
        self._schedulers: dict[str, BatchScheduler] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.metrics = Metrics()
        self.observer = RequestObserver(self.metrics)
        self.manager = ModelManager(
            options.models, options.runtime, get_runtime, options.lifecycle,
            attach_batcher=self._attach_batcher, on_load=self._observe_load,
        )
        self.lifecycle = ModelLifecycle(self.manager, options.models, options.lifecycle)
        self.service = InferenceService(
            self.manager, self._executor, method_name_check=options.enable_signature_method_name_check,
            reloader=self.reload,
            on_runtime=lambda model, api, seconds: self.metrics.observe_runtime(model=model, api=api, seconds=seconds),
        )
        self.metrics.on_collect(self._refresh_gauges)
        add_gpu_metrics(self.metrics)
        self._metrics_http: object = None
        self._counted_rollbacks: set[tuple[str, str, int]] = set()
        self._logger_options: dict[str, object] = {}
        self._reported_drops: dict[tuple[str, int], int] = {}
        self._grpc: grpc.aio.Server | None = None
        self._rest: _UvicornServer | None = None
        self._rest_task: asyncio.Task[None] | None = None
        self._background: list[asyncio.Task[None]] = []
        self._stopped = asyncio.Event()
        self.grpc_port: int | None = None
        self.rest_port: int | None = None

    async def _control_call(self, fn: Callable[..., object], *args: object) -> object:
        return await asyncio.get_running_loop().run_in_executor(self._control, fn, *args)

    def _attach_batcher(self, model: ModelConfig, version_dir: str, servable: Servable) -> Batcher | None:
        """Control thread, at load: the version's batcher, per the precedence in config.batching_config."""
        try:
            batching = batching_for_version(
                model, version_dir, global_options=self.options.batching,
                per_model_files=self.options.enable_per_model_batching_parameters,
            )
        except ValueError as exc:
            raise ServingError(Code.INVALID_ARGUMENT, str(exc)) from None
        if batching is None:
            return None
        pool = self.options.batching or batching  # the shared pool's size comes from the global parameters
        name = batching.thread_pool_name if model.batching is not None else pool.thread_pool_name
        scheduler = self._schedulers.get(name)
        if scheduler is None:
            threads = (batching if model.batching is not None else pool).num_batch_threads
            scheduler = self._schedulers[name] = BatchScheduler(threads, self._executor)
        log.info("Batching %s from %s: %s", model.name, version_dir, batching)
        version = int(os.path.basename(version_dir.rstrip("/")))

        def on_batch(size: int, task_sizes: list[int], queued_s: list[float]) -> None:
            self.metrics.observe_batch(model=model.name, version=version, pool=name, size=size,
                                       task_sizes=task_sizes, queued_s=queued_s)

        return Batcher(servable.run, batching, scheduler, self._loop, on_batch)

    def _observe_load(self, version: ServableId, path: str, seconds: float, ok: bool) -> None:
        self.metrics.observe_load(model=version.name, version=version.version, path=path, seconds=seconds, ok=ok)

    def _refresh_gauges(self) -> None:
        """Before a scrape: gauges read from live state (version states, queue lengths, canary weights)."""
        m = self.metrics
        m.model_state.clear()
        for name in self.manager.model_names():
            try:
                statuses = self.manager.status(name)
            except ServingError:
                continue
            for status in statuses:
                m.model_state.labels(name, str(status.version), status.state.name).set(1)
        m.queue_length.clear()
        for sid, batcher in self.manager.batchers():
            m.queue_length.labels(sid.name, str(sid.version)).set(batcher.queue_length)
        for name, controller in self.service.traffic_controllers():
            for arm, weight in controller.weights.items():
                m.canary_weight.labels(name, str(arm)).set(weight)
            for arm in controller.rolled_back:
                key = (name, str(arm), id(controller))  # each rollback of each split counted once
                if key not in self._counted_rollbacks:
                    self._counted_rollbacks.add(key)
                    m.canary_rollbacks.labels(name, str(arm)).inc()
            key_drops = (name, id(controller))
            new_drops = controller.shadow_dropped - self._reported_drops.get(key_drops, 0)
            if new_drops > 0:
                self._reported_drops[key_drops] = controller.shadow_dropped
                m.shadow_dropped.labels(name).inc(new_drops)

    def _update_request_loggers(self, models: Sequence[ModelConfig]) -> list[RequestLogger]:
        """Loggers for the models with a logging_config: unchanged ones kept, the others replaced. Returns the
        loggers to close (off the event loop: closing flushes files)."""
        current = self.observer.request_loggers
        wanted = {m.name: m.logging for m in models if m.logging is not None and m.logging.sampling_rate > 0}
        loggers: dict[str, RequestLogger] = {}
        for name, logging_options in wanted.items():
            old = current.get(name)
            if old is not None and self._logger_options.get(name) == logging_options:
                loggers[name] = old
            else:
                loggers[name] = RequestLogger(name, logging_options)
                self._logger_options[name] = logging_options
        retired = [logger for name, logger in current.items() if loggers.get(name) is not logger]
        self.observer.request_loggers = loggers
        return retired

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._update_request_loggers(self.options.models)
        names = [m.name for m in self.options.models]
        try:
            await self._control_call(self.lifecycle.check, self.options.models)
            await self._control_call(self.lifecycle.load_until_settled, names)
        except ServingError as exc:
            await self._control_call(self.manager.unload_all)
            raise StartupError(exc.message) from None
        unavailable = self.manager.unavailable_models()
        if unavailable:
            await self._control_call(self.manager.unload_all)
            details = "; ".join(f"{name}: {why}" for name, why in sorted(unavailable.items()))
            raise StartupError(f"{len(unavailable)} servable(s) did not become available: {details}")
        # Everything allocated so far lives as long as the server: keep the cyclic GC from rescanning it on every
        # collection (measured: 2.8x on REST image requests, see PERFORMANCE.md).
        gc.collect()
        gc.freeze()
        await self._start_grpc()
        await self._start_rest()
        if self.options.metrics_port:
            try:
                server, _thread = start_http_server(
                    self.options.metrics_port, addr=self.options.host, registry=self.metrics.registry
                )
            except OSError as exc:
                raise StartupError(f"Cannot serve metrics on {self.options.host}:{self.options.metrics_port}: "
                                   f"{exc}. Pick another --metrics_port.") from None
            self._metrics_http = server
            log.info("Exporting Prometheus metrics at %s:%s/metrics", self.options.host, self.options.metrics_port)
        lifecycle = self.options.lifecycle
        if lifecycle.file_system_poll_wait_seconds > 0:
            self._background.append(asyncio.create_task(self._poll_versions(lifecycle.file_system_poll_wait_seconds)))
        if lifecycle.model_config_file and lifecycle.model_config_file_poll_wait_seconds > 0:
            self._background.append(asyncio.create_task(
                self._poll_config(lifecycle.model_config_file, lifecycle.model_config_file_poll_wait_seconds)
            ))

    async def _poll_versions(self, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                await self._control_call(self.lifecycle.poll_once)
            except Exception:  # a poll must never end polling
                log.exception("File-system poll failed")

    async def _poll_config(self, path: str, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                models = await self._control_call(load_model_config_file, path)
            except Exception as exc:
                log.error("Ignoring %s: %s. The current configuration keeps serving.", path, exc)
                continue
            if tuple(models) == self.lifecycle.models:  # type: ignore[arg-type]
                continue
            try:
                await self.reload(models)  # type: ignore[arg-type]
                log.info("Reloaded the model configuration from %s", path)
            except ServingError as exc:
                log.error("Reloading %s failed: %s", path, exc.message)

    async def reload(self, models: Sequence[ModelConfig]) -> None:
        """Replace the model list (config reload); raises ServingError when a new model cannot be served."""
        await self._control_call(self.lifecycle.reload, tuple(models))
        for logger in self._update_request_loggers(models):
            await asyncio.to_thread(logger.close)

    async def _start_grpc(self) -> None:
        opts = self.options
        if opts.grpc_port == 0 and not opts.grpc_socket_path:
            return
        channel_options = [
            ("grpc.max_receive_message_length", opts.grpc_max_message_bytes),
            ("grpc.max_send_message_length", opts.grpc_max_message_bytes),
            *opts.grpc_channel_arguments,
        ]
        server = grpc.aio.server(options=channel_options)
        await add_services(
            server, self.service, tensor_content=opts.enable_serialization_as_tensor_content,
            health=opts.enable_grpc_healthcheck_service, config_parser=self._config_parser(),
            observer=self.observer,
        )
        if opts.grpc_port:
            address = f"{opts.host}:{opts.grpc_port}"
            try:
                self.grpc_port = server.add_insecure_port(address)
            except RuntimeError as exc:
                raise StartupError(f"Cannot listen for gRPC on {address}: {exc}. Is the port in use? Pick another "
                                   "with --port.") from None
        if opts.grpc_socket_path:
            server.add_insecure_port(f"unix:{opts.grpc_socket_path}")
        await server.start()
        self._grpc = server
        log.info("Running gRPC ModelServer at %s:%s%s", opts.host, self.grpc_port,
                 f" and unix:{opts.grpc_socket_path}" if opts.grpc_socket_path else "")

    async def _start_rest(self) -> None:
        opts = self.options
        if opts.rest_api_port == 0:
            return
        if opts.rest_api_port == opts.grpc_port:
            raise StartupError(
                f"--rest_api_port={opts.rest_api_port} is the same as the gRPC --port; give them different ports."
            )
        app = RestApi(
            self.service, timeout_ms=opts.rest_api_timeout_ms, enable_cors=opts.rest_api_enable_cors_support,
            observer=self.observer, metrics_path=opts.monitoring_path,
        )
        config = uvicorn.Config(
            app, host=opts.host, port=opts.rest_api_port, log_level="warning", lifespan="off",
            access_log=False, timeout_graceful_shutdown=int(opts.shutdown_grace_s) or None,
            # httptools parses HTTP in C (h11, the pure-Python fallback, cost ~15% of a small predict); nothing
            # is proxied in front of us unless the user says so, so skip the X-Forwarded-* rewriting.
            http="httptools", proxy_headers=False,
        )
        rest = _UvicornServer(config)
        self._rest = rest
        self._rest_task = asyncio.create_task(rest.serve())
        while not rest.started:
            if self._rest_task.done():
                # uvicorn reports bind errors by logging and exiting (SystemExit) instead of raising.
                exc = self._rest_task.exception() if not self._rest_task.cancelled() else None
                raise StartupError(
                    f"Cannot serve REST on {opts.host}:{opts.rest_api_port} ({exc!r}). Is the port in use? Pick "
                    "another with --rest_api_port."
                )
            await asyncio.sleep(0.01)
        self.rest_port = rest.servers[0].sockets[0].getsockname()[1] if rest.servers else opts.rest_api_port
        log.info("Exporting HTTP/REST API at %s:%s", opts.host, self.rest_port)

    @staticmethod
    def _config_parser() -> Callable[[str], Sequence[ModelConfig]]:
        """Text of a ModelServerConfig -> models, for HandleReloadConfigRequest."""
        return lambda text: parse_model_server_config(text, source="HandleReloadConfigRequest")

    async def wait(self) -> None:
        await self._stopped.wait()

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (up to the grace period), then unload every model."""
        if self._stopped.is_set():
            return
        grace = self.options.shutdown_grace_s
        waits = []
        if self._rest is not None:
            self._rest.should_exit = True
            if self._rest_task is not None:
                waits.append(self._rest_task)
        if self._grpc is not None:
            waits.append(asyncio.ensure_future(self._grpc.stop(grace)))
        if waits:
            await asyncio.wait(waits, timeout=grace + 5)
        for task in self._background:
            task.cancel()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()  # type: ignore[attr-defined]
        await self._control_call(self.manager.unload_all)
        for logger in self._update_request_loggers(()):
            await asyncio.to_thread(logger.close)
        self._executor.shutdown(wait=False)
        self._control.shutdown(wait=False)
        self._stopped.set()


async def serve(options: ServerOptions) -> None:
    """Run until SIGINT or SIGTERM, then shut down gracefully."""
    server = Server(options)
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []

    def on_signal(signum: int) -> None:
        if stopping:
            log.warning("Second %s: exiting now", signal.Signals(signum).name)
            os._exit(1)
        log.info("Received %s: shutting down", signal.Signals(signum).name)
        stopping.append(asyncio.ensure_future(server.stop()))

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    await server.start()
    await server.wait()
