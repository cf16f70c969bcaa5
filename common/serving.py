"""Serving stored bytes: the headers user content is sent with, ranges as spans of the open file
(sendfile under gunicorn), 304s, and the 307 to an object store's presigned URL.

The decision (which status, which range) is `conditional.py`'s, pure; this module only turns it
into a response.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from typing import BinaryIO
from urllib.parse import quote

from werkzeug.wrappers import Request, Response
from werkzeug.wsgi import wrap_file

from common.conditional import Content
from common.web import note

# MSC2702 / Synapse: only passive types are shown inline; everything else downloads.
INLINE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp", "image/avif"})
FILE_CHUNK = 1024 * 1024


def content_disposition(filename: str, content_type: str) -> str:
    """RFC 6266 with an ASCII fallback and RFC 8187 `filename*`; the name was sanitised at upload."""
    kind = "inline" if content_type in INLINE_TYPES else "attachment"
    ascii_name = unicodedata.normalize("NFKD", filename).encode("ascii", "ignore").decode()
    ascii_name = re.sub(r'[^\x20-\x7e]|["\\]', "_", ascii_name) or "download"
    return f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


class _Span:
    """A file object limited to `length` bytes from its current position.

    gunicorn sends it with sendfile (it uses `fileno()`, the current offset and Content-Length);
    servers without sendfile read it and stop at the end of the range.
    """

    def __init__(self, file: BinaryIO, length: int) -> None:
        self._file = file
        self._left = length

    def read(self, size: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        size = self._left if size < 0 else min(size, self._left)
        data = self._file.read(size)
        self._left -= len(data)
        return data

    def fileno(self) -> int:
        return self._file.fileno()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def close(self) -> None:
        self._file.close()


def content_response(content: Content, request: Request) -> Response:
    rep, decision = content.representation, content.decision
    headers = {
        "ETag": rep.etag_header,
        "Last-Modified": rep.last_modified_header,
        "Cache-Control": "private, max-age=31536000, immutable",
        "Accept-Ranges": "bytes",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "sandbox; default-src 'none'",
    }
    if content.vary:
        headers["Vary"] = content.vary  # on a 304 too: it describes the 200 it stands for
    note(request, sha256=rep.etag, size=decision.length)
    if decision.status == 304:
        return Response(status=304, headers=headers)
    disposition = content_disposition(content.filename, content.content_type)
    url = (
        content.redirect(content.content_type, disposition, headers["Cache-Control"])
        if content.redirect
        else None
    )
    if url is not None:
        # 307: the same request (Range included) again, at the object store, for a short while.
        return Response(
            status=307, headers={"Location": url, "Cache-Control": "no-store", "ETag": rep.etag_header}
        )
    headers["Content-Type"] = content.content_type
    headers["Content-Disposition"] = disposition
    headers["Content-Length"] = str(decision.length)
    if decision.status == 206:
        headers["Content-Range"] = f"bytes {decision.start}-{decision.end}/{rep.size}"
    body: Iterable[bytes] = ()
    if content.file is not None:
        body = wrap_file(request.environ, _Span(content.file, decision.length), FILE_CHUNK)  # type: ignore[arg-type]
    # direct_passthrough hands the file wrapper to the server untouched (sendfile under gunicorn).
    return Response(body, status=decision.status, headers=headers, direct_passthrough=True)
