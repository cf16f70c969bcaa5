"""ClamdScanner against a real clamd, started by the test with a database of one signature (the
EICAR string): verdicts, streaming in chunks, and clamd refused, frozen and over its size limit."""

from __future__ import annotations

import io
import os
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from common.problems import ScanFailed
from common.scanning import CLEAN, ClamdScanner, ScanLimitExceeded, Verdict
from localdev.harness import RunningClamd, clamd_server, eicar, free_port
from tests.factories import png, png_with_text
from tests.support import require_clamd

MiB = 1024 * 1024
FOUND = Verdict(infected=True, signature="Eicar-Test-Body.UNOFFICIAL")


@pytest.fixture
def scanner(clamd: RunningClamd) -> ClamdScanner:
    return ClamdScanner(clamd.address, timeout_seconds=10)


def scan(scanner: ClamdScanner, chunks: Iterator[bytes] | list[bytes]) -> Verdict:
    session = scanner.session()
    try:
        for chunk in chunks:
            session.feed(chunk)
        return session.verdict()
    finally:
        session.close()


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def test_the_eicar_string_in_a_png_fed_across_chunk_boundaries_is_found(scanner: ClamdScanner) -> None:
    data = png_with_text(eicar())
    assert Image.open(io.BytesIO(data)).size == (64, 64)  # still a valid picture
    at = data.index(eicar())
    # cuts inside the marker: one chunk ends mid-string, the next carries the rest
    chunks = [data[: at + 7], data[at + 7 : at + 30], data[at + 30 :]]
    assert all(eicar() not in c for c in chunks)
    assert scan(scanner, chunks) == FOUND
    assert scan(scanner, pieces(data, 5)) == FOUND


def test_the_eicar_string_appended_to_a_png_is_found(scanner: ClamdScanner) -> None:
    assert scan(scanner, [png(32, 32) + eicar()]) == FOUND


def test_a_clean_png_is_clean(scanner: ClamdScanner) -> None:
    data = png_with_text(b"a bowl of soup")
    assert scan(scanner, pieces(data, 1000)) == CLEAN


def test_an_empty_stream_is_clean(scanner: ClamdScanner) -> None:
    assert scan(scanner, []) == CLEAN
    assert scan(scanner, [b""]) == CLEAN


def test_a_multi_mib_stream_in_one_mib_chunks_is_clean_and_sent_as_it_comes(clamd: RunningClamd) -> None:
    scanner = ClamdScanner(clamd.address, timeout_seconds=30)
    block = os.urandom(MiB)
    spool = clamd.log_path.parent / "tmp"  # where clamd writes the stream it receives
    session = scanner.session()
    tracemalloc.start()
    try:
        for _ in range(24):
            session.feed(block)
        _, peak = tracemalloc.get_traced_memory()
        # clamd already holds most of it before the verdict is asked: nothing is held back here
        received = sum(f.stat().st_size for f in spool.rglob("*") if f.is_file())
        assert received > 16 * MiB
        assert session.verdict() == CLEAN
    finally:
        tracemalloc.stop()
        session.close()
    assert peak < 4 * MiB  # one frame at a time, not 24 MiB


def test_the_eicar_string_after_many_mib_is_found(clamd: RunningClamd) -> None:
    scanner = ClamdScanner(clamd.address, timeout_seconds=30)
    block = os.urandom(MiB)
    assert scan(scanner, [png(16, 16), *([block] * 8), eicar(), block]) == FOUND


def test_ping(scanner: ClamdScanner) -> None:
    started = time.monotonic()
    scanner.ping()
    assert time.monotonic() - started < 1


def test_the_unix_socket_works_too(clamd: RunningClamd) -> None:
    scanner = ClamdScanner(clamd.unix_address, timeout_seconds=10)
    scanner.ping()
    assert scan(scanner, [png(16, 16), eicar()]) == FOUND
    assert scan(scanner, [png(16, 16)]) == CLEAN


def test_sessions_run_in_parallel_threads_on_one_scanner(scanner: ClamdScanner) -> None:
    results: dict[int, Verdict] = {}

    def run(i: int) -> None:
        data = png(32, 32) + (eicar() if i % 2 else b"")
        results[i] = scan(scanner, pieces(data, 100))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == {i: FOUND if i % 2 else CLEAN for i in range(8)}


def test_nobody_listening_is_a_quick_scan_failure() -> None:
    scanner = ClamdScanner(f"tcp://127.0.0.1:{free_port()}", timeout_seconds=5)
    started = time.monotonic()
    with pytest.raises(ScanFailed, match="cannot reach clamd"):
        scanner.ping()
    session = scanner.session()
    with pytest.raises(ScanFailed, match="cannot reach clamd") as first:
        session.feed(b"bytes")
    # the session stays failed: later chunks and the verdict fail at once, without reconnecting
    with pytest.raises(ScanFailed) as again:
        session.feed(b"more")
    assert again.value is first.value
    with pytest.raises(ScanFailed) as again:
        session.verdict()
    assert again.value is first.value
    session.close()
    session.close()
    with pytest.raises(ScanFailed, match="cannot reach clamd"):
        scanner.session().verdict()  # an empty upload connects at its verdict
    assert time.monotonic() - started < 2


def test_a_missing_unix_socket_is_a_scan_failure(tmp_path: Path) -> None:
    with pytest.raises(ScanFailed, match="cannot reach clamd"):
        ClamdScanner(f"unix://{tmp_path}/nobody.sock", timeout_seconds=1).ping()


def test_a_frozen_clamd_is_a_scan_failure_within_the_timeout_then_it_recovers(clamd: RunningClamd) -> None:
    scanner = ClamdScanner(clamd.address, timeout_seconds=1)
    clamd.freeze()
    try:
        started = time.monotonic()
        with pytest.raises(ScanFailed, match="gave no verdict: timed out"):
            scan(scanner, [png(16, 16), eicar()])
        assert 0.9 < time.monotonic() - started < 3
        started = time.monotonic()
        with pytest.raises(ScanFailed, match="did not answer PING"):
            scanner.ping()
        assert time.monotonic() - started < 3
        # a large upload stalls once the socket buffers fill: the send deadline trips, not a hang
        started = time.monotonic()
        with pytest.raises(ScanFailed, match="timed out"):
            scan(scanner, [os.urandom(MiB)] * 64)
        assert time.monotonic() - started < 5
    finally:
        clamd.thaw()
    scanner.ping()
    assert scan(scanner, [png(16, 16), eicar()]) == FOUND


def test_a_stream_over_the_size_limit_is_a_scan_failure(tmp_path_factory: pytest.TempPathFactory) -> None:
    require_clamd()
    with clamd_server(tmp_path_factory.mktemp("clamd-small"), settings={"StreamMaxLength": "1M"}) as small:
        scanner = ClamdScanner(small.address, timeout_seconds=5)
        assert scan(scanner, [b"x" * 1000]) == CLEAN
        with pytest.raises(ScanLimitExceeded, match="INSTREAM size limit exceeded"):
            scan(scanner, [os.urandom(256 * 1024)] * 12)
