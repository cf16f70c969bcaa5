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


def test_an_original_browsers_cannot_show_gets_variants_at_its_own_width_when_narrow() -> None:
    assert plan(300, 200) == []  # a narrow PNG, JPEG, WebP or AVIF: served itself
    assert plan(300, 200, displayable=False) == [
        Spec("avif", 300, 200),
        Spec("webp", 300, 200),
        Spec("jpeg", 300, 200, required=True),
    ]
    assert [(s.format, s.width, s.height) for s in plan(1, 1, displayable=False)] == [
        ("avif", 1, 1),
        ("webp", 1, 1),
        ("jpeg", 1, 1),
    ]


def test_a_wide_heic_gets_the_usual_set_with_its_jpeg_required() -> None:
    usual, heic = plan(4000, 3000), plan(4000, 3000, displayable=False)
    assert [(s.format, s.width, s.height) for s in heic] == [(s.format, s.width, s.height) for s in usual]
    assert [s for s in heic if s.required] == [Spec("jpeg", 1280, 960, required=True)]
    assert not any(s.required for s in usual)
    assert [s for s in plan(800, 600, displayable=False) if s.format == "jpeg"] == [
        Spec("jpeg", 800, 600, required=True)  # never upscaled either
    ]


def test_the_gate_keeps_a_required_jpeg_larger_than_the_original_but_nothing_else_that_is() -> None:
    planned = plan(300, 200, displayable=False)
    made = [
        Made("avif", 300, 200, 9_000),  # larger than the HEIC: dropped
        Made("webp", 300, 200, 7_000),
        Made("jpeg", 300, 200, 12_000),  # larger too, but the one variant every browser shows
    ]
    assert keep(made, planned, original_size=8_000) == [False, True, True]
    assert keep([Made("jpeg", 300, 201, 1_000)], planned, original_size=8_000) == [False]  # wrong size
    displayable = [Spec("jpeg", 300, 200)]  # the same JPEG of an original browsers can show
    assert keep([Made("jpeg", 300, 200, 12_000)], displayable, original_size=8_000) == [False]
    wide = plan(1400, 700, displayable=False)
    assert keep([Made("jpeg", 1280, 640, 60_000), Made("webp", 1280, 640, 60_000)], wide, 50_000) == [
        True,
        False,
    ]
