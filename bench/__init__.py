"""Benchmarks (`make bench`)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def database(workdir: Path) -> tuple[str, Callable[[], None]]:
    """The PostgreSQL a benchmark uses: MEDIA_DATABASE_URL, else an embedded one under `workdir`
    (keep its path short: the server's Unix socket lives there); and how to stop it afterwards."""
    url = os.environ.get("MEDIA_DATABASE_URL")
    if url:
        return url, lambda: None
    import pgserver

    server = pgserver.get_server(str(workdir / "pg"), cleanup_mode="stop")  # type: ignore[attr-defined]
    return str(server.get_uri()), server.cleanup


def save(path: Path, result: dict[str, Any]) -> None:
    """A benchmark's figures as JSON under bench/results (gitignored: they belong to the machine)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {path}")
