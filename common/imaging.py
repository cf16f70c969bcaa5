"""Responsive variants of a raster image: what to make (pure), making it (Pillow), and making it in
a child process that a hostile image can only kill itself.

What is made, for an original of width W (the recipe, `RECIPE`; its version keys the work):
- AVIF and WebP at each of `WIDTHS` not wider than W (never upscaled), and a JPEG at 1280 (or W
  when narrower) for the browsers that take neither;
- an original of a type browsers cannot show (`UNDISPLAYABLE`: HEIC/HEIF) always gets variants:
  narrower than the narrowest width, AVIF, WebP and JPEG at its own width (still never upscaled),
  and its JPEG is kept even when larger than the original (a JPEG often is larger than a HEIC),
  so there is always something a browser can show; any other original narrower than 320 px gets
  none (it is served itself);
- EXIF orientation applied, so the pixels come out upright; every other piece of metadata (EXIF
  with its GPS tags, XMP, IPTC, comments) dropped; a colour profile converted to sRGB, and the
  sRGB profile kept;
- `width`/`height` (upright), a BlurHash placeholder and the dominant colour.
A quality gate (`keep`) drops a variant larger than the next-wider one of its format, larger than
the original (but that required JPEG), or of the wrong dimensions.

Memory (a 24 MP photo must stay under 300 MiB of peak RSS): a JPEG is decoded already shrunk to
the widest variant (DCT scaling); any other format is decoded whole, once, and that full-size
image is only ever resized, to the widest variant, and then dropped. Everything else (EXIF
orientation, the mode conversion, the colour profile to sRGB, the BlurHash, the dominant colour)
works on that widest variant, and each narrower width is resized from the one above it. A WebP
is decoded by libwebp's simple API into one buffer (`webp.py`): Pillow's binding holds three
full-size copies at once.

Pillow, with pillow-heif for HEIC/HEIF, was chosen over libvips after measuring both on the same
photos (`make bench`, bench/imaging.py, one core, Pillow in-process vs libvips): JPEG originals
alike (12 MP: 54 vs 55 ms/MP, peak RSS 106 vs 146 MiB; 24 MP: 26 vs 26 ms/MP, 98 vs 149 MiB), full
decodes faster with libvips (24 MP PNG: 38 vs 31 ms/MP, 161 vs 186 MiB; 24 MP WebP: 46 vs
38 ms/MP, 198 vs 137 MiB); but the self-contained libvips wheel (pyvips-binary) cannot decode HEIC
at all (no HEVC decoder), and iPhones upload HEIC (24 MP: 78 ms/MP, 242 MiB). One library for every
format. Through `render_isolated` (the child's start-up included: 0.07 s, 25 MiB) every photo
meets both targets (< 150 ms/MP; < 300 MiB at 24 MP: JPEG 92, PNG 154, WebP 190, HEIC 235 MiB).

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

from common import webp

# Bump when what is made changes: every original is then processed again (`backfill.py`).
# 2: a HEIC/HEIF narrower than 320 px gets variants too (1 made none), and only the widest variant
# is made from the full-size pixels.
RECIPE = 2
WIDTHS = (320, 640, 1280, 1920)
FALLBACK_WIDTH = 1280  # the JPEG
FORMATS = {"avif": "image/avif", "webp": "image/webp", "jpeg": "image/jpeg"}
QUALITY = {"avif": 60, "webp": 75, "jpeg": 80}
AVIF_SPEED = 8  # libavif's 0-10: 8 halves the time of the default 6 for ~0.3 dB (bench notes)
# Raster types only: never SVG, PDF or anything that can carry scripts. GIF is left out (animated
# images would lose their frames); it is served as it is.
PROCESSABLE = frozenset({"image/jpeg", "image/png", "image/webp", "image/avif", "image/heic", "image/heif"})
# What most browsers cannot show: such an original always gets variants, a JPEG among them.
UNDISPLAYABLE = frozenset({"image/heic", "image/heif"})


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
    # Kept even when larger than the original: the JPEG of an original browsers cannot show.
    required: bool = False


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


def plan(width: int, height: int, *, displayable: bool = True) -> list[Spec]:
    """The variants of an upright `width` x `height` original, widest first within a format.
    `displayable`: whether browsers can show the original itself (not so a HEIC, `UNDISPLAYABLE`):
    if not, it gets variants whatever its width, at its own width when narrower than the
    narrowest of `WIDTHS` (never upscaled), and its JPEG is `required`."""
    widths = [w for w in WIDTHS if w <= width]
    if not widths and not displayable:
        widths = [width]
    specs = [
        Spec(fmt, w, scaled_height(width, height, w))
        for fmt in ("avif", "webp")
        for w in sorted(widths, reverse=True)
    ]
    fallback = min(FALLBACK_WIDTH, width)
    if widths:  # a displayable image narrower than the narrowest width gets nothing: it is served
        specs.append(Spec("jpeg", fallback, scaled_height(width, height, fallback), required=not displayable))
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
    dimensions, larger than the original (unless its spec is `required`: the only variant some
    browsers can show of an original they cannot), or larger than the next-wider kept one of its
    format."""
    expected = {(s.format, s.width): s for s in planned}
    verdicts = [False] * len(made)
    narrowest_kept: dict[str, int] = {}  # format -> the size of the last one kept, widest first
    for i in sorted(range(len(made)), key=lambda i: (made[i].format, -made[i].width)):
        v = made[i]
        spec = expected.get((v.format, v.width))
        if spec is None or spec.height != v.height:
            continue
        ceiling = narrowest_kept.get(v.format)
        if not spec.required:
            ceiling = original_size if ceiling is None else min(ceiling, original_size)
        if ceiling is None or v.size <= ceiling:
            verdicts[i] = True
            narrowest_kept[v.format] = v.size
    return verdicts


