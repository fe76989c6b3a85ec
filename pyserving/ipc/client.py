"""The front end's stand-ins for InferenceService, ControlPlane and RequestObserver, over the channel to the model
process. The REST and gRPC front ends run unchanged on top of them.

Synchronous questions (which signature decodes this request, status, metadata, readiness) are answered from the
snapshot the model process pushes; predict, classify, regress, multi-inference and config reloads are calls.
A model with a traffic split is routed by the model process (its split state lives there): the front end decodes
by the newest version's signature and leaves the choice of arm to the model process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from pyserving.core.control import ModelInfo, RepositoryModel
from pyserving.core.ids import ServableId, ServableRequest
from pyserving.core.service import (
    Classifications,
    ExamplesRequest,
    ModelMetadata,
    MultiInferenceRequest,
    MultiInferenceResult,
    PredictRequest,
    PredictResult,
    Regressions,
    Route,
)
from pyserving.core.states import VersionStatus
from pyserving.errors import ServingError
from pyserving.ipc.channel import Channel, Payload, error_from, unavailable
from pyserving.ipc.results import decode_classes, encode_results, examples_meta
from pyserving.ipc.state import Snapshot, status_from
from pyserving.observability.requests import LOGGED_APIS, RequestInfo, RequestObserver
from pyserving.runtimes.base import Signature, find_signature


_NO_HEADERS: Mapping[str, str] = {}


class ModelLink:
    """The channel to the model process and the latest snapshot it sent."""

    def __init__(self) -> None:
        self.channel: Channel | None = None
        self.snapshot = Snapshot()
        self.has_state = asyncio.Event()
        self.draining = asyncio.Event()
        """Set once the model process says the server is draining."""
        self.on_auth_change: Callable[[], object] | None = None
        """Re-reads --auth_config_file (the model process watches it and says when it changed)."""

    def on_push(self, header: dict[str, Any], payload: memoryview) -> None:
        if header.get("op") == "state":
            self.snapshot = Snapshot(orjson.loads(payload))
            self.has_state.set()
            if self.snapshot.draining:
                self.draining.set()
        elif header.get("op") == "auth" and self.on_auth_change is not None:
            self.on_auth_change()

    @property
    def connected(self) -> bool:
        return self.channel is not None and not self.channel.closed


    async def call(self, header: dict[str, Any], payload: Payload) -> tuple[dict[str, Any], memoryview]:
        channel = self.channel
        if channel is None or channel.closed:
            raise unavailable()
        reply, data = await channel.call(header, payload)
        if "e" in reply:
            raise error_from(reply["e"])
        return reply, data


def _model(request: ServableRequest) -> list[Any]:
    return [request.name, request.version, request.label]


class RemoteService:
    """InferenceService's API for front ends, served by the model process."""

    def __init__(self, link: ModelLink) -> None:
        self._link = link

    def _pick(self, model: ServableRequest) -> ServableId:
        return self._link.snapshot.pick(model)

    def signature(self, model: ServableRequest, signature_name: str,
                  headers: Mapping[str, str] = _NO_HEADERS) -> tuple[Route, Signature]:
        servable = self._pick(model)
        try:
            return Route(servable), find_signature(self._link.snapshot.signatures(servable), signature_name)
        except ServingError as exc:
            if exc.version is None:
                exc.version = servable.version
            raise

    def resolve_version(self, model: ServableRequest) -> int | None:
        if model.label is None:
            return model.version
        return self._pick(model).version

    def metadata(self, model: ServableRequest) -> ModelMetadata:
        servable = self._pick(model)
        return ModelMetadata(servable, dict(self._link.snapshot.signatures(servable)))

    def _route(self, request: PredictRequest) -> list[Any] | None:
        route = request.route
        if route is None:
            return None
        state = self._link.snapshot.models.get(request.model.name)
        if state is not None and state.has_split and request.model.version is None and request.model.label is None:
            return None  # the model process picks the arm
        return [route.servable.name, route.servable.version, route.arm]

    async def predict(self, request: PredictRequest) -> PredictResult:
        channel = self._link.channel
        if channel is None or channel.closed:
            raise unavailable()
        payload: Payload = []
        header = {"op": "predict", "m": _model(request.model), "s": request.signature_name,
                  "o": list(request.output_filter), "to": request.timeout_s, "h": dict(request.headers),
                  "r": self._route(request), "t": channel.encode_tensors(request.inputs, payload)}
        reply, data = await self._link.call(header, payload)
        return PredictResult(ServableId(request.model.name, reply["v"]), reply["s"],
                             channel.decode_tensors(reply["t"], data))

    async def _on_examples(self, op: str, request: ExamplesRequest) -> tuple[dict[str, Any], memoryview, Channel]:
        channel = self._link.channel
        if channel is None or channel.closed:
            raise unavailable()
        payload: Payload = []
        header = {"op": op, "m": _model(request.model), "s": request.signature_name, "to": request.timeout_s,
                  "h": dict(request.headers), "t": examples_meta(channel, request.examples, payload)}
        reply, data = await self._link.call(header, payload)
        return reply, data, channel

    async def classify(self, request: ExamplesRequest) -> Classifications:
        reply, data, channel = await self._on_examples("classify", request)
        return Classifications(ServableId(request.model.name, reply["v"]), reply["s"],
                               decode_classes(channel, reply["c"], data))

    async def regress(self, request: ExamplesRequest) -> Regressions:
        reply, _, _ = await self._on_examples("regress", request)
        return Regressions(ServableId(request.model.name, reply["v"]), reply["s"], reply["r"])

    async def multi_inference(self, request: MultiInferenceRequest) -> MultiInferenceResult:
        channel = self._link.channel
        if channel is None or channel.closed:
            raise unavailable()
        payload: Payload = []
        header = {"op": "multi", "m": _model(request.model), "to": request.timeout_s, "h": dict(request.headers),
                  "k": [[t.signature_name, t.method_name] for t in request.tasks],
                  "t": examples_meta(channel, request.examples, payload)}
        reply, data = await self._link.call(header, payload)
        servable = ServableId(request.model.name, reply["v"])
        results: list[Classifications | Regressions] = [
            Classifications(servable, sig, decode_classes(channel, value, data)) if kind == "c"
            else Regressions(servable, sig, value)
            for kind, sig, value in reply["a"]
        ]
        return MultiInferenceResult(servable, results)


