"""What the service asks the identity provider: its metadata (OIDC discovery), its signing keys
(JWKS) and whether a token is active (RFC 7662 introspection). Each answer is fetched lazily, in
the process that needs it, with the HTTP client's timeouts, and cached:

- `ProviderMetadata`: `<issuer>/.well-known/openid-configuration`, once per process.
- `KeySet`: the JWKS. An unknown `kid` refetches it at most once per `min_refresh_seconds`, so a
  rotation is picked up without a restart and a flood of made-up `kid`s is not a flood of
  fetches; the keys are refreshed after `max_age_seconds` too. While the endpoint is down the
  cached keys keep working; with no key at all the verifier answers 503, not 401.
- `Introspector`: active answers are cached for `cache_seconds`, never past the token's `exp`;
  inactive ones are never cached.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import jwt

from common.httpclient import JsonClient, UpstreamUnavailable

log = logging.getLogger("media.oidc")

COLD_RETRY_SECONDS = 5.0  # with no key at all, how often a request may try the JWKS endpoint again


class ProviderUnavailable(Exception):
    """The identity provider did not give what is needed to decide (no keys, no introspection)."""


class UnknownKey(Exception):
    """The token names a key the provider does not have (or one that may not verify signatures)."""


class ProviderMetadata:
    def __init__(self, issuer: str, http: JsonClient) -> None:
        self.url = issuer.rstrip("/") + "/.well-known/openid-configuration"
        self._http = http
        self._doc: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def _metadata(self) -> dict[str, Any]:
        if self._doc is None:
            with self._lock:
                if self._doc is None:
                    try:
                        doc = self._http.get_json(self.url)
                    except UpstreamUnavailable as exc:
                        raise ProviderUnavailable(f"discovery failed: {exc}") from None
                    if not isinstance(doc, dict):
                        raise ProviderUnavailable(f"{self.url} is not a JSON object")
                    self._doc = doc
        return self._doc

    def endpoint(self, name: str) -> str:
        value = self._metadata().get(name)
        if not isinstance(value, str) or not value.startswith(("https://", "http://")):
            raise ProviderUnavailable(f"the provider's metadata has no `{name}`")
        return value


def fixed(url: str) -> Callable[[], str]:
    return lambda: url


class KeySet:
    def __init__(
        self,
        url: Callable[[], str],
        http: JsonClient,
        *,
        min_refresh_seconds: float,
        max_age_seconds: float = 3600,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._http = http
        self._min_refresh = min_refresh_seconds
        self._max_age = max_age_seconds
        self._clock = clock
        self._keys: dict[str | None, list[jwt.PyJWK]] = {}
        self._fetched_at: float | None = None  # of the keys we have
        self._tried_at: float | None = None  # of the last fetch, whatever came of it
        self._unknown_at: float | None = None  # of the last fetch an unknown kid caused
        self._fetches = 0
        self._lock = threading.Lock()

    def key(self, kid: str | None, alg: str) -> jwt.PyJWK:
        """The signing key `kid` for `alg`. UnknownKey (401) or ProviderUnavailable (503)."""
        now = self._clock()
        if not self._keys:
            # Cold, or the provider was down every time. Wait for a fetch another thread is
            # making (it is bounded by the HTTP timeouts), else try again, but not on every request.
            with self._lock:
                if not self._keys and self._may_refetch(
                    self._clock(), min(self._min_refresh, COLD_RETRY_SECONDS)
                ):
                    self._fetch_into_place(self._clock())
            if not self._keys:
                raise ProviderUnavailable("no signing keys: the JWKS endpoint did not answer")
        elif self._stale(now) and self._may_refetch(now, self._min_refresh):
            self._refresh(now)
        found = self._match(kid, alg)
        if found is None:
            now = self._clock()
            if self._unknown_at is None or now - self._unknown_at >= self._min_refresh:
                self._unknown_at = now
                self._refresh(now)  # a rotation: the new kid is not known here yet
                found = self._match(kid, alg)
        if found is None:
            raise UnknownKey(f"no signing key {kid!r} for {alg}")
        return found

    def _match(self, kid: str | None, alg: str) -> jwt.PyJWK | None:
        candidates = self._keys.get(kid, [])
        if kid is None and not candidates:  # a token without `kid`: only an unambiguous key will do
            everything = [k for keys in self._keys.values() for k in keys]
            candidates = everything if len(everything) == 1 else []
        for key in candidates:
            if key.algorithm_name == alg:
                return key
        return None

    def _stale(self, now: float) -> bool:
        return self._fetched_at is not None and now - self._fetched_at > self._max_age

    def _may_refetch(self, now: float, interval: float) -> bool:
        return self._tried_at is None or now - self._tried_at >= interval

    def _refresh(self, now: float) -> None:
        """Fetch the keys, unless another thread did while this one waited for the lock."""
        seen = self._fetches
        with self._lock:
            if self._fetches == seen:
                self._fetch_into_place(now)

    def _fetch_into_place(self, now: float) -> None:
        """With the lock held: fetch; on failure keep the keys we have (logged)."""
        self._fetches += 1
        self._tried_at = now
        try:
            keys = self._fetch()
        except ProviderUnavailable as exc:
            log.warning("JWKS fetch failed (%s); %d cached key id(s) stay in use", exc, len(self._keys))
            return
        self._keys = keys
        self._fetched_at = self._clock()

    def _fetch(self) -> dict[str | None, list[jwt.PyJWK]]:
        url = self._url()
        try:
            doc = self._http.get_json(url)
            keyset = jwt.PyJWKSet.from_dict(doc)
        except UpstreamUnavailable as exc:
            raise ProviderUnavailable(f"JWKS: {exc}") from None
        except (jwt.PyJWTError, TypeError, KeyError, AttributeError) as exc:
            raise ProviderUnavailable(f"JWKS at {url} has no usable key: {exc}") from None
        keys: dict[str | None, list[jwt.PyJWK]] = {}
        for key in keyset.keys:
            if key.public_key_use not in (None, "sig"):  # `enc` keys never verify a signature
                continue
            keys.setdefault(key.key_id, []).append(key)
        if not keys:
            raise ProviderUnavailable(f"JWKS at {url} has no signing key")
        return keys


class Introspector:
    cache_size = 4096

    def __init__(
        self,
        url: Callable[[], str],
        client: tuple[str, str],
        http: JsonClient,
        *,
        cache_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._url = url
        self._client = client
        self._http = http
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._cache: OrderedDict[str, tuple[dict[str, Any], float]] = OrderedDict()
        self._lock = threading.Lock()

    def active_claims(self, token: str) -> dict[str, Any] | None:
        """The token's claims when the provider says it is active, None when it is not."""
        key = hashlib.sha256(token.encode()).hexdigest()  # the cache holds no token itself
        now = self._clock()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[1] > now:
                self._cache.move_to_end(key)
                return hit[0]
        try:
            answer = self._http.post_form(
                self._url(), {"token": token, "token_type_hint": "access_token"}, basic_auth=self._client
            )
        except UpstreamUnavailable as exc:
            raise ProviderUnavailable(f"introspection: {exc}") from None
        if not isinstance(answer, dict):
            raise ProviderUnavailable("introspection answered something that is not a JSON object")
        if answer.get("active") is not True:
            return None
        until = now + self._cache_seconds
        exp = answer.get("exp")
        if isinstance(exp, int | float) and not isinstance(exp, bool):
            if exp <= now:
                return None  # active but expired: a clock or provider error; never trust it
            until = min(until, float(exp))
        with self._lock:
            self._cache[key] = (answer, until)
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return answer
