"""The model process's side: it spawns the front-end processes, answers their calls with the one
InferenceService, pushes them the model snapshot, and restarts one that dies.

Each front end gets a socketpair and two memfd arenas (one per direction) through `pass_fds`; nothing is named
on the file system, and memory goes when both sides have let go. Front ends are started as
`python -m pyserving.frontends.worker` (a fresh interpreter: never a fork of a process that imported TensorFlow)
and read their ServerOptions from stdin.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from prometheus_client.exposition import choose_encoder

from pyserving.core.control import ControlPlane
from pyserving.core.ids import ServableId, ServableRequest
from pyserving.core.manager import ModelManager
from pyserving.core.service import (
    Classifications,
    ExamplesRequest,
    InferenceService,
    InferenceTask,
    MultiInferenceRequest,
    PredictRequest,
    Route,
)
from pyserving.errors import Code, ServingError, StartupError
from pyserving.ipc.arena import Arena, new_memfd
from pyserving.ipc.buckets import new_bucket_table
from pyserving.ipc.channel import Channel, Payload
from pyserving.ipc.results import decode_results, encode_classes
from pyserving.ipc.state import signature_data, status_data
from pyserving.observability.metrics import Metrics
from pyserving.observability.request_log import LoggedRequest, RequestLoggers
from pyserving.observability.requests import RequestObserver
from pyserving.options import ServerOptions

log = logging.getLogger("pyserving.frontends")

ARENA_BYTES = 1 << 30
"""Address space per arena (per front end, per direction); only the pages a request touches are backed."""
SNAPSHOT_EVERY_S = 0.1
RESTART_BACKOFF_S = (0.5, 1, 2, 5, 10)
HEALTHY_AFTER_S = 30.0
"""A front end that stayed up this long starts its restart backoff over."""
FRONTEND_ENV_DEFAULTS = {"MALLOC_ARENA_MAX": "2"}
"""glibc gives each thread that allocates its own heap (up to 8 per core); gRPC's event-engine threads then leave
freed message buffers scattered over heaps that `malloc_trim` cannot give back. Ten refused 257 MiB gRPC messages
left a front end at 156-173 MiB with the default, 101-115 with two heaps. A front end's Python runs on one thread
anyway. The operator's own environment wins."""


class ModelEndpoint:
    """Answers one front end's calls with the model process's service and control plane."""

    def __init__(self, service: InferenceService, control: ControlPlane, observe: Callable[[dict[str, Any]], None],
                 metrics_body: Callable[[str], tuple[bytes, str]],
                 request_log: Callable[[dict[str, Any], Channel, memoryview], None] | None = None) -> None:
        """`request_log(header, channel, payload)` writes a front end's request to its model's request log."""
        self._request_log = request_log
        self._service = service
        self._control = control
        self._observe = observe
        self._metrics_body = metrics_body
        self.channel: Channel | None = None
        self.after_reload: Callable[[], None] | None = None
        self.in_flight = {"rest": 0, "grpc": 0}
        """This front end's requests in flight as the model process counted them (taken back if it dies)."""

    def on_push(self, header: dict[str, Any], payload: memoryview) -> None:
        if header.get("op") == "obs":
            for protocol, delta in header["d"].items():
                self.in_flight[protocol] = self.in_flight.get(protocol, 0) + delta
            self._observe(header)
        elif header.get("op") == "log" and self._request_log is not None and self.channel is not None:
            self._request_log(header, self.channel, payload)

    async def handle(self, h: dict[str, Any], payload: memoryview) -> tuple[dict[str, Any], Payload]:
        ch = self.channel
        assert ch is not None
        op = h["op"]
        model = ServableRequest(*h["m"]) if "m" in h else None
        out: Payload = []
        if op == "predict":
            route = Route(ServableId(h["r"][0], h["r"][1]), h["r"][2]) if h.get("r") else None
            result = await self._service.predict(PredictRequest(
                model=model, inputs=ch.decode_tensors(h["t"], payload), signature_name=h["s"],  # type: ignore[arg-type]
                output_filter=h["o"], timeout_s=h["to"], headers=h["h"], route=route,
            ))
            return {"v": result.servable.version, "s": result.signature_name,
                    "t": ch.encode_tensors(result.outputs, out)}, out
        if op in ("classify", "regress", "multi"):
            examples = list(ch.decode_tensors(h["t"], payload)["x"].reshape(-1))
            if op == "multi":
                multi = await self._service.multi_inference(MultiInferenceRequest(
                    model=model, tasks=[InferenceTask(s, m) for s, m in h["k"]],  # type: ignore[arg-type]
                    examples=examples, timeout_s=h["to"], headers=h["h"]))
                answers = []
                for answer in multi.results:
                    if isinstance(answer, Classifications):
                        answers.append(["c", answer.signature_name, encode_classes(ch, answer.classes, out)])
                    else:
                        answers.append(["r", answer.signature_name, answer.values])
                return {"v": multi.servable.version, "a": answers}, out
            request = ExamplesRequest(model=model, examples=examples, signature_name=h["s"],  # type: ignore[arg-type]
                                      timeout_s=h["to"], headers=h["h"])
            if op == "classify":
                c = await self._service.classify(request)
                return {"v": c.servable.version, "s": c.signature_name, "c": encode_classes(ch, c.classes, out)}, out
            r = await self._service.regress(request)
            return {"v": r.servable.version, "s": r.signature_name, "r": r.values}, out
        if op == "reload":
            try:
                await self._control.reload_text(h["text"])
            finally:
                # Every front end hears the new model list before the caller hears the reload is done.
                if self.after_reload is not None:
                    self.after_reload()
            return {}, out
        if op == "repo_index":
            models = [[m.name, [status_data(v) for v in m.versions], m.unloaded, m.why_unavailable]
                      for m in await self._control.repository()]
            return {"models": models}, out
        if op in ("repo_load", "repo_unload"):
            try:
                if op == "repo_load":
                    await self._control.load_model(h["name"], h["to"])
                else:
                    await self._control.unload_model(h["name"])
            finally:
                # as after a reload: every front end sees the model's new state before the caller hears back
                if self.after_reload is not None:
                    self.after_reload()
            return {}, out
        if op == "metrics":
            body, content_type = self._metrics_body(h["accept"])
            return {"ct": content_type}, [body]
        raise ServingError(Code.UNIMPLEMENTED, f"Unknown IPC operation {op!r}")


