"""Canary releases inside the server: weighted routing between versions, sticky assignment, shadow traffic, and a
guard that rolls a failing candidate back (or promotes a healthy one) on its own.

One TrafficController per model with a traffic split. It lives on the event loop: the service calls `route` and
`record` from the loop thread only, so it needs no lock. A config reload with a different split replaces it.
"""

from __future__ import annotations

import collections
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyserving.core.routing import choose_arm, sticky_point
from pyserving.options import TrafficSplit

log = logging.getLogger("pyserving.canary")

ArmId = int | str  # a version number or a version label
MIN_SAMPLES_FOR_P99 = 100
"""Below this many requests a "p99" is just the slowest one (often a version's cold first call): the latency
guard waits for enough samples on both sides; the error-rate guard needs only `min_requests`."""
CHECK_EVERY_S = 0.2
"""The guard's look at every candidate (the p99 guard, a sort of up to `window_seconds` of samples; promotion; an
error-rate verdict a baseline success completed) runs at most this often; a candidate's failure is judged at once.
What came in since the last look is judged by the next request or listing (`route`, `describe`; front ends are
sent a listing every 0.1 s), so a burst that ends between two looks is not left unjudged until traffic resumes."""


@dataclass(slots=True)
class ArmStats:
    """What one arm served: totals since the split started, and a window of recent (time, ok, latency_s)."""

    requests: int = 0
    errors: int = 0
    latency_sum_s: float = 0.0
    recent: collections.deque[tuple[float, bool, float]] = field(default_factory=collections.deque)
    recent_errors: int = 0  # the failures among `recent`: the error rate without a pass over the window

    def add(self, now: float, ok: bool, latency_s: float, window_s: float) -> None:
        self.requests += 1
        self.errors += not ok
        self.latency_sum_s += latency_s
        self.recent.append((now, ok, latency_s))
        self.recent_errors += not ok
        self._forget(now, window_s)

    def _forget(self, now: float, window_s: float) -> None:
        recent = self.recent
        while recent and recent[0][0] < now - window_s:
            self.recent_errors -= not recent.popleft()[1]

    def error_rate(self, now: float, window_s: float) -> tuple[int, float]:
        """(requests, error rate) over the last `window_s`."""
        self._forget(now, window_s)
        n = len(self.recent)
        return n, self.recent_errors / n if n else 0.0

    def p99(self, now: float, window_s: float) -> float:
        """The p99 latency in seconds over the last `window_s` (a sort of the window: not on every request)."""
        self._forget(now, window_s)
        if not self.recent:
            return 0.0
        latencies = sorted(lat for _, _, lat in self.recent)
        return latencies[min(len(latencies) - 1, math.ceil(0.99 * len(latencies)) - 1)]


