"""Pure: which of the versions found on disk a model's version policy wants served (its aspired versions)."""

from __future__ import annotations

from collections.abc import Iterable

from pyserving.options import VersionPolicy


def aspired_versions(policy: VersionPolicy, on_disk: Iterable[int]) -> list[int]:
    """The versions to serve, highest first. `latest` with num_versions 0 means 1, as in TF Serving."""
    found = sorted(set(on_disk), reverse=True)
    if policy.kind == "all":
        return found
    if policy.kind == "specific":
        wanted = set(policy.versions)
        return [v for v in found if v in wanted]
    return found[: max(policy.num_versions, 1)]
