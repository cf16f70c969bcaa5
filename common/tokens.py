"""Bearer tokens: who the caller is and what it may do. Pure decisions, no network.

- `bearer_token` reads the Authorization header (RFC 6750).
- `check_header` decides whether a JWT's header can be trusted at all, before any key is chosen.
- `principal_from_claims` turns verified claims into a `Principal`: a user, or a client acting on
  its own behalf (client credentials: no user, or `sub` equal to the client id).
- `require_scope` is the authorisation rule every use case applies.

The verifiers that check signatures or ask the provider are in `verifiers.py`, behind the
`TokenVerifier` seam.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import jwt

from common.problems import Forbidden, Unauthorized
from common.text import problem_in

READ = "media:read"
WRITE = "media:write"
DELETE = "media:delete"
ADMIN = "media:admin"
ALL_SCOPES = (READ, WRITE, DELETE, ADMIN)

# Algorithms a token may name. HS256 is only ever checked against the shared secret, and the
# asymmetric ones only against the provider's published keys: never one key with the other kind.
ASYMMETRIC_ALGORITHMS = ("RS256", "ES256", "EdDSA")
HS256 = "HS256"
# Header parameters that would have us fetch or trust a key the token itself names.
_UNTRUSTED_HEADER_PARAMETERS = ("jku", "x5u", "jwk")
_ACCEPTED_TYP = frozenset({"jwt", "at+jwt", "application/jwt", "application/at+jwt"})
_KID = re.compile(r"^[A-Za-z0-9._~+=-]{1,128}$")
CLIENT_PREFIX = "client:"


@dataclass(frozen=True)
class Principal:
    subject: str  # a user id, or `client:<id>` for a client acting on its own behalf
    scopes: frozenset[str]
    client_id: str | None = None  # set when the caller is a client, not a user

    @property
    def is_admin(self) -> bool:
        return ADMIN in self.scopes

    @property
    def is_client(self) -> bool:
        return self.client_id is not None


class TokenVerifier(Protocol):
    def verify(self, token: str) -> Principal:
        """The principal of a valid token; Unauthorized (401), or ServiceUnavailable (503) when
        the identity provider cannot be asked."""


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


def _text_claim(claims: Mapping[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise Unauthorized(f"The token's `{name}` is not a non-empty string")
    problem = problem_in(value)
    if problem is not None:
        raise Unauthorized(f"The token's `{name}` {problem}")
    return value


def principal_from_claims(claims: Mapping[str, Any]) -> Principal:
    """A user when `sub` names one; a client when there is no user (RFC 9068 §2.2: client
    credentials give `sub` = the client id, or only `client_id`/`azp`)."""
    subject = _text_claim(claims, "sub")
    client = _text_claim(claims, "client_id") or _text_claim(claims, "azp")
    scopes = scopes_from_claims(claims)
    if subject is not None and subject != client:
        if subject.startswith(CLIENT_PREFIX):
            raise Unauthorized("A user's subject cannot start with `client:`")
        return Principal(subject=subject, scopes=scopes)
    if client is None:
        raise Unauthorized("The token has no subject (`sub`) and no client (`client_id`)")
    return Principal(subject=CLIENT_PREFIX + client, scopes=scopes, client_id=client)


@dataclass(frozen=True)
class TrustedHeader:
    alg: str
    kid: str | None


def check_header(token: str, algorithms: Iterable[str]) -> TrustedHeader:
    """The header of a JWT, if it may be trusted at all (nothing is fetched, nothing verified)."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise Unauthorized("The token is malformed or its signature does not verify") from None
    for name in _UNTRUSTED_HEADER_PARAMETERS:
        if name in header:
            raise Unauthorized(f"The token's `{name}` header is not accepted: keys come from the provider")
    typ = header.get("typ")
    if typ is not None and (not isinstance(typ, str) or typ.lower() not in _ACCEPTED_TYP):
        raise Unauthorized("The token's `typ` is neither JWT nor at+jwt")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in algorithms:
        raise Unauthorized("The token's algorithm is not accepted")
    kid = header.get("kid")
    if kid is not None and (not isinstance(kid, str) or not _KID.match(kid)):
        raise Unauthorized("The token's `kid` is not a key id")
    return TrustedHeader(alg, kid)


def looks_like_jwt(token: str) -> bool:
    """Three base64url parts: a JWT (an opaque token from the provider is anything else)."""
    return token.count(".") == 2 and all(re.fullmatch(r"[A-Za-z0-9_-]+", p) for p in token.split(".")[:2])


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
    return jwt.encode(claims, secret, algorithm=HS256)
