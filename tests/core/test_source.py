"""FileSystemSource, one poll at a time: which version directories it reports, and when.

Real version directories (TF Serving's test models copied into tmp_path); the aspired-versions callback is a plain
recorder. Directory ages are set explicitly with os.utime, never waited for.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
from conftest import TESTDATA

from pyserving.core.ids import ServableRequest
from pyserving.core.lifecycle import ModelLifecycle
from pyserving.core.manager import ModelManager
from pyserving.core.source import FileSystemSource, versions_on_disk
from pyserving.runtimes.tensorflow import INCOMPLETE_GRACE_S, SETTLE_S, saved_model_is_complete as is_complete
from pyserving.core.states import ServableState
from pyserving.options import LifecycleOptions, ModelConfig, RuntimeOptions, VersionPolicy
from pyserving.runtimes.registry import get_runtime


def saved_model_check(_model: ModelConfig, path: str) -> bool:
    return is_complete(path)


HALF_PLUS_TWO = TESTDATA / "saved_model_half_plus_two_cpu" / "00000123"
BAD_HALF_PLUS_TWO = TESTDATA / "bad_half_plus_two" / "00000123"
INDEX = Path("variables") / "variables.index"
SHARD = Path("variables") / "variables.data-00000-of-00001"


@pytest.fixture(autouse=True)
def _needs_testdata(testdata: Path) -> None:
    """Fail with conftest's clear message when TF Serving's test models are missing."""


def set_age(path: Path, seconds: float) -> None:
    """Give `path` and everything under it an mtime `seconds` in the past (negative: now)."""
    stamp = time.time() - max(seconds, 0.0)
    for root, dirs, files in os.walk(path):
        for name in files + dirs:
            os.utime(os.path.join(root, name), (stamp, stamp))
    os.utime(path, (stamp, stamp))


def copy_version(src: Path, base: Path, name: str | int, *, age_s: float = 3600.0) -> Path:
    """Copy a version directory to base/name, aged `age_s` seconds (copytree keeps the source mtimes, which could
    be anything: make them explicit)."""
    target = base / str(name)
    shutil.copytree(src, target)
    set_age(target, age_s)
    return target


class Recorder:
    """The aspired-versions callback: every report, in order."""

    def __init__(self) -> None:
        self.reports: list[tuple[str, dict[int, str]]] = []

    def __call__(self, name: str, versions: Mapping[int, str]) -> None:
        self.reports.append((name, dict(versions)))

    def last(self, name: str) -> dict[int, str] | None:
        for reported, versions in reversed(self.reports):
            if reported == name:
                return versions
        return None


def poll(models: list[ModelConfig]) -> Recorder:
    recorder = Recorder()
    FileSystemSource(models, recorder, saved_model_check).poll_once()
    return recorder


# --- which children are versions -------------------------------------------------------------------------------


def test_versions_on_disk_takes_numeric_directories_only(tmp_path: Path) -> None:
    for name in ("1", "0002", "abc", "3.5", "-4", "v5", "6a"):
        (tmp_path / name).mkdir()
    (tmp_path / "7").write_text("a file, not a version directory")
    assert versions_on_disk(str(tmp_path)) == {1: str(tmp_path / "1"), 2: str(tmp_path / "0002")}


def test_versions_on_disk_rejects_what_tf_serving_rejects(tmp_path: Path) -> None:
    for name in ("1", "2024_01_05", "+3", "\u0663"):
        (tmp_path / name).mkdir()
    assert versions_on_disk(str(tmp_path)) == {1: str(tmp_path / "1")}


# --- version policies through poll_once ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def three_versions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("three_versions")
    for name in ("1", "0002", "3"):
        copy_version(HALF_PLUS_TWO, base, name)
    (base / "notes").mkdir()
    (base / "4").write_text("not a directory")
    return base


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (VersionPolicy(), [3]),
        (VersionPolicy(num_versions=2), [3, 2]),
        (VersionPolicy(kind="all"), [1, 2, 3]),
        (VersionPolicy(kind="specific", versions=(1, 3)), [1, 3]),
        (VersionPolicy(kind="specific", versions=(2, 9)), [2]),
    ],
)
def test_poll_once_reports_what_the_policy_aspires(
    three_versions: Path, policy: VersionPolicy, expected: list[int]
) -> None:
    recorder = poll([ModelConfig("m", str(three_versions), version_policy=policy)])
    paths = {1: str(three_versions / "1"), 2: str(three_versions / "0002"), 3: str(three_versions / "3")}
    assert recorder.reports == [("m", {v: paths[v] for v in expected})]


def test_poll_once_reports_every_model(three_versions: Path, tmp_path: Path) -> None:
    copy_version(HALF_PLUS_TWO, tmp_path, 7)
    recorder = poll([ModelConfig("a", str(three_versions)), ModelConfig("b", str(tmp_path))])
    assert recorder.reports == [("a", {3: str(three_versions / "3")}), ("b", {7: str(tmp_path / "7")})]


# --- nothing to report --------------------------------------------------------------------------------------------


def test_base_path_without_versions_reports_nothing_and_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "not_a_version").mkdir()
    recorder = Recorder()
    source = FileSystemSource([ModelConfig("m", str(tmp_path))], recorder, saved_model_check)
    with caplog.at_level(logging.WARNING, logger="pyserving.source"):
        source.poll_once()
        source.poll_once()
    assert recorder.reports == []
    warnings = [r.getMessage() for r in caplog.records if "No versions of servable m found" in r.getMessage()]
    assert len(warnings) == 1
    assert str(tmp_path) in warnings[0] and "Did you forget to name your leaf directory as a number" in warnings[0]


def test_missing_base_path_logs_and_other_models_are_still_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    copy_version(HALF_PLUS_TWO, tmp_path / "good", 1)
    missing = tmp_path / "missing"
    with caplog.at_level(logging.ERROR, logger="pyserving.source"):
        recorder = poll([ModelConfig("gone", str(missing)), ModelConfig("good", str(tmp_path / "good"))])
    assert recorder.reports == [("good", {1: str(tmp_path / "good" / "1")})]
    assert any(
        r.levelno == logging.ERROR and str(missing) in r.getMessage() and "gone" in r.getMessage()
        for r in caplog.records
    )


def test_loaded_versions_keep_serving_when_the_base_path_empties(tmp_path: Path) -> None:
    copy_version(HALF_PLUS_TWO, tmp_path, 1)
    models = [ModelConfig("m", str(tmp_path))]
    options = LifecycleOptions(max_num_load_retries=0)
    manager = ModelManager(models, RuntimeOptions(), get_runtime, options)
    lifecycle = ModelLifecycle(manager, models, options)
    try:
        lifecycle.load_until_settled(["m"])
        assert [(s.version, s.state) for s in manager.status("m")] == [(1, ServableState.AVAILABLE)]
        shutil.rmtree(tmp_path / "1")  # e.g. a sync job that clears the directory before copying the new export
        assert lifecycle.poll_once() is False
        assert [(s.version, s.state) for s in manager.status("m")] == [(1, ServableState.AVAILABLE)]
        with manager.lease(ServableRequest("m")) as lease:
            out = lease.servable.run("serving_default", {"x": np.array([[4.0]], np.float32)}, ["y"])
        np.testing.assert_allclose(out["y"], [[4.0]])
        # A later export is picked up as usual, and only then does version 1 go.
        copy_version(HALF_PLUS_TWO, tmp_path, 2)
        assert lifecycle.poll_once() is True
        assert [(s.version, s.state) for s in manager.status("m")] == [
            (2, ServableState.AVAILABLE), (1, ServableState.END)
        ]
    finally:
        manager.unload_all()


# --- half-written version directories ------------------------------------------------------------------------------


@pytest.mark.parametrize("missing", [INDEX, SHARD], ids=["variables.index", "variables shard"])
def test_half_written_version_is_not_reported_until_complete(
    tmp_path: Path, missing: Path, caplog: pytest.LogCaptureFixture
) -> None:
    copy_version(HALF_PLUS_TWO, tmp_path, 1)
    v2 = copy_version(HALF_PLUS_TWO, tmp_path, 2)
    (v2 / missing).unlink()
    set_age(v2, 0)  # being written right now
    assert not is_complete(str(v2))

    recorder = Recorder()
    source = FileSystemSource([ModelConfig("m", str(tmp_path))], recorder, saved_model_check)
    with caplog.at_level(logging.INFO, logger="pyserving.source"):
        source.poll_once()
        source.poll_once()
    # Version 1 stays the aspired one: the half-written version 2 neither loads nor unloads anything.
    assert recorder.reports == [("m", {1: str(tmp_path / "1")})] * 2
    waiting = [r for r in caplog.records if "Waiting for version directory" in r.getMessage()]
    assert len(waiting) == 1 and str(v2) in waiting[0].getMessage()

    shutil.copy2(HALF_PLUS_TWO / missing, v2 / missing)  # the writer finishes
    source.poll_once()
    assert recorder.last("m") == {2: str(v2)}


def test_only_version_half_written_reports_nothing(tmp_path: Path) -> None:
    v1 = copy_version(HALF_PLUS_TWO, tmp_path, 1)
    (v1 / INDEX).unlink()
    set_age(v1, 0)
    assert poll([ModelConfig("m", str(tmp_path))]).reports == []


def test_fresh_directory_without_saved_model_pb_is_not_reported(tmp_path: Path) -> None:
    copy_version(BAD_HALF_PLUS_TWO, tmp_path, 1, age_s=0)
    assert poll([ModelConfig("m", str(tmp_path))]).reports == []


def test_saved_model_without_variables_directory_waits_the_settle_time(tmp_path: Path) -> None:
    v1 = tmp_path / "1"
    v1.mkdir()
    shutil.copy2(HALF_PLUS_TWO / "saved_model.pb", v1 / "saved_model.pb")
    set_age(v1, 0)
    assert poll([ModelConfig("m", str(tmp_path))]).reports == []
    set_age(v1, SETTLE_S + 1)
    assert poll([ModelConfig("m", str(tmp_path))]).reports == [("m", {1: str(v1)})]


@pytest.fixture(scope="module")
def variableless_tf1_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TF1 SavedModelBuilder export of a graph without variables: it leaves an empty variables/ directory."""
    import tensorflow as tf

    target = tmp_path_factory.mktemp("novars") / "export"
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None], name="x")
        y = tf.identity(x * 2.0, name="y")
        with tf.compat.v1.Session(graph=graph) as session:
            builder = tf.compat.v1.saved_model.Builder(str(target))
            signature = tf.compat.v1.saved_model.predict_signature_def({"x": x}, {"y": y})
            builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map={"serving_default": signature})
            builder.save()
    assert os.listdir(target / "variables") == []
    return target


