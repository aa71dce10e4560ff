"""Domain errors. Adapters translate library exceptions into these, so the promotion logic and the
handler decide what to retry without knowing boto3 or SQLAlchemy.

- ``Rejected``: permanent; retrying cannot help. Recorded as an outcome, never retried.
- ``TransientError``: the same input may succeed later (storage 5xx, database unreachable, a staged
  file replaced mid-promotion). Raised to the trigger so it is retried.
"""

from __future__ import annotations

from pydantic import ValidationError


class Rejected(Exception):
    """The manifest cannot be promoted, for a reason a person can act on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TransientError(Exception):
    """Retry later: the failure is in the infrastructure, not in the input."""


class StorageUnavailable(TransientError):
    """The object store failed (5xx, throttling, connection, permissions)."""


class ObjectChanged(TransientError):
    """An object changed between verification and copy; the next try re-reads the manifest."""


class DatabaseUnavailable(TransientError):
    """The database could not be reached or refused the transaction (including lock timeouts)."""


class ObjectMissing(Exception):
    """The object does not exist (raised by the storage adapter; the caller decides what it means)."""


class ConfigurationError(Exception):
    """The deployment is misconfigured (missing setting, service tables not created)."""


def describe(exc: ValidationError) -> str:
    """A pydantic error as one line a person can act on: ``field.path: problem; …``."""
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'document'}: {error['msg']}"
        for error in exc.errors(include_url=False)
    )
