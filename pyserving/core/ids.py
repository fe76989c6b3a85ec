"""Names for servables and for what a request asks for."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ServableId:
    """One loaded (or loading) version of a model."""

    name: str
    version: int


@dataclass(frozen=True, slots=True)
class ServableRequest:
    """What a client asked for: a model, and at most one of a version or a version label."""

    name: str
    version: int | None = None
    label: str | None = None

    def describe(self) -> str:
        """TF Serving's spelling of the request, used in its NOT_FOUND messages."""
        if self.version is not None:
            return f"Specific({self.name}, {self.version})"
        return f"Latest({self.name})"
