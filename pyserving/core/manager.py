"""ModelManager: owns every loaded servable, reconciles aspired versions with loaded ones, hands out leases.

Loading is reconciliation: a source reports the complete set of versions each model should serve
(`set_aspired_versions`), and `reconcile_once()` moves toward it with the availability-preserving steps of
`transitions.next_actions`.

Concurrency contract: `lease()`, `status()` and the other readers may be called from any thread (the event loop
calls them on every request) and never wait for a load. `reconcile_once()`, `set_models()` and `unload_all()` do
or trigger the slow work and must be called from one control thread at a time, never from the event loop. A
version is unloaded only after every lease on it is released.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from pyserving.core.batching import Batcher
from pyserving.core.ids import ServableId, ServableRequest
from pyserving.core.states import ServableState, VersionStatus
from pyserving.core.transitions import VersionSnapshot, next_actions
from pyserving.errors import Code, PermanentError, ServingError
from pyserving.malloc import release_free_memory
from pyserving.options import LifecycleOptions, ModelConfig, RuntimeOptions, TrafficSplit
from pyserving.runtimes.base import Runtime, Servable

log = logging.getLogger("pyserving.manager")

LoadObserver = Callable[[ServableId, str, float, bool], None]
"""(version, its directory, seconds the attempt took, whether it succeeded), from the control thread."""
AttachBatcher = Callable[[ModelConfig, ServableId, str, Servable], Batcher | None]
"""(model, version, its directory, loaded servable) -> the version's batcher, or None to serve it unbatched."""


class _Version:
    __slots__ = ("id", "path", "state", "error", "servable", "batcher", "leases", "attempts", "retry_at")

    def __init__(self, sid: ServableId, path: str) -> None:
        self.id = sid
        self.path = path
        self.state = ServableState.START
        self.error: ServingError | None = None
        self.servable: Servable | None = None
        self.batcher: Batcher | None = None
        self.leases = 0
        self.attempts = 0
        self.retry_at = 0.0  # monotonic time of the next load attempt while LOADING between retries


class _Model:
    __slots__ = ("config", "versions", "aspired", "labels", "latest", "removed", "unloaded")

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.versions: dict[int, _Version] = {}
        self.aspired: dict[int, str] = {}
        self.labels: dict[str, int] = {}
        self.latest: _Version | None = None  # highest AVAILABLE version: the hot path reads only this
        self.removed = False
        self.unloaded = False  # explicitly unloaded (model repository extension): aspires nothing until loaded


class Lease:
    """A hold on one AVAILABLE servable for the duration of a request. Release exactly once (use `with`)."""

    __slots__ = ("id", "servable", "batcher", "_manager", "_version")

    def __init__(self, manager: ModelManager, version: _Version) -> None:
        assert version.servable is not None
        self.id = version.id
        self.servable: Servable = version.servable
        self.batcher: Batcher | None = version.batcher
        self._manager = manager
        self._version = version

    def release(self) -> None:
        self._manager._release(self._version)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


ENDED_VERSIONS_KEPT = 3
"""Ended versions (unloaded, or failed for good) whose status a model keeps; older ones are forgotten."""


