"""pyserving's `--auth_config_file`: API keys and JWT issuers with per-model scopes, read into AuthPolicy.

A text proto like every other config here (errors name the file, line and field):

    api_key { name: "ci-bot" sha256: "<hex sha256 of the key>" scope: "my_model:predict"
              rate_limit { requests_per_second: 50 burst: 100 } }
    jwt { issuer: "https://auth.example.com" audience: "pyserving" jwks_file: "/etc/pyserving/jwks.json"
          scope_claim: "scope" }
    jwt { issuer: "ci" audience: "pyserving" hs256_secret_file: "/etc/pyserving/hs256.key" }
    public: "metrics"

Scopes are MODEL:ACTION, MODEL a model name or `*`; ACTION is predict (predict, classify, regress,
multi-inference), metadata (status, metadata, model lists; and metrics unless public) or admin (config reloads
and the V2 repository index: `*:admin`; a V2 repository load or unload of MODEL: MODEL:admin or `*:admin`).
A JWT's scopes are its `scope_claim` (space-separated, OAuth2 style, or a list). Key files are read when the
config is; relative paths are relative to the config file.
"""

from __future__ import annotations

import functools
import json
import os
import re

from google.protobuf.message import Message

from pyserving.config.textproto import ConfigError, TextProto, define_schema, message_class, read_config_file
from pyserving.options import ApiKey, AuthPolicy, JwtIssuer, RateLimit

_PACKAGE = "pyserving.config.auth"
ACTIONS = ("predict", "metadata", "admin")
PUBLIC = ("metrics",)
_SCOPE = re.compile(r"([^:\s]+):([a-z]+)")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_KEY_ALGORITHMS = {"RSA": "RS256", "EC": "ES256", "OKP": "EdDSA"}
_EXAMPLE = 'api_key { name: "ci-bot" sha256: "<hex sha256 of the key>" scope: "my_model:predict" }'


@functools.cache
def _schema() -> type[Message]:
    rate = ("rate_limit", 20, "RateLimit", False)
    define_schema("pyserving/config/auth_config.proto", _PACKAGE, {
        "RateLimit": [("requests_per_second", 1, "double", False), ("burst", 2, "int64", False)],
        "ApiKey": [("name", 1, "string", False), ("sha256", 2, "string", False), ("scope", 3, "string", True),
                   rate],
        "Jwt": [("issuer", 1, "string", False), ("audience", 2, "string", False), ("jwks_file", 3, "string", False),
                ("hs256_secret_file", 4, "string", False), ("scope_claim", 5, "string", False),
                ("algorithms", 6, "string", True), rate],
        "AuthConfig": [("api_key", 1, "ApiKey", True), ("jwt", 2, "Jwt", True), ("public", 3, "string", True)],
    })
    return message_class(f"{_PACKAGE}.AuthConfig")


def check_scope(scope: str) -> str | None:
    """None if `scope` is MODEL:ACTION, else what is wrong with it."""
    m = _SCOPE.fullmatch(scope)
    if m is None:
        return f'scope "{scope}" is not MODEL:ACTION (e.g. "my_model:predict" or "*:metadata")'
    if m.group(2) not in ACTIONS:
        return f'scope "{scope}": unknown action "{m.group(2)}"; use one of {", ".join(ACTIONS)}'
    return None


def _rate(tp: TextProto, path: tuple[tuple[str, int], ...], message: Message) -> RateLimit | None:
    if not message.HasField("rate_limit"):  # type: ignore[attr-defined]
        return None
    limit = message.rate_limit  # type: ignore[attr-defined]
    if not limit.requests_per_second > 0 or limit.burst < 1:
        raise tp.error(path + (("rate_limit", 0),), "rate_limit needs requests_per_second > 0 and burst >= 1",
                       field="rate_limit")
    return RateLimit(float(limit.requests_per_second), int(limit.burst))


