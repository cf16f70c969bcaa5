"""The server without the service: `common.server` (gunicorn, the service's own worker, its
wrappers) answering every request with a constant 1 KiB, no Flask, no database, no logging.

`make bench` drives it like the download function (one process of MEDIA_THREADS threads, wrk at
16 clients, no ingress), to show what a process of this server can do at most on this machine:
the ceiling every small-request figure of the service sits under.

    python -m bench.ceiling PORT
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

from common.config import Config
from common.server import Server

BODY = b"x" * 1024


def constant(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response(
        "200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(BODY)))]
    )
    return [BODY]


def main(argv: list[str]) -> int:
    Server(constant, Config.from_env(os.environ), f"127.0.0.1:{int(argv[0])}").run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
