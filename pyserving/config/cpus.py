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


def _quota_cpus(root: Path = _CGROUP_ROOT) -> float | None:
    """The CPU quota of this process's cgroup as cores (None: no limit, or not readable)."""
    try:
        own = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        own = []
    candidates: list[tuple[Path, Path | None]] = []
    for line in own:
        _, controllers, path = line.split(":", 2)
        rel = path.lstrip("/")
        if controllers == "":  # cgroup v2: one hierarchy
            candidates.append((root / rel / "cpu.max", None))
            candidates.append((root / "cpu.max", None))
        elif "cpu" in controllers.split(","):  # cgroup v1
            for mount in (root / "cpu,cpuacct", root / "cpu"):
                candidates.append((mount / rel / "cpu.cfs_quota_us", mount / rel / "cpu.cfs_period_us"))
                candidates.append((mount / "cpu.cfs_quota_us", mount / "cpu.cfs_period_us"))
    for quota_file, period_file in candidates:
        try:
            if period_file is None:
                quota, period = quota_file.read_text().split()[:2]
            else:
                quota, period = quota_file.read_text().strip(), period_file.read_text().strip()
        except (OSError, ValueError):
            continue
        if quota in ("max", "-1"):
            return None
        try:
            q, p = int(quota), int(period)
        except ValueError:
            continue
        if q > 0 and p > 0:
            return q / p
    return None


def usable_cpus(cgroup_root: Path = _CGROUP_ROOT) -> int:
    """Cores this process may run on: the affinity mask, bounded by the cgroup's CPU quota (rounded up)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    quota = _quota_cpus(cgroup_root)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def default_frontend_processes(cpus: int | None = None) -> int:
    """--frontend_processes when not given: one front end per usable core, at most MAX_DEFAULT_FRONTEND_PROCESSES;
    0 (everything in one process) on a single core, where extra processes would only add hops."""
    n = usable_cpus() if cpus is None else cpus
    return 0 if n < 2 else min(n, MAX_DEFAULT_FRONTEND_PROCESSES)
