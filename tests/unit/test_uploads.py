from __future__ import annotations

import io

import pytest

from common.cas import SNIFF_BYTES
from common.memorystore import MemoryBlobWriter
from common.problems import MalformedUpload, TypeNotAllowed, UnsupportedMediaType
from common.uploads import CHUNK_BYTES, receive_multipart, safe_filename
from tests.factories import multipart, png


class CountingStream(io.BytesIO):
    """Remembers how much of the body the code under test actually read."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.consumed = 0

    def read(self, size: int | None = -1) -> bytes:
        chunk = super().read(size)
        self.consumed += len(chunk)
        return chunk


def receive(body: bytes, content_type: str, limit: int = 10**9) -> tuple[str, MemoryBlobWriter, list[bytes]]:
    writer = MemoryBlobWriter(limit)
    prefixes: list[bytes] = []
    name = receive_multipart(io.BytesIO(body), content_type, writer, prefixes.append)
    return name, writer, prefixes


def test_the_file_part_is_streamed_into_the_writer() -> None:
    data = png()
    body, ctype = multipart([("title", None, b"soup"), ("file", "soup.png", data), ("x", None, b"y")])
    name, writer, prefixes = receive(body, ctype)
    assert name == "soup.png"
    assert bytes(writer.buffer) == data
    assert prefixes == [data]  # a small file is sniffed whole, once


def test_a_file_over_many_reads_arrives_whole() -> None:
    data = bytes(range(256)) * (3 * CHUNK_BYTES // 256 + 1000)
    body, ctype = multipart([("file", "a.bin", data), ("note", None, b"after the file")])
    _, writer, prefixes = receive(body, ctype)
    assert bytes(writer.buffer) == data
    assert prefixes == [data[:SNIFF_BYTES]]


def test_a_large_file_is_sniffed_on_its_first_64k_before_the_rest_is_read() -> None:
    data = b"\x7fELF" + b"\0" * (16 * 1024 * 1024)
    body, ctype = multipart([("file", "x.png", data)])
    stream = CountingStream(body)

    def reject(prefix: bytes) -> None:
        assert len(prefix) == SNIFF_BYTES
        raise TypeNotAllowed("application/x-executable", frozenset({"image/png"}))

    with pytest.raises(TypeNotAllowed):
        receive_multipart(stream, ctype, MemoryBlobWriter(10**9), reject)
    assert stream.consumed <= CHUNK_BYTES  # rejected within the first read, long before the 16 MiB


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        ([("title", None, b"x")], "no `file` part"),
        ([("file", "a.png", b"1"), ("file", "b.png", b"2")], "exactly one file"),
        ([("upload", "a.png", b"1")], "unexpected file field"),
    ],
)
def test_forms_without_exactly_one_file_field_are_400(
    parts: list[tuple[str, str | None, bytes]], message: str
) -> None:
    body, ctype = multipart(parts)
    with pytest.raises(MalformedUpload, match=message):
        receive(body, ctype)


def test_a_truncated_body_is_400() -> None:
    body, ctype = multipart([("file", "a.png", png())])
    with pytest.raises(MalformedUpload, match="ended before"):
        receive(body[:-30], ctype)


def test_oversized_other_fields_are_400() -> None:
    body, ctype = multipart([("notes", None, b"x" * 200_000), ("file", "a.png", png())])
    with pytest.raises(MalformedUpload):
        receive(body, ctype)


@pytest.mark.parametrize("ctype", [None, "application/json", "image/png", "multipart/mixed; boundary=x"])
def test_a_body_that_is_not_multipart_form_data_is_415(ctype: str | None) -> None:
    with pytest.raises(UnsupportedMediaType):
        receive_multipart(io.BytesIO(b"{}"), ctype, MemoryBlobWriter(100), lambda p: None)


def test_multipart_without_boundary_is_400() -> None:
    with pytest.raises(MalformedUpload, match="boundary"):
        receive_multipart(io.BytesIO(b""), "multipart/form-data", MemoryBlobWriter(100), lambda p: None)


@pytest.mark.parametrize(
    ("raw", "safe"),
    [
        ("photo.png", "photo.png"),
        ("../../etc/passwd", "passwd"),
        ("C:\\fakepath\\Tarte Tatin.jpg", "Tarte Tatin.jpg"),
        ('evil"\r\nSet-Cookie: x.png', "evil___Set-Cookie: x.png"),
        ("", "upload"),
        (None, "upload"),
        ("..", "upload"),
        ("Cre\u0300me bru\u0302le\u0301e.jpg", "Crème brûlée.jpg"),  # NFC
    ],
)
def test_safe_filename(raw: str | None, safe: str) -> None:
    assert safe_filename(raw) == safe


def test_safe_filename_bounds_length_and_keeps_the_extension() -> None:
    name = safe_filename("a" * 1000 + ".jpeg")
    assert len(name) == 255
    assert name.endswith(".jpeg")
