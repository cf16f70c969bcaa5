"""Streaming intake of an upload body into a CAS writer: multipart/form-data (direct upload) or
a raw body (presigned PUT).

The body is read in fixed chunks from the WSGI input stream. Multipart goes through Werkzeug's
sans-IO decoder and the bytes of the `file` part go straight into the writer (which hashes,
counts and keeps the sniff prefix), so they are copied once and never held in memory or spooled
to TMPDIR the way `request.files` would. `request.form`/`request.files`/`request.data` are never
touched on this path. Both intakes call `on_prefix` once, as soon as the first `SNIFF_BYTES` are
in (or at the end of a shorter body), so a wrong type is rejected before the rest is read.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from typing import Protocol

from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge
from werkzeug.http import parse_options_header
from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData, State

from common.cas import SNIFF_BYTES, BlobWriter
from common.problems import BodyStalled, MalformedUpload, UnsupportedMediaType
from common.text import scrub


class Readable(Protocol):
    """What the intake needs of a body: the WSGI input stream, or a wrapper of it."""

    def read(self, size: int = -1, /) -> bytes: ...


CHUNK_BYTES = 1024 * 1024  # a read of the body; worker.DirectBody fills it straight from the socket
FILE_FIELD = "file"
MAX_OTHER_FIELD_BYTES = 64 * 1024  # other form fields are ignored, but not unboundedly
MAX_FILENAME_CHARS = 255
MAX_BOUNDARY_CHARS = 70  # RFC 2046 §5.1.1
MAX_PART_HEADER_BYTES = 16 * 1024
MAX_PARTS = 100
_UNSAFE = re.compile(r"[\x00-\x1f\x7f\"\\/]")


def safe_filename(raw: str | None) -> str:
    """A name fit for Content-Disposition: no path, no control characters, NFC, bounded length."""
    name = unicodedata.normalize("NFC", scrub(raw or "", "_"))
    name = re.split(r"[\\/]", name)[-1]  # browsers on Windows may send C:\fakepath\photo.jpg
    name = _UNSAFE.sub("_", name).strip(" .")
    if len(name) > MAX_FILENAME_CHARS:
        stem, dot, ext = name.rpartition(".")
        keep = ext if dot and len(ext) <= 16 else ""
        name = name[: MAX_FILENAME_CHARS - len(keep) - 1] + ("." + keep if keep else "")
    return name or "upload"


class _Sniffer:
    def __init__(self, writer: BlobWriter, on_prefix: Callable[[bytes], None]) -> None:
        self._writer = writer
        self._on_prefix = on_prefix
        self.done = False

    def write(self, data: bytes) -> None:
        self._writer.write(data)
        if not self.done and self._writer.size >= SNIFF_BYTES:
            self.finish()

    def finish(self) -> None:
        if not self.done:
            self.done = True
            self._on_prefix(self._writer.prefix)


def read_body(stream: Readable, size: int = CHUNK_BYTES) -> bytes:
    """The next `size` bytes of a request body at most.

    Under `common.server` the socket has a timeout (`MEDIA_BODY_IDLE_TIMEOUT_SECONDS`): a body that
    stops arriving raises BodyStalled (408) instead of holding the thread.
    """
    try:
        return stream.read(size)
    except ClientDisconnected:
        raise MalformedUpload("the client disconnected before the body was complete") from None
    except TimeoutError:
        raise BodyStalled() from None


def receive_body(stream: Readable, writer: BlobWriter, on_prefix: Callable[[bytes], None]) -> None:
    """Stream a raw body (a presigned PUT) into `writer` until the end of the input."""
    sniffer = _Sniffer(writer, on_prefix)
    while chunk := read_body(stream):
        sniffer.write(chunk)
    sniffer.finish()


def boundary_of(content_type: str | None) -> bytes:
    mimetype, options = parse_options_header(content_type or "")
    if mimetype != "multipart/form-data":
        raise UnsupportedMediaType(
            f"Send the file as multipart/form-data in the field `{FILE_FIELD}`"
            f" (got {mimetype or 'no Content-Type'})"
        )
    boundary = options.get("boundary", "")
    if not boundary or len(boundary) > MAX_BOUNDARY_CHARS:
        raise MalformedUpload(
            f"the multipart Content-Type has no usable boundary (1 to {MAX_BOUNDARY_CHARS} characters)"
        )
    return boundary.encode("latin-1")


def _header_bytes(part: File | Field) -> int:
    return sum(len(name) + len(value) + 4 for name, value in part.headers.items())


def receive_multipart(
    stream: Readable,
    content_type: str | None,
    writer: BlobWriter,
    on_prefix: Callable[[bytes], None],
) -> str:
    """Stream the single `file` part into `writer`; return its (sanitised) filename.

    `on_prefix` is called once with the first `SNIFF_BYTES` of the file (or all of it when shorter)
    and may raise to reject the upload before the rest of the body is read.
    """
    # The decoder's own bound caps what it buffers (part headers, one chunk of data).
    decoder = MultipartDecoder(
        boundary_of(content_type),
        max_form_memory_size=CHUNK_BYTES + MAX_OTHER_FIELD_BYTES,
        max_parts=MAX_PARTS,
    )
    filename: str | None = None
    in_file = False
    sniffer = _Sniffer(writer, on_prefix)
    other_bytes = 0

    while True:
        chunk = read_body(stream)
        try:
            decoder.receive_data(chunk or None)
            event = decoder.next_event()
            while not isinstance(event, NeedData | Epilogue):
                if isinstance(event, File | Field) and _header_bytes(event) > MAX_PART_HEADER_BYTES:
                    raise MalformedUpload(f"a part's headers are over {MAX_PART_HEADER_BYTES} bytes")
                if isinstance(event, File):
                    if event.name != FILE_FIELD:
                        raise MalformedUpload(f"unexpected file field `{event.name}`; use `{FILE_FIELD}`")
                    if filename is not None:
                        raise MalformedUpload("send exactly one file per request")
                    if any(c in (event.filename or "") for c in "\x00\r\n"):
                        raise MalformedUpload("the file's name holds a NUL or a line break")
                    filename = safe_filename(event.filename)
                    in_file = True
                elif isinstance(event, Field):
                    in_file = False
                elif isinstance(event, Data):
                    if in_file:
                        sniffer.write(event.data)
                    else:
                        other_bytes += len(event.data)
                        if other_bytes > MAX_OTHER_FIELD_BYTES:
                            raise MalformedUpload("the form fields besides the file are too large")
                event = decoder.next_event()
        except (ValueError, RequestEntityTooLarge) as exc:
            if not chunk:
                raise MalformedUpload("the body ended before the closing multipart boundary") from None
            raise MalformedUpload(f"the multipart body is malformed: {exc}") from None
        # Past the closing boundary: the epilogue is ignored (RFC 2046 §5.1.1) and not even read.
        if isinstance(event, Epilogue) or decoder.state is State.EPILOGUE:
            break
        if not chunk:
            raise MalformedUpload("the body ended before the closing multipart boundary")

    if filename is None:
        raise MalformedUpload(f"the form has no `{FILE_FIELD}` part")
    if writer.size == 0:
        raise MalformedUpload(f"the `{FILE_FIELD}` part is empty")
    sniffer.finish()
    return filename
