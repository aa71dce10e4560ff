"""Database errors as the domain's: what the database refuses and will refuse again is ``Rejected`` (permanent),
anything else ``DatabaseUnavailable`` (transient, retried). Every database caller in ``ckpt`` goes through here."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError

from ckpt.errors import DatabaseUnavailable, Rejected


@contextmanager
def database_errors() -> Iterator[None]:
    try:
        yield
    except SQLAlchemyError as exc:
        if _refuses_the_data(exc):
            # The database refuses these values, and will again: retrying cannot help.
            raise Rejected(f"the database refused the promotion: {getattr(exc, 'orig', exc)}") from exc
        cause = getattr(exc, "orig", None) or exc
        raise DatabaseUnavailable(f"database error: {type(cause).__name__}: {cause}") from exc


def _refuses_the_data(exc: SQLAlchemyError) -> bool:
    """Data exceptions (SQLSTATE class 22) and integrity violations (23): permanent, unlike a lost connection.
    pg8000 reports them as ProgrammingError carrying the SQLSTATE; other drivers as DataError/IntegrityError."""
    if isinstance(exc, (DataError, IntegrityError)):
        return True
    orig = getattr(exc, "orig", None)
    fields = orig.args[0] if orig is not None and orig.args and isinstance(orig.args[0], dict) else {}
    return str(fields.get("C", "")).startswith(("22", "23"))
