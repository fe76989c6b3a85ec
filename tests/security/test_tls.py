"""--ssl_config_file (TF Serving's SSLConfig, PEM inline) puts TLS on gRPC, REST and the metrics port, with mutual
TLS under client_verify; TF Serving's own clients connect with a CA bundle; plaintext to a TLS port fails."""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from conftest import REPO, free_port, model_options, run_server
from pyserving.config.flags import FlagError, parse_flags, server_options
from pyserving.config.ssl_config import load_ssl_config_file, parse_ssl_config
from pyserving.config.textproto import ConfigError
from pyserving.security.tls import server_ssl_context
from security_fixtures import Pki, pki  # noqa: F401

TIMEOUT = 30


def _predict_request() -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([2.0], shape=[1]))
    return request


def test_https_grpc_tls_and_metrics_over_tls(testdata: Path, pki: Pki) -> None:  # noqa: F811
    metrics_port = free_port()
    options = model_options("half", testdata / "saved_model_half_plus_two_cpu", tls=load_ssl_config_file(
        str(pki.ssl_config)), metrics_port=metrics_port)
    with run_server(options) as server:
        https = server.rest_url.replace("http://", "https://")
        r = requests.post(f"{https}/v1/models/half:predict", json={"instances": [1.0]}, verify=str(pki.ca_path),
                          timeout=TIMEOUT)
        assert (r.status_code, r.json()) == (200, {"predictions": [2.5]})
        with pytest.raises(requests.exceptions.SSLError):  # a client that does not trust the CA
            requests.get(f"{https}/v1/models/half", timeout=TIMEOUT)
        with pytest.raises(requests.exceptions.ConnectionError):  # plaintext to the TLS port: no fallback
            requests.get(f"{server.rest_url}/v1/models/half", timeout=TIMEOUT)

        credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca_path.read_bytes())
        with grpc.secure_channel(server.grpc_target, credentials) as channel:
            response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(_predict_request(),
                                                                                       timeout=TIMEOUT)
        assert list(response.outputs["y"].float_val) == [3.0]
        with grpc.insecure_channel(server.grpc_target) as channel, pytest.raises(grpc.RpcError) as err:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(_predict_request(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE

        scrape = requests.get(f"https://127.0.0.1:{metrics_port}/metrics", verify=str(pki.ca_path), timeout=TIMEOUT)
        assert scrape.status_code == 200 and ":tensorflow:serving:request_count" in scrape.text

        # TLS 1.2 works (a client capped at 1.2 connects). That 1.1 is refused is checked on the context below:
        # this OpenSSL's clients refuse to offer 1.1 at all, so a 1.1 handshake would prove nothing.
        context = ssl.create_default_context(cafile=str(pki.ca_path))
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        import socket

        with socket.create_connection(("127.0.0.1", server.server.rest_port), timeout=TIMEOUT) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls_socket:
                assert tls_socket.version() == "TLSv1.2"
    assert server_ssl_context(load_ssl_config_file(str(pki.ssl_config))).minimum_version == ssl.TLSVersion.TLSv1_2


def test_mutual_tls_refuses_clients_without_a_certificate_from_custom_ca(testdata: Path, pki: Pki) -> None:  # noqa: F811
    options = model_options("half", testdata / "saved_model_half_plus_two_cpu",
                            tls=load_ssl_config_file(str(pki.mtls_config)))
    with run_server(options) as server:
        https = server.rest_url.replace("http://", "https://")
        url = f"{https}/v1/models/half:predict"
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.post(url, json={"instances": [1.0]}, verify=str(pki.ca_path), timeout=TIMEOUT)
        r = requests.post(url, json={"instances": [1.0]}, verify=str(pki.ca_path),
                          cert=(str(pki.client_cert), str(pki.client_key)), timeout=TIMEOUT)
        assert (r.status_code, r.json()) == (200, {"predictions": [2.5]})

        anonymous = grpc.ssl_channel_credentials(root_certificates=pki.ca_path.read_bytes())
        with grpc.secure_channel(server.grpc_target, anonymous) as channel, pytest.raises(grpc.RpcError) as err:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(_predict_request(), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        with_cert = grpc.ssl_channel_credentials(root_certificates=pki.ca_path.read_bytes(),
                                                 private_key=pki.client_key.read_bytes(),
                                                 certificate_chain=pki.client_cert.read_bytes())
        with grpc.secure_channel(server.grpc_target, with_cert) as channel:
            response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(_predict_request(),
                                                                                       timeout=TIMEOUT)
        assert list(response.outputs["y"].float_val) == [3.0]


@pytest.mark.parametrize(("text", "message"), [
    ('server_cert: "x"', "server_key and server_cert are both required"),
    ('server_key: "/etc/key.pem" server_cert: "/etc/cert.pem"', "not a file path"),
    ('server_key: "-----BEGIN PRIVATE KEY-----" server_cert: "-----BEGIN CERTIFICATE-----" client_verify: true',
     "client_verify: true needs custom_ca"),
    ("server_keys: 1", "server_keys"),
])
def test_bad_ssl_configs_say_what_to_write(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_ssl_config(text, source="ssl.config")
    assert message in str(err.value) and str(err.value).startswith("ssl.config")


def test_the_flag_reads_the_file_and_refuses_a_bad_one(tmp_path: Path, pki: Pki) -> None:  # noqa: F811
    base = ["--model_base_path=/models/m"]
    values, _ = parse_flags([*base, f"--ssl_config_file={pki.ssl_config}"])
    assert server_options(values).tls == load_ssl_config_file(str(pki.ssl_config))
    bad = tmp_path / "bad.config"
    bad.write_text('server_key: "/etc/key.pem"')
    values, _ = parse_flags([*base, f"--ssl_config_file={bad}"])
    with pytest.raises(FlagError, match="--ssl_config_file"):
        server_options(values)


def test_open_api_warning_only_without_auth_on_a_public_address(testdata: Path, tmp_path: Path) -> None:
    """One warning at start-up when the API is open to the network; none on loopback."""
    code = (
        "import sys; from pyserving.cli.main import main; sys.exit(main(sys.argv[1:]))"
    )
    rest, grpc_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "serve", f"--port={grpc_port}", f"--rest_api_port={rest}", "--host=0.0.0.0",
         "--model_name=half", f"--model_base_path={testdata / 'saved_model_half_plus_two_cpu'}"],
        cwd=REPO, stderr=subprocess.PIPE, text=True,
    )
    try:
        import time

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{rest}/healthz", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.2)
        else:
            raise AssertionError("server did not start")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert err.count("No --auth_config_file") == 1, err[-2000:]
