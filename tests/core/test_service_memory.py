"""The data plane and control plane driven directly, with the framework-free "memory" runtime: routing (versions,
labels, traffic splits with fallback and shadows), plain-data requests and results, errors naming the servable
they reached, readiness and reloads. No TensorFlow is needed here."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from pyserving.core.canary import TrafficControllers
from pyserving.core.control import ControlPlane
from pyserving.core.ids import ServableRequest
from pyserving.core.lifecycle import ModelLifecycle
from pyserving.core.manager import ModelManager
from pyserving.core.service import ExamplesRequest, InferenceService, PredictRequest, Route
from pyserving.errors import Code, ServingError
from pyserving.options import LifecycleOptions, ModelConfig, RuntimeOptions, ShadowTraffic, TrafficSplit, VersionPolicy
from pyserving.runtimes.memory import write_model
from pyserving.runtimes.registry import get_runtime

SIGNATURES = {"serving_default": {"inputs": {"x": {"dtype": "DT_FLOAT", "shape": [-1]}},
                                  "outputs": {"y": {"dtype": "DT_FLOAT", "shape": [-1]}}}}


class Events:
    def __init__(self) -> None:
        self.runtimes: list[str] = []
        self.rollbacks: list[tuple[str, str]] = []
        self.dropped = 0

    def on_runtime(self, model: str, api: str, seconds: float) -> None:
        self.runtimes.append(api)

    def on_rollback(self, model: str, arm: str) -> None:
        self.rollbacks.append((model, arm))

    def on_shadow_dropped(self, model: str) -> None:
        self.dropped += 1


def model_dir(tmp_path: Path, versions: dict[int, float]) -> Path:
    """A memory model whose version v answers y = x + offset[v]."""
    base = tmp_path / "m"
    for version, offset in versions.items():
        write_model(str(base / str(version)), {"signatures": SIGNATURES, "offset": offset})
    return base


def planes(config: ModelConfig) -> tuple[ModelManager, InferenceService, ControlPlane, Events]:
    lifecycle = LifecycleOptions(max_num_load_retries=0)
    manager = ModelManager([config], RuntimeOptions(), get_runtime, lifecycle)
    events = Events()
    service = InferenceService(manager, ThreadPoolExecutor(2), events=events)
    control = ControlPlane(manager, ModelLifecycle(manager, [config], lifecycle), service.traffic)
    return manager, service, control, events


def predict(model: ServableRequest, x: float = 1.0, **kw: object) -> PredictRequest:
    return PredictRequest(model=model, inputs={"x": np.array([x], np.float32)}, **kw)  # type: ignore[arg-type]


def test_versions_labels_and_plain_results(tmp_path: Path) -> None:
    config = ModelConfig("m", str(model_dir(tmp_path, {1: 10.0, 2: 20.0})), platform="memory",
                         version_policy=VersionPolicy("all"), version_labels=(("stable", 1),))
    manager, service, control, events = planes(config)

    async def main() -> None:
        await control.load_initial()
        latest = await service.predict(predict(ServableRequest("m")))
        assert (latest.servable.version, latest.signature_name, latest.outputs["y"].tolist()) == (2, "serving_default", [21.0])
        labelled = await service.predict(predict(ServableRequest("m", label="stable")))
        assert labelled.servable.version == 1 and labelled.outputs["y"].tolist() == [11.0]
        assert service.resolve_version(ServableRequest("m", label="stable")) == 1
        assert [m.name for m in control.models()] == ["m"] and control.unready_models() == {}
        with pytest.raises(ServingError) as err:  # an error names the servable and signature it reached
            await service.predict(PredictRequest(ServableRequest("m", 1), {"z": np.zeros(1, np.float32)}))
        assert (err.value.code, err.value.version, err.value.signature) == (Code.INVALID_ARGUMENT, 1, "serving_default")
        route, sig = service.signature(ServableRequest("m"), "")
        assert route == Route(latest.servable) and set(sig.inputs) == {"x"}
        with pytest.raises(ServingError) as err:
            await service.classify(ExamplesRequest(ServableRequest("m", 1), [b""]))
        assert "No classification inputs found" in err.value.message or "Expected" in err.value.message
        await control.stop()

    asyncio.run(main())
    assert events.runtimes == ["predict", "predict"]


def test_split_falls_back_while_an_arm_is_missing_and_shadows_run(tmp_path: Path) -> None:
    base = model_dir(tmp_path, {1: 10.0, 2: 20.0})
    (base / "3").mkdir()
    (base / "3" / "model.json").write_text("{not json")  # on disk, never AVAILABLE
    split = TrafficSplit(arms=((1, 50), (3, 50)), shadow=ShadowTraffic(arm=2, percent=100))
    config = ModelConfig("m", str(base), platform="memory", version_policy=VersionPolicy("all"), traffic_split=split)
    manager, service, control, events = planes(config)

    async def main() -> None:
        await control.load_initial()
        for _ in range(40):  # version 3 failed to load: every request falls back to version 1
            result = await service.predict(predict(ServableRequest("m")))
            assert result.servable.version == 1
        await asyncio.sleep(0.05)
        arms = {a.get("version"): a for a in control.models()[0].traffic_split["arms"]}  # type: ignore[index]
        assert arms["1"]["requests"] == 40 and arms["2"]["requests"] >= 1  # the shadow ran its model
        await control.stop()

    asyncio.run(main())


def test_identical_split_keeps_its_state_and_a_changed_one_starts_fresh() -> None:
    split = TrafficSplit(arms=((1, 70), (2, 30)))
    current = {"m": split}
    controllers = TrafficControllers(current.get)
    first = controllers.get("m")
    assert first is not None
    first.weights[2] = 0.0
    current["m"] = TrafficSplit(arms=((1, 70), (2, 30)))  # equal, not the same object: a reload of the same file
    assert controllers.get("m") is first and first.weights[2] == 0.0
    current["m"] = TrafficSplit(arms=((1, 50), (2, 50)))
    assert controllers.get("m") is not first


def test_promotion_without_a_rollback_guard_still_promotes(tmp_path: Path) -> None:
    """A split with `promote` but no `rollback` block advances its candidate (a mutant that skipped the check when
    there is no guard survived every other test)."""
    from pyserving.options import Promotion

    split = TrafficSplit(arms=((1, 80), (2, 20)), promotion=Promotion(step_percent=10, interval_s=0.1))
    config = ModelConfig("m", str(model_dir(tmp_path, {1: 10.0, 2: 20.0})), platform="memory",
                         version_policy=VersionPolicy("all"), traffic_split=split)
    _, service, control, _ = planes(config)

    async def main() -> dict[str, float]:
        await control.load_initial()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.5
        while loop.time() < deadline:
            await service.predict(predict(ServableRequest("m")))
            await asyncio.sleep(0.002)
        controller = service.traffic.get("m")
        assert controller is not None
        weights = {str(arm): w for arm, w in controller.weights.items()}
        await control.stop()
        return weights

    weights = asyncio.run(main())
    assert weights["2"] > 20 and weights["1"] + weights["2"] == 100, weights
