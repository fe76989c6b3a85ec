"""deploy/nginx: the shipped reverse proxy, run for real. Debian's nginx serves a copy of deploy/nginx/pyserving.conf
(only its ports, certificate paths, keys file, log path and upstream addresses substituted) on 127.0.0.1, with a
trustme certificate, in front of a real pyserving serving TF Serving's half_plus_two; requests and gRPC clients check
TLS, the Bearer key check and its TF Serving-shaped refusals, proxying of REST and gRPC, large bodies, key rotation
by reload, and what the access log holds."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import requests

from conftest import free_port, model_options, run_server
from pyserving.codecs.tfserving.protos import get_model_status_pb2, predict_pb2

REPO = Path(__file__).resolve().parents[2]
NGINX_DIR = REPO / "deploy" / "nginx"
SHIPPED_CONF = NGINX_DIR / "pyserving.conf"
KEYS_EXAMPLE = NGINX_DIR / "api-keys.map.example"
HOSTNAME = "ai-api.example.com"
TEST_KEY = "9f1c2e4b7a6d5c3e8f0a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2d3e4f5a6"
ROTATED_KEY = "0a1b2c3d4e5f60718293a4b5c6d7e8f99f1c2e4b7a6d5c3e8f0a1b2c3d4e5f6a"
TIMEOUT = 30
PREDICT = "/tensorflow.serving.PredictionService/Predict"
GET_MODEL_STATUS = "/tensorflow.serving.ModelService/GetModelStatus"

_nginx: list[str | None] = []


def nginx_binary() -> str:
    """Debian's nginx; waits up to 2 minutes for an apt-get install in progress. Skipped where it is missing, except
    on CI (CI set), where .ci/run installs it and a missing nginx is a failure."""
    if not _nginx:
        deadline = time.monotonic() + 120
        found = None
        while found is None:
            found = shutil.which("nginx") or next(
                (p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
            if found is None:
                if time.monotonic() > deadline:
                    break
                time.sleep(2)
        _nginx.append(found)
    if _nginx[0] is None:
        message = ("nginx is not installed (no `nginx` on PATH, no /usr/sbin/nginx after waiting 2 minutes), so "
                   "deploy/nginx/pyserving.conf cannot be run; install Debian's nginx: `apt-get install -y nginx`")
        if os.environ.get("CI"):
            pytest.fail(message + " (.ci/run installs it)")
        pytest.skip(message)
    return _nginx[0]


@dataclass
class Tls:
    ca_pem: Path
    cert_chain: Path
    key: Path


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    try:
        import trustme
    except ImportError:
        pytest.fail("trustme is not installed; it is in pyproject's test extra: pip install -e '.[test]'")

    directory = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert(HOSTNAME, "127.0.0.1", "localhost")
    paths = Tls(directory / "ca.pem", directory / "fullchain.pem", directory / "privkey.pem")
    ca.cert_pem.write_to_path(str(paths.ca_pem))
    paths.cert_chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(paths.key))
    return paths


def substitute(text: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        assert old in text, f"deploy/nginx/pyserving.conf no longer contains {old!r}; update this test"
        text = text.replace(old, new)
    return text


def main_conf(directory: Path, site_conf: Path) -> Path:
    """A minimal nginx.conf in `directory` that includes `site_conf` in its http block, every path inside
    `directory`."""
    for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (directory / name).mkdir(exist_ok=True)
    # As root the workers would run as `nobody`, who cannot write the 0700 pytest temp directories.
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = directory / "nginx.conf"
    conf.write_text(f"""{user}daemon off;
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {directory}/access.log;
    client_body_temp_path {directory}/client_body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    include {site_conf};
}}
""")
    return conf


def shipped_paths(directory: Path, tls: Tls, keys_file: Path) -> dict[str, str]:
    return {
        "/etc/ssl/certs/fullchain.pem": str(tls.cert_chain),
        "/etc/ssl/private/privkey.pem": str(tls.key),
        "/etc/nginx/pyserving/api-keys.map": str(keys_file),
        "/var/log/nginx/pyserving.access.log": str(directory / "pyserving.access.log"),
    }


def write_keys(path: Path, keys: dict[str, str]) -> None:
    path.write_text("".join(f'"{key}" {client};\n' for key, client in keys.items()))


@dataclass
class Proxy:
    directory: Path
    process: subprocess.Popen[bytes]
    https_port: int
    grpc_port: int
    http_port: int
    keys_file: Path
    ca_pem: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    def get(self, path: str, key: str | None = TEST_KEY, headers: dict[str, str] | None = None) -> requests.Response:
        return requests.get(self.url + path, headers={**bearer(key), **(headers or {})}, verify=str(self.ca_pem),
                            timeout=TIMEOUT)

    def post(self, path: str, body: object, key: str | None = TEST_KEY) -> requests.Response:
        return requests.post(self.url + path, json=body, headers=bearer(key), verify=str(self.ca_pem),
                             timeout=TIMEOUT)

    def channel(self) -> grpc.Channel:
        credentials = grpc.ssl_channel_credentials(root_certificates=self.ca_pem.read_bytes())
        return grpc.secure_channel(f"127.0.0.1:{self.grpc_port}", credentials,
                                   options=[("grpc.ssl_target_name_override", HOSTNAME)])

    def log(self) -> str:
        return (self.directory / "error.log").read_text(errors="replace")[-4000:]


def bearer(key: str | None) -> dict[str, str]:
    return {} if key is None else {"Authorization": f"Bearer {key}"}


def wait_for_ports(process: subprocess.Popen[bytes], ports: list[int], directory: Path) -> None:
    deadline = time.monotonic() + 20
    pending = list(ports)
    while pending:
        if process.poll() is not None:
            raise AssertionError(f"nginx exited with {process.returncode}:\n"
                                 f"{(directory / 'nginx.out').read_text(errors='replace')[-4000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"nginx did not listen on {pending} within 20 s")
        try:
            with socket.create_connection(("127.0.0.1", pending[0]), timeout=1):
                pending.pop(0)
        except OSError:
            time.sleep(0.05)


@contextmanager
def running_nginx(directory: Path, tls: Tls, rest_upstream: str, grpc_upstream: str,
                  keys: dict[str, str]) -> Iterator[Proxy]:
    """nginx serving a copy of the shipped conf on free 127.0.0.1 ports, in front of the given upstreams."""
    directory.mkdir(parents=True, exist_ok=True)
    https_port, grpc_port, http_port = free_port(), free_port(), free_port()
    keys_file = directory / "api-keys.map"
    write_keys(keys_file, keys)
    site = directory / "pyserving.conf"
    site.write_text(substitute(SHIPPED_CONF.read_text(), {
        "listen 443 ssl http2;": f"listen 127.0.0.1:{https_port} ssl http2;",
        "listen 8443 ssl http2;": f"listen 127.0.0.1:{grpc_port} ssl http2;",
        "listen 80;": f"listen 127.0.0.1:{http_port};",
        "server 127.0.0.1:8501 max_fails=0;": f"server {rest_upstream} max_fails=0;",
        "server 127.0.0.1:8500 max_fails=0;": f"server {grpc_upstream} max_fails=0;",
        **shipped_paths(directory, tls, keys_file),
    }))
    with nginx_process(directory, site, [https_port, grpc_port, http_port]) as process:
        yield Proxy(directory, process, https_port, grpc_port, http_port, keys_file, tls.ca_pem)


@contextmanager
def nginx_process(directory: Path, site: Path, ports: list[int]) -> Iterator[subprocess.Popen[bytes]]:
    """nginx (unprivileged, prefix `directory`) serving `site`, once it listens on `ports`; stopped at the end."""
    conf = main_conf(directory, site)
    with open(directory / "nginx.out", "wb") as out:
        process = subprocess.Popen([nginx_binary(), "-p", f"{directory}/", "-c", str(conf)], stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_ports(process, ports, directory)
        yield process
    finally:
        process.terminate()  # SIGTERM: nginx's fast shutdown, master and workers
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


@pytest.fixture(scope="module")
def pyserving(testdata: Path) -> Iterator[tuple[str, str]]:
    with run_server(model_options("half", testdata / "saved_model_half_plus_two_cpu")) as running:
        yield running.rest_url.removeprefix("http://"), running.grpc_target


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, tls: Tls, pyserving: tuple[str, str]) -> Iterator[Proxy]:
    with running_nginx(tmp_path_factory.mktemp("nginx"), tls, *pyserving, {TEST_KEY: "test-client"}) as running:
        yield running


# --- the shipped file as written -----------------------------------------------------------------------------------


def test_shipped_conf_passes_nginx_t(tmp_path: Path, tls: Tls) -> None:
    """`nginx -t` on the shipped file and the shipped keys example; only paths that must exist are replaced."""
    site = tmp_path / "pyserving.conf"
    site.write_text(substitute(SHIPPED_CONF.read_text(), shipped_paths(tmp_path, tls, KEYS_EXAMPLE)))
    result = subprocess.run([nginx_binary(), "-t", "-p", f"{tmp_path}/", "-c", str(main_conf(tmp_path, site))],
                            capture_output=True, text=True, timeout=TIMEOUT)
    output = result.stdout + result.stderr
    print(output)
    assert result.returncode == 0, output
    assert "syntax is ok" in output and "test is successful" in output, output


def test_shipped_conf_corrects_the_article() -> None:
    text = SHIPPED_CONF.read_text()
    directives = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    code = "\n".join(d for d in directives if d)
    # the article's directives do not exist in nginx
    assert "ssl_certificate_file" not in code and "ssl_certificate_key_file" not in code
    assert "ssl_certificate     /etc/ssl/certs/fullchain.pem;" in code
    assert "ssl_certificate_key /etc/ssl/private/privkey.pem;" in code
    # `map` only at the top level of the file (the http context), never inside a server
    depth = 0
    for line in directives:
        if line.startswith("map "):
            assert depth == 0, f"map inside a block: {line}"
        depth += line.count("{") - line.count("}")
    assert code.count("ssl_protocols TLSv1.2 TLSv1.3;") == 2
    assert code.count("client_max_body_size 64m;") == 2
    assert "proxy_pass http://pyserving_rest;" in code and "grpc_pass grpc://pyserving_grpc;" in code
    # no key in the shipped files
    assert not [line for line in KEYS_EXAMPLE.read_text().splitlines() if line.strip() and
                not line.lstrip().startswith("#")]


# --- REST through the proxy ----------------------------------------------------------------------------------------


def test_predict_with_the_right_key(proxy: Proxy) -> None:
    response = proxy.post("/v1/models/half:predict", {"instances": [1.0, 2.0]})
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": [2.5, 3.0]}
    assert response.headers["X-Model-Version"] == "123"  # pyserving's header made it through the proxy


def test_model_status_with_the_key(proxy: Proxy) -> None:
    response = proxy.get("/v1/models/half")
    assert response.status_code == 200, response.text
    assert response.json()["model_version_status"] == [
        {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]


def test_a_pyserving_error_passes_through_unchanged(proxy: Proxy) -> None:
    response = proxy.get("/v1/models/nope")
    assert response.status_code == 404, response.text
    assert "nope" in response.json()["error"]


def test_wrong_key_is_refused_with_a_json_error(proxy: Proxy) -> None:
    response = proxy.post("/v1/models/half:predict", {"instances": [1.0, 2.0]}, key=ROTATED_KEY)
    assert response.status_code == 401, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json() == {"error": "invalid API key"}
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="pyserving", error="invalid_token"'


def test_a_prefix_or_extension_of_the_key_is_refused(proxy: Proxy) -> None:
    for key in (TEST_KEY[:-1], TEST_KEY + "0", f"{TEST_KEY} {TEST_KEY}", "", '""'):
        response = proxy.get("/v1/models/half", key=key)
        assert response.status_code == 401, (key, response.text)
    # nginx's map compares strings case-insensitively, which is why the README asks for hex keys
    assert proxy.get("/v1/models/half", key=TEST_KEY.upper()).status_code == 200


def test_no_key_is_refused_with_a_json_error(proxy: Proxy) -> None:
    response = proxy.post("/v1/models/half:predict", {"instances": [1.0, 2.0]}, key=None)
    assert response.status_code == 401, response.text
    assert "missing API key" in response.json()["error"]
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="pyserving"'
    status = proxy.get("/v1/models/half", key=None)
    assert status.status_code == 401 and "error" in status.json()


def test_the_key_in_another_scheme_is_refused(proxy: Proxy) -> None:
    response = requests.get(proxy.url + "/v1/models/half", auth=(TEST_KEY, ""), verify=str(proxy.ca_pem),
                            timeout=TIMEOUT)
    assert response.status_code == 401, response.text
    # the scheme itself is case-insensitive
    assert proxy.get("/v1/models/half", key=None,
                     headers={"Authorization": f"bearer {TEST_KEY}"}).status_code == 200


def test_plain_http_to_the_tls_port_is_not_served(proxy: Proxy) -> None:
    response = requests.post(f"http://127.0.0.1:{proxy.https_port}/v1/models/half:predict",
                             json={"instances": [1.0, 2.0]}, headers=bearer(TEST_KEY), timeout=TIMEOUT)
    assert response.status_code == 400, response.text
    assert response.json() == {"error": "plain HTTP request sent to the HTTPS port: use https"}


def test_port_80_refuses_plain_http_without_proxying(proxy: Proxy) -> None:
    response = requests.post(f"http://127.0.0.1:{proxy.http_port}/v1/models/half:predict",
                             json={"instances": [1.0, 2.0]}, headers=bearer(TEST_KEY), timeout=TIMEOUT,
                             allow_redirects=False)
    assert response.status_code == 403, response.text
    assert "https" in response.json()["error"]


def test_tls_is_1_2_or_newer_with_the_configured_certificate(proxy: Proxy) -> None:
    # (OpenSSL 3 itself refuses TLS 1.0/1.1 at its default security level, so a TLS 1.1 client says nothing about
    # ssl_protocols; test_shipped_conf_corrects_the_article checks the directive.)
    context = ssl.create_default_context(cafile=str(proxy.ca_pem))
    for port in (proxy.https_port, proxy.grpc_port):
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
            with context.wrap_socket(raw, server_hostname=HOSTNAME) as tls_socket:
                assert tls_socket.version() in ("TLSv1.2", "TLSv1.3")


def test_large_json_bodies_pass(proxy: Proxy) -> None:
    """A 3 MB JSON request, over nginx's default 1 MB limit (an image or a batch is this big)."""
    instances = [float(i % 7) for i in range(400_000)]
    body = json.dumps({"instances": instances})
    assert len(body) > 1_500_000
    response = proxy.post("/v1/models/half:predict", {"instances": instances})
    assert response.status_code == 200, response.text[:500]
    assert response.json()["predictions"][:8] == [x * 0.5 + 2 for x in instances[:8]]


