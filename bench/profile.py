"""`make profile`: where a request's time goes, under load, as py-spy flame graphs.

The rehearsal topology of `make bench` (nginx ingress, each function its own processes, the
features on at their defaults), one scenario at a time under wrk, with py-spy recording every
process of the function that serves it. Writes `bench/results/profile-<scenario>.svg` (a flame
graph of one of them, to open in a browser) and `.txt` (the collapsed stacks of all of them, and
the hottest frames by share of samples, for reading in a terminal or a closing note).

    python -m bench.profile [metadata|range|small|upload|presigned ...] [--seconds 10]

Every loop is bounded in count and time; all traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from bench import database
from bench.rehearsal import (
    WRK_SCRIPT,
    GiB,
    Payload,
    bench_env,
    upload_multipart,
    upload_presigned,
    wrk,
)
from common.tokens import issue_hs256
from localdev.harness import MiB
from localdev.rehearsal import Rehearsal

RESULTS = Path(__file__).resolve().parent / "results"
SCENARIOS = ("metadata", "range", "small", "upload", "presigned")
RATE_HZ = 250
UPLOAD_SIZE = 100 * MiB
MAX_UPLOADS = 50  # a bound on the upload loops, whatever --seconds says


def record(pids: list[int], seconds: int, out: Path, gil: bool) -> list[subprocess.Popen[bytes]]:
    """py-spy on each of these processes for `seconds`: collapsed stacks of all of them (merged
    afterwards), and a flame graph (SVG, py-spy's own renderer) of the first; with `gil`, only the
    thread holding the GIL is sampled: where the Python CPU goes, not the waits."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    common = ["--rate", str(RATE_HZ), "--duration", str(seconds), "--nonblocking", "--threads"]
    common += ["--gil"] if gil else []
    jobs = [
        [py_spy, "record", "--pid", str(pid), *common, "--format", "raw", "--output", f"{out}.{pid}.raw"]
        for pid in pids
    ]
    jobs.append(
        [py_spy, "record", "--pid", str(pids[0]), *common, "--format", "flamegraph", "--output", f"{out}.svg"]
    )
    return [subprocess.Popen(j, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for j in jobs]


def hottest(stacks: dict[str, int], limit: int = 25) -> dict[str, list[tuple[str, float]]]:
    """Shares of the busy samples (idle threads left out): `ours`, the service's own functions
    (common/, functions/) with what they call; `leaves`, where the samples were taken."""
    busy = {s: n for s, n in stacks.items() if not _idle(s)}
    total = sum(busy.values()) or 1
    ours: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    for stack, n in busy.items():
        frames = stack.split(";")
        for frame in {f for f in frames if "(common/" in f or "(main.py" in f}:
            ours[frame] += n
        leaves[frames[-1]] += n

    def shares(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(f, round(100 * n / total, 1)) for f, n in counter.most_common(limit)]

    return {"ours": shares(ours), "leaves": shares(leaves)}


def _idle(stack: str) -> bool:
    leaf = stack.rsplit(";", 1)[-1]
    return any(w in leaf for w in ("select (selectors.py", "wait (threading.py", "_worker (concurrent"))


def collapse(out: Path) -> dict[str, int]:
    stacks: Counter[str] = Counter()
    for raw in out.parent.glob(f"{out.name}.*.raw"):
        for line in raw.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if stack:
                # One process looks like another: drop the thread and process ids.
                frames = [f for f in stack.split(";") if not f.startswith(("thread (", "process "))]
                stacks[";".join(frames)] += int(count)
        raw.unlink()
    return dict(stacks)


def run(names: list[str], seconds: int, gil: bool) -> dict[str, Any]:
    secret = "profile-" + os.urandom(16).hex()
    findings: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="mprof", dir="/tmp") as tmp:
        url, stop_database = database(Path(tmp))
        env = bench_env(url, secret, "presign-" + os.urandom(16).hex())
        rehearsal = Rehearsal(data_dir=Path(tmp) / "data", env=env)
        try:
            rehearsal.start()
            token = issue_hs256(secret, "bench", ["media:read", "media:write"], ttl_seconds=7200)
            auth = {"Authorization": f"Bearer {token}"}
            _, big = upload_multipart(rehearsal.base, auth, Payload(GiB))
            _, small = upload_multipart(rehearsal.base, auth, Payload(1024))
            for name in names:
                function = "upload" if name in ("upload", "presigned") else "download"
                pids = [pid for p in rehearsal.processes[function] for pid in p.pids()[1:]]
                out = RESULTS / f"profile-{name}{'-gil' if gil else ''}"
                spy = record(pids, seconds, out, gil)
                load = _load(name, rehearsal, auth, big, small, seconds)
                for spy_process in spy:
                    spy_process.wait(seconds + 30)
                stacks = collapse(out)
                floor = sum(stacks.values()) / 1000  # the stacks of a tenth of a percent or more
                out.with_suffix(".txt").write_text(
                    json.dumps({"load": load, "hottest": hottest(stacks)}, indent=1)
                    + "\n\n"
                    + "".join(
                        f"{s} {n}\n" for s, n in sorted(stacks.items(), key=lambda kv: -kv[1]) if n >= floor
                    )
                )
                findings[name] = {"load": load, "hottest": hottest(stacks, 15)}
        finally:
            rehearsal.stop()
            stop_database()
    return findings


def _load(
    name: str,
    rehearsal: Rehearsal,
    auth: dict[str, str],
    big: dict[str, Any],
    small: dict[str, Any],
    seconds: int,
) -> dict[str, Any]:
    content = f"/media/{big['id']}/content"
    if name == "metadata":
        return wrk(f"{rehearsal.base}/media/{big['id']}", 16, auth, seconds=seconds)
    if name == "range":
        return wrk(
            rehearsal.base + content, 16, auth, WRK_SCRIPT.format(size=GiB, path=content), seconds=seconds
        )
    if name == "small":
        return wrk(f"{rehearsal.base}/media/{small['id']}/content", 16, auth, seconds=seconds)
    done = threading.Event()
    threading.Timer(seconds, done.set).start()
    count = 0
    while not done.is_set() and count < MAX_UPLOADS:
        if name == "upload":
            upload_multipart(rehearsal.base, auth, Payload(UPLOAD_SIZE))
        else:
            upload_presigned(rehearsal.base, auth, UPLOAD_SIZE)
        count += 1
    return {"uploads": count, "mib": count * UPLOAD_SIZE // MiB}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n")[0])
    parser.add_argument("scenarios", nargs="*", default=list(SCENARIOS), choices=SCENARIOS)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--gil", action="store_true", help="sample only the thread holding the GIL")
    args = parser.parse_args()
    findings = run(args.scenarios, min(args.seconds, 60), args.gil)
    for name, f in findings.items():
        print(f"\n{name}: {f['load']}")
        for kind in ("ours", "leaves"):
            print(f"  {kind}:")
            for frame, share in f["hottest"][kind]:
                print(f"    {share:5.1f}%  {frame}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
