"""ModelLifecycle: the control path in one place. Start-up load, file-system polls and config reloads all end in
the same steps: report aspired versions, reconcile, then apply version labels.

Every method is blocking and must run on the one control thread (never the event loop); the server serialises
them. Requests keep flowing through the manager's leases meanwhile.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence

from pyserving.core.manager import ModelManager
from pyserving.core.source import FileSystemSource, versions_on_disk
from pyserving.core.version_policy import aspired_versions
from pyserving.core.states import ServableState
from pyserving.errors import Code, ServingError
from pyserving.options import LifecycleOptions, ModelConfig

log = logging.getLogger("pyserving.lifecycle")


class ModelLifecycle:
    """Owns the model list, the source that watches it and the labels; drives the manager."""

    def __init__(self, manager: ModelManager, models: Sequence[ModelConfig], options: LifecycleOptions) -> None:
        self.manager = manager
        self.options = options
        self.models: tuple[ModelConfig, ...] = tuple(models)
        self.source = FileSystemSource(self.models, manager.set_aspired_versions, manager.is_complete)

    def poll_once(self) -> bool:
        """One file-system poll and one reconcile step. True if anything changed."""
        self.source.poll_once()
        return self.manager.reconcile_once()

    def load_until_settled(self, names: Sequence[str], *, timeout_s: float | None = None) -> None:
        """Poll and reconcile until no version of `names` is loading (retries included), then apply labels."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self.poll_once()
        while not self.manager.is_settled(names):
            if deadline is not None and time.monotonic() > deadline:
                break
            time.sleep(0.05)
            self.manager.reconcile_once()
        self.apply_labels(names)

    def apply_labels(self, names: Sequence[str] | None = None) -> None:
        for model in self.models:
            if names is None or model.name in names:
                self.manager.set_labels(
                    model.name, dict(model.version_labels),
                    allow_unavailable=self.options.allow_version_labels_for_unavailable_models,
                )

    def _check_labels(self, models: Sequence[ModelConfig]) -> None:
        """Refuse, before anything changes, a reload whose labels would have nowhere to send traffic: a label on a
        version the new policy will not serve, or an existing label moved onto a version not AVAILABLE now."""
        allow_new = self.options.allow_version_labels_for_unavailable_models
        for model in models:
            try:
                will_serve = set(aspired_versions(model.version_policy, versions_on_disk(model.base_path)))
            except OSError:
                will_serve = set()
            self._check_split(model, will_serve)
            if not model.version_labels:
                continue
            current = self.manager.labels(model.name)
            try:
                available = {
                    s.version for s in self.manager.status(model.name) if s.state == ServableState.AVAILABLE
                }
            except ServingError:
                available = set()
            for label, version in model.version_labels:
                if label in current and current[label] != version:
                    ok = version in available and version in will_serve
                else:
                    ok = version in will_serve or allow_new
                if ok:
                    continue
                raise ServingError(
                    Code.FAILED_PRECONDITION,
                    f"Request to assign label to version {version} of model {model.name}, which is not currently "
                    "available for inference. Serve the version first (a config whose policy includes it), then "
                    "point the label at it in a second reload.",
                )

    @staticmethod
    def _check_split(model: ModelConfig, will_serve: set[int]) -> None:
        """A traffic split may only send requests to versions that exist under the base path."""
        split = model.traffic_split
        if split is None:
            return
        labels = dict(model.version_labels)
        arms = [arm for arm, weight in split.arms if weight > 0] + ([split.shadow.arm] if split.shadow else [])
        for arm in arms:
            version = labels.get(arm) if isinstance(arm, str) else arm
            if version not in will_serve:
                found = ", ".join(map(str, sorted(will_serve))) or "none"
                raise ServingError(
                    Code.INVALID_ARGUMENT,
                    f"The traffic split of model {model.name} sends requests to version {version}, which is not "
                    f"under {model.base_path} (versions found: {found}). Export it first, or give it weight 0.",
                )

    def _check_base_paths(self, models: Sequence[ModelConfig]) -> None:
        """With --model_base_path_prefix, a model may only be served from under an allowed root (a config or an
        RPC reload must not point the server at arbitrary directories)."""
        roots = self.options.allowed_base_paths
        if not roots:
            return
        for model in models:
            if not any(_is_under(model.base_path, root) for root in roots):
                raise ServingError(
                    Code.PERMISSION_DENIED,
                    f"The base_path of model {model.name} is outside the directories this server may serve from "
                    f"(--model_base_path_prefix={','.join(roots)}). Move the model under one of them, or add its "
                    "directory to the flag.",
                )

    def check(self, models: Sequence[ModelConfig]) -> None:
        """Refuse a configuration whose labels or traffic splits point nowhere, or whose base paths are outside
        the allowed roots (raises ServingError)."""
        self._check_base_paths(models)
        self._check_labels(models)

    def reload(self, models: Sequence[ModelConfig]) -> None:
        """Replace the model list: models that left are unloaded, new ones loaded (this call waits until they are
        AVAILABLE or failed), unchanged ones keep serving. Raises ServingError if a new model cannot be served or
        a label is refused; models that were serving keep serving either way."""
        old = {m.name: m for m in self.models}
        for model in models:
            before = old.get(model.name)
            if before is not None and before.platform != model.platform:
                raise ServingError(
                    Code.INVALID_ARGUMENT,
                    f"Cannot change the model_platform of model {model.name} from {before.platform} to "
                    f"{model.platform} in a reload; give the new platform's model another name.",
                )
        self._check_base_paths(models)
        self._check_labels(models)
        self.models = tuple(models)
        self.manager.set_models(self.models)
        self.source.set_models(self.models)
        added = [m.name for m in models if m.name not in old]
        self.load_until_settled([m.name for m in models])
        failed = self.manager.unavailable_models(added)
        if failed:
            details = "; ".join(f"{name}: {why}" for name, why in sorted(failed.items()))
            raise ServingError(Code.UNKNOWN, f"{len(failed)} model(s) did not become available: {details}")


def _is_under(path: str, root: str) -> bool:
    """Whether `path` is `root` or inside it, after resolving symlinks and `..` (URIs compare as text)."""
    if "://" in path or "://" in root:
        return path.rstrip("/") == root.rstrip("/") or path.startswith(root.rstrip("/") + "/")
    path, root = os.path.realpath(path), os.path.realpath(root)
    return os.path.commonpath([path, root]) == root
