"""The targets of issue #19 as one table, judged from one run of `bench.rehearsal`, and those of
issue #16 (image variants) from one run of `bench.imaging` (pure: the run's figures in, the rows
out; tests/unit/test_bench_targets.py)."""

from __future__ import annotations

from typing import Any


def targets_table(r: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's table (#19): each figure of this run against its target, and whether it is met."""
    by_c = {m["connections"]: m for m in r["metadata"]}
    ranges = {row["service"]["connections"]: row["service"] for row in r["ranges_64k"]}
    t = {row["size_mib"]: row for row in r["transfers"]}
    rows: list[dict[str, Any]] = []

    def add(figure: str, value: str, target: str, met: bool) -> None:
        rows.append({"figure": figure, "value": value, "target": target, "met": bool(met)})

    def rps_p99(figure: str, m: dict[str, Any], rps: float, p99: float) -> None:
        add(
            figure,
            f"{m['rps']:,.0f} req/s, p99 {m['p99_ms']} ms",
            f">= {rps:,.0f} req/s, p99 < {p99:g} ms",
            m["rps"] >= rps and m["p99_ms"] < p99 and m["non_2xx"] == 0,
        )

    rps_p99("metadata GET, c=16", by_c[16], 4500, 10)
    rps_p99("64 KiB random ranges, c=16", ranges[16], 4500, 10)
    rps_p99("1 KiB content GET, c=16 (make up)", r["small_content_get"]["service"], 4500, 10)
    for key, label, target in (
        ("multipart_vs_nginx_put", "multipart upload", 0.85),
        ("presigned_vs_nginx_put", "presigned PUT", 0.9),
        ("download_vs_nginx", "large download", 0.95),
    ):
        values = [t[size][key] for size in (100, 1024)]
        add(
            f"{label} 100 MiB / 1 GiB vs nginx",
            " / ".join(f"{v}x" for v in values),
            f">= {target}x",
            min(values) >= target,
        )
    m = r["make_run_small_get"]
    add(
        "make run, 1 KiB content GET, c=16",
        f"{m['rps']:,.0f} req/s, p99 {m['p99_ms']} ms",
        ">= 2,500 req/s",
        m["rps"] >= 2500 and m["non_2xx"] == 0,
    )
    rss = max(r["peak_rss_mib"].values())
    cold = max(r["cold_start_s"].values())
    add(
        "peak RSS per process, cold start",
        f"{rss} MiB, {cold} s",
        "< 100 MiB, < 0.4 s",
        rss < 100 and cold < 0.4,
    )
    return rows


# Issue #16: the full variant set of one photo on one core, and the peak RSS for a 24 MP one.
IMAGING_MS_PER_MP = 150
IMAGING_PEAK_RSS_MIB = 300
IMAGING_RSS_MEGAPIXELS = 24  # the RSS target is for photos this large (and larger)


def imaging_targets(rows: list[dict[str, Any]], engine: str) -> list[dict[str, Any]]:
    """bench.imaging's rows of `engine` (the service's own path), one per photo, each against the
    targets of issue #16: < 150 ms/MP for the whole set, and for 24 MP photos < 300 MiB peak RSS."""
    table: list[dict[str, Any]] = []
    for r in rows:
        if r["engine"] != engine:
            continue
        large = r["megapixels"] >= IMAGING_RSS_MEGAPIXELS
        value = f"{r['ms_per_mp']} ms/MP" + (f", peak {r['peak_rss_mib']} MiB" if large else "")
        target = f"< {IMAGING_MS_PER_MP} ms/MP" + (f", < {IMAGING_PEAK_RSS_MIB} MiB" if large else "")
        met = r["ms_per_mp"] < IMAGING_MS_PER_MP and (not large or r["peak_rss_mib"] < IMAGING_PEAK_RSS_MIB)
        table.append({"figure": f"{r['photo']}, {engine}", "value": value, "target": target, "met": met})
    return table


def print_targets(rows: list[dict[str, Any]], title: str = "Targets (issue #19), from this run") -> None:
    print(f"\n{title}")
    width = max(len(row["figure"]) for row in rows)
    value_width = max(len(row["value"]) for row in rows)
    print(f"  {'figure':<{width}}  {'this run':<{value_width}}  {'target':<28} met")
    for row in rows:
        mark = "pass" if row["met"] else "FAIL"
        print(f"  {row['figure']:<{width}}  {row['value']:<{value_width}}  {row['target']:<28} {mark}")
