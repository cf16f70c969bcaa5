from __future__ import annotations

import time

import jwt
import pytest

from common.problems import Forbidden, Unauthorized
from common.tokens import (
    ADMIN,
    READ,
    WRITE,
    Principal,
    bearer_token,
    issue_hs256,
    principal_from_claims,
    require_scope,
    scopes_from_claims,
)
from common.verifiers import JwtVerifier

SECRET = "s" * 40
verifier = JwtVerifier(secret=SECRET, leeway_seconds=5)


def test_a_valid_token_gives_subject_and_scopes() -> None:
    p = verifier.verify(issue_hs256(SECRET, "alice", [READ, WRITE]))
    assert p == Principal("alice", frozenset({READ, WRITE}))
    assert not p.is_admin


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: issue_hs256("other-secret-" + "y" * 30, "alice"), "signature"),
        (lambda: issue_hs256(SECRET, "alice", now=time.time() - 7200, ttl_seconds=3600), "expired"),
        (lambda: issue_hs256(SECRET, "alice", extra={"nbf": int(time.time()) + 600}), "not valid yet"),
        (
            lambda: jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, "", algorithm="none"),
            "algorithm",
        ),
        (lambda: jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256"), "`exp`"),
        (lambda: jwt.encode({"exp": int(time.time()) + 60}, SECRET, algorithm="HS256"), "`sub`"),
        (
            lambda: jwt.encode({"sub": "a", "exp": int(time.time()) + 60}, SECRET * 2, algorithm="HS512"),
            "algorithm",
        ),
        (lambda: "not.a.jwt", "malformed"),
    ],
)
def test_bad_tokens_are_401(make: object, message: str) -> None:
    with pytest.raises(Unauthorized) as info:
        verifier.verify(make())  # type: ignore[operator]
    assert message in str(info.value)
    assert 'error="invalid_token"' in info.value.headers()["WWW-Authenticate"]


def test_leeway_accepts_a_token_just_expired() -> None:
    tok = issue_hs256(SECRET, "alice", now=time.time() - 62, ttl_seconds=60)
    assert verifier.verify(tok).subject == "alice"


def test_issuer_and_audience_are_checked_when_configured() -> None:
    strict = JwtVerifier(secret=SECRET, issuer="https://id.example", audience="media")
    good = issue_hs256(SECRET, "alice", issuer="https://id.example", audience="media")
    assert strict.verify(good).subject == "alice"
    with pytest.raises(Unauthorized, match="issuer"):
        strict.verify(issue_hs256(SECRET, "alice", issuer="https://evil.example", audience="media"))
    with pytest.raises(Unauthorized, match="audience"):
        strict.verify(issue_hs256(SECRET, "alice", issuer="https://id.example", audience="other"))
    with pytest.raises(Unauthorized):
        strict.verify(issue_hs256(SECRET, "alice"))  # neither claim present


def test_scopes_from_scope_string_or_scp_list() -> None:
    assert scopes_from_claims({"scope": "media:read  media:write"}) == {READ, WRITE}
    assert scopes_from_claims({"scp": ["media:admin", 3]}) == {ADMIN}
    assert scopes_from_claims({"scp": "media:read"}) == {READ}
    assert scopes_from_claims({}) == frozenset()


@pytest.mark.parametrize(
    ("header", "error"),
    [(None, None), ("", None), ("Basic abc", "invalid_request"), ("Bearer ", "invalid_request")],
)
def test_missing_or_foreign_authorization_is_401(header: str | None, error: str | None) -> None:
    with pytest.raises(Unauthorized) as info:
        bearer_token(header)
    assert info.value.error == error


def test_bearer_scheme_is_case_insensitive() -> None:
    assert bearer_token("bearer abc.def") == "abc.def"


def test_require_scope() -> None:
    require_scope(Principal("a", frozenset({READ})), READ)
    require_scope(Principal("a", frozenset({ADMIN})), WRITE)  # admin passes everything
    with pytest.raises(Forbidden) as info:
        require_scope(Principal("a", frozenset({READ})), WRITE)
    assert info.value.status == 403
    assert 'scope="media:write"' in info.value.headers()["WWW-Authenticate"]


def test_a_remembered_token_still_expires_and_still_waits_for_nbf() -> None:
    cached = JwtVerifier(secret=SECRET, leeway_seconds=0)
    # Two seconds, not one: `exp` is whole seconds, so a one-second token issued late in a second
    # could already be expired when first verified (a CI run saw it, on a loaded machine).
    short = issue_hs256(SECRET, "alice", ttl_seconds=2)
    assert cached.verify(short).subject == "alice"
    assert cached.verify(short).subject == "alice"  # from the cache
    expires = jwt.decode(short, options={"verify_signature": False})["exp"]
    time.sleep(max(0.0, expires - time.time()) + 0.1)
    with pytest.raises(Unauthorized, match="expired"):
        cached.verify(short)
    tampered = short[:-2] + ("AA" if not short.endswith("AA") else "BB")
    with pytest.raises(Unauthorized):
        cached.verify(tampered)  # a different string is verified on its own


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        ({"sub": "alice", "azp": "web-app"}, Principal("alice", frozenset())),  # a user, through an app
        ({"sub": "svc", "client_id": "svc"}, Principal("client:svc", frozenset(), "svc")),  # RFC 9068
        ({"client_id": "svc", "scope": "media:read"}, Principal("client:svc", frozenset({READ}), "svc")),
        ({"azp": "indexer"}, Principal("client:indexer", frozenset(), "indexer")),
    ],
)
def test_a_token_without_a_user_acts_as_its_client(claims: dict[str, object], expected: Principal) -> None:
    assert principal_from_claims(claims) == expected


@pytest.mark.parametrize(
    "claims",
    [{}, {"sub": ""}, {"sub": 7}, {"sub": "client:svc"}, {"client_id": "a\x00b"}, {"sub": "\ud800"}],
)
def test_a_token_must_name_a_user_or_a_client(claims: dict[str, object]) -> None:
    with pytest.raises(Unauthorized):
        principal_from_claims(claims)
