"""Text PostgreSQL cannot store: NUL characters, and lone surrogates (which are not Unicode text
and have no UTF-8 encoding). Both are refused at the edge, where the error can still say which
input was wrong, instead of failing as a 500 at the database. Pure functions.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def problem_in(text: str) -> str | None:
    """What makes `text` unstorable, or None when it is fine."""
    found = _UNSTORABLE.search(text)
    if found is None:
        return None
    if found.group() == "\x00":
        return "contains a NUL character"
    return f"contains a lone surrogate (U+{ord(found.group()):04X}), which is not Unicode text"


def scrub(text: str, replacement: str = "\N{REPLACEMENT CHARACTER}") -> str:
    """`text` with every unstorable character replaced."""
    return _UNSTORABLE.sub(replacement, text)


def unstorable_strings(value: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """(location, problem) for each unstorable string in a JSON document, keys included."""
    if isinstance(value, str):
        problem = problem_in(value)
        if problem is not None:
            yield where or "the value", problem
    elif isinstance(value, dict):
        for key, item in value.items():
            path = f"{where}.{key}" if where else str(key)
            if isinstance(key, str) and (problem := problem_in(key)) is not None:
                yield f"a key in {where or 'the object'}", problem
            else:
                yield from unstorable_strings(item, path)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from unstorable_strings(item, f"{where}[{index}]")
