"""Development secrets shared by `make run` and `make token`, generated once under the data dir.

They stand in for MEDIA_JWT_SECRET and MEDIA_PRESIGN_SECRET only when those are unset, which is
also what turns on the dev-only conveniences (the demo page's token endpoint).
"""

from __future__ import annotations

import secrets
from pathlib import Path


def path(data_dir: Path, name: str = "jwt-secret") -> Path:
    return data_dir / "dev" / name


def secret(data_dir: Path, name: str = "jwt-secret") -> str:
    p = path(data_dir, name)
    if not p.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(secrets.token_urlsafe(48))
        p.chmod(0o600)
    return p.read_text().strip()


def jwt_secret(data_dir: Path) -> str:
    return secret(data_dir, "jwt-secret")
