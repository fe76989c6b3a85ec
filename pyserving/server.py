"""The composition root: options -> manager and lifecycle -> control and data planes -> transports. It names the
concrete classes of every layer and owns start-up and shutdown order and the signals; it holds no policy.

One process, one asyncio loop for every listener; model code runs in a thread pool. Shutdown: report not ready
(/readyz 503, gRPC health NOT_SERVING) -> keep serving for --drain_delay_s -> stop accepting -> drain in-flight
requests -> unload models -> close request logs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import signal
import socket
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp

from pyserving.config.auth_config import load_auth_config_file
from pyserving.config.batching_config import batching_for_version
from pyserving.config.model_config import load_model_config_file, parse_model_server_config
from pyserving.core.batching import BatcherFactory
from pyserving.core.control import ControlPlane
from pyserving.core.ids import ServableId
from pyserving.core.lifecycle import ModelLifecycle
from pyserving.core.manager import ModelManager
from pyserving.core.service import InferenceService
from pyserving.errors import Code, ServingError, StartupError
from pyserving.frontends.grpc.inference_service import InferenceServicer
from pyserving.frontends.grpc.model_service import ModelServicer
from pyserving.frontends.grpc.prediction_service import PredictionServicer
from pyserving.frontends.grpc.server import GrpcListener
from pyserving.frontends.rest.auth import AuthMiddleware
from pyserving.frontends.rest.app import V1_PATH, HealthEndpoints, RestRouter, metrics_app
from pyserving.frontends.rest.oip_v2 import V2_PATH, OipV2
from pyserving.frontends.rest.openapi import OpenApiEndpoint
from pyserving.frontends.rest.server import RestListener
from pyserving.frontends.rest.tfserving_v1 import CORS_HEADERS, TfServingV1
from pyserving.ipc.model_side import FrontendSupervisor, ModelEndpoint, ModelProcessRecords, SnapshotSource
from pyserving.ipc.ports import reuse_port_socket
from pyserving.observability.gpu import add_gpu_metrics
from pyserving.observability.metrics import Metrics
from pyserving.observability.request_log import RequestLoggers
from pyserving.observability.requests import RequestObserver
from pyserving.options import BatchingOptions, ModelConfig, ServerOptions
from pyserving.runtimes.registry import get_runtime, prepare_runtime
from pyserving.security.auth import AuthConfigWatcher, Authenticator
from pyserving.security.tls import server_ssl_context

__all__ = ["Server", "StartupError", "serve"]

log = logging.getLogger("pyserving.server")
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


class Server:
    """A running pyserving instance. `start()` then `wait()`; `stop()` from the same loop (or a signal).

    Threads: the event loop serves every listener; `pyserving-model` threads run model code; one
    `pyserving-control` thread runs every load, unload, poll and reload, one at a time.
    """

    def __init__(self, options: ServerOptions) -> None:
        if options.frontend_processes < 0:  # the command line's "one per core", asked for in code
            from pyserving.config.cpus import default_frontend_processes

            options = dataclasses.replace(options, frontend_processes=default_frontend_processes())
        self.options = options
        self._serving = False
        """start() has finished: everything listens."""
        workers = options.num_worker_threads or max(4, 2 * (os.cpu_count() or 1))
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pyserving-model")
        self._loop: asyncio.AbstractEventLoop | None = None
        self.metrics = Metrics()
        self.request_loggers = RequestLoggers()
        self.observer = RequestObserver(self.metrics, self.request_loggers)
        batchers = BatcherFactory(
            self._batching_for, options.batching, self._executor, lambda: self._loop,
            on_batch=lambda model, version, pool, size, task_sizes, queued_s: self.metrics.observe_batch(
                model=model, version=version, pool=pool, size=size, task_sizes=task_sizes, queued_s=queued_s),
        )
        self.manager = ModelManager(
            options.models, options.runtime, get_runtime, options.lifecycle,
            attach_batcher=batchers, on_load=self._observe_load,
            on_forget=lambda sid, path: self.metrics.forget_version(sid.name, sid.version, path),
        )
        self.service = InferenceService(
            self.manager, self._executor, method_name_check=options.enable_signature_method_name_check,
            events=self.metrics,
        )
        config_file = options.lifecycle.model_config_file
        self.control = ControlPlane(
            self.manager, ModelLifecycle(self.manager, options.models, options.lifecycle), self.service.traffic,
            config_parser=lambda text: parse_model_server_config(text, source="HandleReloadConfigRequest"),
            config_loader=(lambda: load_model_config_file(config_file)) if config_file else None,
            config_file=config_file,
            on_models=self._follow_models,
        )
        self.metrics.on_collect(lambda: self.metrics.set_gauges(self.control.gauges()))
        add_gpu_metrics(self.metrics)
        self.authenticator: Authenticator | None = None
        self._auth_watcher: AuthConfigWatcher | None = None
        if options.auth_config_file:
            self.authenticator = Authenticator(load_auth_config_file(options.auth_config_file))
            self._auth_watcher = AuthConfigWatcher(options.auth_config_file, load_auth_config_file,
                                                   self.authenticator, options.auth_poll_seconds,
                                                   on_change=self._auth_changed)
        self._grpc: GrpcListener | None = None
        self._rest: RestListener | None = None
        self._metrics_listener: RestListener | None = None
        self._stopped = asyncio.Event()
        self._stopping = False
        self.draining = ""
        """Why the server is shutting down, once it is ("" until then): /readyz answers 503 with it."""
        self.grpc_port: int | None = None
        self.rest_port: int | None = None
        self._frontends: FrontendSupervisor | None = None
        self._reserved: list[socket.socket] = []

    # --- hooks handed to the layers -------------------------------------------------------------------------

    def _batching_for(self, model: ModelConfig, version_dir: str) -> BatchingOptions | None:
        """Control thread, at load: the version's batching parameters, per the precedence in config."""
        try:
            return batching_for_version(
                model, version_dir, global_options=self.options.batching,
                per_model_files=self.options.enable_per_model_batching_parameters,
            )
        except ValueError as exc:
            raise ServingError(Code.INVALID_ARGUMENT, str(exc)) from None

    def _auth_changed(self) -> None:
        if self._frontends is not None:
            self._frontends.broadcast("auth")  # they re-read the file now, together

    def _ready(self) -> bool:
        """Ready for traffic, as /readyz and the V2 ready endpoints say: not draining, every model AVAILABLE."""
        return not self.draining and not self.control.unready_models()

    def _observe_load(self, version: ServableId, path: str, seconds: float, ok: bool) -> None:
        self.metrics.observe_load(model=version.name, version=version.version, path=path, seconds=seconds, ok=ok)

    async def _follow_models(self, models: Sequence[ModelConfig]) -> None:
        """Request loggers follow the model list; retired ones are closed off the event loop (closing flushes)."""
        for logger in self.request_loggers.update(models):
            await asyncio.to_thread(logger.close)

    # --- start and stop -------------------------------------------------------------------------------------

    _reuse_port = False
    """Front-end processes bind the REST port with SO_REUSEPORT (gRPC sets it by default)."""

    def _metrics_app(self) -> ASGIApp:
        return metrics_app(self.metrics.registry)

    def _build_listeners(self, *, transports: bool = True) -> None:
        """The REST and gRPC listeners (unless not `transports`: the model process under front-end processes)
        and the metrics port's."""
        opts = self.options
        ssl_context = server_ssl_context(opts.tls) if opts.tls is not None else None
        auth = self.authenticator
        if transports and (opts.grpc_port or opts.grpc_socket_path):
            self._grpc = GrpcListener(
                PredictionServicer(self.service, tensor_content=opts.enable_serialization_as_tensor_content,
                                   observer=self.observer, max_decoded_bytes=opts.max_request_bytes or None),
                ModelServicer(self.service, self.control, self.observer),
                host=opts.host, port=opts.grpc_port, socket_path=opts.grpc_socket_path,
                options=[("grpc.max_receive_message_length",
                          min(opts.grpc_max_message_bytes, opts.max_request_bytes or opts.grpc_max_message_bytes)),
                         ("grpc.max_send_message_length", opts.grpc_max_message_bytes),
                         ("grpc.max_metadata_size", opts.http.max_header_bytes),
                         *([("grpc.max_connection_idle_ms", int(opts.http.keepalive_timeout_s * 1000))]
                           if opts.http.keepalive_timeout_s else []),
                         *opts.grpc_channel_arguments],
                health=opts.enable_grpc_healthcheck_service, tls=opts.tls, authenticator=auth,
                inference=InferenceServicer(self.service, self.control, ready=self._ready, observer=self.observer),
            )
        # TF Serving's CORS is a fixed `*`; a list of origins goes to starlette's CORS middleware instead.
        cors = CORS_HEADERS if opts.rest_api_enable_cors_support and not opts.cors_allowed_origins else {}
        metrics = self._metrics_app()
        if transports and opts.rest_api_port:
            if opts.rest_api_port == opts.grpc_port:
                raise StartupError(f"--rest_api_port={opts.rest_api_port} is the same as the gRPC --port; give "
                                   "them different ports.")
            v1 = TfServingV1(self.service, self.control, timeout_ms=opts.rest_api_timeout_ms, cors_headers=cors,
                             observer=self.observer, max_request_bytes=opts.max_request_bytes)
            health = HealthEndpoints(self.control, cors, draining=lambda: self.draining)
            exact = {**health.routes(), **OpenApiEndpoint(cors).routes()}
            if opts.monitoring_path:
                exact[opts.monitoring_path] = metrics
            v2 = OipV2(self.service, self.control, ready=self._ready, timeout_ms=opts.rest_api_timeout_ms,
                       extra_headers=cors, observer=self.observer, max_request_bytes=opts.max_request_bytes)
            app: ASGIApp = RestRouter(exact=exact, patterns=[(V1_PATH, v1.handle), (V2_PATH, v2.handle)])
            if auth is not None:
                app = AuthMiddleware(app, auth, metrics_path=opts.monitoring_path)
            if opts.cors_allowed_origins:
                app = CORSMiddleware(app, allow_origins=list(opts.cors_allowed_origins), allow_methods=["GET", "POST"],
                                     allow_headers=["Content-Type", "Authorization", "X-API-Key"])
            self._rest = RestListener(
                app, host=opts.host, port=opts.rest_api_port, what="REST", flag="--rest_api_port",
                grace_s=opts.shutdown_grace_s, announce="Exporting HTTP/REST API at %s:%s", ssl_context=ssl_context,
                limits=opts.http, reuse_port=self._reuse_port,
            )
        if opts.metrics_port:
            # Like prometheus_client's own server (and TF Serving's users' scrape configs): metrics on any path.
            metrics_only: ASGIApp = RestRouter(fallback=metrics)
            if auth is not None:
                metrics_only = AuthMiddleware(metrics_only, auth, metrics_only=True)
            self._metrics_listener = RestListener(
                metrics_only, host=opts.host, port=opts.metrics_port, what="metrics",
                flag="--metrics_port", announce="Exporting Prometheus metrics at %s:%s/metrics", ssl_context=ssl_context,
                limits=opts.http,
            )

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        # Said first: front ends answer as soon as each listens, before the rest of start-up is done.
        if self._auth_watcher is None and self.options.host not in _LOOPBACK:
            log.warning("No --auth_config_file: anyone who can reach %s may call every model and reload the "
                        "configuration. Give an --auth_config_file (API keys or JWT) or bind --host=127.0.0.1.",
                        self.options.host)
        try:
            for platform in sorted({m.platform for m in self.options.models}):
                await asyncio.to_thread(prepare_runtime, platform)
        except ServingError as exc:
            raise StartupError(exc.message) from None
        # What is imported by now lives as long as the server (TensorFlow: ~300k objects): keep the cyclic GC from
        # rescanning it on every collection (measured: 2.8x on REST image requests, see PERFORMANCE.md). Models are
        # loaded after the freeze, so that an unloaded version's graph can still be collected (frozen, the first
        # version's graph stayed for good).
        gc.collect()
        gc.freeze()
        try:
            await self.control.load_initial()
        except ServingError as exc:
            raise StartupError(exc.message) from None
        self._build_listeners(transports=not self.options.frontend_processes)
        for listener in (self._grpc, self._rest, self._metrics_listener):
            if listener is not None:
                await listener.start()
        if self.options.frontend_processes:
            await self._start_frontends()
        if self._auth_watcher is not None:
            self._auth_watcher.start()
        if not self.options.frontend_processes:
            self.grpc_port = self._grpc.port if self._grpc is not None else None
            self.rest_port = self._rest.port if self._rest is not None else None
        self._announce_available()
        self._serving = True
        lifecycle = self.options.lifecycle
        self.control.start_polling(lifecycle.file_system_poll_wait_seconds,
                                   lifecycle.model_config_file_poll_wait_seconds)

    def _announce_available(self) -> None:
        """Start-up's last lines: each AVAILABLE model version and where to send its requests, so the first
        screen ends with what a newcomer needs (and not with a framework's notice)."""
        opts = self.options
        # A wildcard address is not one to send requests to; from this machine, localhost reaches it.
        host = "localhost" if opts.host in ("", "0.0.0.0", "::") else opts.host
        host = f"[{host}]" if ":" in host else host
        scheme = "https" if opts.tls is not None else "http"
        grpc = [f"{host}:{self.grpc_port}"] if self.grpc_port else []
        if opts.grpc_socket_path:
            grpc.append(f"unix:{opts.grpc_socket_path}")
        for info in self.control.models():
            for status in sorted(info.versions, key=lambda s: s.version):
                if status.state.name != "AVAILABLE":
                    continue
                where = []
                if self.rest_port:
                    where.append(f"REST {scheme}://{host}:{self.rest_port}/v1/models/{info.name}:predict")
                if grpc:
                    where.append(f"gRPC {' or '.join(grpc)}")
                log.info("%s version %d AVAILABLE: %s", info.name, status.version, ", ".join(where))
        endpoints = [f"REST {scheme}://{host}:{self.rest_port}"] if self.rest_port else []
        endpoints += [f"gRPC {g}" for g in grpc]
        if self._metrics_listener is not None:
            endpoints.append(f"metrics {scheme}://{host}:{self._metrics_listener.port}/metrics")
        elif opts.monitoring_path and self.rest_port:
            endpoints.append(f"metrics {scheme}://{host}:{self.rest_port}{opts.monitoring_path}")
        log.info("pyserving is serving: %s", ", ".join(endpoints))

    async def _start_frontends(self) -> None:
        """--frontend_processes=N: this process keeps the models; N front-end processes serve REST and gRPC on
        the same ports (SO_REUSEPORT) and call it over shared memory. The ports are reserved here first (bound,
        never listening: the kernel hands connections only to listening sockets), which also resolves port 0."""
        opts = self.options
        grpc_port = rest_port = 0
        if opts.grpc_port:
            self._reserved.append(reuse_port_socket(opts.host, opts.grpc_port, "gRPC", "--port", must_be_free=True))
            grpc_port = self._reserved[-1].getsockname()[1]
        if opts.rest_api_port:
            self._reserved.append(reuse_port_socket(opts.host, opts.rest_api_port, "REST", "--rest_api_port",
                                                     must_be_free=True))
            rest_port = self._reserved[-1].getsockname()[1]
        records = ModelProcessRecords(self.metrics, self.request_loggers, self.observer)
        self._frontends = FrontendSupervisor(
            opts, opts.frontend_processes, SnapshotSource(self.manager, self.control, lambda: self.draining,
                                                          records.logged),
            lambda: ModelEndpoint(self.service, self.control, records.observe, records.metrics_body,
                                  records.request_log),
            records.observe, grpc_port=grpc_port, rest_port=rest_port,
        )
        await self._frontends.start()
        self.grpc_port, self.rest_port = grpc_port or None, rest_port or None
        log.info("Serving REST and gRPC from %d front-end processes (pids %s) over this model process",
                 opts.frontend_processes, ", ".join(map(str, self._frontends.pids)))

    async def reload(self, models: Sequence[ModelConfig]) -> None:
        """Replace the model list (config reload); raises ServingError when a new model cannot be served."""
        await self.control.reload(models)

    async def wait(self) -> None:
        await self._stopped.wait()

    async def stop(self, reason: str = "the server is shutting down") -> None:
        """Report not ready and keep serving for the drain delay, then stop accepting, let in-flight requests
        finish (up to the grace period), then unload every model."""
        if self._stopping:  # return when the stop already under way is done
            await self._stopped.wait()
            return
        self._stopping = True
        # Readiness turns first, while the listeners still accept: a load balancer that polls /readyz (or gRPC
        # health) moves traffic away before connections are refused, instead of learning it from failures. gRPC
        # health goes first (it may yield to the loop) so that no client sees /readyz 503 with health SERVING.
        if self._grpc is not None:
            await self._grpc.drain()
        self.draining = reason
        if self._rest is not None:
            self._rest.drain()
        if self._frontends is not None:
            self._frontends.push_now()  # front ends turn not ready (health NOT_SERVING, Connection: close)
        # Never ready, no load balancer to wait for. Front ends answer (/readyz too) as soon as each listens, before
        # start-up is over: a signal then still gets its drain delay.
        answered = self._serving or (self._frontends is not None and self._frontends.answering)
        if self.options.drain_delay_s > 0 and answered:
            log.info("Draining: /readyz answers 503; closing the listeners in %g s (--drain_delay_s)",
                     self.options.drain_delay_s)
            await asyncio.sleep(self.options.drain_delay_s)
        grace = self.options.shutdown_grace_s
        waits = [asyncio.ensure_future(self._rest.stop())] if self._rest is not None else []
        if self._grpc is not None:
            waits.append(asyncio.ensure_future(self._grpc.stop(grace)))
        if self._frontends is not None:
            waits.append(asyncio.ensure_future(self._frontends.stop(grace)))
        if waits:
            await asyncio.wait(waits, timeout=grace + 5)
        for sock in self._reserved:
            sock.close()
        if self._metrics_listener is not None:  # scrapes see the drain through
            await self._metrics_listener.stop()
        if self._auth_watcher is not None:
            self._auth_watcher.stop()
        await self.control.stop()
        self._executor.shutdown(wait=False)
        self._stopped.set()


async def serve(options: ServerOptions) -> None:
    """Run until SIGINT or SIGTERM, then shut down gracefully. A signal during start-up cancels the start, then
    stops what it had opened (a model load already under way finishes first, on the control thread, and is then
    unloaded)."""
    server = Server(options)
    loop = asyncio.get_running_loop()
    starting = asyncio.ensure_future(server.start())
    signalled: list[str] = []

    def on_signal(signum: int) -> None:
        if signalled:
            log.warning("Second %s: exiting now", signal.Signals(signum).name)
            os._exit(1)
        name = signal.Signals(signum).name
        signalled.append(name)
        log.info("Received %s: shutting down", name)
        if not starting.done():
            starting.cancel()
        else:
            stopping.append(asyncio.ensure_future(server.stop(f"shutting down ({name})")))

    stopping: list[asyncio.Future[None]] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await starting
    except asyncio.CancelledError:
        if not signalled:
            raise
        await server.stop(f"shutting down ({signalled[0]})")
        return
    await server.wait()
