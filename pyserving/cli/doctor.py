"""`pyserving doctor [serve flags...]`: the article's troubleshooting table (section 9), run before a user needs it.

It takes exactly `pyserving serve`'s flags and checks, without starting a server, what would stop or trouble that
server: the flags and every config file they name, each model's base path and version directories, each version
loaded by the runtime that would serve it (so "loads here" means "loads when served") with the signature clients
call and one trial call, the ports and the listen address, and GPU memory against the batch size. One line per
check (OK / WARN / FAIL), each WARN and FAIL with its fix; exit status 1 when anything FAILs.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np

from pyserving.options import ModelConfig, RuntimeOptions, ServerOptions

Status = Literal["OK", "WARN", "FAIL"]
_CALLED_SIGNATURE = "serving_default"
_SAVED_MODEL_CLI = "saved_model_cli show --dir {dir} --all"
# The article's "High latency in batching" row: a timeout beyond this adds that much latency to lone requests.
_MAX_SENSIBLE_BATCH_TIMEOUT_MICROS = 100_000


@dataclass(frozen=True, slots=True)
class Finding:
    status: Status
    check: str
    message: str
    fix: str = ""


@dataclass
class Report:
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


# --- flags and config files ---------------------------------------------------------------------------------


def _check_config_files(v: dict[str, Any], given: dict[str, Any], report: Report) -> list[ModelConfig]:
    """Each file a flag names, parsed by the loader serve uses; each one reported on its own (serve stops at the
    first). Returns the models to check."""
    from pyserving.config.auth_config import load_auth_config_file
    from pyserving.config.batching_config import load_batching_parameters_file
    from pyserving.config.monitoring_config import load_monitoring_config_file
    from pyserving.config.ssl_config import load_ssl_config_file
    from pyserving.config.textproto import read_config_file

    if v["model_config_file"]:
        for flag in ("model_name", "model_base_path"):
            if flag in given:
                report.add("WARN", "flags", f"--{flag} is ignored when --model_config_file is given (TF Serving "
                           "ignores it too): the models are those of the file.",
                           f"drop --{flag}, or drop --model_config_file to serve the one model it names")
    batching_file = v["batching_parameters_file"]
    if batching_file and not v["enable_batching"]:
        report.fail("batching", f"--batching_parameters_file={batching_file} is given but --enable_batching is "
                    "not, so serve refuses to start (the file would be ignored).",
                    "add --enable_batching=true, or drop --batching_parameters_file",
                    error="--batching_parameters_file is set but --enable_batching is not")
    loaders = (
        ("batching_parameters_file", "batching", load_batching_parameters_file,
         "write it as TF Serving's BatchingParameters text proto, e.g. max_batch_size { value: 32 }"),
        ("monitoring_config_file", "monitoring", load_monitoring_config_file,
         'write it as prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }'),
        ("ssl_config_file", "tls", load_ssl_config_file,
         "put the PEM text itself (not a path) in server_key and server_cert"),
        ("auth_config_file", "auth", load_auth_config_file,
         "correct the line named; `pyserving auth new-key --name N --scope MODEL:predict` prints a valid entry"),
    )
    for flag, check, load, fix in loaders:
        path = v[flag]
        if not path:
            continue
        try:
            load(path)
        except (ValueError, OSError) as exc:
            report.fail(check, f"--{flag}={path}: {exc}", fix, error=str(exc))
        else:
            report.add("OK", check, f"--{flag}={path} parses")
    if v["tensorflow_session_config_file"]:
        try:
            read_config_file(v["tensorflow_session_config_file"], what="--tensorflow_session_config_file")
        except ValueError as exc:
            report.fail("flags", f"--tensorflow_session_config_file: {exc}", "give a readable tensorflow."
                        "ConfigProto text proto file", error=str(exc))
    return _models(v, report)


def _check_flags(values: dict[str, Any], warnings: list[str], report: Report) -> ServerOptions | None:
    """serve's own verdict on the whole command line (the checks above run even when it refuses)."""
    from pyserving.config.flags import FlagError, server_options

    try:
        options = server_options(values, warnings)
    except FlagError as exc:
        text = str(exc)
        if not any(seen and seen in text for seen in report.errors_seen):
            report.fail("flags", f"serve refuses these flags: {text}", "change the flag the message names")
        return None
    for warning in warnings:
        report.add("WARN", "flags", warning, "drop the flag, or expect it to have no effect")
    report.add("OK", "flags", "serve accepts these flags")
    return options


