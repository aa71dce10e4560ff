"""``ckpt status``: one job at a glance, for a person (a table) or a script (``--json``).

- the promoted ``best.pt`` and ``last.pt`` as ``read_promoted`` answers them (the answer ``ckpt fetch``, the API and
  a resumed training share): epoch, metric, attempt, size, SHA-256, how the SHA-256 was shown (``store``,
  ``crc64nvme``, ``stream``) and when; or why nothing is promoted;
- the job's ``validation_results``: each epoch's metric and ``checkpoint_path``, ✓ only on ``r2://`` URIs (the
  platform UI's rule, whatever else a row holds);
- the job's promotion history, newest first: outcome, trigger, attempt, reason.

Without ``--project-id`` the job's project is the one its record names (test jobs have none). ``build_status``,
``render`` and ``as_json`` are pure; ``read_status`` is the shell.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, select

from ckpt.adapters.db.errors import database_errors
from ckpt.adapters.db.schema import job_state, promotions
from ckpt.adapters.db.store import PromotionStore
from ckpt.contract.keys import JobRef, Layout
from ckpt.promotion.promoted import JobInAnotherProject, NotPromoted, PromotedJob, UnknownJob, read_promoted

# The platform UI's rule: a checkpoint is in durable storage when its path is an r2:// URI.
UI_URI_PREFIX = "r2://"
DEFAULT_HISTORY = 20

# --- the answer (pure) ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EpochRow:
    epoch: int
    metric: float | None
    checkpoint_path: str | None

    @property
    def in_r2(self) -> bool:
        return self.checkpoint_path is not None and self.checkpoint_path.startswith(UI_URI_PREFIX)


@dataclass(frozen=True)
class PromotedFile:
    name: str
    uri: str
    epoch: int | None
    metric: float | None
    attempt: int
    size: int
    sha256: str
    checksum_source: str | None  # from the promotion record; None if it does not say
    promoted_at: datetime
    promotion_id: int
    version_id: str | None


@dataclass(frozen=True)
class HistoryEntry:
    id: int
    created_at: datetime
    outcome: str
    trigger: str
    attempt: int | None
    reason: str
    manifest_key: str


@dataclass(frozen=True)
class JobStatus:
    job: JobRef
    project_from_record: bool  # --project-id was not given: the project is the one the record names
    promoted_attempt: int | None
    promoted_updated_at: datetime | None
    promoted: list[PromotedFile]
    not_promoted: NotPromoted | None
    epochs: list[EpochRow]
    history: list[HistoryEntry]

    @property
    def known(self) -> bool:
        """Whether the answer is about the job asked for (not an unknown job, nor one of another project)."""
        return not isinstance(self.not_promoted, (UnknownJob, JobInAnotherProject))


def build_status(
    job: JobRef,
    project_from_record: bool,
    promoted: PromotedJob | NotPromoted,
    checksum_sources: Mapping[int, Mapping[str, str]],
    epochs: Sequence[tuple[int, float | None, str | None]],
    history: Sequence[Mapping[str, Any]],
) -> JobStatus:
    """The status from what was read: ``checksum_sources`` is promotion id → file name → checksum source."""
    files: list[PromotedFile] = []
    if isinstance(promoted, PromotedJob):
        for name, checkpoint in promoted.checkpoints.items():
            files.append(
                PromotedFile(
                    name=name,
                    uri=checkpoint.uri,
                    epoch=checkpoint.epoch,
                    metric=checkpoint.metric_value,
                    attempt=checkpoint.attempt,
                    size=checkpoint.size,
                    sha256=checkpoint.sha256,
                    checksum_source=checksum_sources.get(checkpoint.promotion_id, {}).get(name),
                    promoted_at=checkpoint.promoted_at,
                    promotion_id=checkpoint.promotion_id,
                    version_id=checkpoint.version_id,
                )
            )
    return JobStatus(
        job=job,
        project_from_record=project_from_record,
        promoted_attempt=promoted.attempt if isinstance(promoted, PromotedJob) else None,
        promoted_updated_at=promoted.updated_at if isinstance(promoted, PromotedJob) else None,
        promoted=files,
        not_promoted=promoted if isinstance(promoted, NotPromoted) else None,
        epochs=[EpochRow(epoch=e, metric=m, checkpoint_path=p) for e, m, p in epochs],
        history=[
            HistoryEntry(
                id=int(row["id"]),
                created_at=_utc(row["created_at"]),
                outcome=str(row["outcome"]),
                trigger=str(row["trigger"]),
                attempt=row.get("attempt"),
                reason=str(row["reason"]),
                manifest_key=str(row["manifest_key"]),
            )
            for row in history
        ],
    )


def checksum_sources_of(details: Mapping[str, Any]) -> dict[str, str]:
    """File name → checksum source, from a promotion record's ``details``."""
    files = details.get("files") if isinstance(details, Mapping) else None
    if not isinstance(files, Mapping):
        return {}
    return {
        str(name): str(entry["checksum_source"])
        for name, entry in files.items()
        if isinstance(entry, Mapping) and isinstance(entry.get("checksum_source"), str)
    }


