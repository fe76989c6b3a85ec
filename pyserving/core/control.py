"""The control plane: start-up loading, config reloads, file-system and config-file polling, and what the server
reports about its models (status, readiness, the model list). Front ends call it for ModelService and health;
the data plane (InferenceService) never waits on it.

Every load, unload, poll and reload runs on one control thread, one at a time: requests never wait on it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from pyserving.core.canary import TrafficControllers
from pyserving.core.lifecycle import ModelLifecycle
from pyserving.core.manager import ModelManager
from pyserving.core.states import VersionStatus
from pyserving.errors import Code, ServingError
from pyserving.options import ModelConfig

log = logging.getLogger("pyserving.control")
T = TypeVar("T")

ConfigParser = Callable[[str], Sequence[ModelConfig]]
"""Text of a ModelServerConfig -> models (raises ValueError saying what is wrong)."""
ConfigLoader = Callable[[], Sequence[ModelConfig]]
"""Reads the --model_config_file again (raises on a file that cannot be read or parsed)."""
ModelsListener = Callable[[Sequence[ModelConfig]], Any]
"""Hears the model list each time it changes (request loggers follow it); may return an awaitable."""


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One served model as GET /v1/models shows it."""

    name: str
    versions: list[VersionStatus]
    labels: dict[str, int]
    traffic_split: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class RepositoryModel:
    """One configured model as the model repository index shows it."""

    name: str
    versions: list[VersionStatus]
    """Every tracked version, lowest first (none: nothing found or loaded yet, or all forgotten)."""
    unloaded: bool
    """Explicitly unloaded (`unload_model`) and not loaded since."""
    why_unavailable: str
    """Why no version is AVAILABLE ("" when one is, or when it was unloaded)."""


REPOSITORY_LOAD_WAIT_S = 300.0
"""The longest `load_model` waits for a model to settle (load retries included) before answering that it is still
loading. The control thread is held meanwhile, as by a config reload."""


@dataclass(frozen=True, slots=True)
class GaugeValues:
    """Live state for the metrics gauges (see observability.metrics.Gauges)."""

    states: list[tuple[str, int, str]]
    queue_lengths: list[tuple[str, int, int]]
    canary_weights: list[tuple[str, str, float]]