def test_bodies_over_64_mb_are_refused_in_tf_serving_shape(proxy: Proxy) -> None:
    body = b'{"instances": [' + b"0.0," * (17 << 20) + b"0.0]}"
    assert len(body) > 64 << 20
    try:
        response = requests.post(proxy.url + "/v1/models/half:predict", data=body, headers=bearer(TEST_KEY),
                                 verify=str(proxy.ca_pem), timeout=TIMEOUT)
    except requests.ConnectionError:
        pass  # nginx may close before the client has sent everything; what matters is that nothing was served
    else:
        assert response.status_code == 413, response.text[:500]
        assert response.json() == {"error": "request body larger than client_max_body_size of the proxy"}
    request = predict_request([])
    request.inputs["x"].ClearField("float_val")
    request.inputs["x"].tensor_shape.dim[0].size = 17 << 20
    request.inputs["x"].tensor_content = bytes(4 * (17 << 20))
    with proxy.channel() as channel, pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary(PREDICT, request_serializer=predict_pb2.PredictRequest.SerializeToString,
                            response_deserializer=predict_pb2.PredictResponse.FromString)(
            request, timeout=TIMEOUT, metadata=[("authorization", f"Bearer {TEST_KEY}")])
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, caught.value
    assert caught.value.details() == "request larger than client_max_body_size of the proxy"