# --- making it: Pillow ------------------------------------------------------------------------


def render(original: Path, out: Path, limits: Limits = Limits()) -> Rendition:
    """Decode the file `original`, make every planned variant into `out`, and describe them.
    ImageRejected when the image is refused (too many pixels, not an image, truncated, an unknown
    format)."""
    from PIL import Image, UnidentifiedImageError

    _register_heif()
    Image.MAX_IMAGE_PIXELS = None  # checked here, from the header, with our own limit
    try:
        width, height, specs, widest = _widest(original, limits)
    except ImageRejected:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageRejected(f"cannot decode the image: {exc}") from None
    blurhash, dominant = _blurhash(widest), _dominant(widest)
    made: list[tuple[Spec, Path]] = []
    source = widest
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
    return Rendition(width, height, blurhash, dominant, tuple(variants))


def _widest(original: Path, limits: Limits) -> tuple[int, int, list[Spec], Any]:
    """(the upright width and height, the plan, the widest planned variant's pixels: upright,
    sRGB, RGB or RGBA, with no metadata; the original's own size when nothing is planned).

    The full-size image lives only in here, and only to be resized once (nothing else touches it:
    no copy for the orientation, the mode or the colour profile, which work on the result)."""
    from PIL import Image

    with Image.open(original) as image:  # read as decoded: never the whole file in memory at once
        if image.width * image.height > limits.max_pixels:
            raise ImageRejected(
                f"{image.width} x {image.height} pixels is over the limit of {limits.max_pixels}"
            )
        orientation = image.getexif().get(_ORIENTATION, 1)
        turned = orientation in (5, 6, 7, 8)
        width, height = (image.height, image.width) if turned else image.size  # upright
        specs = plan(width, height, displayable=image.get_format_mimetype() not in UNDISPLAYABLE)
        widest = max(specs, key=lambda s: s.width, default=Spec("", width, height))
        target = (widest.height, widest.width) if turned else (widest.width, widest.height)  # as stored
        icc = image.info.get("icc_profile")
        alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
        mode = "RGBA" if alpha else "RGB"
        is_webp = image.format == "WEBP"
        if not is_webp:
            if image.format == "JPEG":
                # Decode already shrunk (JPEG's DCT scaling, by 2, 4 or 8) to no less than the
                # widest variant: most of a large photo's decoding time and memory.
                image.draft("RGB", (1, widest.width) if turned else (widest.width, 1))
            image.load()
            resized = _to_size(image, mode, target)
    if is_webp:
        del image  # and the copy of the file its decoder holds
        resized = _to_size(webp.decode(original, alpha), mode, target)
    return width, height, specs, _srgb(_upright(resized, orientation), icc, mode)


def _to_size(pixels: Any, mode: str, size: tuple[int, int]) -> Any:
    """`pixels` resized to `size` (a new image, whatever its size), converted to `mode` first
    when Pillow would not resize them as they are."""
    from PIL import Image

    if pixels.mode not in _RESIZABLE:  # palette, 16-bit, CMYK: converted first, once
        pixels = pixels.convert(mode)
    return pixels.copy() if pixels.size == size else pixels.resize(size, Image.Resampling.LANCZOS)


# What Pillow resizes as it is: a palette would be resized by its indices (nearest neighbour).
_RESIZABLE = frozenset({"RGB", "RGBA", "RGBX", "L", "LA"})


def _register_heif() -> None:
    import pillow_heif

    pillow_heif.register_heif_opener()


_ORIENTATION = 0x0112  # the EXIF tag


def _upright(image: Any, orientation: int) -> Any:
    """`image` turned as EXIF `orientation` says (what ImageOps.exif_transpose does, without
    reading the tag again from the resized image or copying an upright one)."""
    from PIL import Image

    method = {
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_270,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_90,
    }.get(orientation)
    return image if method is None else image.transpose(method)


def _srgb(image: Any, icc: bytes | None, mode: str) -> Any:
    """`image` as `mode` (RGB or RGBA) pixels in sRGB, from its colour profile `icc`, with no
    metadata (the encoders add the sRGB profile)."""
    from PIL import ImageCms

    converted = image if image.mode == mode else image.convert(mode)
    if icc:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            converted = (
                ImageCms.profileToProfile(converted, source, _srgb_profile(), outputMode=mode) or converted
            )
        except (ImageCms.PyCMSError, OSError):
            pass  # an unreadable profile: the pixels as they are
    converted.info = {}
    return converted


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
