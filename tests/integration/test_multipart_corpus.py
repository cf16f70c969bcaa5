"""A corpus of malformed multipart bodies: each is a 400 problem+json and leaves nothing behind."""

from __future__ import annotations

import pytest
from werkzeug.test import Client

from common.services import Services
from tests.factories import bearer, png, token
from tests.support import stored_blobs, temp_leftovers

B = "corpus-boundary"
PNG = png()


def framed(*parts: bytes, boundary: str = B, close: bool = True) -> bytes:
    body = b"".join(f"--{boundary}\r\n".encode() + p + b"\r\n" for p in parts)
    return body + (f"--{boundary}--\r\n".encode() if close else b"")


def file_part(data: bytes = PNG, filename: bytes = b"a.png", name: bytes = b"file") -> bytes:
    return (
        b'Content-Disposition: form-data; name="' + name + b'"; filename="' + filename + b'"\r\n\r\n' + data
    )


CORPUS: dict[str, tuple[bytes, str]] = {
    "no boundary": (framed(file_part()), "multipart/form-data"),
    "an empty boundary": (framed(file_part()), "multipart/form-data; boundary="),
    "a boundary of 200 characters": (
        framed(file_part(), boundary="b" * 200),
        "multipart/form-data; boundary=" + "b" * 200,
    ),
    "an unterminated part": (framed(file_part(), close=False), f"multipart/form-data; boundary={B}"),
    "a 1 MiB part header": (
        framed(
            b'Content-Disposition: form-data; name="file"; filename="'
            + b"x" * (1024 * 1024)
            + b'"\r\n\r\n'
            + PNG
        ),
        f"multipart/form-data; boundary={B}",
    ),
    "two file fields": (framed(file_part(), file_part(png())), f"multipart/form-data; boundary={B}"),
    "a zero-length file": (framed(file_part(b"")), f"multipart/form-data; boundary={B}"),
    "no file field": (
        framed(b'Content-Disposition: form-data; name="title"\r\n\r\nsoup'),
        f"multipart/form-data; boundary={B}",
    ),
    "a file field of another name": (framed(file_part(name=b"photo")), f"multipart/form-data; boundary={B}"),
    "a NUL in the filename": (
        framed(file_part(filename=b"a\x00b.png")),
        f"multipart/form-data; boundary={B}",
    ),
    "CR/LF in the filename": (
        framed(file_part(filename=b"a\r\nX-Injected: 1\r\n.png")),
        f"multipart/form-data; boundary={B}",
    ),
    "a part header without a colon": (
        framed(b"Content-Disposition form-data\r\n\r\n" + PNG),
        f"multipart/form-data; boundary={B}",
    ),
    "headers that never end": (
        f'--{B}\r\nContent-Disposition: form-data; name="file"'.encode(),
        f"multipart/form-data; boundary={B}",
    ),
    "nothing at all": (b"", f"multipart/form-data; boundary={B}"),
}


@pytest.mark.parametrize("case", list(CORPUS))
def test_a_malformed_multipart_body_is_400_and_leaves_nothing(
    api: Client, services: Services, case: str
) -> None:
    body, ctype = CORPUS[case]
    tok = token()
    resp = api.post("/media", data=body, content_type=ctype, headers=bearer(tok))
    assert resp.status_code == 400, (case, resp.status_code, resp.get_data(as_text=True)[:300])
    assert resp.headers["Content-Type"] == "application/problem+json"
    assert resp.get_json()["status"] == 400 and resp.get_json()["detail"]
    assert temp_leftovers(services.store) == []
    assert stored_blobs(services.store) == []
    assert api.get("/media", headers=bearer(tok)).get_json()["items"] == []


def test_the_corpus_frames_a_good_upload_when_nothing_is_wrong(api: Client) -> None:
    """The control: the same framing with nothing wrong is a 201."""
    ctype = f"multipart/form-data; boundary={B}"
    resp = api.post("/media", data=framed(file_part()), content_type=ctype, headers=bearer(token()))
    assert resp.status_code == 201, resp.get_data(as_text=True)