class ModelManager:
    """Loads, serves and unloads model versions; see the module docstring for the concurrency contract."""

    def __init__(
        self,
        models: Sequence[ModelConfig],
        runtime_options: RuntimeOptions,
        runtime_for: Callable[[str], Runtime],
        lifecycle: LifecycleOptions | None = None,
        attach_batcher: AttachBatcher | None = None,
        on_load: LoadObserver | None = None,
        on_forget: Callable[[ServableId, str], None] | None = None,
    ) -> None:
        """`on_forget(id, path)` hears of each version the manager stops remembering (its status is gone), so that
        what is kept per version elsewhere (metric series) can go too."""
        self._lifecycle = lifecycle or LifecycleOptions()
        self._attach_batcher = attach_batcher
        self._on_load = on_load
        self._on_forget = on_forget
        self._models: dict[str, _Model] = {}
        self._runtime_options = runtime_options
        self._runtime_for = runtime_for
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)
        self._loaders = (
            ThreadPoolExecutor(self._lifecycle.num_load_threads, thread_name_prefix="pyserving-load")
            if self._lifecycle.num_load_threads > 1 else None
        )
        self.set_models(models)

    # --- control path -------------------------------------------------------------------------------------

    def set_models(self, models: Sequence[ModelConfig]) -> None:
        """The complete model list (a config reload). New models are added; models that left are unloaded by the
        next reconcile; the others keep serving, with their new policy, labels and settings."""
        with self._lock:
            wanted = {m.name: m for m in models}
            for name, model in self._models.items():
                if name not in wanted:
                    model.removed = True
                    model.aspired = {}
            rebatch: list[tuple[ModelConfig, _Version]] = []
            for name, config in wanted.items():
                model = self._models.get(name)
                if model is None or model.removed:
                    model = self._models[name] = _Model(config)
                elif model.config.batching != config.batching:
                    rebatch += [(config, v) for v in model.versions.values()
                                if v.state == ServableState.AVAILABLE and v.servable is not None]
                model.config = config
        for config, version in rebatch:
            self._rebatch(config, version)

    def _rebatch(self, config: ModelConfig, version: _Version) -> None:
        """A reload changed the model's batching_parameters: give the loaded version a new batcher without
        reloading the model (what `pyserving batching tune` relies on). Requests that leased the old batcher
        finish in it; it leaves the batch scheduler once its queues are empty."""
        if self._attach_batcher is None or version.servable is None:
            return
        try:
            batcher = self._attach_batcher(config, version.id, version.path, version.servable)
        except ServingError as exc:
            log.error("Keeping the old batching parameters of %s: %s", version.id, exc.message)
            return
        with self._lock:
            if version.state != ServableState.AVAILABLE:
                stale, old = batcher, None  # unloaded meanwhile: the unload closed the old one
            else:
                stale, (old, version.batcher) = None, (version.batcher, batcher)
        for retired in (stale, old):
            if retired is not None:
                retired.retire()
        log.info("New batching parameters for servable version %s: %s", version.id,
                 batcher.options if batcher is not None else "unbatched")

    def is_complete(self, model: ModelConfig, version_dir: str) -> bool:
        """Whether the model's runtime finds `version_dir` completely written (an unknown platform: yes, so the
        load reports it)."""
        try:
            runtime = self._runtime_for(model.platform)
        except ServingError:
            return True
        return runtime.is_complete(version_dir)

    def set_aspired_versions(self, name: str, versions: Mapping[int, str]) -> None:
        """The complete set of versions (version -> directory) that should be served; others get unloaded."""
        with self._lock:
            model = self._models.get(name)
            if model is None or model.removed or model.unloaded:
                return
            before, model.aspired = model.aspired, dict(versions)
            for v, path in versions.items():
                known = model.versions.get(v)
                # A version that ended comes back as a new load when it is aspired again after leaving (an
                # unloaded version, or a broken export replaced by a fixed one); a failed version that stayed
                # aspired is not retried beyond its load retries, as in TF Serving.
                if known is None or (known.state == ServableState.END and (known.error is None or v not in before)):
                    model.versions[v] = _Version(ServableId(name, v), path)

    def unload_model(self, name: str) -> None:
        """Make a configured model aspire nothing, whatever the source reports, until `load_model`; the next
        reconcile unloads its versions (each once its in-flight requests are done). It stays unloaded through
        config reloads that keep it; removing it from the config and adding it back loads it afresh."""
        with self._lock:
            model = self._configured(name)
            model.unloaded = True
            model.aspired = {}

    def load_model(self, name: str) -> None:
        """Undo `unload_model`: the model takes the source's next report again. Versions whose load failed for good
        are forgotten as aspired, so that report loads them afresh, and versions waiting for a load retry are due
        now (an explicit load is a retry)."""
        with self._lock:
            model = self._configured(name)
            model.unloaded = False
            for ver in model.versions.values():
                if ver.state == ServableState.LOADING and ver.attempts:
                    ver.retry_at = 0.0
            model.aspired = {
                v: path for v, path in model.aspired.items()
                if not ((ver := model.versions.get(v)) is not None and ver.state == ServableState.END
                        and ver.error is not None)
            }

    def is_unloaded(self, name: str) -> bool:
        """Whether `name` was explicitly unloaded (and not loaded since)."""
        with self._lock:
            model = self._models.get(name)
            return model is not None and not model.removed and model.unloaded

    def _configured(self, name: str) -> _Model:
        model = self._models.get(name)
        if model is None or model.removed:
            raise ServingError(
                Code.NOT_FOUND,
                f"Model {name} is not in the model config; only configured models can be loaded or unloaded. Add it "
                "to --model_config_file (or reload the config with it) first.",
            )
        return model

    def reconcile_once(self) -> bool:
        """Take every step the snapshot allows now: loads (and due retries), then the unloads they enable.
        True if anything changed."""
        changed = False
        self._drop_unaspired_pending()
        loads = self._due_loads()
        if loads:
            changed = True
            if self._loaders is None:
                for version in loads:
                    self._load(version)
            else:
                list(self._loaders.map(self._load, loads))
        for version in self._unloads():
            self._unload(version)
            changed = True
        self._forget_ended()
        return changed

    def _snapshot(self, model: _Model) -> dict[int, VersionSnapshot]:
        return {
            v: VersionSnapshot(ver.state, v in model.aspired, ver.error is not None)
            for v, ver in model.versions.items()
        }

    def _due_loads(self) -> list[_Version]:
        now = time.monotonic()
        with self._lock:
            due = []
            for model in self._models.values():
                for v in next_actions(self._snapshot(model)).load:
                    due.append(model.versions[v])
                due.extend(
                    ver for v, ver in model.versions.items()
                    if ver.state == ServableState.LOADING and ver.attempts and ver.retry_at <= now and v in model.aspired
                )
            for version in due:
                version.state = ServableState.LOADING
            return due

    def _drop_unaspired_pending(self) -> None:
        """Versions no longer aspired that never became AVAILABLE (not started yet, or waiting for a load retry)
        simply end: there is nothing to unload."""
        with self._lock:
            for model in self._models.values():
                for v, ver in model.versions.items():
                    if v not in model.aspired and (
                        ver.state == ServableState.START or (ver.state == ServableState.LOADING and ver.attempts)
                    ):
                        ver.state = ServableState.END

    def _unloads(self) -> list[_Version]:
        with self._lock:
            return [
                model.versions[v]
                for model in self._models.values()
                for v in next_actions(self._snapshot(model)).unload
            ]

    def _forget_ended(self) -> None:
        """Forget removed models once every version ended, and a model's ended versions beyond the newest few
        (status still shows a version that just went away, as TF Serving's does; a server swapping versions for
        months must not keep every one: measured ~0.24 MB a version with its metric series)."""
        forgotten: list[_Version] = []
        with self._lock:
            for name, model in list(self._models.items()):
                if model.removed and all(v.state == ServableState.END for v in model.versions.values()):
                    forgotten.extend(model.versions.values())
                    del self._models[name]
                    continue
                ended = sorted((v for v, ver in model.versions.items()
                                if ver.state == ServableState.END and v not in model.aspired), reverse=True)
                forgotten.extend(model.versions.pop(v) for v in ended[ENDED_VERSIONS_KEPT:])
        if self._on_forget is not None:
            for version in forgotten:
                try:
                    self._on_forget(version.id, version.path)
                except Exception:  # bookkeeping elsewhere must never break the lifecycle
                    log.exception("Forgetting %s failed", version.id)

    def _load(self, version: _Version) -> None:
        model = self._models[version.id.name]
        started = time.monotonic()
        version.attempts += 1
        log.info("Loading servable version %s from %s (attempt %d)", version.id, version.path, version.attempts)
        try:
            runtime = self._runtime_for(model.config.platform)
            options = self._runtime_options
            servable = runtime.load(version.path, dataclasses.replace(options, defer_warmup=True))
            try:
                batcher = self._attach_batcher(model.config, version.id, version.path, servable) if self._attach_batcher else None
                if options.enable_model_warmup:
                    # Warm-up goes the way requests will go: through the batcher when there is one.
                    run = batcher.run_blocking if batcher is not None else servable.run
                    servable.warm_up(run, options.num_request_iterations_for_warmup)
            except BaseException:
                servable.unload()
                raise
        except ServingError as exc:
            self._observe_load(version, started, ok=False)
            self._fail(version, exc)
            return
        except Exception as exc:  # a broken model must never take the server down
            self._observe_load(version, started, ok=False)
            self._fail(version, ServingError(Code.UNKNOWN, f"{type(exc).__name__}: {exc}"))
            return
        self._observe_load(version, started, ok=True)
        with self._lock:
            if version.id.version not in model.aspired:
                # Unaspired while loading (removed from disk or config): never serve it.
                pending_unload = servable
            else:
                pending_unload = None
                version.servable = servable
                version.batcher = batcher
                version.state = ServableState.AVAILABLE
                version.error = None
                self._refresh_latest(model)
        if pending_unload is not None:
            pending_unload.unload()
            with self._lock:
                version.state = ServableState.END
            return
        log.info("Successfully loaded servable version %s in %.2f s", version.id, time.monotonic() - started)

    def _observe_load(self, version: _Version, started: float, *, ok: bool) -> None:
        if self._on_load is not None:
            try:
                self._on_load(version.id, version.path, time.monotonic() - started, ok)
            except Exception:  # metrics must never fail a load
                log.exception("Recording the load of %s failed", version.id)

    def _shown(self, error: ServingError, version_path: str) -> ServingError:
        """The error as clients see it in the model's status: paths relative to the model's base path, so that
        a status call does not tell a stranger how the server's disks are laid out."""
        base = os.path.dirname(os.path.abspath(version_path)).rstrip("/") + "/"
        if self._lifecycle.absolute_paths_in_errors or base not in error.message:
            return error
        return ServingError(error.code, error.message.replace(base, ""))

    def _fail(self, version: _Version, cause: ServingError) -> None:
        retries = self._lifecycle.max_num_load_retries
        error = self._shown(cause, version.path)
        # A permanent error (python models not allowed, a framework not installed) would fail every retry the same
        # way: retrying would only keep the version LOADING for retries x --load_retry_interval.
        permanent = isinstance(cause, PermanentError)
        with self._lock:
            if (not permanent and version.attempts <= retries
                    and version.id.version in self._models[version.id.name].aspired):
                version.retry_at = time.monotonic() + max(self._lifecycle.load_retry_interval_s, 0.0)
                version.error = error
                log.warning(
                    "Loading servable version %s failed (attempt %d of %d), retrying in %.1f s: %s",
                    version.id, version.attempts, retries + 1, self._lifecycle.load_retry_interval_s, cause.message,
                )
                return
            version.state = ServableState.END
            version.error = error
        log.error("Loading servable version %s from %s failed: %s", version.id, version.path, cause.message)

    def _unload(self, version: _Version) -> None:
        model = self._models[version.id.name]
        with self._lock:
            version.state = ServableState.UNLOADING
            self._refresh_latest(model)
            while version.leases:
                self._drained.wait()
            servable, version.servable = version.servable, None
            batcher, version.batcher = version.batcher, None
        log.info("Unloading servable version %s", version.id)
        try:
            if batcher is not None:
                batcher.close()  # its queues are empty: every request held a lease until it had its answer
            if servable is not None:
                servable.unload()
            del servable, batcher
            release_free_memory()  # a model's graph sits in reference cycles and freed heap: hand both back
        finally:
            with self._lock:
                version.state = ServableState.END
            log.info("Done unloading servable version %s", version.id)

    def unload_all(self) -> None:
        """Unaspire and unload everything (shutdown); waits for in-flight requests to release their leases."""
        with self._lock:
            for model in self._models.values():
                model.aspired = {}
        self.reconcile_once()
        if self._loaders is not None:
            self._loaders.shutdown(wait=False)

    def _refresh_latest(self, model: _Model) -> None:
        available = [v for v in model.versions.values() if v.state == ServableState.AVAILABLE]
        model.latest = max(available, key=lambda v: v.id.version) if available else None

    def set_labels(self, name: str, labels: Mapping[str, int], *, allow_unavailable: bool = False) -> None:
        """Replace a model's version labels, with TF Serving's rules: a label may point only at an AVAILABLE
        version, except that with `allow_unavailable` a NEW label (not moving an existing one) may point anywhere.
        Moving a label to a version that is not serving would drop traffic, so that is always refused."""
        with self._lock:
            model = self._models.get(name)
            if model is None:
                raise ServingError(Code.NOT_FOUND, f"Could not find any versions of model {name}")
            if model.unloaded:
                # Nothing is served, so no traffic can be dropped: the labels take effect when it is loaded.
                model.labels = dict(labels)
                return
            for label, version in labels.items():
                ver = model.versions.get(version)
                if ver is not None and ver.state == ServableState.AVAILABLE:
                    continue
                is_new = label not in model.labels or model.labels[label] == version
                if allow_unavailable and is_new:
                    continue
                raise ServingError(
                    Code.FAILED_PRECONDITION,
                    f"Request to assign label to version {version} of model {name}, which is not currently "
                    "available for inference",
                )
            model.labels = dict(labels)

    # --- request path -------------------------------------------------------------------------------------

    def lease(self, request: ServableRequest) -> Lease:
        """Resolve the request to an AVAILABLE version and hold it; raise NOT_FOUND/INVALID_ARGUMENT as TF Serving."""
        with self._lock:
            model = self._models.get(request.name)
            version: _Version | None
            if model is None or model.removed:
                version = None
            elif request.label is not None:
                number = model.labels.get(request.label)
                if number is None:
                    raise ServingError(
                        Code.INVALID_ARGUMENT, f"Unrecognized servable version label: {request.label}"
                    )
                version = model.versions.get(number)
                request = ServableRequest(request.name, number)  # TF Serving reports the resolved version
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
            return [
                VersionStatus(v.id.version, v.state, v.error if v.state == ServableState.END else None)
                for v in chosen
            ]

    def traffic_split(self, name: str) -> TrafficSplit | None:
        model = self._models.get(name)  # a dict read: no lock needed for one reference
        return model.config.traffic_split if model is not None else None

    def batchers(self) -> list[tuple[ServableId, Batcher]]:
        """Every AVAILABLE version's batcher (for metrics)."""
        with self._lock:
            return [(v.id, v.batcher) for m in self._models.values() for v in m.versions.values()
                    if v.batcher is not None]

    def labels(self, name: str) -> dict[str, int]:
        with self._lock:
            model = self._models.get(name)
            return dict(model.labels) if model is not None else {}

    def platform(self, name: str) -> str | None:
        """The platform `name` is configured with (None: no such model)."""
        with self._lock:
            model = self._models.get(name)
            return model.config.platform if model is not None and not model.removed else None

    def model_names(self) -> list[str]:
        with self._lock:
            return sorted(n for n, m in self._models.items() if not m.removed)

    def unavailable_models(self, names: Sequence[str] | None = None) -> dict[str, str]:
        """Models (of `names`, default all) with no AVAILABLE version: name -> why. A model still loading or
        waiting for a retry says so. An explicitly unloaded model is left out: serving nothing is what the operator
        asked for, and must not make the whole server unready."""
        with self._lock:
            out = {}
            for name, model in self._models.items():
                if model.removed or model.unloaded or (names is not None and name not in names) \
                        or model.latest is not None:
                    continue
                pending = [v for v in model.versions.values() if v.state in (ServableState.START, ServableState.LOADING)]
                errors = [v.error.message for v in model.versions.values() if v.error is not None]
                if pending:
                    out[name] = "still loading" + (f" (last attempt failed: {errors[-1]})" if errors else "")
                elif errors:
                    out[name] = errors[-1]
                elif not model.versions:
                    out[name] = f"no version found under base path {model.config.base_path}"
                else:
                    out[name] = "no version available"
            return out

    def is_settled(self, names: Sequence[str] | None = None) -> bool:
        """True when no version of these models is waiting to load (START, or LOADING / retrying)."""
        with self._lock:
            return not any(
                v.state in (ServableState.START, ServableState.LOADING)
                for name, model in self._models.items()
                if names is None or name in names
                for v in model.versions.values()
            )
