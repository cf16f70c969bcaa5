"""Bearer tokens: parse the Authorization header, verify the JWT, and decide scopes.

`TokenVerifier` is the seam the OAuth2 issue (JWKS, introspection) plugs into; `HS256Verifier`
is the shared-secret verifier this service starts with. The scope decisions are pure functions.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import jwt

from common.problems import Forbidden, Unauthorized
from common.text import problem_in

READ = "media:read"
WRITE = "media:write"
ADMIN = "media:admin"
ALL_SCOPES = (READ, WRITE, ADMIN)


@dataclass(frozen=True)
class Principal:
    subject: str
    scopes: frozenset[str]

    @property
    def is_admin(self) -> bool:
        return ADMIN in self.scopes


class TokenVerifier(Protocol):
    def verify(self, token: str) -> Principal: ...


def bearer_token(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header (RFC 6750 §2.1)."""
    if not authorization:
        raise Unauthorized("Send an `Authorization: Bearer <token>` header", error=None)
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("The Authorization header must use the Bearer scheme", error="invalid_request")
    return token.strip()


def scopes_from_claims(claims: Mapping[str, Any]) -> frozenset[str]:
    """`scope` is a space-separated string (RFC 8693 §4.2); `scp` is a list or a string (Azure, Okta)."""
    found: set[str] = set()
    for key in ("scope", "scp"):
        value = claims.get(key)
        if isinstance(value, str):
            found.update(value.split())
        elif isinstance(value, list):
            found.update(v for v in value if isinstance(v, str))
    return frozenset(found)


def require_scope(principal: Principal, *accepted: str) -> None:
    """Pass when the principal holds any of the accepted scopes (admin always passes)."""
    if principal.is_admin or any(s in principal.scopes for s in accepted):
        return
    raise Forbidden(f"This operation needs the scope {' or '.join(accepted)}", scope=" ".join(accepted))


def principal_from_claims(claims: Mapping[str, Any]) -> Principal:
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject.strip():
        raise Unauthorized("The token has no subject (`sub`)")
    problem = problem_in(subject)
    if problem is not None:
        raise Unauthorized(f"The token's subject (`sub`) {problem}")
    return Principal(subject=subject, scopes=scopes_from_claims(claims))


class HS256Verifier:
    """Shared-secret JWTs. The algorithm list is fixed: a token naming `none` or RS256 is refused.

    Tokens that verified are remembered (up to `cache_size`, keyed by the whole token) until they
    expire: verifying the same token again can only give the same answer, and decoding a JWT was
    the largest single cost of a metadata request in the rehearsal profile.
    """

    algorithms = ("HS256",)
    cache_size = 4096

    def __init__(
        self,
        secret: str,
        *,
        issuer: str | None = None,
        audience: str | None = None,
        leeway_seconds: int = 30,
    ) -> None:
        self._secret = secret
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway_seconds
        self._cache: OrderedDict[str, tuple[Principal, float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def verify(self, token: str) -> Principal:
        now = time.time()
        with self._lock:
            hit = self._cache.get(token)
            if hit is not None:
                self._cache.move_to_end(token)
        if hit is not None:
            principal, expires, not_before = hit
            if now > expires + self._leeway:
                raise Unauthorized("The token has expired")
            if now < not_before - self._leeway:
                raise Unauthorized("The token is not valid yet (nbf)")
            return principal
        claims = self._decode(token)
        principal = principal_from_claims(claims)
        entry = (principal, float(claims["exp"]), float(claims.get("nbf", 0)))
        with self._lock:
            self._cache[token] = entry
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return principal

    def _decode(self, token: str) -> dict[str, Any]:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=list(self.algorithms),
                issuer=self._issuer,
                audience=self._audience,
                leeway=self._leeway,
                options={
                    "require": ["exp", "sub"],
                    "verify_aud": self._audience is not None,
                    "verify_iss": self._issuer is not None,
                },
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("The token has expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("The token is not valid yet (nbf)") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized("The token is for another audience") from None
        except jwt.InvalidIssuerError:
            raise Unauthorized("The token is from another issuer") from None
        except jwt.InvalidAlgorithmError:
            raise Unauthorized("The token's algorithm is not accepted") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(f"The token lacks the `{exc.claim}` claim") from None
        except jwt.InvalidTokenError:
            raise Unauthorized("The token is malformed or its signature does not verify") from None
        return dict(claims)


def issue_hs256(
    secret: str,
    subject: str,
    scopes: Iterable[str] = ALL_SCOPES,
    *,
    ttl_seconds: int = 3600,
    issuer: str | None = None,
    audience: str | None = None,
    now: float | None = None,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """A token for development and tests (`make token`); production tokens come from the OAuth2 server."""
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "sub": subject,
        "scope": " ".join(scopes),
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl_seconds,
    }
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    claims.update(extra or {})
    return jwt.encode(claims, secret, algorithm="HS256")
