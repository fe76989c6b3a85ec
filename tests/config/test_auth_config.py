"""--auth_config_file: parsing, the checks that name file, line and field, and `pyserving auth new-key` (pure, no
server)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from pyserving.config.auth_config import load_auth_config_file, parse_auth_config
from pyserving.config.textproto import ConfigError
from pyserving.options import RateLimit

KEY_HASH = "ab" * 32


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "hs256.key"
    path.write_bytes(b"x" * 40 + b"\n")
    return path


@pytest.fixture
def jwks(tmp_path: Path) -> Path:
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa.generate_private_key(65537, 2048).public_key()))
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [dict(key, kid="k1")]}))
    return path


def test_every_field(tmp_path: Path, secret: Path, jwks: Path) -> None:
    config = tmp_path / "auth.config"
    config.write_text(f"""
api_key {{ name: "ci-bot" sha256: "{KEY_HASH}" scope: "my_model:predict" scope: "*:metadata"
           rate_limit {{ requests_per_second: 2.5 burst: 5 }} }}
jwt {{ issuer: "https://auth.example.com" audience: "pyserving" jwks_file: "jwks.json" scope_claim: "scp" }}
jwt {{ issuer: "ci" audience: "pyserving" hs256_secret_file: "{secret}" }}
public: "metrics"
""")
    policy = load_auth_config_file(str(config))
    (key,) = policy.api_keys
    assert (key.name, key.sha256, key.scopes) == ("ci-bot", bytes.fromhex(KEY_HASH),
                                                  frozenset({"my_model:predict", "*:metadata"}))
    assert key.rate_limit == RateLimit(2.5, 5)
    rs, hs = policy.jwt
    assert (rs.algorithms, rs.scope_claim, rs.hs256_secret) == (("RS256",), "scp", b"")
    assert json.loads(rs.jwks)["keys"][0]["kid"] == "k1"  # read relative to the config file
    assert (hs.algorithms, hs.hs256_secret, hs.jwks, hs.scope_claim) == (("HS256",), b"x" * 40, "", "scope")
    assert policy.public == frozenset({"metrics"})


BAD = [
    ("no name", f'api_key {{ sha256: "{KEY_HASH}" }}', 1, "needs a name"),
    ("duplicate name", f'api_key {{ name: "a" sha256: "{KEY_HASH}" }}\napi_key {{ name: "a" sha256: "{KEY_HASH}" }}',
     2, "used twice"),
    ("the key itself instead of its hash", 'api_key { name: "a" sha256: "my-secret-key" }', 1, "64 hex digits"),
    ("scope without action", f'api_key {{ name: "a" sha256: "{KEY_HASH}"\n scope: "my_model" }}', 2,
     "is not MODEL:ACTION"),
    ("unknown action", f'api_key {{ name: "a" sha256: "{KEY_HASH}" scope: "m:write" }}', 1, 'unknown action "write"'),
    ("zero rate", f'api_key {{ name: "a" sha256: "{KEY_HASH}"\n rate_limit {{ burst: 3 }} }}', 2,
     "requests_per_second > 0"),
    ("jwt without audience", 'jwt { issuer: "x" hs256_secret_file: "k" }', 1, "issuer and an audience"),
    ("jwt with both key kinds", 'jwt { issuer: "x" audience: "y" hs256_secret_file: "k" jwks_file: "j" }', 1,
     "exactly one of"),
    ("missing key file", 'jwt { issuer: "x" audience: "y" hs256_secret_file: "/nonexistent/k" }', 1,
     "cannot read hs256_secret_file"),
    ("unknown public endpoint", 'public: "predict"', 1, "not a known endpoint"),
    ("unknown field", 'api_keys { name: "a" }', 1, "api_keys"),
]


@pytest.mark.parametrize(("text", "line", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_errors_name_line_and_fix(text: str, line: int, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_auth_config(text, source="auth.config")
    assert str(err.value).startswith(f"auth.config:{line}"), str(err.value)
    assert message in str(err.value)


def test_weak_secrets_and_algorithm_confusion_are_refused(tmp_path: Path, jwks: Path) -> None:
    short = tmp_path / "short.key"
    short.write_bytes(b"tooshort")
    with pytest.raises(ConfigError, match="at least 32 random bytes"):
        parse_auth_config(f'jwt {{ issuer: "x" audience: "y" hs256_secret_file: "{short}" }}')
    with pytest.raises(ConfigError, match="cannot be used with public keys"):
        parse_auth_config(f'jwt {{ issuer: "x" audience: "y" jwks_file: "{jwks}" algorithms: "HS256" }}')
    with pytest.raises(ConfigError, match="cannot be used with public keys"):
        parse_auth_config(f'jwt {{ issuer: "x" audience: "y" jwks_file: "{jwks}" algorithms: "none" }}')
    not_jwks = tmp_path / "not.json"
    not_jwks.write_text('{"kty": "RSA"}')
    with pytest.raises(ConfigError, match="not a usable JWKS document"):
        parse_auth_config(f'jwt {{ issuer: "x" audience: "y" jwks_file: "{not_jwks}" }}')


def test_new_key_prints_a_key_and_its_config_line() -> None:
    result = subprocess.run([sys.executable, "-m", "pyserving", "auth", "new-key", "--name", "ci-bot", "--scope",
                             "my_model:predict", "*:metadata"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    key, line = result.stdout.strip().splitlines()
    assert len(key) >= 40 and key not in line
    policy = parse_auth_config(line)
    assert policy.api_keys[0].sha256 == hashlib.sha256(key.encode()).digest()
    assert policy.api_keys[0].scopes == frozenset({"my_model:predict", "*:metadata"})
    bad = subprocess.run([sys.executable, "-m", "pyserving", "auth", "new-key", "--name", "x", "--scope", "m:write"],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert bad.returncode == 2 and 'unknown action "write"' in bad.stderr
