"""`pyserving doctor [serve flags...]`: the article's troubleshooting table (section 9), run before a user needs it.

It takes exactly `pyserving serve`'s flags and checks, without starting a server, what would stop or trouble that
server: the flags and every config file they name, each model's base path and version directories, each version
loaded by the runtime that would serve it (so "loads here" means "loads when served") with the signature clients
call and one trial call, the ports and the listen address, and GPU memory against the batch size. One line per
check (OK / WARN / FAIL), each WARN and FAIL with its fix; exit status 1 when anything FAILs.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import asdict, replace

from pyserving.cli.doctor.files import check_batching_latency, check_config_files, check_flags
from pyserving.cli.doctor.machine import check_address, check_gpu, check_ports
from pyserving.cli.doctor.models import check_model
from pyserving.cli.doctor.report import Finding, Report
from pyserving.observability.logs import quiet_framework
from pyserving.options import RuntimeOptions

__all__ = ["Finding", "Report", "main", "run_checks"]


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
    models = check_config_files(v, values, report)
    options = check_flags(values, warnings, report)
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
    # Runtimes' C++ notices (TFLite's XNNPACK line, TensorFlow's on import) would bury the report; logged at DEBUG.
    with quiet_framework("model loads"):
        loaded = {m.name: check_model(m, v, runtime_options, options, report, load=load_models) for m in models}
    check_batching_latency(options, models, report)
    check_address(v, report)
    check_ports(v, report)
    check_gpu(v, options, models, loaded, report)
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
