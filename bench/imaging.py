"""`make bench` (second part): the full variant set of `common.imaging` on generated 12 and 24 MP
photos, with Pillow (what the process function uses) and with libvips (pyvips, the same set:
shrink-on-load, the same widths, formats and qualities), each engine in a process of its own so
its peak RSS is its own. Figures: milliseconds per megapixel of the original and peak RSS,
the median of `ROUNDS` interleaved runs, on one core (the child is pinned to CPU 0). Targets:
< 150 ms/MP for the whole set, peak RSS < 300 MiB for a 24 MP photo.

Written to bench/results/imaging.json. `python -m bench.imaging` runs it alone.
"""

from __future__ import annotations

import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import save
from common import imaging
from localdev.harness import photo_pixels

# JPEG decodes shrunk (by 2, 4 or 8) to the widest variant, so its cost follows the output
# pixels; the PNG shows a full decode.
PHOTOS = {
    "12 MP JPEG": (4000, 3000, "JPEG"),
    "24 MP JPEG": (6000, 4000, "JPEG"),
    "12 MP PNG": (4000, 3000, "PNG"),
}
ROUNDS = 3
ENGINES = ("pillow", "vips")
RESULTS = Path(__file__).resolve().parent / "results" / "imaging.json"


def encoded_photo(width: int, height: int, fmt: str) -> bytes:
    buf = io.BytesIO()
    photo_pixels(width, height).save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def with_pillow(data: bytes, out: Path) -> int:
    original = out / "original"
    original.write_bytes(data)
    return len(imaging.render(original, out).variants)


def with_vips(data: bytes, out: Path) -> int:
    """The same set with libvips: decode once, shrunk on load to the widest variant, then each
    narrower one from the previous; metadata dropped but the ICC profile."""
    import pyvips

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
    os.sched_setaffinity(0, {0})
    data = Path(path).read_bytes()
    with tempfile.TemporaryDirectory(prefix="mbench-img") as out:
        started = time.perf_counter()
        made = (with_pillow if engine == "pillow" else with_vips)(data, Path(out))
        seconds = time.perf_counter() - started
    # VmHWM, not the parent's wait4 ru_maxrss: Linux carries a process's maxrss across fork and
    # exec, so the child would report the parent's own peak (the photos it generated).
    hwm = next(
        line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:")
    )
    print(json.dumps({"seconds": seconds, "variants": made, "peak_rss_mib": int(hwm.split()[1]) / 1024}))
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


def main() -> int:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="mbench-photos") as tmp:
        for label, (width, height, fmt) in PHOTOS.items():
            path = Path(tmp) / f"{width}x{height}.{fmt.lower()}"
            path.write_bytes(encoded_photo(width, height, fmt))
            megapixels = width * height / 1e6
            runs: dict[str, list[tuple[float, int, float]]] = {e: [] for e in ENGINES}
            deadline = time.monotonic() + 600
            for i in range(ROUNDS):
                for engine in ENGINES[i % 2 :] + ENGINES[: i % 2]:  # alternate who goes first
                    runs[engine].append(run_one(engine, path))
                if time.monotonic() > deadline:
                    break
            for engine, results in runs.items():
                seconds = statistics.median(r[0] for r in results)
                rows.append(
                    {
                        "photo": label,
                        "engine": engine,
                        "rounds": len(results),
                        "variants": results[0][1],
                        "seconds": round(seconds, 2),
                        "ms_per_mp": round(1000 * seconds / megapixels),
                        "peak_rss_mib": round(max(r[2] for r in results)),
                    }
                )
    result = {"rows": rows, "targets": {"ms_per_mp": "< 150", "peak_rss_mib_24mp": "< 300"}}
    print("\nThe full variant set, one core, median of interleaved runs")
    for r in rows:
        print(
            f"  {r['photo']:<10} {r['engine']:<7} {r['seconds']:>6} s  {r['ms_per_mp']:>5} ms/MP"
            f"  peak RSS {r['peak_rss_mib']:>4} MiB  ({r['variants']} variants, {r['rounds']} runs)"
        )
    save(RESULTS, result)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        sys.exit(child(sys.argv[2], sys.argv[3]))
    sys.exit(main())
