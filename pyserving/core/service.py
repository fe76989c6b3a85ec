"""InferenceService: predict, classify, regress, multi-inference, metadata and status, protocol-neutral.

Front ends hold one of these. It takes numpy arrays and plain values and returns dataclasses; only the codecs in
`frontends/` know JSON or protobuf. Model code runs in the worker pool, never on the event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np

from pyserving.core.canary import TrafficController
from pyserving.core.ids import ServableId, ServableRequest
from pyserving.core.manager import Lease, ModelManager
from pyserving.core.request_info import RequestInfo
from pyserving.core.states import VersionStatus
from pyserving.dtypes import DType
from pyserving.errors import Code, ServingError, SignatureNotFoundError
from pyserving.options import ModelConfig
from pyserving.runtimes.base import (
    check_inputs,
    select_outputs,
    CLASSIFY_METHOD,
    DEFAULT_SIGNATURE,
    PREDICT_METHOD,
    REGRESS_METHOD,
    Signature,
)

Inputs = Mapping[str, np.ndarray]
InputDecoder = Callable[[Signature], Inputs]
RoutingKey = Callable[[str], str | None]
"""Reads one request header (REST) or metadata value (gRPC) by lower-case name."""
MAX_SHADOWS_IN_FLIGHT = 16
"""Mirrored requests beyond this many in flight are dropped (and counted): shadows never queue up live work."""


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
class InferenceTask:
    signature_name: str
    method_name: str


def _sorted_set(keys: Any) -> str:
    return ",".join(sorted(keys))


def signature_of(lease: Lease, name: str) -> Signature:
    """The signature `name` ("" means serving_default), or TF Serving's FAILED_PRECONDITION."""
    sig = lease.servable.signatures.get(name or DEFAULT_SIGNATURE)
    if sig is None:
        raise SignatureNotFoundError(name or DEFAULT_SIGNATURE)
    return sig


def example_signature_of(lease: Lease, name: str) -> Signature:
    """The classify/regress signature `name`: TF Serving's classifier and regressor word a missing one differently
    from Predict, and call it INVALID_ARGUMENT."""
    try:
        return signature_of(lease, name)
    except SignatureNotFoundError as exc:
        raise ServingError(
            Code.INVALID_ARGUMENT, f"No signature was found with the name: {exc.signature_name}"
        ) from None


def _note(info: RequestInfo | None, lease: Lease) -> None:
    if info is not None:
        info.version = lease.id.version


