"""Property tests (Hypothesis) for every parser of text a client controls: whatever comes in, each
either gives a well-formed answer or raises the problem it documents, and never anything else
(which the service would answer with a 500)."""

from __future__ import annotations

import io
import time
import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common import listing
from common.conditional import Representation, evaluate, parse_etags, parse_range
from common.memorystore import InMemoryBlobStore
from common.problems import (
    BadRequest,
    BlobTooLarge,
    Forbidden,
    Gone,
    MalformedUpload,
    PreconditionFailed,
    Problem,
    RangeNotSatisfiable,
    TypeNotAllowed,
    Unauthorized,
    UnsupportedMediaType,
)
from common.records import MediaRecord
from common.signing import (
    KeyRing,
    UploadGrant,
    check_download,
    issue_upload_token,
    read_upload_token,
    sign_download,
)
from common.text import problem_in
from common.tokens import ASYMMETRIC_ALGORITHMS, HS256, bearer_token, check_header
from common.uploads import MAX_FILENAME_CHARS, receive_multipart, safe_filename

settings.register_profile("media", max_examples=300, deadline=None, database=None)
settings.load_profile("media")

KEYS = KeyRing("k" * 40, "old" * 20)
REP = Representation(etag="a" * 64, last_modified=datetime(2026, 11, 1, tzinfo=UTC), size=1000)
header_text = st.text(max_size=80) | st.sampled_from(
    [
        "bytes=0-",
        "bytes=-0",
        "bytes=5-2",
        "bytes=0-0,2-3",
        "bytes=999-",
        "bytes=1000-",
        "items=0-1",
        "*",
        'W/"x"',
    ]
)


@given(
    method=st.sampled_from(["GET", "HEAD"]),
    range_=st.none() | header_text,
    if_range=st.none() | header_text,
    if_match=st.none() | header_text,
    if_none_match=st.none() | header_text,
    if_modified_since=st.none() | header_text,
    if_unmodified_since=st.none() | header_text,
)
def test_preconditions_and_ranges_decide_or_refuse(
    method: str,
    range_: str | None,
    if_range: str | None,
    if_match: str | None,
    if_none_match: str | None,
    if_modified_since: str | None,
    if_unmodified_since: str | None,
) -> None:
    headers = {
        "Range": range_,
        "If-Range": if_range,
        "If-Match": if_match,
        "If-None-Match": if_none_match,
        "If-Modified-Since": if_modified_since,
        "If-Unmodified-Since": if_unmodified_since,
    }
    present = {k: v for k, v in headers.items() if v is not None}
    try:
        decision = evaluate(method, present, REP)
    except (RangeNotSatisfiable, PreconditionFailed):
        return
    assert decision.status in (200, 206, 304)
    if decision.status == 206:
        assert 0 <= decision.start <= decision.end < REP.size
    if decision.status == 200:
        assert (decision.start, decision.length) == (0, REP.size)


@given(st.text(max_size=200), st.integers(min_value=0, max_value=10**12))
def test_a_range_header_parses_into_ranges_inside_the_representation(value: str, size: int) -> None:
    ranges = parse_range(value, size)
    for start, end in ranges or []:
        assert 0 <= start <= end < size


@given(st.text(max_size=200))
def test_an_etag_list_parses_or_is_refused(value: str) -> None:
    tags = parse_etags(value)
    assert tags is None or all(isinstance(weak, bool) and isinstance(tag, str) for weak, tag in tags)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    body=st.binary(max_size=3000)
    | st.builds(
        lambda head, tail: (
            b"--b\r\nContent-Disposition: form-data; " + head + b"\r\n\r\n" + tail + b"\r\n--b--\r\n"
        ),
        st.binary(max_size=200),
        st.binary(max_size=200),
    ),
    content_type=st.text(max_size=120)
    | st.sampled_from(
        ["multipart/form-data; boundary=b", "multipart/form-data", "multipart/form-data; boundary="]
    ),
)
def test_any_multipart_body_is_received_or_refused_as_malformed(body: bytes, content_type: str) -> None:
    store = InMemoryBlobStore()
    with store.writer(2000) as writer:
        try:
            name = receive_multipart(io.BytesIO(body), content_type, writer, lambda prefix: None)
        except (MalformedUpload, UnsupportedMediaType, BlobTooLarge, TypeNotAllowed):
            return
    assert name == safe_filename(name)  # what it returns is already safe


