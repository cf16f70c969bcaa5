"""One function redeployed while clients use the service, as a Knative revision rollout does it:
`Rehearsal.redeploy` (what `make redeploy FUNCTION=...` asks a running `make up` to do) starts the
new processes, waits until they are ready, reloads nginx, drains the old ones, stops them.
Nobody notices: every download succeeds, uploads in flight complete with the right digest, and the
other functions' processes are never touched."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from localdev.harness import GeneratedFile
from localdev.rehearsal import Rehearsal
from tests.factories import bearer, png, token
from tests.rehearsal.conftest import MiB, rehearsal_on
from tests.rehearsal.test_drills import upload_big
from tests.support import RunningPostgres

pytestmark = pytest.mark.slow

MAX_REQUESTS = 20_000  # every loop is bounded in count and in time
MAX_SECONDS = 120


@pytest.fixture(scope="module")
def stage(pg: RunningPostgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rehearsal]:
    with rehearsal_on(tmp_path_factory.mktemp("redeploy"), pg.url) as running:
        yield running


@dataclass
class Downloads:
    """A client downloading without pause (metadata, whole file, a range) until told to stop.

    nginx's reload closes its old workers' idle keep-alive connections, and a request sent on one at
    that instant is reset before any answer. Browsers retry an idempotent request that failed so on
    a reused connection, once, on a new connection; so does this client, at most once per drill
    (one reload), and the retry must succeed."""

    rehearsal: Rehearsal
    tok: str
    media_id: str
    data: bytes
    stop: threading.Event = field(default_factory=threading.Event)
    answers: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    reconnects: list[str] = field(default_factory=list)

    def run(self) -> None:
        started = time.monotonic()
        with requests.Session() as session:
            while not self.stop.is_set() and len(self.answers) < MAX_REQUESTS:
                if time.monotonic() - started > MAX_SECONDS:
                    self.failures.append("the client ran out of time")
                    return
                n = len(self.answers)
                try:
                    self.one(session, n)
                except requests.ConnectionError as exc:
                    if self.reconnects:
                        self.failures.append(f"request {n}: {exc!r} (after {self.reconnects})")
                        continue
                    self.reconnects.append(repr(exc))
                    session.close()
                    try:
                        self.one(session, n)
                    except requests.RequestException as again:
                        self.failures.append(f"request {n}, retried: {again!r}")
                except requests.RequestException as exc:
                    self.failures.append(f"request {n}: {exc!r}")

    def one(self, session: requests.Session, n: int) -> None:
        """Request `n` of the cycle; its status is recorded, a wrong answer is a failure."""
        self.answers.append(0)
        content = f"{self.rehearsal.base}/media/{self.media_id}/content"
        if n % 3 == 0:
            resp = session.get(
                f"{self.rehearsal.base}/media/{self.media_id}", headers=bearer(self.tok), timeout=10
            )
            ok = resp.status_code == 200 and resp.json()["id"] == self.media_id
        elif n % 3 == 1:
            resp = session.get(content, headers=bearer(self.tok), timeout=10)
            ok = resp.status_code == 200 and resp.content == self.data
        else:
            resp = session.get(content, headers={**bearer(self.tok), "Range": "bytes=8-71"}, timeout=10)
            ok = resp.status_code == 206 and resp.content == self.data[8:72]
        self.answers[-1] = resp.status_code
        if not ok:
            self.failures.append(f"request {n}: {resp.status_code} {resp.text[:200]}")


def slow_read(url: str, tok: str, outcome: dict[str, Any]) -> None:
    """A large download read slowly (1 MiB per 40 ms): in flight on the old process when it goes."""
    digest = hashlib.sha256()
    try:
        with requests.get(url, headers=bearer(tok), stream=True, timeout=30) as resp:
            outcome["status"] = resp.status_code
            for chunk in resp.iter_content(MiB):
                digest.update(chunk)
                time.sleep(0.04)
    except requests.RequestException as exc:
        outcome["error"] = repr(exc)
    outcome["sha256"] = digest.hexdigest()


def _upload_small(rehearsal: Rehearsal, tok: str, data: bytes, name: str) -> dict[str, Any]:
    resp = requests.post(
        rehearsal.base + "/media", headers=bearer(tok), files={"file": (name, data, "image/png")}, timeout=60
    )
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def _pids(rehearsal: Rehearsal, name: str) -> set[int]:
    return {pid for p in rehearsal.processes[name] for pid in p.pids()}


@dataclass
class Drill:
    downloads: int
    failures: list[str]
    upload_matches: bool
    slow_read_matches: bool
    others_untouched: bool
    replaced: bool


def _drill(rehearsal: Rehearsal, function: str) -> Drill:
    tok = token()
    data = png(200, 200)
    record = _upload_small(rehearsal, tok, data, "dish.png")
    # A large file for the slow reader, stored first.
    large = GeneratedFile(48 * MiB)
    status, body = upload_big(rehearsal, tok, large)
    assert status == 201, body
    large_doc = json.loads(body)
    untouched = {name: _pids(rehearsal, name) for name in rehearsal.processes if name != function}
    before = _pids(rehearsal, function)
    old_ports = [p.port for p in rehearsal.processes[function]]

    client = Downloads(rehearsal, tok, record["id"], data)
    reader: dict[str, Any] = {}
    uploading = GeneratedFile(120 * MiB)
    upload: dict[str, Any] = {}

    def send_upload() -> None:
        upload["status"], upload["body"] = upload_big(rehearsal, tok, uploading, pause=0.04)

    threads = [
        threading.Thread(target=client.run),
        threading.Thread(
            target=slow_read, args=(f"{rehearsal.base}/media/{large_doc['id']}/content", tok, reader)
        ),
        threading.Thread(target=send_upload),
    ]
    for t in threads:
        t.start()
    time.sleep(1.0)  # the large transfers are in flight, the client is busy
    lines: list[str] = []
    started = time.monotonic()
    new = rehearsal.redeploy(function, drain_timeout=90, say=lines.append)
    took = time.monotonic() - started
    time.sleep(0.5)  # the client goes on against the new processes
    client.stop.set()
    for t in threads:
        t.join(MAX_SECONDS)
        assert not t.is_alive()

    assert reader.get("status") == 200 and "error" not in reader, reader
    assert upload.get("status") == 201, upload
    assert any("drained and stopped" in line for line in lines), lines
    gone = all(
        not Path(f"/proc/{pid}").exists() or "\nState:\tZ" in Path(f"/proc/{pid}/status").read_text()
        for pid in before
    )
    print(
        f"redeploy {function}: {took:.1f} s, {len(client.answers)} downloads, {len(client.failures)} failed, "
        f"{len(client.reconnects)} retried on a new connection"
    )
    return Drill(
        downloads=len(client.answers),
        failures=client.failures,
        upload_matches=json.loads(upload["body"])["sha256"] == uploading.sha256,
        slow_read_matches=reader["sha256"] == large.sha256,
        others_untouched={name: _pids(rehearsal, name) for name in untouched} == untouched,
        # New processes on new ports, the old ones gone.
        replaced=gone
        and {p.port for p in new}.isdisjoint(old_ports)
        and _pids(rehearsal, function).isdisjoint(before),
    )


def test_redeploying_download_under_load_fails_nothing(stage: Rehearsal) -> None:
    drill = _drill(stage, "download")
    assert drill.failures == [] and drill.downloads >= 30, (drill.downloads, drill.failures[:5])
    assert drill.slow_read_matches and drill.upload_matches
    assert drill.replaced and drill.others_untouched


def test_redeploying_upload_leaves_downloads_untouched(stage: Rehearsal) -> None:
    drill = _drill(stage, "upload")
    assert drill.failures == [] and drill.downloads >= 30, (drill.downloads, drill.failures[:5])
    assert drill.upload_matches and drill.slow_read_matches  # the upload in flight drained, then stopped
    assert drill.replaced and drill.others_untouched  # download processes never touched


def test_make_redeploy_talks_to_the_running_make_up(tmp_path: Path) -> None:
    """The command a person types: `make up` in one terminal, `make redeploy FUNCTION=health`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIA_")}
    env.update({"MEDIA_DATA_DIR": str(tmp_path / "v"), "PYTHONUNBUFFERED": "1"})
    up = subprocess.Popen(
        [sys.executable, "-m", "localdev.rehearsal"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert up.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = up.stdout.readline()
            lines.append(line)
            if "Ctrl-C" in line or not line:
                break
        before = next(int(x.split("pid")[1].split()[0]) for x in lines if x.strip().startswith("health"))
        done = subprocess.run(
            [sys.executable, "-m", "localdev.rehearsal", "redeploy", "health"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.strip().endswith("ok") and "drained and stopped" in done.stdout
        assert (
            not Path(f"/proc/{before}").exists()
            or "\nState:\tZ" in Path(f"/proc/{before}/status").read_text()
        )
        ingress = next(x.split()[-1] for x in lines if x.startswith("ingress"))
        assert requests.get(ingress + "/health/ready", timeout=10).status_code == 200
        wrong = subprocess.run(
            [sys.executable, "-m", "localdev.rehearsal", "redeploy", "nothing"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert wrong.returncode == 1 and "no function 'nothing'" in wrong.stdout
    finally:
        up.send_signal(signal.SIGINT)
        code = up.wait(60)
        if up.stdout is not None:
            up.stdout.close()
    assert code == 0
    nobody = subprocess.run(
        [sys.executable, "-m", "localdev.rehearsal", "redeploy", "health"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert nobody.returncode == 2 and "no running `make up`" in nobody.stderr
