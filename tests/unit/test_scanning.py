"""The scanner seam without sockets: clamd's INSTREAM framing and replies, and the two stand-ins."""

from __future__ import annotations

import struct

import pytest

from common.problems import ScanFailed
from common.scanning import (
    CLEAN,
    END_OF_STREAM,
    MAX_FRAME,
    ClamdScanner,
    MemoryScanner,
    NoScanner,
    ScanLimitExceeded,
    Verdict,
    frame,
    parse_reply,
)


def unframe(frames: list[bytes]) -> list[bytes]:
    """The payloads of INSTREAM frames, checking each length prefix."""
    payloads = []
    for f in frames:
        (length,) = struct.unpack(">I", f[:4])
        assert length == len(f) - 4
        payloads.append(f[4:])
    return payloads


def test_a_chunk_is_one_frame_with_its_big_endian_length() -> None:
    assert list(frame(b"hello")) == [b"\x00\x00\x00\x05hello"]


def test_a_large_chunk_is_split_into_frames_no_larger_than_the_limit() -> None:
    chunk = bytes(range(256)) * 40  # 10240 bytes
    frames = list(frame(chunk, max_frame=4096))
    payloads = unframe(frames)
    assert [len(p) for p in payloads] == [4096, 4096, 2048]
    assert b"".join(payloads) == chunk


def test_the_default_frame_limit_is_one_mib() -> None:
    chunk = b"x" * (MAX_FRAME * 2 + 1)
    assert [len(p) for p in unframe(list(frame(chunk)))] == [MAX_FRAME, MAX_FRAME, 1]


def test_an_empty_chunk_gives_no_frame_since_a_zero_length_frame_ends_the_stream() -> None:
    assert list(frame(b"")) == []
    assert struct.pack(">I", 0) == END_OF_STREAM


def test_ok_is_clean() -> None:
    assert parse_reply(b"stream: OK\0") == Verdict(infected=False, signature=None)
    assert parse_reply(b"stream: OK") == CLEAN


@pytest.mark.parametrize(
    ("reply", "signature"),
    [
        (b"stream: Eicar-Test-Body.UNOFFICIAL FOUND\0", "Eicar-Test-Body.UNOFFICIAL"),
        (b"stream: Win.Test.EICAR_HDB-1 FOUND\0", "Win.Test.EICAR_HDB-1"),
        (
            b"stream: Heuristics.Phishing Email.SpoofedDomain FOUND\0",
            "Heuristics.Phishing Email.SpoofedDomain",
        ),
        (b"stream: Sig.Name(abc123:68) FOUND\n\0", "Sig.Name(abc123:68)"),
    ],
)
def test_found_names_the_signature(reply: bytes, signature: str) -> None:
    assert parse_reply(reply) == Verdict(infected=True, signature=signature)


def test_the_size_limit_error_is_a_scan_failure_of_its_own() -> None:
    with pytest.raises(ScanLimitExceeded, match="INSTREAM size limit exceeded"):
        parse_reply(b"INSTREAM size limit exceeded. ERROR\0")
    assert issubclass(ScanLimitExceeded, ScanFailed)


def test_any_other_error_is_a_scan_failure() -> None:
    with pytest.raises(ScanFailed, match="Can't allocate memory") as caught:
        parse_reply(b"stream: Can't allocate memory ERROR\0")
    assert not isinstance(caught.value, ScanLimitExceeded)


@pytest.mark.parametrize(
    "reply",
    [b"", b"\0", b"PONG\0", b"stream: \0", b"stream:  FOUND\0", b"stream: OKAY\0", b"\xff\xfe garbage"],
)
def test_an_empty_or_garbled_reply_is_a_scan_failure(reply: bytes) -> None:
    with pytest.raises(ScanFailed):
        parse_reply(reply)


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:3310", "tcp://clamd:3310", "unix:///run/clamd.ctl"])
def test_clamd_addresses_are_accepted(address: str) -> None:
    assert ClamdScanner(address, 1).address == address


@pytest.mark.parametrize("address", ["127.0.0.1:3310", "tcp://host", "http://host:3310", "unix://"])
def test_a_bad_clamd_address_is_refused_when_built(address: str) -> None:
    with pytest.raises(ValueError, match="tcp://host:port or unix:///path"):
        ClamdScanner(address, 1)


def scan(scanner: MemoryScanner, *chunks: bytes) -> Verdict:
    session = scanner.session()
    try:
        for chunk in chunks:
            session.feed(chunk)
        return session.verdict()
    finally:
        session.close()


def test_the_memory_scanner_finds_its_marker() -> None:
    assert scan(MemoryScanner(), b"a picture with EICAR inside") == Verdict(True, "Memory-Test-Signature")
    assert scan(MemoryScanner(), b"a clean picture") == CLEAN
    assert scan(MemoryScanner()) == CLEAN


@pytest.mark.parametrize("cut", [1, 2, 3, 4])
def test_the_memory_scanner_finds_its_marker_across_chunk_boundaries(cut: int) -> None:
    data = b"head-EICAR-tail"
    at = data.index(b"EICAR") + cut
    assert scan(MemoryScanner(), data[:at], data[at:]).infected
    # one byte at a time, with empty chunks in between
    assert scan(MemoryScanner(), *[bytes([b]) for b in data], b"").infected
    assert not scan(MemoryScanner(), b"EIC", b"-", b"AR").infected


def test_the_memory_scanner_keeps_only_a_marker_sized_tail() -> None:
    scanner = MemoryScanner(b"needle")
    session = scanner.session()
    for _ in range(100):
        session.feed(b"x" * 10_000)
    assert len(session._tail) == len(b"needle") - 1
    assert session.fed_bytes == 1_000_000
    session.feed(b"nee")
    session.feed(b"dle")
    assert session.verdict().infected


def test_the_memory_scanner_records_its_sessions_and_their_closing() -> None:
    scanner = MemoryScanner()
    scan(scanner, b"one")
    scan(scanner, b"EICAR")
    assert [s.closed for s in scanner.sessions] == [True, True]
    assert [s.found for s in scanner.sessions] == [False, True]
    with pytest.raises(RuntimeError):
        scanner.sessions[0].feed(b"late")


def test_a_failing_memory_scanner_raises_scan_failed_everywhere() -> None:
    scanner = MemoryScanner(fail=True)
    with pytest.raises(ScanFailed):
        scanner.ping()
    with pytest.raises(ScanFailed):
        scanner.session().feed(b"bytes")
    with pytest.raises(ScanFailed):
        scanner.session().verdict()  # an empty upload too


def test_the_memory_scanner_needs_a_marker() -> None:
    with pytest.raises(ValueError, match="marker"):
        MemoryScanner(b"")


def test_no_scanner_passes_everything() -> None:
    scanner = NoScanner()
    scanner.ping()
    session = scanner.session()
    session.feed(b"X5O!P%@AP" + b"EICAR")
    assert session.verdict() == CLEAN
    session.close()
    session.close()
