"""The attack table: every row over REST and over gRPC, each asserting the answer's status and that the model never
ran (its :tensorflow:serving:runtime_latency count, scraped from the public metrics port, does not move). Then
rate limits with recovery, and key rotation by rewriting the auth file."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    model_management_pb2,
    predict_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)

from conftest import GRPC_OPTIONS, free_port, run_server
from pyserving.options import ModelConfig, ServerOptions
from security_fixtures import AUDIENCE, HS_ISSUER, ISSUER, Keys, keys, memory_model, sha256  # noqa: F401

PREDICT_KEY, META_KEY, ADMIN_KEY, LIMITED_KEY, OTHER_KEY = "k-predict", "k-meta", "k-admin", "k-limited", "k-other"
LIMIT_RPS, LIMIT_BURST = 5, 3
TIMEOUT = 30


def auth_config(keys: Keys, predict_key: str = PREDICT_KEY) -> str:
    return f"""
api_key {{ name: "predictor" sha256: "{sha256(predict_key)}" scope: "m:predict" }}
api_key {{ name: "reader" sha256: "{sha256(META_KEY)}" scope: "m:metadata" }}
api_key {{ name: "operator" sha256: "{sha256(ADMIN_KEY)}" scope: "*:admin" scope: "*:metadata" }}
api_key {{ name: "other" sha256: "{sha256(OTHER_KEY)}" scope: "other:predict" }}
api_key {{ name: "limited" sha256: "{sha256(LIMITED_KEY)}" scope: "m:predict"
           rate_limit {{ requests_per_second: {LIMIT_RPS} burst: {LIMIT_BURST} }} }}
jwt {{ issuer: "{ISSUER}" audience: "{AUDIENCE}" jwks_file: "{keys.jwks_path}" }}
jwt {{ issuer: "{HS_ISSUER}" audience: "{AUDIENCE}" hs256_secret_file: "{keys.secret_path}" }}
public: "metrics"
"""


@dataclass
class Secured:
    rest: str
    grpc: str
    metrics: str
    auth_file: Path
    models: dict[str, str]

    def runs(self) -> int:
        """How often model m has run (TF Serving's runtime latency histogram counts every model call)."""
        text = requests.get(self.metrics, timeout=TIMEOUT).text
        found = re.search(r':tensorflow:serving:runtime_latency_count\{[^}]*model_name="m"[^}]*\} (\S+)', text)
        return int(float(found.group(1))) if found else 0


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Iterator[Secured]:  # noqa: F811
    base = tmp_path_factory.mktemp("auth")
    auth_file = base / "auth.config"
    auth_file.write_text(auth_config(keys))
    metrics_port = free_port()
    options = ServerOptions(
        models=(ModelConfig("m", str(memory_model(base / "m")), platform="memory"),
                ModelConfig("other", str(memory_model(base / "other")), platform="memory")),
        auth_config_file=str(auth_file), auth_poll_seconds=0.2, max_request_bytes=4096, metrics_port=metrics_port,
        rest_api_port=free_port(), grpc_port=free_port(),
    )
    with run_server(options) as server:
        yield Secured(server.rest_url, server.grpc_target, f"http://127.0.0.1:{metrics_port}/metrics", auth_file,
                      {m.name: m.base_path for m in options.models})


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token is not None else {}


def rest_call(secured: Secured, what: str, headers: dict[str, str], model: str = "m") -> requests.Response:
    if what == "predict":
        return requests.post(f"{secured.rest}/v1/models/{model}:predict", json={"instances": [1.0]}, headers=headers,
                             timeout=TIMEOUT)
    if what == "metadata":
        return requests.get(f"{secured.rest}/v1/models/{model}/metadata", headers=headers, timeout=TIMEOUT)
    if what == "big":
        return requests.post(f"{secured.rest}/v1/models/{model}:predict", headers=headers, timeout=TIMEOUT,
                             data=b'{"instances": [' + b"1.0," * 2000 + b"1.0]}")
    raise AssertionError(what)


def grpc_call(secured: Secured, what: str, metadata: list[tuple[str, str]], model: str = "m") -> object:
    with grpc.insecure_channel(secured.grpc, options=GRPC_OPTIONS) as channel:
        if what in ("predict", "big"):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model
            x = np.ones(4000 if what == "big" else 1, np.float32)
            request.inputs["x"].CopyFrom(tf.make_tensor_proto(x))
            return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
                request, metadata=metadata, timeout=TIMEOUT)
        if what == "metadata":
            request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
            request.model_spec.name = model
            return prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(
                request, metadata=metadata, timeout=TIMEOUT)
        if what == "reload":  # the same models again: a reload that changes nothing
            request = model_management_pb2.ReloadConfigRequest()
            for name, base_path in secured.models.items():
                request.config.model_config_list.config.add(name=name, base_path=base_path, model_platform="memory")
            return model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
                request, metadata=metadata, timeout=TIMEOUT)
    raise AssertionError(what)


