"""Pure: from a snapshot of one model's versions, the next loads and unloads (availability-preserving).

TF Serving's AvailabilityPreservingPolicy loads new versions before unloading old ones. pyserving keeps that and
goes one step further: a version that is no longer aspired is unloaded only once an aspired version is
AVAILABLE, so a broken new version (or one that is still loading) never takes the serving one away. A model with
no aspired versions at all (removed from the config) has everything unloaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pyserving.core.states import ServableState


@dataclass(frozen=True, slots=True)
class VersionSnapshot:
    state: ServableState
    aspired: bool
    failed: bool = False


@dataclass(frozen=True, slots=True)
class Actions:
    load: tuple[int, ...] = ()
    unload: tuple[int, ...] = ()


def next_actions(versions: Mapping[int, VersionSnapshot]) -> Actions:
    """Loads: aspired versions not started yet, highest first. Unloads: AVAILABLE versions no longer aspired, lowest
    first, once some aspired version is AVAILABLE (or when nothing is aspired any more)."""
    load = tuple(sorted((v for v, s in versions.items() if s.aspired and s.state == ServableState.START), reverse=True))
    any_aspired = any(s.aspired for s in versions.values())
    aspired_available = any(s.aspired and s.state == ServableState.AVAILABLE for s in versions.values())
    unload: tuple[int, ...] = ()
    if aspired_available or not any_aspired:
        unload = tuple(sorted(v for v, s in versions.items() if not s.aspired and s.state == ServableState.AVAILABLE))
    return Actions(load=load, unload=unload)
