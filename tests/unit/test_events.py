"""CloudEvents in and out, without a network: the headers an outbox row becomes, the overrides
Knative injects, and what `parse` accepts and refuses."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from common.events import headers_for, overrides_from, parse
from common.problems import BadRequest
from common.records import UPLOADED_EVENT, OutboxEvent

EVENT = OutboxEvent(7, UPLOADED_EVENT, "media-id", {"sha256": "a" * 64}, datetime(2026, 12, 1, tzinfo=UTC))


def test_an_outbox_row_becomes_a_binary_mode_cloudevent_that_parses_back() -> None:
    headers = headers_for(EVENT, overrides_from('{"extensions": {"cluster": "eu-1"}}'))
    assert headers["ce-id"] == "outbox-7" and headers["ce-type"] == UPLOADED_EVENT
    assert headers["ce-specversion"] == "1.0" and headers["ce-cluster"] == "eu-1"
    received = parse(headers, json.dumps(EVENT.data).encode())
    assert (received.type, received.id, received.data) == (UPLOADED_EVENT, "outbox-7", EVENT.data)


def test_structured_mode_is_read_too() -> None:
    body = {"specversion": "1.0", "id": "x", "source": "/ping", "type": "media.process.drain", "data": {}}
    received = parse({"content-type": "application/cloudevents+json"}, json.dumps(body).encode())
    assert received.type == "media.process.drain" and received.data == {}


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({"content-type": "application/json"}, b"{}"),  # no attributes at all
        (
            {"content-type": "application/cloudevents+json"},
            b'{"specversion": "1.0", "id": "", "source": "s", "type": "t"}',
        ),
        (
            {"content-type": "application/cloudevents+json"},
            b'{"specversion": "1.0", "id": "i", "source": "s", "type": null}',
        ),
        ({"content-type": "application/cloudevents+json"}, b"not json"),
    ],
)
def test_anything_else_is_a_400(headers: dict[str, str], body: bytes) -> None:
    with pytest.raises(BadRequest):
        parse(headers, body)


def test_overrides_that_are_not_knatives_json_are_ignored() -> None:
    assert overrides_from(None) == {} and overrides_from("nope") == {} and overrides_from('{"x": 1}') == {}
