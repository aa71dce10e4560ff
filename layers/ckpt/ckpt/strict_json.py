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


def loads(raw: bytes | str, what: str) -> Any:
    """Parse ``raw`` (UTF-8 bytes without a byte-order mark, or text) as ``what``, e.g. "manifest"."""
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