def test_access_log_names_the_client_never_the_key(proxy: Proxy) -> None:
    assert proxy.post("/v1/models/half:predict", {"instances": [1.0]}).status_code == 200
    assert proxy.get("/v1/models/half", key=ROTATED_KEY).status_code == 401
    log = proxy.directory / "pyserving.access.log"
    deadline = time.monotonic() + 10
    while 'client="test-client"' not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    text = log.read_text()
    assert 'client="test-client"' in text and 'client=""' in text, text[-2000:]
    assert TEST_KEY not in text and ROTATED_KEY not in text


# --- gRPC through the proxy ----------------------------------------------------------------------------------------


def predict_request(values: list[float]) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half"
    request.inputs["x"].dtype = 1  # DT_FLOAT
    request.inputs["x"].tensor_shape.dim.add(size=len(values))
    request.inputs["x"].float_val.extend(values)
    return request


def grpc_predict(proxy: Proxy, key: str | None) -> predict_pb2.PredictResponse:
    with proxy.channel() as channel:
        predict = channel.unary_unary(PREDICT, request_serializer=predict_pb2.PredictRequest.SerializeToString,
                                      response_deserializer=predict_pb2.PredictResponse.FromString)
        metadata = None if key is None else [("authorization", f"Bearer {key}")]
        return predict(predict_request([1.0, 2.0]), timeout=TIMEOUT, metadata=metadata)


