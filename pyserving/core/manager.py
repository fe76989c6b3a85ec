"""ModelManager: owns every loaded servable, reconciles aspired versions with loaded ones, hands out leases.

Concurrency contract: `lease()` and `status()` may be called from any thread (the event loop calls them on every
request) and never block on a load. `reconcile_once()` does the slow work (loads, unloads) and must be called from
one thread at a time, never from the event loop. A version is unloaded only after every lease on it is released.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from pyserving.core.ids import ServableId, ServableRequest
from pyserving.core.states import ServableState, VersionStatus
from pyserving.errors import Code, ServingError
from pyserving.options import ModelConfig, RuntimeOptions
from pyserving.runtimes.base import Runtime, Servable

log = logging.getLogger("pyserving.manager")


class _Version:
    __slots__ = ("id", "path", "state", "error", "servable", "leases")

    def __init__(self, sid: ServableId, path: str) -> None:
        self.id = sid
        self.path = path
        self.state = ServableState.START
        self.error: ServingError | None = None
        self.servable: Servable | None = None
        self.leases = 0


class _Model:
    __slots__ = ("config", "versions", "aspired", "labels", "latest")

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.versions: dict[int, _Version] = {}
        self.aspired: dict[int, str] = {}
        self.labels: dict[str, int] = dict(config.version_labels)
        self.latest: _Version | None = None  # highest AVAILABLE version: the hot path reads only this


class Lease:
    """A hold on one AVAILABLE servable for the duration of a request. Release exactly once (use `with`)."""

    __slots__ = ("id", "servable", "_manager", "_version")

    def __init__(self, manager: ModelManager, version: _Version) -> None:
        assert version.servable is not None
        self.id = version.id
        self.servable: Servable = version.servable
        self._manager = manager
        self._version = version

    def release(self) -> None:
        self._manager._release(self._version)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class ModelManager:
    """Loads, serves and unloads model versions; see the module docstring for the concurrency contract."""

    def __init__(
        self,
        models: Sequence[ModelConfig],
        runtime_options: RuntimeOptions,
        runtime_for: Callable[[str], Runtime],
    ) -> None:
        self._models = {m.name: _Model(m) for m in models}
        self._runtime_options = runtime_options
        self._runtime_for = runtime_for
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)

    # --- control path -------------------------------------------------------------------------------------

    def set_aspired_versions(self, name: str, versions: Mapping[int, str]) -> None:
        """The complete set of versions (version -> directory) that should be served; others get unloaded."""
        with self._lock:
            model = self._models[name]
            model.aspired = dict(versions)
            for v, path in versions.items():
                known = model.versions.get(v)
                # A version that was unloaded may come back; one that failed is not retried (as in TF Serving).
                if known is None or (known.state == ServableState.END and known.error is None):
                    model.versions[v] = _Version(ServableId(name, v), path)

    def reconcile_once(self) -> bool:
        """Load every aspired version not loaded yet, then unload versions no longer aspired. True if any changed.

        Loads come first, so a model that swaps versions is never without an AVAILABLE one.
        """
        changed = False
        for version in self._pending(ServableState.START):
            self._load(version)
            changed = True
        for version in self._unaspired():
            self._unload(version)
            changed = True
        return changed

    def _pending(self, state: ServableState) -> list[_Version]:
        with self._lock:
            return [
                ver
                for model in self._models.values()
                for v, ver in sorted(model.versions.items(), reverse=True)
                if ver.state == state and v in model.aspired
            ]

    def _unaspired(self) -> list[_Version]:
        with self._lock:
            return [
                ver
                for model in self._models.values()
                for v, ver in sorted(model.versions.items())
                if ver.state == ServableState.AVAILABLE and v not in model.aspired
            ]

    def _load(self, version: _Version) -> None:
        model = self._models[version.id.name]
        with self._lock:
            version.state = ServableState.LOADING
        started = time.monotonic()
        log.info("Loading servable version %s from %s", version.id, version.path)
        try:
            runtime = self._runtime_for(model.config.platform)
            servable = runtime.load(version.path, self._runtime_options)
        except ServingError as exc:
            self._fail(version, exc)
            return
        except Exception as exc:  # a broken model must never take the server down
            self._fail(version, ServingError(Code.UNKNOWN, f"{type(exc).__name__}: {exc}"))
            return
        with self._lock:
            version.servable = servable
            version.state = ServableState.AVAILABLE
            self._refresh_latest(model)
        log.info("Successfully loaded servable version %s in %.2f s", version.id, time.monotonic() - started)

    def _fail(self, version: _Version, error: ServingError) -> None:
        log.error("Loading servable version %s from %s failed: %s", version.id, version.path, error.message)
        with self._lock:
            version.state = ServableState.END
            version.error = error

    def _unload(self, version: _Version) -> None:
        model = self._models[version.id.name]
        with self._lock:
            version.state = ServableState.UNLOADING
            self._refresh_latest(model)
            while version.leases:
                self._drained.wait()
            servable, version.servable = version.servable, None
        log.info("Unloading servable version %s", version.id)
        try:
            if servable is not None:
                servable.unload()
        finally:
            with self._lock:
                version.state = ServableState.END

    def unload_all(self) -> None:
        """Unaspire and unload everything (shutdown); waits for in-flight requests to release their leases."""
        with self._lock:
            for model in self._models.values():
                model.aspired = {}
        self.reconcile_once()

    def _refresh_latest(self, model: _Model) -> None:
        available = [v for v in model.versions.values() if v.state == ServableState.AVAILABLE]
        model.latest = max(available, key=lambda v: v.id.version) if available else None

    # --- request path -------------------------------------------------------------------------------------

    def lease(self, request: ServableRequest) -> Lease:
        """Resolve the request to an AVAILABLE version and hold it; raise NOT_FOUND/INVALID_ARGUMENT as TF Serving."""
        with self._lock:
            model = self._models.get(request.name)
            version: _Version | None
            if model is None:
                version = None
            elif request.label is not None:
                number = model.labels.get(request.label)
                if number is None:
                    raise ServingError(
                        Code.INVALID_ARGUMENT, f"Unrecognized servable version label: {request.label}"
                    )
                version = model.versions.get(number)
            elif request.version is not None:
                version = model.versions.get(request.version)
            else:
                version = model.latest
            if version is None or version.state != ServableState.AVAILABLE:
                raise ServingError(Code.NOT_FOUND, f"Servable not found for request: {request.describe()}")
            version.leases += 1
            return Lease(self, version)

    def _release(self, version: _Version) -> None:
        with self._lock:
            version.leases -= 1
            if version.leases == 0 and version.state == ServableState.UNLOADING:
                self._drained.notify_all()

    def status(self, name: str, version: int | None = None) -> list[VersionStatus]:
        """Every tracked version of `name`, highest first (or just `version`), as GetModelStatus reports them."""
        with self._lock:
            model = self._models.get(name)
            if model is None or not model.versions:
                raise ServingError(Code.NOT_FOUND, f"Could not find any versions of model {name}")
            if version is not None:
                ver = model.versions.get(version)
                if ver is None:
                    raise ServingError(Code.NOT_FOUND, f"Could not find version {version} of model {name}")
                chosen = [ver]
            else:
                chosen = [model.versions[v] for v in sorted(model.versions, reverse=True)]
            return [VersionStatus(v.id.version, v.state, v.error) for v in chosen]

    def model_names(self) -> list[str]:
        return sorted(self._models)

    def unavailable_models(self) -> dict[str, str]:
        """Models with no AVAILABLE version: name -> why (the last load error, or that none was found)."""
        with self._lock:
            out = {}
            for name, model in self._models.items():
                if model.latest is not None:
                    continue
                errors = [v.error.message for v in model.versions.values() if v.error is not None]
                if errors:
                    out[name] = errors[-1]
                elif not model.versions:
                    out[name] = f"no version found under base path {model.config.base_path}"
                else:
                    out[name] = "still loading"
            return out
