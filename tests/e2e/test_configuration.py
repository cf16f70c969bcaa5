"""A bad configuration stops a function (and `make run`) before it serves anything: exit status 78
and one line naming the variable, never a 500 on every request."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from common import routing
from tests.support import ROOT, RunningPostgres, free_port, service_env

EX_CONFIG = 78

# (variable, bad value or None for unset, what the message must say besides the name)
BAD: list[tuple[str, str | None, str]] = [
    ("MEDIA_DB_TIMEOUT_SECONDS", "soon", "number"),
    ("MEDIA_PUBLIC_BASE_URL", "ftp://media.example", "http"),
    ("MEDIA_ALLOWED_TYPES", "png", "MIME"),
    ("MEDIA_LOG_LEVEL", "LOUD", "one of"),
    ("MEDIA_THREADS", "0", ">= 1"),
    ("MEDIA_CORS_ORIGINS", "*", "exact origins"),
    ("MEDIA_DATABASE_URL", "not a connection string", "connection string"),
    ("MEDIA_DATABASE_URL", None, "not set"),
    ("MEDIA_JWT_SECRET", None, "checks JWTs offline"),
    ("MEDIA_AUTH_MODE", "trusting", "one of"),
    ("MEDIA_JWT_ALGORITHMS", "none", "never accepted"),
    ("MEDIA_PRESIGN_SECRET", None, "not set"),
]


def good_env(database_url: str, data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIA_")}
    env.update(service_env(database_url, MEDIA_DATA_DIR=str(data_dir)))
    return env


def run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize(("variable", "value", "says"), BAD, ids=[f"{v}={x}" for v, x, _ in BAD])
def test_a_function_with_a_bad_value_exits_with_one_line_naming_it(
    pg: RunningPostgres, tmp_path: Path, variable: str, value: str | None, says: str
) -> None:
    functions = routing.functions()
    function = functions[[v for v, _, _ in BAD].index(variable) % len(functions)]
    env = good_env(pg.url, tmp_path)
    if value is None:
        env.pop(variable)
    else:
        env[variable] = value
    cmd = [sys.executable, "-m", "common.server", "--target", function, "--port", str(free_port())]
    done = run(cmd, env)
    assert done.returncode == EX_CONFIG, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"{function}: configuration error: ") and variable in lines[0], lines
    assert says in lines[0]


def test_a_good_configuration_serves(pg: RunningPostgres, tmp_path: Path) -> None:
    """The same command with nothing wrong does not exit (the control for the test above)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "common.server", "--target", "health", "--port", str(port)],
        cwd=ROOT,
        env=good_env(pg.url, tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(3)
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize(
    ("variable", "value"), [("MEDIA_DB_TIMEOUT_SECONDS", "soon"), ("MEDIA_DATABASE_URL", "garbage")]
)
def test_make_run_with_a_bad_value_prints_it_and_exits(
    pg: RunningPostgres, tmp_path: Path, variable: str, value: str
) -> None:
    env = good_env(pg.url, tmp_path)
    env[variable] = value
    done = run([sys.executable, "-m", "localdev"], env)
    assert done.returncode == EX_CONFIG, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("make run: configuration error: ") and variable in last
    assert "Traceback" not in done.stderr
