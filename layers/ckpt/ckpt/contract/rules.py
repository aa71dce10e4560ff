"""The promotion rules, as pure functions: which epoch is best and last, whether a manifest must be
promoted given what was promoted before, and which ``validation_results`` rows must point where.

Nothing here touches storage or a database; the adapters feed it plain values.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ckpt.contract.keys import AttemptRef, CheckpointName
from ckpt.contract.manifest import Manifest, MetricMode


@dataclass(frozen=True)
class EpochMetric:
    """One ``validation_results`` row of a job, as far as the rules care."""

    epoch: int
    value: float | None
    checkpoint_path: str | None = None


def last_epoch(rows: Iterable[EpochMetric]) -> int | None:
    """The highest epoch the job recorded."""
    return max((row.epoch for row in rows), default=None)


def best_epoch(rows: Iterable[EpochMetric], mode: MetricMode = "max") -> int | None:
    """The epoch with the best metric in ``mode``, ignoring NULL and NaN (and infinities, which no
    real metric reaches). On a tie the later epoch wins: Ultralytics rewrites best.pt when fitness
    equals the best so far, so the later epoch is the one in the file."""
    scored = [row for row in rows if row.value is not None and math.isfinite(row.value)]
    if not scored:
        return None
    sign = 1.0 if mode == "max" else -1.0
    return max(scored, key=lambda row: (sign * row.value, row.epoch)).epoch  # type: ignore[operator]


@dataclass(frozen=True)
class JobState:
    """What the service last promoted for a job (its own table, not the platform's)."""

    project_id: int | None
    attempt: int
    manifest_sha256: str
    epochs: Mapping[CheckpointName, int | None]


@dataclass(frozen=True)
class JobSnapshot:
    """A job as the database records it: the service's state and the platform's validation rows."""

    state: JobState | None
    rows: list[EpochMetric]


def missing_epochs(paths: Mapping[int, str], rows: Iterable[EpochMetric]) -> list[int]:
    """The epochs that should carry a path but have no validation_results row (the platform has not written
    them yet)."""
    return sorted(set(paths) - {row.epoch for row in rows})


class Decision(enum.StrEnum):
    PROMOTE = "promote"
    DUPLICATE = "duplicate"
    SUPERSEDED = "superseded"


class ConflictingJob(ValueError):
    """The job id is already known under another project: a manifest cannot move a job."""


def decide(state: JobState | None, ref: AttemptRef, manifest_sha256: str, *, force: bool = False) -> Decision:
    """Whether a manifest must be promoted, given the job's recorded state.

    ``force`` (the manual reprocess) re-runs a promotion that was already done, never an older attempt.
    """
    if state is None:
        return Decision.PROMOTE
    if state.project_id != ref.job.project_id:
        raise ConflictingJob(
            f"job {ref.job.job_id} was promoted under project {state.project_id}, "
            f"this manifest says project {ref.job.project_id}"
        )
    if ref.attempt < state.attempt:
        return Decision.SUPERSEDED
    if ref.attempt == state.attempt and manifest_sha256 == state.manifest_sha256 and not force:
        return Decision.DUPLICATE
    return Decision.PROMOTE


def resolve_epochs(manifest: Manifest, rows: Iterable[EpochMetric]) -> dict[CheckpointName, int | None]:
    """The epoch of each checkpoint the manifest lists; where the trainer did not know it, the database's."""
    rows = list(rows)
    derived: dict[CheckpointName, int | None] = {
        "best": best_epoch(rows, manifest.metric_mode),
        "last": last_epoch(rows),
    }
    return {
        name: entry.epoch if entry.epoch is not None else derived[name]
        for name, entry in manifest.checkpoints.present().items()
    }


def target_epochs(
    promoted: Mapping[CheckpointName, int | None], previous: JobState | None
) -> dict[CheckpointName, int | None]:
    """Which epoch each canonical file stands for after this promotion.

    A checkpoint this manifest does not list keeps what an earlier promotion put at its canonical key:
    that file is still there and still that epoch's weights.
    """
    kept = dict(previous.epochs) if previous else {}
    return {**kept, **promoted}


def row_paths(epochs: Mapping[CheckpointName, int | None], uris: Mapping[CheckpointName, str]) -> dict[int, str]:
    """``validation_results.checkpoint_path`` per epoch; every other row of the job holds NULL.
    When best and last are the same epoch, that row holds the best URI."""
    paths: dict[int, str] = {}
    order: tuple[CheckpointName, ...] = ("last", "best")  # best last, so it wins a shared epoch
    for name in order:
        epoch = epochs.get(name)
        if epoch is not None:
            paths[epoch] = uris[name]
    return paths