Token = Callable[[Keys], "str | None"]
ROWS: list[tuple[str, str, Callable[[Keys], dict[str, str]], str, int, grpc.StatusCode]] = [
    ("no credential", "predict", lambda k: {}, "m", 401, grpc.StatusCode.UNAUTHENTICATED),
    ("malformed header", "predict", lambda k: {"Authorization": "Basic dXNlcjpwYXNz"}, "m", 401,
     grpc.StatusCode.UNAUTHENTICATED),
    ("bearer without a token", "predict", lambda k: {"Authorization": "Bearer"}, "m", 401,
     grpc.StatusCode.UNAUTHENTICATED),
    ("unknown key", "predict", lambda k: bearer("not-a-key"), "m", 401, grpc.StatusCode.UNAUTHENTICATED),
    ("unknown X-API-Key", "predict", lambda k: {"X-API-Key": "not-a-key"}, "m", 401,
     grpc.StatusCode.UNAUTHENTICATED),
    ("key for another model", "predict", lambda k: bearer(OTHER_KEY), "m", 403, grpc.StatusCode.PERMISSION_DENIED),
    ("predict-only key on metadata", "metadata", lambda k: bearer(PREDICT_KEY), "m", 403,
     grpc.StatusCode.PERMISSION_DENIED),
    ("metadata-only key on predict", "predict", lambda k: bearer(META_KEY), "m", 403,
     grpc.StatusCode.PERMISSION_DENIED),
    ("expired JWT", "predict", lambda k: bearer(k.rs256(exp=int(time.time()) - 3600)), "m", 401,
     grpc.StatusCode.UNAUTHENTICATED),
    ("nbf in the future", "predict", lambda k: bearer(k.rs256(nbf=int(time.time()) + 3600)), "m", 401,
     grpc.StatusCode.UNAUTHENTICATED),
    ("JWT without exp", "predict", lambda k: bearer(k.rs256(exp=None)), "m", 401, grpc.StatusCode.UNAUTHENTICATED),
    ("wrong aud", "predict", lambda k: bearer(k.rs256(aud="someone-else")), "m", 401,
     grpc.StatusCode.UNAUTHENTICATED),
    ("wrong iss", "predict", lambda k: bearer(k.rs256(iss="https://evil.test")), "m", 401,
     grpc.StatusCode.UNAUTHENTICATED),
    ("bad signature", "predict", lambda k: bearer(k.rs256(key=k.other_private)), "m", 401,
     grpc.StatusCode.UNAUTHENTICATED),
    ("tampered claims", "predict",
     lambda k: bearer(_tamper(k.rs256(scope="m:metadata"))), "m", 401, grpc.StatusCode.UNAUTHENTICATED),
    ("alg none", "predict", lambda k: bearer(k.alg_none()), "m", 401, grpc.StatusCode.UNAUTHENTICATED),
    ("HS256 signed with the RS256 public key", "predict", lambda k: bearer(k.hs256_with_public_key()), "m", 401,
     grpc.StatusCode.UNAUTHENTICATED),
    ("unknown kid", "predict", lambda k: bearer(k.rs256(kid="k2", key=k.other_private)), "m", 401,
     grpc.StatusCode.UNAUTHENTICATED),
    ("JWT without the model's scope", "predict", lambda k: bearer(k.rs256(scope="other:predict")), "m", 403,
     grpc.StatusCode.PERMISSION_DENIED),
    ("oversized body", "big", lambda k: bearer(PREDICT_KEY), "m", 413, grpc.StatusCode.RESOURCE_EXHAUSTED),
]


def _tamper(token: str) -> str:
    """Swap in claims granting predict, keeping the original signature."""
    import base64
    import json

    head, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["scope"] = "m:predict"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{head}.{forged}.{signature}"


@pytest.mark.parametrize(("case", "what", "credential", "model", "status", "code"), ROWS, ids=[r[0] for r in ROWS])
def test_attack_is_refused_before_the_model_runs(
    secured: Secured, keys: Keys, case: str, what: str, credential: Callable[[Keys], dict[str, str]],  # noqa: F811
    model: str, status: int, code: grpc.StatusCode,
) -> None:
    headers = credential(keys)
    before = secured.runs()
    r = rest_call(secured, what, headers, model)
    assert r.status_code == status, r.text
    body = r.json()
    assert list(body) == ["error"] and body["error"]
    for secret in headers.values():  # never echo a credential
        token = secret.split(" ", 1)[-1]
        assert len(token) < 8 or token not in body["error"]
    if status == 401:
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    with pytest.raises(grpc.RpcError) as err:
        grpc_call(secured, what, [(k.lower(), v) for k, v in headers.items()], model)
    assert err.value.code() == code, err.value.details()
    assert secured.runs() == before, f"{case}: the model ran"


