"""How many cores this process may really use, and what that makes the default of --frontend_processes.

`os.cpu_count()` is the machine's count. In a container with a CPU limit (Kubernetes `resources.limits.cpu`,
`docker run --cpus`) the kernel grants a quota of CPU time instead, and on a 64-core node a pod limited to 2 cores
must not start 64 front ends: the quota (cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us`) and the CPU affinity mask
(`taskset`, cpusets) both bound the count.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

MAX_DEFAULT_FRONTEND_PROCESSES = 4
"""Measured on a 16-core machine (bench/README.md, scripts/device_scaling.py): 4 front ends served the most (gRPC
9203 req/s, REST 10699); 8 served no more (9164, 9278), because the one model process's event loop is then the
limit, and each front end holds about 68 MiB. More can be asked for with --frontend_processes=N."""

_CGROUP_ROOT = Path("/sys/fs/cgroup")
_OWN_CGROUP = Path("/proc/self/cgroup")


def _ancestry(root: Path, rel: str) -> list[Path]:
    """root/a/b/c, root/a/b, root/a, root: a limit on any enclosing cgroup (a systemd slice, a pod) binds too."""
    parts = [p for p in rel.strip("/").split("/") if p]
    return [root.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]


def _quota_cpus(root: Path = _CGROUP_ROOT, own: Path = _OWN_CGROUP) -> float | None:
    """The tightest CPU quota over this process's cgroup and its ancestors, as cores (None: no limit found)."""
    try:
        lines = own.read_text().splitlines()
    except OSError:
        return None
    limits: list[float] = []
    for line in lines:
        try:
            _, controllers, rel = line.split(":", 2)
        except ValueError:
            continue
        if controllers == "":  # cgroup v2: "max 100000" or "150000 100000"
            for directory in _ancestry(root, rel):
                try:
                    quota, period = (directory / "cpu.max").read_text().split()[:2]
                    if quota != "max" and int(quota) > 0 and int(period) > 0:
                        limits.append(int(quota) / int(period))
                except (OSError, ValueError):  # absent, or caught half-written: no limit known there
                    continue
        elif "cpu" in controllers.split(","):  # cgroup v1: cfs_quota_us -1 is no limit
            for mount in (root / "cpu,cpuacct", root / "cpu"):
                for directory in _ancestry(mount, rel):
                    try:
                        quota = int((directory / "cpu.cfs_quota_us").read_text())
                        period = int((directory / "cpu.cfs_period_us").read_text())
                    except (OSError, ValueError):
                        continue
                    if quota > 0 and period > 0:
                        limits.append(quota / period)
    return min(limits) if limits else None


def usable_cpus(cgroup_root: Path = _CGROUP_ROOT, own_cgroup: Path = _OWN_CGROUP) -> int:
    """Cores this process may run on: the affinity mask, bounded by the cgroup CPU quota rounded up (a 1.5-CPU
    limit can keep two cores busy half the time each)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    quota = _quota_cpus(cgroup_root, own_cgroup)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def default_frontend_processes(cpus: int | None = None) -> int:
    """--frontend_processes when not given: one front end per usable core, at most MAX_DEFAULT_FRONTEND_PROCESSES;
    0 (everything in one process) on a single core, where extra processes would only add hops."""
    n = usable_cpus() if cpus is None else cpus
    return 0 if n < 2 else min(n, MAX_DEFAULT_FRONTEND_PROCESSES)
