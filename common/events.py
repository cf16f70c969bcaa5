"""CloudEvents out (the outbox, to `K_SINK`) and in (what the process function receives).

Out: each outbox row becomes one binary-mode CloudEvent (`ce-*` headers, a JSON body) POSTed to
`K_SINK`, the address Knative's SinkBinding injects (a Broker, usually); `K_CE_OVERRIDES`
(JSON, `{"extensions": {...}}`) adds its extension attributes. A row is marked sent only after a
2xx; anything else leaves it for the next attempt (the upload's own, then the drain's). Delivery is
at least once: the `id` (`outbox-<row>`) lets a consumer drop duplicates.

In: `parse` reads a binary or structured CloudEvent with the `cloudevents` SDK (a dependency of
functions-framework), into the type and data the process function acts on.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from common.httpclient import HttpClient, UpstreamUnavailable
from common.problems import BadRequest
from common.records import OutboxEvent

log = logging.getLogger("media.events")

SOURCE = "/media"
DRAIN_EVENT = "media.process.drain"  # what the PingSource (and make run's timer) sends
PING_EVENT = "dev.knative.sources.ping"  # a PingSource's own type, taken as a drain too


class EventSink(Protocol):
    def deliver(self, events: Sequence[OutboxEvent]) -> list[int]:
        """Send the events; the ids of those the sink accepted."""


class NoSink:
    """K_SINK unset: nothing is sent; the outbox rows wait, the drain finds the work."""

    def deliver(self, events: Sequence[OutboxEvent]) -> list[int]:
        return []


@dataclass
class RecordingSink:
    """For tests of the use cases: what would have been sent."""

    accepted: list[OutboxEvent]
    refuse: bool = False

    def deliver(self, events: Sequence[OutboxEvent]) -> list[int]:
        if self.refuse:
            return []
        self.accepted.extend(events)
        return [e.id for e in events]


def headers_for(event: OutboxEvent, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """The binary-mode CloudEvent headers of an outbox row."""
    headers = {
        "ce-specversion": "1.0",
        "ce-id": f"outbox-{event.id}",
        "ce-source": SOURCE,
        "ce-type": event.type,
        "ce-subject": event.subject,
        "ce-time": event.created_at.isoformat(),
        "content-type": "application/json",
    }
    for name, value in (overrides or {}).items():
        headers.setdefault(f"ce-{name.lower()}", str(value))
    return headers


def overrides_from(raw: str | None) -> dict[str, str]:
    """K_CE_OVERRIDES' extensions ({} when unset or not the JSON Knative writes)."""
    if not raw:
        return {}
    try:
        extensions = json.loads(raw).get("extensions") or {}
    except (ValueError, AttributeError):
        log.warning("K_CE_OVERRIDES is not JSON with an `extensions` object; ignored")
        return {}
    return {str(k): str(v) for k, v in extensions.items()} if isinstance(extensions, dict) else {}


class HttpSink:
    def __init__(self, url: str, timeout_seconds: float, overrides: Mapping[str, str] | None = None) -> None:
        self.url = url
        self._http = HttpClient(timeout_seconds)
        self._overrides = dict(overrides or {})

    def deliver(self, events: Sequence[OutboxEvent]) -> list[int]:
        accepted = []
        for event in events:
            body = json.dumps(event.data, separators=(",", ":")).encode()
            try:
                status = self._http.post_bytes(self.url, body, headers_for(event, self._overrides))
            except UpstreamUnavailable as exc:
                log.warning("event %s not delivered (%s); it stays in the outbox", event.id, exc)
                break  # the sink is down: the rest would wait as long
            if 200 <= status < 300:
                accepted.append(event.id)
            else:
                log.warning(
                    "event %s refused by the sink (HTTP %s); it stays in the outbox", event.id, status
                )
        return accepted


@dataclass(frozen=True)
class Received:
    type: str
    id: str
    data: dict[str, Any]


def parse(headers: Mapping[str, str], body: bytes) -> Received:
    """A CloudEvent from an HTTP request (binary or structured mode); BadRequest otherwise."""
    from cloudevents.exceptions import GenericException
    from cloudevents.http import from_http

    try:
        event = from_http(dict(headers), body)
    except (GenericException, ValueError, TypeError) as exc:  # the SDK raises ValueError for bad attributes
        raise BadRequest(f"not a CloudEvent: {exc}") from None
    attributes = {name: event.get(name) for name in ("id", "source", "type")}
    empty = sorted(name for name, value in attributes.items() if not isinstance(value, str) or not value)
    if empty:
        raise BadRequest(f"not a CloudEvent: {', '.join(empty)} missing or empty")
    data = event.data
    if isinstance(data, (bytes, str)):
        try:
            data = json.loads(data) if data else {}
        except ValueError:
            raise BadRequest("the event's data is not JSON") from None
    return Received(str(event["type"]), str(event["id"]), data if isinstance(data, dict) else {})