def test_grpc_predict_with_the_right_key(proxy: Proxy) -> None:
    response = grpc_predict(proxy, TEST_KEY)
    assert list(response.outputs["y"].float_val) == [2.5, 3.0]
    assert response.model_spec.version.value == 123


def test_grpc_model_status_with_the_right_key(proxy: Proxy) -> None:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "half"
    with proxy.channel() as channel:
        status = channel.unary_unary(GET_MODEL_STATUS,
                                     request_serializer=get_model_status_pb2.GetModelStatusRequest.SerializeToString,
                                     response_deserializer=get_model_status_pb2.GetModelStatusResponse.FromString)
        response = status(request, timeout=TIMEOUT, metadata=[("authorization", f"Bearer {TEST_KEY}")])
    assert [(v.version, v.state) for v in response.model_version_status] == [(123, 30)]  # AVAILABLE


@pytest.mark.parametrize("key", [None, ROTATED_KEY], ids=["no key", "wrong key"])
def test_grpc_without_the_right_key_is_unauthenticated(proxy: Proxy, key: str | None) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        grpc_predict(proxy, key)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, caught.value
    assert ("missing API key" if key is None else "invalid API key") in caught.value.details()


# --- operations ----------------------------------------------------------------------------------------------------


def test_keys_rotate_with_a_reload(tmp_path: Path, tls: Tls, pyserving: tuple[str, str]) -> None:
    """The README's rotation: add the new key, reload, move clients, remove the old key, reload."""
    with running_nginx(tmp_path, tls, *pyserving, {TEST_KEY: "old"}) as proxy:
        assert proxy.get("/v1/models/half").status_code == 200
        assert proxy.get("/v1/models/half", key=ROTATED_KEY).status_code == 401

        def reload_until(key: str, status: int) -> None:
            proxy.process.send_signal(signal.SIGHUP)  # what `nginx -s reload` sends
            deadline = time.monotonic() + 20
            while proxy.get("/v1/models/half", key=key).status_code != status:
                assert time.monotonic() < deadline, f"reload did not take effect:\n{proxy.log()}"
                time.sleep(0.1)

        write_keys(proxy.keys_file, {TEST_KEY: "old", ROTATED_KEY: "new"})
        reload_until(ROTATED_KEY, 200)
        assert proxy.get("/v1/models/half").status_code == 200
        write_keys(proxy.keys_file, {ROTATED_KEY: "new"})
        reload_until(TEST_KEY, 401)
        assert proxy.post("/v1/models/half:predict", {"instances": [2.0]}, key=ROTATED_KEY).json() == {
            "predictions": [3.0]}


