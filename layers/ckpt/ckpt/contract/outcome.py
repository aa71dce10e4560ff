"""What happened to a manifest: the record every manifest ends in (the contract's 'explained')."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from ckpt.contract.cleanup import CleanupReport
from ckpt.contract.keys import AttemptRef, CheckpointName
from ckpt.text import bounded, escaped

LOGGED_TEXT_LIMIT = 4096

# How a staged file was shown to be the bytes the trainer hashed: the store's SHA-256 of it ("store"), the
# store's full-object CRC-64/NVME against the manifest's ("crc64nvme"), or hashing the bytes as they
# streamed by ("stream").
ChecksumSource = Literal["store", "crc64nvme", "stream"]
# What showed a canonical copy holds the verified bytes: a SHA-256 the store computed over the copy, its
# size, its content-MD5 ETag.
CopyEvidence = Literal["sha256", "size", "md5"]


class Status(enum.StrEnum):
    PROMOTED = "promoted"
    DUPLICATE = "duplicate"
    SUPERSEDED = "superseded"
    REJECTED = "rejected"
    # Not a manifest of the layout: logged, never recorded (the contract says such keys are ignored).
    IGNORED = "ignored"
    # A reprocess with dry_run: what a promotion would do, with nothing copied or written.
    PLANNED = "planned"


@dataclass(frozen=True)
class FileReport:
    """One verified (and, once promoted, copied) checkpoint file."""

    size: int
    sha256: str
    checksum_source: ChecksumSource
    staged_key: str
    canonical_uri: str
    epoch: int | None
    copy_verified_by: tuple[CopyEvidence, ...] = ()
    canonical_version_id: str | None = None  # in a versioned bucket: exactly the bytes this promotion wrote


@dataclass(frozen=True)
class Outcome:
    status: Status
    reason: str
    bucket: str
    manifest_key: str
    trigger: str
    ref: AttemptRef | None = None
    manifest_sha256: str | None = None
    files: dict[CheckpointName, FileReport] = field(default_factory=dict)
    # validation_results.checkpoint_path per epoch after the promotion
    row_paths: dict[int, str] = field(default_factory=dict)
    # epochs that should carry a path but have no validation_results row
    missing_rows: list[int] = field(default_factory=list)
    # The manifest's finished_at (when training ended, by the trainer's clock), once the manifest is read.
    finished_at: datetime | None = None
    # When the promotion's transaction committed (the function's clock); set on promoted outcomes only.
    committed_at: datetime | None = None
    # What the cleanup after the commit did (DELETE_STAGED_AFTER_PROMOTION); None when it did not run.
    cleanup: CleanupReport | None = None

    def promotion_latency(self) -> timedelta | None:
        """From the end of training to the commit that made its checkpoints canonical, for a promotion whose
        manifest says when training ended. Two clocks are involved: a trainer's clock ahead of the function's
        cannot make the promotion happen before training ended, so a negative difference counts as zero."""
        if self.status is not Status.PROMOTED or self.finished_at is None or self.committed_at is None:
            return None
        return max(self.committed_at - self.finished_at, timedelta(0))

    def details(self) -> dict[str, Any]:
        """The JSON-ready part of the record that has no column of its own."""
        return {
            "files": {
                name: {
                    "size": f.size,
                    "sha256": f.sha256,
                    "checksum_source": f.checksum_source,
                    "staged_key": f.staged_key,
                    "canonical_uri": f.canonical_uri,
                    "epoch": f.epoch,
                    "copy_verified_by": list(f.copy_verified_by),
                    "canonical_version_id": f.canonical_version_id,
                }
                for name, f in self.files.items()
            },
            "row_paths": {str(epoch): uri for epoch, uri in sorted(self.row_paths.items())},
            "missing_rows": self.missing_rows,
        }

    def log_fields(self) -> dict[str, Any]:
        ref = self.ref
        return {
            "outcome": str(self.status),
            # Escaped so any log sink can write them; bounded well above S3's 1,024-byte keys, since a longer
            # "key" is not one, and a log line need not carry megabytes of it.
            "reason": bounded(escaped(self.reason), LOGGED_TEXT_LIMIT),
            "bucket": bounded(escaped(self.bucket), LOGGED_TEXT_LIMIT),
            "manifest_key": bounded(escaped(self.manifest_key), LOGGED_TEXT_LIMIT),
            "trigger": bounded(escaped(self.trigger), LOGGED_TEXT_LIMIT),
            "project_id": ref.job.project_id if ref else None,
            "job_id": ref.job.job_id if ref else None,
            "attempt": ref.attempt if ref else None,
            **self.details(),
        }
