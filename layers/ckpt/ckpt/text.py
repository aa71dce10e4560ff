"""Text from outside (keys, events, error messages) made safe to store, log and show.

S3 keys may hold NUL, which PostgreSQL text refuses; JSON may hold lone surrogates, which UTF-8 cannot encode;
anything may be longer than a column or a log line should carry. These write such characters as backslash
escapes and cut what is too long, saying how much was cut, so nothing downstream fails on them.
"""

from __future__ import annotations


def escaped(text: str) -> str:
    """``text`` with NUL and lone surrogates written as backslash escapes: valid UTF-8 any store accepts."""
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def bounded(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, the cut saying how many characters it dropped."""
    if len(text) <= limit:
        return text
    # Sized for the largest count it could hold, so the note never pushes the result past the limit.
    cut = max(0, limit - len(f"…[{len(text)} more characters]"))
    return text[:cut] + f"…[{len(text) - cut} more characters]"


def shown(value: object, limit: int = 300) -> str:
    """``value`` as it is shown in a message: its repr (quotes and escapes), cut to ``limit`` characters."""
    return bounded(repr(value), limit)
