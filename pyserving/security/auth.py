"""Authentication and authorization: API keys and JWTs with per-model scopes, and per-caller rate limits.

Pure checks over an AuthPolicy; each transport wraps them (REST: ASGI middleware, gRPC: a guard around each
method) so a refused request never reaches the service. Messages say what to send instead and never echo a
credential.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import hmac
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import jwt

from pyserving.errors import Code
from pyserving.options import AuthPolicy, JwtIssuer, RateLimit

log = logging.getLogger("pyserving.auth")

current_principal: contextvars.ContextVar[str] = contextvars.ContextVar("pyserving_principal", default="")
"""The caller of the request being served (key name or JWT subject), for logs and request logs."""

PREDICT, METADATA, ADMIN, METRICS = "predict", "metadata", "admin", "metrics"
ANY = ""
"""The action of a request that reaches no model (an unknown path): any authenticated caller may make it."""
_CREDENTIALS_HINT = "send Authorization: Bearer <API key or JWT> (REST header or gRPC metadata), or X-API-Key"
_MAX_CACHED_TOKENS = 4096
_LEEWAY_S = 30  # clock skew allowed on exp / nbf


class AuthError(Exception):
    """A refused request: UNAUTHENTICATED (401), PERMISSION_DENIED (403) or RESOURCE_EXHAUSTED (429)."""

    def __init__(self, code: Code, message: str, retry_after_s: float = 0.0) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    """The API key's name, or the JWT's `sub` (its issuer when it has none)."""
    scopes: frozenset[str]
    rate_key: str
    rate_limit: RateLimit | None
    expires: float = float("inf")


def credential_from(authorization: str | None, api_key: str | None) -> str | None:
    """The token of `Authorization: Bearer <token>` or of X-API-Key; None when neither was sent."""
    if authorization:
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or " " in token:
            raise AuthError(Code.UNAUTHENTICATED, f"Malformed Authorization header: expected 'Bearer <token>'; "
                            f"{_CREDENTIALS_HINT}.")
        return token
    if api_key:
        return api_key.strip()
    return None


class _Bucket:
    __slots__ = ("tokens", "updated")

    def __init__(self, tokens: float, updated: float) -> None:
        self.tokens, self.updated = tokens, updated


class Authenticator:
    """Checks credentials against the current policy; `set_policy` swaps it (key rotation) without a restart.
    Rate-limit buckets are kept per caller across policy changes. Event-loop confined."""

    def __init__(self, policy: AuthPolicy, *, clock: Callable[[], float] = time.monotonic,
                 shared_buckets: Callable[[str, float, float, float], float] | None = None) -> None:
        """`shared_buckets(key, burst, per_second, now)` takes a token from buckets kept beyond this process
        (front-end processes share them) and returns 0.0, or the seconds to wait; None: buckets kept here."""
        self._shared = shared_buckets
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self.set_policy(policy)

    def set_policy(self, policy: AuthPolicy) -> None:
        self.policy = policy
        self._keys = {key.sha256: (key.sha256, Principal(key.name, key.scopes, f"key:{key.name}", key.rate_limit))
                      for key in policy.api_keys}
        self._issuers = {issuer.issuer: issuer for issuer in policy.jwt}
        self._jwks: dict[str, jwt.PyJWKSet] = {
            issuer.issuer: jwt.PyJWKSet.from_json(issuer.jwks) for issuer in policy.jwt if issuer.jwks
        }
        self._tokens: dict[str, Principal] = {}

    # --- who is calling ---------------------------------------------------------------------------------------

    def authenticate(self, credential: str | None) -> Principal:
        if credential is None:
            raise AuthError(Code.UNAUTHENTICATED, f"Missing credentials: {_CREDENTIALS_HINT}.")
        if credential.count(".") == 2:
            return self._jwt(credential)
        return self._api_key(credential)

    def _api_key(self, key: str) -> Principal:
        # Looked up by the key's SHA-256, so timing can only tell an attacker about hashes of their own guesses;
        # the final comparison is constant-time anyway.
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
        stored, principal = self._keys.get(digest, (b"", None))
        if principal is None or not hmac.compare_digest(digest, stored):
            raise AuthError(Code.UNAUTHENTICATED, "Unknown API key: check the key, or ask for a new one "
                            "(`pyserving auth new-key`).")
        return principal

    def _jwt(self, token: str) -> Principal:
        now = time.time()
        cached = self._tokens.get(token)
        if cached is not None and cached.expires > now:
            return cached
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise AuthError(Code.UNAUTHENTICATED, "Malformed JWT: send a signed JWT (header.payload.signature) or "
                            "an API key.") from None
        issuer = self._issuers.get(claims.get("iss")) if isinstance(claims.get("iss"), str) else None
        if issuer is None:
            raise AuthError(Code.UNAUTHENTICATED, "JWT from an issuer this server does not trust: check the "
                            "token's iss against --auth_config_file.")
        key = self._signing_key(issuer, header)
        try:
            payload = jwt.decode(
                token, key, algorithms=list(issuer.algorithms), audience=issuer.audience, issuer=issuer.issuer,
                leeway=_LEEWAY_S, options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError(Code.UNAUTHENTICATED, "JWT has expired: get a fresh token.") from None
        except jwt.ImmatureSignatureError:
            raise AuthError(Code.UNAUTHENTICATED, "JWT is not valid yet (nbf is in the future).") from None
        except jwt.InvalidAudienceError:
            raise AuthError(Code.UNAUTHENTICATED, f'JWT audience is not "{issuer.audience}".') from None
        except jwt.InvalidAlgorithmError:
            raise AuthError(Code.UNAUTHENTICATED, f"JWT algorithm is not allowed for issuer {issuer.issuer} "
                            f"(allowed: {', '.join(issuer.algorithms)}).") from None
        except jwt.PyJWTError as exc:
            raise AuthError(Code.UNAUTHENTICATED, f"Invalid JWT: {exc}.") from None
        principal = Principal(
            name=str(payload.get("sub") or issuer.issuer),
            scopes=_scopes(payload.get(issuer.scope_claim)),
            rate_key=f"jwt:{issuer.issuer}:{payload.get('sub', '')}",
            rate_limit=issuer.rate_limit,
            expires=float(payload["exp"]),
        )
        if len(self._tokens) >= _MAX_CACHED_TOKENS:
            self._tokens.clear()
        self._tokens[token] = principal
        return principal

    def _signing_key(self, issuer: JwtIssuer, header: dict[str, object]) -> object:
        if issuer.hs256_secret:
            return issuer.hs256_secret
        keys = self._jwks[issuer.issuer].keys
        kid = header.get("kid")
        matching = [k for k in keys if k.key_id == kid] if kid is not None else (keys if len(keys) == 1 else [])
        if not matching:
            raise AuthError(Code.UNAUTHENTICATED, f"JWT signed with a key issuer {issuer.issuer} does not publish "
                            "(unknown kid): refresh the server's jwks_file or the token.")
        return matching[0].key

    # --- what it may do ---------------------------------------------------------------------------------------

    def check(self, credential: str | None, model: str | None, action: str) -> Principal | None:
        """The caller, if it may do `action` on `model` (None: every model, e.g. listing them); None for a public
        endpoint. Raises AuthError."""
        if action == METRICS:
            if METRICS in self.policy.public:
                return None
            action, model = METADATA, None
        principal = self.authenticate(credential)
        wanted = f"{model}:{action}" if model is not None else None
        if action != ANY and f"*:{action}" not in principal.scopes and (wanted is None or wanted not in principal.scopes):
            target = f'model "{model}"' if model is not None else "every model"
            raise AuthError(Code.PERMISSION_DENIED, f'"{principal.name}" may not {action} on {target}: it needs scope '
                            f'"{wanted or f"*:{action}"}". Ask for a credential with that scope.')
        if principal.rate_limit is not None:
            self._take(principal)
        return principal

    def _take(self, principal: Principal) -> None:
        limit = principal.rate_limit
        assert limit is not None
        now = self._clock()
        if self._shared is not None:
            wait = self._shared(principal.rate_key, float(limit.burst), limit.requests_per_second, now)
            if not wait:
                return
        else:
            bucket = self._buckets.get(principal.rate_key)
            if bucket is None:
                bucket = self._buckets[principal.rate_key] = _Bucket(float(limit.burst), now)
            bucket.tokens = min(float(limit.burst),
                                bucket.tokens + (now - bucket.updated) * limit.requests_per_second)
            bucket.updated = now
            wait = (1.0 - bucket.tokens) / limit.requests_per_second if bucket.tokens < 1.0 else 0.0
        if wait:
            raise AuthError(Code.RESOURCE_EXHAUSTED, f'Rate limit of "{principal.name}" exceeded '
                            f"({limit.requests_per_second:g} requests/s, burst {limit.burst}): retry in "
                            f"{wait:.2f} s.", retry_after_s=wait)
        bucket.tokens -= 1.0  # (the shared buckets took theirs)


def _scopes(claim: object) -> frozenset[str]:
    if isinstance(claim, str):
        return frozenset(claim.split())
    if isinstance(claim, (list, tuple)):
        return frozenset(str(s) for s in claim)
    return frozenset()


class AuthConfigWatcher:
    """Re-reads --auth_config_file when it changes; a file that does not parse (half-written, broken) keeps the
    last good policy and logs why."""

    def __init__(self, path: str, load: Callable[[str], AuthPolicy], authenticator: Authenticator,
                 every_s: float = 1.0, on_change: Callable[[], None] | None = None) -> None:
        """`on_change()` hears of each new policy the poll puts in force (front-end processes re-read the file
        then, all at once, instead of each on its own poll)."""
        self._on_change = on_change
        self._path, self._load, self._auth, self._every_s = path, load, authenticator, every_s
        self._seen = self._stamp()
        self._task: asyncio.Task[None] | None = None

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self._path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._every_s)
            if self.poll_once() and self._on_change is not None:
                self._on_change()

    def poll_once(self) -> bool:
        """True if a new policy took effect."""
        stamp = self._stamp()
        if stamp == self._seen:
            return False
        self._seen = stamp
        try:
            policy = self._load(self._path)
        except (ValueError, OSError) as exc:
            log.error("Ignoring %s: %s. The previous auth configuration stays in force.", self._path, exc)
            return False
        self._auth.set_policy(policy)
        log.info("Reloaded the auth configuration from %s (%d API keys, %d JWT issuers)", self._path,
                 len(policy.api_keys), len(policy.jwt))
        return True
