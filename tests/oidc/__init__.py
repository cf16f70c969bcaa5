"""oidc-provider (npm, a certified OpenID Connect provider) as a real process for the token tests.

`Provider` starts `node provider.mjs` on a loopback port with signing keys the test generated (so
the test can also forge tokens with them, or rotate them by restarting the provider with new
ones), and gets tokens the way a recipe backend does: client credentials at the token endpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

HERE = Path(__file__).resolve().parent
RESOURCE = "urn:media"  # access tokens for this resource are JWTs; without one they are opaque
BACKEND = ("recipe-backend", "backend-secret")  # a client-credentials client, as the recipe backend
SERVICE = ("media-service", "media-secret")  # the media service's own client, for introspection
CLIENTS = [
    {
        "client_id": BACKEND[0],
        "client_secret": BACKEND[1],
        "grant_types": ["client_credentials"],
        "response_types": [],
        "redirect_uris": [],
        "scope": "media:read media:write media:delete",
        "token_endpoint_auth_method": "client_secret_basic",
    },
    {
        "client_id": SERVICE[0],
        "client_secret": SERVICE[1],
        "grant_types": ["client_credentials"],
        "response_types": [],
        "redirect_uris": [],
        "token_endpoint_auth_method": "client_secret_basic",
    },
]


def require_node_provider() -> None:
    """Skip loudly (or fail, under MEDIA_TEST_REQUIRE_OIDC=1) when oidc-provider is not installed."""
    if shutil.which("node") and (HERE / "node_modules" / "oidc-provider").is_dir():
        return
    reason = "OAUTH2 PROVIDER TESTS NOT RUN: node or tests/oidc/node_modules missing (make test-deps)"
    if os.environ.get("MEDIA_TEST_REQUIRE_OIDC") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def new_signing_key(kid: str) -> tuple[Any, dict[str, Any]]:
    """An RSA key and its JWK (private parts included, as the provider wants it)."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private))
    jwk.pop("key_ops", None)  # oidc-provider would not select a key limited to `sign` for verify
    return private, {**jwk, "kid": kid, "use": "sig", "alg": "RS256"}


@dataclass
class Provider:
    workdir: Path
    port: int
    kid: str = "key-1"
    private_key: Any = None
    proc: subprocess.Popen[bytes] | None = None
    log: list[str] = field(default_factory=list)

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, kid: str | None = None) -> Provider:
        """Start (or restart after `stop`) with a new signing key named `kid`."""
        self.kid = kid or self.kid
        self.private_key, jwk = new_signing_key(self.kid)
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "keys.json").write_text(json.dumps({"keys": [jwk]}))
        (self.workdir / "clients.json").write_text(json.dumps(CLIENTS))
        env = {
            **os.environ,
            "PORT": str(self.port),
            "KEYS_FILE": str(self.workdir / "keys.json"),
            "CLIENTS_FILE": str(self.workdir / "clients.json"),
        }
        log = open(self.workdir / "provider.log", "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            ["node", str(HERE / "provider.mjs")], cwd=HERE, env=env, stdout=log, stderr=log
        )
        log.close()
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(self.issuer + "/.well-known/openid-configuration", timeout=2):  # noqa: S310
                    return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"oidc-provider did not start: {(self.workdir / 'provider.log').read_text()[-2000:]}"
                    ) from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def _post(self, path: str, fields: dict[str, str], client: tuple[str, str]) -> tuple[int, bytes]:
        request = urllib.request.Request(  # noqa: S310 - loopback only
            self.issuer + path, data=urllib.parse.urlencode(fields).encode(), method="POST"
        )
        request.add_header("Authorization", "Basic " + _basic(client))
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
                return int(resp.status), resp.read()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read()

    def token(self, scope: str = "media:read media:write", *, jwt_format: bool = True) -> str:
        """A client-credentials access token for the recipe backend: a JWT, or an opaque one."""
        fields = {"grant_type": "client_credentials", "scope": scope}
        if jwt_format:
            fields["resource"] = RESOURCE
        status, body = self._post("/token", fields, BACKEND)
        assert status == 200, body
        return str(json.loads(body)["access_token"])

    def revoke(self, token: str) -> None:
        status, body = self._post("/token/revocation", {"token": token}, BACKEND)
        assert status == 200, body

    def forge(self, headers: dict[str, Any] | None = None, key: Any = None, **claims: Any) -> str:
        """A token signed with the provider's own key (or `key`), with the claims a test wants."""
        now = int(time.time())
        body = {
            "sub": BACKEND[0],
            "client_id": BACKEND[0],
            "scope": "media:read media:write",
            "iss": self.issuer,
            "aud": RESOURCE,
            "iat": now,
            "exp": now + 300,
            **claims,
        }
        return jwt.encode(
            body,
            key or self.private_key,
            algorithm="RS256",
            headers={"kid": self.kid, "typ": "at+jwt", **(headers or {})},
        )


def _basic(client: tuple[str, str]) -> str:
    import base64

    return base64.b64encode(f"{client[0]}:{client[1]}".encode()).decode()
