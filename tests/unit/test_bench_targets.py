"""make bench's targets tables (issues #19 and #16): each row is judged against its target, from one
run."""

from __future__ import annotations

from typing import Any

from bench.targets import imaging_targets, targets_table


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


def imaging_row(photo: str, engine: str, megapixels: float, ms_per_mp: int, rss: int) -> dict[str, Any]:
    return {
        "photo": photo,
        "engine": engine,
        "megapixels": megapixels,
        "ms_per_mp": ms_per_mp,
        "peak_rss_mib": rss,
    }


def test_the_imaging_targets_judge_the_service_path_per_photo() -> None:
    rows = [
        imaging_row("12 MP PNG", "render_isolated", 12.0, 90, 400),  # RSS is judged at 24 MP only
        imaging_row("24 MP PNG", "render_isolated", 24.0, 149, 299),
        imaging_row("24 MP PNG", "render", 24.0, 500, 900),  # another engine: not in the table
    ]
    table = imaging_targets(rows, "render_isolated")
    assert [(row["figure"], row["met"]) for row in table] == [
        ("12 MP PNG, render_isolated", True),
        ("24 MP PNG, render_isolated", True),
    ]
    assert table[0]["target"] == "< 150 ms/MP" and table[0]["value"] == "90 ms/MP"
    assert table[1]["target"] == "< 150 ms/MP, < 300 MiB" and table[1]["value"] == "149 ms/MP, peak 299 MiB"


def test_each_imaging_target_fails_on_its_own_figure() -> None:
    slow = imaging_targets([imaging_row("12 MP JPEG", "render_isolated", 12.0, 150, 100)], "render_isolated")
    heavy = imaging_targets([imaging_row("24 MP WebP", "render_isolated", 24.0, 60, 300)], "render_isolated")
    larger = imaging_targets([imaging_row("48 MP PNG", "render_isolated", 48.0, 60, 310)], "render_isolated")
    assert [slow[0]["met"], heavy[0]["met"], larger[0]["met"]] == [False, False, False]
