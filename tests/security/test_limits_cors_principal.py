"""--max_request_bytes on REST bodies (announced, streamed, and once gunzipped), CORS origins beyond TF Serving's
`*`, the flags, and the authenticated caller recorded in request logs (never the credential)."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import pytest
import requests

from conftest import run_server
from pyserving.config.flags import FlagError, parse_flags, server_options
from pyserving.options import LoggingOptions, ModelConfig, ServerOptions
from security_fixtures import memory_model, sha256

TIMEOUT = 30
KEY = "k-principal-test-key"


def test_request_bytes_limit_answers_413_for_big_and_zip_bomb_bodies(tmp_path: Path) -> None:
    options = ServerOptions(models=(ModelConfig("m", str(memory_model(tmp_path / "m")), platform="memory"),),
                            max_request_bytes=2048)
    with run_server(options) as server:
        url = f"{server.rest_url}/v1/models/m:predict"
        small = requests.post(url, json={"instances": [1.0]}, timeout=TIMEOUT)
        assert small.status_code == 200
        big = json.dumps({"instances": [1.0] * 1000}).encode()
        r = requests.post(url, data=big, timeout=TIMEOUT)
        assert r.status_code == 413 and "--max_request_bytes" in r.json()["error"]

        def chunks():  # no Content-Length: the limit holds while the body streams in
            for _ in range(10):
                yield b" " * 1024

        assert requests.post(url, data=chunks(), timeout=TIMEOUT).status_code == 413
        bomb = gzip.compress(b'{"instances": [' + b"1.0," * 100_000 + b"1.0]}")
        assert len(bomb) < 2048
        r = requests.post(url, data=bomb, headers={"Content-Encoding": "gzip"}, timeout=TIMEOUT)
        assert r.status_code == 413 and "once uncompressed" in r.json()["error"]


def test_cors_origins_beyond_star(tmp_path: Path) -> None:
    options = ServerOptions(models=(ModelConfig("m", str(memory_model(tmp_path / "m")), platform="memory"),),
                            rest_api_enable_cors_support=True, cors_allowed_origins=("https://app.example",))
    with run_server(options) as server:
        url = f"{server.rest_url}/v1/models/m:predict"
        allowed = requests.post(url, json={"instances": [1.0]}, headers={"Origin": "https://app.example"},
                                timeout=TIMEOUT)
        assert allowed.headers["Access-Control-Allow-Origin"] == "https://app.example"
        other = requests.post(url, json={"instances": [1.0]}, headers={"Origin": "https://evil.example"},
                              timeout=TIMEOUT)
        assert other.status_code == 200 and "Access-Control-Allow-Origin" not in other.headers
        preflight = requests.options(url, headers={"Origin": "https://app.example",
                                                   "Access-Control-Request-Method": "POST",
                                                   "Access-Control-Request-Headers": "Authorization"},
                                     timeout=TIMEOUT)
        assert preflight.status_code == 200
        assert "authorization" in preflight.headers["Access-Control-Allow-Headers"].lower()
        refused = requests.options(url, headers={"Origin": "https://evil.example",
                                                 "Access-Control-Request-Method": "POST"}, timeout=TIMEOUT)
        assert refused.status_code == 400


def test_flags(tmp_path: Path) -> None:
    auth = tmp_path / "auth.config"
    auth.write_text(f'api_key {{ name: "a" sha256: "{sha256(KEY)}" scope: "m:predict" }}')
    values, _ = parse_flags(["--model_base_path=/m", f"--auth_config_file={auth}", "--max_request_bytes=1000",
                             "--rest_api_enable_cors_support=true", "--cors_allowed_origins=https://a,https://b"])
    options = server_options(values)
    assert (options.auth_config_file, options.max_request_bytes, options.cors_allowed_origins) == (
        str(auth), 1000, ("https://a", "https://b"))
    auth.write_text('api_key { name: "a" sha256: "not-a-hash" }')
    values, _ = parse_flags(["--model_base_path=/m", f"--auth_config_file={auth}"])
    with pytest.raises(FlagError, match="--auth_config_file=.*64 hex digits"):
        server_options(values)
    values, _ = parse_flags(["--model_base_path=/m", "--cors_allowed_origins=https://a"])
    with pytest.raises(FlagError, match="needs --rest_api_enable_cors_support"):
        server_options(values)


def test_request_logs_name_the_caller_never_the_credential(tmp_path: Path) -> None:
    auth = tmp_path / "auth.config"
    auth.write_text(f'api_key {{ name: "predictor" sha256: "{sha256(KEY)}" scope: "m:predict" }}')
    prefix = tmp_path / "logs" / "requests"
    model = ModelConfig("m", str(memory_model(tmp_path / "m")), platform="memory",
                        logging=LoggingOptions(sampling_rate=1.0, collector_type="jsonl", filename_prefix=str(prefix)))
    with run_server(ServerOptions(models=(model,), auth_config_file=str(auth))) as server:
        r = requests.post(f"{server.rest_url}/v1/models/m:predict", json={"instances": [1.0]},
                          headers={"Authorization": f"Bearer {KEY}"}, timeout=TIMEOUT)
        assert r.status_code == 200
    deadline = time.monotonic() + 10
    while not list(prefix.parent.glob("requests.*.jsonl")):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    (log_file,) = prefix.parent.glob("requests.*.jsonl")
    text = log_file.read_text()
    assert json.loads(text.splitlines()[0])["principal"] == "predictor"
    assert KEY not in text
