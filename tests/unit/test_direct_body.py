"""`worker.DirectBody`: a body of known length read straight off the socket, on a real socket pair
with gunicorn's own request parser in front of it, as the worker serves it."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from gunicorn.config import Config as GunicornConfig
from gunicorn.http.parser import RequestParser

from common.worker import DIRECT_READ_BYTES, DirectBody

MiB = 1024 * 1024
Pair = tuple[socket.socket, socket.socket]


def head(length: int, path: str = "/up") -> bytes:
    return f"PUT {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {length}\r\n\r\n".encode()


@pytest.fixture
def pair() -> Iterator[Pair]:
    client, server = socket.socketpair()
    server.settimeout(5)
    yield client, server
    client.close()
    server.close()


def parser_on(server: socket.socket) -> RequestParser:
    return RequestParser(GunicornConfig(), server, ("127.0.0.1", 1))


def next_request(parser: RequestParser) -> Any:
    """The parser's next request, its body the worker's DirectBody (what `wsgi.input` is)."""
    req = next(parser)
    req.body = DirectBody(req.body.reader)
    return req


def send_later(sock: socket.socket, *pieces: bytes, then_close: bool = False) -> threading.Thread:
    """Send from another thread (a socket pair's buffer holds far less than these bodies)."""

    def send() -> None:
        for piece in pieces:
            sock.sendall(piece)
        if then_close:
            sock.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    return sender


def read_all(body: DirectBody, size: int = MiB) -> tuple[bytes, list[int]]:
    chunks = []
    while chunk := body.read(size):
        chunks.append(chunk)
    return b"".join(chunks), [len(c) for c in chunks]


def test_a_large_body_arrives_whole_the_bytes_sent_with_the_head_first(pair: Pair) -> None:
    client, server = pair
    data = os.urandom(5 * MiB + 123)
    # The head and the body's first 10 KiB in one piece, as a client sends them.
    sender = send_later(client, head(len(data)) + data[: 10 * 1024], data[10 * 1024 :])
    req = next_request(parser_on(server))
    got, sizes = read_all(req.body)
    sender.join(5)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    assert sum(sizes) == len(data)
    # What came with the head is one short read; after it, reads are filled to the size asked.
    assert sizes[0] <= 10 * 1024
    assert all(s == MiB for s in sizes[1:-1])
    assert req.body.failed is False


def test_a_read_never_takes_the_next_request_off_the_socket(pair: Pair) -> None:
    client, server = pair
    first = os.urandom(3 * MiB)
    second = os.urandom(2 * MiB + 7)
    # Two requests back to back on one connection, the second sent before the first is read.
    sender = send_later(client, head(len(first), "/one") + first + head(len(second), "/two") + second)
    parser = parser_on(server)
    one = next_request(parser)
    assert one.path == "/one"
    assert read_all(one.body)[0] == first
    two = next_request(parser)
    assert two.path == "/two"
    assert read_all(two.body)[0] == second
    sender.join(5)


def test_bytes_read_ahead_past_a_short_body_stay_for_the_next_request(pair: Pair) -> None:
    client, server = pair
    # Both requests in one piece, read ahead with the first head, the way the worker's event loop
    # reads a head (up to 64 KiB at once) and hands it to the parser.
    client.sendall(head(10, "/one") + b"0123456789" + head(5, "/two") + b"abcde")
    parser = parser_on(server)
    one = next_request(parser)
    assert one.body.read(MiB) == b"0123456789"
    assert one.body.read(MiB) == b""
    two = next_request(parser)
    assert two.path == "/two"
    assert two.body.read(MiB) == b"abcde"


def test_what_the_application_leaves_unread_is_drained_before_the_next_request(pair: Pair) -> None:
    client, server = pair
    first = os.urandom(4 * MiB)
    second = b"after"
    sender = send_later(client, head(len(first), "/one") + first + head(len(second), "/two") + second)
    parser = parser_on(server)
    one = next_request(parser)
    part = one.body.read(MiB) + one.body.read(MiB)  # the application answers after a part of it
    assert part == first[: len(part)] and len(part) > MiB
    two = next_request(parser)  # gunicorn's drain reads the rest of the first body
    assert two.path == "/two"
    assert two.body.read(MiB) == second
    sender.join(5)


def test_reads_in_steps_of_any_size_give_the_same_bytes(pair: Pair) -> None:
    client, server = pair
    data = os.urandom(2 * MiB + 1)
    sender = send_later(client, head(len(data)) + data)
    body = next_request(parser_on(server)).body
    pieces = [body.read(100), body.read(DIRECT_READ_BYTES), body.read(DIRECT_READ_BYTES - 1), body.read()]
    assert b"".join(pieces) == data
    assert body.read(MiB) == b""
    sender.join(5)


def test_a_client_that_goes_away_mid_body_ends_it_short_and_the_connection_is_not_reused(pair: Pair) -> None:
    client, server = pair
    data = os.urandom(MiB)
    sender = send_later(client, head(3 * MiB) + data, then_close=True)
    parser = parser_on(server)
    req = next_request(parser)
    got, _ = read_all(req.body)
    assert got == data
    assert req.body.failed is True
    with pytest.raises(StopIteration):
        next(parser)
    sender.join(5)


def test_a_body_that_stops_arriving_raises_the_socket_s_timeout(pair: Pair) -> None:
    client, server = pair
    client.sendall(head(3 * MiB) + os.urandom(100))
    server.settimeout(0.2)
    req = next_request(parser_on(server))
    assert len(req.body.read(MiB)) == 100  # what came with the head
    with pytest.raises(TimeoutError):
        req.body.read(MiB)
    assert req.body.failed is True