class ControlPlane:
    """Owns the lifecycle; see the module docstring."""

    def __init__(
        self,
        manager: ModelManager,
        lifecycle: ModelLifecycle,
        traffic: TrafficControllers,
        *,
        config_parser: ConfigParser | None = None,
        config_loader: ConfigLoader | None = None,
        config_file: str = "",
        on_models: ModelsListener | None = None,
    ) -> None:
        """`config_loader` re-reads `config_file` (named in the log lines of the config-file poll)."""
        self._manager = manager
        self._lifecycle = lifecycle
        self._traffic = traffic
        self._config_parser = config_parser
        self._config_loader = config_loader
        self._config_file = config_file or "the model config file"
        self._on_models = on_models
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pyserving-control")
        self._polls: list[asyncio.Task[None]] = []

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    # --- start, reload, stop ----------------------------------------------------------------------------------

    async def load_initial(self) -> None:
        """Load every configured model; raise ServingError naming each one that did not become AVAILABLE (and
        unload what did load)."""
        models = self._lifecycle.models
        await self._notify(models)
        try:
            await self._call(self._lifecycle.check, models)
            await self._call(self._lifecycle.load_until_settled, [m.name for m in models])
        except ServingError:
            await self._call(self._manager.unload_all)
            raise
        unavailable = self._manager.unavailable_models()
        if unavailable:
            await self._call(self._manager.unload_all)
            details = "; ".join(f"{name}: {why}" for name, why in sorted(unavailable.items()))
            raise ServingError(Code.UNKNOWN, f"{len(unavailable)} servable(s) did not become available: {details}")

    async def reload(self, models: Sequence[ModelConfig]) -> None:
        """Replace the model list; raises ServingError when a new model cannot be served (what was serving keeps
        serving)."""
        await self._call(self._lifecycle.reload, tuple(models))
        await self._notify(models)

    async def reload_text(self, text: str) -> None:
        """A ModelServerConfig as text (HandleReloadConfigRequest)."""
        if self._config_parser is None:
            raise ServingError(Code.UNIMPLEMENTED, "This server cannot parse model configurations.")
        try:
            models = self._config_parser(text)
        except ValueError as exc:
            raise ServingError(Code.INVALID_ARGUMENT, str(exc)) from None
        await self.reload(models)

    async def _notify(self, models: Sequence[ModelConfig]) -> None:
        if self._on_models is not None:
            pending = self._on_models(models)
            if asyncio.iscoroutine(pending):
                await pending

    def start_polling(self, file_system_every_s: float, config_file_every_s: float) -> None:
        if file_system_every_s > 0:
            self._polls.append(asyncio.create_task(self._poll_versions(file_system_every_s)))
        if self._config_loader is not None and config_file_every_s > 0:
            self._polls.append(asyncio.create_task(self._poll_config(config_file_every_s)))

    async def _poll_versions(self, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                await self._call(self._lifecycle.poll_once)
            except Exception:  # a poll must never end polling
                log.exception("File-system poll failed")

    async def _poll_config(self, every_s: float) -> None:
        assert self._config_loader is not None
        while True:
            await asyncio.sleep(every_s)
            try:
                models = await self._call(self._config_loader)
            except Exception as exc:
                log.error("Ignoring %s: %s. The current configuration keeps serving.", self._config_file, exc)
                continue
            if tuple(models) == self._lifecycle.models:
                continue
            try:
                await self.reload(models)
                log.info("Reloaded the model configuration from %s", self._config_file)
            except ServingError as exc:
                log.error("Reloading %s failed: %s", self._config_file, exc.message)

    async def stop(self) -> None:
        """Stop polling and unload every model (after the front ends have drained)."""
        for task in self._polls:
            task.cancel()
        await self._call(self._manager.unload_all)
        await self._notify(())
        self._thread.shutdown(wait=False)

    # --- the model repository extension: explicit unload and load ----------------------------------------------
    #
    # Only configured models can be unloaded or loaded: the config says what the server may serve, these calls
    # say whether it serves it now. An unloaded model stays unloaded through config reloads that keep it (a reload
    # must not undo an operator's unload behind their back, e.g. the config-file poll); removing it from the config
    # and adding it back loads it afresh.

    async def unload_model(self, name: str) -> None:
        """Stop serving every version of `name` until `load_model`; returns once they are unloaded (requests in
        flight on them finish first; new ones get NOT_FOUND). Unloading an unloaded model does nothing."""
        await self._call(self._unload_now, name)

    def _unload_now(self, name: str) -> None:
        self._manager.unload_model(name)
        self._manager.reconcile_once()
        log.info("Unloaded model %s on request; it serves nothing until it is loaded again", name)

    async def load_model(self, name: str, timeout_s: float | None = None) -> None:
        """Serve `name`'s configured versions again (and retry versions that failed); returns once it is AVAILABLE.
        Raises FAILED_PRECONDITION with the load error if it failed, DEADLINE_EXCEEDED if it is still loading after
        `timeout_s` (default and most REPOSITORY_LOAD_WAIT_S; it goes on loading)."""
        wait = REPOSITORY_LOAD_WAIT_S if timeout_s is None else min(timeout_s, REPOSITORY_LOAD_WAIT_S)
        deadline = time.monotonic() + wait
        await self._call(self._start_load, name)
        # The waiting happens here, on the event loop, between short steps on the control thread: polls, reloads
        # and other loads go on meanwhile (a version waiting out a load retry may take minutes).
        while not self._manager.is_settled([name]):
            if time.monotonic() >= deadline:
                raise ServingError(
                    Code.DEADLINE_EXCEEDED,
                    f"Model {name} is still loading after {wait:g} s; it goes on loading. Watch its state in the "
                    "repository index, or poll its readiness.",
                )
            await asyncio.sleep(0.05)
            await self._call(self._manager.reconcile_once)
        await self._call(self._finish_load, name)

    def _start_load(self, name: str) -> None:
        self._manager.load_model(name)
        self._lifecycle.poll_once()

    def _finish_load(self, name: str) -> None:
        failed = self._manager.unavailable_models([name])
        if failed:
            raise ServingError(Code.FAILED_PRECONDITION, f"Failed to load model {name}: {failed[name]}")
        self._lifecycle.apply_labels([name])
        log.info("Loaded model %s on request", name)

    async def repository(self) -> list[RepositoryModel]:
        """Every configured model, by name, with its versions' states (the model repository index). A coroutine
        (with nothing to wait for here) because a front-end process asks the model process for it."""
        unavailable = self._manager.unavailable_models()
        out = []
        for name, statuses in self._statuses():
            out.append(RepositoryModel(
                name, sorted(statuses, key=lambda s: s.version), self._manager.is_unloaded(name),
                unavailable.get(name, ""),
            ))
        return out

    # --- what the server reports ------------------------------------------------------------------------------

    def status(self, name: str, version: int | None = None) -> list[VersionStatus]:
        return self._manager.status(name, version)

    def models(self) -> list[ModelInfo]:
        """Every served model with its versions, labels and traffic split state (pyserving's GET /v1/models)."""
        out = []
        for name, statuses in self._statuses():
            controller = self._traffic.get(name)
            out.append(ModelInfo(name, statuses, self._manager.labels(name),
                                 controller.describe() if controller else None))
        return out

    def _statuses(self) -> list[tuple[str, list[VersionStatus]]]:
        """Every model with its versions' statuses (none for a model removed meanwhile)."""
        out = []
        for name in self._manager.model_names():
            try:
                out.append((name, self._manager.status(name)))
            except ServingError:
                out.append((name, []))
        return out

    def platform(self, name: str) -> str | None:
        """The platform a model is configured with (V2 metadata reports it); None for an unknown model."""
        return self._manager.platform(name)

    def unready_models(self) -> dict[str, str]:
        """Configured models without an AVAILABLE version, and why (readiness)."""
        return self._manager.unavailable_models()

    def gauges(self) -> GaugeValues:
        states = [(name, s.version, s.state.name) for name, statuses in self._statuses() for s in statuses]
        queues = [(sid.name, sid.version, b.queue_length) for sid, b in self._manager.batchers()]
        weights = [(name, str(arm), weight) for name, c in self._traffic.items() for arm, weight in c.weights.items()]
        return GaugeValues(states, queues, weights)
