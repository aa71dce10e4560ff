"""The promotion rules: best and last epochs, the promote/duplicate/superseded decision, and the row paths."""

from __future__ import annotations

import hashlib
import math
from typing import Any

import pytest

from ckpt.contract.keys import AttemptRef, JobRef
from ckpt.contract.manifest import Manifest
from ckpt.contract.rules import (
    ConflictingJob,
    Decision,
    EpochMetric,
    JobState,
    best_epoch,
    decide,
    last_epoch,
    resolve_epochs,
    row_paths,
    target_epochs,
)

NAN = math.nan
INF = math.inf
SHA_A = hashlib.sha256(b"manifest A").hexdigest()
SHA_B = hashlib.sha256(b"manifest B").hexdigest()
BEST_URI = "r2://vision-platform-prod/checkpoints/projects/7/jobs/42/best.pt"
LAST_URI = "r2://vision-platform-prod/checkpoints/projects/7/jobs/42/last.pt"
URIS = {"best": BEST_URI, "last": LAST_URI}


def rows(*pairs: tuple[int, float | None]) -> list[EpochMetric]:
    """``validation_results`` rows as (epoch, primary_metric_value), in the order given."""
    return [EpochMetric(epoch=epoch, value=value) for epoch, value in pairs]


# --- best and last epoch ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "mode", "expected"),
    [
        pytest.param(rows((1, 0.1), (2, 0.5), (3, 0.3)), "max", 2, id="max"),
        pytest.param(rows((1, 0.1), (2, 0.5), (3, 0.3)), "min", 1, id="min"),
        pytest.param(rows((3, 0.3), (1, 0.1), (2, 0.5)), "max", 2, id="max-unordered-rows"),
        pytest.param(rows((1, -2.0), (2, -0.5)), "max", 2, id="max-negative-values"),
        pytest.param(rows((1, None), (2, 0.4), (3, None)), "max", 2, id="ignores-none"),
        pytest.param(rows((1, NAN), (2, 0.2), (3, 0.1)), "max", 2, id="ignores-nan-max"),
        pytest.param(rows((1, NAN), (2, 0.2), (3, 0.1)), "min", 3, id="ignores-nan-min"),
        pytest.param(rows((1, INF), (2, 0.2), (3, 0.1)), "max", 2, id="ignores-inf-max"),
        pytest.param(rows((1, -INF), (2, 0.2), (3, 0.1)), "min", 3, id="ignores-minus-inf-min"),
        pytest.param(rows((1, -INF), (2, 0.2), (3, INF)), "max", 2, id="ignores-both-infinities"),
        pytest.param(rows((1, None), (2, None)), "max", None, id="all-none"),
        pytest.param(rows((1, NAN), (2, INF), (3, None)), "min", None, id="nothing-finite"),
        pytest.param(rows(), "max", None, id="empty-max"),
        pytest.param(rows(), "min", None, id="empty-min"),
        pytest.param(rows((1, 0.5), (2, 0.5), (3, 0.1)), "max", 2, id="tie-max-later-epoch"),
        pytest.param(rows((2, 0.5), (1, 0.5), (3, 0.1)), "max", 2, id="tie-max-later-epoch-unordered"),
        pytest.param(rows((1, 0.1), (2, 0.5), (3, 0.1)), "min", 3, id="tie-min-later-epoch"),
        pytest.param(rows((5, 0.0)), "min", 5, id="single-row"),
    ],
)
def test_best_epoch(table: list[EpochMetric], mode: Any, expected: int | None) -> None:
    assert best_epoch(table, mode) == expected


def test_best_epoch_mode_defaults_to_max() -> None:
    assert best_epoch(rows((1, 0.9), (2, 0.1))) == 1


def test_best_epoch_accepts_a_one_shot_iterable() -> None:
    assert best_epoch(iter(rows((1, 0.1), (2, 0.7))), "max") == 2


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        pytest.param(rows((1, 0.1), (2, 0.2), (3, 0.3)), 3, id="highest"),
        pytest.param(rows((7, 0.1), (2, 0.9), (4, 0.3)), 7, id="unordered"),
        pytest.param(rows((1, 0.5), (9, None), (4, NAN)), 9, id="regardless-of-metric"),
        pytest.param(rows(), None, id="empty"),
    ],
)
def test_last_epoch_is_the_highest_recorded_epoch(table: list[EpochMetric], expected: int | None) -> None:
    assert last_epoch(table) == expected


