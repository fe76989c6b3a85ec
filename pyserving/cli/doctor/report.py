"""What doctor found: one finding per check, OK / WARN / FAIL, each WARN and FAIL with its fix."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Status = Literal["OK", "WARN", "FAIL"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One check's verdict: `check` names what was checked ("ports", "model m version 1"), `fix` what to do."""

    status: Status
    check: str
    message: str
    fix: str = ""


@dataclass
class Report:
    """The findings in the order the checks ran (flags and files, models, address, ports, GPU)."""

    findings: list[Finding] = field(default_factory=list)
    errors_seen: list[str] = field(default_factory=list)
    """Texts of problems already reported, so serve's own verdict on the flags does not repeat them."""

    def add(self, status: Status, check: str, message: str, fix: str = "") -> None:
        self.findings.append(Finding(status, check, message, fix))

    def fail(self, check: str, message: str, fix: str, *, error: str = "") -> None:
        self.add("FAIL", check, message, fix)
        self.errors_seen.append(error or message)

    def count(self, status: Status) -> int:
        return sum(f.status == status for f in self.findings)
