"""Which representation a content request gets (common/negotiation.py): pure decisions."""

from __future__ import annotations

import pytest

from common.negotiation import Choice, Wanted, choose, named_types, wanted
from common.problems import BadRequest
from common.records import VariantRow


def variant(fmt: str, width: int) -> VariantRow:
    return VariantRow(fmt, width, width * 3 // 4, width * 10, f"{fmt}{width}".ljust(64, "0"))


SET = [variant(f, w) for f in ("avif", "webp") for w in (320, 640, 1280)] + [variant("jpeg", 1280)]
BROWSER = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"


def test_no_width_and_no_format_is_the_original_and_does_not_vary() -> None:
    assert choose(SET, "image/jpeg", Wanted(), BROWSER) == Choice(None, False)


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (BROWSER, "avif"),
        ("image/webp,*/*", "webp"),
        ("image/avif;q=0,image/webp", "webp"),  # refused explicitly
        ("*/*", "jpeg"),  # a wildcard names nothing: the original's own type
        (None, "jpeg"),
    ],
)
def test_accept_picks_avif_then_webp_then_the_originals_type(accept: str | None, expected: str) -> None:
    choice = choose(SET, "image/jpeg", Wanted(width=600), accept)
    assert choice.variant is not None and choice.variant.format == expected and choice.vary_accept


def test_a_png_original_without_avif_or_webp_in_accept_gets_itself() -> None:
    assert choose(SET, "image/png", Wanted(width=600), "*/*") == Choice(None, True)


@pytest.mark.parametrize(("w", "served"), [(1, 320), (320, 320), (321, 640), (1280, 1280), (5000, 1280)])
def test_the_nearest_width_at_or_above_capped_at_the_largest(w: int, served: int) -> None:
    choice = choose(SET, "image/jpeg", Wanted(width=w, format="webp"), None)
    assert choice.variant is not None and choice.variant.width == served and not choice.vary_accept


def test_a_format_alone_is_its_widest_and_a_missing_one_is_the_original() -> None:
    assert choose(SET, "image/jpeg", Wanted(format="avif"), None).variant == variant("avif", 1280)
    assert choose([], "image/jpeg", Wanted(width=640, format="webp"), BROWSER) == Choice(None, False)
    assert choose([], "image/jpeg", Wanted(width=640), BROWSER) == Choice(None, True)  # not made yet


@pytest.mark.parametrize("args", [{"w": "0"}, {"w": "-5"}, {"w": "abc"}, {"w": "10001"}, {"format": "gif"}])
def test_nonsense_is_a_400(args: dict[str, str]) -> None:
    with pytest.raises(BadRequest):
        wanted(args)


def test_accept_parsing_keeps_q_and_leaves_wildcards_out() -> None:
    assert named_types("image/webp;q=0.5, image/*, */*;q=0.1, IMAGE/AVIF") == {
        "image/webp": 0.5,
        "image/avif": 1.0,
    }
    assert named_types("image/webp;q=x") == {"image/webp": 0.0}


SMALL_HEIC = [variant("avif", 300), variant("webp", 300), variant("jpeg", 300)]


@pytest.mark.parametrize("original_type", ["image/heic", "image/heif"])
@pytest.mark.parametrize("accept", ["*/*", None, "image/png,image/*;q=0.8"])
def test_a_heic_original_is_stood_in_for_by_its_jpeg_when_nothing_better_is_accepted(
    original_type: str, accept: str | None
) -> None:
    choice = choose(SET, original_type, Wanted(width=600), accept)
    assert choice == Choice(variant("jpeg", 1280), True)
    assert choose(SMALL_HEIC, original_type, Wanted(width=600), accept) == Choice(variant("jpeg", 300), True)


def test_a_heic_still_gets_avif_or_webp_first_and_itself_only_when_accept_names_it() -> None:
    assert choose(SMALL_HEIC, "image/heic", Wanted(width=320), BROWSER).variant == variant("avif", 300)
    assert choose(SMALL_HEIC, "image/heic", Wanted(width=320), "image/webp").variant == variant("webp", 300)
    safari_heic = "image/heic,image/png;q=0.9,*/*;q=0.5"  # a client that shows HEIC itself
    assert choose(SMALL_HEIC, "image/heic", Wanted(width=320), safari_heic) == Choice(None, True)
    refused = "image/heic;q=0,*/*"
    assert choose(SMALL_HEIC, "image/heic", Wanted(width=320), refused) == Choice(variant("jpeg", 300), True)
    assert choose([], "image/heic", Wanted(width=320), "*/*") == Choice(None, True)  # not made yet


def test_a_format_a_heic_lacks_is_its_jpeg_and_a_png_still_gets_itself() -> None:
    jpeg_only = [variant("jpeg", 300)]  # its AVIF and WebP dropped by the gate
    assert choose(jpeg_only, "image/heic", Wanted(format="webp"), None) == Choice(variant("jpeg", 300), False)
    assert choose(jpeg_only, "image/png", Wanted(format="webp"), None) == Choice(None, False)
    assert choose(SMALL_HEIC, "image/heic", Wanted(format="webp"), None) == Choice(
        variant("webp", 300), False
    )
    assert choose(SMALL_HEIC, "image/heic", Wanted(), "*/*") == Choice(None, False)  # no query: the original
