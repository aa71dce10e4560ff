"""What a job's promoted checkpoints are: the one answer ``ckpt fetch``, the checkpoint API and a resumed
training share, read from the database's record and nothing else.

The record is the service's own: ``ckpt_job_state`` (per job: the project, the promoted attempt, the epoch each
canonical file stands for, the promotion that wrote the state) and ``ckpt_promotions`` (per processed manifest:
each promoted file's size and SHA-256, when, from which attempt), plus the platform's ``validation_results`` for
the metric of those epochs. A canonical key's bytes are the ones of the newest *promoted* record that lists the
file: a promotion copies only the files its manifest lists (an attempt that crashed before its first validation
keeps the earlier best.pt), a duplicate or superseded manifest copies nothing, and promotions of one job are
serialised by its lock, so their records' ids are in the order their copies happened.

The record is read without a lock and stays consistent: the promotion records are taken up to the one the state
names (``promotion_id``), so a promotion committed between the two reads cannot mix in. A promotion still in
flight may already have copied new bytes to a canonical key that the record does not name yet (the window the
contract describes); every consumer therefore checks the bytes against the SHA-256 recorded here.

``read_promoted`` is the shell (SQLAlchemy); ``promoted_from_record`` the pure rule it applies.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, select

from ckpt.adapters.db.errors import database_errors
from ckpt.adapters.db.schema import job_state, promotions, validation_results
from ckpt.adapters.storage import translated_errors
from ckpt.contract.keys import CHECKPOINT_NAMES, CheckpointName, JobRef, Layout
from ckpt.contract.outcome import Status
from ckpt.errors import ObjectMissing, TransientError

# --- the answer ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromotedCheckpoint:
    """One canonical checkpoint as the database records it."""

    job: JobRef
    name: CheckpointName
    key: str  # the canonical key
    uri: str  # as recorded on the validation_results row, r2://{bucket}/{key}
    epoch: int | None  # None when neither the trainer nor the database knew it
    metric_value: float | None  # the epoch's primary_metric_value; None when absent, NULL or not finite
    size: int
    sha256: str
    attempt: int  # the attempt whose file it is (an earlier one than the job's when a later run did not list it)
    promoted_at: datetime
    promotion_id: int
    # In a versioned bucket: the exact version the promotion wrote (its bytes stay readable by this id even
    # while a later promotion is copying over the key).
    version_id: str | None = None


@dataclass(frozen=True)
class PromotedJob:
    job: JobRef
    attempt: int  # the newest promoted attempt of the job
    updated_at: datetime
    checkpoints: Mapping[CheckpointName, PromotedCheckpoint]

    def checkpoint(self, name: CheckpointName) -> PromotedCheckpoint:
        """The promoted ``name``.pt, or ``CheckpointNotPromoted`` saying what there is instead."""
        found = self.checkpoints.get(name)
        if found is None:
            others = ", ".join(f"{other}.pt" for other in self.checkpoints) or "nothing"
            raise CheckpointNotPromoted(f"{self.job} has no promoted {name}.pt (promoted: {others})")
        return found


class NotPromoted(LookupError):
    """What was asked for is not recorded as promoted. ``code`` names the case for programs, ``reason`` says it
    for people."""

    code = "not_promoted"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnknownJob(NotPromoted):
    """The database knows nothing of the job: no validation results, no promotion record."""

    code = "unknown_job"


class NothingPromoted(NotPromoted):
    """The job exists but none of its checkpoints has been promoted (yet)."""

    code = "nothing_promoted"


class CheckpointNotPromoted(NotPromoted):
    """The job has promoted checkpoints, but not this one."""

    code = "checkpoint_not_promoted"


class JobInAnotherProject(NotPromoted):
    """The job is recorded under another project (or as a test job, or as a project's job): a job never moves."""

    code = "job_in_another_project"


# --- the rule (pure) -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StateRow:
    """``ckpt_job_state``'s row of the job."""

    project_id: int | None
    attempt: int
    best_epoch: int | None
    last_epoch: int | None
    promotion_id: int | None
    updated_at: datetime


@dataclass(frozen=True)
class PromotionRow:
    """A ``promoted`` row of ``ckpt_promotions`` (its ``details`` as stored)."""

    id: int
    created_at: datetime
    project_id: int | None
    attempt: int
    details: Mapping[str, Any]

    def file(self, name: CheckpointName) -> Mapping[str, Any] | None:
        files = self.details.get("files") if isinstance(self.details, Mapping) else None
        entry = files.get(name) if isinstance(files, Mapping) else None
        return entry if isinstance(entry, Mapping) else None


def check_project(job: JobRef, recorded_project_id: int | None) -> None:
    """Refuse a job addressed under another project than the one it was promoted under."""
    if recorded_project_id == job.project_id:
        return
    if job.project_id is None:
        raise JobInAnotherProject(f"job {job.job_id} is a job of a project, not a test job")
    if recorded_project_id is None:
        raise JobInAnotherProject(f"job {job.job_id} is a test job, not a job of project {job.project_id}")
    raise JobInAnotherProject(f"job {job.job_id} is not a job of project {job.project_id}")


def promoted_from_record(
    job: JobRef,
    layout: Layout,
    state: StateRow,
    newest_first: Iterable[PromotionRow],
    metrics: Mapping[int, float | None],
) -> PromotedJob:
    """The job's promoted checkpoints from its state, its promoted records (newest first, up to the state's) and
    the metric of its epochs. The epochs are the state's (a duplicate delivery may have resolved them again
    from rows the platform wrote later); size, SHA-256, attempt and time are those of the newest record listing
    the file, whose bytes the canonical key holds."""
    check_project(job, state.project_id)
    state_epochs: dict[CheckpointName, int | None] = {"best": state.best_epoch, "last": state.last_epoch}
    found: dict[CheckpointName, PromotedCheckpoint] = {}
    settled: set[CheckpointName] = set()  # the newest record listing the file was read (served or not)
    for record in newest_first:
        if record.project_id != state.project_id:
            continue  # cannot happen (a job never moves project); never serve another project's file if it did
        for name in CHECKPOINT_NAMES:
            entry = record.file(name)
            if name in settled or entry is None:
                continue
            settled.add(name)
            if not _is_file_entry(entry):
                continue  # its bytes are at the key, but what they are is unknown: never served, nor older ones
            epoch = state_epochs[name]
            key = layout.canonical_key(job, name)
            found[name] = PromotedCheckpoint(
                job=job,
                name=name,
                key=key,
                uri=layout.uri(key),
                epoch=epoch,
                metric_value=_finite(metrics.get(epoch)) if epoch is not None else None,
                size=int(entry["size"]),
                sha256=str(entry["sha256"]),
                attempt=record.attempt,
                promoted_at=_utc(record.created_at),
                promotion_id=record.id,
                version_id=entry.get("canonical_version_id") or None,
            )
        if len(settled) == len(CHECKPOINT_NAMES):
            break  # older records name bytes the canonical keys no longer hold: no need to read them
    if not found:
        raise NothingPromoted(f"{job}: attempt {state.attempt} was promoted, but no promotion listed a checkpoint file")
    ordered = {name: found[name] for name in CHECKPOINT_NAMES if name in found}
    return PromotedJob(job=job, attempt=state.attempt, updated_at=_utc(state.updated_at), checkpoints=ordered)


def _is_file_entry(entry: Mapping[str, Any]) -> bool:
    """A file the promotion recorded: a size and a hex SHA-256 (anything else is no file of ours to serve)."""
    size, sha256 = entry.get("size"), entry.get("sha256")
    return type(size) is int and size >= 0 and isinstance(sha256, str) and bool(re.fullmatch("[0-9a-f]{64}", sha256))


def _utc(moment: datetime) -> datetime:
    """SQLite hands back the stored UTC times without their zone."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _finite(value: float | None) -> float | None:
    """A metric as JSON and the rules can carry it: NaN and infinities (which no rule ranks) are None."""
    return value if value is not None and math.isfinite(value) else None


# --- the shell ------------------------------------------------------------------------------------------------

# Promoted records read per round trip while looking for the newest one that lists each file: almost every
# promotion lists both, so the first page answers.
PAGE = 10


def read_promoted(engine: Engine, layout: Layout, job: JobRef) -> PromotedJob:
    """The job's promoted checkpoints as the database records them.

    Raises a ``NotPromoted`` subclass (unknown job, nothing promoted, another project's job) with the reason,
    and ``DatabaseUnavailable`` when the database cannot be read."""
    with database_errors(), engine.connect() as connection:
        state = _state(connection, job.job_id)
        if state is None:
            raise _why_nothing(connection, job)
        check_project(job, state.project_id)
        epochs = {epoch for epoch in (state.best_epoch, state.last_epoch) if epoch is not None}
        metrics = _metrics(connection, job.job_id, epochs)
        # Read page by page, as the rule asks: it stops at the newest record of each file.
        newest_first = _promoted_records(connection, job.job_id, state.promotion_id)
        return promoted_from_record(job, layout, state, newest_first, metrics)


def _state(connection: Connection, job_id: int) -> StateRow | None:
    columns = job_state.c
    row = (
        connection.execute(
            select(
                columns.project_id,
                columns.attempt,
                columns.best_epoch,
                columns.last_epoch,
                columns.promotion_id,
                columns.updated_at,
            ).where(columns.job_id == job_id)
        )
        .mappings()
        .first()
    )
    return None if row is None else StateRow(**row)


def _promoted_records(connection: Connection, job_id: int, up_to: int | None) -> Iterator[PromotionRow]:
    """The job's promoted records, newest first, page by page, up to the one the state names."""
    columns = promotions.c
    query = (
        select(columns.id, columns.created_at, columns.project_id, columns.attempt, columns.details)
        .where(columns.job_id == job_id, columns.outcome == str(Status.PROMOTED))
        .order_by(columns.id.desc())
        .limit(PAGE)
    )
    if up_to is not None:
        query = query.where(columns.id <= up_to)
    before: int | None = None
    while True:
        page = connection.execute(query if before is None else query.where(columns.id < before)).mappings().all()
        for row in page:
            yield PromotionRow(**row)
        if len(page) < PAGE:
            return
        before = page[-1]["id"]


def _metrics(connection: Connection, job_id: int, epochs: set[int]) -> dict[int, float | None]:
    if not epochs:
        return {}
    rows = validation_results.c
    query = select(rows.epoch, rows.primary_metric_value).where(rows.job_id == job_id, rows.epoch.in_(epochs))
    return {epoch: value for epoch, value in connection.execute(query.order_by(rows.id))}


def _why_nothing(connection: Connection, job: JobRef) -> NotPromoted:
    """The job has no state: say whether the database knows it at all, and what became of its manifests."""
    columns = promotions.c
    newest = connection.execute(
        select(columns.outcome, columns.reason, columns.attempt)
        .where(columns.job_id == job.job_id, columns.project_id.is_not_distinct_from(job.project_id))
        .order_by(columns.id.desc())
        .limit(1)
    ).first()
    if newest is not None:
        outcome, reason, attempt = newest
        return NothingPromoted(
            f"{job} has no promoted checkpoints: its newest manifest (attempt {attempt}) was {outcome}: {reason}"
        )
    rows = validation_results.c
    if connection.execute(select(rows.id).where(rows.job_id == job.job_id).limit(1)).first() is not None:
        return NothingPromoted(f"{job} has no promoted checkpoints yet")
    return UnknownJob(f"{job} is unknown: it has no validation results and no promotion record")


# --- download links ---------------------------------------------------------------------------------------------

MIN_LINK_SECONDS = 60
MAX_LINK_SECONDS = 3600
DEFAULT_LINK_SECONDS = 900


class CheckpointReplaced(TransientError):
    """The canonical object no longer holds the recorded bytes: a promotion of the job is copying over it and
    has not committed yet. The next read of the record names the new bytes."""


class CheckpointMissing(Exception):
    """The record names a canonical object the store does not have (deleted outside the service)."""


@dataclass(frozen=True)
class DownloadLink:
    checkpoint: PromotedCheckpoint
    url: str
    expires_at: datetime
    expires_in: int


def download_link(
    client: Any, bucket: str, checkpoint: PromotedCheckpoint, expires_in: int, now: datetime
) -> DownloadLink:
    """A presigned GET of the promoted object, after checking that the store still holds the recorded bytes.

    With the version the promotion wrote (a versioned bucket), the link is for exactly that version. Without
    one (R2), the object's metadata, written by the promotion's copy, must name the recorded SHA-256; a link made
    while a newer promotion is copying over the key would serve other bytes, so that is ``CheckpointReplaced``
    (retry in a moment). The caller still checks the download against the SHA-256, since an unversioned key can
    change after the link is made."""
    if not MIN_LINK_SECONDS <= expires_in <= MAX_LINK_SECONDS:
        raise ValueError(f"expires_in must be {MIN_LINK_SECONDS} to {MAX_LINK_SECONDS} seconds, got {expires_in}")
    target = {"Bucket": bucket, "Key": checkpoint.key}
    if checkpoint.version_id:
        target["VersionId"] = checkpoint.version_id
    try:
        with translated_errors(checkpoint.key):
            head = client.head_object(**target)
    except ObjectMissing:
        raise CheckpointMissing(f"the store has no {checkpoint.uri} (version {checkpoint.version_id})") from None
    recorded_by_copy = (head.get("Metadata") or {}).get("sha256")
    if int(head["ContentLength"]) != checkpoint.size or recorded_by_copy not in (None, checkpoint.sha256):
        raise CheckpointReplaced(
            f"{checkpoint.uri} is being replaced by a newer promotion of {checkpoint.job}; ask again in a moment"
        )
    url = client.generate_presigned_url("get_object", Params=target, ExpiresIn=expires_in, HttpMethod="GET")
    return DownloadLink(
        checkpoint=checkpoint, url=str(url), expires_at=now + timedelta(seconds=expires_in), expires_in=expires_in
    )


def promoted_link(
    engine: Engine, client: Any, layout: Layout, job: JobRef, name: CheckpointName, expires_in: int, now: datetime
) -> DownloadLink:
    """A download link to ``job``'s promoted ``name``.pt: what the record says it is, then the link to exactly it."""
    return download_link(client, layout.bucket, read_promoted(engine, layout, job).checkpoint(name), expires_in, now)
