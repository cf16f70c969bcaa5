"""`make bench`: stream 100 MiB and 1 GiB up and down through `make run`'s stack; report throughput
and the serving processes' peak RSS (target: under 150 MiB whatever the file size).

Traffic goes to 127.0.0.1 only; each transfer runs once per size, so the run stops by itself.
Uses MEDIA_DATABASE_URL when set, else the embedded PostgreSQL. Figures are printed and written to
bench/results/transfer.json. Read them with ../shared/notes/benchmarking-here.md in mind: compare
ratios from one run, not absolute numbers across runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from common.tokens import issue_hs256
from localdev.harness import (
    MULTIPART_CONTENT_TYPE,
    GeneratedFile,
    LocalStack,
    multipart_stream,
    peak_rss_bytes,
)

MiB = 1024 * 1024
SIZES = (100 * MiB, 1024 * MiB)
RSS_TARGET = 150 * MiB
RESULTS = Path(__file__).resolve().parent / "results" / "transfer.json"


def transfer(stack: LocalStack, token: str, size: int) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {token}"}
    body = GeneratedFile(size)
    started = time.perf_counter()
    up = requests.post(
        stack.base + "/media",
        headers={**auth, "Content-Type": MULTIPART_CONTENT_TYPE},
        data=multipart_stream(body),
        timeout=900,
    )
    upload_s = time.perf_counter() - started
    up.raise_for_status()
    doc = up.json()
    if doc["sha256"] != body.sha256:
        raise SystemExit("upload digest mismatch")

    digest = hashlib.sha256()
    started = time.perf_counter()
    with requests.get(doc["url"], stream=True, timeout=900) as down:  # the signed link
        down.raise_for_status()
        for chunk in down.iter_content(MiB):
            digest.update(chunk)
    download_s = time.perf_counter() - started
    if digest.hexdigest() != body.sha256:
        raise SystemExit("download digest mismatch")
    requests.delete(doc["links"]["self"], headers=auth, timeout=60).raise_for_status()
    return {
        "size_mib": size // MiB,
        "upload_mib_s": round(size / MiB / upload_s, 1),
        "download_mib_s": round(size / MiB / download_s, 1),
    }


def main() -> int:
    secret = "bench-secret-" + os.urandom(16).hex()
    env = {"MEDIA_JWT_SECRET": secret, "MEDIA_MAX_UPLOAD_BYTES": str(2 * max(SIZES))}
    if os.environ.get("MEDIA_DATABASE_URL"):
        env["MEDIA_DATABASE_URL"] = os.environ["MEDIA_DATABASE_URL"]
    with tempfile.TemporaryDirectory(prefix="mbench", dir="/tmp") as tmp:
        stack = LocalStack(data_dir=Path(tmp), env=env).start(timeout=120)
        try:
            token = issue_hs256(secret, "bench")
            rows = [transfer(stack, token, size) for size in SIZES]
            peaks = {str(pid): round(peak_rss_bytes(pid) / MiB, 1) for pid in stack.server_pids()}
        finally:
            stack.stop()
    worst = max(peaks.values())
    result = {
        "transfers": rows,
        "peak_rss_mib": peaks,
        "rss_target_mib": RSS_TARGET // MiB,
        "rss_ok": worst < RSS_TARGET / MiB,
    }
    print(f"{'size':>8} {'upload MiB/s':>13} {'download MiB/s':>15}")
    for row in rows:
        print(f"{row['size_mib']:>5} MiB {row['upload_mib_s']:>13} {row['download_mib_s']:>15}")
    verdict = "ok" if result["rss_ok"] else "MISSED"
    print(f"peak RSS per serving process (MiB): {peaks}  target < {RSS_TARGET // MiB}: {verdict}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {RESULTS}")
    return 0 if result["rss_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
