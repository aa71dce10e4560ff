"""The trainer side of the contract: put an attempt's checkpoints in its staging folder, then write the
manifest last (its creation is the completion event), and choose the attempt number of a new run.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ckpt.adapters.storage import S3Storage, translated_errors
from ckpt.contract.keys import CHECKPOINT_NAMES, MAX_ID, AttemptRef, CheckpointName, JobRef, Layout, parse_id
from ckpt.contract.manifest import CheckpointEntry, Checkpoints, Manifest, Metric, Status
from ckpt.errors import ObjectMissing, StorageUnavailable
from ckpt.text import bounded, escaped
from ckpt.trainer.upload import Uploaded, Uploader, UploadPolicy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint file to stage (a path, or bytes) and the epoch it holds, if known."""

    content: bytes | Path
    epoch: int | None = None

    def read(self) -> bytes:
        return self.content.read_bytes() if isinstance(self.content, Path) else self.content


def build_manifest(
    ref: AttemptRef,
    status: Status,
    entries: Mapping[CheckpointName, CheckpointEntry],
    *,
    metric: Metric | None = None,
    error: str | None = None,
    finished_at: datetime | None = None,
) -> Manifest:
    if metric is not None and metric.name is not None:
        metric = metric.model_copy(update={"name": _manifest_text(metric.name, MAX_METRIC_NAME_CHARS)})
    return Manifest(
        schema_version=1,
        project_id=ref.job.project_id,
        job_id=ref.job.job_id,
        attempt=ref.attempt,
        status=status,
        finished_at=finished_at or datetime.now(UTC),
        metric=metric,
        checkpoints=Checkpoints(best=entries.get("best"), last=entries.get("last")),
        error=None if error is None else _manifest_text(error, MAX_ERROR_CHARS),
    )


# Room enough to say what went wrong; small enough that the manifest stays far below the function's 64 KiB
# limit whatever an exception's message holds (a state_dict mismatch can list thousands of keys).
MAX_ERROR_CHARS = 8192
MAX_METRIC_NAME_CHARS = 256


def _manifest_text(text: str, limit: int) -> str:
    """Text from the training program as a manifest can carry it: lone surrogates (from undecodable file
    names) escaped, since UTF-8 cannot hold them, and cut to ``limit`` characters."""
    return bounded(escaped(text), limit)


def stage_attempt(
    client: Any,
    layout: Layout,
    ref: AttemptRef,
    status: Status,
    files: Mapping[CheckpointName, Checkpoint],
    *,
    policy: UploadPolicy | None = None,
    already_staged: Mapping[CheckpointName, Uploaded] | None = None,
    **manifest_fields: Any,
) -> Manifest:
    """Upload the files, then the manifest. ``already_staged`` names files a background backup put there
    already (same bytes), which are not sent again. Raises ``StorageUnavailable`` if the store keeps failing;
    the manifest is then not written, so nothing half-staged is ever promoted."""
    uploader = Uploader(client, layout.bucket, policy)
    entries: dict[CheckpointName, CheckpointEntry] = {}
    for name, checkpoint in files.items():
        uploaded = (already_staged or {}).get(name) or uploader.upload(
            checkpoint.content, layout.staged_key(ref, name), label=f"{name}.pt"
        )
        entries[name] = CheckpointEntry(
            epoch=checkpoint.epoch, size=uploaded.size, sha256=uploaded.sha256, crc64nvme=uploaded.crc64nvme
        )
    manifest = build_manifest(ref, status, entries, **manifest_fields)
    key = layout.manifest_key(ref)
    with translated_errors(key):
        client.put_object(Bucket=layout.bucket, Key=key, Body=manifest.to_json(), ContentType="application/json")
    return manifest


def next_attempt(client: Any, layout: Layout, job: JobRef) -> int:
    """One more than the highest attempt of the job, staged or promoted (1 for a new job).

    Called when a run starts, so every restart or resume of a job stages into a folder of its own and a
    later attempt supersedes an earlier one. Staged: the job's attempt folders. Promoted: the ``attempt``
    metadata the promotion writes on the canonical best.pt and last.pt, because staging does not keep
    everything (the staging lifecycle rule can empty it), and a run numbered below the promoted attempt would be
    ``superseded`` by its own job's past (one numbered as it, taken for a re-staging of it). Two runs of one job
    started at the same moment would pick the same number: give ``attempt`` explicitly (or CKPT_ATTEMPT) where a
    scheduler can.
    """
    storage = S3Storage(client, layout.bucket)
    staged = max(layout.attempts_in(storage.list_folders(layout.job_staging_folder(job))), default=0)
    highest = max(staged, promoted_attempt(storage, layout, job))
    if highest == MAX_ID:
        raise ValueError(f"{job} has attempt {MAX_ID}, the largest there can be: give the attempt explicitly")
    return highest + 1


def promoted_attempt(storage: S3Storage, layout: Layout, job: JobRef) -> int:
    """The highest attempt recorded on the job's canonical checkpoints (0 when none is promoted).

    Read from the objects, not the database: trainers have the store, not necessarily the database. A file a
    later promotion did not list keeps the attempt that wrote it, so both files are read and the higher wins.
    Metadata that is no attempt (an object written by hand) counts as none. Keys that may not read the canonical
    prefix (a HEAD refused) number from staging alone, as before, with a warning: refusing to stage would lose
    the run's checkpoints, where a wrong number is recorded as ``superseded`` and can be staged again."""
    attempts = [0]
    for name in CHECKPOINT_NAMES:
        key = layout.canonical_key(job, name)
        try:
            metadata = storage.head(key).metadata
        except ObjectMissing:
            continue
        except StorageUnavailable as exc:
            log.warning(
                "could not read the promoted attempt of %s from %s (%s): numbering from staging alone; give the "
                "trainer's keys read access (HEAD) to the canonical prefix",
                job,
                key,
                exc,
            )
            continue
        attempts.append(parse_id(str(metadata.get("attempt", ""))) or 0)
    return max(attempts)


def resolve_attempt(client: Any, layout: Layout, job: JobRef, explicit: int | None, from_env: str | None) -> int:
    """The attempt a new run stages as: ``explicit``, else the CKPT_ATTEMPT value, else ``next_attempt``."""
    if explicit is not None:
        return explicit
    if from_env:
        attempt = parse_id(from_env)
        if attempt is None:
            raise ValueError(f"CKPT_ATTEMPT must be an integer from 1 to {MAX_ID} in plain digits, got {from_env!r}")
        return attempt
    return next_attempt(client, layout, job)