class TrafficController:
    """Routes a model's unpinned requests by weight and watches its candidates. Event-loop confined."""

    def __init__(
        self, model: str, split: TrafficSplit, *, rng: random.Random | None = None,
        on_rollback: Callable[[str, str], None] | None = None,
    ) -> None:
        """`on_rollback(model, arm)` hears each rollback as it happens (metrics count them)."""
        self.model = model
        self.split = split
        self._on_rollback = on_rollback
        self._rng = rng or random.Random()
        self.weights: dict[ArmId, float] = {arm: float(w) for arm, w in split.arms}
        self.baseline: ArmId = max(split.arms, key=lambda a: a[1])[0]  # max() keeps the first on ties
        self.stats: dict[ArmId, ArmStats] = collections.defaultdict(ArmStats)
        self.rolled_back: dict[ArmId, str] = {}
        self.rollbacks = 0
        self.promotions = 0
        self.shadow_dropped = 0
        self._last_check = 0.0
        self._unchecked = 0  # samples recorded since the guard last looked
        self._last_step = time.monotonic()

    @property
    def window_s(self) -> float:
        guard = self.split.rollback
        return guard.window_s if guard is not None else 60.0

    def route(self, key: str | None) -> ArmId:
        """The arm for one request: by the key's stable hash when the split is sticky and a key came, else random."""
        if self._unchecked:  # after a pause, route by what the guard makes of the traffic before it
            self._maybe_check(time.monotonic())
        point = sticky_point(key) if key is not None else self._rng.random() * 100
        return choose_arm(list(self.weights.items()), point)

    def fallbacks(self, tried: ArmId) -> list[ArmId]:
        """Other arms to try when `tried` has no AVAILABLE version (still loading), heaviest first."""
        return [a for a, w in sorted(self.weights.items(), key=lambda kv: -kv[1]) if a != tried and w > 0]

    def shadow_arm(self) -> ArmId | None:
        shadow = self.split.shadow
        if shadow is None or self._rng.random() * 100 >= shadow.percent:
            return None
        return shadow.arm

    def record(self, arm: ArmId, ok: bool, latency_s: float) -> None:
        now = time.monotonic()
        self.stats[arm].add(now, ok, latency_s, self.window_s)
        self._unchecked += 1
        if not ok and arm in self.weights and arm != self.baseline and arm not in self.rolled_back:
            # a failure can condemn a candidate: judge it now (O(1)) rather than at the next look, which lets
            # CHECK_EVERY_S of traffic more fail there
            reason = self._error_verdict(arm, now)
            if reason is not None:
                self._roll_back(arm, reason)
        self._maybe_check(now)

    def _maybe_check(self, now: float) -> None:
        if self._unchecked and now - self._last_check >= CHECK_EVERY_S:
            self._last_check, self._unchecked = now, 0
            self._check(now)

    def _error_verdict(self, arm: ArmId, now: float) -> str | None:
        """Why the error-rate guard rolls `arm` back now, or None (no guard, too few requests, within bounds)."""
        guard = self.split.rollback
        if guard is None:
            return None
        n, err = self.stats[arm].error_rate(now, self.window_s)
        base_n, base_err = self.stats[self.baseline].error_rate(now, self.window_s)
        if n < guard.min_requests or base_n < guard.min_requests or err - base_err <= guard.max_error_rate_increase:
            return None
        return (f"error rate {err:.1%} vs baseline {base_err:.1%} over the last {guard.window_s:g} s "
                f"(allowed +{guard.max_error_rate_increase:.1%})")

    def _check(self, now: float) -> None:
        guard = self.split.rollback
        if guard is None and self.split.promotion is None:
            return
        base_n, _ = self.stats[self.baseline].error_rate(now, self.window_s)
        for arm, weight in list(self.weights.items()):
            if arm == self.baseline or arm in self.rolled_back:
                continue
            n, _ = self.stats[arm].error_rate(now, self.window_s)
            minimum = guard.min_requests if guard is not None else 1
            if n < minimum or base_n < minimum:
                continue
            if guard is not None:
                reason = self._error_verdict(arm, now)
                if reason is None and min(n, base_n) >= MIN_SAMPLES_FOR_P99:
                    p99, base_p99 = (self.stats[a].p99(now, self.window_s) for a in (arm, self.baseline))
                    if base_p99 > 0 and p99 > guard.max_p99_latency_ratio * base_p99:
                        reason = (f"p99 latency {p99 * 1000:.1f} ms vs baseline {base_p99 * 1000:.1f} ms over the "
                                  f"last {guard.window_s:g} s (allowed x{guard.max_p99_latency_ratio:g})")
                if reason is not None:
                    self._roll_back(arm, reason)
                    continue
            promotion = self.split.promotion
            if promotion is not None and weight < 100 and now - self._last_step >= promotion.interval_s:
                step = min(promotion.step_percent, self.weights[self.baseline])
                if step > 0:
                    self.weights[arm] += step
                    self.weights[self.baseline] -= step
                    self._last_step = now
                    self.promotions += 1
                    log.info("Model %s: promoted %s to %g%% of traffic (healthy for %g s)",
                             self.model, _arm_text(arm), self.weights[arm], promotion.interval_s)

    def _roll_back(self, arm: ArmId, reason: str) -> None:
        self.weights[self.baseline] += self.weights[arm]
        self.weights[arm] = 0.0
        self.rolled_back[arm] = reason
        self.rollbacks += 1
        if self._on_rollback is not None:
            self._on_rollback(self.model, str(arm))
        log.warning("Model %s: rolled back %s (weight now 0; %s now serves its traffic): %s",
                    self.model, _arm_text(arm), _arm_text(self.baseline), reason)

    def describe(self) -> dict[str, Any]:
        """The split as GET /v1/models shows it: weights now and as configured, per-arm totals, rollbacks."""
        self._maybe_check(time.monotonic())
        configured = dict(self.split.arms)
        arms = []
        for arm in [*configured, *([self.split.shadow.arm] if self.split.shadow else [])]:
            stats = self.stats.get(arm, ArmStats())
            arms.append({
                ("label" if isinstance(arm, str) else "version"): str(arm),
                "role": "shadow" if arm not in configured else "baseline" if arm == self.baseline else "candidate",
                "weight": self.weights.get(arm, 0.0),
                "configured_weight": configured.get(arm, 0),
                "requests": stats.requests,
                "errors": stats.errors,
                "mean_latency_ms": round(stats.latency_sum_s / stats.requests * 1000, 3) if stats.requests else 0.0,
                **({"rolled_back": self.rolled_back[arm]} if arm in self.rolled_back else {}),
            })
        return {"arms": arms, "sticky_key": self.split.sticky_key, "rollbacks": self.rollbacks,
                "promotions": self.promotions, "shadow_dropped": self.shadow_dropped}


def _arm_text(arm: ArmId) -> str:
    return f"label {arm!r}" if isinstance(arm, str) else f"version {arm}"


class TrafficControllers:
    """The live TrafficController of each model that has a split. A new or changed split (config reload) starts
    fresh: weights as configured, no history; an identical split reloaded keeps its state (a rollback stays
    rolled back). Event-loop confined."""

    def __init__(
        self, split_of: Callable[[str], TrafficSplit | None], on_rollback: Callable[[str, str], None] | None = None
    ) -> None:
        self._split_of = split_of
        self._on_rollback = on_rollback
        self._controllers: dict[str, TrafficController] = {}

    def get(self, model: str) -> TrafficController | None:
        split = self._split_of(model)
        if split is None:
            return None
        controller = self._controllers.get(model)
        if controller is None or (controller.split is not split and controller.split != split):
            controller = self._controllers[model] = TrafficController(model, split, on_rollback=self._on_rollback)
        controller.split = split
        return controller

    def items(self) -> list[tuple[str, TrafficController]]:
        return list(self._controllers.items())
