"""``ckpt backfill``: promote every staged manifest that has no recorded outcome.

For after an outage (the function could not reach the database or the store and its messages expired), or when
notifications were lost (messages purged from the dead-letter queue, a bucket notification configured late).
Every manifest goes through the promotion itself (``Promoter.promote_key``, trigger ``backfill``): the same
checks, lock and transaction as a notification, so a manifest promoted meanwhile by its own event ends
``duplicate``, an older attempt ``superseded``.

**No recorded outcome** means: no ``ckpt_promotions`` row for the manifest's key (in this bucket) with the
SHA-256 of the bytes now at that key. A re-staged manifest (new bytes at the same key) is therefore new, and a
manifest that was given up on after its last delivery is not settled either: that record is written without a
digest, since the manifest's bytes were never read, so it is no outcome of any bytes. A manifest whose key no
record names is pending without being read; one whose key has records is read (at most 64 KiB) to compare its
digest.

``select_manifests``, ``parse_since`` and ``backfill_order`` are the pure rules; ``plan_backfill`` and
``run_backfill`` the shell.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy import Engine, select

from ckpt.adapters.db.errors import database_errors
from ckpt.adapters.db.schema import promotions
from ckpt.adapters.storage import ListedObject
from ckpt.contract.keys import MANIFEST_FILE, AttemptRef, Layout, LayoutError
from ckpt.contract.manifest import MAX_MANIFEST_BYTES
from ckpt.contract.outcome import Outcome, Status
from ckpt.errors import ObjectMissing, TransientError
from ckpt.operations.sweep import parse_duration
from ckpt.promotion.promoter import Promoter

TRIGGER = "backfill"

# --- the rules (pure) ---------------------------------------------------------------------------------------

_DURATION_UNITS = ("s", "m", "h", "d")


def parse_since(text: str, now: datetime) -> datetime:
    """The moment ``--since`` names: a duration back from ``now``, written as ``ckpt sweep --older-than`` takes
    one (``90s``, ``30m``, ``6h``, ``2d``, ``1h30m``), or an ISO 8601 date or time (``2025-11-05``,
    ``2025-11-05T14:30:00Z``; without a zone, UTC)."""
    value = text.strip()
    if value[:1].isdigit() and value[-1:] in _DURATION_UNITS:
        try:
            return now - parse_duration(value)
        except ValueError:
            pass
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"--since {text!r} is neither a duration (90s, 30m, 6h, 2d, 1h30m) nor an ISO date or time "
            "(2025-11-05, 2025-11-05T14:30:00Z)"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class StagedManifest:
    key: str
    ref: AttemptRef
    last_modified: datetime


@dataclass(frozen=True)
class Selection:
    """The staged manifests a backfill considers, and what the listing left out."""

    manifests: list[StagedManifest]
    before_since: int  # manifests of the layout last modified before --since
    not_of_layout: list[str]  # keys ending in /manifest.json that the layout does not know (never promoted)


def select_manifests(listed: Iterable[ListedObject], layout: Layout, since: datetime | None) -> Selection:
    """The manifests of the layout among the objects listed under the staging prefix, modified at or after
    ``since``. Other ``…/manifest.json`` keys are ignored by contract (the promotion would answer ``ignored`` and
    record nothing): they are reported, never promoted."""
    manifests: list[StagedManifest] = []
    before_since = 0
    not_of_layout: list[str] = []
    for item in listed:
        if not item.key.endswith("/" + MANIFEST_FILE):
            continue
        try:
            ref = layout.parse_manifest_key(item.key)
        except LayoutError:
            not_of_layout.append(item.key)
            continue
        if since is not None and item.last_modified < since:
            before_since += 1
            continue
        manifests.append(StagedManifest(key=item.key, ref=ref, last_modified=item.last_modified))
    return Selection(manifests=manifests, before_since=before_since, not_of_layout=not_of_layout)


def backfill_order(manifests: Iterable[StagedManifest]) -> list[StagedManifest]:
    """Job by job, the newest attempt first: an older attempt of the same job then ends ``superseded`` without
    copying, instead of being promoted and replaced a moment later."""
    return sorted(manifests, key=lambda m: (m.ref.job.job_id, m.ref.job.project_id or 0, -m.ref.attempt, m.key))


# --- the shell ----------------------------------------------------------------------------------------------


class StagingReader(Protocol):
    """What a backfill needs from the store (``ckpt.adapters.storage.S3Storage``)."""

    def list_objects(self, prefix: str) -> Iterator[ListedObject]: ...
    def read(self, key: str, max_bytes: int) -> bytes: ...


@dataclass(frozen=True)
class BackfillPlan:
    selection: Selection
    recorded: int  # manifests whose bytes have a recorded outcome
    gone: int  # listed, then deleted before they could be read
    pending: list[StagedManifest]  # in the order they are promoted


def plan_backfill(storage: StagingReader, engine: Engine, layout: Layout, since: datetime | None) -> BackfillPlan:
    """List staging, and find the manifests without a recorded outcome. Reads nothing but the manifests whose key
    has records (to compare their digest)."""
    selection = select_manifests(storage.list_objects(layout.staging_prefix), layout, since)
    digests = recorded_digests(engine, layout.bucket, [m.key for m in selection.manifests])
    pending: list[StagedManifest] = []
    recorded = gone = 0
    for manifest in selection.manifests:
        known = digests.get(manifest.key)
        if not known:
            pending.append(manifest)
            continue
        try:
            raw = storage.read(manifest.key, MAX_MANIFEST_BYTES)
        except ObjectMissing:
            gone += 1
            continue
        # The promotion digests the same bytes: at most MAX_MANIFEST_BYTES + 1 of them.
        if hashlib.sha256(raw).hexdigest() in known:
            recorded += 1
        else:
            pending.append(manifest)
    return BackfillPlan(selection=selection, recorded=recorded, gone=gone, pending=backfill_order(pending))


# Keys per IN (...) list: far below every database's limit on parameters.
KEYS_PER_QUERY = 500


def recorded_digests(engine: Engine, bucket: str, keys: Sequence[str]) -> dict[str, set[str]]:
    """manifest key → the manifest SHA-256s recorded for it (records without a digest are no outcome of any
    bytes, and are left out)."""
    columns = promotions.c
    found: dict[str, set[str]] = {}
    with database_errors(), engine.connect() as connection:
        for start in range(0, len(keys), KEYS_PER_QUERY):
            chunk = list(keys[start : start + KEYS_PER_QUERY])
            query = (
                select(columns.manifest_key, columns.manifest_sha256)
                .where(
                    columns.bucket == bucket,
                    columns.manifest_key.in_(chunk),
                    columns.manifest_sha256.is_not(None),
                )
                .distinct()
            )
            for key, sha256 in connection.execute(query):
                found.setdefault(key, set()).add(sha256)
    return found


@dataclass(frozen=True)
class BackfillResult:
    manifest: StagedManifest
    outcome: Outcome | None  # None when the promotion failed transiently
    error: str | None = None  # that failure: the manifest stays without an outcome, for the next run

    @property
    def label(self) -> str:
        return "failed" if self.outcome is None else str(self.outcome.status)


def run_backfill(
    promoter: Promoter,
    pending: Sequence[StagedManifest],
    *,
    progress: bool | None = None,
    describe: Callable[[BackfillResult], str | None] = lambda result: None,
) -> list[BackfillResult]:
    """Promote each pending manifest through the promotion; ``describe`` gives the line to print of a result
    (None: nothing), written above the bar. A transient failure (store or database down) is reported and the
    run goes on; the manifest keeps no outcome and the next run picks it up."""
    results: list[BackfillResult] = []
    with progress_bar(len(pending), progress) as bar:
        for manifest in pending:
            try:
                result = BackfillResult(
                    manifest, promoter.promote_key(promoter.layout.bucket, manifest.key, trigger=TRIGGER)
                )
            except TransientError as exc:
                result = BackfillResult(manifest, None, f"{type(exc).__name__}: {exc}")
            results.append(result)
            line = describe(result)
            if line is not None:
                bar.write(line)
            bar.advance()
    return results


def tally(results: Iterable[BackfillResult]) -> dict[str, int]:
    """Count per outcome, in the order outcomes are listed."""
    order = [str(status) for status in Status] + ["failed"]
    counts: dict[str, int] = {}
    for result in results:
        counts[result.label] = counts.get(result.label, 0) + 1
    return {label: counts[label] for label in order if label in counts}


def summary(plan: BackfillPlan, counts: Mapping[str, int] | None) -> str:
    """One line: what was listed, what was left alone, and (after a run) how the rest ended."""
    selection = plan.selection
    considered = len(selection.manifests)
    parts = [f"{considered} staged manifest{'s' if considered != 1 else ''}"]
    if selection.before_since:
        parts.append(f"{selection.before_since} more before --since")
    if selection.not_of_layout:
        parts.append(f"{len(selection.not_of_layout)} ignored (not of the key layout)")
    head = ", ".join(parts)
    line = f"{head}; {plan.recorded} with a recorded outcome; {len(plan.pending)} without"
    if plan.gone:
        line += f"; {plan.gone} deleted while listed"
    if counts is not None:
        line += ": " + (", ".join(f"{label} {n}" for label, n in counts.items()) or "nothing to do")
    return line


@dataclass(frozen=True)
class Progress:
    advance: Callable[[], None]
    write: Callable[[str], None]  # a line on stdout that does not break the bar


@contextmanager
def progress_bar(total: int, enabled: bool | None, label: str = "backfill") -> Iterator[Progress]:
    """A bar on stderr when stderr is a terminal (or ``enabled``), with tqdm when it is installed (the ``trainer``
    extra); otherwise no bar, and lines go straight to stdout."""
    try:
        from tqdm import tqdm
    except ImportError:
        yield Progress(advance=lambda: None, write=lambda line: print(line, flush=True))
        return
    disable = None if enabled is None else not enabled  # None: tqdm shows it only on a terminal
    with tqdm(total=total, desc=label, unit="manifest", file=sys.stderr, disable=disable) as bar:
        yield Progress(advance=lambda: bar.update(1), write=lambda line: tqdm.write(line, file=sys.stdout))
