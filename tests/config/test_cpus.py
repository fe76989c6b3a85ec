"""The default of --frontend_processes: one front end per core this process may use (affinity mask and cgroup CPU
quota), at most 4, none on one core."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
import requests

from conftest import free_port, serve_subprocess
from pyserving.config.cpus import MAX_DEFAULT_FRONTEND_PROCESSES, default_frontend_processes, usable_cpus

AFFINITY = len(os.sched_getaffinity(0))


def test_one_per_core_capped_and_none_on_one_core() -> None:
    assert [default_frontend_processes(n) for n in (1, 2, 3, 4, 16, 64)] == [0, 2, 3, 4, 4, 4]
    assert MAX_DEFAULT_FRONTEND_PROCESSES == 4


HYBRID = "12:cpu,cpuacct:/kubepods/pod1/c1\n0::/kubepods/pod1/c1\n"
V2 = "0::/kubepods/pod1/c1\n"


@pytest.mark.parametrize("layout, own, files, cpus", [
    ("v2 quota of 1.5 cores", V2, {"kubepods/pod1/c1/cpu.max": "150000 100000\n"}, min(AFFINITY, 2)),
    ("v2 without a limit", V2, {"kubepods/pod1/c1/cpu.max": "max 100000\n"}, AFFINITY),
    ("v2 limit on the pod, none on the container", V2,
     {"kubepods/pod1/c1/cpu.max": "max 100000\n", "kubepods/pod1/cpu.max": "50000 100000\n"}, 1),
    ("v2 in a container's own namespace (at the root)", "0::/\n", {"cpu.max": "100000 100000\n"}, 1),
    ("v1 quota of 1 core", HYBRID, {"cpu,cpuacct/kubepods/pod1/c1/cpu.cfs_quota_us": "100000\n",
                                    "cpu,cpuacct/kubepods/pod1/c1/cpu.cfs_period_us": "100000\n"}, 1),
    ("v1 without a limit", HYBRID, {"cpu/kubepods/pod1/c1/cpu.cfs_quota_us": "-1\n",
                                    "cpu/kubepods/pod1/c1/cpu.cfs_period_us": "100000\n"}, AFFINITY),
    ("a file caught half-written", V2, {"kubepods/pod1/c1/cpu.max": ""}, AFFINITY),
    ("nothing mounted", V2, {}, AFFINITY),
])
def test_a_container_cpu_quota_bounds_the_count(tmp_path: Path, layout: str, own: str, files: dict[str, str],
                                                cpus: int) -> None:
    """A pod limited to 1.5 CPUs on a bigger node counts 2 cores, whatever the node has; a limit on an enclosing
    cgroup counts too. A fake /proc/self/cgroup and cgroup mount, so the cases do not depend on this machine's."""
    (tmp_path / "proc-self-cgroup").write_text(own)
    for name, text in files.items():
        (tmp_path / "fs" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "fs" / name).write_text(text)
    assert usable_cpus(tmp_path / "fs", tmp_path / "proc-self-cgroup") == cpus, layout


def test_this_machines_own_cgroup_is_read_without_error() -> None:
    assert 1 <= usable_cpus() <= AFFINITY


NO_TASKSET = pytest.mark.skipif(not os.path.exists("/usr/bin/taskset"), reason="needs taskset (util-linux)")


@contextmanager
def _serve_on(cores: str, testdata: Path, tmp_path: Path) -> Iterator[tuple[psutil.Process, int]]:
    """`taskset -c CORES pyserving serve` of half_plus_two with serve's defaults; (the server, its REST port)."""
    rest = free_port()
    ready = lambda: requests.get(f"http://127.0.0.1:{rest}/v1/models/half", timeout=5).ok  # noqa: E731
    with serve_subprocess(_flags(rest, testdata), tmp_path / "stderr.log", ready,
                          command=("taskset", "-c", cores, sys.executable, "-m", "pyserving")) as proc:
        server = psutil.Process(proc.pid)
        assert server.name() != "taskset"
        yield server, rest
        assert requests.post(f"http://127.0.0.1:{rest}/v1/models/half:predict", json={"instances": [2.0]},
                             timeout=10).json() == {"predictions": [3.0]}


def _flags(rest: int, testdata: Path) -> list[str]:
    return [f"--port={free_port()}", f"--rest_api_port={rest}", "--host=127.0.0.1", "--model_name=half",
            f"--model_base_path={testdata / 'saved_model_half_plus_two_cpu'}"]


@NO_TASKSET
def test_serve_on_one_core_runs_one_process(testdata: Path, tmp_path: Path) -> None:
    """`taskset -c 0 pyserving serve ...`: one usable core, so no front-end process (they would only add hops)."""
    with _serve_on("0", testdata, tmp_path) as (server, _):
        assert server.children() == []
    assert "front-end processes" not in (tmp_path / "stderr.log").read_text()


@NO_TASKSET
@pytest.mark.skipif(usable_cpus() < 2, reason="needs 2 usable cores")
def test_serve_on_two_cores_runs_two_front_ends(testdata: Path, tmp_path: Path) -> None:
    with _serve_on("0,1", testdata, tmp_path) as (server, rest):
        children = server.children()
        assert len(children) == 2 and all("pyserving.frontends.worker" in c.cmdline() for c in children)
        # Front ends share their ports with SO_REUSEPORT; a second server on the same port must still be refused,
        # not handed half the connections.
        second = subprocess.run([sys.executable, "-m", "pyserving", "serve", *_flags(rest, testdata)],
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 1, second.stderr[-2000:]
        assert f"Cannot serve REST on 127.0.0.1:{rest}" in second.stderr and "Is the port in use?" in second.stderr
