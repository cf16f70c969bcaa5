"""Responsive variants of a raster image: what to make (pure), making it (Pillow), and making it in
a child process that a hostile image can only kill itself.

What is made, for an original of width W (the recipe, `RECIPE`; its version keys the work):
- AVIF and WebP at each of `WIDTHS` not wider than W (never upscaled), and a JPEG at 1280 (or W
  when narrower) for the browsers that take neither;
- EXIF orientation applied, so the pixels come out upright; every other piece of metadata (EXIF
  with its GPS tags, XMP, IPTC, comments) dropped; a colour profile converted to sRGB, and the
  sRGB profile kept;
- `width`/`height` (upright), a BlurHash placeholder and the dominant colour.
A quality gate (`keep`) drops a variant larger than the next-wider one of its format, larger than
the original, or of the wrong dimensions.

Pillow, with pillow-heif for HEIC/HEIF, was chosen over libvips after measuring both on the same
photos (`make bench`, bench/imaging.py, one core): JPEG originals alike (12 MP: 53 ms/MP each,
peak RSS 134 MiB Pillow, 147 MiB libvips; 24 MP: 28 vs 26 ms/MP, 151 vs 153 MiB), a full PNG decode
in libvips' favour (79 vs 57 ms/MP, 226 vs 163 MiB); but the self-contained libvips wheel
(pyvips-binary) cannot decode HEIC at all (no HEVC decoder), and iPhones upload HEIC. One library
for every format, both targets met (< 150 ms/MP, < 300 MiB at 24 MP).

Safety (`render_isolated`): the decoder runs in a child process (`python -m common.imaging`) whose
address space is capped (`RLIMIT_AS`) and whose run is timed out; the pixel count is checked
against `max_pixels` from the header, before any pixel is decoded; truncated files fail rather
than decode half. Whatever happens to the child, the caller gets a `Rendition` or `ImageRejected`
with a reason.
"""

from __future__ import annotations

import io
import json
import resource
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

RECIPE = 1  # bump when what is made changes: every original is then processed again
WIDTHS = (320, 640, 1280, 1920)
FALLBACK_WIDTH = 1280  # the JPEG
FORMATS = {"avif": "image/avif", "webp": "image/webp", "jpeg": "image/jpeg"}
QUALITY = {"avif": 60, "webp": 75, "jpeg": 80}
AVIF_SPEED = 8  # libavif's 0-10: 8 halves the time of the default 6 for ~0.3 dB (bench notes)
# Raster types only: never SVG, PDF or anything that can carry scripts. GIF is left out (animated
# images would lose their frames); it is served as it is.
PROCESSABLE = frozenset({"image/jpeg", "image/png", "image/webp", "image/avif", "image/heic", "image/heif"})