def test_predict_only_key_cannot_reload_the_config(secured: Secured) -> None:
    with pytest.raises(grpc.RpcError) as err:
        grpc_call(secured, "reload", [("authorization", f"Bearer {PREDICT_KEY}")])
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as err:
        grpc_call(secured, "reload", [])
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    response = grpc_call(secured, "reload", [("authorization", f"Bearer {ADMIN_KEY}")])
    assert response.status.error_code == 0, response.status.error_message  # type: ignore[attr-defined]
    assert rest_call(secured, "predict", bearer(PREDICT_KEY)).status_code == 200  # still serving


@pytest.mark.parametrize("credential", [
    lambda k: bearer(PREDICT_KEY), lambda k: {"X-API-Key": PREDICT_KEY}, lambda k: bearer(k.rs256()),
    lambda k: bearer(k.hs256(scope="m:predict")), lambda k: bearer(k.rs256(scope=["m:predict"])),
], ids=["api key", "X-API-Key", "RS256 JWT", "HS256 JWT", "scope as a list"])
def test_valid_credentials_predict_over_rest_and_grpc(secured: Secured, keys: Keys,  # noqa: F811
                                                      credential: Callable[[Keys], dict[str, str]]) -> None:
    headers = credential(keys)
    before = secured.runs()
    r = rest_call(secured, "predict", headers)
    assert (r.status_code, r.json()) == (200, {"predictions": [2.5]})
    response = grpc_call(secured, "predict", [(k.lower(), v) for k, v in headers.items()])
    assert list(response.outputs["y"].float_val) == [2.5]  # type: ignore[attr-defined]
    assert secured.runs() == before + 2


def test_health_is_public_and_metadata_needs_its_scope(secured: Secured) -> None:
    assert requests.get(f"{secured.rest}/healthz", timeout=TIMEOUT).status_code == 200
    assert requests.get(f"{secured.rest}/readyz", timeout=TIMEOUT).status_code == 200
    assert requests.get(f"{secured.rest}/v1/openapi.json", timeout=TIMEOUT).status_code == 200
    assert requests.post(f"{secured.rest}/v1/openapi.json", timeout=TIMEOUT).status_code == 401  # only GET is the document
    assert rest_call(secured, "metadata", bearer(META_KEY)).status_code == 200
    listing = requests.get(f"{secured.rest}/v1/models", headers=bearer(META_KEY), timeout=TIMEOUT)
    assert listing.status_code == 403  # listing every model needs *:metadata
    assert requests.get(f"{secured.rest}/v1/models", headers=bearer(ADMIN_KEY), timeout=TIMEOUT).status_code == 200


def test_the_model_checked_is_the_model_served(secured: Secured) -> None:
    # The name is decoded after matching (TF Serving's order): "m%2Fx" is model "m/x", not a path that matches no
    # model and so needs no model's scope.
    refused = rest_call(secured, "predict", bearer(PREDICT_KEY), model="m%2Fx")
    assert refused.status_code == 403 and 'model "m/x"' in refused.json()["error"]


def test_rate_limit_answers_429_then_recovers(secured: Secured) -> None:
    headers = bearer(LIMITED_KEY)
    codes = [rest_call(secured, "predict", headers).status_code for _ in range(LIMIT_BURST + 3)]
    assert codes[:LIMIT_BURST] == [200] * LIMIT_BURST and 429 in codes[LIMIT_BURST:], codes
    refused = rest_call(secured, "predict", headers)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    with pytest.raises(grpc.RpcError) as err:
        grpc_call(secured, "predict", [("authorization", f"Bearer {LIMITED_KEY}")])
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    time.sleep(1.2 / LIMIT_RPS * LIMIT_BURST)  # the bucket refills
    assert rest_call(secured, "predict", headers).status_code == 200
    assert rest_call(secured, "predict", bearer(PREDICT_KEY)).status_code == 200  # other callers never limited


def test_keys_rotate_by_rewriting_the_file_and_a_broken_file_keeps_the_last_good(
    secured: Secured, keys: Keys,  # noqa: F811
) -> None:
    def wait_for(predicate: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 15
        while not predicate():
            assert time.monotonic() < deadline, "the auth file change did not take effect within 15 s"
            time.sleep(0.1)

    new_key = "k-rotated"
    try:
        secured.auth_file.write_text(auth_config(keys, predict_key=new_key))
        wait_for(lambda: rest_call(secured, "predict", bearer(new_key)).status_code == 200)
        assert rest_call(secured, "predict", bearer(PREDICT_KEY)).status_code == 401
        secured.auth_file.write_text('api_key { name: "half-writ')  # an editor caught mid-write
        time.sleep(1.0)
        assert rest_call(secured, "predict", bearer(new_key)).status_code == 200
    finally:
        secured.auth_file.write_text(auth_config(keys))
        wait_for(lambda: rest_call(secured, "predict", bearer(PREDICT_KEY)).status_code == 200)