class RemoteControl:
    """The part of ControlPlane front ends use: status and readiness from the snapshot, reloads as calls."""

    def __init__(self, link: ModelLink) -> None:
        self._link = link

    def status(self, name: str, version: int | None = None) -> list[VersionStatus]:
        return self._link.snapshot.status(name, version)

    def models(self) -> list[ModelInfo]:
        return [ModelInfo(m.name, list(m.statuses), dict(m.labels), m.split)
                for _, m in sorted(self._link.snapshot.models.items())]

    def platform(self, name: str) -> str | None:
        model = self._link.snapshot.models.get(name)
        return model.platform if model is not None else None

    def unready_models(self) -> dict[str, str]:
        return dict(self._link.snapshot.unready)

    async def reload_text(self, text: str) -> None:
        await self._link.call({"op": "reload", "text": text}, [])

    async def repository(self) -> list[RepositoryModel]:
        reply, _ = await self._link.call({"op": "repo_index"}, [])
        return [RepositoryModel(name, [status_from(v) for v in versions], unloaded, why)
                for name, versions, unloaded, why in reply["models"]]

    async def load_model(self, name: str, timeout_s: float | None = None) -> None:
        await self._link.call({"op": "repo_load", "name": name, "to": timeout_s}, [])

    async def unload_model(self, name: str) -> None:
        await self._link.call({"op": "repo_unload", "name": name}, [])

    async def metrics(self, accept: str) -> tuple[bytes, str]:
        reply, data = await self._link.call({"op": "metrics", "accept": accept}, [])
        return bytes(data), reply["ct"]


class RemoteObserver(RequestObserver):
    """Sends each request's count and latency to the model process, which owns the metrics: one scrape sees every
    front end's requests once. A request's start rides on its call to the model process; its end goes at the end
    of the event-loop turn (with every other end of that turn), before the answer reaches the client, so that a
    scrape made after an answer counts it."""

    def __init__(self, link: ModelLink) -> None:
        super().__init__(None)
        self._link = link
        self._in_flight_delta = {"rest": 0, "grpc": 0}
        self._done: list[list[Any]] = []
        self._scheduled = False
        self._attached: Channel | None = None

    def _attach(self, header: dict[str, Any]) -> None:
        """Channel.before_send: hand over what is pending."""
        if self._done or self._in_flight_delta["rest"] or self._in_flight_delta["grpc"]:
            header["obs"] = {"d": self._in_flight_delta, "r": self._done}
            self._in_flight_delta, self._done = {"rest": 0, "grpc": 0}, []

    def _schedule(self) -> None:
        channel = self._link.channel
        if channel is not None and self._attached is not channel:
            channel.before_send = self._attach
            self._attached = channel
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        channel = self._link.channel
        if channel is not None and not channel.closed and (self._done or any(self._in_flight_delta.values())):
            try:
                channel.send({"op": "obs"}, [])  # before_send fills it in
                channel.flush()  # now, not a turn later: before the answers this turn wrote reach their clients
            except ServingError:
                pass

    def start(self, info: RequestInfo) -> None:
        self._in_flight_delta[info.protocol] += 1
        self._schedule()

    def finish(self, info: RequestInfo, code: str) -> None:
        latency_s = time.perf_counter() - info.started
        self._in_flight_delta[info.protocol] -= 1
        self._done.append([info.model, str(info.version) if info.version is not None else "", info.signature,
                           info.api, info.protocol, code, latency_s])
        self._schedule()
        if info.api in LOGGED_APIS and info.model in self._link.snapshot.logged:
            self._send_log(info, code, latency_s)
        super().finish(info, code)  # its request log line at DEBUG (metrics and request logs are elsewhere)

    def _send_log(self, info: RequestInfo, code: str, latency_s: float) -> None:
        """The request's payloads to the model process, which writes the model's request log (one writer per
        file) and samples it."""
        channel = self._link.channel
        if channel is None or channel.closed:
            return
        payload: Payload = []
        header: dict[str, Any] = {
            "op": "log", "model": info.model, "version": info.version or 0, "signature": info.signature,
            "api": info.api, "latency_s": latency_s, "code": code, "protocol": info.protocol,
            "timestamp": info.arrived, "request_id": info.request_id, "principal": info.principal,
        }
        if info.inputs is not None:
            header["inputs"] = channel.encode_tensors(info.inputs, payload)
        if info.outputs is not None:
            header["outputs"] = channel.encode_tensors(info.outputs, payload)
        if info.examples is not None:
            header["examples"] = examples_meta(channel, info.examples, payload)
        if info.results is not None:
            header["results"] = encode_results(channel, info.api, info.results, payload)
        try:
            channel.send(header, payload)
        except ServingError:
            pass
