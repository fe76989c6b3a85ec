"""ModelManager and ModelLifecycle, one step at a time: reconcile_once / poll_once / reload with real SavedModels.

Aspired versions are reported through the manager's public `set_aspired_versions` (what the source calls) or by a
real FileSystemSource through ModelLifecycle. Load retries use `load_retry_interval_s=0`, so each reconcile_once is
exactly one attempt.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from conftest import TESTDATA

from pyserving.core.ids import ServableRequest
from pyserving.core.lifecycle import ModelLifecycle
from pyserving.core.manager import ModelManager
from pyserving.core.states import ServableState
from pyserving.errors import Code, ServingError
from pyserving.options import LifecycleOptions, ModelConfig, RuntimeOptions, VersionPolicy
from pyserving.runtimes.registry import get_runtime

S = ServableState
HALF_PLUS_TWO = TESTDATA / "saved_model_half_plus_two_cpu" / "00000123"
HALF_PLUS_THREE = TESTDATA / "saved_model_half_plus_three" / "00000123"
TWO_VERSIONS = TESTDATA / "saved_model_half_plus_two_2_versions"
BROKEN = TESTDATA / "bad_half_plus_two" / "00000123"
NO_RETRIES = LifecycleOptions(max_num_load_retries=0)


@pytest.fixture(autouse=True)
def _needs_testdata(testdata: Path) -> None:
    """Fail with conftest's clear message when TF Serving's test models are missing."""


def set_age(path: Path, seconds: float) -> None:
    """Give `path` and everything under it an mtime `seconds` in the past."""
    stamp = time.time() - seconds
    for root, dirs, files in os.walk(path):
        for name in files + dirs:
            os.utime(os.path.join(root, name), (stamp, stamp))
    os.utime(path, (stamp, stamp))


def copy_version(src: Path, base: Path, version: int) -> str:
    """Copy a version directory to base/version, an hour old, so the source sees it as completely written (the
    broken test export has no saved_model.pb: it is reported only once older than the 30 s grace)."""
    target = base / str(version)
    shutil.copytree(src, target)
    set_age(target, 3600)
    return str(target)


def states(manager: ModelManager, name: str) -> list[tuple[int, ServableState]]:
    return [(s.version, s.state) for s in manager.status(name)]


def predict(manager: ModelManager, request: ServableRequest, x: float = 2.0) -> tuple[int, float]:
    """(version that answered, y) for serving_default of a half_plus_N model."""
    with manager.lease(request) as lease:
        out = lease.servable.run("serving_default", {"x": np.array([[x]], np.float32)}, ["y"])
        return lease.id.version, float(out["y"][0][0])


def serving_error(fn: Callable[[], object]) -> ServingError:
    with pytest.raises(ServingError) as info:
        fn()
    return info.value


@pytest.fixture
def make_manager() -> Iterator[Callable[..., ModelManager]]:
    """ModelManager over the real runtime registry; everything it loaded is unloaded after the test."""
    made: list[ModelManager] = []

    def make(
        models: Sequence[ModelConfig] | str,
        lifecycle: LifecycleOptions = NO_RETRIES,
        runtime: RuntimeOptions | None = None,
    ) -> ModelManager:
        if isinstance(models, str):
            models = [ModelConfig(models, "/unused/base/path")]
        manager = ModelManager(models, runtime or RuntimeOptions(), get_runtime, lifecycle)
        made.append(manager)
        return manager

    yield make
    for manager in made:
        manager.unload_all()


# --- transitions -------------------------------------------------------------------------------------------------


def test_new_version_loads_before_the_old_one_unloads(
    tmp_path: Path, make_manager: Callable[..., ModelManager]
) -> None:
    manager = make_manager("m")
    v1 = copy_version(HALF_PLUS_TWO, tmp_path, 1)
    manager.set_aspired_versions("m", {1: v1})
    assert states(manager, "m") == [(1, S.START)]
    assert manager.is_settled(["m"]) is False
    assert manager.reconcile_once() is True
    assert states(manager, "m") == [(1, S.AVAILABLE)]
    assert predict(manager, ServableRequest("m")) == (1, 3.0)

    v2 = copy_version(HALF_PLUS_THREE, tmp_path, 2)
    manager.set_aspired_versions("m", {2: v2})
    assert states(manager, "m") == [(2, S.START), (1, S.AVAILABLE)]
    assert predict(manager, ServableRequest("m")) == (1, 3.0)  # still served while 2 waits

    assert manager.reconcile_once() is True
    assert states(manager, "m") == [(2, S.AVAILABLE), (1, S.END)]
    assert all(s.error is None for s in manager.status("m"))
    assert predict(manager, ServableRequest("m")) == (2, 4.0)
    assert manager.reconcile_once() is False
    assert manager.is_settled() is True


def test_status_lists_versions_highest_first_with_tf_serving_states(
    tmp_path: Path, make_manager: Callable[..., ModelManager]
) -> None:
    assert [int(s) for s in S] == [0, 10, 20, 30, 40, 50]  # ModelVersionStatus.State numbering
    manager = make_manager("m", LifecycleOptions(max_num_load_retries=1, load_retry_interval_s=3600))
    paths = {1: copy_version(HALF_PLUS_TWO, tmp_path, 1), 2: copy_version(BROKEN, tmp_path, 2),
             10: copy_version(HALF_PLUS_TWO, tmp_path, 10)}
    manager.set_aspired_versions("m", paths)
    assert states(manager, "m") == [(10, S.START), (2, S.START), (1, S.START)]
    manager.reconcile_once()
    # 2 failed once and waits an hour for its retry: LOADING, with no error reported yet.
    assert states(manager, "m") == [(10, S.AVAILABLE), (2, S.LOADING), (1, S.AVAILABLE)]
    assert all(s.error is None for s in manager.status("m"))
    assert manager.status("m", 2)[0].state == S.LOADING
    assert manager.unavailable_models() == {}  # m serves: it is not unavailable
    assert manager.is_settled(["m"]) is False

    err = serving_error(lambda: manager.status("m", 7))
    assert (err.code, err.message) == (Code.NOT_FOUND, "Could not find version 7 of model m")
    err = serving_error(lambda: manager.status("nope"))
    assert (err.code, err.message) == (Code.NOT_FOUND, "Could not find any versions of model nope")


def test_model_with_nothing_reported_yet_has_no_status(make_manager: Callable[..., ModelManager]) -> None:
    manager = make_manager([ModelConfig("m", "/models/m")])
    err = serving_error(lambda: manager.status("m"))
    assert (err.code, err.message) == (Code.NOT_FOUND, "Could not find any versions of model m")
    assert manager.unavailable_models() == {"m": "no version found under base path /models/m"}
    assert manager.model_names() == ["m"]


def test_broken_new_version_ends_in_error_and_the_old_one_keeps_serving(
    tmp_path: Path, make_manager: Callable[..., ModelManager]
) -> None:
    manager = make_manager("m")
    manager.set_aspired_versions("m", {1: copy_version(HALF_PLUS_TWO, tmp_path, 1)})
    manager.reconcile_once()
    manager.set_aspired_versions("m", {2: copy_version(BROKEN, tmp_path, 2)})
    assert manager.reconcile_once() is True

    assert states(manager, "m") == [(2, S.END), (1, S.AVAILABLE)]
    broken, serving = manager.status("m")
    assert serving.error is None
    assert broken.error is not None and broken.error.code == Code.NOT_FOUND
    assert "Could not find SavedModel .pb or .pbtxt at supplied export directory path" in broken.error.message
    # clients see the version directory relative to the model's base path (--absolute_paths_in_errors: whole)
    assert "export directory path: 2." in broken.error.message and str(tmp_path) not in broken.error.message
    assert predict(manager, ServableRequest("m")) == (1, 3.0)
    assert predict(manager, ServableRequest("m", version=1)) == (1, 3.0)
    err = serving_error(lambda: manager.lease(ServableRequest("m", version=2)))
    assert (err.code, err.message) == (Code.NOT_FOUND, "Servable not found for request: Specific(m, 2)")
    assert manager.unavailable_models() == {}
    # A failed version is not retried while it stays aspired (TF Serving: enable_reload_servables_with_error=false).
    assert manager.reconcile_once() is False
    assert manager.is_settled(["m"]) is True


def test_load_retries_then_end_with_the_error(
    tmp_path: Path, make_manager: Callable[..., ModelManager], caplog: pytest.LogCaptureFixture
) -> None:
    manager = make_manager("m", LifecycleOptions(max_num_load_retries=2, load_retry_interval_s=0))
    manager.set_aspired_versions("m", {1: copy_version(BROKEN, tmp_path, 1)})
    with caplog.at_level(logging.INFO, logger="pyserving.manager"):
        for attempt in (1, 2):
            assert manager.reconcile_once() is True
            assert states(manager, "m") == [(1, S.LOADING)]
            assert manager.unavailable_models()["m"].startswith("still loading (last attempt failed: Could not find")
        assert manager.reconcile_once() is True
        assert manager.reconcile_once() is False

    [status] = manager.status("m")
    assert status.state == S.END and status.error is not None and status.error.code == Code.NOT_FOUND
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "(attempt 1 of 3)" in warnings[0] and "(attempt 2 of 3)" in warnings[1]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "Could not find SavedModel" in errors[0]
    attempts = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO and "(attempt" in r.getMessage()]
    assert [a.rsplit(" ", 1)[-1] for a in attempts] == ["1)", "2)", "3)"]
    assert manager.unavailable_models() == {"m": status.error.message}


def test_load_retry_waits_for_its_interval(tmp_path: Path, make_manager: Callable[..., ModelManager]) -> None:
    manager = make_manager("m", LifecycleOptions(max_num_load_retries=5, load_retry_interval_s=3600))
    manager.set_aspired_versions("m", {1: copy_version(BROKEN, tmp_path, 1)})
    assert manager.reconcile_once() is True
    assert manager.reconcile_once() is False  # the retry is an hour away
    assert states(manager, "m") == [(1, S.LOADING)]


# --- leases ----------------------------------------------------------------------------------------------------


def test_unload_waits_for_an_outstanding_lease(tmp_path: Path, make_manager: Callable[..., ModelManager]) -> None:
    manager = make_manager("m")
    manager.set_aspired_versions("m", {1: copy_version(HALF_PLUS_TWO, tmp_path, 1)})
    manager.reconcile_once()
    lease = manager.lease(ServableRequest("m"))
    manager.set_aspired_versions("m", {2: copy_version(HALF_PLUS_THREE, tmp_path, 2)})

    worker = threading.Thread(target=manager.reconcile_once, daemon=True)
    worker.start()
    deadline = time.monotonic() + 30
    while manager.status("m", 1)[0].state != S.UNLOADING:
        assert time.monotonic() < deadline, "version 1 never started unloading"
        time.sleep(0.005)
    assert worker.is_alive()  # blocked on the lease: UNLOADING is set under the lock right before the wait
    assert states(manager, "m") == [(2, S.AVAILABLE), (1, S.UNLOADING)]
    err = serving_error(lambda: manager.lease(ServableRequest("m", version=1)))
    assert (err.code, err.message) == (Code.NOT_FOUND, "Servable not found for request: Specific(m, 1)")
    assert predict(manager, ServableRequest("m")) == (2, 4.0)
    # The held version still answers: it is not unloaded under a request.
    out = lease.servable.run("serving_default", {"x": np.array([[2.0]], np.float32)}, ["y"])
    np.testing.assert_allclose(out["y"], [[3.0]])

    lease.release()
    worker.join(30)
    assert not worker.is_alive()
    assert states(manager, "m") == [(2, S.AVAILABLE), (1, S.END)]


def test_lease_errors(tmp_path: Path, make_manager: Callable[..., ModelManager]) -> None:
    manager = make_manager("m")
    err = serving_error(lambda: manager.lease(ServableRequest("m")))  # nothing loaded yet
    assert (err.code, err.message) == (Code.NOT_FOUND, "Servable not found for request: Latest(m)")
    manager.set_aspired_versions("m", {1: copy_version(HALF_PLUS_TWO, tmp_path, 1)})
    manager.reconcile_once()
    manager.set_labels("m", {"stable": 1})

    cases = [
        (ServableRequest("nope"), Code.NOT_FOUND, "Servable not found for request: Latest(nope)"),
        (ServableRequest("m", version=7), Code.NOT_FOUND, "Servable not found for request: Specific(m, 7)"),
        (ServableRequest("nope", version=1), Code.NOT_FOUND, "Servable not found for request: Specific(nope, 1)"),
        (ServableRequest("m", label="canary"), Code.INVALID_ARGUMENT, "Unrecognized servable version label: canary"),
    ]
    for request, code, message in cases:
        err = serving_error(lambda: manager.lease(request))
        assert (err.code, err.message) == (code, message), request
    assert predict(manager, ServableRequest("m", label="stable")) == (1, 3.0)


def test_label_to_a_version_that_is_gone_reports_the_specific_version(
    tmp_path: Path, make_manager: Callable[..., ModelManager]
) -> None:
    manager = make_manager("m")
    manager.set_aspired_versions("m", {1: copy_version(HALF_PLUS_TWO, tmp_path, 1)})
    manager.reconcile_once()
    manager.set_labels("m", {"stable": 1})
    manager.set_aspired_versions("m", {2: copy_version(HALF_PLUS_TWO, tmp_path, 2)})
    manager.reconcile_once()  # 1 is unloaded; the label still names it
    # A label resolves to a version first, so TF Serving reports the Specific request (ServerCore::
    # ServableRequestFromModelSpec), not Latest(m).
    err = serving_error(lambda: manager.lease(ServableRequest("m", label="stable")))
    assert (err.code, err.message) == (Code.NOT_FOUND, "Servable not found for request: Specific(m, 1)")


# --- labels --------------------------------------------------------------------------------------------------


@pytest.fixture
def two_available(tmp_path: Path, make_manager: Callable[..., ModelManager]) -> ModelManager:
    manager = make_manager("m")
    manager.set_aspired_versions("m", {
        123: copy_version(TWO_VERSIONS / "00000123", tmp_path, 123),
        124: copy_version(TWO_VERSIONS / "00000124", tmp_path, 124),
    })
    manager.reconcile_once()
    assert states(manager, "m") == [(124, S.AVAILABLE), (123, S.AVAILABLE)]
    return manager


def unavailable_label_message(version: int) -> str:
    return (f"Request to assign label to version {version} of model m, which is not currently available for "
            "inference")


def test_labels_may_point_at_available_versions(two_available: ModelManager) -> None:
    manager = two_available
    manager.set_labels("m", {"stable": 123, "canary": 124})
    assert manager.labels("m") == {"stable": 123, "canary": 124}
    assert predict(manager, ServableRequest("m", label="stable"))[0] == 123
    assert predict(manager, ServableRequest("m", label="canary"))[0] == 124
    manager.set_labels("m", {"stable": 124})  # moving a label to an AVAILABLE version; canary dropped
    assert manager.labels("m") == {"stable": 124}
    err = serving_error(lambda: manager.lease(ServableRequest("m", label="canary")))
    assert err.code == Code.INVALID_ARGUMENT


def test_label_to_an_unavailable_version_is_refused_atomically(two_available: ModelManager) -> None:
    manager = two_available
    manager.set_labels("m", {"stable": 123})
    err = serving_error(lambda: manager.set_labels("m", {"canary": 124, "next": 125}))
    assert (err.code, err.message) == (Code.FAILED_PRECONDITION, unavailable_label_message(125))
    assert manager.labels("m") == {"stable": 123}  # nothing of the refused update applied
    err = serving_error(lambda: manager.set_labels("nope", {"stable": 1}))
    assert (err.code, err.message) == (Code.NOT_FOUND, "Could not find any versions of model nope")


def test_allow_unavailable_allows_a_new_label_but_not_moving_one(two_available: ModelManager) -> None:
    manager = two_available
    manager.set_labels("m", {"stable": 123})
    manager.set_labels("m", {"stable": 123, "next": 125}, allow_unavailable=True)  # new label: allowed
    assert manager.labels("m") == {"stable": 123, "next": 125}
    manager.set_labels("m", {"stable": 123, "next": 125}, allow_unavailable=True)  # unchanged: still allowed
    err = serving_error(lambda: manager.set_labels("m", {"stable": 125, "next": 125}, allow_unavailable=True))
    assert (err.code, err.message) == (Code.FAILED_PRECONDITION, unavailable_label_message(125))
    err = serving_error(lambda: manager.set_labels("m", {"stable": 123, "next": 126}, allow_unavailable=True))
    assert (err.code, err.message) == (Code.FAILED_PRECONDITION, unavailable_label_message(126))
    manager.set_labels("m", {"stable": 124, "next": 125}, allow_unavailable=True)  # moving to AVAILABLE is fine
    assert manager.labels("m") == {"stable": 124, "next": 125}
    err = serving_error(lambda: manager.lease(ServableRequest("m", label="next")))
    assert err.code == Code.NOT_FOUND


# --- set_models and versions leaving ---------------------------------------------------------------------------


def test_set_models_removes_one_model_and_adds_another(
    tmp_path: Path, make_manager: Callable[..., ModelManager]
) -> None:
    a, b, c = (ModelConfig(n, str(tmp_path / n)) for n in "abc")
    manager = make_manager([a, b])
    manager.set_aspired_versions("a", {1: copy_version(HALF_PLUS_TWO, tmp_path / "a", 1)})
    manager.set_aspired_versions("b", {1: copy_version(HALF_PLUS_THREE, tmp_path / "b", 1)})
    manager.reconcile_once()
    with manager.lease(ServableRequest("b")) as before:
        b_servable = before.servable

    manager.set_models([b, c])
    assert manager.model_names() == ["b", "c"]
    err = serving_error(lambda: manager.lease(ServableRequest("a")))
    assert (err.code, err.message) == (Code.NOT_FOUND, "Servable not found for request: Latest(a)")
    manager.set_aspired_versions("a", {1: str(tmp_path / "a" / "1")})  # a late report for a removed model: ignored
    manager.set_aspired_versions("c", {5: copy_version(HALF_PLUS_TWO, tmp_path / "c", 5)})
    assert manager.reconcile_once() is True

    err = serving_error(lambda: manager.status("a"))
    assert (err.code, err.message) == (Code.NOT_FOUND, "Could not find any versions of model a")
    assert states(manager, "b") == [(1, S.AVAILABLE)]
    assert states(manager, "c") == [(5, S.AVAILABLE)]
    with manager.lease(ServableRequest("b")) as after:
        assert after.servable is b_servable  # b kept serving, untouched
    assert predict(manager, ServableRequest("c")) == (5, 3.0)

    manager.set_models([a, b, c])  # a comes back as a new model
    assert manager.model_names() == ["a", "b", "c"]
    manager.set_aspired_versions("a", {1: str(tmp_path / "a" / "1")})
    manager.reconcile_once()
    assert states(manager, "a") == [(1, S.AVAILABLE)]


def test_unaspired_version_is_unloaded_and_can_come_back(
    tmp_path: Path, make_manager: Callable[..., ModelManager]
) -> None:
    manager = make_manager("m")
    v1, v2 = copy_version(HALF_PLUS_TWO, tmp_path, 1), copy_version(HALF_PLUS_THREE, tmp_path, 2)
    manager.set_aspired_versions("m", {1: v1, 2: v2})
    manager.reconcile_once()
    assert states(manager, "m") == [(2, S.AVAILABLE), (1, S.AVAILABLE)]
    manager.set_aspired_versions("m", {1: v1})  # 2 deleted from disk (or a specific policy now names only 1)
    manager.reconcile_once()
    assert states(manager, "m") == [(2, S.END), (1, S.AVAILABLE)]
    assert predict(manager, ServableRequest("m")) == (1, 3.0)
    manager.set_aspired_versions("m", {1: v1, 2: v2})  # and back again: a fresh load
    assert states(manager, "m") == [(2, S.START), (1, S.AVAILABLE)]
    manager.reconcile_once()
    assert predict(manager, ServableRequest("m")) == (2, 4.0)


def test_only_aspired_version_unaspired_is_kept_until_something_replaces_it(
    tmp_path: Path, make_manager: Callable[..., ModelManager]
) -> None:
    manager = make_manager("m")
    v1 = copy_version(HALF_PLUS_TWO, tmp_path, 1)
    manager.set_aspired_versions("m", {1: v1})
    manager.reconcile_once()
    manager.set_aspired_versions("m", {})  # nothing aspired at all: the model is going away
    manager.reconcile_once()
    assert states(manager, "m") == [(1, S.END)]


def test_version_unaspired_before_its_load_is_dropped(
    tmp_path: Path, make_manager: Callable[..., ModelManager]
) -> None:
    manager = make_manager("m")
    v1, v2 = copy_version(HALF_PLUS_TWO, tmp_path, 1), copy_version(HALF_PLUS_TWO, tmp_path, 2)
    manager.set_aspired_versions("m", {1: v1, 2: v2})
    manager.set_aspired_versions("m", {1: v1})  # 2 vanished before the manager got to it
    manager.reconcile_once()
    assert dict(states(manager, "m")).get(2, S.END) == S.END
    assert manager.is_settled(["m"]) is True


def test_version_unaspired_while_waiting_for_a_retry_ends(
    tmp_path: Path, make_manager: Callable[..., ModelManager]
) -> None:
    manager = make_manager("m", LifecycleOptions(max_num_load_retries=5, load_retry_interval_s=3600))
    v1 = copy_version(HALF_PLUS_TWO, tmp_path, 1)
    manager.set_aspired_versions("m", {1: v1})
    manager.reconcile_once()
    manager.set_aspired_versions("m", {2: copy_version(BROKEN, tmp_path, 2)})
    manager.reconcile_once()
    assert states(manager, "m") == [(2, S.LOADING), (1, S.AVAILABLE)]
    manager.set_aspired_versions("m", {1: v1})  # the broken export is deleted
    manager.reconcile_once()
    assert manager.is_settled(["m"]) is True
    assert dict(states(manager, "m")).get(2, S.END) == S.END


def test_removed_model_waiting_for_a_retry_is_forgotten(
    tmp_path: Path, make_manager: Callable[..., ModelManager]
) -> None:
    manager = make_manager("m", LifecycleOptions(max_num_load_retries=5, load_retry_interval_s=3600))
    manager.set_aspired_versions("m", {1: copy_version(BROKEN, tmp_path, 1)})
    manager.reconcile_once()
    manager.set_models([])
    manager.reconcile_once()
    assert manager.is_settled() is True
    err = serving_error(lambda: manager.status("m"))
    assert err.code == Code.NOT_FOUND


def test_failed_version_deleted_and_fixed_loads_again(
    tmp_path: Path, make_manager: Callable[..., ModelManager]
) -> None:
    manager = make_manager("m")
    v1 = copy_version(HALF_PLUS_TWO, tmp_path, 1)
    manager.set_aspired_versions("m", {1: v1})
    manager.reconcile_once()
    manager.set_aspired_versions("m", {2: copy_version(BROKEN, tmp_path, 2)})
    manager.reconcile_once()
    assert states(manager, "m") == [(2, S.END), (1, S.AVAILABLE)]
    shutil.rmtree(tmp_path / "2")
    manager.set_aspired_versions("m", {1: v1})  # a poll without the broken version
    manager.reconcile_once()
    v2 = copy_version(HALF_PLUS_THREE, tmp_path, 2)
    manager.set_aspired_versions("m", {2: v2})  # the fixed export
    manager.reconcile_once()
    assert states(manager, "m") == [(2, S.AVAILABLE), (1, S.END)]


# --- ModelLifecycle.reload ------------------------------------------------------------------------------------


@pytest.fixture
def lifecycle(tmp_path: Path) -> Iterator[ModelLifecycle]:
    """Model "two" (half_plus_two, versions 123 and 124 on disk, latest policy) loaded and serving."""
    base = tmp_path / "two"
    for version in (123, 124):
        copy_version(TWO_VERSIONS / f"{version:08d}", base, version)
    models = [ModelConfig("two", str(base))]
    manager = ModelManager(models, RuntimeOptions(), get_runtime, NO_RETRIES)
    lifecycle = ModelLifecycle(manager, models, NO_RETRIES)
    lifecycle.load_until_settled(["two"])
    assert states(manager, "two") == [(124, S.AVAILABLE)]
    yield lifecycle
    manager.unload_all()


def test_reload_adds_a_model_and_keeps_the_others_serving(lifecycle: ModelLifecycle, tmp_path: Path) -> None:
    manager = lifecycle.manager
    with manager.lease(ServableRequest("two")) as lease:
        serving = lease.servable
    copy_version(HALF_PLUS_THREE, tmp_path / "three", 1)
    lifecycle.reload([*lifecycle.models, ModelConfig("three", str(tmp_path / "three"))])
    assert manager.model_names() == ["three", "two"]
    assert predict(manager, ServableRequest("three")) == (1, 4.0)
    with manager.lease(ServableRequest("two")) as lease:
        assert lease.servable is serving


def test_reload_removes_a_model(lifecycle: ModelLifecycle) -> None:
    lifecycle.reload([])
    manager = lifecycle.manager
    assert manager.model_names() == []
    err = serving_error(lambda: manager.status("two"))
    assert (err.code, err.message) == (Code.NOT_FOUND, "Could not find any versions of model two")
    err = serving_error(lambda: manager.lease(ServableRequest("two")))
    assert (err.code, err.message) == (Code.NOT_FOUND, "Servable not found for request: Latest(two)")
    assert lifecycle.poll_once() is False  # the source no longer watches it


def test_reload_to_version_policy_all_loads_every_version(lifecycle: ModelLifecycle) -> None:
    [two] = lifecycle.models
    all_versions = ModelConfig("two", two.base_path, version_policy=VersionPolicy(kind="all"),
                               version_labels=(("stable", 123), ("canary", 124)))
    lifecycle.reload([all_versions])
    manager = lifecycle.manager
    assert states(manager, "two") == [(124, S.AVAILABLE), (123, S.AVAILABLE)]
    assert manager.labels("two") == {"stable": 123, "canary": 124}
    assert predict(manager, ServableRequest("two", label="stable"))[0] == 123
    assert predict(manager, ServableRequest("two"))[0] == 124

    only_123 = VersionPolicy(kind="specific", versions=(123,))
    lifecycle.reload([ModelConfig("two", two.base_path, version_policy=only_123)])
    assert states(manager, "two") == [(124, S.END), (123, S.AVAILABLE)]
    assert manager.labels("two") == {}


def test_reload_with_a_broken_new_model_raises_and_the_others_keep_serving(
    lifecycle: ModelLifecycle, tmp_path: Path
) -> None:
    copy_version(BROKEN, tmp_path / "broken", 1)
    broken = ModelConfig("broken", str(tmp_path / "broken"))
    err = serving_error(lambda: lifecycle.reload([*lifecycle.models, broken]))
    assert "1 model(s) did not become available: broken: " in err.message
    assert "Could not find SavedModel .pb or .pbtxt" in err.message
    manager = lifecycle.manager
    assert predict(manager, ServableRequest("two")) == (124, 3.0)
    [status] = manager.status("broken")
    assert status.state == S.END and status.error is not None
    assert lifecycle.poll_once() is False  # the failed version is not retried on every poll


def test_reload_with_a_label_to_an_unavailable_version_is_refused(lifecycle: ModelLifecycle) -> None:
    [two] = lifecycle.models
    err = serving_error(lambda: lifecycle.reload([ModelConfig("two", two.base_path, version_labels=(("old", 123),))]))
    assert err.code == Code.FAILED_PRECONDITION
    assert err.message.startswith(
        "Request to assign label to version 123 of model two, which is not currently available for inference"
    )
    assert predict(lifecycle.manager, ServableRequest("two"))[0] == 124
    assert lifecycle.manager.labels("two") == {}


def test_reload_cannot_change_a_models_platform(lifecycle: ModelLifecycle) -> None:
    [two] = lifecycle.models
    err = serving_error(lambda: lifecycle.reload([ModelConfig("two", two.base_path, platform="onnx")]))
    assert err.code == Code.INVALID_ARGUMENT
    assert "Cannot change the model_platform of model two from tensorflow to onnx" in err.message
    assert lifecycle.models == (two,)