# --- decide -------------------------------------------------------------------------------------------------

STATE = JobState(project_id=7, attempt=2, manifest_sha256=SHA_A, epochs={"best": 5, "last": 6})


def attempt_of(attempt: int, project_id: int | None = 7) -> AttemptRef:
    return AttemptRef(job=JobRef(job_id=42, project_id=project_id), attempt=attempt)


@pytest.mark.parametrize(
    ("state", "ref", "sha", "force", "expected"),
    [
        pytest.param(None, attempt_of(1), SHA_A, False, Decision.PROMOTE, id="first-promotion"),
        pytest.param(None, attempt_of(1), SHA_A, True, Decision.PROMOTE, id="first-promotion-forced"),
        pytest.param(STATE, attempt_of(1), SHA_A, False, Decision.SUPERSEDED, id="older-attempt"),
        pytest.param(STATE, attempt_of(1), SHA_B, False, Decision.SUPERSEDED, id="older-attempt-other-sha"),
        pytest.param(STATE, attempt_of(1), SHA_A, True, Decision.SUPERSEDED, id="older-attempt-forced"),
        pytest.param(STATE, attempt_of(2), SHA_A, False, Decision.DUPLICATE, id="same-attempt-same-sha"),
        pytest.param(STATE, attempt_of(2), SHA_A, True, Decision.PROMOTE, id="same-attempt-same-sha-forced"),
        pytest.param(STATE, attempt_of(2), SHA_B, False, Decision.PROMOTE, id="same-attempt-other-sha"),
        pytest.param(STATE, attempt_of(3), SHA_B, False, Decision.PROMOTE, id="newer-attempt"),
        pytest.param(STATE, attempt_of(3), SHA_A, False, Decision.PROMOTE, id="newer-attempt-same-sha"),
    ],
)
def test_decide(state: JobState | None, ref: AttemptRef, sha: str, force: bool, expected: Decision) -> None:
    assert decide(state, ref, sha, force=force) == expected


def test_decide_force_defaults_to_false() -> None:
    assert decide(STATE, attempt_of(2), SHA_A) == Decision.DUPLICATE


TEST_JOB_STATE = JobState(project_id=None, attempt=2, manifest_sha256=SHA_A, epochs={"best": 5, "last": 6})


@pytest.mark.parametrize("force", [False, True], ids=["plain", "forced"])
@pytest.mark.parametrize(
    ("state", "ref"),
    [
        pytest.param(STATE, attempt_of(3, project_id=8), id="other-project-newer-attempt"),
        pytest.param(STATE, attempt_of(2, project_id=8), id="other-project-same-attempt"),
        pytest.param(STATE, attempt_of(1, project_id=8), id="other-project-older-attempt"),
        pytest.param(STATE, attempt_of(3, project_id=None), id="project-job-as-test-job"),
        pytest.param(TEST_JOB_STATE, attempt_of(3, project_id=7), id="test-job-as-project-job"),
    ],
)
def test_decide_refuses_to_move_a_job_to_another_project(state: JobState, ref: AttemptRef, force: bool) -> None:
    with pytest.raises(ConflictingJob, match="job 42"):
        decide(state, ref, SHA_A, force=force)


# --- resolve_epochs -----------------------------------------------------------------------------------------


def manifest(mode: str | None = None, **checkpoints: int | None) -> Manifest:
    """A manifest listing the given checkpoints (name=epoch, None for an unknown epoch)."""
    return Manifest.model_validate(
        {
            "schema_version": 1,
            "project_id": 7,
            "job_id": 42,
            "attempt": 1,
            "status": "completed",
            "metric": None if mode is None else {"name": "metric", "mode": mode},
            "checkpoints": {name: {"epoch": epoch, "size": 1, "sha256": SHA_A} for name, epoch in checkpoints.items()},
        }
    )


HISTORY = rows((1, 0.30), (2, 0.90), (3, 0.50), (4, 0.20))  # max: 2, min: 4, last: 4


