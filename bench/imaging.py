"""`make bench` (second part): the full variant set of `common.imaging` on generated 12 and 24 MP
photos (JPEG, PNG, WebP and an iPhone-like HEIC), measured three ways, each run in a process of
its own so that its peak RSS is its own:
- `render`: Pillow in the measuring process (the decoding and encoding alone);
- `render_isolated`: what the process function runs, the same in a child process (`python -m
  common.imaging` under its RLIMIT_AS), so the child's start-up is in the figures (and shown on
  its own, on an image with nothing to make);
- `vips`: libvips (pyvips, the same set: shrink-on-load, the same widths, formats and
  qualities), the alternative measured against Pillow. It cannot decode HEIC (pyvips-binary has
  no HEVC decoder).
Figures: milliseconds per megapixel of the original, peak RSS and peak RSS per megapixel, the
median time (and the largest peak) of `ROUNDS` interleaved runs, on one core (the measuring
process is pinned to CPU 0, and so is the decoder child it starts). Then issue #16's targets as a
table with a pass/fail mark (bench/targets.py), judged on `render_isolated`: < 150 ms/MP for the
whole set, peak RSS < 300 MiB for a 24 MP photo.

Written to bench/results/imaging.json. `python -m bench.imaging` runs it alone.
"""

from __future__ import annotations

import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import save
from bench.targets import imaging_targets, print_targets
from common import imaging
from localdev.harness import photo_pixels

# JPEG decodes shrunk (by 2, 4 or 8) to the widest variant, so its cost follows the output
# pixels; every other format is a full decode. The HEIC is written as iPhones write theirs: a grid
# of 512 px tiles.
PHOTOS = {
    "12 MP JPEG": (4000, 3000, "JPEG"),
    "24 MP JPEG": (6000, 4000, "JPEG"),
    "12 MP PNG": (4000, 3000, "PNG"),
    "24 MP PNG": (6000, 4000, "PNG"),
    "24 MP WebP": (6000, 4000, "WEBP"),
    "24 MP HEIC": (6000, 4000, "HEIF"),
}
ROUNDS = 3
ENGINES = ("render", "render_isolated", "vips")
SERVICE = "render_isolated"  # what the process function runs: the targets are judged on it
CANNOT = {("vips", "HEIF")}  # pyvips-binary has no HEVC decoder
RESULTS = Path(__file__).resolve().parent / "results" / "imaging.json"


def encoded_photo(width: int, height: int, fmt: str) -> bytes:
    buf = io.BytesIO()
    picture = photo_pixels(width, height)
    if fmt == "HEIF":
        import pillow_heif

        pillow_heif.register_heif_opener()
        pillow_heif.options.GRID_TILE_SIZE = 512
        try:
            picture.save(buf, fmt, quality=90)
        finally:
            pillow_heif.options.GRID_TILE_SIZE = 0
    else:
        picture.save(buf, fmt, **({"quality": 90} if fmt in ("JPEG", "WEBP") else {}))
    return buf.getvalue()


def with_render(path: Path, out: Path) -> int:
    return len(imaging.render(path, out).variants)


def with_render_isolated(path: Path, out: Path) -> int:
    return len(imaging.render_isolated(path, out).variants)


def with_vips(path: Path, out: Path) -> int:
    """The same set with libvips: decode once, shrunk on load to the widest variant, then each
    narrower one from the previous; metadata dropped but the ICC profile."""
    import pyvips

    data = path.read_bytes()
    keep = pyvips.enums.ForeignKeep.ICC
    first = pyvips.Image.new_from_buffer(data, "")
    width = first.width
    widths = sorted((w for w in imaging.WIDTHS if w <= width), reverse=True)
    source = pyvips.Image.thumbnail_buffer(data, widths[0], height=10_000_000).copy_memory()
    made = 0
    for w in widths:
        image = source if source.width == w else source.resize(w / source.width, kernel="lanczos3")
        (out / f"{w}.avif").write_bytes(
            image.heifsave_buffer(
                compression="av1", Q=imaging.QUALITY["avif"], effort=9 - imaging.AVIF_SPEED, keep=keep
            )
        )
        (out / f"{w}.webp").write_bytes(image.webpsave_buffer(Q=imaging.QUALITY["webp"], effort=4, keep=keep))
        made += 2
        if w == min(imaging.FALLBACK_WIDTH, width):
            (out / f"{w}.jpeg").write_bytes(
                image.jpegsave_buffer(
                    Q=imaging.QUALITY["jpeg"], optimize_coding=True, interlace=True, keep=keep
                )
            )
            made += 1
        source = image
    return made


