"""JSON logs, one object per line on stderr, with the request's fields when a record carries them.

Every line logged while a request is served carries that request's `request_id` and `trace_id`
(bound by the dispatch, `request_context`), whichever module logs it; and the function's revision
(`K_REVISION`, which Knative sets) when there is one.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime

_FIELDS = ("function", "method", "path", "status", "duration_ms", "request_id")
_configured = False
_request: ContextVar[dict[str, str]] = ContextVar("media_request", default={})  # noqa: B039 - never mutated
REVISION = os.environ.get("K_REVISION")


@contextmanager
def request_context(**fields: str) -> Iterator[None]:
    """Fields every log line in the block carries (the thread's own context)."""
    token = _request.set({**_request.get(), **fields})
    try:
        yield
    finally:
        _request.reset(token)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        doc.update(_request.get())
        if REVISION:
            doc["revision"] = REVISION
        for name in _FIELDS:
            if name in record.__dict__:
                doc[name] = record.__dict__[name]
        audit = record.__dict__.get("audit")
        if isinstance(audit, dict):  # an audit event's own fields (common/audit.py)
            doc.update(audit)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def configure(level: str = "INFO") -> None:
    """Install the JSON handler on the root logger once per process."""
    global _configured
    if _configured:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    # What the JSON lines never show is not gathered for every record (the logging HOWTO's
    # "Optimization"): the caller's frame, which `findCaller` walks the stack for, and the thread,
    # process and task names. Every request logs at least one line.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    _configured = True