def _models(v: dict[str, Any], report: Report) -> list[ModelConfig]:
    if v["model_config_file"]:
        from pyserving.config.model_config import load_model_config_file

        try:
            models = list(load_model_config_file(v["model_config_file"]))
        except (ValueError, OSError) as exc:
            report.fail("model config", f"--model_config_file={v['model_config_file']}: {exc}",
                        "correct the file at the line and field named; it is TF Serving's model_config_list "
                        'text proto: model_config_list { config { name: "m" base_path: "/models/m" '
                        'model_platform: "tensorflow" } }', error=str(exc))
            return []
        report.add("OK", "model config", f"--model_config_file={v['model_config_file']} parses: "
                   f"{len(models)} model(s) ({', '.join(m.name for m in models) or 'none'})")
        return models
    if v["model_base_path"]:
        return [ModelConfig(name=v["model_name"], base_path=os.path.abspath(os.path.expanduser(v["model_base_path"])))]
    return []


# --- models ---------------------------------------------------------------------------------------------------


def _check_model(model: ModelConfig, v: dict[str, Any], runtime_options: RuntimeOptions, options: ServerOptions | None,
                 report: Report, *, load: bool) -> list[tuple[str, dict[str, Any]]]:
    """Base path, versions, policy, labels and each served version; returns (version dir, signature inputs) of
    the versions that loaded, for the GPU estimate."""
    from pyserving.core.source import versions_on_disk
    from pyserving.core.version_policy import aspired_versions

    check = f"model {model.name}"
    base = model.base_path
    if "://" in base:
        report.add("WARN", check, f"base path {base} is remote; doctor checks local directories only",
                   "run doctor where the files are, or copy one version locally to check it")
        return []
    if not os.path.exists(base):
        report.fail(check, f"base path {base} does not exist (the article's \"Model not found\")",
                    f"create it, or correct {'base_path in the model config' if v['model_config_file'] else '--model_base_path'}; "
                    f"a model's versions are numbered directories under it, e.g. {base}/1/saved_model.pb")
        return []
    if not os.path.isdir(base):
        report.fail(check, f"base path {base} is a file, not a directory",
                    f"give the directory that holds the numbered version directories, e.g. {os.path.dirname(base)}")
        return []
    try:
        on_disk = versions_on_disk(base)
        children = sorted(e.name for e in os.scandir(base) if e.is_dir())
    except OSError as exc:
        report.fail(check, f"base path {base} cannot be listed: {exc}", "give the server's user read and execute "
                    "permission on it")
        return []
    others = [name for name in children if not (name.isascii() and name.isdigit())]
    looks_like_version = any(os.path.exists(os.path.join(base, f)) for f in (
        "saved_model.pb", "saved_model.pbtxt", "model.onnx", "model.pt", "model.pt2", "model.tflite", "model.py"))
    if not on_disk:
        if looks_like_version:
            fix = (f"move the model files into a numbered version directory, e.g. {base}/1/, and keep the base path "
                   f"at {base}")
        elif others:
            fix = (f"rename the version directory to an integer, e.g. mv {os.path.join(base, others[0])} "
                   f"{os.path.join(base, '1')} (TF Serving reads only numbered directories as versions)")
        else:
            fix = f"export the model into {base}/1/ (versions are directories named by integers)"
        found = f"; it holds {', '.join(others)}, which are not version numbers" if others else ""
        report.fail(check, f"no version directory under base path {base}{found}: the server would wait for one "
                    "and never become ready", fix)
        return []
    for name in others:
        if name.startswith("."):
            continue
        report.add("WARN", check, f"directory {os.path.join(base, name)} is not a version (its name is not an "
                   "integer) and is ignored", f"rename it to a number (e.g. {max(on_disk) + 1}) to serve it, or "
                   "move it out of the base path")
    served = aspired_versions(model.version_policy, on_disk)
    policy = model.version_policy
    if policy.kind == "specific":
        missing = sorted(set(policy.versions) - set(on_disk))
        if missing:
            status: Status = "FAIL" if not served else "WARN"
            report.add(status, check, f"version policy specific names version(s) {', '.join(map(str, missing))}, "
                       f"not found under {base} (versions there: {', '.join(map(str, sorted(on_disk)))})",
                       "export the missing version(s) or correct the list in model_version_policy { specific "
                       "{ versions: N } }")
            if not served:
                return []
    labels = dict(model.version_labels)
    allow_unavailable = v["allow_version_labels_for_unavailable_models"]
    for label, version in sorted(labels.items()):
        if version not in served:
            where = "is not under the base path" if version not in on_disk else "is not served by the version policy"
            message = f'version label "{label}" points at version {version}, which {where}'
            fix = (f"point the label at a served version ({', '.join(map(str, served))}) or export version {version}")
            if allow_unavailable:
                report.add("WARN", check, message + " (allowed by --allow_version_labels_for_unavailable_models)", fix)
            else:
                report.fail(check, message + ": serve refuses to start (TF Serving: \"Request to assign label to "
                            "version ... which is not currently available for inference\")", fix)
    if model.traffic_split is not None:
        for arm, _weight in model.traffic_split.arms:
            version = labels.get(arm) if isinstance(arm, str) else arm
            if version is not None and version not in served:
                report.fail(check, f"the traffic split sends requests to version {version}, which is not served "
                            f"(served: {', '.join(map(str, served))})", "export that version, or change the "
                            "percentage arms to served versions")
    report.add("OK", check, f"base path {base}: version(s) {', '.join(map(str, sorted(on_disk)))} found; serving "
               f"{', '.join(map(str, served))} (policy {policy.kind})")
    loaded: list[tuple[str, dict[str, Any]]] = []
    _check_batching_blocks(model, v, options, served, on_disk, report)
    if not load:
        return loaded
    for version in served:
        inputs = _check_version(model, version, on_disk[version], runtime_options, v, report)
        if inputs is not None:
            loaded.append((on_disk[version], inputs))
    return loaded


