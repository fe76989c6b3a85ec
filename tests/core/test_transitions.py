from __future__ import annotations

import pytest

from pyserving.core.states import ServableState as S
from pyserving.core.transitions import Actions, VersionSnapshot as V, next_actions


@pytest.mark.parametrize(
    ("versions", "expected"),
    [
        ({}, Actions()),
        ({1: V(S.START, True)}, Actions(load=(1,))),
        ({1: V(S.START, True), 2: V(S.START, True)}, Actions(load=(2, 1))),
        # a new version loads first; the old one stays until the new one is AVAILABLE
        ({1: V(S.AVAILABLE, False), 2: V(S.START, True)}, Actions(load=(2,))),
        ({1: V(S.AVAILABLE, False), 2: V(S.LOADING, True)}, Actions()),
        ({1: V(S.AVAILABLE, False), 2: V(S.AVAILABLE, True)}, Actions(unload=(1,))),
        # a broken new version never takes the serving one away
        ({1: V(S.AVAILABLE, False), 2: V(S.END, True, failed=True)}, Actions()),
        # nothing aspired (model removed): unload everything, lowest first
        ({1: V(S.AVAILABLE, False), 2: V(S.AVAILABLE, False)}, Actions(unload=(1, 2))),
        # unloading and ended versions are left alone
        ({1: V(S.UNLOADING, False), 2: V(S.AVAILABLE, True), 3: V(S.END, False)}, Actions()),
        ({1: V(S.AVAILABLE, True), 2: V(S.AVAILABLE, True)}, Actions()),
    ],
)
def test_next_actions(versions: dict[int, V], expected: Actions) -> None:
    assert next_actions(versions) == expected