@pytest.mark.parametrize(
    ("listed", "table", "expected"),
    [
        pytest.param(manifest(best=18, last=20), HISTORY, {"best": 18, "last": 20}, id="manifest-epochs-win"),
        pytest.param(manifest(best=None, last=None), HISTORY, {"best": 2, "last": 4}, id="derived-default-max"),
        pytest.param(manifest("max", best=None, last=None), HISTORY, {"best": 2, "last": 4}, id="derived-max"),
        pytest.param(manifest("min", best=None, last=None), HISTORY, {"best": 4, "last": 4}, id="derived-min"),
        pytest.param(manifest(best=3, last=None), HISTORY, {"best": 3, "last": 4}, id="best-given-last-derived"),
        pytest.param(manifest(best=None, last=9), HISTORY, {"best": 2, "last": 9}, id="best-derived-last-given"),
        pytest.param(manifest(last=None), HISTORY, {"last": 4}, id="only-last-listed"),
        pytest.param(manifest(best=None), HISTORY, {"best": 2}, id="only-best-listed"),
        pytest.param(manifest(), HISTORY, {}, id="nothing-listed"),
        pytest.param(manifest(best=None, last=None), rows(), {"best": None, "last": None}, id="no-rows"),
        pytest.param(
            manifest(best=None, last=None),
            rows((1, None), (2, NAN)),
            {"best": None, "last": 2},
            id="no-usable-metric",
        ),
    ],
)
def test_resolve_epochs(listed: Manifest, table: list[EpochMetric], expected: dict[str, int | None]) -> None:
    assert resolve_epochs(listed, table) == expected


def test_resolve_epochs_accepts_a_one_shot_iterable() -> None:
    assert resolve_epochs(manifest(best=None, last=None), iter(HISTORY)) == {"best": 2, "last": 4}


# --- target_epochs ------------------------------------------------------------------------------------------


def state_with(**epochs: int | None) -> JobState:
    return JobState(project_id=7, attempt=1, manifest_sha256=SHA_A, epochs=epochs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("promoted", "previous", "expected"),
    [
        pytest.param({"best": 5, "last": 6}, None, {"best": 5, "last": 6}, id="first-promotion"),
        pytest.param({"last": 6}, None, {"last": 6}, id="first-promotion-last-only"),
        pytest.param({"last": 9}, state_with(best=5, last=6), {"best": 5, "last": 9}, id="keeps-previous-best"),
        pytest.param({"best": 8}, state_with(best=5, last=6), {"best": 8, "last": 6}, id="keeps-previous-last"),
        pytest.param({"best": 8, "last": 9}, state_with(best=5, last=6), {"best": 8, "last": 9}, id="replaces-both"),
        pytest.param({}, state_with(best=5, last=6), {"best": 5, "last": 6}, id="nothing-new"),
        pytest.param({"best": None}, state_with(best=5, last=6), {"best": None, "last": 6}, id="new-best-no-epoch"),
    ],
)
def test_target_epochs(
    promoted: dict[str, int | None], previous: JobState | None, expected: dict[str, int | None]
) -> None:
    assert target_epochs(promoted, previous) == expected  # type: ignore[arg-type]


# --- row_paths ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("epochs", "expected"),
    [
        pytest.param({"best": 18, "last": 20}, {18: BEST_URI, 20: LAST_URI}, id="different-epochs"),
        pytest.param({"best": 20, "last": 20}, {20: BEST_URI}, id="same-epoch-holds-best"),
        pytest.param({"last": 20, "best": 20}, {20: BEST_URI}, id="same-epoch-holds-best-any-order"),
        pytest.param({"best": None, "last": 20}, {20: LAST_URI}, id="best-epoch-unknown"),
        pytest.param({"best": 18, "last": None}, {18: BEST_URI}, id="last-epoch-unknown"),
        pytest.param({"best": None, "last": None}, {}, id="both-unknown"),
        pytest.param({"last": 3}, {3: LAST_URI}, id="last-only"),
        pytest.param({"best": 0}, {0: BEST_URI}, id="epoch-zero"),
        pytest.param({}, {}, id="nothing"),
    ],
)
def test_row_paths(epochs: dict[str, int | None], expected: dict[int, str]) -> None:
    assert row_paths(epochs, URIS) == expected  # type: ignore[arg-type]