class ImageRejected(Exception):
    """The image cannot be processed; `reason` says why (recorded, shown as `processing.reason`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Limits:
    max_pixels: int = 50_000_000  # MEDIA_PROCESS_MAX_PIXELS: above it, refused from the header
    memory_bytes: int = 1024 * 1024 * 1024  # MEDIA_PROCESS_MEMORY_BYTES: the child's RLIMIT_AS
    seconds: float = 60.0  # MEDIA_PROCESS_TIMEOUT_SECONDS: per image, the whole set


@dataclass(frozen=True)
class Spec:
    """One variant to make."""

    format: str  # avif | webp | jpeg
    width: int
    height: int


@dataclass(frozen=True)
class Variant:
    format: str
    width: int
    height: int
    path: Path  # the encoded bytes, in the caller's work directory


@dataclass(frozen=True)
class Rendition:
    width: int  # the original, upright
    height: int
    blurhash: str
    dominant_color: str  # #rrggbb
    variants: tuple[Variant, ...]


# --- what to make: pure -----------------------------------------------------------------------


def scaled_height(width: int, height: int, to_width: int) -> int:
    return max(1, round(height * to_width / width))


def plan(width: int, height: int) -> list[Spec]:
    """The variants of an upright `width` x `height` original, widest first within a format."""
    widths = [w for w in WIDTHS if w <= width]
    specs = [
        Spec(fmt, w, scaled_height(width, height, w))
        for fmt in ("avif", "webp")
        for w in sorted(widths, reverse=True)
    ]
    fallback = min(FALLBACK_WIDTH, width)
    if widths:  # an image narrower than the narrowest width gets nothing: its original is served
        specs.append(Spec("jpeg", fallback, scaled_height(width, height, fallback)))
    return specs


@dataclass(frozen=True)
class Made:
    """What an encoder produced, as the gate sees it."""

    format: str
    width: int
    height: int
    size: int


def keep(made: Sequence[Made], planned: Sequence[Spec], original_size: int) -> list[bool]:
    """The quality gate, one answer per variant (in `made`'s order): dropped when of the wrong
    dimensions, larger than the original, or larger than the next-wider kept one of its format."""
    expected = {(s.format, s.width): s.height for s in planned}
    verdicts = [False] * len(made)
    narrowest_kept: dict[str, int] = {}  # format -> the size of the last one kept, widest first
    for i in sorted(range(len(made)), key=lambda i: (made[i].format, -made[i].width)):
        v = made[i]
        ceiling = narrowest_kept.get(v.format, original_size)
        if expected.get((v.format, v.width)) == v.height and v.size <= min(ceiling, original_size):
            verdicts[i] = True
            narrowest_kept[v.format] = v.size
    return verdicts


# --- making it: Pillow ------------------------------------------------------------------------


def render(original: Path, out: Path, limits: Limits = Limits()) -> Rendition:
    """Decode `data`, make every planned variant into `out`, and describe them. ImageRejected
    when the image is refused (too many pixels, not an image, truncated, an unknown format)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    _register_heif()
    Image.MAX_IMAGE_PIXELS = None  # checked here, from the header, with our own limit
    try:
        image = Image.open(original)  # read as decoded: never the whole file in memory at once
        if image.width * image.height > limits.max_pixels:
            raise ImageRejected(
                f"{image.width} x {image.height} pixels is over the limit of {limits.max_pixels}"
            )
        turned = image.getexif().get(_ORIENTATION, 1) in (5, 6, 7, 8)
        width, height = (image.height, image.width) if turned else image.size  # upright
        if image.format == "JPEG":
            # Decode already shrunk (JPEG's DCT scaling, by 2, 4 or 8) to no less than the
            # widest variant: most of a large photo's decoding time and memory.
            widest = min(max(WIDTHS), width)
            image.draft("RGB", (1, widest) if turned else (widest, 1))
        image.load()
        rgb = _srgb(ImageOps.exif_transpose(image))
    except ImageRejected:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageRejected(f"cannot decode the image: {exc}") from None
    specs = plan(width, height)
    made: list[tuple[Spec, Path]] = []
    source = rgb
    for spec in sorted(specs, key=lambda s: -s.width):  # each from the previous: cheaper resizes
        resized = (
            source
            if source.size == (spec.width, spec.height)
            else source.resize((spec.width, spec.height), Image.Resampling.LANCZOS)
        )
        path = out / f"{spec.width}.{spec.format}"
        _encode(resized, spec.format, path)
        made.append((spec, path))
        if spec.format != "jpeg":
            source = resized
    made_sizes = [Made(s.format, s.width, s.height, p.stat().st_size) for s, p in made]
    verdicts = keep(made_sizes, specs, original.stat().st_size)
    variants = []
    for (spec, path), ok in zip(made, verdicts, strict=True):
        if ok:
            variants.append(Variant(spec.format, spec.width, spec.height, path))
        else:
            path.unlink()
    return Rendition(width, height, _blurhash(rgb), _dominant(rgb), tuple(variants))


def _register_heif() -> None:
    import pillow_heif

    pillow_heif.register_heif_opener()


_ORIENTATION = 0x0112  # the EXIF tag


def _srgb(image: Any) -> Any:
    """RGB or RGBA pixels in sRGB, with no metadata but the sRGB profile."""
    from PIL import Image, ImageCms

    icc = image.info.get("icc_profile")
    alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    mode = "RGBA" if alpha else "RGB"
    converted = image.convert(mode)
    if icc:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            converted = (
                ImageCms.profileToProfile(converted, source, _srgb_profile(), outputMode=mode) or converted
            )
        except (ImageCms.PyCMSError, OSError):
            pass  # an unreadable profile: the pixels as they are
    clean = Image.new(mode, converted.size)
    clean.paste(converted)
    clean.info = {}
    return clean


@cache
def _srgb_profile() -> Any:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def _encode(image: Any, fmt: str, path: Path) -> None:
    from PIL import Image

    icc = _srgb_profile().tobytes()
    if fmt == "jpeg":
        if image.mode == "RGBA":
            flat = Image.new("RGB", image.size, (255, 255, 255))
            flat.paste(image, mask=image.getchannel("A"))
            image = flat
        image.save(path, "JPEG", quality=QUALITY["jpeg"], optimize=True, progressive=True, icc_profile=icc)
    elif fmt == "webp":
        image.save(path, "WEBP", quality=QUALITY["webp"], method=4, icc_profile=icc)
    else:
        image.save(path, "AVIF", quality=QUALITY["avif"], speed=AVIF_SPEED, icc_profile=icc)


def _blurhash(image: Any) -> str:
    import blurhash
    from PIL import Image

    tiny = image.convert("RGB")
    tiny.thumbnail((32, 32), Image.Resampling.BOX)
    x, y = (4, 3) if tiny.width >= tiny.height else (3, 4)
    pixels = [[list(tiny.getpixel((i, j))) for i in range(tiny.width)] for j in range(tiny.height)]
    return str(blurhash.encode(pixels, components_x=x, components_y=y))


def _dominant(image: Any) -> str:
    from PIL import Image

    r, g, b = image.convert("RGB").resize((1, 1), Image.Resampling.BOX).getpixel((0, 0))
    return f"#{r:02x}{g:02x}{b:02x}"


# --- in a child process ---------------------------------------------------------------------------


def render_isolated(original: bytes | Path, workdir: Path, limits: Limits = Limits()) -> Rendition:
    """`render` in a child process capped at `limits.memory_bytes` of address space and
    `limits.seconds`, of the file `original` (or of these bytes, written to `workdir` first); its
    variants land in `workdir`. ImageRejected for anything that goes wrong in there, the child's
    death included."""
    source = workdir / "original"
    if isinstance(original, bytes):
        source.write_bytes(original)
    elif original != source:
        source = original
    command = [sys.executable, "-m", "common.imaging", str(source), str(workdir), json.dumps(asdict(limits))]
    try:
        done = subprocess.run(command, capture_output=True, timeout=limits.seconds, check=False)
    except subprocess.TimeoutExpired:
        raise ImageRejected(f"processing took longer than {limits.seconds:g} s") from None
    finally:
        if source.parent == workdir:
            source.unlink(missing_ok=True)
    if done.returncode != 0:
        tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        if done.returncode < 0 or "MemoryError" in tail[0]:
            raise ImageRejected(f"the decoder was stopped (signal or memory limit): {tail[0][:200]}")
        raise ImageRejected(tail[0][:300] or f"the decoder exited with {done.returncode}")
    doc = json.loads(done.stdout)
    if "rejected" in doc:
        raise ImageRejected(str(doc["rejected"]))
    return Rendition(
        width=int(doc["width"]),
        height=int(doc["height"]),
        blurhash=str(doc["blurhash"]),
        dominant_color=str(doc["dominant_color"]),
        variants=tuple(
            Variant(v["format"], int(v["width"]), int(v["height"]), workdir / Path(v["path"]).name)
            for v in doc["variants"]
        ),
    )


def _child(argv: list[str]) -> int:
    source, out, raw_limits = Path(argv[0]), Path(argv[1]), json.loads(argv[2])
    limits = Limits(**raw_limits)
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
    try:
        rendition = render(source, out, limits)
    except ImageRejected as exc:
        print(json.dumps({"rejected": exc.reason}))
        return 0
    except MemoryError:
        print(json.dumps({"rejected": f"over the memory limit of {limits.memory_bytes >> 20} MiB"}))
        return 0
    doc = asdict(rendition)
    for v in doc["variants"]:
        v["path"] = str(v["path"])
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
