"""The verifiers and the provider's answers, with real keys and a scripted provider (no network)."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from common.httpclient import UpstreamUnavailable
from common.oidc import Introspector, KeySet, ProviderMetadata, fixed
from common.problems import ServiceUnavailable, Unauthorized
from common.tokens import Principal, check_header
from common.verifiers import CombinedVerifier, IntrospectionVerifier, JwtVerifier
from tests.factories import hs256_signed_with

JWKS = "https://id.example/jwks"
SECRET = "shared-" + "s" * 40


class Provider:
    """Answers what it was given; counts every call; can be switched off."""

    def __init__(self, keys: list[dict[str, Any]] | None = None) -> None:
        self.keys = keys or []
        self.up = True
        self.calls: list[str] = []
        self.active: dict[str, dict[str, Any]] = {}

    def get_json(self, url: str) -> Any:
        self.calls.append(url)
        if not self.up:
            raise UpstreamUnavailable("down")
        if url.endswith("/.well-known/openid-configuration"):
            return {"jwks_uri": JWKS, "introspection_endpoint": "https://id.example/introspect"}
        return {"keys": self.keys}

    def post_form(self, url: str, fields: dict[str, str], basic_auth: tuple[str, str] | None = None) -> Any:
        self.calls.append(url)
        if not self.up:
            raise UpstreamUnavailable("down")
        assert basic_auth == ("media", "media-secret")
        return self.active.get(fields["token"], {"active": False})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def rsa_key(kid: str) -> tuple[Any, dict[str, Any]]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    return private, {**jwk, "kid": kid, "use": "sig", "alg": "RS256"}


def sign(private: Any, kid: str | None, alg: str = "RS256", **claims: Any) -> str:
    now = int(time.time())
    body = {"sub": "alice", "scope": "media:read", "iat": now, "exp": now + 300, **claims}
    headers = {"kid": kid} if kid else {}
    return jwt.encode(body, private, algorithm=alg, headers=headers)


def offline(provider: Provider, clock: Clock | None = None, **kwargs: Any) -> JwtVerifier:
    keys = KeySet(fixed(JWKS), provider, min_refresh_seconds=60, clock=clock or Clock())
    return JwtVerifier(keys=keys, **kwargs)


def test_rs256_es256_and_eddsa_tokens_verify_against_the_published_keys() -> None:
    rsa_private, rsa_jwk = rsa_key("r1")
    ec_private = ec.generate_private_key(ec.SECP256R1())
    ec_jwk = {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_private.public_key())), "kid": "e1"}
    ed_private = ed25519.Ed25519PrivateKey.generate()
    ed_jwk = {**json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(ed_private.public_key())), "kid": "d1"}
    verifier = offline(Provider([rsa_jwk, ec_jwk, ed_jwk]))
    for private, kid, alg in (
        (rsa_private, "r1", "RS256"),
        (ec_private, "e1", "ES256"),
        (ed_private, "d1", "EdDSA"),
    ):
        assert verifier.verify(sign(private, kid, alg)) == Principal("alice", frozenset({"media:read"}))


def test_an_unknown_kid_refetches_at_most_once_per_interval() -> None:
    old_private, old_jwk = rsa_key("old")
    new_private, new_jwk = rsa_key("new")
    provider, clock = Provider([old_jwk]), Clock()
    verifier = offline(provider, clock)
    assert verifier.verify(sign(old_private, "old")).subject == "alice"
    assert len(provider.calls) == 1
    provider.keys = [old_jwk, new_jwk]  # rotation at the provider
    assert verifier.verify(sign(new_private, "new")).subject == "alice"  # one refetch picks it up
    assert len(provider.calls) == 2
    for n in range(50):  # a flood of made-up kids: no fetch until the interval has passed
        with pytest.raises(Unauthorized, match="does not publish"):
            verifier.verify(sign(new_private, f"forged-{n}"))
    assert len(provider.calls) == 2
    clock.now += 61
    with pytest.raises(Unauthorized):
        verifier.verify(sign(new_private, "forged-again"))
    assert len(provider.calls) == 3


def test_cached_keys_keep_working_while_the_provider_is_down_and_a_cold_process_answers_503() -> None:
    private, jwk = rsa_key("k")
    provider = Provider([jwk])
    warm = offline(provider)
    assert warm.verify(sign(private, "k")).subject == "alice"
    provider.up = False
    assert warm.verify(sign(private, "k", sub="bob")).subject == "bob"  # a new token, cached keys
    cold = offline(provider)
    with pytest.raises(ServiceUnavailable) as info:
        cold.verify(sign(private, "k"))
    assert info.value.status == 503 and "Retry-After" in info.value.headers()


def test_keys_for_encryption_never_verify_and_a_kid_less_token_needs_an_unambiguous_key() -> None:
    private, jwk = rsa_key("k")
    with pytest.raises(ServiceUnavailable):  # the only key is `use: enc`: no signing key at all
        offline(Provider([{**jwk, "use": "enc"}])).verify(sign(private, "k"))
    assert offline(Provider([{**jwk, "kid": None}])).verify(sign(private, None)).subject == "alice"
    other_private, other = rsa_key("k2")
    with pytest.raises(Unauthorized):
        offline(Provider([jwk, other])).verify(sign(private, None))


def test_classic_attacks_are_401() -> None:
    private, jwk = rsa_key("k")
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    attacker, attacker_jwk = rsa_key("k")
    now = int(time.time())
    claims = {"sub": "mallory", "scope": "media:admin", "exp": now + 300}
    attacks = {
        "alg none": jwt.encode(claims, "", algorithm="none"),
        "HS256 with the public key": hs256_signed_with(claims, public_pem, "k"),
        "jku to the attacker's keys": jwt.encode(
            claims, attacker, algorithm="RS256", headers={"kid": "k", "jku": "https://evil.example/jwks"}
        ),
        "embedded jwk": jwt.encode(
            claims, attacker, algorithm="RS256", headers={"kid": "k", "jwk": attacker_jwk}
        ),
        "x5u": jwt.encode(
            claims, attacker, algorithm="RS256", headers={"kid": "k", "x5u": "https://evil.example/c"}
        ),
        "signed by another key with the same kid": jwt.encode(
            claims, attacker, algorithm="RS256", headers={"kid": "k"}
        ),
        "kid with path characters": sign(private, "../../etc/passwd"),
        "absurdly long kid": sign(private, "k" * 5000),
        "expired": sign(private, "k", iat=now - 7200, exp=now - 3600),
        "not yet valid": sign(private, "k", nbf=now + 3600),
        "issued in the future": sign(private, "k", iat=now + 3600),
        "wrong typ": jwt.encode(claims, private, algorithm="RS256", headers={"kid": "k", "typ": "JWE"}),
        "garbage": "eyJhbGciOi.garbage.x",
    }
    provider = Provider([jwk])
    verifier = offline(provider, issuer="https://id.example", audience="media")
    good = sign(private, "k", iss="https://id.example", aud=["other", "media"])
    assert verifier.verify(good).subject == "alice"  # `aud` may be a list
    attacks["wrong aud"] = sign(private, "k", iss="https://id.example", aud="other")
    attacks["wrong iss"] = sign(private, "k", iss="https://evil.example", aud="media")
    for name, token in attacks.items():
        with pytest.raises(Unauthorized):
            verifier.verify(token)
        assert name  # every attack raised 401 (a 500 or a pass would have failed above)
    assert provider.calls == [JWKS]  # nothing the tokens named was ever fetched


def test_hs256_and_jwks_together_never_mix_keys() -> None:
    private, jwk = rsa_key("k")
    both = JwtVerifier(secret=SECRET, keys=KeySet(fixed(JWKS), Provider([jwk]), min_refresh_seconds=60))
    assert both.verify(sign(private, "k")).subject == "alice"
    assert both.verify(jwt.encode({"sub": "dev", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256"))
    only_rsa = JwtVerifier(
        keys=KeySet(fixed(JWKS), Provider([jwk]), min_refresh_seconds=60), algorithms=["RS256", "HS256"]
    )
    with pytest.raises(Unauthorized, match="algorithm"):  # HS256 is listed, but there is no secret
        only_rsa.verify(jwt.encode({"sub": "x", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256"))


def test_rfc_9068_at_jwt_is_accepted() -> None:
    private, jwk = rsa_key("k")
    token = jwt.encode(
        {"sub": "alice", "exp": int(time.time()) + 60},
        private,
        algorithm="RS256",
        headers={"kid": "k", "typ": "at+jwt"},
    )
    assert offline(Provider([jwk])).verify(token).subject == "alice"
    assert check_header(token, ["RS256"]).kid == "k"


def introspection(provider: Provider, clock: Clock) -> IntrospectionVerifier:
    introspector = Introspector(
        fixed("https://id.example/introspect"),
        ("media", "media-secret"),
        provider,
        cache_seconds=30,
        clock=clock,
    )
    return IntrospectionVerifier(introspector)


def test_introspection_caches_active_answers_never_past_exp_and_never_inactive_ones() -> None:
    provider, clock = Provider(), Clock()
    verifier = introspection(provider, clock)
    provider.active["opaque-1"] = {
        "active": True,
        "sub": "alice",
        "scope": "media:read",
        "exp": clock.now + 10,
    }
    assert verifier.verify("opaque-1").subject == "alice"
    assert verifier.verify("opaque-1").subject == "alice"
    assert len(provider.calls) == 1  # cached
    provider.active.pop("opaque-1")  # revoked at the provider
    clock.now += 11  # past the token's exp, although within the 30 s cache time
    with pytest.raises(Unauthorized, match="not active"):
        verifier.verify("opaque-1")
    with pytest.raises(Unauthorized):
        verifier.verify("opaque-1")
    assert len(provider.calls) == 3  # an inactive answer is asked again, never remembered


def test_introspection_down_is_503_and_client_tokens_act_as_the_client() -> None:
    provider, clock = Provider(), Clock()
    verifier = introspection(provider, clock)
    provider.active["svc"] = {"active": True, "client_id": "recipe-backend", "scope": "media:write"}
    assert verifier.verify("svc") == Principal(
        "client:recipe-backend", frozenset({"media:write"}), "recipe-backend"
    )
    provider.up = False
    with pytest.raises(ServiceUnavailable):
        verifier.verify("never-seen")


def test_both_checks_a_jwt_offline_then_asks_whether_it_was_revoked() -> None:
    private, jwk = rsa_key("k")
    provider, clock = Provider([jwk]), Clock()
    verifier = CombinedVerifier(offline(provider), introspection(provider, clock))
    token = sign(private, "k")
    provider.active[token] = {"active": True, "sub": "alice"}
    assert verifier.verify(token).subject == "alice"
    provider.active.pop(token)
    clock.now += 31  # the introspection cache expires: the revocation is seen
    with pytest.raises(Unauthorized, match="not active"):
        verifier.verify(token)
    with pytest.raises(Unauthorized):  # a bad JWT never reaches the provider
        verifier.verify(sign(rsa_key("k")[0], "k"))


def test_discovery_gives_the_jwks_once() -> None:
    private, jwk = rsa_key("k")
    provider = Provider([jwk])
    metadata = ProviderMetadata("https://id.example/", provider)
    keys = KeySet(lambda: metadata.endpoint("jwks_uri"), provider, min_refresh_seconds=60)
    verifier = JwtVerifier(keys=keys)
    assert verifier.verify(sign(private, "k")).subject == "alice"
    assert verifier.verify(sign(private, "k", sub="bob")).subject == "bob"
    assert provider.calls == ["https://id.example/.well-known/openid-configuration", JWKS]


def test_concurrent_first_requests_wait_for_the_one_fetch_instead_of_failing() -> None:
    """A cold process under load: every thread gets the key; the provider is asked once."""
    private, jwk = rsa_key("k")

    class SlowProvider(Provider):
        def get_json(self, url: str) -> Any:
            time.sleep(0.3)
            return super().get_json(url)

    provider = SlowProvider([jwk])
    verifier = offline(provider)
    tokens = [sign(private, "k", sub=f"user-{n}") for n in range(8)]
    with ThreadPoolExecutor(8) as pool:
        subjects = list(pool.map(lambda t: verifier.verify(t).subject, tokens))
    assert subjects == [f"user-{n}" for n in range(8)]
    assert provider.calls == [JWKS]
