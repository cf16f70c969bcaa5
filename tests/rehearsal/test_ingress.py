"""The nginx ingress generated from the routing table: every route reaches its function, the rest
is answered as problem+json."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import requests

from common import routing
from localdev import nginx
from localdev.rehearsal import Rehearsal
from tests.factories import bearer, png, token, upload_body


def test_the_generated_config_is_valid_nginx(tmp_path: Path) -> None:
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi", "dav", "dav-tmp"):
        (tmp_path / sub).mkdir()
    upstreams = {name: [10001 + i] for i, name in enumerate(routing.functions())}
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        nginx.ingress_config(tmp_path, 10000, upstreams, nginx.peer_server(tmp_path, 10999, tmp_path))
    )
    checked = subprocess.run(
        [binary, "-t", "-p", str(tmp_path), "-c", str(conf)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stderr
    for route in routing.routes():
        assert f"fn_{route.function};" in conf.read_text()


@pytest.mark.parametrize(
    ("template", "path", "matches"),
    [
        ("/media/{id}/content", "/media/abc/content", True),
        ("/media/{id}/content", "/media/a/b/content", False),
        ("/media", "/media/", False),
        ("/health/live", "/health/live", True),
    ],
)
def test_path_templates_become_anchored_regexes(template: str, path: str, matches: bool) -> None:
    assert bool(re.match(nginx.path_regex(template), path)) is matches


def test_routes_reach_their_functions_and_the_rest_is_problem_json(rehearsal: Rehearsal) -> None:
    tok = token()
    body, ctype = upload_body(png())
    created = requests.post(
        rehearsal.base + "/media", data=body, headers={**bearer(tok), "Content-Type": ctype}, timeout=30
    )
    assert created.status_code == 201
    doc = created.json()
    assert requests.get(doc["links"]["self"], headers=bearer(tok), timeout=10).status_code == 200
    assert (
        requests.head(
            f"{rehearsal.base}/media/{doc['id']}/content", headers=bearer(tok), timeout=10
        ).status_code
        == 200
    )
    assert requests.get(rehearsal.base + "/health/ready", timeout=10).json()["status"] == "ready"
    preflight = requests.options(rehearsal.base + "/media/uploads", timeout=10)
    assert preflight.status_code == 204 and "POST" in preflight.headers["Allow"]

    missing = requests.get(rehearsal.base + "/nothing/here", timeout=10)
    assert missing.status_code == 404
    assert missing.headers["Content-Type"] == "application/problem+json"
    assert missing.json()["request_id"]
    wrong = requests.put(rehearsal.base + "/media", timeout=10)
    assert wrong.status_code == 405
    assert wrong.headers["Allow"] == "GET, HEAD, OPTIONS, POST"
    assert wrong.json()["status"] == 405
