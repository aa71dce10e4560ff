"""After a committed promotion: delete the staged files it let go of (``ckpt.contract.cleanup`` decides which).

The promotion calls this once its transaction has committed, and only then. Nothing here can fail the
promotion: every failure is logged and reported in the outcome's ``cleanup`` (counted by the function's
``StagedDeletionFailures`` metric), and what stays is left for the staging lifecycle rule. Each file is read
(HEAD) before it is deleted, and deleted only as the version seen: a missing key is skipped without writing
a delete marker, and the promoted attempt's files only while they are still the verified versions.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Protocol

from ckpt.contract.cleanup import CleanupReport, StagedDeletion, staged_deletions
from ckpt.contract.keys import AttemptRef, Layout
from ckpt.errors import ObjectChanged, ObjectMissing
from ckpt.promotion.ports import ObjectInfo

log = logging.getLogger(__name__)


class StagingFiles(Protocol):
    """What the cleanup needs from the object store (``ckpt.adapters.storage.S3Storage``)."""

    def head(self, key: str) -> ObjectInfo: ...
    def delete(self, key: str, etag: str) -> None: ...
    def list_folders(self, prefix: str) -> list[str]: ...


class StagingCleanup:
    def __init__(self, layout: Layout, storage: StagingFiles) -> None:
        self.layout = layout
        self.storage = storage

    def after_commit(self, promoted: AttemptRef, verified: Mapping[str, str]) -> CleanupReport:
        """Delete what the committed promotion of ``promoted`` lets go of. ``verified``: each staged key the
        promotion copied → the ETag of the version it verified. Never raises."""
        folder = self.layout.job_staging_folder(promoted.job)
        failed: list[str] = []
        try:
            attempts = self.layout.attempts_in(self.storage.list_folders(folder))
        except Exception as exc:  # the promoted attempt's own files need no listing: those still go
            log.warning("cleanup after %s: could not list %s, older attempts stay: %s", promoted.job, folder, exc)
            attempts, failed = [], [folder]
        deleted: list[str] = []
        kept: list[str] = []
        for deletion in staged_deletions(self.layout, promoted, verified, attempts):
            try:
                if self._delete(deletion):
                    deleted.append(deletion.key)
            except ObjectChanged as exc:
                log.info("cleanup after %s: %s stays, it changed: %s", promoted.job, deletion.key, exc)
                kept.append(deletion.key)
            except Exception as exc:  # the store's failure or refusal: the lifecycle rule gets it later
                log.warning("cleanup after %s: could not delete %s: %s", promoted.job, deletion.key, exc)
                failed.append(deletion.key)
        report = CleanupReport(deleted=tuple(deleted), kept=tuple(kept), failed=tuple(failed))
        log.info(
            "cleanup after %s attempt %d: %d staged files deleted, %d kept, %d failed",
            promoted.job,
            promoted.attempt,
            len(report.deleted),
            len(report.kept),
            len(report.failed),
            extra={"deleted": list(report.deleted), "kept": list(report.kept), "failed": list(report.failed)},
        )
        return report

    def _delete(self, deletion: StagedDeletion) -> bool:
        """Whether the file was deleted (False: it was already gone). Raises ObjectChanged when it is not the
        version the rule allows."""
        try:
            current = self.storage.head(deletion.key)
        except ObjectMissing:
            return False
        if deletion.etag is not None and current.etag != deletion.etag:
            raise ObjectChanged(f"ETag {deletion.etag} is now {current.etag}")
        try:
            self.storage.delete(deletion.key, current.etag)
        except ObjectMissing:
            return False
        return True
