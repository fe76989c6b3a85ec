"""The default of --frontend_processes: one front end per core this process may use (affinity mask and cgroup CPU
quota), at most 4, none on one core."""

from __future__ import annotations

import os
import subprocess
import sys
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


@pytest.mark.parametrize("layout, files, cpus", [
    ("v2 quota of 1.5 cores", {"cpu.max": "150000 100000\n"}, min(AFFINITY, 2)),
    ("v2 without a limit", {"cpu.max": "max 100000\n"}, AFFINITY),
    ("v2 quota of half a core", {"cpu.max": "50000 100000\n"}, 1),
    ("v1 quota of 1 core", {"cpu,cpuacct/cpu.cfs_quota_us": "100000\n",
                            "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, 1),
    ("v1 without a limit", {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, AFFINITY),
    ("a file caught half-written", {"cpu.max": ""}, AFFINITY),
    ("nothing mounted", {}, AFFINITY),
])
def test_a_container_cpu_quota_bounds_the_count(tmp_path: Path, layout: str, files: dict[str, str], cpus: int) -> None:
    """A pod limited to 1.5 CPUs on a bigger node counts 2 cores, whatever the node has. The files sit where this
    process's own /proc/self/cgroup says its cgroup is, at the root of the mount (as in a container)."""
    own = [line.split(":", 2) for line in Path("/proc/self/cgroup").read_text().splitlines()]
    for name, text in files.items():
        directory, _, leaf = name.rpartition("/")
        for _, controllers, path in own:
            v2 = controllers == "" and not directory
            v1 = directory and set(directory.split(",")) & set(controllers.split(","))
            if v2 or v1:
                target = tmp_path / directory / path.lstrip("/") / leaf
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
    assert usable_cpus(tmp_path) == cpus, layout


@pytest.mark.skipif(not os.path.exists("/usr/bin/taskset"), reason="needs taskset (util-linux)")
def test_serve_on_one_core_runs_one_process(testdata: Path, tmp_path: Path) -> None:
    """`taskset -c 0 pyserving serve ...`: one usable core, so no front-end process (they would only add hops)."""
    rest = free_port()
    ready = lambda: requests.get(f"http://127.0.0.1:{rest}/v1/models/half", timeout=5).ok  # noqa: E731
    flags = [f"--port={free_port()}", f"--rest_api_port={rest}", "--host=127.0.0.1", "--model_name=half",
             f"--model_base_path={testdata / 'saved_model_half_plus_two_cpu'}"]
    with serve_subprocess(flags, tmp_path / "stderr.log", ready,
                          command=("taskset", "-c", "0", sys.executable, "-m", "pyserving")) as proc:
        server = psutil.Process(proc.pid)
        assert server.name() != "taskset" and server.children() == []
        assert requests.post(f"http://127.0.0.1:{rest}/v1/models/half:predict", json={"instances": [2.0]},
                             timeout=10).json() == {"predictions": [3.0]}
    log = (tmp_path / "stderr.log").read_text()
    assert "front-end processes" not in log


@pytest.mark.skipif(AFFINITY < 2, reason="needs 2 cores")
def test_serve_on_two_cores_runs_two_front_ends(testdata: Path, tmp_path: Path) -> None:
    rest = free_port()
    ready = lambda: requests.get(f"http://127.0.0.1:{rest}/v1/models/half", timeout=5).ok  # noqa: E731
    flags = [f"--port={free_port()}", f"--rest_api_port={rest}", "--host=127.0.0.1", "--model_name=half",
             f"--model_base_path={testdata / 'saved_model_half_plus_two_cpu'}"]
    with serve_subprocess(flags, tmp_path / "stderr.log", ready,
                          command=("taskset", "-c", "0,1", sys.executable, "-m", "pyserving")) as proc:
        children = psutil.Process(proc.pid).children()
        assert len(children) == 2 and all("pyserving.frontends.worker" in c.cmdline() for c in children)
        assert requests.post(f"http://127.0.0.1:{rest}/v1/models/half:predict", json={"instances": [2.0]},
                             timeout=10).json() == {"predictions": [3.0]}
