"""Doctor's checks of the command line and the files it names, each parsed by the loader serve uses."""

from __future__ import annotations

import os
from typing import Any

from pyserving.cli.doctor.report import Report
from pyserving.options import ModelConfig, ServerOptions

# The article's "High latency in batching" row: a timeout beyond this adds that much latency to lone requests.
_MAX_SENSIBLE_BATCH_TIMEOUT_MICROS = 100_000


def check_config_files(v: dict[str, Any], given: dict[str, Any], report: Report) -> list[ModelConfig]:
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
            loaded = load(path)
        except (ValueError, OSError) as exc:
            report.fail(check, f"--{flag}={path}: {exc}", fix, error=str(exc))
            continue
        if flag == "monitoring_config_file" and not loaded:
            report.add("WARN", check, f"--monitoring_config_file={path} parses, but prometheus_config.enable is not "
                       "true: no metrics are exported", "add enable: true to prometheus_config")
        elif flag == "monitoring_config_file":
            report.add("OK", check, f"--{flag}={path} parses: metrics at {loaded} on the REST port")
        elif flag == "ssl_config_file":
            _check_tls(path, loaded, report)
        else:
            report.add("OK", check, f"--{flag}={path} parses")
    if v["tensorflow_session_config_file"]:
        try:
            read_config_file(v["tensorflow_session_config_file"], what="--tensorflow_session_config_file")
        except ValueError as exc:
            report.fail("flags", f"--tensorflow_session_config_file: {exc}", "give a readable tensorflow."
                        "ConfigProto text proto file", error=str(exc))
    return _models(v, report)


def _check_tls(path: str, tls: Any, report: Report) -> None:
    """The PEM text parses; OpenSSL still has to accept it (a key that does not match the certificate)."""
    import ssl

    from pyserving.security.tls import server_ssl_context

    try:
        server_ssl_context(tls)
    except (ssl.SSLError, OSError, ValueError) as exc:
        report.fail("tls", f"--ssl_config_file={path}: OpenSSL refuses its key or certificates: {exc}",
                    "check that server_key is the private key of server_cert and both are complete PEM blocks "
                    "(`openssl x509 -noout -modulus` and `openssl rsa -noout -modulus` must agree)")
    else:
        report.add("OK", "tls", f"--ssl_config_file={path}: key and certificate load"
                   + (" (clients must present certificates)" if tls.client_verify else ""))


def check_flags(values: dict[str, Any], warnings: list[str], report: Report) -> ServerOptions | None:
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
        fix = ("add --enable_metrics=true, or drop --metrics_port" if "--metrics_port" in warning else
               "drop --tensorflow_session_parallelism" if "--tensorflow_session_parallelism" in warning else
               "drop the flag, or expect it to have no effect")
        report.add("WARN", "flags", warning, fix)
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



def check_batching_latency(options: ServerOptions | None, models: list[ModelConfig], report: Report) -> None:
    pairs = [("--batching_parameters_file", options.batching)] if options and options.batching else []
    pairs += [(f"model {m.name}'s batching_parameters", m.batching) for m in models if m.batching is not None]
    for where, batching in pairs:
        if batching is not None and batching.batch_timeout_micros > _MAX_SENSIBLE_BATCH_TIMEOUT_MICROS:
            report.add("WARN", "batching", f"{where}: batch_timeout_micros={batching.batch_timeout_micros} makes a "
                       f"lone request wait up to {batching.batch_timeout_micros / 1000:g} ms (the article's \"High "
                       "latency in batching\")", "lower it to 10000-50000 (10-50 ms)")
