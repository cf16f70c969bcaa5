from __future__ import annotations

import json
import logging

import pytest

from common import logs, tracing

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_valid_traceparent_is_read_and_continued() -> None:
    trace = tracing.parse(VALID)
    assert trace is not None and trace.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    child = trace.child()
    assert child.trace_id == trace.trace_id and child.span_id != trace.span_id
    assert tracing.parse(child.header()) == child


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "garbage",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # an all-zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # an all-zero span id
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff is invalid
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",  # version 00 has no more
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  # a digit short
    ],
)
def test_anything_else_is_ignored(value: str | None) -> None:
    assert tracing.parse(value) is None


def test_a_later_version_with_more_fields_is_read() -> None:
    assert tracing.parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more") is not None


def test_every_line_of_a_request_carries_its_ids_and_the_revision(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "REVISION", "upload-00042")
    record = logging.LogRecord("media.anything", logging.INFO, __file__, 1, "hello", None, None)
    with logs.request_context(request_id="r-1", trace_id="t" * 32):
        line = json.loads(logs.JsonFormatter().format(record))
    assert (line["request_id"], line["trace_id"], line["revision"]) == ("r-1", "t" * 32, "upload-00042")
    outside = json.loads(logs.JsonFormatter().format(record))
    assert "request_id" not in outside and outside["revision"] == "upload-00042"
