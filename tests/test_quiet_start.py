"""A quiet, clear start: `pyserving serve` on a CPU machine shows pyserving's own lines, not TensorFlow's notices
(which read like errors), and ends start-up with each AVAILABLE version and where to send requests. With
--verbosity=DEBUG the frameworks' output is let through."""

from __future__ import annotations

import json
import time
from pathlib import Path

import requests

from conftest import free_port, serve_subprocess

CHATTER = ("cuInit", "oneDNN", "This TensorFlow binary is optimized", "is deprecated",
           "All log messages before absl", "cuda drivers", "cudart_stub")


def _start(testdata: Path, tmp_path: Path, *extra: str) -> tuple[list[str], int, int]:
    """Serve half_plus_two until start-up's last line is written; the stderr lines, gRPC and REST ports."""
    grpc_port, rest_port = free_port(), free_port()
    stderr = tmp_path / "stderr.log"
    flags = ["--model_name=half_plus_two", f"--model_base_path={testdata / 'saved_model_half_plus_two_cpu'}",
             "--host=127.0.0.1", f"--port={grpc_port}", f"--rest_api_port={rest_port}", *extra]
    status = f"http://127.0.0.1:{rest_port}/v1/models/half_plus_two"
    with serve_subprocess(flags, stderr, lambda: requests.get(status, timeout=2).status_code == 200):
        # The listeners answer a moment before the announcement is logged.
        deadline = time.monotonic() + 10
        while "pyserving is serving" not in stderr.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
    return stderr.read_text().splitlines(), grpc_port, rest_port


def test_start_up_shows_only_pyserving_lines_and_ends_with_where_to_send_requests(
        testdata: Path, tmp_path: Path) -> None:
    lines, grpc_port, rest_port = _start(testdata, tmp_path)
    text = "\n".join(lines)
    for noise in CHATTER:
        assert noise not in text, f"{noise!r} in start-up output:\n{text}"
    records = [json.loads(line) for line in lines]  # every line is one of ours: a JSON log line
    assert all(r["logger"].startswith("pyserving") for r in records), text
    messages = [r.get("message", r.get("event")) for r in records]
    available = (f"half_plus_two version 123 AVAILABLE: REST http://127.0.0.1:{rest_port}/v1/models/half_plus_two"
                 f":predict, gRPC 127.0.0.1:{grpc_port}")
    assert available in messages, text
    serving = f"pyserving is serving: REST http://127.0.0.1:{rest_port}, gRPC 127.0.0.1:{grpc_port}"
    assert serving in messages, text
    # Start-up ends with these two lines (what follows them is the shutdown).
    assert messages.index(serving) == messages.index(available) + 1
    assert not [r for r in records if r["level"] in ("WARNING", "ERROR")], text


def test_debug_verbosity_lets_framework_output_through(testdata: Path, tmp_path: Path) -> None:
    lines, _, rest_port = _start(testdata, tmp_path, "--verbosity=DEBUG")
    text = "\n".join(lines)
    records = [json.loads(line) for line in lines if line.startswith("{")]
    # TensorFlow's Python logger is no longer held back (its loader always logs the SavedModel it restores).
    assert [r for r in records if r["logger"] == "tensorflow"], text
    assert any(f"half_plus_two version 123 AVAILABLE: REST http://127.0.0.1:{rest_port}" in r.get("message", "")
               for r in records), text
