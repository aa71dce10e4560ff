"""Single setting values read from text (environment variables, secrets): parsed strictly, shown safely.

No dependencies, so any module (an adapter, the poller, the handler) can read its own setting without importing
the configuration as a whole.
"""

from __future__ import annotations

import re

from ckpt.errors import ConfigurationError


def whole_number(name: str, value: str | None, default: int, low: int, high: int) -> int:
    """A numeric setting: ``default`` when unset or empty, else plain ASCII digits from ``low`` to ``high``
    (``isdigit()`` would admit "²" and "٣", and an unbounded ``int()`` a number of any length)."""
    text = (value or "").strip()
    if not text:
        return default
    if not re.fullmatch(r"[0-9]{1,9}", text) or not low <= int(text) <= high:
        raise ConfigurationError(f"{name} must be a whole number from {low} to {high}, got {shown_setting(text, 40)}")
    return int(text)


_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


def flag(name: str, value: str | None) -> bool:
    """A yes/no setting; unset is no. Any other word is refused rather than guessed (this one turns deletions on)."""
    if value is None:
        return False
    word = value.strip().lower()
    if word in _TRUE | _FALSE:
        return word in _TRUE
    raise ConfigurationError(f"{name} must be true or false, got {shown_setting(value)}")


def shown_setting(value: object, limit: int = 40) -> str:
    """A configuration value as a message may show it: the repr of a short plain value, else only what it is.
    Only for values that cannot be secret (a port, an sslmode, an engine name), and never a huge text or number:
    repr() of an int of 5,000 digits raises ValueError."""
    if value is None or isinstance(value, bool | float):
        return repr(value)
    if isinstance(value, int):
        return repr(value) if abs(value) < 10**limit else "a number too large"
    if isinstance(value, str):
        if len(value) <= limit and value.isascii() and value.isprintable():
            return repr(value)
        return f"a text of {len(value)} characters"
    kinds = {list: "a JSON array", dict: "a JSON object"}
    return next((kind for cls, kind in kinds.items() if isinstance(value, cls)), f"a {type(value).__name__}")