def _check_batching_blocks(model: ModelConfig, v: dict[str, Any], options: ServerOptions | None,
                           served: list[int], on_disk: dict[int, str], report: Report) -> None:
    from pyserving.config.batching_config import batching_for_version

    check = f"model {model.name}"
    if model.batching is not None and not v["enable_batching"]:
        report.add("WARN", check, "the model config's batching_parameters block batches this model although "
                   "--enable_batching is not set (TensorFlow Serving has no such block and would not batch)",
                   "add --enable_batching=true to say so, or drop the block to serve unbatched")
    if not v["enable_per_model_batching_parameters"]:
        return
    for version in served:
        try:
            batching_for_version(model, on_disk[version], global_options=options.batching if options else None,
                                 per_model_files=True)
        except (ValueError, OSError) as exc:
            report.fail(check, f"version {version}: {exc}", "correct or remove the version's batching_params.pbtxt",
                        error=str(exc))


def _load_fix(message: str, version_dir: str, platform: str) -> str:
    cli = _SAVED_MODEL_CLI.format(dir=version_dir)
    if "could not be found in SavedModel" in message or "MetaGraphDef associated with tags" in message:
        return f"give --saved_model_tags=TAGS with the tag set the export has (see `{cli}`)"
    if "Could not find SavedModel" in message:
        return (f"export a SavedModel into {version_dir} (saved_model.pb and variables/), e.g. with "
                "model.export(path) in Keras 3 or tf.saved_model.save")
    if "allow_python_models" in message:
        return "add --allow_python_models=true if you trust model.py (it runs in the server)"
    if "warmup" in message.lower() or "warm-up" in message.lower():
        return f"correct or remove {version_dir}/assets.extra/tf_serving_warmup_requests"
    if platform in ("tensorflow", "auto"):
        return f"re-export the model (the files look damaged or from an incompatible version); check it with `{cli}`"
    return "re-export the model; the message above says what its runtime could not read"


def _check_version(model: ModelConfig, version: int, version_dir: str, runtime_options: RuntimeOptions,
                   v: dict[str, Any], report: Report) -> dict[str, Any] | None:
    """Load one version with the runtime that would serve it, check its signature and make one trial call."""
    from pyserving.errors import ServingError
    from pyserving.runtimes.registry import get_runtime

    check = f"model {model.name} version {version}"
    platform = model.platform
    try:
        runtime = get_runtime(platform)
        if not runtime.is_complete(version_dir):
            report.add("WARN", check, f"{version_dir} looks incompletely written (a copy in progress?); the server "
                       "waits until it is complete", "let the copy finish, or export into a temporary directory "
                       "and rename it into the base path")
        servable = runtime.load(version_dir, runtime_options)
    except ServingError as exc:
        report.fail(check, f"does not load (the article's \"Failed to load model\"): {exc.message}",
                    _load_fix(exc.message, version_dir, platform))
        return None
    except Exception as exc:  # a runtime's unexpected failure is still the model's problem to report
        report.fail(check, f"does not load: {type(exc).__name__}: {exc}", _load_fix(str(exc), version_dir, platform))
        return None
    try:
        return _check_signature(servable, check, version_dir, v, report)
    finally:
        servable.unload()


