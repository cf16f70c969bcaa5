"""The audit trail: the events, their fields, and no credential in any log line."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from common.config import Config
from common.logs import JsonFormatter
from common.services import build_services
from tests import support
from tests.factories import PRESIGN_SECRET, TEST_SECRET, bearer, png, token, upload_body


def events(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [r.__dict__["audit"] for r in caplog.records if r.name == "media.audit"]


def test_each_security_relevant_request_leaves_one_event_and_no_credential_is_ever_logged(
    config_for: Callable[..., Config], caplog: pytest.LogCaptureFixture
) -> None:
    svc = build_services(config_for(MEDIA_RATE_LIMIT_UPLOADS_PER_MINUTE="2"), background=False)
    caplog.set_level(logging.DEBUG)
    try:
        api = support.api_client(svc)
        who = f"audit-{uuid.uuid4().hex[:8]}"
        alice = token(who)
        data = png()
        body, ctype = upload_body(data)
        created = api.post("/media", data=body, content_type=ctype, headers=bearer(alice)).get_json()
        signed = api.post(
            "/media/uploads",
            json={"filename": "b.png", "content_type": "image/png", "size": len(data)},
            headers=bearer(alice),
        ).get_json()
        put = api.put(urlsplit(signed["url"]).path, data=data, headers={"Content-Type": "image/png"})
        assert put.status_code == 200
        link = urlsplit(created["links"]["content"])
        assert api.get(f"{link.path}?{link.query}").status_code == 200  # a signed link
        assert api.delete(f"/media/{created['id']}", headers=bearer(alice)).status_code == 204
        assert api.get("/media", headers=bearer(token(who, secret="x" * 40))).status_code == 401
        assert api.post("/media", data=body, content_type=ctype, headers=bearer(alice)).status_code == 429
    finally:
        svc.repo.close()

    got = [(e["event"], e["outcome"], e["status"]) for e in events(caplog)]
    assert got == [
        ("upload", "success", 201),
        ("presign", "success", 201),
        ("upload_completed", "success", 200),
        ("download", "success", 200),
        ("delete", "success", 204),
        ("auth_failure", "denied", 401),
        ("upload", "denied", 429),
        ("rate_limited", "denied", 429),
    ]
    by_event: dict[str, dict[str, Any]] = {}
    for e in events(caplog):
        by_event.setdefault(e["event"], e)  # the first of each
    upload = by_event["upload"]
    assert upload["actor"] == who and upload["media_id"] == created["id"]
    assert upload["sha256"] == created["sha256"] and upload["size"] == created["size"]
    assert upload["function"] == "upload" and upload["client_ip"] and upload["request_id"]
    assert by_event["upload_completed"]["actor"] == who  # no token: the URL's owner
    assert by_event["download"]["actor"] is None and by_event["download"]["sha256"] == created["sha256"]
    assert by_event["delete"]["media_id"] == created["id"]

    secrets = [alice, TEST_SECRET, PRESIGN_SECRET, urlsplit(signed["url"]).path.rsplit("/", 1)[1]]
    secrets += parse_qs(link.query)["sig"]
    formatter = JsonFormatter()
    for record in caplog.records:
        line = formatter.format(record)
        for secret in secrets:
            assert secret not in line, f"a credential in the log: {line[:200]}"


def test_the_audit_trail_can_be_switched_off(
    config_for: Callable[..., Config], caplog: pytest.LogCaptureFixture
) -> None:
    svc = build_services(config_for(MEDIA_AUDIT_LOG="off"), background=False)
    caplog.set_level(logging.INFO)
    try:
        body, ctype = upload_body(png())
        api = support.api_client(svc)
        assert api.post("/media", data=body, content_type=ctype, headers=bearer(token())).status_code == 201
        assert api.get("/media").status_code == 401
    finally:
        svc.repo.close()
    assert events(caplog) == []