def child(engine: str, path: str) -> int:
    os.sched_setaffinity(0, {0})  # and the decoder child render_isolated starts inherits it
    run = {"render": with_render, "render_isolated": with_render_isolated, "vips": with_vips}[engine]
    with tempfile.TemporaryDirectory(prefix="mbench-img") as out:
        started = time.perf_counter()
        made = run(Path(path), Path(out))
        seconds = time.perf_counter() - started
    if engine == "render_isolated":
        # The decoder child's peak: its ru_maxrss, which Linux starts at this process's peak when
        # it spawns the child (carried across exec) and this process stays small (it passes a
        # path, never reads the photo): so the figure is the child's, at worst a little above.
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    else:
        # VmHWM, not the parent's wait4 ru_maxrss, for the same reason: this process's would
        # start at the parent's own peak (the photos it generated).
        hwm = next(
            line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:")
        )
        peak_kib = int(hwm.split()[1])
    print(json.dumps({"seconds": seconds, "variants": made, "peak_rss_mib": peak_kib / 1024}))
    return 0


def run_one(engine: str, path: Path) -> tuple[float, int, float]:
    """(seconds, variants, peak RSS MiB) of one engine on one photo, in its own process."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.imaging", "--child", engine, str(path)], stdout=subprocess.PIPE
    )
    assert proc.stdout is not None  # bounded: the child's own run, and wait(600)
    out = proc.stdout.read()
    assert proc.wait(600) == 0, out
    doc = json.loads(out)
    return float(doc["seconds"]), int(doc["variants"]), float(doc["peak_rss_mib"])


def startup(tmp: Path) -> dict[str, Any]:
    """render_isolated on an image with nothing to make (16 x 16 px): the child's start-up alone."""
    path = tmp / "16x16.png"
    path.write_bytes(encoded_photo(16, 16, "PNG"))
    runs = [run_one(SERVICE, path) for _ in range(ROUNDS)]
    return {
        "seconds": round(statistics.median(r[0] for r in runs), 3),
        "peak_rss_mib": round(max(r[2] for r in runs)),
    }


def main() -> int:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="mbench-photos") as tmp:
        started = startup(Path(tmp))
        for label, (width, height, fmt) in PHOTOS.items():
            path = Path(tmp) / f"{width}x{height}.{fmt.lower()}"
            path.write_bytes(encoded_photo(width, height, fmt))
            megapixels = width * height / 1e6
            engines = [e for e in ENGINES if (e, fmt) not in CANNOT]
            runs: dict[str, list[tuple[float, int, float]]] = {e: [] for e in engines}
            deadline = time.monotonic() + 600
            for i in range(ROUNDS):
                for engine in engines[i % len(engines) :] + engines[: i % len(engines)]:  # who goes first
                    runs[engine].append(run_one(engine, path))
                if time.monotonic() > deadline:
                    break
            for engine, results in runs.items():
                seconds = statistics.median(r[0] for r in results)
                peak = max(r[2] for r in results)
                rows.append(
                    {
                        "photo": label,
                        "engine": engine,
                        "megapixels": megapixels,
                        "rounds": len(results),
                        "variants": results[0][1],
                        "seconds": round(seconds, 2),
                        "ms_per_mp": round(1000 * seconds / megapixels),
                        "peak_rss_mib": round(peak),
                        "peak_rss_mib_per_mp": round(peak / megapixels, 1),
                    }
                )
    table = imaging_targets(rows, SERVICE)
    result = {
        "rows": rows,
        "render_isolated_startup": started,
        "targets": {"ms_per_mp": "< 150", "peak_rss_mib_24mp": "< 300"},
        "targets_table": table,
    }
    print("\nThe full variant set, one core, median of interleaved runs (peak RSS: the largest)")
    for r in rows:
        print(
            f"  {r['photo']:<10} {r['engine']:<15} {r['seconds']:>5} s  {r['ms_per_mp']:>4} ms/MP"
            f"  peak RSS {r['peak_rss_mib']:>4} MiB ({r['peak_rss_mib_per_mp']:>5} MiB/MP)"
            f"  {r['variants']} variants, {r['rounds']} runs"
        )
    for engine, fmt in sorted(CANNOT):
        print(f"  ({engine} cannot decode {fmt}: not measured)")
    print(
        f"  render_isolated's child start-up alone (16 x 16 PNG, nothing to make):"
        f" {started['seconds']} s, peak RSS {started['peak_rss_mib']} MiB"
    )
    print_targets(table, "Targets (issue #16), from this run")
    save(RESULTS, result)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        sys.exit(child(sys.argv[2], sys.argv[3]))
    sys.exit(main())
