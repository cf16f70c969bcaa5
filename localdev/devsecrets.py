"""The development JWT secret shared by `make run` and `make token` (unused when MEDIA_JWT_SECRET is set)."""

from __future__ import annotations

import secrets
from pathlib import Path


def path(data_dir: Path) -> Path:
    return data_dir / "dev" / "jwt-secret"


def jwt_secret(data_dir: Path) -> str:
    p = path(data_dir)
    if not p.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(secrets.token_urlsafe(48))
        p.chmod(0o600)
    return p.read_text().strip()