def test_upstream_gets_forwarding_headers_and_never_the_key(tmp_path: Path, tls: Tls) -> None:
    seen: list[dict[str, str]] = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            seen.append(dict(self.headers.items()))
            body = b'{"ok": true}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=upstream.serve_forever, daemon=True)
    thread.start()
    try:
        rest = f"127.0.0.1:{upstream.server_address[1]}"
        with running_nginx(tmp_path, tls, rest, f"127.0.0.1:{free_port()}", {TEST_KEY: "c"}) as proxy:
            assert proxy.get("/v1/models/half").json() == {"ok": True}
            assert proxy.get("/v1/models/half", key=None).status_code == 401
    finally:
        upstream.shutdown()
        upstream.server_close()
        thread.join(10)
    assert len(seen) == 1, seen  # the refused request never reached the upstream
    headers = {k.lower(): v for k, v in seen[0].items()}
    assert "authorization" not in headers, headers
    assert headers["x-forwarded-proto"] == "https"
    assert headers["x-real-ip"] == headers["x-forwarded-for"] == "127.0.0.1"


def test_a_dead_upstream_gives_tf_serving_shaped_errors(tmp_path: Path, tls: Tls) -> None:
    dead_rest, dead_grpc = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    with running_nginx(tmp_path, tls, dead_rest, dead_grpc, {TEST_KEY: "test-client"}) as proxy:
        response = proxy.post("/v1/models/half:predict", {"instances": [1.0]})
        assert response.status_code == 502, response.text
        assert response.json() == {"error": "pyserving is not reachable behind the proxy"}
        with pytest.raises(grpc.RpcError) as caught:
            grpc_predict(proxy, TEST_KEY)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value
        assert caught.value.details() == "pyserving is not reachable behind the proxy"
        # the key is still checked first
        assert proxy.get("/v1/models/half", key=None).status_code == 401
