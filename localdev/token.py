"""`make token`: print a development bearer token (all scopes) for the running `make run` instance.

Usage: python -m localdev.token [SUBJECT] [SCOPE ...]   (defaults: dev-user, every scope)
"""

from __future__ import annotations

import os
import sys

from common.config import Config
from common.tokens import ALL_SCOPES, issue_hs256
from localdev import devsecrets


def main(argv: list[str]) -> int:
    config = Config.from_env(os.environ)
    secret = config.jwt_secret or devsecrets.jwt_secret(config.data_dir)
    subject = argv[0] if argv else "dev-user"
    scopes = argv[1:] or list(ALL_SCOPES)
    print(
        issue_hs256(
            secret,
            subject,
            scopes,
            ttl_seconds=12 * 3600,
            issuer=config.jwt_issuer,
            audience=config.jwt_audience,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
