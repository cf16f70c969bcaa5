"""The image pipeline on real pixels: Pillow (and pillow-heif) in the child process that
`render_isolated` starts, with generated photos of every accepted format; and what a hostile or
broken image does to it (a recorded reason, never a dead worker)."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
from PIL import Image

from common.imaging import ImageRejected, Limits, Rendition, render_isolated
from localdev.harness import UPRIGHT_CORNER
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


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "HEIF"])
def test_every_accepted_format_gets_its_variants(fmt: str, tmp_path: Path) -> None:
    rendition = render_isolated(photo(1600, 1200, fmt), tmp_path)
    assert (rendition.width, rendition.height) == (1600, 1200)
    made = variants_of(rendition)
    expected = {(f, w) for f in ("avif", "webp") for w in (1280, 640, 320)} | {("jpeg", 1280)}
    assert set(made) <= expected and len(made) >= 5  # the gate may drop one that grew
    assert ("jpeg", 1280) in made and made["jpeg", 1280].size == (1280, 960)
    assert rendition.blurhash and rendition.dominant_color.startswith("#")


def test_an_exif_rotated_photo_comes_out_upright_and_without_its_gps(tmp_path: Path) -> None:
    original = photo(1600, 1200, rotated=True, gps=True)
    stored = Image.open(io.BytesIO(original))
    assert stored.size == (1200, 1600) and stored.getexif().get_ifd(GPS_IFD)  # the premise
    rendition = render_isolated(original, tmp_path)
    assert (rendition.width, rendition.height) == (1600, 1200)
    paths = {(v.format, v.width): v.path for v in rendition.variants}
    for (fmt, width), image in variants_of(rendition).items():
        assert image.width > image.height, (fmt, width)
        corner = image.convert("RGB").getpixel((image.width // 8, image.height // 8))
        assert isinstance(corner, tuple)
        assert all(abs(a - b) < 40 for a, b in zip(corner, UPRIGHT_CORNER, strict=True)), (fmt, corner)
        exif = image.getexif()
        assert not exif.get_ifd(GPS_IFD) and len(exif) == 0, (fmt, dict(exif))
        assert b"GPS" not in paths[fmt, width].read_bytes()


def test_an_image_narrower_than_320_gets_no_variants(tmp_path: Path) -> None:
    rendition = render_isolated(photo(300, 200, "PNG"), tmp_path)
    assert rendition.variants == () and (rendition.width, rendition.height) == (300, 200)


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
        render_isolated(photo(4000, 3000, "PNG"), tmp_path, Limits(memory_bytes=200 * 1024 * 1024))
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