def render(status: JobStatus) -> list[str]:
    """The table a person reads."""
    job = status.job
    title = str(job) + (" (the project its record names)" if status.project_from_record and job.project_id else "")
    lines = [title, ""]
    if status.not_promoted is not None:
        lines.append(f"promoted: nothing. {status.not_promoted.reason}")
    else:
        lines.append(f"promoted: attempt {status.promoted_attempt}, recorded {_when(status.promoted_updated_at)}")
        lines.append(
            f"  {'file':<8}{'epoch':>6}{'metric':>10}{'attempt':>9}  {'checksum':<10}{'size':>11}  "
            f"{'sha256':<14}promoted"
        )
        for f in status.promoted:
            lines.append(
                f"  {f.name + '.pt':<8}{_text(f.epoch):>6}{_metric(f.metric):>10}{f.attempt:>9}  "
                f"{f.checksum_source or '?':<10}{_size(f.size):>11}  {f.sha256[:12] + '…':<14}{_when(f.promoted_at)}"
            )
    lines += ["", f"epochs (✓: checkpoint_path is an {UI_URI_PREFIX} URI, the platform UI's rule)"]
    if not status.epochs:
        lines.append("  no validation_results rows")
    else:
        lines.append(f"{'epoch':>6}{'metric':>10}  checkpoint_path")  # the columns of `make demo`'s table
        for row in status.epochs:
            mark = "✓" if row.in_r2 else "·"
            path = f" {row.checkpoint_path}" if row.checkpoint_path is not None else ""
            lines.append(f"{row.epoch:>6}{_metric(row.metric):>10}  {mark}{path}")
    lines += ["", f"history (newest first, {len(status.history)} shown)"]
    if not status.history:
        lines.append("  no manifest of this job has been recorded")
    for entry in status.history:
        attempt = f"attempt {entry.attempt}" if entry.attempt is not None else "attempt ?"
        lines.append(
            f"  {_when(entry.created_at)}  {entry.outcome:<10}  {entry.trigger:<12}  {attempt:<10}  {entry.reason}"
        )
    return lines


def as_json(status: JobStatus) -> dict[str, Any]:
    """The same for scripts: JSON-ready (no NaN, times in ISO 8601 UTC)."""
    return {
        "job_id": status.job.job_id,
        "project_id": status.job.project_id,
        "project_from_record": status.project_from_record,
        "promoted": None
        if status.not_promoted is not None
        else {
            "attempt": status.promoted_attempt,
            "updated_at": _iso(status.promoted_updated_at),
            "checkpoints": {
                f.name: {
                    "uri": f.uri,
                    "epoch": f.epoch,
                    "metric_value": _finite(f.metric),
                    "attempt": f.attempt,
                    "size": f.size,
                    "sha256": f.sha256,
                    "checksum_source": f.checksum_source,
                    "promoted_at": _iso(f.promoted_at),
                    "promotion_id": f.promotion_id,
                    "version_id": f.version_id,
                }
                for f in status.promoted
            },
        },
        "not_promoted": None
        if status.not_promoted is None
        else {"code": status.not_promoted.code, "reason": status.not_promoted.reason},
        "epochs": [
            {
                "epoch": row.epoch,
                "metric_value": _finite(row.metric),
                "checkpoint_path": row.checkpoint_path,
                "in_r2": row.in_r2,
            }
            for row in status.epochs
        ],
        "history": [
            {
                "id": entry.id,
                "created_at": _iso(entry.created_at),
                "outcome": entry.outcome,
                "trigger": entry.trigger,
                "attempt": entry.attempt,
                "reason": entry.reason,
                "manifest_key": entry.manifest_key,
            }
            for entry in status.history
        ],
    }


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _metric(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.4f}" if math.isfinite(value) else str(value)


def _text(value: object) -> str:
    return "?" if value is None else str(value)


def _size(size: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def _utc(moment: datetime) -> datetime:
    """SQLite hands back the stored UTC times without their zone."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else _utc(moment).astimezone(UTC).isoformat().replace("+00:00", "Z")


def _when(moment: datetime | None) -> str:
    return "?" if moment is None else _utc(moment).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


# --- the shell ------------------------------------------------------------------------------------------------


def read_status(
    engine: Engine, layout: Layout, job_id: int, project_id: int | None, *, history: int = DEFAULT_HISTORY
) -> JobStatus:
    """Read the job's status. ``project_id`` None: the project the job's record names (a test job has none)."""
    store = PromotionStore(engine)
    project_from_record = project_id is None
    if project_id is None:
        project_id = recorded_project(engine, job_id)
    job = JobRef(job_id=job_id, project_id=project_id)
    promoted: PromotedJob | NotPromoted
    try:
        promoted = read_promoted(engine, layout, job)
    except NotPromoted as exc:
        promoted = exc
    sources: dict[int, dict[str, str]] = {}
    if isinstance(promoted, PromotedJob):
        sources = _checksum_sources(engine, {c.promotion_id for c in promoted.checkpoints.values()})
    return build_status(
        job, project_from_record, promoted, sources, store.checkpoint_paths(job_id), store.history(job_id, history)
    )


def recorded_project(engine: Engine, job_id: int) -> int | None:
    """The project the job's record names: its promotion state's, else its newest record's; None for a test job
    or a job the service has no record of."""
    with database_errors(), engine.connect() as connection:
        state = connection.execute(select(job_state.c.project_id).where(job_state.c.job_id == job_id)).first()
        if state is not None:
            return state[0]
        newest = connection.execute(
            select(promotions.c.project_id)
            .where(promotions.c.job_id == job_id)
            .order_by(promotions.c.id.desc())
            .limit(1)
        ).first()
        return None if newest is None else newest[0]


def _checksum_sources(engine: Engine, promotion_ids: set[int]) -> dict[int, dict[str, str]]:
    query = select(promotions.c.id, promotions.c.details).where(promotions.c.id.in_(sorted(promotion_ids)))
    with database_errors(), engine.connect() as connection:
        return {int(record_id): checksum_sources_of(details) for record_id, details in connection.execute(query)}