def _check_signature(servable: Any, check: str, version_dir: str, v: dict[str, Any],
                     report: Report) -> dict[str, Any] | None:
    from pyserving.errors import ServingError
    from pyserving.runtimes.base import CLASSIFY_METHOD, PREDICT_METHOD, REGRESS_METHOD

    signatures = {k: s for k, s in servable.signatures.items() if not k.startswith("__")}
    sig = signatures.get(_CALLED_SIGNATURE)
    if sig is None:
        have = ", ".join(sorted(signatures)) or "none"
        report.fail(check, f"loads, but has no {_CALLED_SIGNATURE!r} signature, the one requests without "
                    f"signature_name call (they would get FAILED_PRECONDITION); its signatures: {have}",
                    "re-export with signatures={'serving_default': fn} (Keras 3: model.export(path) writes it), or "
                    "have every client send \"signature_name\"")
        return None
    methods = (PREDICT_METHOD, CLASSIFY_METHOD, REGRESS_METHOD)
    if sig.method_name not in methods and v["enable_signature_method_name_check"]:
        report.fail(check, f"signature {_CALLED_SIGNATURE} has method name {sig.method_name!r}; with "
                    "--enable_signature_method_name_check requests to it are refused",
                    "drop --enable_signature_method_name_check, or re-export with a predict/classify/regress method")
    feed = {}
    for alias, spec in sig.inputs.items():
        if alias in sig.defaults:
            continue
        shape = tuple(1 if d is None else d for d in (spec.shape if spec.shape is not None else (1,)))
        try:
            feed[alias] = (np.full(shape, b"", dtype=object) if spec.dtype.numpy == np.dtype(object)
                           else np.zeros(shape, dtype=spec.dtype.numpy))
        except TypeError:  # a type a request cannot carry (resource, variant): no trial call
            feed = {}
            break
    described = ", ".join(f"{k}{list(a.shape)}" for k, a in feed.items())
    if feed or not sig.inputs:
        try:
            servable.run(_CALLED_SIGNATURE, feed, sorted(sig.outputs))
        except ServingError as exc:
            if "Could not find variable" in exc.message:
                first = exc.message.splitlines()[0].split(". This could mean")[0]
                report.fail(check, f"loads, but a call fails: {first} -- the Keras 3 "
                            "pitfall: tf.saved_model.save(model) of a Keras 3 model writes variables that a "
                            "graph-mode loader (TF Serving's and pyserving's) cannot restore",
                            "re-export with model.export(path) (Keras 3) or keras.export.ExportArchive, which "
                            "write a SavedModel TF Serving can serve")
                return None
            report.add("WARN", check, f"a trial call of {_CALLED_SIGNATURE} with zeros ({described or 'no inputs'}) "
                       f"failed: {exc.message.splitlines()[0]}", "fine if the model refuses such inputs; otherwise "
                       f"try a real request against it (see `{_SAVED_MODEL_CLI.format(dir=version_dir)}`)")
    names = ", ".join(f"{k}: {s.dtype.short_name}{list(s.shape) if s.shape is not None else '[?]'}"
                      for k, s in sorted(sig.inputs.items()))
    report.add("OK", check, f"loads; {_CALLED_SIGNATURE} ({sig.method_name.rsplit('/', 1)[-1]}) takes {names or 'no inputs'}"
               + (" and answers a trial call" if feed or not sig.inputs else ""))
    return dict(sig.inputs)


# --- ports, address, GPU --------------------------------------------------------------------------------------


def _listening_pids(port: int) -> list[str]:
    """Processes holding a listening TCP socket on `port`, as "PID (command)", from /proc (Linux; those of other
    users only when readable)."""
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
            if not any(os.readlink(f"/proc/{pid}/fd/{fd}") in targets for fd in fds):
                continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                command = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        found.append(f"pid {pid} ({command[:120]})")
    return found


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _check_ports(v: dict[str, Any], report: Report) -> None:
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
        seen[port] = f"--{flag}"
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


def _check_address(v: dict[str, Any], report: Report) -> None:
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