@given(st.text(max_size=400))
def test_an_upload_token_is_a_grant_or_refused(token: str) -> None:
    with pytest.raises((Forbidden, Gone)):  # a token nobody issued is never accepted
        read_upload_token(KEYS, token, time.time())


@given(
    owner=st.text(min_size=1, max_size=50),
    size=st.integers(min_value=1, max_value=10**12),
    content_type=st.sampled_from(["image/png", "image/jpeg"]),
    sha=st.none() | st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
)
def test_an_issued_upload_token_reads_back_as_its_grant(
    owner: str, size: int, content_type: str, sha: str | None
) -> None:
    grant = UploadGrant(uuid.uuid4(), owner, size, content_type, sha, int(time.time()) + 60)
    token = issue_upload_token(KEYS, grant)
    assert read_upload_token(KEYS, token, time.time()) == grant
    tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
    with pytest.raises(Forbidden):
        read_upload_token(KEYS, tampered, time.time())


@given(expires=st.text(max_size=30), sig=st.text(max_size=120))
def test_a_download_signature_verifies_or_is_refused(expires: str, sig: str) -> None:
    with pytest.raises(Forbidden):
        check_download(KEYS, uuid.uuid4(), expires, sig, time.time())


def test_a_signed_download_link_verifies() -> None:
    media_id, expires = uuid.uuid4(), int(time.time()) + 60
    check_download(KEYS, media_id, str(expires), sign_download(KEYS, media_id, expires), time.time())


@given(st.text(max_size=300))
def test_a_cursor_decodes_or_is_a_400(cursor: str) -> None:
    try:
        created, ident = listing.decode_cursor(cursor)
    except BadRequest:
        return
    assert created.tzinfo is not None and isinstance(ident, uuid.UUID)


@given(st.datetimes(timezones=st.just(UTC)), st.uuids())
def test_a_cursor_the_service_issued_decodes_to_its_position(created: datetime, ident: uuid.UUID) -> None:
    record = MediaRecord(ident, "o", "f", "image/png", 1, None, "pending", created, created)
    assert listing.decode_cursor(listing.encode_cursor(record)) == (created, ident)


@given(st.none() | st.text(max_size=1000))
def test_a_filename_is_always_made_safe(raw: str | None) -> None:
    name = safe_filename(raw)
    assert name and len(name) <= MAX_FILENAME_CHARS
    assert problem_in(name) is None  # storable
    assert not any(c in name for c in '/\\"') and all(ord(c) >= 32 and ord(c) != 127 for c in name)
    assert safe_filename(name) == name  # idempotent


@given(
    st.text(max_size=300)
    | st.builds(
        lambda a, b, c: f"{a}.{b}.{c}", st.text(max_size=80), st.text(max_size=80), st.text(max_size=40)
    )
)
def test_a_jwt_header_is_trusted_or_refused(token: str) -> None:
    try:
        header = check_header(token, (*ASYMMETRIC_ALGORITHMS, HS256))
    except Unauthorized:
        return
    assert header.alg in (*ASYMMETRIC_ALGORITHMS, HS256)
    assert header.kid is None or (len(header.kid) <= 128 and "/" not in header.kid)


@given(st.none() | st.text(max_size=200))
def test_an_authorization_header_gives_a_token_or_a_401(value: str | None) -> None:
    try:
        token = bearer_token(value)
    except Problem as exc:
        status = exc.status
    else:
        assert token and token == token.strip()
        return
    assert status == 401


@given(st.text(max_size=60))
def test_a_signature_under_a_real_key_id_verifies_or_is_refused(signature: str) -> None:
    """The key id is public; what follows it may be anything, non-ASCII included."""
    with pytest.raises(Forbidden):
        check_download(
            KEYS, uuid.uuid4(), str(int(time.time()) + 60), f"{KEYS.current_kid}.{signature}", time.time()
        )
    with pytest.raises((Forbidden, Gone)):
        read_upload_token(KEYS, f"v1.{KEYS.current_kid}.e30.{signature}", time.time())
