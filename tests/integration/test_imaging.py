"""The image pipeline on real pixels: Pillow (and pillow-heif) in the child process that
`render_isolated` starts, with generated photos of every accepted format; and what a hostile or
broken image does to it (a recorded reason, never a dead worker)."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pytest
from PIL import Image

from common import webp
from common.imaging import ImageRejected, Limits, Rendition, render_isolated
from localdev.harness import UPRIGHT_CORNER, photo_pixels
from tests.factories import GPS_IFD, photo, png_declaring

DECODED_AS = {"avif": "AVIF", "webp": "WEBP", "jpeg": "JPEG"}


def variants_of(rendition: Rendition) -> dict[tuple[str, int], Image.Image]:
    """Each variant decoded (from its bytes), checked to be the format and size it claims."""
    opened: dict[tuple[str, int], Image.Image] = {}
    for v in rendition.variants:
        image = Image.open(io.BytesIO(v.path.read_bytes()))
        image.load()
        assert image.format == DECODED_AS[v.format], v
        assert image.size == (v.width, v.height)
        opened[(v.format, v.width)] = image
    return opened


# What a 1600 x 1200 photo gets, whatever its format: every one of them is well under the
# original and under the next-wider one (a generated photo's variants are; the gate's own cases
# are unit-tested), so the gate keeps them all.
SET_1600 = {(f, w) for f in ("avif", "webp") for w in (1280, 640, 320)} | {("jpeg", 1280)}


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "HEIF"])
def test_every_accepted_format_gets_its_variants(fmt: str, tmp_path: Path) -> None:
    rendition = render_isolated(photo(1600, 1200, fmt), tmp_path)
    assert (rendition.width, rendition.height) == (1600, 1200)
    made = variants_of(rendition)
    assert set(made) == SET_1600, sorted(made)
    assert {key: image.size for key, image in made.items()} == {(f, w): (w, w * 3 // 4) for f, w in SET_1600}
    assert rendition.blurhash and rendition.dominant_color.startswith("#")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "HEIF"])
def test_an_exif_rotated_photo_comes_out_upright_and_without_its_gps(fmt: str, tmp_path: Path) -> None:
    original = photo(1600, 1200, fmt, rotated=True, gps=True)
    stored = Image.open(io.BytesIO(original))
    gps = stored.getexif().get_ifd(GPS_IFD)
    assert gps.get(1) == "N" and gps.get(3) == "E" and gps.get(2) and gps.get(4), dict(gps)  # the premise
    # A HEIC is turned by libheif as it decodes (the file's own rotation, written from the EXIF),
    # and pillow-heif then says 1 in the EXIF; every other format is stored turned.
    assert stored.size == ((1600, 1200) if fmt == "HEIF" else (1200, 1600))
    rendition = render_isolated(original, tmp_path)
    assert (rendition.width, rendition.height) == (1600, 1200)
    paths = {(v.format, v.width): v.path for v in rendition.variants}
    made = variants_of(rendition)
    assert set(made) == SET_1600, sorted(made)  # so that "every variant" below is all of them
    for (kind, width), image in made.items():
        assert image.width > image.height, (kind, width)
        corner = image.convert("RGB").getpixel((image.width // 8, image.height // 8))
        assert isinstance(corner, tuple)
        assert all(abs(a - b) < 40 for a, b in zip(corner, UPRIGHT_CORNER, strict=True)), (kind, corner)
        exif = image.getexif()
        assert GPS_IFD not in exif and not exif.get_ifd(GPS_IFD) and len(exif) == 0, (kind, dict(exif))
        # Nor in the file's bytes: no EXIF block (its header) and no XMP packet, whatever the
        # container. (Not b"GPS": three bytes turn up by chance in compressed pixels.)
        data = paths[kind, width].read_bytes()
        assert b"Exif\x00\x00" not in data and b"http://ns.adobe.com/xap/" not in data, kind


def test_an_image_narrower_than_320_gets_no_variants(tmp_path: Path) -> None:
    rendition = render_isolated(photo(300, 200, "PNG"), tmp_path)
    assert rendition.variants == () and (rendition.width, rendition.height) == (300, 200)


def small_heic(width: int, height: int, quality: int) -> bytes:
    """A HEIC of the photo at `quality` (`photo` writes them at 90)."""
    import pillow_heif

    pillow_heif.register_heif_opener()
    buf = io.BytesIO()
    photo_pixels(width, height).save(buf, "HEIF", quality=quality)
    return buf.getvalue()


@pytest.mark.parametrize(("width", "height"), [(300, 200), (200, 300)])
def test_a_heic_narrower_than_320_still_gets_a_jpeg_at_its_own_width(
    width: int, height: int, tmp_path: Path
) -> None:
    original = small_heic(width, height, quality=10)  # so small that its JPEG is larger
    assert Image.open(io.BytesIO(original)).format == "HEIF"  # the premise
    rendition = render_isolated(original, tmp_path)
    assert (rendition.width, rendition.height) == (width, height)
    made = variants_of(rendition)
    assert ("jpeg", width) in made and made["jpeg", width].size == (width, height)  # never upscaled
    assert set(made) <= {("avif", width), ("webp", width), ("jpeg", width)}, sorted(made)
    jpeg = next(v for v in rendition.variants if v.format == "jpeg")
    assert jpeg.path.stat().st_size > len(original)  # kept all the same: the gate exempts it
    corner = made["jpeg", width].convert("RGB").getpixel((width // 8, height // 8))
    assert isinstance(corner, tuple)
    assert all(abs(a - b) < 40 for a, b in zip(corner, UPRIGHT_CORNER, strict=True)), corner


def test_a_usual_small_heic_gets_all_three_formats(tmp_path: Path) -> None:
    made = variants_of(render_isolated(photo(300, 200, "HEIF"), tmp_path))
    assert set(made) == {("avif", 300), ("webp", 300), ("jpeg", 300)}, sorted(made)


def as_mode(fmt: str, mode: str) -> bytes:
    """The 1600 x 1200 photo as a `fmt` image of `mode`, its lower half transparent where there
    is alpha."""
    picture = photo_pixels(1600, 1200)
    picture = picture.quantize(64) if mode == "P" else picture.convert(mode)
    if mode in ("RGBA", "LA"):
        alpha = Image.new("L", picture.size, 255)
        alpha.paste(0, (0, 600, 1600, 1200))
        picture.putalpha(alpha)
    buf = io.BytesIO()
    picture.save(buf, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    return buf.getvalue()


@pytest.mark.parametrize(
    ("fmt", "mode"), [("PNG", "P"), ("PNG", "RGBA"), ("PNG", "LA"), ("PNG", "L"), ("WEBP", "RGBA")]
)
def test_every_pixel_mode_is_resized_in_colour_and_keeps_its_alpha(
    fmt: str, mode: str, tmp_path: Path
) -> None:
    original = as_mode(fmt, mode)
    assert Image.open(io.BytesIO(original)).mode == mode  # the premise
    made = variants_of(render_isolated(original, tmp_path))
    assert set(made) == SET_1600, sorted(made)
    for (kind, width), image in made.items():
        alpha = mode in ("RGBA", "LA") and kind != "jpeg"  # a JPEG is flattened on white
        assert image.mode == ("RGBA" if alpha else "RGB"), (kind, image.mode)
        rgba = image.convert("RGBA")
        top = rgba.getpixel((width // 8, width * 3 // 32))
        bottom = rgba.getpixel((width // 8, width * 3 // 4 - 4))
        assert isinstance(top, tuple) and isinstance(bottom, tuple)
        if mode in ("P", "RGBA"):  # the red corner still red: a palette is resized as colours
            assert all(abs(a - b) < 40 for a, b in zip(top[:3], UPRIGHT_CORNER, strict=True)), (kind, top)
        assert top[3] == 255 and bottom[3] == (0 if alpha else 255), (kind, top, bottom)


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(ImageRejected, match="over the limit"):
        render_isolated(png_declaring(100_000, 100_000), tmp_path)
    assert time.monotonic() - started < 10


def test_a_truncated_jpeg_is_refused(tmp_path: Path) -> None:
    data = photo(1600, 1200)
    with pytest.raises(ImageRejected, match="decode"):
        render_isolated(data[: len(data) // 2], tmp_path)


def test_the_memory_limit_stops_the_child_not_the_caller(tmp_path: Path) -> None:
    with pytest.raises(ImageRejected, match="memory"):
        # 100 MiB of address space: enough for the interpreter and the libraries (a small image
        # works in it), not for a 12 MP decode besides.
        render_isolated(photo(4000, 3000, "PNG"), tmp_path, Limits(memory_bytes=100 * 1024 * 1024))
    (tmp_path / "next").mkdir()
    assert render_isolated(photo(400, 300), tmp_path / "next").variants  # and the next image works


def test_the_time_limit_ends_a_slow_image(tmp_path: Path) -> None:
    with pytest.raises(ImageRejected, match="longer than"):
        render_isolated(photo(4000, 3000), tmp_path, Limits(seconds=0.05))


def test_a_wide_gamut_image_becomes_srgb_and_says_so(tmp_path: Path) -> None:
    import pyvips  # libvips (a dev dependency) ships a Display P3 profile; Pillow cannot make one
    from PIL import ImageCms

    in_p3 = pyvips.Image.new_from_buffer(photo(800, 600, "PNG"), "").icc_transform("p3", input_profile="srgb")
    original = in_p3.pngsave_buffer()
    stored = Image.open(io.BytesIO(original))
    corner = stored.convert("RGB").getpixel((100, 100))
    assert isinstance(corner, tuple) and abs(corner[1] - UPRIGHT_CORNER[1]) > 15  # the premise: P3 values
    variant = variants_of(render_isolated(original, tmp_path))["webp", 640]
    profile = ImageCms.ImageCmsProfile(io.BytesIO(variant.info["icc_profile"]))
    assert ImageCms.getProfileDescription(profile).strip() == "sRGB built-in"
    shown = variant.convert("RGB").getpixel((80, 80))
    assert isinstance(shown, tuple)
    assert all(abs(a - b) < 8 for a, b in zip(shown, UPRIGHT_CORNER, strict=True)), shown  # sRGB again


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_a_webp_is_decoded_by_libwebp_into_one_buffer_with_pillow_s_pixels(tmp_path: Path, mode: str) -> None:
    from PIL import ImageChops

    assert webp.libwebp() is not None  # Pillow's own, found in this process's map
    path = tmp_path / "dish.webp"
    Image.frombytes(mode, (300, 200), os.urandom(300 * 200 * len(mode))).save(path, "WEBP", quality=80)
    ours = webp.decode(path, alpha=mode == "RGBA")
    pillows = webp.pillow_frame(path.read_bytes()).convert(mode)
    assert ours.mode == mode and ours.size == (300, 200)
    assert ImageChops.difference(ours, pillows).getbbox() is None  # the very same pixels


def test_an_animated_webp_is_decoded_through_pillow_its_first_frame(tmp_path: Path) -> None:
    path = tmp_path / "timer.webp"
    first, second = Image.new("RGB", (64, 48), "red"), Image.new("RGB", (64, 48), "blue")
    first.save(path, "WEBP", save_all=True, append_images=[second], lossless=True)
    pixels = webp.decode(path, alpha=False)  # libwebp's simple API refuses animations
    assert pixels.size == (64, 48) and pixels.convert("RGB").getpixel((5, 5)) == (255, 0, 0)
