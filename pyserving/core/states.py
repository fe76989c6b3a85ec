"""The lifecycle states of a model version, numbered as TF Serving's ModelVersionStatus.State."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pyserving.errors import ServingError


class ServableState(enum.IntEnum):
    UNKNOWN = 0
    START = 10
    LOADING = 20
    AVAILABLE = 30
    UNLOADING = 40
    END = 50


@dataclass(frozen=True, slots=True)
class VersionStatus:
    """What GetModelStatus reports for one version; a failed load is END with its error."""

    version: int
    state: ServableState
    error: ServingError | None = None
