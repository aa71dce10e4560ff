"""The sweeper: attempts whose trainer died without writing a manifest (SIGKILL, out of memory, a lost machine).

Such an attempt folder holds checkpoint files (typically the ``last.pt`` that ``TrainingRun(backup_every_minutes=…)``
keeps re-uploading) and no ``manifest.json``, and nothing in it changes any more. The sweeper completes it through
the normal path: it writes the attempt's manifest with status ``abandoned`` (each file's size and SHA-256 as the
store has them, epochs left to the database), and the bucket notification then promotes that manifest like any
other. It never promotes and never writes a row: there is one promotion code path.

An attempt folder is completed when
- it is an attempt folder of the layout holding ``best.pt`` and/or ``last.pt`` and no ``manifest.json``;
- nothing under it was modified within ``older_than`` (``0s``: no age condition at all);
- its attempt is newer than the job's promoted attempt (an older attempt would be superseded anyway, and the
  promoted attempt itself had a manifest: it is never completed a second time).

The first part of this module holds those rules as pure functions of the store's listing, the job's promoted
attempt and the time. The second, ``Sweeper``, is the shell: it lists, reads the recorded state, reads each file at
exactly the listed version (the store's SHA-256 when it keeps one, else a streaming hash), lists and judges the
folder again just before writing, and writes the manifest only if no object has its key yet (``If-None-Match: *``):
a trainer's own manifest written at the same moment wins.
"""

from __future__ import annotations

import enum
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from ckpt.contract.keys import CHECKPOINT_NAMES, MANIFEST_FILE, AttemptRef, CheckpointName, JobRef, Layout, LayoutError
from ckpt.contract.manifest import (
    MAX_MANIFEST_BYTES,
    CheckpointEntry,
    Checkpoints,
    Manifest,
    ManifestError,
    Metric,
    parse_manifest,
)
from ckpt.contract.rules import JobSnapshot
from ckpt.errors import ObjectChanged, ObjectMissing, TransientError
from ckpt.promotion.ports import ObjectInfo, StreamedDigests

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from ckpt.config import Settings
    from ckpt.service import SecretReader

log = logging.getLogger(__name__)

DEFAULT_OLDER_THAN = timedelta(hours=6)

# --- durations ---------------------------------------------------------------------------------------------------