def _read_secret(path: str, base_dir: str, what: str) -> bytes:
    full = path if os.path.isabs(path) else os.path.join(base_dir, path)
    try:
        with open(full, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ValueError(f"cannot read {what} {full}: {exc.strerror}") from None


def _jwks_algorithms(jwks: str) -> tuple[str, ...]:
    import jwt  # PyJWT: it must be able to use every key, or the file is refused now rather than at a request

    try:
        keys = json.loads(jwks)["keys"]
        found = {k.get("alg") or _KEY_ALGORITHMS[k["kty"]] for k in keys}
        jwt.PyJWKSet.from_json(jwks)
    except (ValueError, KeyError, TypeError, AttributeError, jwt.PyJWTError) as exc:
        raise ValueError(f'is not a usable JWKS document ({{"keys": [{{"kty": "RSA", ...}}]}}): {exc}') from None
    if not keys:
        raise ValueError("holds no keys")
    return tuple(sorted(found))


def parse_auth_config(text: str, *, source: str = "<auth config>", base_dir: str = ".") -> AuthPolicy:
    tp = TextProto.parse(text, [_schema()], source=source, hint=f"an auth config looks like: {_EXAMPLE}")
    config = tp.message
    keys: list[ApiKey] = []
    names: set[str] = set()
    for i, entry in enumerate(config.api_key):
        path = (("api_key", i),)
        if not entry.name:
            raise tp.error(path, "api_key needs a name (it is logged as the caller)", field="name")
        if entry.name in names:
            raise tp.error(path, f'api_key name "{entry.name}" is used twice; give each key its own', field="name")
        names.add(entry.name)
        if not _HEX64.fullmatch(entry.sha256):
            raise tp.error(path + (("sha256", 0),), f'api_key "{entry.name}": sha256 must be 64 hex digits (the '
                           "SHA-256 of the key; `pyserving auth new-key` prints it)", field="sha256")
        for j, scope in enumerate(entry.scope):
            problem = check_scope(scope)
            if problem:
                raise tp.error(path + (("scope", j),), f'api_key "{entry.name}": {problem}', field="scope")
        keys.append(ApiKey(entry.name, bytes.fromhex(entry.sha256), frozenset(entry.scope), _rate(tp, path, entry)))
    issuers: list[JwtIssuer] = []
    for i, entry in enumerate(config.jwt):
        path = (("jwt", i),)
        if not entry.issuer or not entry.audience:
            raise tp.error(path, "jwt needs an issuer and an audience (both are checked in every token)",
                           field="issuer")
        if bool(entry.jwks_file) == bool(entry.hs256_secret_file):
            raise tp.error(path, f'jwt "{entry.issuer}": give exactly one of jwks_file (public keys) or '
                           "hs256_secret_file (a shared secret)", field="jwks_file")
        algorithms = tuple(entry.algorithms)
        try:
            if entry.jwks_file:
                jwks = _read_secret(entry.jwks_file, base_dir, "jwks_file").decode("utf-8")
                try:
                    algorithms = algorithms or _jwks_algorithms(jwks)
                except ValueError as exc:
                    raise ValueError(f"jwks_file {entry.jwks_file} {exc}") from None
                secret = b""
                bad = [a for a in algorithms if a.upper().startswith("HS") or a.lower() == "none"]
            else:
                jwks, secret = "", _read_secret(entry.hs256_secret_file, base_dir, "hs256_secret_file").strip()
                algorithms = algorithms or ("HS256",)
                bad = [a for a in algorithms if not a.upper().startswith("HS")]
                if len(secret) < 32:
                    raise ValueError(f"hs256_secret_file {entry.hs256_secret_file} holds {len(secret)} bytes; use "
                                     "at least 32 random bytes")
        except ValueError as exc:
            raise tp.error(path, f'jwt "{entry.issuer}": {exc}', field="jwks_file") from None
        if bad:
            raise tp.error(path, f'jwt "{entry.issuer}": algorithms {", ".join(bad)} cannot be used with '
                           f'{"public keys" if jwks else "a shared secret"}', field="algorithms")
        issuers.append(JwtIssuer(entry.issuer, entry.audience, algorithms, jwks, secret,
                                 entry.scope_claim or "scope", _rate(tp, path, entry)))
    for i, name in enumerate(config.public):
        if name not in PUBLIC:
            raise tp.error((("public", i),), f'public "{name}" is not a known endpoint; use "metrics" (health '
                           "endpoints are always public)", field="public")
    return AuthPolicy(tuple(keys), tuple(issuers), frozenset(config.public))


def load_auth_config_file(path: str) -> AuthPolicy:
    text = read_config_file(path, what="--auth_config_file", if_empty=(
        "An auth config names at least one api_key or jwt issuer; to turn auth off, drop --auth_config_file."))
    return parse_auth_config(text, source=path, base_dir=os.path.dirname(os.path.abspath(path)))


__all__ = ["ConfigError", "check_scope", "load_auth_config_file", "parse_auth_config"]
