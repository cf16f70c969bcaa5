"""The `TokenVerifier`s, chosen by `MEDIA_AUTH_MODE` in the composition root:

- `JwtVerifier` (offline): JWTs checked locally, asymmetric ones (RS256, ES256, EdDSA) against
  the provider's JWKS, HS256 ones against the shared secret (what `make run` issues). Which key is
  used follows from the algorithm, so a token can never be checked with the other kind of key.
- `IntrospectionVerifier` (introspect): RFC 7662, for opaque tokens and real-time revocation.
- `CombinedVerifier` (both): offline first, then introspection, so a revoked JWT is refused too;
  an opaque token goes to introspection only.

A provider that cannot be asked (no keys at all, introspection down) is a 503 with Retry-After,
never a 401: a client must not throw away a good token because our provider is unreachable.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jwt

from common.oidc import Introspector, KeySet, ProviderUnavailable, UnknownKey
from common.problems import ServiceUnavailable, Unauthorized
from common.tokens import (
    ASYMMETRIC_ALGORITHMS,
    HS256,
    Principal,
    TokenVerifier,
    check_header,
    looks_like_jwt,
    principal_from_claims,
)

PROVIDER_DOWN = "The identity provider cannot be reached to check the token; retry shortly"


class _VerifiedCache:
    """Tokens that verified, until they expire: verifying one again can only give the same answer,
    and decoding a JWT was the largest single cost of a metadata request in the rehearsal profile."""

    size = 4096

    def __init__(self, leeway: float, clock: Callable[[], float]) -> None:
        self._leeway = leeway
        self._clock = clock
        self._entries: OrderedDict[str, tuple[Principal, float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, token: str) -> Principal | None:
        with self._lock:
            hit = self._entries.get(token)
            if hit is not None:
                self._entries.move_to_end(token)
        if hit is None:
            return None
        principal, expires, not_before = hit
        now = self._clock()
        if now > expires + self._leeway:
            raise Unauthorized("The token has expired")
        if now < not_before - self._leeway:
            raise Unauthorized("The token is not valid yet (nbf)")
        return principal

    def put(self, token: str, principal: Principal, claims: Mapping[str, Any]) -> None:
        entry = (principal, float(claims["exp"]), float(claims.get("nbf", 0)))
        with self._lock:
            self._entries[token] = entry
            if len(self._entries) > self.size:
                self._entries.popitem(last=False)


class JwtVerifier:
    def __init__(
        self,
        *,
        secret: str | None = None,
        keys: KeySet | None = None,
        algorithms: Iterable[str] = (*ASYMMETRIC_ALGORITHMS, HS256),
        issuer: str | None = None,
        audience: str | None = None,
        leeway_seconds: int = 30,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if secret is None and keys is None:
            raise ValueError("a JwtVerifier needs a secret, a key set, or both")
        self._secret = secret
        self._keys = keys
        allowed = set(algorithms)
        # What the configuration makes possible, whatever MEDIA_JWT_ALGORITHMS lists.
        self._algorithms = frozenset(
            a for a in allowed if (a == HS256 and secret) or (a in ASYMMETRIC_ALGORITHMS and keys)
        )
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway_seconds
        self._cache = _VerifiedCache(leeway_seconds, clock)

    def verify(self, token: str) -> Principal:
        cached = self._cache.get(token)
        if cached is not None:
            return cached
        claims = self.claims(token)
        principal = principal_from_claims(claims)
        self._cache.put(token, principal, claims)
        return principal

    def claims(self, token: str) -> dict[str, Any]:
        header = check_header(token, self._algorithms)
        key: Any
        if header.alg == HS256:
            key = self._secret
        else:
            assert self._keys is not None  # an asymmetric algorithm is only allowed with keys
            try:
                key = self._keys.key(header.kid, header.alg).key
            except UnknownKey:
                raise Unauthorized("The token is signed with a key the provider does not publish") from None
            except ProviderUnavailable:
                raise ServiceUnavailable(PROVIDER_DOWN) from None
        return _decode(token, key, header.alg, self._issuer, self._audience, self._leeway)


def _decode(
    token: str, key: Any, alg: str, issuer: str | None, audience: str | None, leeway: float
) -> dict[str, Any]:
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[alg],
            issuer=issuer,
            audience=audience,
            leeway=leeway,
            options={
                "require": ["exp"],
                "verify_aud": audience is not None,
                "verify_iss": issuer is not None,
            },
        )
    except jwt.ExpiredSignatureError:
        raise Unauthorized("The token has expired") from None
    except jwt.ImmatureSignatureError:
        raise Unauthorized("The token is not valid yet (nbf, iat)") from None
    except jwt.InvalidAudienceError:
        raise Unauthorized("The token is for another audience") from None
    except jwt.InvalidIssuerError:
        raise Unauthorized("The token is from another issuer") from None
    except jwt.InvalidAlgorithmError:
        raise Unauthorized("The token's algorithm is not accepted") from None
    except jwt.MissingRequiredClaimError as exc:
        raise Unauthorized(f"The token lacks the `{exc.claim}` claim") from None
    except jwt.PyJWTError:
        raise Unauthorized("The token is malformed or its signature does not verify") from None
    return dict(claims)


class IntrospectionVerifier:
    def __init__(
        self, introspector: Introspector, *, issuer: str | None = None, audience: str | None = None
    ) -> None:
        self._introspector = introspector
        self._issuer = issuer
        self._audience = audience

    def verify(self, token: str) -> Principal:
        try:
            claims = self._introspector.active_claims(token)
        except ProviderUnavailable:
            raise ServiceUnavailable(PROVIDER_DOWN) from None
        if claims is None:
            raise Unauthorized("The token is not active (unknown, expired or revoked)")
        if self._issuer is not None and claims.get("iss") not in (None, self._issuer):
            raise Unauthorized("The token is from another issuer")
        if self._audience is not None:
            aud = claims.get("aud")
            audiences = aud if isinstance(aud, list) else [aud]
            if aud is not None and self._audience not in audiences:
                raise Unauthorized("The token is for another audience")
        return principal_from_claims(claims)


class CombinedVerifier:
    """Offline first (a bad JWT is refused without a round trip), then introspection."""

    def __init__(self, offline: JwtVerifier, online: IntrospectionVerifier) -> None:
        self._offline = offline
        self._online = online

    def verify(self, token: str) -> Principal:
        if not looks_like_jwt(token):
            return self._online.verify(token)
        principal = self._offline.verify(token)
        self._online.verify(token)  # revoked since it was issued? (cached for the introspection TTL)
        return principal


__all__ = ["CombinedVerifier", "IntrospectionVerifier", "JwtVerifier", "TokenVerifier"]
