"""``ckpt status`` on SQLite and PostgreSQL, with moto's S3: the table and the JSON."""

from __future__ import annotations

import json
import math

import pytest
from sqlalchemy import update

from ckpt.adapters.db.schema import validation_results
from ckpt.cli import main
from ckpt.contract.keys import JobRef
from ckpt.operations.status import read_status
from ckpt.trainer.staging import Checkpoint
from tests.support import BUCKET, add_epochs, attempt, weights

JOB = JobRef(job_id=42, project_id=7)
BEST = f"r2://{BUCKET}/checkpoints/projects/7/jobs/42/best.pt"
LAST = f"r2://{BUCKET}/checkpoints/projects/7/jobs/42/last.pt"


@pytest.fixture
def cli_env(monkeypatch, database_url, engine, s3):
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("CHECKPOINT_BUCKET", BUCKET)


@pytest.fixture
def promoted_job(engine, trainer, promoter, layout):
    """Job 42: attempt 1 promoted, then attempt 2 (which lists last.pt only) promoted over it."""
    add_epochs(engine, 42, {18: 0.5967, 19: 0.5917, 20: 0.5947, 21: math.nan})
    trainer.finish(attempt(1))
    promoter.promote_key(BUCKET, layout.manifest_key(attempt(1)), trigger="sqs:s3")
    trainer.finish(attempt(2), files={"last": Checkpoint(weights("last-2"), epoch=21)})
    promoter.promote_key(BUCKET, layout.manifest_key(attempt(2)), trigger="backfill")
    return engine


def status_json(capsys, *args: str) -> dict:
    assert main(["status", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_a_promoted_job_as_json(cli_env, promoted_job, capsys):
    answer = status_json(capsys, "--job-id", "42")

    assert (answer["job_id"], answer["project_id"], answer["project_from_record"]) == (42, 7, True)
    assert answer["not_promoted"] is None
    promoted = answer["promoted"]
    assert promoted["attempt"] == 2
    best, last = promoted["checkpoints"]["best"], promoted["checkpoints"]["last"]
    # best.pt is still attempt 1's file (attempt 2 did not list one); last.pt is attempt 2's
    assert (best["epoch"], best["attempt"], best["metric_value"], best["uri"]) == (18, 1, 0.5967, BEST)
    assert (last["epoch"], last["attempt"], last["metric_value"], last["uri"]) == (21, 2, None, LAST)  # NaN: null
    assert best["checksum_source"] in ("store", "stream") and last["checksum_source"] in ("store", "stream")
    assert best["size"] == 2048 and len(best["sha256"]) == 64 and best["promoted_at"].endswith("Z")
    assert [(row["epoch"], row["in_r2"], row["checkpoint_path"]) for row in answer["epochs"]] == [
        (18, True, BEST),
        (19, False, None),
        (20, False, None),
        (21, True, LAST),
    ]
    assert [(entry["outcome"], entry["trigger"], entry["attempt"]) for entry in answer["history"]] == [
        ("promoted", "backfill", 2),
        ("promoted", "sqs:s3", 1),
    ]


def test_a_promoted_job_as_a_table(cli_env, promoted_job, capsys):
    assert main(["status", "--job-id", "42", "--project-id", "7"]) == 0
    lines = capsys.readouterr().out.splitlines()

    assert lines[0] == "job 42 of project 7"
    assert lines[2].startswith("promoted: attempt 2, recorded ")
    best = next(line for line in lines if line.strip().startswith("best.pt"))
    assert best.split()[:5] == ["best.pt", "18", "0.5967", "1", best.split()[4]]
    assert best.split()[4] in ("store", "stream")
    assert "    18    0.5967  ✓ " + BEST in lines
    assert "    19    0.5917  ·" in lines
    # NaN: PostgreSQL keeps it, SQLite stores NULL
    assert ("    21       nan  ✓ " + LAST in lines) or ("    21         —  ✓ " + LAST in lines)
    history = lines[lines.index("history (newest first, 2 shown)") + 1 :]
    assert history[0].split()[2:5] == ["promoted", "backfill", "attempt"]


def test_a_job_with_rows_but_no_promotion(cli_env, engine, capsys):
    add_epochs(engine, 42, {1: 0.1, 2: 0.2})
    rows = validation_results.c
    with engine.begin() as connection:  # the old behaviour's local path: no ✓ (the UI's rule)
        connection.execute(
            update(validation_results).where(rows.epoch == 2).values(checkpoint_path="/data/job_42/best.pt")
        )

    answer = status_json(capsys, "--job-id", "42")
    assert answer["project_id"] is None and answer["promoted"] is None
    assert answer["not_promoted"] == {"code": "nothing_promoted", "reason": "job 42 has no promoted checkpoints yet"}
    assert [(row["epoch"], row["in_r2"]) for row in answer["epochs"]] == [(1, False), (2, False)]
    assert answer["history"] == []

    assert main(["status", "--job-id", "42"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "promoted: nothing. job 42 has no promoted checkpoints yet" in lines
    assert "     2    0.2000  · /data/job_42/best.pt" in lines
    assert "  no manifest of this job has been recorded" in lines


def test_a_job_with_nothing_promoted_says_what_became_of_its_manifest(
    cli_env, engine, trainer, promoter, layout, capsys
):
    add_epochs(engine, 42, {18: 0.6, 20: 0.5})
    trainer.put_manifest(attempt(1), b"{broken")
    promoter.promote_key(BUCKET, layout.manifest_key(attempt(1)), trigger="sqs:s3")

    answer = status_json(capsys, "--job-id", "42")  # the project is the one the rejected record names
    assert answer["project_id"] == 7 and answer["promoted"] is None
    assert answer["not_promoted"]["code"] == "nothing_promoted"
    assert "its newest manifest (attempt 1) was rejected" in answer["not_promoted"]["reason"]
    assert [(entry["outcome"], entry["attempt"]) for entry in answer["history"]] == [("rejected", 1)]
    assert all(not row["in_r2"] for row in answer["epochs"])


def test_an_unknown_job_or_another_projects_job_exits_non_zero(cli_env, promoted_job, capsys):
    assert main(["status", "--job-id", "99", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["not_promoted"]["code"] == "unknown_job"

    assert main(["status", "--job-id", "42", "--project-id", "8"]) == 1
    assert "promoted: nothing. job 42 is not a job of project 8" in capsys.readouterr().out


def test_status_reads_the_same_answer_as_fetch(promoted_job, layout):
    from ckpt.promotion.promoted import read_promoted

    status = read_status(promoted_job, layout, 42, None)
    promoted = read_promoted(promoted_job, layout, JOB)

    assert {f.name: (f.sha256, f.attempt, f.epoch) for f in status.promoted} == {
        name: (c.sha256, c.attempt, c.epoch) for name, c in promoted.checkpoints.items()
    }


def test_history_keeps_its_json_lines(cli_env, promoted_job, capsys):
    assert main(["history", "--job-id", "42"]) == 0
    assert [json.loads(line)["outcome"] for line in capsys.readouterr().out.splitlines()] == ["promoted", "promoted"]