class SnapshotSource:
    """Builds the snapshot front ends answer from; signatures are read once per loaded version."""

    def __init__(self, manager: ModelManager, control: ControlPlane, draining: Callable[[], str],
                 logged: Callable[[str], bool] = lambda name: False) -> None:
        """`logged(name)`: whether the model has a request log (front ends then send their requests' payloads)."""
        self._logged = logged
        self._manager = manager
        self._control = control
        self._draining = draining
        self._signatures: dict[ServableId, dict[str, Any]] = {}

    def _sigs(self, sid: ServableId) -> dict[str, Any] | None:
        cached = self._signatures.get(sid)
        if cached is None:
            try:
                with self._manager.lease(ServableRequest(sid.name, sid.version)) as lease:
                    cached = {n: signature_data(s) for n, s in lease.servable.signatures.items()}
            except ServingError:  # unloaded since the status was read
                return None
            self._signatures[sid] = cached
        return cached

    def build(self) -> bytes:
        models: dict[str, Any] = {}
        live: set[ServableId] = set()
        for info in self._control.models():
            sigs = {}
            for status in info.versions:
                if status.state.name == "AVAILABLE":
                    sid = ServableId(info.name, status.version)
                    data = self._sigs(sid)
                    if data is not None:
                        sigs[str(status.version)] = data
                        live.add(sid)
            models[info.name] = {
                "platform": self._control.platform(info.name), "versions": [status_data(s) for s in info.versions],
                "labels": info.labels, "split": info.traffic_split, "has_split": info.traffic_split is not None,
                "sigs": sigs,
            }
        for sid in [s for s in self._signatures if s not in live]:
            del self._signatures[sid]
        return orjson.dumps({"models": models, "unready": self._control.unready_models(),
                             "draining": self._draining(), "logged": [n for n in models if self._logged(n)]})


class ModelProcessRecords:
    """What front ends report, recorded in the model process: request counts and latencies (one registry: a scrape
    counts every front end's requests once), request logs (one writer per file), and the metrics exposition."""

    def __init__(self, metrics: Metrics, loggers: RequestLoggers, observer: RequestObserver) -> None:
        self._metrics = metrics
        self._loggers = loggers
        self._observer = observer

    def observe(self, header: dict[str, Any]) -> None:
        for protocol, delta in header["d"].items():
            if delta:
                # the in-flight gauge reads the model process's observer through a function: counted there
                self._observer.in_flight_elsewhere(protocol, delta)
        if header["r"]:
            self._metrics.observe_requests(header["r"])

    def logged(self, model: str) -> bool:
        return self._loggers.get(model) is not None

    def request_log(self, h: dict[str, Any], channel: Channel, payload: memoryview) -> None:
        logger = self._loggers.get(h["model"])
        if logger is None:
            return
        tensors = {key: channel.decode_tensors(h[key], payload) if key in h else None
                   for key in ("inputs", "outputs", "examples")}
        examples = tensors["examples"]
        logger.log(LoggedRequest(
            model=h["model"], version=h["version"], signature=h["signature"], api=h["api"],
            inputs=tensors["inputs"], outputs=tensors["outputs"],
            examples=list(examples["x"].reshape(-1)) if examples is not None else None,
            results=decode_results(channel, h["api"], h["results"], payload) if "results" in h else None,
            latency_s=h["latency_s"], code=h["code"], protocol=h["protocol"], timestamp=h["timestamp"],
            request_id=h["request_id"], principal=h["principal"],
        ))

    def metrics_body(self, accept: str) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept)
        return encoder(self._metrics.registry), content_type


