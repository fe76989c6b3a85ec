"""InferenceService: predict, classify, regress, multi-inference and metadata, protocol-neutral.

Its API is plain data in and out: request and result dataclasses holding numpy arrays, strings and numbers; no
callables and no out-parameters, so the same calls can cross a process boundary (front-end workers over one model
process). Only the codecs know JSON or protobuf. Model code runs in the worker pool, never on the event loop.

Routing happens here, in one place for every front end: a version, a label, or a model's traffic split (canary
releases) picks the servable; `signature()` lets a front end that needs the signature to decode (REST's JSON)
ask first and pass the chosen `Route` back with the request.
"""

from __future__ import annotations

import asyncio
import collections
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from pyserving.core.canary import ArmId, TrafficController, TrafficControllers
from pyserving.core.handoff import ModelCalls, Pace
from pyserving.core.ids import ServableId, ServableRequest
from pyserving.core.manager import Lease, ModelManager
from pyserving.core.routing import resolve
from pyserving.dtypes import DType
from pyserving.errors import Code, ServingError, SignatureNotFoundError
from pyserving.runtimes.base import (
    check_inputs,
    examples_tensor,
    find_signature,
    select_outputs,
    CLASSIFY_METHOD,
    DEFAULT_SIGNATURE,
    PREDICT_METHOD,
    REGRESS_METHOD,
    Signature,
)

Inputs = Mapping[str, np.ndarray]
MAX_SHADOWS_IN_FLIGHT = 16
"""Mirrored requests beyond this many in flight are dropped (and counted): shadows never queue up live work."""
_NO_HEADERS: Mapping[str, str] = {}


