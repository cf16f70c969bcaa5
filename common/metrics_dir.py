"""Where several gunicorn workers keep their metric values (prometheus-client multiprocess mode).

Separate from `metrics.py` on purpose: it must run before prometheus-client is first imported,
which picks its value storage at import time.
"""

from __future__ import annotations

import atexit
import os
import shutil
from collections.abc import MutableMapping
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare(env: MutableMapping[str, str]) -> Path:
    """Use `$PROMETHEUS_MULTIPROC_DIR`, or a directory of this process's own under /tmp, emptied:
    values a previous run left would otherwise be added to this one's."""
    own = not env.get(ENV)
    path = Path(env.get(ENV) or f"/tmp/media-metrics-{os.getpid()}")  # noqa: S108 - the container's /tmp
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    env[ENV] = str(path)
    if own:
        atexit.register(_remove, path, os.getpid())
    return path


def _remove(path: Path, owner: int) -> None:
    if os.getpid() == owner:  # not in a forked worker, which runs the handlers it inherited
        shutil.rmtree(path, ignore_errors=True)