def _check_gpu(v: dict[str, Any], options: ServerOptions | None, models: list[ModelConfig],
               loaded: dict[str, list[tuple[str, dict[str, Any]]]], report: Report) -> None:
    gpus = _gpus()
    if gpus is None:
        report.add("OK", "gpu", "no GPU found; GPU checks skipped")
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
                batching = batching_for_version(model, version_dir, global_options=options.batching if options else None,
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


def _check_batching_latency(options: ServerOptions | None, models: list[ModelConfig], report: Report) -> None:
    pairs = [("--batching_parameters_file", options.batching)] if options and options.batching else []
    pairs += [(f"model {m.name}'s batching_parameters", m.batching) for m in models if m.batching is not None]
    for where, batching in pairs:
        if batching is not None and batching.batch_timeout_micros > _MAX_SENSIBLE_BATCH_TIMEOUT_MICROS:
            report.add("WARN", "batching", f"{where}: batch_timeout_micros={batching.batch_timeout_micros} makes a "
                       f"lone request wait up to {batching.batch_timeout_micros / 1000:g} ms (the article's \"High "
                       "latency in batching\")", "lower it to 10000-50000 (10-50 ms)")


# --- the command ----------------------------------------------------------------------------------------------


def run_checks(argv: Sequence[str], *, load_models: bool = True) -> Report:
    """Every check for `pyserving serve ARGV`, without serving."""
    from pyserving.config.flags import FLAGS, FlagError, parse_flags

    report = Report()
    try:
        values, warnings = parse_flags(argv)
    except FlagError as exc:
        report.fail("flags", f"pyserving serve: error: {exc}", "correct the flag the message names "
                    "(`pyserving serve --help` lists them)")
        return report
    v = {f.name: f.default for f in FLAGS} | values
    models = _check_config_files(v, values, report)
    options = _check_flags(values, warnings, report)
    if options is not None:
        models = list(options.models)
    if not models and not report.count("FAIL"):
        report.fail("models", "no model to serve", "give --model_base_path (and --model_name) or a "
                    "--model_config_file")
    runtime_options = options.runtime if options is not None else RuntimeOptions(
        saved_model_tags=tuple(t.strip() for t in v["saved_model_tags"].split(",") if t.strip()) or ("serve",),
        allow_python_models=v["allow_python_models"], prefer_tflite_model=v["prefer_tflite_model"],
        enable_model_warmup=v["enable_model_warmup"])
    # One interpreter pool is enough to check a TFLite model (the default is one per CPU).
    runtime_options = replace(runtime_options, num_tflite_pools=1)
    loaded = {m.name: _check_model(m, v, runtime_options, options, report, load=load_models) for m in models}
    _check_batching_latency(options, models, report)
    _check_address(v, report)
    _check_ports(v, report)
    _check_gpu(v, options, models, loaded, report)
    return report


def render_text(report: Report) -> str:
    lines = []
    for f in report.findings:
        lines.append(f"{f.status:<4} {f.check}: {f.message}")
        if f.fix:
            lines.append(f"     fix: {f.fix}")
    fails, warns, oks = report.count("FAIL"), report.count("WARN"), report.count("OK")
    verdict = ("something is wrong: fix the FAIL lines, then run doctor again" if fails
               else "the set-up looks good; start it with `pyserving serve` and the same flags")
    lines.append(f"doctor: {fails} FAIL, {warns} WARN, {oks} OK: {verdict}")
    return "\n".join(lines)


def render_json(report: Report) -> str:
    import orjson

    return orjson.dumps({
        "ok": not report.count("FAIL"),
        "findings": [asdict(f) for f in report.findings],
        "summary": {s: report.count(s) for s in ("FAIL", "WARN", "OK")},
    }, option=orjson.OPT_INDENT_2).decode()


USAGE = """usage: pyserving doctor [--format=text|json] [--skip_model_load] [pyserving serve's flags ...]

Checks what `pyserving serve` with the same flags would meet, without serving: flags and config files, base
paths and version directories, each version loaded by its runtime with its serving_default signature and one
trial call, ports and the --host address, GPU memory against the batch size. Exit status 0 when nothing FAILs,
1 otherwise."""


def main(argv: Sequence[str]) -> int:
    from pyserving.observability import logs

    args = list(argv)
    if any(a in ("-h", "--help", "-help") for a in args):
        print(USAGE)
        return 0
    fmt, load_models, rest = "text", True, []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--format" and i < len(args):
            fmt, i = args[i], i + 1
        elif arg.startswith("--format="):
            fmt = arg.partition("=")[2]
        elif arg == "--skip_model_load":
            load_models = False
        else:
            rest.append(arg)
    if fmt not in ("text", "json"):
        print(f"pyserving doctor: error: --format={fmt}: use text or json", file=sys.stderr)
        return 2
    verbosity = next((a.partition("=")[2] for a in rest if a.startswith("--verbosity=")), "")
    # The report is the output; the loaders' own INFO lines would bury it (DEBUG shows everything).
    logs.configure("DEBUG" if verbosity.upper() == "DEBUG" else "ERROR")
    report = run_checks(rest, load_models=load_models)
    print(render_json(report) if fmt == "json" else render_text(report), flush=True)
    return 1 if report.count("FAIL") else 0