_DURATION = re.compile(r"(?:[0-9]{1,9}[smhd])+")
_DURATION_PART = re.compile(r"([0-9]+)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """A duration as operators write one: ``90s``, ``30m``, ``6h``, ``2d``, or parts together (``1h30m``).
    ``0s`` is zero. Raises ValueError for anything else."""
    value = text.strip()
    if not _DURATION.fullmatch(value):
        raise ValueError(f"a duration is a number and a unit (s, m, h, d), e.g. 90s, 30m, 6h or 1h30m, got {text!r}")
    return timedelta(seconds=sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(value)))


def format_duration(duration: timedelta) -> str:
    """``7h02m``, ``12m05s``, ``45s``, ``3d04h``: whole seconds, the two largest units."""
    seconds = max(0, int(duration.total_seconds()))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{seconds:02d}s"
    return f"{seconds}s"


# --- the rules (pure) ----------------------------------------------------------------------------------------------


class Listed(Protocol):
    """An object as the store's listing shows it (``ckpt.adapters.storage.ListedObject``)."""

    @property
    def key(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def etag(self) -> str: ...
    @property
    def last_modified(self) -> datetime: ...


@dataclass(frozen=True)
class AttemptFolder:
    """One attempt folder as listed: its checkpoint files, whether it has a manifest, and when it last changed."""

    ref: AttemptRef
    prefix: str  # staging/projects/7/jobs/42/attempts/3/
    checkpoints: Mapping[CheckpointName, Listed]  # best.pt and last.pt directly in the folder
    has_manifest: bool
    last_modified: datetime  # the newest modification of any object under the folder, at any depth

    @property
    def manifest_key(self) -> str:
        return self.prefix + MANIFEST_FILE


def attempt_folder_of(key: str, layout: Layout) -> tuple[AttemptRef, str] | None:
    """The attempt folder ``key`` lies in, at any depth below it, as (attempt, folder prefix); None for a key
    that is in no attempt folder of the layout."""
    if not key.startswith(layout.staging_prefix):
        return None
    end = len(layout.staging_prefix)
    while (end := key.find("/", end) + 1) > 0:
        prefix = key[:end]
        try:
            return layout.parse_manifest_key(prefix + MANIFEST_FILE), prefix
        except LayoutError:
            continue
    return None


def attempt_folders(listing: Iterable[Listed], layout: Layout) -> list[AttemptFolder]:
    """The attempt folders of a listing of the staging prefix, in key order. Keys in no attempt folder of the layout
    are left out (the contract ignores them)."""
    grouped: dict[str, tuple[AttemptRef, list[Listed]]] = {}
    for listed in listing:
        found = attempt_folder_of(listed.key, layout)
        if found is not None:
            ref, prefix = found
            grouped.setdefault(prefix, (ref, []))[1].append(listed)
    return [_folder(ref, prefix, objects) for prefix, (ref, objects) in sorted(grouped.items())]


def _folder(ref: AttemptRef, prefix: str, objects: Sequence[Listed]) -> AttemptFolder:
    by_key = {listed.key: listed for listed in objects}
    return AttemptFolder(
        ref=ref,
        prefix=prefix,
        checkpoints={name: by_key[key] for name in CHECKPOINT_NAMES if (key := f"{prefix}{name}.pt") in by_key},
        has_manifest=prefix + MANIFEST_FILE in by_key,
        last_modified=max(listed.last_modified for listed in objects),
    )


class Verdict(enum.StrEnum):
    SWEEP = "sweep"
    HAS_MANIFEST = "has a manifest"
    NO_CHECKPOINTS = "holds no checkpoint"
    CHANGED_RECENTLY = "changed recently"
    NOT_NEWER_THAN_PROMOTED = "not newer than the promoted attempt"


@dataclass(frozen=True)
class Judgement:
    folder: AttemptFolder
    verdict: Verdict
    reason: str  # for a person: why it is completed, or why not

    @property
    def sweep(self) -> bool:
        return self.verdict is Verdict.SWEEP


def judge_listing(folder: AttemptFolder, *, now: datetime, older_than: timedelta) -> Judgement:
    """What the listing alone says of a folder. A SWEEP here still needs ``judge_with_record``."""
    if folder.has_manifest:
        return Judgement(folder, Verdict.HAS_MANIFEST, "its manifest is there")
    if not folder.checkpoints:
        return Judgement(folder, Verdict.NO_CHECKPOINTS, "no best.pt or last.pt in it")
    idle = now - folder.last_modified
    if older_than > timedelta(0) and idle < older_than:
        return Judgement(
            folder,
            Verdict.CHANGED_RECENTLY,
            f"changed {format_duration(idle)} ago, within {format_duration(older_than)}: its trainer may be alive",
        )
    files = ", ".join(f"{name}.pt" for name in folder.checkpoints)
    return Judgement(folder, Verdict.SWEEP, f"{files}, no manifest, unchanged for {format_duration(idle)}")


def judge_with_record(judgement: Judgement, promoted_attempt: int | None) -> Judgement:
    """A folder the listing qualifies, against the attempt the database records as the job's promoted one."""
    if not judgement.sweep or promoted_attempt is None:
        return judgement
    attempt = judgement.folder.ref.attempt
    if attempt < promoted_attempt:
        reason = f"attempt {attempt} is older than the promoted attempt {promoted_attempt}"
    elif attempt == promoted_attempt:
        reason = f"attempt {attempt} is the promoted one (its manifest was promoted, then removed)"
    else:
        return judgement
    return Judgement(judgement.folder, Verdict.NOT_NEWER_THAN_PROMOTED, reason)


def metric_source(folder: AttemptFolder, folders: Iterable[AttemptFolder]) -> str | None:
    """The manifest of the same job's newest other attempt that has one: its metric (name, and the mode the best
    epoch is chosen by) is the best guess for this attempt's. None when the job has no other manifest."""
    siblings = [
        other
        for other in folders
        if other.has_manifest and other.ref.job == folder.ref.job and other.ref.attempt != folder.ref.attempt
    ]
    newest = max(siblings, key=lambda other: other.ref.attempt, default=None)
    return newest.manifest_key if newest is not None else None


@dataclass(frozen=True)
class StoredFile:
    """A staged checkpoint as the store has it."""

    size: int
    sha256: str  # hex
    crc64nvme: str | None  # the store's full-object CRC-64/NVME (base64), when it keeps one
    etag: str  # the version these describe


def abandoned_manifest(
    folder: AttemptFolder,
    files: Mapping[CheckpointName, StoredFile],
    *,
    older_than: timedelta,
    metric: Metric | None,
    completed_at: datetime,
) -> Manifest:
    """The manifest the trainer did not write: status ``abandoned``, each file's size and digests as stored, epochs
    null (the database's: last = the job's highest epoch, best = its best metric). ``finished_at`` is when the sweeper
    completed the attempt (so the promotion's latency is the pipeline's, not the hours the folder sat still); the
    folder's last sign of life is in ``error``."""
    ref = folder.ref
    return Manifest(
        schema_version=1,
        project_id=ref.job.project_id,
        job_id=ref.job.job_id,
        attempt=ref.attempt,
        status="abandoned",
        finished_at=completed_at,
        metric=metric,
        checkpoints=Checkpoints(
            **{
                name: CheckpointEntry(epoch=None, size=stored.size, sha256=stored.sha256, crc64nvme=stored.crc64nvme)
                for name, stored in files.items()
            }
        ),
        error=(
            "no manifest: the trainer stopped without writing one (killed, out of memory, or its machine lost); "
            f"nothing in the attempt folder changed after {folder.last_modified.isoformat()}, and the sweeper "
            f"completed it after {format_duration(older_than)}"
        ),
    )


# --- the shell -----------------------------------------------------------------------------------------------------


class SweepStorage(Protocol):
    """What the sweeper needs from the object store (``ckpt.adapters.storage.S3Storage``)."""

    def list_objects(self, prefix: str) -> Iterable[Listed]: ...
    def head(self, key: str) -> ObjectInfo: ...
    def stream_digests(self, key: str, etag: str) -> StreamedDigests: ...
    def read(self, key: str, max_bytes: int) -> bytes: ...
    def create(self, key: str, body: bytes, content_type: str) -> bool: ...


class RecordedJobs(Protocol):
    """What the sweeper reads from the database (``ckpt.adapters.db.store.PromotionStore``): the job's record."""

    def snapshot(self, job: JobRef) -> JobSnapshot: ...


class Action(enum.StrEnum):
    SWEPT = "swept"  # the abandoned manifest is written; the notification promotes it
    WOULD_SWEEP = "would sweep"  # a dry run's answer
    SKIPPED = "skipped"
    DEFERRED = "deferred"  # out of time: the next run takes it
    FAILED = "failed"  # the store or the database failed: the next run tries again


@dataclass(frozen=True)
class FolderResult:
    ref: AttemptRef
    prefix: str
    action: Action
    reason: str
    manifest: Manifest | None = None  # the manifest written (SWEPT)

    def line(self) -> str:
        """One line for a person: what was done to the folder, and why."""
        where = self.prefix + MANIFEST_FILE if self.action is Action.SWEPT else self.prefix
        return f"{self.action:<11}  {where}  {self.reason}"

    def log_fields(self) -> dict[str, object]:
        return {
            "project_id": self.ref.job.project_id,
            "job_id": self.ref.job.job_id,
            "attempt": self.ref.attempt,
            "folder": self.prefix,
            "action": str(self.action),
        }


@dataclass(frozen=True)
class SweepReport:
    older_than: timedelta
    dry_run: bool
    examined: int  # attempt folders listed
    results: list[FolderResult]  # every folder without a manifest, and what became of it

    def count(self, action: Action) -> int:
        return sum(1 for result in self.results if result.action is action)

    @property
    def swept(self) -> list[FolderResult]:
        return [result for result in self.results if result.action is Action.SWEPT]

    def summary(self) -> str:
        counts = ", ".join(f"{n} {action}" for action in Action if (n := self.count(action)))
        return (
            f"{self.examined} attempt folder{'' if self.examined == 1 else 's'}, {len(self.results)} without a manifest"
            f"{': ' + counts if counts else ''} (older than {format_duration(self.older_than)}"
            f"{', dry run' if self.dry_run else ''})"
        )


class Sweeper:
    def __init__(
        self,
        layout: Layout,
        storage: SweepStorage,
        jobs: RecordedJobs,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.layout = layout
        self.storage = storage
        self.jobs = jobs
        self.clock = clock

    def sweep(
        self,
        older_than: timedelta = DEFAULT_OLDER_THAN,
        *,
        dry_run: bool = False,
        out_of_time: Callable[[], bool] = lambda: False,
    ) -> SweepReport:
        """Complete every qualifying attempt folder under the staging prefix (``dry_run``: only say which).
        ``out_of_time`` is asked before each folder's work: once it answers True, the rest is deferred. Failures of
        one folder are reported and never stop the others; a failure to list the staging prefix raises."""
        folders = attempt_folders(self.storage.list_objects(self.layout.staging_prefix), self.layout)
        now = self.clock()
        promoted: dict[JobRef, int | None] = {}
        results = []
        for folder in folders:
            if folder.has_manifest:
                continue
            result = self._sweep_folder(folder, folders, promoted, now, older_than, dry_run, out_of_time)
            log.log(
                logging.WARNING if result.action in (Action.SWEPT, Action.FAILED) else logging.INFO,
                "%s %s: %s",
                result.action,
                result.prefix,
                result.reason,
                extra=result.log_fields(),
            )
            results.append(result)
        return SweepReport(older_than=older_than, dry_run=dry_run, examined=len(folders), results=results)

    def _sweep_folder(
        self,
        folder: AttemptFolder,
        folders: list[AttemptFolder],
        promoted: dict[JobRef, int | None],
        now: datetime,
        older_than: timedelta,
        dry_run: bool,
        out_of_time: Callable[[], bool],
    ) -> FolderResult:
        def result(action: Action, reason: str, manifest: Manifest | None = None) -> FolderResult:
            return FolderResult(folder.ref, folder.prefix, action, reason, manifest)

        judgement = judge_listing(folder, now=now, older_than=older_than)
        if not judgement.sweep:
            return result(Action.SKIPPED, judgement.reason)
        try:
            job = folder.ref.job
            if job not in promoted:
                state = self.jobs.snapshot(job).state
                promoted[job] = state.attempt if state is not None else None
            judgement = judge_with_record(judgement, promoted[job])
            if not judgement.sweep:
                return result(Action.SKIPPED, judgement.reason)
            if dry_run:
                return result(Action.WOULD_SWEEP, judgement.reason)
            if out_of_time():
                return result(Action.DEFERRED, "out of time; the next run takes it")
            return self._complete(judgement, metric_source(folder, folders), older_than)
        except (ObjectChanged, ObjectMissing) as exc:
            return result(Action.SKIPPED, f"changed while it was being read ({exc}): its trainer may be alive")
        except TransientError as exc:
            return result(Action.FAILED, f"{type(exc).__name__}: {exc}")

    def _complete(self, judgement: Judgement, metric_from: str | None, older_than: timedelta) -> FolderResult:
        folder = judgement.folder
        files = {name: self._stored(listed) for name, listed in folder.checkpoints.items()}
        # Listed and judged again just before the write: the folder must be as it was when its files were read.
        fresh = attempt_folders(self.storage.list_objects(folder.prefix), self.layout)
        again = next((other for other in fresh if other.prefix == folder.prefix), None)
        if again is None:
            return FolderResult(folder.ref, folder.prefix, Action.SKIPPED, "emptied while it was being read")
        now = self.clock()
        rejudged = judge_listing(again, now=now, older_than=older_than)
        if not rejudged.sweep:
            return FolderResult(folder.ref, folder.prefix, Action.SKIPPED, f"{rejudged.reason} (seen again)")
        if {name: listed.etag for name, listed in again.checkpoints.items()} != {
            name: stored.etag for name, stored in files.items()
        }:
            return FolderResult(folder.ref, folder.prefix, Action.SKIPPED, "its files changed while they were read")
        metric = self._metric(metric_from)
        manifest = abandoned_manifest(again, files, older_than=older_than, metric=metric, completed_at=now)
        if not self.storage.create(folder.manifest_key, manifest.to_json(), "application/json"):
            return FolderResult(folder.ref, folder.prefix, Action.SKIPPED, "a manifest appeared meanwhile; it stands")
        return FolderResult(folder.ref, folder.prefix, Action.SWEPT, f"abandoned: {rejudged.reason}", manifest=manifest)

    def _stored(self, listed: Listed) -> StoredFile:
        """Size and digests of exactly the listed version: the store's SHA-256 of a single-request upload, else the
        bytes hashed as they stream (conditional on the listed ETag); the store's full-object CRC-64/NVME too."""
        info = self.storage.head(listed.key)
        if info.etag != listed.etag:
            raise ObjectChanged(f"{listed.key} was replaced after it was listed")
        sha256 = info.sha256
        if sha256 is None:
            streamed = self.storage.stream_digests(listed.key, listed.etag)
            if streamed.length != info.size:
                raise ObjectChanged(f"{listed.key} streamed {streamed.length} bytes, its HEAD said {info.size}")
            sha256 = streamed.sha256
        return StoredFile(size=info.size, sha256=sha256, crc64nvme=info.crc64nvme, etag=info.etag)

    def _metric(self, manifest_key: str | None) -> Metric | None:
        """The metric of another manifest of the job, when there is one that reads: a guess, never a failure."""
        if manifest_key is None:
            return None
        try:
            raw = self.storage.read(manifest_key, MAX_MANIFEST_BYTES)
            return parse_manifest(raw).metric
        except (ObjectMissing, ManifestError, TransientError) as exc:
            log.info("no metric from %s: %s", manifest_key, exc)
            return None


def build_sweeper(settings: Settings, engine: Engine, read_secret: SecretReader | None = None) -> Sweeper:
    """The sweeper wired to the real adapters (the object store and the promotion store)."""
    from ckpt.adapters.db.store import PromotionStore
    from ckpt.adapters.storage import S3Storage
    from ckpt.service import check_schema, s3_client

    store = PromotionStore(engine)
    check_schema(store)
    storage = S3Storage(s3_client(settings, read_secret), settings.bucket, profile=settings.profile())
    return Sweeper(settings.layout(), storage, store)
