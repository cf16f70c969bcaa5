"""Test data and tokens: real files of each type, unique per call, and JWTs."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import os
import struct
import uuid
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from PIL import Image

from common.config import Config
from common.memory_repository import InMemoryMediaRepository
from common.memorystore import InMemoryBlobStore
from common.services import Services
from common.signing import KeyRing
from common.tokens import DELETE, READ, WRITE, issue_hs256
from common.verifiers import JwtVerifier
from localdev.harness import photo_pixels

TEST_SECRET = "test-secret-" + "x" * 40
PRESIGN_SECRET = "presign-secret-" + "p" * 40
PUBLIC_BASE = "http://media.test"


def memory_services(clock: Callable[[], float] | None = None, **env: str) -> Services:
    """Services with the in-memory repository and blob store, for unit tests of the use cases."""
    extra: dict[str, Any] = {} if clock is None else {"clock": clock}
    return Services(
        config=Config.from_env({"MEDIA_JWT_SECRET": TEST_SECRET, **env}),
        store=InMemoryBlobStore(),
        repo=InMemoryMediaRepository(),
        verifier=JwtVerifier(secret=TEST_SECRET),
        keys=KeyRing(PRESIGN_SECRET),
        **extra,
    )


def png(width: int = 16, height: int = 16) -> bytes:
    """A valid PNG with random pixels, so every call gives different bytes (and a different digest)."""
    img = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def jpeg(width: int = 32, height: int = 32) -> bytes:
    img = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=80)
    return out.getvalue()


def pdf() -> bytes:
    """A one-page PDF; the comment makes the bytes unique."""
    body = (
        b"%PDF-1.4\n%" + uuid.uuid4().hex.encode() + b"\n"
        b"1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
        b"2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n"
        b"3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 100 100]>>endobj\n"
        b"trailer<</Root 1 0 R>>\n%%EOF\n"
    )
    return body


def elf() -> bytes:
    """A real executable from this machine."""
    return Path("/bin/true").read_bytes()


def token(
    subject: str | None = None,
    scopes: Iterable[str] = (READ, WRITE, DELETE),
    secret: str = TEST_SECRET,
    **kwargs: object,
) -> str:
    return issue_hs256(secret, subject or f"user-{uuid.uuid4().hex[:12]}", scopes, **kwargs)  # type: ignore[arg-type]


def bearer(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


def multipart(
    parts: list[tuple[str, str | None, bytes]], boundary: str = "----media-test-boundary-7MA4YWxk"
) -> tuple[bytes, str]:
    """(body, content type) for parts of (field name, filename or None, data)."""
    out = io.BytesIO()
    for name, filename, data in parts:
        out.write(f"--{boundary}\r\n".encode())
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out.write(f"Content-Disposition: {disposition}\r\n".encode())
        if filename is not None:
            out.write(b"Content-Type: application/octet-stream\r\n")
        out.write(b"\r\n")
        out.write(data)
        out.write(b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def upload_body(data: bytes, filename: str = "photo.png") -> tuple[bytes, str]:
    return multipart([("file", filename, data)])


def hs256_signed_with(claims: dict[str, object], key: bytes, kid: str | None = None) -> str:
    """What PyJWT refuses to make: an HS256 token whose secret is, say, a provider's public key
    (the key-confusion attack)."""

    def part(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    header = {"alg": "HS256", **({"kid": kid} if kid else {})}
    signing_input = part(json.dumps(header).encode()) + b"." + part(json.dumps(claims).encode())
    return (signing_input + b"." + part(hmac.new(key, signing_input, hashlib.sha256).digest())).decode()


# --- photos for the image pipeline ------------------------------------------------------------

ORIENTATION = 0x0112
GPS_IFD = 0x8825


def photo(
    width: int = 1600,
    height: int = 1200,
    fmt: str = "JPEG",
    *,
    rotated: bool = False,
    gps: bool = False,
) -> bytes:
    """`width` x `height` upright, encoded as `fmt` (JPEG, PNG, WEBP, HEIF). `rotated`: the pixels
    stored turned a quarter and EXIF orientation 6 saying so (as a phone held upright writes them);
    `gps`: EXIF GPS tags, which no variant may keep."""
    picture = photo_pixels(width, height)
    exif = Image.Exif()
    if rotated:
        picture = picture.transpose(Image.Transpose.ROTATE_90)  # orientation 6 turns it back
        exif[ORIENTATION] = 6
    if gps:
        exif[GPS_IFD] = {1: "N", 2: (52.0, 22.0, 1.0), 3: "E", 4: (4.0, 53.0, 2.0)}
    buf = io.BytesIO()
    if fmt == "HEIF":
        import pillow_heif

        pillow_heif.register_heif_opener()
    picture.save(buf, fmt, quality=90, exif=exif.tobytes())
    return buf.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A few hundred bytes of PNG whose header claims `width` x `height` (a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def png_with_text(text: bytes) -> bytes:
    """A valid PNG from the factory with a tEXt chunk carrying `text` just after IHDR."""
    data = png(64, 64)
    ihdr_end = 8 + 4 + 4 + 13 + 4
    body = b"Comment\0" + text
    chunk = struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body))
    return data[:ihdr_end] + chunk + data[ihdr_end:]
