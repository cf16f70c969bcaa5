"""What the image pipeline makes and keeps: pure decisions, no pixels."""

from __future__ import annotations

from common.imaging import Made, Spec, keep, plan


def test_a_large_photo_gets_every_width_in_avif_and_webp_and_a_jpeg_at_1280() -> None:
    specs = plan(4000, 3000)
    assert [(s.format, s.width, s.height) for s in specs] == [
        ("avif", 1920, 1440),
        ("avif", 1280, 960),
        ("avif", 640, 480),
        ("avif", 320, 240),
        ("webp", 1920, 1440),
        ("webp", 1280, 960),
        ("webp", 640, 480),
        ("webp", 320, 240),
        ("jpeg", 1280, 960),
    ]


def test_nothing_is_upscaled() -> None:
    assert plan(319, 500) == []  # narrower than the narrowest width: the original is served
    specs = plan(800, 600)
    assert {s.width for s in specs if s.format != "jpeg"} == {320, 640}
    assert [s for s in specs if s.format == "jpeg"] == [Spec("jpeg", 800, 600)]
    assert all(s.width <= 800 for s in specs)


def test_the_gate_drops_wrong_dimensions_and_variants_larger_than_what_they_replace() -> None:
    planned = plan(1400, 700)  # avif/webp 1280, 640, 320; jpeg 1280
    made = [
        Made("webp", 1280, 640, 9_000),
        Made("webp", 640, 320, 12_000),  # larger than the wider one: dropped
        Made("webp", 320, 160, 2_000),  # compared with the 1280, the last one kept
        Made("avif", 1280, 641, 5_000),  # wrong height: dropped
        Made("avif", 640, 320, 3_000),  # kept: the 1280 was dropped, so the original is the ceiling
        Made("jpeg", 1280, 640, 60_000),  # larger than the original: dropped
    ]
    assert keep(made, planned, original_size=50_000) == [True, False, True, False, True, False]
