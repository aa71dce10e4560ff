"""JSON documents read strictly: one meaning per document, or a reason a person can act on.

Manifests and notifications are both read here, so what counts as valid JSON cannot differ between them.
``json.loads`` alone is lenient where that hides mistakes: given bytes it guesses UTF-16 or UTF-32 and
skips a byte-order mark, a repeated key silently keeps its last value (a document could then say two
things about its own job id), and it accepts NaN and Infinity, which are not JSON.
"""

from __future__ import annotations

import json
from typing import Any


class InvalidJson(ValueError):
    """The text is not one unambiguous JSON document; the message says why."""


_BYTE_ORDER_MARKS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")


def _no_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise InvalidJson(f"key {key!r} appears more than once in one object")
        document[key] = value
    return document


def _no_constant(name: str) -> Any:
    raise InvalidJson(f"{name} is not valid JSON; write null instead")


# Deeper than any manifest or notification nests, and far below where Python's parser would recurse out: the
# same document is then accepted or refused the same way whatever called the parser.
MAX_DEPTH = 64


def _depth(text: str) -> int:
    """How deeply arrays and objects nest in ``text`` (brackets inside strings do not count)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def loads(raw: Any, what: str) -> Any:
    """Parse ``raw`` (UTF-8 bytes without a byte-order mark, or text) as ``what``, e.g. "manifest"."""
    if not isinstance(raw, bytes | str):
        raise InvalidJson(f"{what} must be text, got {'nothing' if raw is None else type(raw).__name__}")
    if isinstance(raw, bytes):
        if raw.startswith(_BYTE_ORDER_MARKS) or raw[:4] in (b"\x00\x00\xfe\xff", b"\xff\xfe\x00\x00"):
            raise InvalidJson(f"{what} starts with a byte-order mark: write UTF-8 without one")
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidJson(f"{what} is not UTF-8 text: {exc}") from None
    if "\x00" in raw:
        # UTF-16 and UTF-32 text of ASCII characters decodes as "UTF-8" with a NUL beside every character
        raise InvalidJson(f"{what} contains NUL characters: is it UTF-16 or UTF-32? Write UTF-8")
    if raw.count("[") + raw.count("{") > MAX_DEPTH and _depth(raw) > MAX_DEPTH:
        raise InvalidJson(f"{what} nests deeper than {MAX_DEPTH} levels")
    try:
        return json.loads(raw, object_pairs_hook=_no_repeated_keys, parse_constant=_no_constant)
    except InvalidJson as exc:
        raise InvalidJson(f"{what}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise InvalidJson(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidJson(f"{what} nests too deeply") from None
    except ValueError as exc:  # e.g. an integer literal longer than Python converts
        raise InvalidJson(f"{what} is not usable JSON: {exc}") from None
