"""The promotion: from a manifest key to canonical checkpoints and their database record.

This is the imperative shell around ``ckpt.contract.rules``: it reads and verifies through the storage adapter,
asks the rules what to do, copies, and commits one database transaction. It never sees an event.

Order of work, and why:
1. Parse the key; a key outside the layout is rejected (recorded, not retried) or ignored.
2. Take the job's lock (one database transaction) and, under it, read the manifest as it is staged now. Because
   the read is under the lock, a worker holding it never promotes an older version of a re-staged manifest over
   a newer one: a version staged before the lock was taken is the one read, one staged after it has its own
   event, whose worker waits for the lock and then reads it anew. Anything the contract rejects ends here
   (recorded, not retried).
3. Read the job's recorded state and ask the rules: a duplicate or a superseded attempt is recorded and ends
   here, with no storage call beyond the manifest's read.
4. Verify every listed staged file (size, SHA-256), then copy each verified version (conditional on its ETag)
   to its canonical key and check the copy; the files side by side, every copy ended before the next step.
   Everything is planned before the first copy changes a canonical key.
5. Set the rows, the job state and the record in the same transaction, and commit. Holding the lock across the
   copies is what keeps an older attempt from overwriting what a newer one promoted.
6. Only once that transaction has committed, and only with a ``cleanup`` (DELETE_STAGED_AFTER_PROMOTION): delete
   the staged files the promotion let go of (``ckpt.contract.cleanup`` says which). Nothing before the commit
   deletes anything, and nothing the cleanup does can change the outcome.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial

from ckpt.contract.keys import AttemptRef, CheckpointName, JobRef, Layout, NotAManifest, OutsideStaging
from ckpt.contract.manifest import (
    MAX_MANIFEST_BYTES,
    CheckpointEntry,
    Manifest,
    ManifestError,
    check_matches_key,
    parse_manifest,
)
from ckpt.contract.outcome import ChecksumSource, CopyEvidence, FileReport, Outcome, Status
from ckpt.contract.rules import (
    ConflictingJob,
    Decision,
    JobSnapshot,
    JobState,
    decide,
    missing_epochs,
    resolve_epochs,
    row_paths,
    target_epochs,
)
from ckpt.errors import ObjectChanged, ObjectMissing, Rejected
from ckpt.promotion.cleanup import StagingCleanup
from ckpt.promotion.ports import Calls, CopiedObject, InOrder, JobTransaction, ObjectInfo, Storage, Store
from ckpt.text import shown

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerifiedFile:
    name: CheckpointName
    entry: CheckpointEntry
    source: ObjectInfo
    checksum_source: ChecksumSource
    # The bytes' MD5 when known (the source's ETag is one, or the bytes were hashed): a copy's content ETag
    # can then be checked against it.
    md5: str | None


@dataclass(frozen=True)
class Duplicate:
    """What processing an already promoted manifest again must write."""

    outcome: Outcome
    paths: dict[int, str]
    state: JobState | None  # the recorded state with epochs resolved again, when they changed


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Promoter:
    def __init__(
        self,
        layout: Layout,
        storage: Storage,
        store: Store,
        *,
        cleanup: StagingCleanup | None = None,
        clock: Callable[[], datetime] = _utc_now,
        calls: Calls | None = None,
    ) -> None:
        self.layout = layout
        self.storage = storage
        self.store = store
        self.calls = calls or InOrder()  # how a manifest's files are checked and copied: side by side when threaded
        self.cleanup = cleanup  # None: staged files are never deleted (the default)
        self.clock = clock

    # --- entry points --------------------------------------------------------------------------------

    def promote_key(
        self, bucket: str, key: str, *, trigger: str, force: bool = False, dry_run: bool = False
    ) -> Outcome:
        """Process the manifest at ``key``; returns its outcome (recorded unless ignored or a dry run).

        Raises ``TransientError`` subclasses for failures worth retrying.
        """
        base = Outcome(status=Status.REJECTED, reason="", bucket=bucket, manifest_key=key, trigger=trigger)
        if bucket != self.layout.bucket:
            return self._finish(
                replace(base, reason=f"bucket {shown(bucket)} is not the configured bucket {self.layout.bucket!r}"),
                dry_run,
            )
        try:
            ref = self.layout.parse_manifest_key(key)
        except NotAManifest as exc:
            return self._finish(replace(base, status=Status.IGNORED, reason=str(exc)), dry_run)
        except OutsideStaging as exc:
            return self._finish(replace(base, reason=str(exc)), dry_run)
        base = replace(base, ref=ref)
        try:
            return self._promote(base, ref, force=force, dry_run=dry_run)
        except Rejected as exc:
            return self._finish(replace(base, reason=exc.reason), dry_run)

    def record_rejection(self, bucket: str, key: str, *, trigger: str, reason: str) -> Outcome:
        """Record that a manifest was given up on (for instance after its last delivery failed)."""
        try:
            ref: AttemptRef | None = self.layout.parse_manifest_key(key)
        except ValueError:
            ref = None
        outcome = Outcome(
            status=Status.REJECTED, reason=reason, bucket=bucket, manifest_key=key, trigger=trigger, ref=ref
        )
        return self._finish(outcome, dry_run=False)

    def reprocess(self, job: JobRef, attempt: int | None = None, *, dry_run: bool = False) -> Outcome:
        """Re-run the promotion of the job's newest staged attempt (or ``attempt``), even if it was done."""
        if attempt is None:
            attempt = self.newest_attempt(job)
        key = self.layout.manifest_key(AttemptRef(job=job, attempt=attempt))
        return self.promote_key(self.layout.bucket, key, trigger="reprocess", force=True, dry_run=dry_run)

    def newest_attempt(self, job: JobRef) -> int:
        """The highest attempt of ``job`` whose manifest is in staging."""
        folders = self.storage.list_folders(self.layout.job_staging_folder(job))
        for attempt in self.layout.attempts_in(folders):
            if self.storage.exists(self.layout.manifest_key(AttemptRef(job=job, attempt=attempt))):
                return attempt
        raise Rejected(f"{job} has no staged manifest under {self.layout.job_staging_folder(job)}")

    # --- the promotion -------------------------------------------------------------------------------

    def _promote(self, base: Outcome, ref: AttemptRef, *, force: bool, dry_run: bool) -> Outcome:
        judged = base  # what is known of the manifest so far: a rejection is recorded with it
        try:
            with self.store.job(ref.job) as tx:
                raw = self._read_manifest(base.manifest_key)
                # From here a rejection is recorded with the digest of the bytes it judged, so ``ckpt backfill``
                # knows this manifest was answered (and a re-staged one, with other bytes, is new).
                judged = replace(judged, manifest_sha256=hashlib.sha256(raw).hexdigest())
                manifest = self._parse_manifest(raw, ref)
                judged = replace(judged, finished_at=manifest.finished_at)
                outcome, copied = self._decide_and_apply(tx, judged, manifest, force=force, dry_run=dry_run)
        except Rejected as exc:  # nothing was written: the transaction rolled back
            return self._finish(replace(judged, reason=exc.reason), dry_run)
        if outcome.status is not Status.PROMOTED:
            return outcome
        # Committed: the block ended without raising. Nothing below can change the outcome, only report on it.
        outcome = self._logged(replace(outcome, committed_at=self.clock()))
        if self.cleanup is not None:
            outcome = replace(outcome, cleanup=self.cleanup.after_commit(ref, copied))
        return outcome

    def _decide_and_apply(
        self, tx: JobTransaction, base: Outcome, manifest: Manifest, *, force: bool, dry_run: bool
    ) -> tuple[Outcome, dict[str, str]]:
        """Under the job's lock, with the manifest as it is staged now: what the rules say, done. Returns the
        outcome and, for a promotion, the staged versions it copied (key: ETag)."""
        assert base.manifest_sha256 is not None
        ref, manifest_sha256 = manifest.ref, base.manifest_sha256
        current = tx.snapshot()
        decision = self._decide(current.state, ref, manifest_sha256, force)
        if decision is Decision.SUPERSEDED:
            return self._recorded(tx, self._not_promoted(base, decision), dry_run=dry_run), {}
        if decision is Decision.DUPLICATE:
            duplicate = self._duplicate(base, manifest, current)
            return self._recorded(tx, duplicate.outcome, duplicate.paths, duplicate.state, dry_run=dry_run), {}
        verified = self._verify_all(ref, manifest)
        # Everything is read and planned before the first copy changes a canonical key.
        outcome, targets = self._promoted(base, manifest, verified, current)
        if dry_run:
            return self._logged(replace(outcome, status=Status.PLANNED, reason="dry run: " + outcome.reason)), {}
        checks = self.calls.all([partial(self._copy, ref, file, manifest_sha256) for file in verified])
        copies = {file.name: check for file, check in zip(verified, checks, strict=True)}
        outcome = replace(
            outcome,
            files={
                name: replace(
                    report, copy_verified_by=copies[name].evidence, canonical_version_id=copies[name].version_id
                )
                for name, report in outcome.files.items()
            },
        )
        state = JobState(
            project_id=ref.job.project_id, attempt=ref.attempt, manifest_sha256=manifest_sha256, epochs=targets
        )
        tx.write(outcome, outcome.row_paths, state)
        return outcome, {file.source.key: file.source.etag for file in verified}

    def _recorded(
        self,
        tx: JobTransaction,
        outcome: Outcome,
        paths: Mapping[int, str] | None = None,
        state: JobState | None = None,
        *,
        dry_run: bool,
    ) -> Outcome:
        if not dry_run:
            tx.write(outcome, paths, state)
        return self._logged(outcome)

    def _read_manifest(self, key: str) -> bytes:
        """The manifest's bytes as staged now (at most one more than the limit)."""
        try:
            return self.storage.read(key, MAX_MANIFEST_BYTES)
        except ObjectMissing:
            raise Rejected(f"there is no manifest at {key} (never staged, or deleted since)") from None

    @staticmethod
    def _parse_manifest(raw: bytes, ref: AttemptRef) -> Manifest:
        try:
            manifest = parse_manifest(raw)
            check_matches_key(manifest, ref)
        except ManifestError as exc:
            raise Rejected(str(exc)) from None
        return manifest

    @staticmethod
    def _decide(state: JobState | None, ref: AttemptRef, sha256: str, force: bool) -> Decision:
        try:
            return decide(state, ref, sha256, force=force)
        except ConflictingJob as exc:
            raise Rejected(str(exc)) from None

    def _verify_all(self, ref: AttemptRef, manifest: Manifest) -> list[VerifiedFile]:
        present = manifest.checkpoints.present().items()
        return self.calls.all([partial(self._verify, ref, name, entry) for name, entry in present])

    def _verify(self, ref: AttemptRef, name: CheckpointName, entry: CheckpointEntry) -> VerifiedFile:
        key = self.layout.staged_key(ref, name)
        try:
            info = self.storage.head(key)
        except ObjectMissing:
            raise Rejected(f"{name}.pt is listed in the manifest but {key} does not exist") from None
        if info.size != entry.size:
            raise Rejected(f"{name}.pt is {info.size} bytes in storage, the manifest says {entry.size}")
        checksum_source: ChecksumSource
        if info.sha256 is not None:
            sha256, md5, checksum_source = info.sha256, info.md5, "store"
        elif info.crc64nvme is not None and entry.crc64nvme is not None:
            if info.crc64nvme != entry.crc64nvme:
                raise Rejected(
                    f"{name}.pt CRC-64/NVME is {info.crc64nvme} (store checksum), the manifest says {entry.crc64nvme}"
                )
            # The store verified these bytes against the trainer's CRC, computed in the pass that made the SHA-256.
            sha256, md5, checksum_source = entry.sha256, info.md5, "crc64nvme"
        else:
            try:
                streamed = self.storage.stream_digests(key, info.etag)
            except ObjectMissing:
                raise ObjectChanged(f"{key} disappeared while it was being verified") from None
            sha256, md5, checksum_source = streamed.sha256, streamed.md5, "stream"
            if streamed.length != entry.size:
                raise Rejected(f"{name}.pt streamed {streamed.length} bytes, the manifest says {entry.size}")
        if sha256 != entry.sha256:
            raise Rejected(
                f"{name}.pt SHA-256 is {sha256} ({'store checksum' if checksum_source == 'store' else 'hashed'}),"
                f" the manifest says {entry.sha256}"
            )
        return VerifiedFile(name=name, entry=entry, source=info, checksum_source=checksum_source, md5=md5)

    def _copy(self, ref: AttemptRef, file: VerifiedFile, manifest_sha256: str) -> CopyCheck:
        dest_key = self.layout.canonical_key(ref.job, file.name)
        metadata = {
            "sha256": file.entry.sha256,
            "attempt": str(ref.attempt),
            "manifest-sha256": manifest_sha256,
        }
        try:
            copied = self.storage.copy(file.source, dest_key, metadata)
        except ObjectMissing:
            raise ObjectChanged(f"{file.source.key} disappeared while it was being promoted") from None
        check = check_copy(file, copied)
        if check.problem:
            # Left for a retry: the database still points at the previous promotion.
            raise ObjectChanged(f"copy of {file.source.key} to {dest_key} failed verification: {check.problem}")
        return replace(check, version_id=copied.version_id)

    # --- outcomes ------------------------------------------------------------------------------------

    def _promoted(
        self, base: Outcome, manifest: Manifest, verified: list[VerifiedFile], job: JobSnapshot
    ) -> tuple[Outcome, dict[CheckpointName, int | None]]:
        """The promoted outcome, and the epoch each canonical file stands for afterwards (the new job state)."""
        ref = manifest.ref
        epochs = resolve_epochs(manifest, job.rows)
        targets = target_epochs(epochs, job.state)
        uris = self.layout.canonical_uris(ref.job)
        files = {
            f.name: FileReport(
                size=f.entry.size,
                sha256=f.entry.sha256,
                checksum_source=f.checksum_source,
                staged_key=f.source.key,
                canonical_uri=uris[f.name],
                epoch=epochs[f.name],
            )
            for f in verified
        }
        listed = ", ".join(f"{n}.pt (epoch {epochs[n]})" for n in files) or "no checkpoints"
        paths = row_paths(targets, uris)
        outcome = replace(
            base,
            status=Status.PROMOTED,
            reason=f"attempt {ref.attempt} ({manifest.status}): promoted {listed}",
            files=files,
            row_paths=paths,
            missing_rows=missing_epochs(paths, job.rows),
        )
        return outcome, targets

    def _duplicate(self, base: Outcome, manifest: Manifest, job: JobSnapshot) -> Duplicate:
        """A manifest promoted before. It re-applies the promoted paths, so rows the platform wrote after the
        promotion (an epoch that had no row then) get theirs, and the epochs the manifest left to the database
        are resolved again from the rows there are now: processing a manifest any number of times leaves the
        rows as processing it once, now, would."""
        assert job.state is not None and base.ref is not None  # a duplicate has a recorded state
        targets = target_epochs(resolve_epochs(manifest, job.rows), job.state)
        paths = row_paths(targets, self.layout.canonical_uris(base.ref.job))
        outcome = replace(
            self._not_promoted(base, Decision.DUPLICATE),
            row_paths=paths,
            missing_rows=missing_epochs(paths, job.rows),
        )
        state = None if targets == job.state.epochs else replace(job.state, epochs=targets)
        return Duplicate(outcome=outcome, paths=paths, state=state)

    @staticmethod
    def _not_promoted(base: Outcome, decision: Decision) -> Outcome:
        if decision is Decision.DUPLICATE:
            return replace(base, status=Status.DUPLICATE, reason="this manifest was already promoted")
        return replace(base, status=Status.SUPERSEDED, reason="a newer attempt of this job was already promoted")

    def _finish(self, outcome: Outcome, dry_run: bool) -> Outcome:
        """Record an outcome reached outside the job's transaction (rejections, which roll it back)."""
        if outcome.status is not Status.IGNORED and not dry_run:
            try:
                self.store.record(outcome)
            except Rejected as exc:
                # The database refuses even the bounded record. The outcome stands and the log keeps it: a
                # retry could only fail the same way, and must not park garbage in the dead-letter queue.
                log.error("could not record the outcome of %r: %s", outcome.manifest_key, exc.reason)
        return self._logged(outcome)

    @staticmethod
    def _logged(outcome: Outcome) -> Outcome:
        level = logging.WARNING if outcome.status in (Status.REJECTED, Status.IGNORED) else logging.INFO
        log.log(level, "manifest %s: %s", outcome.status, outcome.reason, extra=outcome.log_fields())
        return outcome