class ServiceEvents(Protocol):
    """What the service reports as it happens (observability implements it; core never imports it)."""

    def on_runtime(self, model: str, api: str, seconds: float) -> None: ...

    def on_rollback(self, model: str, arm: str) -> None: ...

    def on_shadow_dropped(self, model: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Route:
    """Where a request was sent: the servable, and the traffic split's arm that chose it (None: no split)."""

    servable: ServableId
    arm: ArmId | None = None


@dataclass(frozen=True, slots=True)
class PredictRequest:
    model: ServableRequest
    inputs: Inputs
    signature_name: str = ""
    output_filter: Sequence[str] = ()
    timeout_s: float | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    """Request headers / gRPC metadata by lower-case name (a sticky traffic split reads its key from them)."""
    route: Route | None = None
    """The answer of an earlier `signature()` call for this request, so both pick the same servable."""


@dataclass(frozen=True, slots=True)
class ExamplesRequest:
    """Classify or regress serialized tf.Examples (context already merged in by the codec)."""

    model: ServableRequest
    examples: Sequence[bytes]
    signature_name: str = ""
    timeout_s: float | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class InferenceTask:
    signature_name: str
    method_name: str


@dataclass(frozen=True, slots=True)
class MultiInferenceRequest:
    """Several classify/regress signatures of one model version over the same examples."""

    model: ServableRequest
    tasks: Sequence[InferenceTask]
    examples: Sequence[bytes]
    timeout_s: float | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PredictResult:
    servable: ServableId
    signature_name: str
    outputs: dict[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class Classifications:
    """Per example, its (label, score) pairs; label is b"" when the model has no classes output."""

    servable: ServableId
    signature_name: str
    classes: list[list[tuple[bytes, float]]]


@dataclass(frozen=True, slots=True)
class Regressions:
    servable: ServableId
    signature_name: str
    values: list[float]


@dataclass(frozen=True, slots=True)
class MultiInferenceResult:
    servable: ServableId
    results: list[Classifications | Regressions]


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    """A servable's signatures (TF Serving's GetModelMetadata "signature_def" field, in plain data)."""

    servable: ServableId
    signatures: Mapping[str, Signature]


def _sorted_set(keys: Any) -> str:
    return ",".join(sorted(keys))


def signature_of(lease: Lease, name: str) -> Signature:
    """The signature `name` ("" means serving_default), or TF Serving's FAILED_PRECONDITION."""
    return find_signature(lease.servable.signatures, name)


def example_signature_of(lease: Lease, name: str) -> Signature:
    """The classify/regress signature `name`: TF Serving's classifier and regressor word a missing one differently
    from Predict, and call it INVALID_ARGUMENT."""
    try:
        return signature_of(lease, name)
    except SignatureNotFoundError as exc:
        raise ServingError(
            Code.INVALID_ARGUMENT, f"No signature was found with the name: {exc.signature_name}"
        ) from None


def _check_dtypes(sig: Signature, inputs: Inputs, decoded_for: ServableId, now: ServableId) -> None:
    """Inputs decoded for one version (by its signature's dtypes) may go to another only if the dtypes agree."""
    for alias, array in inputs.items():
        spec = sig.inputs.get(alias)
        try:
            expected = spec.dtype.numpy if spec is not None else array.dtype
        except TypeError:  # a type numpy cannot hold: the model will say what is wrong
            continue
        if expected != array.dtype:
            raise ServingError(
                Code.UNAVAILABLE,
                f"Version {decoded_for.version} of model {now.name} was replaced by version {now.version} while "
                f"the request was decoded, and input {alias} changed type to {spec.dtype.name}. Retry the request.",
            )


@dataclass(slots=True)
class _Held:
    """A leased servable and how the traffic split chose it (controller and arm are None without a split). As a
    context manager it releases the lease and names the version in a ServingError on the way out (a class, not a
    @contextmanager generator: REST leases twice per request)."""

    lease: Lease
    controller: TrafficController | None = None
    arm: ArmId | None = None

    def __enter__(self) -> _Held:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if isinstance(exc, ServingError) and exc.version is None:
            exc.version = self.lease.id.version
        self.lease.release()


class _Expired(Exception):
    """A model call's deadline passed before its answer came (a lane skips the call if it has not started)."""


def _expire(call: asyncio.Future[Any]) -> None:
    if not call.done():
        call.set_exception(_Expired())


class _Deadlines:
    """Deadline timers for model calls that share one timeout (REST's --rest_api_timeout_in_ms gives every request
    the same): their expiries come in arrival order, so a deque and one loop timer serve them all, instead of a
    TimerHandle pushed onto (and cancelled out of) the loop's heap per request. A call with another timeout (gRPC
    deadlines differ per request) gets its own timer while this one has calls waiting.

    Entries are [expiry, future]; the caller clears the future once its call is over, so an entry left behind a
    slow call holds no answer. Finished entries leave from the front as calls are added, and when the timer fires:
    at most timeout x request rate entries, a small list each."""

    __slots__ = ("_loop", "_timeout", "_entries", "_timer")

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timeout = 0.0
        self._entries: collections.deque[list[Any]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, loop: asyncio.AbstractEventLoop, timeout_s: float, call: asyncio.Future[Any]) -> list[Any] | None:
        """Expire `call` in `timeout_s`; its entry, to clear once the call is over (None: the caller must time it
        itself)."""
        entries = self._entries
        if loop is not self._loop:  # another loop (a test's fresh one): nothing of the old one's matters here
            self._loop, self._timer, self._timeout = loop, None, timeout_s
            entries.clear()
        while entries and entries[0][1] is None:
            entries.popleft()
        if timeout_s != self._timeout:
            if entries:
                return None
            self._timeout = timeout_s
            if self._timer is not None:  # armed for a call of the old timeout, which may expire after this one
                self._timer.cancel()
                self._timer = None
        entry = [loop.time() + timeout_s, call]
        entries.append(entry)
        if self._timer is None:
            self._timer = loop.call_at(entries[0][0], self._fire)
        return entry

    def _fire(self) -> None:
        self._timer = None
        loop, entries = self._loop, self._entries
        assert loop is not None
        now = loop.time()
        while entries:
            at, call = entries[0]
            if call is not None:
                if at > now:
                    self._timer = loop.call_at(at, self._fire)
                    return
                _expire(call)
            entries.popleft()


def _deadline_exceeded(timeout_s: float) -> ServingError:
    return ServingError(
        Code.DEADLINE_EXCEEDED,
        f"Deadline exceeded: the model did not answer within {timeout_s * 1000:.0f} ms. Raise the client's "
        "deadline (REST: --rest_api_timeout_in_ms) or send smaller requests.",
    )


def _plain_bytes(inputs: Inputs) -> int | None:
    """The inputs' size, or None when it says nothing of the work (strings: an object array holds pointers)."""
    total = 0
    for array in inputs.values():
        if array.dtype.hasobject:
            return None
        total += array.nbytes
    return total


class _NoEvents:
    def on_runtime(self, model: str, api: str, seconds: float) -> None:
        pass

    def on_rollback(self, model: str, arm: str) -> None:
        pass

    def on_shadow_dropped(self, model: str) -> None:
        pass


class InferenceService:
    """The protocol-neutral data plane every front end calls. All methods run on the event loop."""

    def __init__(
        self,
        manager: ModelManager,
        executor: Executor,
        *,
        method_name_check: bool = False,
        events: ServiceEvents | None = None,
    ) -> None:
        """`events.on_runtime` hears how long each model call took (batch queueing included, as in TF Serving's
        runtime_latency with batching)."""
        self._manager = manager
        self._executor = executor
        self._calls = ModelCalls(executor)
        self._paces: weakref.WeakKeyDictionary[Any, Pace] = weakref.WeakKeyDictionary()
        """Per loaded servable, how fast its calls are (small requests to a fast model run inline)."""
        self._deadlines = _Deadlines()
        self._method_name_check = method_name_check
        self._events: ServiceEvents = events or _NoEvents()
        self.traffic = TrafficControllers(manager.traffic_split, self._events.on_rollback)
        self._shadows: set[asyncio.Task[None]] = set()

    # --- routing ----------------------------------------------------------------------------------------------

    def _hold(self, model: ServableRequest, headers: Mapping[str, str], route: Route | None = None) -> _Held:
        """Lease the version the request asks for, as a context manager (`with self._hold(...) as held`). A request
        naming no version or label goes through the model's traffic split, if it has one (falling back to another
        arm while one is not AVAILABLE). `route` repeats an earlier choice; if that version went away meanwhile (a
        swap), an unpinned request is routed afresh."""
        return self._route(model, headers, route)

    def _route(self, model: ServableRequest, headers: Mapping[str, str], route: Route | None) -> _Held:
        if model.version is not None or model.label is not None:
            return _Held(self._manager.lease(model))
        if route is not None:
            try:
                lease = self._manager.lease(ServableRequest(model.name, route.servable.version))
            except ServingError:
                pass  # gone since (a version swap): route afresh
            else:
                controller = self.traffic.get(model.name) if route.arm is not None else None
                return _Held(lease, controller, route.arm if controller is not None else None)
        controller = self.traffic.get(model.name)
        if controller is None:
            return _Held(self._manager.lease(model))
        sticky = controller.split.sticky_key
        arm = controller.route(headers.get(sticky) if sticky else None)
        for candidate in (arm, *controller.fallbacks(arm)):
            try:
                return _Held(self._manager.lease(resolve(model.name, candidate)), controller, candidate)
            except ServingError:
                continue
        return _Held(self._manager.lease(model))

    def signature(
        self, model: ServableRequest, signature_name: str, headers: Mapping[str, str] = _NO_HEADERS
    ) -> tuple[Route, Signature]:
        """The servable a request would go to now and its signature `signature_name` (for codecs that decode by
        the signature's dtypes). Pass the route back in the request."""
        with self._hold(model, headers) as held:
            return Route(held.lease.id, held.arm), signature_of(held.lease, signature_name)

    def resolve_version(self, model: ServableRequest) -> int | None:
        """The version a status query means: a label resolves to its version; otherwise as asked."""
        if model.label is None:
            return model.version
        with self._manager.lease(model) as lease:
            return lease.id.version

    def _shadow(self, held: _Held, signature: str, inputs: Inputs, output_keys: Sequence[str]) -> None:
        """Mirror a routed predict to the split's shadow version: measured, answer dropped, never in the way."""
        controller = held.controller
        if controller is None:
            return
        arm = controller.shadow_arm()
        if arm is None:
            return
        if len(self._shadows) >= MAX_SHADOWS_IN_FLIGHT:
            controller.shadow_dropped += 1
            self._events.on_shadow_dropped(controller.model)
            return
        target = resolve(held.lease.id.name, arm)

        async def mirror() -> None:
            try:
                with self._manager.lease(target) as shadow_lease:
                    await self._run(_Held(shadow_lease, controller, arm), signature, inputs, output_keys, None)
            except Exception:  # measured by _run; a shadow's failure is nobody's answer
                pass

        task = asyncio.get_running_loop().create_task(mirror())
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)

    # --- running the model ------------------------------------------------------------------------------------

    async def _run(
        self, held: _Held, signature: str, inputs: Inputs, output_keys: Sequence[str], timeout_s: float | None,
        api: str = "predict",
    ) -> dict[str, np.ndarray]:
        controller, arm = held.controller, held.arm
        started = time.perf_counter()
        try:
            outputs = await self._await_model(held.lease, signature, inputs, output_keys, timeout_s)
        except ServingError:
            if controller is not None:
                controller.record(arm, False, time.perf_counter() - started)  # type: ignore[arg-type]
            raise
        elapsed = time.perf_counter() - started
        if controller is not None:
            controller.record(arm, True, elapsed)  # type: ignore[arg-type]
        self._events.on_runtime(held.lease.id.name, api, elapsed)
        return outputs

    async def _await_model(
        self, lease: Lease, signature: str, inputs: Inputs, output_keys: Sequence[str], timeout_s: float | None
    ) -> dict[str, np.ndarray]:
        if lease.batcher is None:
            servable = lease.servable
            if getattr(servable, "inline_when_fast", False):
                pace = self._paces.get(servable)
                if pace is None:
                    pace = self._paces[servable] = Pace()
                call = self._calls.run_paced(pace, _plain_bytes(inputs), servable.run, signature, inputs, output_keys)
            else:
                call = self._calls.run(servable.run, signature, inputs, output_keys)
        else:
            call = lease.batcher.run(signature, inputs, output_keys)
        if timeout_s is None or call.done():  # done: it ran inline, there is nothing left to time
            return await call
        # A timer on the call's own future: asyncio.wait_for would wrap it in a task, per request. An expired call
        # is skipped by its lane if it has not started, and left out of its batch's answers if it has.
        loop = asyncio.get_running_loop()
        entry = self._deadlines.add(loop, timeout_s, call)
        timer = loop.call_later(timeout_s, _expire, call) if entry is None else None
        try:
            return await call
        except _Expired:
            raise _deadline_exceeded(timeout_s) from None
        finally:
            if entry is not None:
                entry[1] = None
            else:
                timer.cancel()  # type: ignore[union-attr]

    # --- predict ----------------------------------------------------------------------------------------------

    async def predict(self, request: PredictRequest) -> PredictResult:
        """Run a signature over named input tensors."""
        with self._hold(request.model, request.headers, request.route) as held:
            sig = signature_of(held.lease, request.signature_name)
            try:
                if self._method_name_check and sig.method_name not in (PREDICT_METHOD, CLASSIFY_METHOD,
                                                                       REGRESS_METHOD):
                    raise ServingError(
                        Code.INTERNAL,
                        "Expected prediction signature method_name to be one of {tensorflow/serving/predict, "
                        f"tensorflow/serving/classify, tensorflow/serving/regress}}. Was: {sig.method_name}",
                    )
                check_inputs(sig, request.inputs)
                if request.route is not None and held.lease.id != request.route.servable:
                    _check_dtypes(sig, request.inputs, request.route.servable, held.lease.id)
                output_keys = select_outputs(sig, request.output_filter)
                self._shadow(held, sig.name, request.inputs, output_keys)
                outputs = await self._run(held, sig.name, request.inputs, output_keys, request.timeout_s)
            except ServingError as exc:
                exc.signature = sig.name
                raise
            return PredictResult(held.lease.id, sig.name, outputs)

    # --- classify / regress -----------------------------------------------------------------------------------

    async def classify(self, request: ExamplesRequest) -> Classifications:
        return await self._on_examples(request, self._classify, Classifications)  # type: ignore[return-value]

    async def regress(self, request: ExamplesRequest) -> Regressions:
        return await self._on_examples(request, self._regress, Regressions)  # type: ignore[return-value]

    async def _on_examples(
        self, request: ExamplesRequest, run: Callable[..., Awaitable[Any]], result: type[Classifications | Regressions],
    ) -> Classifications | Regressions:
        with self._hold(request.model, request.headers) as held:
            sig = example_signature_of(held.lease, request.signature_name)
            try:
                answer = await run(held, sig, request.examples, request.timeout_s)
            except ServingError as exc:
                exc.signature = sig.name
                raise
            return result(held.lease.id, sig.name, answer)

    async def multi_inference(self, request: MultiInferenceRequest) -> MultiInferenceResult:
        if not request.tasks:
            raise ServingError(Code.INVALID_ARGUMENT, "MultiInferenceRequest has no tasks. Add at least one task.")
        seen: set[str] = set()
        with self._hold(request.model, request.headers) as held:
            results: list[Classifications | Regressions] = []
            for task in request.tasks:
                name = task.signature_name or DEFAULT_SIGNATURE
                if name in seen:
                    raise ServingError(Code.INVALID_ARGUMENT, f"Duplicate evaluation of signature: {name}")
                seen.add(name)
                sig = example_signature_of(held.lease, name)
                examples, timeout_s = request.examples, request.timeout_s
                if task.method_name == CLASSIFY_METHOD:
                    results.append(Classifications(held.lease.id, name,
                                                   await self._classify(held, sig, examples, timeout_s)))
                elif task.method_name == REGRESS_METHOD:
                    results.append(Regressions(held.lease.id, name, await self._regress(held, sig, examples, timeout_s)))
                else:
                    raise ServingError(
                        Code.UNIMPLEMENTED,
                        f"Unsupported signature method_name: {task.method_name}. Use {CLASSIFY_METHOD} or "
                        f"{REGRESS_METHOD}.",
                    )
            return MultiInferenceResult(held.lease.id, results)

    def _example_input(self, sig: Signature, method: str, what: str) -> str:
        if self._method_name_check and sig.method_name != method:
            raise ServingError(
                Code.INVALID_ARGUMENT,
                f"Expected {what} signature method_name to be {method}. Was: {sig.method_name}",
            )
        if len(sig.inputs) != 1:
            raise ServingError(Code.INVALID_ARGUMENT, "Expected one input Tensor.")
        key = next(iter(sig.inputs))
        if key != "inputs":
            raise ServingError(Code.INVALID_ARGUMENT, f"No {what} inputs found in SignatureDef: {sig.name}")
        return key

    async def _classify(
        self, held: _Held, sig: Signature, examples: Sequence[bytes], timeout_s: float | None
    ) -> list[list[tuple[bytes, float]]]:
        key = self._example_input(sig, CLASSIFY_METHOD, "classification")
        if not 1 <= len(sig.outputs) <= 2:
            raise ServingError(Code.INVALID_ARGUMENT, f"Expected one or two output Tensors, found {len(sig.outputs)}")
        wanted = [k for k in ("classes", "scores") if k in sig.outputs]
        if not wanted:
            raise ServingError(
                Code.INVALID_ARGUMENT,
                f'Expected classification signature outputs to contain at least one of "classes" or "scores". '
                f"Signature was: {sig.name} with outputs {{{_sorted_set(sig.outputs)}}}",
            )
        batch = examples_tensor(examples)
        out = await self._run(held, sig.name, {key: batch}, wanted, timeout_s, "classify")
        classes, scores = out.get("classes"), out.get("scores")
        n = len(examples)
        for name, tensor, dtype in (("classes", classes, DType.DT_STRING), ("scores", scores, DType.DT_FLOAT)):
            if tensor is None:
                continue
            if tensor.ndim != 2:
                raise ServingError(
                    Code.INVALID_ARGUMENT,
                    f"Expected Tensor shape: [batch_size num_classes] but got {list(tensor.shape)}",
                )
            if DType.from_numpy(tensor.dtype) != dtype:
                raise ServingError(
                    Code.INVALID_ARGUMENT,
                    f"Expected {name} Tensor of {dtype.name}. Got: {DType.from_numpy(tensor.dtype).name}",
                )
            if tensor.shape[0] != n:
                raise ServingError(
                    Code.INVALID_ARGUMENT, f"Expected {name} output batch size of {n}. Got: {tensor.shape[0]}"
                )
        if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
            raise ServingError(
                Code.INVALID_ARGUMENT,
                f"Tensors class and score should match in dim_size(1). Got {classes.shape[1]} vs. {scores.shape[1]}",
            )
        width = (classes if classes is not None else scores).shape[1]  # type: ignore[union-attr]
        return [
            [
                (
                    bytes(classes[i, j]) if classes is not None else b"",
                    float(scores[i, j]) if scores is not None else 0.0,
                )
                for j in range(width)
            ]
            for i in range(n)
        ]

    async def _regress(
        self, held: _Held, sig: Signature, examples: Sequence[bytes], timeout_s: float | None
    ) -> list[float]:
        key = self._example_input(sig, REGRESS_METHOD, "regression")
        if len(sig.outputs) != 1:
            raise ServingError(Code.INVALID_ARGUMENT, "Expected one output Tensor.")
        if "outputs" not in sig.outputs:
            raise ServingError(Code.INVALID_ARGUMENT, f"No regression outputs found in SignatureDef: {sig.name}")
        batch = examples_tensor(examples)
        out = (await self._run(held, sig.name, {key: batch}, ["outputs"], timeout_s, "regress"))["outputs"]
        n = len(examples)
        if not (out.ndim == 1 or (out.ndim == 2 and out.shape[1] == 1)):
            raise ServingError(
                Code.INVALID_ARGUMENT,
                f"Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got {list(out.shape)}",
            )
        if out.dtype != np.float32:
            raise ServingError(
                Code.INVALID_ARGUMENT, f"Expected output Tensor of DT_FLOAT.  Got: {DType.from_numpy(out.dtype).name}"
            )
        if out.shape[0] != n:
            raise ServingError(Code.INVALID_ARGUMENT, f"Input batch size did not match output batch size: {n} vs. {out.shape[0]}")
        return [float(v) for v in out.reshape(-1)]

    # --- metadata ---------------------------------------------------------------------------------------------

    def metadata(self, model: ServableRequest) -> ModelMetadata:
        with self._manager.lease(model) as lease:
            return ModelMetadata(lease.id, dict(lease.servable.signatures))
