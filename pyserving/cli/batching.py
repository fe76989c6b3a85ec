"""`pyserving batching tune`: find the batching parameters that give a running pyserving the most throughput under a
p99 latency bound, measuring each candidate on the live server, and write them as a batching_parameters_file.

How a candidate reaches the server without a restart: tune edits the model's `batching_parameters { ... }` block
in the server's --model_config_file, writes the file, and sends the same config with ModelService/
HandleReloadConfigRequest over gRPC. The RPC answers once the server has applied it (a loaded version gets a new
batcher; the model is not reloaded), and writing the file too keeps a server that polls its config file
(--model_config_file_poll_wait_seconds) from reverting to the old text. The original file, byte for byte, and its
configuration are put back at the end, on errors and on Ctrl-C too.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pyserving.cli.bench import ProgressLine, _numbers, add_target_flags, run_points, table, targets_from
from pyserving.options import BatchingOptions
from pyserving.tools.loadgen import LoadError, LoadGenerator, LoadSpec, Point, build_payload

KNOBS = ("max_batch_size", "batch_timeout_micros", "num_batch_threads")

TUNE_DESCRIPTION = __doc__.split("\n\n", 1)[1] + """
Search: the baseline (the model's parameters as the server has them now) first; then max_batch_size over
--max-batch-sizes at the first timeout and thread count; then batch_timeout_micros over --timeouts at the best
size; then num_batch_threads over --batch-threads at both (--grid: every combination instead). Each candidate runs
--duration seconds of closed-loop load at --concurrency after --warmup seconds. The best candidate has the highest
QPS among those without errors and with p99 <= --p99-ms. Then the best and the baseline run once more, back to
back, and the gain reported uses the mean of both runs of each (--no-confirm: one run each).

Needs: the server's gRPC address for the reload RPC (--grpc, or --admin-grpc when the load goes over --rest),
write access to its --model_config_file, and, for a server with an --auth_config_file, a credential
(--token-file or PYSERVING_TOKEN) with the model's predict and metadata scopes and the admin scope.

Example:
  pyserving batching tune --grpc 127.0.0.1:8500 --model cnn --p99-ms 200 \\
      --model-config-file models.config --out cnn_batching.txt
"""


@dataclass
class Candidate:
    options: BatchingOptions
    point: Point | None = None
    label: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class ConfigEditor:
    """The server's model config file: the original text, and the same config with one model's batching block
    replaced."""

    def __init__(self, path: Path, model: str) -> None:
        from google.protobuf import text_format

        from pyserving.config.model_config import load_model_config_file, model_server_config_schemas

        self.path, self.model = path, model
        try:
            self.original = path.read_bytes()
            models = load_model_config_file(str(path))
        except OSError as exc:
            raise LoadError(f"--model-config-file {path}: {exc}") from None
        except ValueError as exc:
            raise LoadError(f"--model-config-file {path}: {exc}") from None
        found = [m for m in models if m.name == model]
        if not found:
            raise LoadError(f"--model-config-file {path} has no model {model!r} (it has {[m.name for m in models]})")
        self.current = found[0].batching
        self._schema = model_server_config_schemas()[0]
        try:
            self._message = text_format.Parse(self.original.decode(), self._schema())
        except text_format.ParseError:
            raise LoadError(f"--model-config-file {path}: tune edits configs whose per-model batching_parameters "
                            "use the unwrapped form (max_batch_size: 8, not max_batch_size { value: 8 }); rewrite "
                            "them that way first") from None

    def text_with(self, options: BatchingOptions | None) -> str:
        from google.protobuf import text_format

        message = self._schema()
        message.CopyFrom(self._message)
        for c in message.model_config_list.config:
            if c.name != self.model:
                continue
            c.ClearField("batching_parameters")
            if options is not None:
                c.batching_parameters.SetInParent()
                for name in BatchingOptions.__dataclass_fields__:
                    value = getattr(options, name)
                    if value == getattr(BatchingOptions(), name):
                        continue
                    if name == "allowed_batch_sizes":
                        c.batching_parameters.allowed_batch_sizes.extend(value)
                    else:
                        setattr(c.batching_parameters, name, value)
        return str(text_format.MessageToString(message, as_utf8=True))

    def message_bytes(self, text: str) -> bytes:
        from google.protobuf import text_format

        return text_format.Parse(text, self._schema()).SerializeToString()

    def write(self, data: bytes) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tune-{os.getpid()}")
        tmp.write_bytes(data)
        # the new inode keeps the original's mode and (where we may) owner: a server running as another user must
        # still be able to read its config at the next poll
        shutil.copymode(self.path, tmp)
        st = self.path.stat()
        try:
            os.chown(tmp, st.st_uid, st.st_gid)
        except PermissionError:
            pass
        os.replace(tmp, self.path)  # never a half-written file for a polling server to read


class Reloader:
    """Applies a model config to the server with HandleReloadConfigRequest (synchronous: applied on return)."""

    def __init__(self, address: str, editor: ConfigEditor, token: str = "") -> None:
        self.address, self.editor = address, editor
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self.changed = False
        """Whether the file or the server may differ from the original (so there is something to restore)."""

    def apply(self, text: str, file_bytes: bytes | None = None) -> None:
        import grpc

        from pyserving.codecs.tfserving.protos import model_management_pb2, model_server_config_pb2

        self.changed = True
        self.editor.write(file_bytes if file_bytes is not None else text.encode())
        request = model_management_pb2.ReloadConfigRequest()
        # The per-model batching block is not in TF Serving's ModelConfig: it travels as field 1002, which the
        # standard message keeps as an unknown field and pyserving's server reads with its superset schema.
        request.config.CopyFrom(model_server_config_pb2.ModelServerConfig.FromString(self.editor.message_bytes(text)))
        with grpc.insecure_channel(self.address) as channel:
            call = channel.unary_unary(
                "/tensorflow.serving.ModelService/HandleReloadConfigRequest",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=model_management_pb2.ReloadConfigResponse.FromString)
            try:
                response = call(request, timeout=120, metadata=self._metadata)
            except grpc.RpcError as exc:
                raise LoadError(f"HandleReloadConfigRequest to {self.address} failed: {exc.code().name}: "
                                f"{exc.details()}") from None
        if response.status.error_code:
            raise LoadError(f"the server refused the batching parameters: {response.status.error_message}")


def batching_file_text(options: BatchingOptions) -> str:
    """TF Serving's batching_parameters_file (BatchingParameters with wrapped values)."""
    lines = []
    for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads"):
        lines.append(f"{name} {{ value: {getattr(options, name)} }}")
    if options.allowed_batch_sizes:
        lines += [f"allowed_batch_sizes: {n}" for n in options.allowed_batch_sizes]
    if options.pad_variable_length_inputs:
        lines.append("pad_variable_length_inputs { value: true }")
    if options.enable_large_batch_splitting:
        lines.append("enable_large_batch_splitting { value: true }")
        if options.max_execution_batch_size:
            lines.append(f"max_execution_batch_size {{ value: {options.max_execution_batch_size} }}")
    return "\n".join(lines) + "\n"


def describe(options: BatchingOptions | None) -> str:
    if options is None:
        return "as configured (no batching block)"
    return " ".join(f"{k}={getattr(options, k)}" for k in (*KNOBS, "max_enqueued_batches"))


def tune_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pyserving batching tune", description=TUNE_DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_target_flags(p)
    p.add_argument("--p99-ms", type=float, required=True, help="the p99 latency bound, in milliseconds")
    p.add_argument("--model-config-file", type=Path, required=True,
                   help="the server's --model_config_file (rewritten during the sweep, restored at the end)")
    p.add_argument("--admin-grpc", metavar="HOST:PORT", help="where to send the reload RPC (default: --grpc)")
    p.add_argument("--max-batch-sizes", type=lambda s: _numbers(s, int, "--max-batch-sizes"),
                   default=[1, 2, 4, 8, 16, 32, 64], help="candidates (default: 1,2,4,8,16,32,64)")
    p.add_argument("--timeouts", type=lambda s: _numbers(s, int, "--timeouts", minimum=0),
                   default=[0, 500, 1000, 2000, 5000], help="batch_timeout_micros candidates (default: 0,500,1000,"
                                                          "2000,5000)")
    p.add_argument("--batch-threads", type=lambda s: _numbers(s, int, "--batch-threads"),
                   default=sorted({1, os.cpu_count() or 1}), help="num_batch_threads candidates (default: 1 and the "
                                                                   "number of cores)")
    p.add_argument("--max-enqueued-batches", type=int,
                   help="kept fixed (default: the model's current value, else 100)")
    p.add_argument("--grid", action="store_true", help="measure every combination instead of one knob at a time")
    p.add_argument("--no-confirm", action="store_true",
                   help="skip measuring the pick and the baseline once more at the end (the gain reported is "
                        "then from one point each)")
    p.add_argument("--concurrency", type=int, default=32, help="requests in flight (default: %(default)s)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per candidate (default: %(default)s)")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("batching_parameters.txt"),
                   help="the batching_parameters_file to write (default: %(default)s)")
    p.add_argument("--json", type=Path, help="also write every candidate's measurement as JSON")
    return p