@dataclass(frozen=True)
class CopyCheck:
    problem: str | None  # why the copy does not match what was verified; None when it does
    evidence: tuple[CopyEvidence, ...]  # what showed that it does
    version_id: str | None = None  # the version the copy wrote, in a versioned bucket


def check_copy(file: VerifiedFile, copied: CopiedObject) -> CopyCheck:
    """Check a canonical copy against the verified file, with only what describes the copy itself: the
    SHA-256 the store computed over the copied bytes, the size, and a content-MD5 ETag against the bytes'
    MD5 when both are known. A checksum copied from the source proves nothing and never reaches here."""
    evidence: list[CopyEvidence] = []
    if copied.sha256 is not None:
        if copied.sha256 != file.entry.sha256:
            return CopyCheck(f"store-computed SHA-256 {copied.sha256}, expected {file.entry.sha256}", ())
        evidence.append("sha256")
    if copied.size is not None:
        if copied.size != file.entry.size:
            return CopyCheck(f"{copied.size} bytes, expected {file.entry.size}", ())
        evidence.append("size")
    if copied.md5 is not None and file.md5 is not None:
        if copied.md5 != file.md5:
            return CopyCheck(f"content MD5 (ETag) {copied.md5}, expected {file.md5}", ())
        evidence.append("md5")
    if not evidence:
        return CopyCheck("the store reported neither a checksum nor a size for the copy", ())
    return CopyCheck(None, tuple(evidence))
