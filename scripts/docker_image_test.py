#!/usr/bin/env python3
"""The Docker image test: builds deploy/docker/Dockerfile with no network and runs the article's example CNN in it.

Run as root on Debian with the project's venv (`bash scripts/test.sh` makes it); .ci/run calls it after the pytest
suite, which it stays out of because it takes minutes:

    .venv/bin/python scripts/docker_image_test.py

What it does, everything local (no registry is reachable here):
1. installs Debian's docker.io and debootstrap when missing, starts a private dockerd in a temporary directory
   (its own data root, exec root and socket; no bridge, no iptables);
2. makes the base image from `debootstrap --variant=minbase` bookworm with python3 + python3-venv (3.11), and
   meanwhile `pip wheel`s the project and its dependencies (pip's cache makes this quick after the test suite's
   install) into a directory of the build context and exports the example CNN;
3. builds the image with BASE_IMAGE=that base and WHEELS=those wheels, `--network=none`;
4. checks the image: non-root user, TF Serving's ENV/EXPOSE, no compiler, no pip cache, no wheels left; its size;
5. runs it TF Serving's way (MODEL_NAME=my_model, the model mounted at /models/my_model): REST and gRPC predicts with
   examples/image_classifier/query.py, the HEALTHCHECK turns healthy, PID 1 is the server and not root; `docker
   stop` exits 0;
6. runs it the article's way (`--model_config_file=/models/config.conf --enable_batching=true
   --batching_parameters_file=/models/batching.conf`, MODEL_NAME left at its default, which names no model): a
   REST and a gRPC predict wait in the batcher (batch_timeout_micros is 3 s) when `docker stop` sends SIGTERM;
   both must succeed after it (drain) and the exit code must be 0.
Ports 8500/8501 when free, else free ones passed as --port/--rest_api_port; `--network=host` (no bridge) and
--host=127.0.0.1. Every step has a timeout, the whole run SIGALRM_S; dockerd is stopped and the temporary
directories removed however it ends. Prints each step's time and the image size.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCKER = "/usr/bin/docker"  # Debian's 20.10 client: its BuildKit is built in (a newer client on PATH may lack buildx)
DOCKERD = "/usr/sbin/dockerd"
BASE_IMAGE = "pyserving-base:bookworm"
IMAGE = "pyserving:image-test"
SIGALRM_S = 25 * 60  # the whole run, slow mirror included; about 5 minutes is usual
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BATCHING_CONF = """max_batch_size { value: 64 }
batch_timeout_micros { value: 3000000 }
max_enqueued_batches { value: 100 }
num_batch_threads { value: 2 }
"""
# The article's model_config.conf (section 3.2) as printed, paths already inside the container.
MODEL_CONFIG = """model_config_list {
config {
name: "my_model"
base_path: "/models/my_model"
model_platform: "tensorflow"
# 可选:指定默认版本(若不设置,默认使用最高版本)
default_version_policy {
latest {
num_versions: 1
}
}
}
}
"""


class ImageTestFailure(AssertionError):
    pass


class Steps:
    """Times named steps and prints them as they end; the table is printed at the end, failed or not."""

    def __init__(self) -> None:
        self.times: list[tuple[str, float, str]] = []

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        print(f"--- {name}", flush=True)
        start = time.monotonic()
        outcome = "FAILED"
        try:
            yield
            outcome = "ok"
        finally:
            took = time.monotonic() - start
            self.times.append((name, took, outcome))
            print(f"--- {name}: {outcome} in {took:.1f} s", flush=True)

    def table(self) -> str:
        width = max((len(n) for n, _, _ in self.times), default=10)
        return "\n".join(f"  {n:<{width}}  {t:7.1f} s  {o}" for n, t, o in self.times)


def run(argv: Sequence[str], *, timeout: float, log: Path | None = None, env: dict[str, str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command to completion, its output into `log` (else returned); a failure raises with the output's tail."""
    out = log.open("ab") if log is not None else subprocess.PIPE
    try:
        proc = subprocess.run(list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                              timeout=timeout, env=env, check=False)
    finally:
        if log is not None:
            out.close()  # type: ignore[union-attr]
    text = proc.stdout.decode(errors="replace") if proc.stdout is not None else ""
    if check and proc.returncode != 0:
        tail = log.read_text(errors="replace")[-4000:] if log is not None else text[-4000:]
        raise ImageTestFailure(f"{' '.join(argv[:4])} ... exited {proc.returncode}:\n{tail}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, text, "")


class Engine:
    """A private dockerd: its own data root, exec root, pid file and socket under `root`."""

    def __init__(self, root: Path, logs: Path) -> None:
        self.root = root
        self.socket = root / "docker.sock"
        self.pidfile = root / "docker.pid"
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{self.socket}", "DOCKER_BUILDKIT": "1"}
        self.log = logs / "dockerd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [DOCKERD, "--storage-driver=overlay2", "--iptables=false", "--ip-masq=false", "--bridge=none",
                 f"--data-root={self.root / 'data'}", f"--exec-root={self.root / 'exec'}",
                 f"--pidfile={self.pidfile}", f"--host=unix://{self.socket}"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while run([DOCKER, "version"], timeout=10, env=self.env, check=False).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise ImageTestFailure(f"dockerd did not start:\n{self.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)

    def docker(self, *args: str, timeout: float = 60, log: Path | None = None,
               check: bool = True) -> subprocess.CompletedProcess[str]:
        return run([DOCKER, *args], timeout=timeout, log=log, env=self.env, check=check)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        containers = self.docker("ps", "-aq", timeout=30, check=False).stdout.split()
        if containers:
            self.docker("rm", "-f", *containers, timeout=60, check=False)
        self.proc.terminate()  # dockerd stops its containerd on SIGTERM
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)


def unmount_under(root: Path) -> list[str]:
    """Lazily unmount whatever an interrupted dockerd left mounted under `root`; returns what is still mounted."""
    def mounts() -> list[str]:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            points = [line.split()[4].encode().decode("unicode_escape") for line in f]
        return [p for p in points if p == str(root) or p.startswith(f"{root}/")]

    for point in sorted(mounts(), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)
    return mounts()


def ensure_packages() -> None:
    missing = [pkg for pkg, path in (("docker.io", DOCKERD), ("docker.io", DOCKER), ("debootstrap",
               "/usr/sbin/debootstrap")) if not os.access(path, os.X_OK)]
    if missing:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        run(["apt-get", "update", "-qq"], timeout=300, env=env)
        run(["apt-get", "install", "-y", "-qq", *sorted(set(missing))], timeout=600, env=env)


def free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise ImageTestFailure("no free port")


def http_json(url: str, body: dict[str, object] | None = None, timeout: float = 5) -> tuple[int, object]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def wait_serving(engine: Engine, container: str, rest: int, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            status, body = http_json(f"http://127.0.0.1:{rest}/v1/models/my_model", timeout=2)
            if status == 200 and "AVAILABLE" in json.dumps(body):
                return
        except OSError:
            pass
        running = engine.docker("inspect", "-f", "{{.State.Running}}", container, check=False).stdout.strip()
        if running != "true" or time.monotonic() > deadline:
            logs = engine.docker("logs", "--tail", "40", container, check=False).stdout
            raise ImageTestFailure(f"{container} is not serving my_model (running={running}):\n{logs}")
        time.sleep(0.5)


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise ImageTestFailure(message)


def check_image(engine: Engine) -> int:
    """The image's static promises; returns its size in bytes."""
    config = json.loads(engine.docker("image", "inspect", IMAGE).stdout)[0]
    c = config["Config"]
    expect(c["User"] not in ("", "0", "root") and not c["User"].startswith(("0:", "root:")), f"User is {c['User']!r}")
    expect({"8500/tcp", "8501/tcp"} <= set(c.get("ExposedPorts") or {}), f"ExposedPorts: {c.get('ExposedPorts')}")
    expect({"MODEL_NAME=model", "MODEL_BASE_PATH=/models"} <= set(c["Env"]), f"Env: {c['Env']}")
    expect(c["Entrypoint"] == ["/usr/local/bin/pyserving-entrypoint"], f"Entrypoint: {c['Entrypoint']}")
    expect("pyserving-healthcheck" in " ".join(c["Healthcheck"]["Test"]), f"Healthcheck: {c['Healthcheck']}")
    probe = ("for c in gcc cc c++ g++ make; do command -v $c && exit 1; done; "
             "for d in /wheels /root/.cache/pip /home/pyserving/.cache/pip /src; do test -e $d && echo $d && exit 1; "
             "done; ls -d /opt/pyserving/lib/python3*/site-packages/tensorflow/include 2>/dev/null && exit 1; "
             "python3 -c 'import sys; print(sys.version)'")
    result = engine.docker("run", "--rm", "--network=none", "--user=0", "--entrypoint=/bin/sh", IMAGE, "-c", probe,
                           check=False)
    expect(result.returncode == 0, f"the final stage holds build leftovers: {result.stdout.strip()}")
    print(f"    image python: {result.stdout.strip()}")
    return int(config["Size"])


def check_running_container(engine: Engine, container: str) -> None:
    """PID 1 is the server (so SIGTERM reaches it) and runs as the image's non-root user."""
    cmdline = engine.docker("exec", container, "cat", "/proc/1/cmdline").stdout.replace("\0", " ")
    expect("pyserving serve" in cmdline, f"PID 1 is not the server: {cmdline}")
    uid = engine.docker("exec", container, "sh", "-c", "id -u; grep ^Uid: /proc/1/status").stdout.split()
    expect(uid[0] != "0" and uid[2] != "0", f"runs as root: {uid}")
    print(f"    PID 1: {cmdline.strip()}\n    uid: {uid[0]} (PID 1's real uid {uid[2]})")


def wait_healthy(engine: Engine, container: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        health = json.loads(engine.docker("inspect", "-f", "{{json .State.Health}}", container).stdout)
        if health["Status"] == "healthy":
            print(f"    health: {health['Log'][-1]['Output'].strip()}")
            return
        expect(time.monotonic() < deadline, f"not healthy after {timeout_s:.0f} s: {health}")
        time.sleep(0.5)


def stop_and_exit_code(engine: Engine, container: str) -> tuple[int, float]:
    start = time.monotonic()
    engine.docker("stop", container, timeout=60)  # SIGTERM, then SIGKILL after Docker's default 10 s
    took = time.monotonic() - start
    code = int(engine.docker("inspect", "-f", "{{.State.ExitCode}}", container).stdout.strip())
    print(f"    docker stop: {took:.1f} s, exit code {code}")
    return code, took


def query(args: Sequence[str], log: Path) -> None:
    """examples/image_classifier/query.py, the article's client."""
    run([sys.executable, str(REPO / "examples/image_classifier/query.py"), *args], timeout=120, log=log)
    lines = log.read_text(errors="replace").splitlines()
    expect(any("argmax=" in line for line in lines) and not any("unexpected output shape" in line for line in lines),
           f"query.py {' '.join(args)}: {lines[-5:]}")
    print(f"    {next(line for line in reversed(lines) if 'latency=' in line)}")


def in_flight_predicts(rest: int, grpc_port: int) -> tuple[threading.Thread, dict[str, object]]:
    """A REST and a gRPC predict of one image each, started now; `results` gets each one's outcome and end time."""
    import grpc
    import numpy as np

    from pyserving.codecs.tfserving.protos import predict_pb2

    image = np.random.default_rng(0).random((1, 224, 224, 3), dtype=np.float32)
    results: dict[str, object] = {}

    def rest_call() -> None:
        try:
            status, body = http_json(f"http://127.0.0.1:{rest}/v1/models/my_model:predict",
                                     {"instances": image.tolist()}, timeout=30)
            ok = status == 200 and isinstance(body, dict) and len(body["predictions"][0]) == 10
            results["rest"] = ("ok" if ok else f"HTTP {status}: {str(body)[:300]}", time.monotonic())
        except Exception as exc:  # noqa: BLE001 - reported as the outcome
            results["rest"] = (f"{type(exc).__name__}: {exc}", time.monotonic())

    def grpc_call() -> None:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "my_model"
        tensor = request.inputs["images"]
        tensor.dtype = 1  # DT_FLOAT
        for size in image.shape:
            tensor.tensor_shape.dim.add(size=size)
        tensor.tensor_content = image.tobytes()
        try:
            with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                predict = channel.unary_unary("/tensorflow.serving.PredictionService/Predict",
                                              request_serializer=predict_pb2.PredictRequest.SerializeToString,
                                              response_deserializer=predict_pb2.PredictResponse.FromString)
                response = predict(request, timeout=30)
            shape = [d.size for d in response.outputs["predictions"].tensor_shape.dim]
            results["grpc"] = ("ok" if shape == [1, 10] else f"output shape {shape}", time.monotonic())
        except grpc.RpcError as exc:
            results["grpc"] = (f"{exc.code().name}: {exc.details()}", time.monotonic())

    threads = [threading.Thread(target=f, daemon=True) for f in (rest_call, grpc_call)]

    def both() -> None:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)

    runner = threading.Thread(target=both, daemon=True)
    results["start"] = time.monotonic()
    runner.start()
    return runner, results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mirror", default=os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian"),
                        help="Debian mirror for debootstrap (default: %(default)s)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("docker_image_test.py runs a dockerd and debootstrap: run it as root", file=sys.stderr)
        return 2

    def on_alarm(signum: int, frame: object) -> None:
        raise TimeoutError(f"the image test ran past {SIGALRM_S} s")

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(f"stopped by signal {signum}")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, on_term)
    signal.alarm(SIGALRM_S)
    steps = Steps()
    started = time.monotonic()
    # Short paths: containerd's sockets live under the exec root, and a UNIX socket path has 108 bytes.
    tmp = Path(tempfile.mkdtemp(prefix="pyserving-image-test-"))
    wheels = Path(tempfile.mkdtemp(prefix=".wheels-image-test-", dir=REPO / "deploy" / "docker"))
    logs = tmp / "logs"
    logs.mkdir()
    engine = Engine(tmp, logs)
    size = 0
    failed = True
    debootstrap: subprocess.Popen[bytes] | None = None
    try:
        with steps.step("install docker.io and debootstrap (if missing)"):
            ensure_packages()
        with steps.step("start dockerd"):
            engine.start()
        rootfs = tmp / "rootfs"
        with steps.step("debootstrap, pip wheel and the model export, side by side"):
            debootstrap_log = logs / "debootstrap.log"
            with debootstrap_log.open("ab") as out:
                debootstrap = subprocess.Popen(
                    ["debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
                     "bookworm", str(rootfs), args.mirror], stdout=out, stderr=subprocess.STDOUT)
            debootstrap_start, debootstrap_end = time.monotonic(), []
            waiter = threading.Thread(target=lambda: debootstrap_end.append((debootstrap.wait(), time.monotonic())),
                                      daemon=True)
            waiter.start()
            with steps.step("pip wheel the project and its dependencies"):
                # setuptools builds pyserving's wheel in the tree: leave no build/ or egg-info that was not there.
                by_products = [p for p in (REPO / "build", REPO / "pyserving.egg-info") if not p.exists()]
                try:
                    # [tensorflow]: the image serves SavedModels, and TensorFlow is an extra (pyproject.toml)
                    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
                         f"--wheel-dir={wheels}", f"{REPO}[tensorflow]", "setuptools"], timeout=900,
                        log=logs / "pip-wheel.log")
                finally:
                    for path in by_products:
                        shutil.rmtree(path, ignore_errors=True)
                print(f"    {len(list(wheels.glob('*.whl')))} wheels, "
                      f"{sum(p.stat().st_size for p in wheels.glob('*.whl')) / 1e6:.0f} MB")
            models = tmp / "models"
            with steps.step("export the example CNN"):
                run([sys.executable, str(REPO / "examples/image_classifier/train_and_export.py"),
                     f"--export_dir={models / 'my_model'}"], timeout=300, log=logs / "export.log")
                (models / "config.conf").write_text(MODEL_CONFIG, encoding="utf-8")
                (models / "batching.conf").write_text(BATCHING_CONF, encoding="utf-8")
                # The container's user is not root: the model must be readable by others (and mkdtemp's is not).
                for path in [models, *models.rglob("*")]:
                    path.chmod(path.stat().st_mode | 0o444 | (0o111 if path.is_dir() else 0))
            code = debootstrap.wait(600)
            waiter.join(10)
            took = (debootstrap_end[0][1] if debootstrap_end else time.monotonic()) - debootstrap_start
            steps.times.append(("debootstrap bookworm minbase + python3 (its own time)", took,
                                "ok" if code == 0 else "FAILED"))
            if code != 0:
                raise ImageTestFailure(f"debootstrap exited {code}:\n{debootstrap_log.read_text()[-3000:]}")
        with steps.step("docker import the base image"):
            # As Debian's own images: no apt lists or package caches, no man pages or translations.
            for junk in ("var/cache/apt", "var/lib/apt/lists", "usr/share/man", "usr/share/locale"):
                for child in (rootfs / junk).glob("*"):
                    shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
            tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
            try:
                subprocess.run([DOCKER, "import", "--change", f"ENV PATH={DEFAULT_PATH}", "--change",
                                'CMD ["bash"]', "-", BASE_IMAGE], stdin=tar.stdout, env=engine.env, check=True,
                               timeout=300, stdout=subprocess.DEVNULL)
            finally:
                tar.stdout.close()  # type: ignore[union-attr]
                tar.wait(60)
            shutil.rmtree(rootfs)
        with steps.step("docker build --network=none"):
            engine.docker("build", "--network=none", "--progress=plain", f"--build-arg=BASE_IMAGE={BASE_IMAGE}",
                          f"--build-arg=WHEELS={wheels.relative_to(REPO)}", "-f", "deploy/docker/Dockerfile",
                          "-t", IMAGE, str(REPO), timeout=900, log=logs / "build.log")
        with steps.step("check the image"):
            size = check_image(engine)
            print(f"    size: {size / 1e6:.0f} MB ({size} bytes)")

        grpc_port, rest = free_port(8500), free_port(8501)
        ports = [] if (grpc_port, rest) == (8500, 8501) else [f"--port={grpc_port}", f"--rest_api_port={rest}"]
        if ports:
            print(f"    8500/8501 are taken here: serving on {grpc_port}/{rest}")
        common = ["run", "-d", "--network=host", f"--volume={models / 'my_model'}:/models/my_model:ro"]

        with steps.step("TF Serving's way: MODEL_NAME=my_model, predict over REST and gRPC, docker stop"):
            engine.docker(*common, "--name=tfserving-way", "--env=MODEL_NAME=my_model", "--health-interval=1s",
                          IMAGE, "--host=127.0.0.1", *ports)
            wait_serving(engine, "tfserving-way", rest)
            query(["--rest", f"http://127.0.0.1:{rest}"], logs / "query-rest.log")
            query(["--grpc", f"127.0.0.1:{grpc_port}", "--batch", "4"], logs / "query-grpc.log")
            wait_healthy(engine, "tfserving-way")
            check_running_container(engine, "tfserving-way")
            code, _ = stop_and_exit_code(engine, "tfserving-way")
            expect(code == 0, f"exit code {code} after docker stop")

        with steps.step("the article's way: --model_config_file + batching; SIGTERM with requests in flight"):
            engine.docker(*common, "--name=article-way", f"--volume={models / 'config.conf'}:/models/config.conf:ro",
                          f"--volume={models / 'batching.conf'}:/models/batching.conf:ro", IMAGE,
                          "--rest_api_port=8501", "--model_config_file=/models/config.conf", "--enable_batching=true",
                          "--batching_parameters_file=/models/batching.conf", "--host=127.0.0.1", *ports)
            wait_serving(engine, "article-way", rest)
            runner, results = in_flight_predicts(rest, grpc_port)
            time.sleep(1.0)  # both are in the batcher, waiting out its 3 s timeout
            expect("rest" not in results and "grpc" not in results, f"answered before SIGTERM: {results}")
            sigterm_at = time.monotonic()
            code, _ = stop_and_exit_code(engine, "article-way")
            runner.join(60)
            start = float(results["start"])  # type: ignore[arg-type]
            for name in ("rest", "grpc"):
                outcome, ended = results.get(name, ("no answer", 0.0))  # type: ignore[misc]
                print(f"    {name}: sent {sigterm_at - start:.2f} s before SIGTERM, {outcome} "
                      f"{ended - sigterm_at:.2f} s after it")
                expect(outcome == "ok" and ended > sigterm_at, f"{name} in flight at SIGTERM: {outcome}")
            logs_text = engine.docker("logs", "article-way").stdout
            expect("Received SIGTERM" in logs_text, "the server did not log SIGTERM")
            expect(code == 0, f"exit code {code} after docker stop")
        failed = False
    except (ImageTestFailure, TimeoutError, subprocess.TimeoutExpired, subprocess.CalledProcessError) as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
    finally:
        signal.alarm(0)
        with steps.step("clean up (dockerd, temporary directories)"):
            if debootstrap is not None and debootstrap.poll() is None:
                debootstrap.terminate()
                debootstrap.wait(30)
            engine.stop()
            left = unmount_under(tmp)
            shutil.rmtree(wheels, ignore_errors=True)
            if left:
                print(f"    still mounted, so {tmp} is left in place: {left}", file=sys.stderr)
            else:
                shutil.rmtree(tmp, ignore_errors=True)
        print("Docker image test " + ("FAILED" if failed else "passed") + f" in {time.monotonic() - started:.0f} s; "
              f"image size {size / 1e6:.0f} MB; steps:")
        print(steps.table())
        ok = sum(outcome == "ok" for _, _, outcome in steps.times)
        bad = max(len(steps.times) - ok, int(failed))  # a failure between steps counts too
        print(f"docker_image_test: {ok} passed, {bad} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
