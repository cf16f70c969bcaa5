"""A WebP decoded into one buffer, for `imaging.render`: a 24 MP photo must stay under 300 MiB.

Pillow decodes a WebP through libwebp's animation decoder, which holds two full-size canvases
besides the frame it returns, and Pillow copies that frame once more: at 24 MP, four RGBA copies
of 92 MiB at once. libwebp's simple API (`WebPGetInfo`, `WebPDecodeRGB(A)Into`: decode.h, a
stable C API since libwebp 0.1) decodes straight into a buffer of ours; we call the very libwebp
Pillow loaded (found in this process's map, wherever the wheel put it) through ctypes, or the
system's. An animated WebP, which the simple API refuses, and a machine without either library
are decoded through Pillow's binding (`pillow_frame`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re
from functools import cache
from pathlib import Path
from typing import Any


def decode(original: Path, alpha: bool) -> Any:
    """The WebP's pixels (RGBA when `alpha`, else RGB), decoded once into one buffer (92 MiB as
    RGBA at 24 MP, 69 as RGB); an animated one's first frame, through Pillow."""
    from PIL import Image

    data = original.read_bytes()
    lib = libwebp()
    if lib is not None:
        width, height = ctypes.c_int(), ctypes.c_int()
        if lib.WebPGetInfo(data, len(data), ctypes.byref(width), ctypes.byref(height)):
            mode = "RGBA" if alpha else "RGB"
            stride = width.value * len(mode)
            pixels = bytearray(stride * height.value)
            into = lib.WebPDecodeRGBAInto if alpha else lib.WebPDecodeRGBInto
            target = (ctypes.c_uint8 * len(pixels)).from_buffer(pixels)
            if into(data, len(data), target, len(pixels), stride):
                del target  # the buffer is the image's now
                return Image.frombuffer(mode, (width.value, height.value), pixels, "raw", mode, 0, 1)
            del target
    return pillow_frame(data)


@cache
def libwebp() -> ctypes.CDLL | None:
    """Pillow's libwebp (loaded with its `_webp` module; found in this process's map, wherever the
    wheel put it), or the system's; None when neither is there."""
    from PIL import _webp  # noqa: F401 - loads Pillow's libwebp into this process

    loaded = re.compile(r"\s(/\S*/libwebp(?:-[0-9a-f]+)?\.so[.0-9]*)$")
    maps = Path("/proc/self/maps")
    found = [
        m.group(1)
        for line in (maps.read_text().splitlines() if maps.exists() else ())
        if (m := loaded.search(line))
    ]
    path = found[0] if found else ctypes.util.find_library("webp")
    if path is None:
        return None
    lib = ctypes.CDLL(path)
    lib.WebPGetInfo.argtypes = [
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.POINTER(ctypes.c_int),
        ctypes.POINTER(ctypes.c_int),
    ]
    lib.WebPGetInfo.restype = ctypes.c_int
    for name in ("WebPDecodeRGBAInto", "WebPDecodeRGBInto"):
        into = getattr(lib, name)
        into.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.POINTER(ctypes.c_uint8),
            ctypes.c_size_t,
            ctypes.c_int,
        ]
        into.restype = ctypes.c_void_p  # the output buffer, or NULL when it cannot decode
    return lib


def pillow_frame(data: bytes) -> Any:
    """The first frame of a WebP through Pillow's binding, as an image over the frame's own bytes
    (Pillow's loader would copy them once more while its decoder is alive)."""
    from PIL import Image, _webp

    decoder = _webp.WebPAnimDecoder(data)
    size, _loop, _background, _frames, rawmode = decoder.get_info()
    frame, _timestamp = decoder.get_next()  # OSError when it cannot
    del decoder
    return Image.frombuffer(rawmode, size, frame, "raw", rawmode, 0, 1)
