"""The trainer side of the contract, in its simplest form: put checkpoints in an attempt's staging
folder, each with its SHA-256 for the store to verify, then write the manifest last.

Single-request uploads only; the trainer-side integration (multipart, progress, retries, Ultralytics and
PyTorch hooks, ``ckpt stage``) builds on this.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ckpt.keys import AttemptRef, CheckpointName, Layout
from ckpt.manifest import CheckpointEntry, Checkpoints, Manifest, Metric, Status


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint file to stage: its bytes (or path) and the epoch it holds, if known."""

    content: bytes | Path
    epoch: int | None = None

    def read(self) -> bytes:
        return self.content.read_bytes() if isinstance(self.content, Path) else self.content


def build_manifest(
    ref: AttemptRef,
    status: Status,
    files: Mapping[CheckpointName, Checkpoint],
    *,
    metric: Metric | None = None,
    error: str | None = None,
    finished_at: datetime | None = None,
) -> Manifest:
    entries = {}
    for name, checkpoint in files.items():
        data = checkpoint.read()
        entries[name] = CheckpointEntry(epoch=checkpoint.epoch, size=len(data), sha256=hashlib.sha256(data).hexdigest())
    return Manifest(
        schema_version=1,
        project_id=ref.job.project_id,
        job_id=ref.job.job_id,
        attempt=ref.attempt,
        status=status,
        finished_at=finished_at or datetime.now(UTC),
        metric=metric,
        checkpoints=Checkpoints(**entries),
        error=error,
    )


def stage_attempt(
    client: Any,
    layout: Layout,
    ref: AttemptRef,
    status: Status,
    files: Mapping[CheckpointName, Checkpoint],
    **manifest_fields: Any,
) -> Manifest:
    """Upload the files, then the manifest (its creation is the completion event)."""
    manifest = build_manifest(ref, status, files, **manifest_fields)
    for name, checkpoint in files.items():
        data = checkpoint.read()
        client.put_object(
            Bucket=layout.bucket,
            Key=layout.staged_key(ref, name),
            Body=data,
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=base64.b64encode(hashlib.sha256(data).digest()).decode(),
        )
    client.put_object(
        Bucket=layout.bucket,
        Key=layout.manifest_key(ref),
        Body=manifest.to_json(),
        ContentType="application/json",
    )
    return manifest