def test_fresh_export_without_variables_loads_after_the_settle_time(
    tmp_path: Path, variableless_tf1_export: Path
) -> None:
    v1 = copy_version(variableless_tf1_export, tmp_path, 1, age_s=SETTLE_S + 1)
    assert poll([ModelConfig("m", str(tmp_path))]).reports == [("m", {1: str(v1)})]


@pytest.mark.parametrize(
    ("src", "remove", "expected_error"),
    [
        (HALF_PLUS_TWO, INDEX, "not a valid checkpoint"),
        (HALF_PLUS_TWO, SHARD, "variables.data-00000-of-00001"),
        (BAD_HALF_PLUS_TWO, None, "Could not find SavedModel .pb or .pbtxt at supplied export directory path"),
    ],
    ids=["no variables.index", "no variables shard", "no saved_model.pb"],
)
def test_old_incomplete_version_is_reported_and_fails_to_load_clearly(
    tmp_path: Path, src: Path, remove: Path | None, expected_error: str
) -> None:
    v1 = copy_version(src, tmp_path, 1)
    if remove is not None:
        (v1 / remove).unlink()
    set_age(v1, INCOMPLETE_GRACE_S + 30)
    models = [ModelConfig("m", str(tmp_path))]
    recorder = poll(models)
    assert recorder.reports == [("m", {1: str(v1)})]

    options = LifecycleOptions(max_num_load_retries=0)
    manager = ModelManager(models, RuntimeOptions(), get_runtime, options)
    lifecycle = ModelLifecycle(manager, models, options)
    try:
        lifecycle.load_until_settled(["m"])
        [status] = manager.status("m")
        assert status.state == ServableState.END
        assert status.error is not None
        assert expected_error in status.error.message
        assert expected_error in manager.unavailable_models()["m"]
    finally:
        manager.unload_all()
