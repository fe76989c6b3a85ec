from __future__ import annotations

import pytest

from pyserving.core.version_policy import aspired_versions
from pyserving.options import VersionPolicy


@pytest.mark.parametrize(
    ("policy", "on_disk", "expected"),
    [
        (VersionPolicy(), [1, 3, 2], [3]),
        (VersionPolicy(num_versions=0), [1, 3, 2], [3]),
        (VersionPolicy(num_versions=2), [1, 3, 2], [3, 2]),
        (VersionPolicy(num_versions=5), [1, 2], [2, 1]),
        (VersionPolicy(), [], []),
        (VersionPolicy(kind="all"), [1, 3, 2], [3, 2, 1]),
        (VersionPolicy(kind="specific", versions=(1, 7)), [1, 3, 2], [1]),
        (VersionPolicy(kind="specific", versions=()), [1], []),
    ],
)
def test_aspired_versions(policy: VersionPolicy, on_disk: list[int], expected: list[int]) -> None:
    assert aspired_versions(policy, on_disk) == expected
