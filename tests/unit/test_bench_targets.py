"""make bench's targets table (issue #19): each row is judged against its target, from one run."""

from __future__ import annotations

from typing import Any

from bench.targets import targets_table


def run(
    rps: float = 5000, p99: float = 8, ratio: float = 1.0, rss: float = 60, cold: float = 0.3
) -> dict[str, Any]:
    wrk = {"connections": 16, "rps": rps, "p50_ms": 1.0, "p99_ms": p99, "non_2xx": 0}
    transfer = {
        "multipart_vs_nginx_put": ratio,
        "presigned_vs_nginx_put": ratio,
        "download_vs_nginx": ratio,
    }
    return {
        "metadata": [{**wrk, "connections": 1}, wrk],
        "ranges_64k": [{"service": wrk, "nginx": wrk}],
        "small_content_get": {"service": wrk},
        "transfers": [{"size_mib": 100, **transfer}, {"size_mib": 1024, **transfer}],
        "make_run_small_get": wrk,
        "peak_rss_mib": {"upload:1": rss, "download:2": rss / 2},
        "cold_start_s": {"upload:1": cold},
    }


def test_a_run_that_meets_every_target_passes_every_row() -> None:
    rows = targets_table(run())
    assert len(rows) == 8
    assert all(row["met"] for row in rows), rows
    assert rows[0]["target"] == ">= 4,500 req/s, p99 < 10 ms"


def test_each_row_fails_on_its_own_figure() -> None:
    slow = {row["figure"]: row["met"] for row in targets_table(run(rps=3000))}
    assert not slow["metadata GET, c=16"] and slow["make run, 1 KiB content GET, c=16"]  # >= 2,500
    slower = {row["figure"]: row["met"] for row in targets_table(run(rps=2000))}
    assert not slower["make run, 1 KiB content GET, c=16"]
    assert slow["multipart upload 100 MiB / 1 GiB vs nginx"]  # a ratio row is not about req/s
    tail = {row["figure"]: row["met"] for row in targets_table(run(p99=12))}
    assert not tail["64 KiB random ranges, c=16"] and tail["make run, 1 KiB content GET, c=16"]
    behind = {row["figure"]: row["met"] for row in targets_table(run(ratio=0.86))}
    assert behind["multipart upload 100 MiB / 1 GiB vs nginx"]
    assert not behind["presigned PUT 100 MiB / 1 GiB vs nginx"]
    assert not behind["large download 100 MiB / 1 GiB vs nginx"]
    heavy = {row["figure"]: row["met"] for row in targets_table(run(rss=120))}
    assert not heavy["peak RSS per process, cold start"]


def test_errors_fail_a_throughput_row_whatever_its_speed() -> None:
    r = run()
    r["metadata"][1] = {**r["metadata"][1], "non_2xx": 3}
    rows = {row["figure"]: row["met"] for row in targets_table(r)}
    assert not rows["metadata GET, c=16"]