class InferenceService:
    """The protocol-neutral API both front ends call. Thread-compatible; all methods are called on the event loop."""

    def __init__(
        self,
        manager: ModelManager,
        executor: Executor,
        *,
        method_name_check: bool = False,
        reloader: Callable[[Sequence[ModelConfig]], Awaitable[None]] | None = None,
        on_runtime: Callable[[str, str, float], None] | None = None,
    ) -> None:
        """`on_runtime(model, api, seconds)` hears how long each model call took (batch queueing included, as in
        TF Serving's runtime_latency with batching)."""
        self.manager = manager
        self._executor = executor
        self._method_name_check = method_name_check
        self._reloader = reloader
        self._on_runtime = on_runtime
        self._traffic: dict[str, TrafficController] = {}
        self._shadows: set[asyncio.Task[None]] = set()

    # --- routing (canary releases) ----------------------------------------------------------------------------

    def _controller(self, name: str) -> TrafficController | None:
        split = self.manager.traffic_split(name)
        if split is None:
            return None
        controller = self._traffic.get(name)
        if controller is None or (controller.split is not split and controller.split != split):
            # A new or changed split (config reload) starts fresh: weights as configured, no history. An
            # identical split reloaded keeps its state (a rollback stays rolled back).
            controller = self._traffic[name] = TrafficController(name, split)
        controller.split = split
        return controller

    def _lease(self, request: ServableRequest, routing_key: RoutingKey | None) -> Lease:
        """Lease the version the request asks for; a request naming no version or label goes through the model's
        traffic split, if it has one (falling back to another arm while one is still loading)."""
        if request.version is not None or request.label is not None:
            return self.manager.lease(request)
        controller = self._controller(request.name)
        if controller is None:
            return self.manager.lease(request)
        key = routing_key(controller.split.sticky_key) if routing_key and controller.split.sticky_key else None
        arm = controller.route(key)
        for candidate in (arm, *controller.fallbacks(arm)):
            target = (ServableRequest(request.name, label=candidate) if isinstance(candidate, str)
                      else ServableRequest(request.name, candidate))
            try:
                lease = self.manager.lease(target)
            except ServingError:
                continue
            lease.route = (controller, candidate)
            return lease
        return self.manager.lease(request)

    def _shadow(self, lease: Lease, signature: str, inputs: Inputs, output_keys: Sequence[str]) -> None:
        """Mirror a routed predict to the split's shadow version: measured, answer dropped, never in the way."""
        if not isinstance(lease.route, tuple):
            return
        controller, _ = lease.route
        arm = controller.shadow_arm()
        if arm is None:
            return
        if len(self._shadows) >= MAX_SHADOWS_IN_FLIGHT:
            controller.shadow_dropped += 1
            return
        target = ServableRequest(lease.id.name, label=arm) if isinstance(arm, str) else ServableRequest(lease.id.name, arm)

        async def mirror() -> None:
            try:
                with self.manager.lease(target) as shadow_lease:
                    shadow_lease.route = (controller, arm)
                    await self._run(shadow_lease, signature, inputs, output_keys, None)
            except Exception:  # measured by _run; a shadow's failure is nobody's answer
                pass

        task = asyncio.get_running_loop().create_task(mirror())
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)

    async def _run(
        self, lease: Lease, signature: str, inputs: Inputs, output_keys: Sequence[str], timeout_s: float | None,
        api: str = "predict",
    ) -> dict[str, np.ndarray]:
        if not isinstance(lease.route, tuple):
            return await self._call(lease, signature, inputs, output_keys, timeout_s, api)
        controller, arm = lease.route
        started = time.monotonic()
        try:
            outputs = await self._call(lease, signature, inputs, output_keys, timeout_s, api)
        except ServingError:
            controller.record(arm, False, time.monotonic() - started)
            raise
        controller.record(arm, True, time.monotonic() - started)
        return outputs

    async def _call(
        self, lease: Lease, signature: str, inputs: Inputs, output_keys: Sequence[str], timeout_s: float | None,
        api: str,
    ) -> dict[str, np.ndarray]:
        if self._on_runtime is None:
            return await self._await_model(lease, signature, inputs, output_keys, timeout_s)
        started = time.perf_counter()
        outputs = await self._await_model(lease, signature, inputs, output_keys, timeout_s)
        self._on_runtime(lease.id.name, api, time.perf_counter() - started)
        return outputs

    async def _await_model(
        self, lease: Lease, signature: str, inputs: Inputs, output_keys: Sequence[str], timeout_s: float | None
    ) -> dict[str, np.ndarray]:
        future: Awaitable[dict[str, np.ndarray]]
        if lease.batcher is not None:
            future = lease.batcher.run(signature, inputs, output_keys)
        else:
            future = asyncio.get_running_loop().run_in_executor(
                self._executor, lease.servable.run, signature, inputs, output_keys
            )
        if timeout_s is None:
            return await future
        try:
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            raise ServingError(
                Code.DEADLINE_EXCEEDED,
                f"Deadline exceeded: the model did not answer within {timeout_s * 1000:.0f} ms. Raise the client's "
                "deadline (REST: --rest_api_timeout_in_ms) or send smaller requests.",
            ) from None

    # --- predict ----------------------------------------------------------------------------------------------

    async def predict(
        self,
        request: ServableRequest,
        signature_name: str,
        inputs: Inputs | InputDecoder,
        *,
        output_filter: Sequence[str] = (),
        timeout_s: float | None = None,
        routing_key: RoutingKey | None = None,
        info: RequestInfo | None = None,
    ) -> PredictResult:
        """Run a signature. `inputs` may be a decoder called with the signature (REST needs its dtypes to decode).
        `routing_key(name)` reads a request header / metadata value, for sticky traffic splits."""
        with self._lease(request, routing_key) as lease:
            if info is not None:
                info.version = lease.id.version
            sig = signature_of(lease, signature_name)
            if info is not None:
                info.signature = sig.name
            if self._method_name_check and sig.method_name not in (PREDICT_METHOD, CLASSIFY_METHOD, REGRESS_METHOD):
                raise ServingError(
                    Code.INTERNAL,
                    "Expected prediction signature method_name to be one of {tensorflow/serving/predict, "
                    f"tensorflow/serving/classify, tensorflow/serving/regress}}. Was: {sig.method_name}",
                )
            tensors = inputs(sig) if callable(inputs) else inputs
            check_inputs(sig, tensors)
            output_keys = select_outputs(sig, output_filter)
            self._shadow(lease, sig.name, tensors, output_keys)
            if info is not None:
                info.inputs = tensors
            outputs = await self._run(lease, sig.name, tensors, output_keys, timeout_s)
            if info is not None:
                info.outputs = outputs
            return PredictResult(lease.id, sig.name, outputs)

    # --- classify / regress -----------------------------------------------------------------------------------

    async def classify(
        self, request: ServableRequest, signature_name: str, examples: Sequence[bytes], *,
        timeout_s: float | None = None, routing_key: RoutingKey | None = None, info: RequestInfo | None = None,
    ) -> Classifications:
        """Classify serialized tf.Examples (context already merged in by the codec)."""
        with self._lease(request, routing_key) as lease:
            _note(info, lease)
            sig = example_signature_of(lease, signature_name)
            if info is not None:
                info.signature, info.examples = sig.name, examples
            classes = await self._classify(lease, sig, examples, timeout_s)
            if info is not None:
                info.results = classes
            return Classifications(lease.id, sig.name, classes)

    async def regress(
        self, request: ServableRequest, signature_name: str, examples: Sequence[bytes], *,
        timeout_s: float | None = None, routing_key: RoutingKey | None = None, info: RequestInfo | None = None,
    ) -> Regressions:
        with self._lease(request, routing_key) as lease:
            _note(info, lease)
            sig = example_signature_of(lease, signature_name)
            if info is not None:
                info.signature, info.examples = sig.name, examples
            values = await self._regress(lease, sig, examples, timeout_s)
            if info is not None:
                info.results = values
            return Regressions(lease.id, sig.name, values)

    async def multi_inference(
        self, request: ServableRequest, tasks: Sequence[InferenceTask], examples: Sequence[bytes],
        *, timeout_s: float | None = None, routing_key: RoutingKey | None = None, info: RequestInfo | None = None,
    ) -> tuple[ServableId, list[Classifications | Regressions]]:
        """Several classify/regress signatures of one model version over the same examples."""
        if not tasks:
            raise ServingError(Code.INVALID_ARGUMENT, "MultiInferenceRequest has no tasks. Add at least one task.")
        seen: set[str] = set()
        with self._lease(request, routing_key) as lease:
            _note(info, lease)
            results: list[Classifications | Regressions] = []
            for task in tasks:
                name = task.signature_name or DEFAULT_SIGNATURE
                if name in seen:
                    raise ServingError(Code.INVALID_ARGUMENT, f"Duplicate evaluation of signature: {name}")
                seen.add(name)
                sig = example_signature_of(lease, name)
                if task.method_name == CLASSIFY_METHOD:
                    results.append(Classifications(lease.id, name, await self._classify(lease, sig, examples, timeout_s)))
                elif task.method_name == REGRESS_METHOD:
                    results.append(Regressions(lease.id, name, await self._regress(lease, sig, examples, timeout_s)))
                else:
                    raise ServingError(
                        Code.UNIMPLEMENTED,
                        f"Unsupported signature method_name: {task.method_name}. Use {CLASSIFY_METHOD} or "
                        f"{REGRESS_METHOD}.",
                    )
            return lease.id, results

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
        self, lease: Lease, sig: Signature, examples: Sequence[bytes], timeout_s: float | None
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
        batch = self._examples_tensor(examples)
        out = await self._run(lease, sig.name, {key: batch}, wanted, timeout_s, "classify")
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
        self, lease: Lease, sig: Signature, examples: Sequence[bytes], timeout_s: float | None
    ) -> list[float]:
        key = self._example_input(sig, REGRESS_METHOD, "regression")
        if len(sig.outputs) != 1:
            raise ServingError(Code.INVALID_ARGUMENT, "Expected one output Tensor.")
        if "outputs" not in sig.outputs:
            raise ServingError(Code.INVALID_ARGUMENT, f"No regression outputs found in SignatureDef: {sig.name}")
        batch = self._examples_tensor(examples)
        out = (await self._run(lease, sig.name, {key: batch}, ["outputs"], timeout_s, "regress"))["outputs"]
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

    @staticmethod
    def _examples_tensor(examples: Sequence[bytes]) -> np.ndarray:
        if not examples:
            raise ServingError(Code.INVALID_ARGUMENT, "Input is empty.")
        batch = np.empty(len(examples), dtype=object)
        batch[:] = list(examples)
        return batch

    # --- metadata / status ------------------------------------------------------------------------------------

    def metadata(self, request: ServableRequest, info: RequestInfo | None = None) -> tuple[ServableId, Mapping[str, Any]]:
        with self.manager.lease(request) as lease:
            _note(info, lease)
            return lease.id, lease.servable.metadata()

    def status(self, name: str, version: int | None = None) -> list[VersionStatus]:
        return self.manager.status(name, version)

    def models(self) -> list[tuple[str, list[VersionStatus], dict[str, int], dict[str, Any] | None]]:
        """Every served model with its versions, labels and traffic split state (pyserving's GET /v1/models)."""
        out = []
        for name in self.manager.model_names():
            try:
                statuses = self.manager.status(name)
            except ServingError:
                statuses = []
            controller = self._controller(name)
            out.append((name, statuses, self.manager.labels(name), controller.describe() if controller else None))
        return out

    def traffic_controllers(self) -> list[tuple[str, TrafficController]]:
        return list(self._traffic.items())

    def unready_models(self) -> dict[str, str]:
        """Configured models without an AVAILABLE version, and why (readiness)."""
        return self.manager.unavailable_models()

    async def reload_config(self, models: Sequence[ModelConfig]) -> None:
        """Replace the served model list (HandleReloadConfigRequest)."""
        if self._reloader is None:
            raise ServingError(Code.UNIMPLEMENTED, "This server does not support configuration reloads.")
        await self._reloader(models)