@dataclass
class _Slot:
    index: int
    process: asyncio.subprocess.Process | None = None
    channel: Channel | None = None
    endpoint: ModelEndpoint | None = None
    started: float = 0.0
    failures: int = 0
    sent: bytes = b""


class FrontendSupervisor:
    """Runs N front-end processes for the model process; see the module docstring."""

    def __init__(self, options: ServerOptions, count: int, snapshot: SnapshotSource,
                 endpoint: Callable[[], ModelEndpoint], observe: Callable[[dict[str, Any]], None], *,
                 grpc_port: int, rest_port: int) -> None:
        """`endpoint()` makes the answering side of a new front end's channel; `observe` takes request
        observations (and, when a front end dies, its in-flight requests back)."""
        self._observe_gone = observe
        self._options = options
        self._count = count
        self._snapshot = snapshot
        self._endpoint = endpoint
        self._grpc_port = grpc_port
        self._rest_port = rest_port
        self._slots = [_Slot(i) for i in range(count)]
        self._buckets_fd = new_bucket_table()  # one for the server's life: limits hold across front-end restarts
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._stop_task: asyncio.Future[None] | None = None
        self._state = b""

    @property
    def pids(self) -> list[int]:
        return [s.process.pid for s in self._slots if s.process is not None and s.process.returncode is None]

    @property
    def answering(self) -> bool:
        """Whether a front end has listened: from then on a load balancer may have seen the server ready."""
        return any(s.started for s in self._slots)

    async def start(self, timeout_s: float = 60) -> None:
        """Start every front end and return once each is listening (it says so on the channel); StartupError if
        one exits first or they take longer than `timeout_s`."""
        self._state = self._snapshot.build()
        self._tasks = [asyncio.create_task(self._keep(slot)) for slot in self._slots]
        self._tasks.append(asyncio.create_task(self._push_snapshots()))
        deadline = time.monotonic() + timeout_s
        while not all(s.started and s.channel is not None and s.sent for s in self._slots):
            failed = [s.index for s in self._slots if s.failures]
            if failed or time.monotonic() > deadline:
                await self.stop(0)
                raise StartupError(
                    f"Front-end process {failed[0]} exited while starting; its log lines above say why."
                    if failed else f"The {self._count} front-end processes did not start within {timeout_s:g} s.")
            await asyncio.sleep(0.05)

    async def _spawn(self, slot: _Slot) -> asyncio.subprocess.Process:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        to_front = new_memfd(ARENA_BYTES, "pyserving-to-frontend")
        to_model = new_memfd(ARENA_BYTES, "pyserving-to-model")
        # Each side maps both arenas: the model process writes answers into to_front and reads to_model.
        fds = (theirs.fileno(), to_model, to_front, self._buckets_fd)
        try:
            out_arena, in_arena = Arena(os.dup(to_front)), Arena(os.dup(to_model))
        except BaseException:
            for fd in (to_front, to_model):
                os.close(fd)
            ours.close()
            theirs.close()
            raise
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "pyserving.frontends.worker", f"--index={slot.index}",
                f"--fds={','.join(map(str, fds))}", f"--grpc_port={self._grpc_port}",
                f"--rest_port={self._rest_port}", stdin=asyncio.subprocess.PIPE, pass_fds=fds,
                env={**FRONTEND_ENV_DEFAULTS, **os.environ,
                     "PYSERVING_VERBOSITY": logging.getLevelName(logging.getLogger().getEffectiveLevel())},
            )
        except BaseException:
            ours.close()
            out_arena.map.close()
            in_arena.map.close()
            raise
        finally:
            theirs.close()
            os.close(to_model)
            os.close(to_front)
        assert process.stdin is not None
        process.stdin.write(pickle.dumps(self._options))  # plain frozen dataclasses, over a private pipe
        process.stdin.close()
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        endpoint = slot.endpoint = self._endpoint()
        endpoint.after_reload = self.push_now
        slot.channel = endpoint.channel = Channel(reader, writer, out_arena, in_arena, handler=endpoint.handle,
                                                  on_push=self._started_or(slot, endpoint))
        slot.sent = b""
        self._send_state(slot)
        return process

    def _started_or(self, slot: _Slot, endpoint: ModelEndpoint) -> Callable[[dict[str, Any], memoryview], None]:
        def on_push(header: dict[str, Any], payload: memoryview) -> None:
            if header.get("op") == "listening":
                slot.started = time.monotonic()
                log.info("Front-end process %d (pid %s) is serving", slot.index,
                         slot.process.pid if slot.process else "?")
            else:
                endpoint.on_push(header, payload)
        return on_push

    async def _keep(self, slot: _Slot) -> None:
        """Run the slot's front end; restart it (with backoff) whenever it exits while the server runs."""
        while not self._stopping:
            slot.started = 0.0
            try:
                slot.process = await self._spawn(slot)
            except Exception as exc:  # out of fds or memory, fork refused: say so, and try again later
                slot.failures += 1
                delay = RESTART_BACKOFF_S[min(slot.failures, len(RESTART_BACKOFF_S)) - 1]
                log.error("Cannot start front-end process %d (%s: %s); trying again in %g s", slot.index,
                          type(exc).__name__, exc, delay)
                await asyncio.sleep(delay)
                continue
            if self._stopping:  # stop() came while it was being spawned, and did not see it
                with contextlib.suppress(ProcessLookupError):
                    slot.process.send_signal(signal.SIGTERM)
            channel = slot.channel
            assert channel is not None
            reading = asyncio.create_task(channel.run())
            code = await slot.process.wait()
            channel.close()
            self._forget(slot)
            await asyncio.wait([reading], timeout=1)
            if self._stopping:
                return
            lived = time.monotonic() - slot.started if slot.started else 0.0
            slot.failures = 0 if lived > HEALTHY_AFTER_S else slot.failures + 1
            delay = RESTART_BACKOFF_S[min(slot.failures, len(RESTART_BACKOFF_S)) - 1] if slot.failures else 0.0
            log.error("Front-end process %d (pid %d) exited with %s; restarting it%s", slot.index,
                      slot.process.pid, _exit_text(code), f" in {delay:g} s" if delay else "")
            await asyncio.sleep(delay)

    def _forget(self, slot: _Slot) -> None:
        endpoint = slot.endpoint
        if endpoint is not None and any(endpoint.in_flight.values()):
            self._observe_gone({"d": {p: -n for p, n in endpoint.in_flight.items()}, "r": []})
            endpoint.in_flight = {"rest": 0, "grpc": 0}

    def _send_state(self, slot: _Slot) -> None:
        if slot.channel is None or slot.channel.closed or slot.sent is self._state:
            return
        try:
            slot.channel.send({"op": "state"}, [self._state])
            slot.sent = self._state
        except ServingError:
            pass

    async def _push_snapshots(self) -> None:
        while True:
            self.push_now()
            await asyncio.sleep(SNAPSHOT_EVERY_S)

    def push_now(self) -> None:
        """Send the snapshot to every front end whose copy differs (state changes, drain)."""
        state = self._snapshot.build()
        if state != self._state:
            self._state = state
        for slot in self._slots:
            self._send_state(slot)

    def broadcast(self, op: str) -> None:
        """Tell every front end `op` (one-way): "auth" makes them re-read --auth_config_file now."""
        for slot in self._slots:
            if slot.channel is not None and not slot.channel.closed:
                try:
                    slot.channel.send({"op": op}, [])
                except ServingError:
                    pass

    async def stop(self, grace_s: float) -> None:
        """SIGTERM every front end (each stops accepting and lets its in-flight requests finish), then wait. A
        second call waits for the first."""
        if self._stop_task is None:
            self._stop_task = asyncio.ensure_future(self._stop(grace_s))
        await asyncio.shield(self._stop_task)

    async def _stop(self, grace_s: float) -> None:
        self._stopping = True
        self.push_now()
        self._tasks[-1].cancel()  # the snapshot pushes; the slots end once their process has
        procs = [s.process for s in self._slots if s.process is not None and s.process.returncode is None]
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        if procs:
            done, pending = await asyncio.wait([asyncio.ensure_future(p.wait()) for p in procs], timeout=grace_s + 5)
            for proc in procs:
                if proc.returncode is None:
                    log.warning("Front-end process pid %d did not stop in time; killing it", proc.pid)
                    proc.kill()
        await asyncio.wait(self._tasks, timeout=5)
        for slot in self._slots:
            if slot.channel is not None:
                slot.channel.close()
        os.close(self._buckets_fd)


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            pass
    return f"status {code}"
