"""Doctor's checks of the machine: the ports and the --host address serve would listen on, and GPU memory
against the batch size."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
from typing import Any

import numpy as np

from pyserving.cli.doctor.report import Report
from pyserving.options import ModelConfig, ServerOptions


def _listening_pids(port: int) -> list[str]:
    """Processes holding a listening TCP socket on `port`, as "PID (command)", from /proc (Linux; those of other
    users only when readable)."""
    if not os.path.isdir("/proc/net"):
        return []
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f, None)
                for line in f:
                    parts = line.split()
                    if len(parts) > 9 and parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(parts[9])
        except OSError:
            continue
    if not inodes:
        return []
    targets = {f"socket:[{inode}]" for inode in inodes}
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:  # gone, or another user's
            continue
        if not any(_link(f"/proc/{pid}/fd/{fd}") in targets for fd in fds):
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                command = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            command = "?"
        found.append(f"pid {pid} ({command[:120]})")
    return found


def _link(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:  # the descriptor closed meanwhile
        return ""


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def check_ports(v: dict[str, Any], report: Report) -> None:
    host = v["host"] or "0.0.0.0"
    ports = [("gRPC", "port", v["port"]), ("REST", "rest_api_port", v["rest_api_port"])]
    if v["enable_metrics"]:
        ports.append(("metrics", "metrics_port", v["metrics_port"] or 8502))
    seen: dict[int, str] = {}
    for what, flag, port in ports:
        if not port:
            continue
        if port in seen:
            report.fail("ports", f"--{flag}={port} is also {seen[port]}", f"give --{flag} a port of its own")
            continue
        seen[port] = f"the {what} port (--{flag})"
        try:
            with socket.socket(_family(host), socket.SOCK_STREAM) as s:
                # As the server binds (asyncio and gRPC set SO_REUSEADDR): a port in TIME_WAIT is free to it.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((host, port))
                s.listen(1)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                holders = _listening_pids(port)
                who = f" by {'; '.join(holders)}" if holders else ""
                report.fail("ports", f"{what} port {port} on {host} is in use{who} (the article's \"No response "
                            "from server\": port conflict)", f"stop that process, or pick a free port: --{flag}=N "
                            "(`ss -ltnp` shows listeners)")
            elif exc.errno in (errno.EACCES, errno.EPERM):
                report.fail("ports", f"{what} port {port}: binding needs privileges ({exc.strerror})",
                            f"use a port above 1023, e.g. --{flag}={port + 8000 if port < 1024 else port}")
            elif exc.errno == errno.EADDRNOTAVAIL:
                return  # not this machine's address: the address check says so, once
            else:
                report.fail("ports", f"{what} port {port} on {host}: {exc.strerror}", f"pick another --{flag}")
        else:
            report.add("OK", "ports", f"{what} port {port} on {host} is free")
    if v["grpc_socket_path"]:
        directory = os.path.dirname(os.path.abspath(v["grpc_socket_path"]))
        if not os.access(directory, os.W_OK):
            report.fail("ports", f"--grpc_socket_path={v['grpc_socket_path']}: directory {directory} is not "
                        "writable", "pick a path in a writable directory")


def check_address(v: dict[str, Any], report: Report) -> None:
    """The --host address is one of this machine's and a connection to it arrives (a firewall between machines
    is beyond what one machine can see)."""
    host = v["host"] or "0.0.0.0"
    wildcard = host in ("0.0.0.0", "::")
    try:
        with socket.socket(_family(host), socket.SOCK_STREAM) as server:
            server.bind((host, 0))
            server.listen(1)
            port = server.getsockname()[1]
            target = ("::1" if ":" in host else "127.0.0.1") if wildcard else host
            with socket.create_connection((target, port), timeout=3):
                pass
    except OSError as exc:
        report.fail("address", f"--host={host} cannot be listened on and reached here: {exc.strerror or exc}",
                    "give one of this machine's addresses (`ip -brief addr`), 0.0.0.0 for every interface, or "
                    "127.0.0.1 for this machine only")
        return
    if host in ("127.0.0.1", "localhost", "::1"):
        report.add("WARN", "address", f"--host={host}: only this machine can reach the server",
                   "fine behind a local proxy; in a container or for other machines use --host=0.0.0.0")
        return
    report.add("OK", "address", f"--host={host} listens and answers a connection from this machine"
               + (" (every interface)" if wildcard else ""))
    if not v["auth_config_file"]:
        report.add("WARN", "address", f"no --auth_config_file: anyone who can reach {host} may call every model "
                   "and reload the configuration", "give an --auth_config_file (API keys or JWT; `pyserving auth "
                   "new-key`), or bind --host=127.0.0.1 behind a proxy that checks callers")


def _gpus() -> list[tuple[str, int, int]] | None:
    """(name, total bytes, used bytes) per GPU, from NVML or nvidia-smi; None when neither finds one."""
    try:
        import pynvml

        pynvml.nvmlInit()
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            out.append((name.decode() if isinstance(name, bytes) else str(name), int(memory.total), int(memory.used)))
        return out or None
    except Exception:  # no package, no driver, no GPU
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        text = subprocess.run([smi, "--query-gpu=name,memory.total,memory.used", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    out = []
    for line in text.strip().splitlines():
        name, total, used = (p.strip() for p in line.rsplit(",", 2))
        out.append((name, int(total) << 20, int(used) << 20))
    return out or None


def check_gpu(v: dict[str, Any], options: ServerOptions | None, models: list[ModelConfig],
               loaded: dict[str, list[tuple[str, dict[str, Any]]]], report: Report) -> None:
    gpus = _gpus()
    if gpus is None:
        report.add("OK", "gpu", "no GPU found; GPU checks skipped")
        given = [f"--{name}" for name in ("per_process_gpu_memory_fraction", "tensorflow_gpu_memory_fraction",
                                           "gpu_allow_growth", "gpu_visible_devices") if v[name]]
        if given:
            report.add("WARN", "gpu", f"{', '.join(given)} given, but this machine has no GPU: models run on the CPU",
                       "fine if the same flags are meant for a GPU machine; otherwise drop them")
        return
    fraction = options.runtime.gpu_memory_fraction if options else 0.0
    smallest = min(total for _, total, _ in gpus)
    budget = int(smallest * fraction) if fraction else smallest
    names = "; ".join(f"{name} {total >> 20} MiB ({used >> 20} MiB in use)" for name, total, used in gpus)
    report.add("OK", "gpu", f"{len(gpus)} GPU(s): {names}")
    from pyserving.config.batching_config import batching_for_version

    for model in models:
        for version_dir, inputs in loaded.get(model.name, []):
            try:
                batching = batching_for_version(
                    model, version_dir, global_options=options.batching if options else None,
                    per_model_files=v["enable_per_model_batching_parameters"])
            except (ValueError, OSError):
                continue  # reported by the batching checks
            batch = batching.max_batch_size if batching is not None else 1
            per_example = 0
            for spec in inputs.values():
                dims = spec.shape[1:] if spec.shape else ()
                if any(d is None for d in dims):
                    continue  # unknown size: no estimate
                try:
                    per_example += int(np.prod(dims, dtype=np.int64)) * spec.dtype.numpy.itemsize
                except TypeError:
                    continue
            need = per_example * batch
            # Activations take many times the inputs; a batch whose inputs alone take a tenth of the memory will
            # not fit (the article's "GPU memory out of memory").
            if per_example and need * 10 > budget:
                report.add("WARN", "gpu", f"model {model.name}: a batch of {batch} takes {need >> 20} MiB of inputs "
                           f"alone, against {budget >> 20} MiB of GPU memory for the process",
                           "lower max_batch_size in the batching parameters, or raise "
                           "--per_process_gpu_memory_fraction")
            elif per_example:
                report.add("OK", "gpu", f"model {model.name}: a batch of {batch} needs ~{max(need >> 20, 1)} MiB of "
                           f"inputs, of {budget >> 20} MiB")