def tune_main(argv: Sequence[str]) -> int:
    p = tune_parser()
    args = p.parse_args(list(argv))
    targets = targets_from(args, p)
    if len(targets) != 1:
        p.error("give one of --rest and --grpc: tune loads the server over one protocol")
    target = targets[0]
    admin = args.admin_grpc or args.grpc
    if not admin:
        p.error("the reload goes over gRPC: give --admin-grpc HOST:PORT when the load uses --rest")
    progress = ProgressLine(not args.no_progress)
    try:
        editor = ConfigEditor(args.model_config_file, args.model)
    except LoadError as exc:
        print(f"pyserving batching tune: error: {exc}", file=sys.stderr)
        return 2
    base = editor.current or BatchingOptions()
    enqueued = args.max_enqueued_batches or (editor.current.max_enqueued_batches if editor.current else 100)
    reloader = Reloader(admin, editor, target.token)
    candidates: list[Candidate] = []
    notes: list[str] = []
    started = time.monotonic()

    def measure(options: BatchingOptions | None, gen: LoadGenerator, label: str) -> Candidate:
        for done in candidates:
            if done.options == options and done.label != "baseline":
                return done
        if label != "baseline":
            reloader.apply(editor.text_with(options))
        print(f"{label}: {describe(options)}", flush=True)
        spec = LoadSpec(concurrency=args.concurrency, duration=args.duration, timeout_s=args.timeout)
        point = run_points(gen, [spec], args.warmup, progress)[0]
        c = Candidate(options or base, point, label)
        candidates.append(c)
        return c

    def again(options: BatchingOptions | None, gen: LoadGenerator, label: str) -> Candidate:
        if options is None:
            reloader.apply(editor.original.decode(), file_bytes=editor.original)
        else:
            reloader.apply(editor.text_with(options))
        print(f"{label}: {describe(options or editor.current)}", flush=True)
        spec = LoadSpec(concurrency=args.concurrency, duration=args.duration, timeout_s=args.timeout)
        c = Candidate(options or base, run_points(gen, [spec], args.warmup, progress)[0], label)
        candidates.append(c)
        return c

    def searched() -> list[Candidate]:
        return [c for c in candidates if c.label != "baseline" and not c.label.endswith(", again")]

    def ok(c: Candidate) -> bool:
        assert c.point is not None
        return c.point.errors == 0 and not math.isnan(c.point.p99) and c.point.p99 <= args.p99_ms

    def score(c: Candidate) -> float:
        assert c.point is not None
        return c.point.qps if ok(c) else -1.0 / (1.0 + c.point.p99 if not math.isnan(c.point.p99) else 1e9)

    try:
        payload = build_payload(target, batch=args.batch, input_file=args.input, timeout_s=args.timeout)
        with LoadGenerator(target, payload, client=args.client, procs=args.procs, threads=args.threads,
                           server_pid=args.server_pid) as gen:
            print(f"tuning {args.model} over {target.describe()} at concurrency {args.concurrency}, "
                  f"{args.duration:g} s per candidate, p99 <= {args.p99_ms:g} ms; reloads via {admin}", flush=True)
            baseline = measure(editor.current, gen, "baseline")
            start = replace(base, max_enqueued_batches=enqueued, batch_timeout_micros=args.timeouts[0],
                            num_batch_threads=args.batch_threads[0])
            if args.grid:
                for size in args.max_batch_sizes:
                    for timeout in args.timeouts:
                        for threads in args.batch_threads:
                            measure(replace(start, max_batch_size=size, batch_timeout_micros=timeout,
                                            num_batch_threads=threads), gen, "grid")
            else:
                best = max((measure(replace(start, max_batch_size=s), gen, "max_batch_size")
                            for s in args.max_batch_sizes), key=score)
                best = max((measure(replace(best.options, batch_timeout_micros=t), gen, "batch_timeout_micros")
                            for t in args.timeouts), key=score)
                max((measure(replace(best.options, num_batch_threads=n), gen, "num_batch_threads")
                     for n in args.batch_threads), key=score)
            pick = max(searched(), key=score, default=None)
            if pick is not None and ok(pick) and not args.no_confirm:
                # One more point each for the pick and the baseline, back to back: on a shared machine one
                # point's luck should not make the reported gain
                again(pick.options, gen, "best, again")
                again(None, gen, "baseline, again")
            notes += gen.notes
    except LoadError as exc:
        progress.clear()
        print(f"pyserving batching tune: error: {exc}", file=sys.stderr)
        return _restore(reloader, editor, 2)
    except KeyboardInterrupt:
        progress.clear()
        print("pyserving batching tune: interrupted", file=sys.stderr)
        return _restore(reloader, editor, 130)
    except BaseException:
        # anything unforeseen (a file system error, a bug): the server must not be left on a candidate
        progress.clear()
        _restore(reloader, editor, 1)
        raise
    code = _restore(reloader, editor, 0)
    winner = max(searched(), key=score, default=None)
    points = [c.point for c in candidates if c.point is not None]
    rows = table(points, extra=[
        ("step", [c.label for c in candidates]),
        ("max_batch_size", [str(c.options.max_batch_size) for c in candidates]),
        ("timeout us", [str(c.options.batch_timeout_micros) for c in candidates]),
        ("threads", [str(c.options.num_batch_threads) for c in candidates]),
        ("ok", ["best" if c is winner and ok(c) else ("yes" if ok(c) else "no") for c in candidates]),
    ])
    print()
    print(f"=== batching tune: {args.model}, {target.protocol} c={args.concurrency}, p99 <= {args.p99_ms:g} ms, "
          f"{time.monotonic() - started:.0f} s ===")
    print(rows)
    for note in dict.fromkeys(notes):
        print(f"note: {note}")
    if args.json:
        args.json.write_text(json.dumps([{"step": c.label, "options": {k: getattr(c.options, k) for k in
                                                                         BatchingOptions.__dataclass_fields__},
                                          "point": c.point.as_dict() if c.point else None} for c in candidates],
                                        indent=1, default=list))
    if winner is None or not ok(winner):
        print(f"no candidate met p99 <= {args.p99_ms:g} ms without errors: raise --p99-ms, lower --concurrency, "
              "or try other candidates; nothing written")
        return code or 1
    assert winner.point is not None and baseline.point is not None
    best_qps = _mean([winner] + [c for c in candidates if c.label == "best, again"])
    base_qps = _mean([baseline] + [c for c in candidates if c.label == "baseline, again"])
    runs = len([c for c in candidates if c.label == "best, again"]) + 1
    gain = best_qps / base_qps if base_qps else float("inf")
    header = [f"# pyserving batching tune, {time.strftime('%Y-%m-%d %H:%M')}: model {args.model}, "
              f"{target.protocol} at concurrency {args.concurrency}, p99 <= {args.p99_ms:g} ms, {os.cpu_count()} cores",
              f"# best: {best_qps:.1f} req/s, p99 {winner.point.p99:.2f} ms; baseline "
              f"({describe(editor.current)}): {base_qps:.1f} req/s, p99 {baseline.point.p99:.2f} ms "
              f"({gain:.2f}x; QPS the mean of {runs} run(s) each)", "#"] + [f"# {line}" for line in rows.splitlines()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(header) + "\n" + batching_file_text(winner.options))
    print(f"best: {describe(winner.options)}: {best_qps:.1f} req/s, p99 {winner.point.p99:.2f} ms; "
          f"{gain:.2f}x the baseline's {base_qps:.1f} req/s (p99 {baseline.point.p99:.2f} ms); QPS the mean of "
          f"{runs} run(s) each")
    print(f"written to {args.out} (serve with --enable_batching --batching_parameters_file={args.out}, or put the "
          "same fields in the model's batching_parameters block)")
    print(f"{args.model_config_file} and the server's configuration are as they were before the sweep")
    return code


def _mean(cs: list[Candidate]) -> float:
    return sum(c.point.qps for c in cs if c.point is not None) / len(cs)


def _restore(reloader: Reloader, editor: ConfigEditor, code: int) -> int:
    """Put the original config file back and apply it; a failure here is reported, not hidden."""
    if not reloader.changed:
        return code
    try:
        reloader.apply(editor.original.decode(), file_bytes=editor.original)
    except (LoadError, OSError) as exc:
        print(f"pyserving batching tune: error: could not restore the original configuration: {exc}; "
              f"{editor.path} holds the last candidate, restore it by hand", file=sys.stderr)
        return code or 1
    return code


def main(argv: Sequence[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: pyserving batching tune --rest URL|--grpc HOST:PORT --model M --p99-ms X "
              "--model-config-file PATH [...]\n\n`pyserving batching tune --help` says more.")
        return 0 if argv else 2
    if argv[0] != "tune":
        print(f"pyserving batching: unknown command {argv[0]!r}; the command is `tune`", file=sys.stderr)
        return 2
    return tune_main(argv[1:])
