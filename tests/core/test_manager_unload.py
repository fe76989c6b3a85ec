"""An explicitly unloaded model (the model repository extension) in the manager and lifecycle, one step at a
time, with framework-free "memory" models: polls and config reloads leave it unloaded, its labels wait for it,
readiness ignores it, and a load brings its versions (failed ones included) back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pyserving.core.ids import ServableRequest
from pyserving.core.lifecycle import ModelLifecycle
from pyserving.core.manager import ModelManager
from pyserving.core.states import ServableState
from pyserving.errors import Code, ServingError
from pyserving.options import LifecycleOptions, ModelConfig, RuntimeOptions, VersionPolicy
from pyserving.runtimes.memory import MODEL_FILE, write_model
from pyserving.runtimes.registry import get_runtime

S = ServableState
NO_RETRIES = LifecycleOptions(max_num_load_retries=0)
SIGNATURES = {"serving_default": {"inputs": {"x": {"dtype": "DT_FLOAT", "shape": [-1]}},
                                  "outputs": {"y": {"dtype": "DT_FLOAT", "shape": [-1]}}}}


def _config(base: Path, name: str = "m") -> ModelConfig:
    return ModelConfig(name, str(base), platform="memory", version_policy=VersionPolicy("all"),
                       version_labels=(("stable", 1), ("canary", 2)))


@pytest.fixture
def lifecycle(tmp_path: Path) -> Iterator[ModelLifecycle]:
    """Model "m" (versions 1 and 2, both served, labelled) and model "other", loaded and serving."""
    for version in (1, 2):
        write_model(str(tmp_path / "m" / str(version)), {"signatures": SIGNATURES})
    write_model(str(tmp_path / "other" / "1"), {"signatures": SIGNATURES})
    models = [_config(tmp_path / "m"), ModelConfig("other", str(tmp_path / "other"), platform="memory")]
    manager = ModelManager(models, RuntimeOptions(), get_runtime, NO_RETRIES)
    lifecycle = ModelLifecycle(manager, models, NO_RETRIES)
    lifecycle.load_until_settled(["m", "other"])
    yield lifecycle
    manager.unload_all()


def _states(manager: ModelManager, name: str = "m") -> list[tuple[int, ServableState]]:
    return [(s.version, s.state) for s in manager.status(name)]


def test_unloaded_model_stays_unloaded_through_polls_reloads_and_labels(lifecycle: ModelLifecycle) -> None:
    manager = lifecycle.manager
    assert _states(manager) == [(2, S.AVAILABLE), (1, S.AVAILABLE)]
    manager.unload_model("m")
    manager.reconcile_once()
    assert _states(manager) == [(2, S.END), (1, S.END)] and manager.is_unloaded("m")
    assert manager.unavailable_models() == {}, "an unloaded model must not make the server unready"
    lifecycle.poll_once()
    lifecycle.apply_labels()  # its labels point at versions not serving: kept for when it is loaded
    lifecycle.reload(lifecycle.models)
    assert _states(manager) == [(2, S.END), (1, S.END)]
    with pytest.raises(ServingError) as err:
        manager.lease(ServableRequest("m", label="stable"))
    assert err.value.code == Code.NOT_FOUND
    with manager.lease(ServableRequest("other")) as lease:
        assert lease.id.version == 1

    manager.load_model("m")
    lifecycle.load_until_settled(["m"])
    assert not manager.is_unloaded("m")
    assert [s for v, s in _states(manager)] == [S.AVAILABLE, S.AVAILABLE]
    with manager.lease(ServableRequest("m", label="canary")) as lease:
        assert lease.id.version == 2


def test_removed_and_added_back_it_loads_afresh(lifecycle: ModelLifecycle) -> None:
    manager = lifecycle.manager
    manager.unload_model("m")
    manager.reconcile_once()
    every = lifecycle.models
    lifecycle.reload([m for m in every if m.name != "m"])
    with pytest.raises(ServingError) as err:
        manager.load_model("m")
    assert err.value.code == Code.NOT_FOUND and "not in the model config" in err.value.message
    lifecycle.reload(every)
    assert not manager.is_unloaded("m")
    assert [s for v, s in _states(manager)] == [S.AVAILABLE, S.AVAILABLE]


def test_a_load_retries_a_version_that_failed(lifecycle: ModelLifecycle, tmp_path: Path) -> None:
    manager = lifecycle.manager
    (tmp_path / "other" / "2").mkdir()
    (tmp_path / "other" / "2" / MODEL_FILE).write_text("{broken")
    lifecycle.load_until_settled(["other"])
    (failed, *_) = manager.status("other")
    assert (failed.version, failed.state) == (2, S.END) and failed.error is not None
    lifecycle.poll_once()
    assert manager.status("other")[0].state == S.END, "a failed version that stays aspired is not retried by polls"
    write_model(str(tmp_path / "other" / "2"), {"signatures": SIGNATURES})
    manager.load_model("other")
    lifecycle.load_until_settled(["other"])
    assert _states(manager, "other")[0] == (2, S.AVAILABLE)


def test_a_load_does_not_wait_out_a_retry_interval(tmp_path: Path) -> None:
    write_model(str(tmp_path / "m" / "1"), {"signatures": SIGNATURES})
    (tmp_path / "m" / "2").mkdir()
    (tmp_path / "m" / "2" / MODEL_FILE).write_text("{broken")
    options = LifecycleOptions(max_num_load_retries=1, load_retry_interval_s=3600)
    models = [ModelConfig("m", str(tmp_path / "m"), platform="memory")]
    manager = ModelManager(models, RuntimeOptions(), get_runtime, options)
    lifecycle = ModelLifecycle(manager, models, options)
    try:
        lifecycle.poll_once()
        assert manager.status("m")[0].state == S.LOADING and not manager.is_settled(["m"])  # an hour to its retry
        write_model(str(tmp_path / "m" / "2"), {"signatures": SIGNATURES})
        manager.load_model("m")
        manager.reconcile_once()
        assert _states(manager) == [(2, S.AVAILABLE)]
    finally:
        manager.unload_all()
