"""Tokens from a real OAuth2 provider (oidc-provider) against `make run`'s process, in each
MEDIA_AUTH_MODE: client credentials, key rotation, revocation, the provider going away, attacks."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization

from localdev.harness import LocalStack, spawn_until_ready
from tests.factories import hs256_signed_with, png, upload_body
from tests.oidc import RESOURCE, SERVICE, Provider, new_signing_key, require_node_provider
from tests.support import RunningPostgres, free_port, service_env


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provider]:
    require_node_provider()
    running = Provider(tmp_path_factory.mktemp("oidc"), free_port()).start()
    yield running
    running.stop()


def provider_env(pg: RunningPostgres, provider: Provider, **extra: str) -> dict[str, str]:
    env = service_env(pg.url, MEDIA_JWT_ISSUER=provider.issuer, MEDIA_JWT_AUDIENCE=RESOURCE, **extra)
    del env["MEDIA_JWT_SECRET"]  # no shared secret: only the provider's keys
    return env


def stack_with(pg: RunningPostgres, provider: Provider, data_dir: Path, **extra: str) -> LocalStack:
    return LocalStack(data_dir=data_dir, env=provider_env(pg, provider, **extra)).start()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def upload(stack: LocalStack, token: str) -> requests.Response:
    body, ctype = upload_body(png())
    return requests.post(
        stack.base + "/media", data=body, headers={**auth(token), "Content-Type": ctype}, timeout=10
    )


class AttackerKeys(BaseHTTPRequestHandler):
    """What a `jku` in a forged token points at; the service must never ask."""

    hits: list[str] = []
    jwks: dict[str, Any] = {}

    def do_GET(self) -> None:
        AttackerKeys.hits.append(self.path)
        body = json.dumps(AttackerKeys.jwks).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        return None


def test_offline_client_credentials_rotation_and_attacks(
    pg: RunningPostgres, provider: Provider, tmp_path: Path
) -> None:
    # One worker: the drill follows one process's key set (what it fetched, what it keeps when the
    # provider is gone); make run's default of a worker per core would spread it over several.
    stack = stack_with(
        pg, provider, tmp_path / "offline", MEDIA_JWKS_MIN_REFRESH_SECONDS="2", MEDIA_WORKERS="1"
    )
    try:
        # A client-credentials JWT access token, keys found by discovery: the client acts as itself.
        token = provider.token()
        created = upload(stack, token)
        assert created.status_code == 201, created.text
        assert created.json()["owner"] == "client:recipe-backend"
        assert (
            requests.get(created.json()["links"]["self"], headers=auth(token), timeout=10).status_code == 200
        )

        # Attacks, all 401 and never 500.
        attacker_key, attacker_jwk = new_signing_key(provider.kid)
        AttackerKeys.jwks = {
            "keys": [{k: v for k, v in attacker_jwk.items() if k in ("kty", "n", "e", "kid", "alg", "use")}]
        }
        keys_server = ThreadingHTTPServer(("127.0.0.1", 0), AttackerKeys)
        threading.Thread(target=keys_server.serve_forever, daemon=True).start()
        jku = f"http://127.0.0.1:{keys_server.server_port}/jwks"
        public_pem = provider.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        now = int(time.time())
        attacks = {
            "alg none": jwt.encode({"sub": "x", "exp": now + 60}, "", algorithm="none"),
            "wrong aud": provider.forge(aud="urn:other"),
            "wrong iss": provider.forge(iss="https://evil.example"),
            "expired": provider.forge(iat=now - 7200, exp=now - 3600),
            "not yet valid": provider.forge(nbf=now + 3600),
            "forged kid": provider.forge(headers={"kid": "made-up"}),
            "kid full of path": provider.forge(headers={"kid": "../../../../etc/passwd"}),
            "jku to the attacker's keys": provider.forge(headers={"jku": jku}, key=attacker_key),
            "the attacker's key, the provider's kid": provider.forge(key=attacker_key),
            "HS256 with a made-up secret": jwt.encode(
                {"sub": "x", "exp": now + 60}, "guess-" * 8, algorithm="HS256"
            ),
            "HS256 with the provider's public key": hs256_signed_with(
                {"sub": "x", "iss": provider.issuer, "aud": RESOURCE, "exp": now + 60},
                public_pem,
                provider.kid,
            ),
            "garbage": "eyJhbGciOiJSUzI1NiJ9.not-json.sig",
        }
        results = {}
        for name, forged in attacks.items():
            resp = requests.get(stack.base + "/media", headers=auth(forged), timeout=10)
            results[name] = resp.status_code
            assert resp.status_code == 401, (name, resp.status_code, resp.text)
            assert resp.headers["Content-Type"] == "application/problem+json"
            assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
        assert AttackerKeys.hits == [], "the service fetched keys from a URL a token named"
        keys_server.shutdown()
        keys_server.server_close()
        print(f"\nattacks against the service: {results}")

        # Key rotation: the provider restarts with a new key; the same service process accepts it
        # (once MEDIA_JWKS_MIN_REFRESH_SECONDS have passed since the forged kid's refetch).
        time.sleep(2.1)
        provider.stop()
        provider.start(kid="key-2")
        rotated = provider.token()
        assert jwt.get_unverified_header(rotated)["kid"] == "key-2"
        resp = requests.get(stack.base + "/media", headers=auth(rotated), timeout=10)
        assert resp.status_code == 200, resp.text

        # The provider goes away: a token signed with a key this process already has still works.
        unseen = provider.forge(sub="recipe-backend", jti="never-seen-before")
        provider.stop()
        assert requests.get(stack.base + "/media", headers=auth(unseen), timeout=10).status_code == 200
        # ...and a process that never had the keys answers 503 (retry later), not 401.
        with cold_function(pg, provider, tmp_path / "cold") as cold:
            resp = requests.get(f"{cold}/media", headers=auth(unseen), timeout=10)
        assert resp.status_code == 503, resp.text
        assert resp.headers["Content-Type"] == "application/problem+json"
        assert int(resp.headers["Retry-After"]) > 0
    finally:
        provider.stop()
        provider.start(kid="key-3")  # for the next tests
        assert stack.stop() == 0, stack.log()


@contextmanager
def cold_function(pg: RunningPostgres, provider: Provider, data_dir: Path) -> Iterator[str]:
    """The download function as its own process, started while the provider is down."""
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **provider_env(pg, provider, MEDIA_DATA_DIR=str(data_dir))}
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "common.server", "--target", "download", "--host", "127.0.0.1"]
    proc, _ = spawn_until_ready(
        [*cmd, "--port", str(port)], env, data_dir / "log", base + "/health/ready", 30
    )
    try:
        yield base
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("mode", ["introspect", "both"])
def test_a_revoked_opaque_token_is_refused_within_the_cache_time(
    pg: RunningPostgres, provider: Provider, tmp_path: Path, mode: str
) -> None:
    stack = stack_with(
        pg,
        provider,
        tmp_path / mode,
        MEDIA_AUTH_MODE=mode,
        MEDIA_INTROSPECTION_CLIENT_ID=SERVICE[0],
        MEDIA_INTROSPECTION_CLIENT_SECRET=SERVICE[1],
        MEDIA_INTROSPECTION_CACHE_SECONDS="2",
    )
    try:
        opaque = provider.token(jwt_format=False)
        assert opaque.count(".") != 2  # really opaque: only the provider can say what it is
        created = upload(stack, opaque)
        assert created.status_code == 201, created.text
        assert created.json()["owner"] == "client:recipe-backend"
        provider.revoke(opaque)
        deadline = time.monotonic() + 2 + 3  # the cache time, and some slack
        status = 200
        while time.monotonic() < deadline:
            status = requests.get(stack.base + "/media", headers=auth(opaque), timeout=10).status_code
            if status == 401:
                break
            time.sleep(0.2)
        assert status == 401, "a revoked token was still accepted after the cache time"
        assert (
            requests.get(stack.base + "/media", headers=auth("made-up-opaque-token"), timeout=10).status_code
            == 401
        )
        if mode == "both":  # a JWT that fails offline is refused before the provider is asked
            forged = provider.forge(key=new_signing_key(provider.kid)[0])
            assert requests.get(stack.base + "/media", headers=auth(forged), timeout=10).status_code == 401
    finally:
        assert stack.stop() == 0, stack.log()


def test_the_provider_unreachable_for_introspection_is_503(
    pg: RunningPostgres, provider: Provider, tmp_path: Path
) -> None:
    stack = stack_with(
        pg,
        provider,
        tmp_path / "down",
        MEDIA_AUTH_MODE="introspect",
        MEDIA_INTROSPECTION_CLIENT_ID=SERVICE[0],
        MEDIA_INTROSPECTION_CLIENT_SECRET=SERVICE[1],
    )
    try:
        opaque = provider.token(jwt_format=False)
        provider.stop()
        resp = requests.get(stack.base + "/media", headers=auth(opaque), timeout=10)
        assert resp.status_code == 503 and int(resp.headers["Retry-After"]) > 0, resp.text
    finally:
        provider.start()
        assert stack.stop() == 0, stack.log()
