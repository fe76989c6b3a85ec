"""Credentials made in the test: a trustme CA with server and client certificates, RSA keys for JWTs, API keys."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from pyserving.runtimes.memory import write_model

SIGNATURES = {"serving_default": {"inputs": {"x": {"dtype": "DT_FLOAT", "shape": [-1]}},
                                  "outputs": {"y": {"dtype": "DT_FLOAT", "shape": [-1]}}}}
ISSUER, AUDIENCE, HS_ISSUER = "https://auth.test", "pyserving", "ci"


def memory_model(base: Path, offset: float = 2.0) -> Path:
    write_model(str(base / "1"), {"signatures": SIGNATURES, "scale": 0.5, "offset": offset})
    return base


def sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_jwt(header: dict[str, object], claims: dict[str, object], sign: object) -> str:
    """A JWT assembled by hand, for tokens a JOSE library refuses to make (alg none, HS256 over a public key)."""
    head = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    signature = sign(head.encode()) if callable(sign) else b""
    return head + "." + b64url(signature)


@dataclass
class Keys:
    rsa_private: rsa.RSAPrivateKey
    rsa_public_pem: bytes
    other_private: rsa.RSAPrivateKey
    hs_secret: bytes
    jwks_path: Path
    secret_path: Path

    def claims(self, **overrides: object) -> dict[str, object]:
        now = int(time.time())
        claims: dict[str, object] = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + 600,
                                     "scope": "m:predict m:metadata"}
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def rs256(self, kid: str = "k1", key: rsa.RSAPrivateKey | None = None, **claims: object) -> str:
        return jwt.encode(self.claims(**claims), key or self.rsa_private, algorithm="RS256", headers={"kid": kid})

    def hs256(self, **claims: object) -> str:
        return jwt.encode(self.claims(iss=HS_ISSUER, **claims), self.hs_secret, algorithm="HS256")

    def alg_none(self) -> str:
        return raw_jwt({"alg": "none", "typ": "JWT", "kid": "k1"}, self.claims(), None)

    def hs256_with_public_key(self) -> str:
        """The classic confusion attack: HS256 'signed' with the issuer's public RSA key as the HMAC secret."""
        return raw_jwt({"alg": "HS256", "typ": "JWT", "kid": "k1"}, self.claims(),
                       lambda data: hmac.new(self.rsa_public_pem, data, hashlib.sha256).digest())


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    directory = tmp_path_factory.mktemp("keys")
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    jwk.update(kid="k1", alg="RS256", use="sig")
    jwks_path = directory / "jwks.json"
    jwks_path.write_text(json.dumps({"keys": [jwk]}))
    secret = b"s" * 16 + hashlib.sha256(b"hs-secret").hexdigest().encode()
    secret_path = directory / "hs256.key"
    secret_path.write_bytes(secret)
    return Keys(private, public_pem, other, secret, jwks_path, secret_path)


@dataclass
class Pki:
    ca: trustme.CA
    ca_path: Path
    ssl_config: Path
    mtls_config: Path
    client_cert: Path
    client_key: Path
    client: trustme.LeafCert


def _pem_text(data: bytes) -> str:
    return json.dumps(data.decode())  # a text-proto string literal with \n escapes


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("client@example.com")
    ca_path = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    key, cert = server.private_key_pem.bytes(), b"".join(blob.bytes() for blob in server.cert_chain_pems)
    ssl_config = directory / "ssl.config"
    ssl_config.write_text(f"server_key: {_pem_text(key)}\nserver_cert: {_pem_text(cert)}\n")
    mtls_config = directory / "mtls.config"
    mtls_config.write_text(f"server_key: {_pem_text(key)}\nserver_cert: {_pem_text(cert)}\n"
                           f"custom_ca: {_pem_text(ca.cert_pem.bytes())}\nclient_verify: true\n")
    client_cert, client_key = directory / "client.pem", directory / "client.key"
    client.cert_chain_pems[0].write_to_path(str(client_cert))
    client.private_key_pem.write_to_path(str(client_key))
    return Pki(ca, ca_path, ssl_config, mtls_config, client_cert, client_key, client)
