"""``ckpt backfill`` on the real adapters: moto's S3 in-process, SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ckpt.cli import main
from ckpt.contract.keys import JobRef
from ckpt.operations.backfill import plan_backfill, run_backfill, tally
from ckpt.trainer.staging import Checkpoint
from tests.support import BUCKET, add_epochs, attempt, paths, records, weights


def job(job_id: int) -> JobRef:
    return JobRef(job_id=job_id, project_id=7)


@pytest.fixture
def outage(engine, trainer, promoter, layout, s3):
    """Staging after an outage: some manifests have an outcome, some do not. Returns the keys that have none."""
    key = {n: layout.manifest_key(attempt(1, job(n))) for n in range(41, 47)}
    for n in (41, 42, 43, 44, 46):
        add_epochs(engine, n, {18: 0.6, 19: 0.5, 20: 0.55})

    # 41: promoted by its own notification
    trainer.finish(attempt(1, job(41)))
    assert promoter.promote_key(BUCKET, key[41], trigger="sqs:s3").status == "promoted"
    # 42: staged while the function was down, its message expired: no record
    trainer.finish(attempt(1, job(42)))
    # 43: its message reached the dead-letter queue; the last delivery recorded giving up (without a digest: the
    # manifest was never read), and the messages were purged since
    trainer.finish(attempt(1, job(43)))
    promoter.record_rejection(BUCKET, key[43], trigger="sqs:s3", reason="gave up after 5 deliveries: DB down")
    # 44: promoted, then the attempt was re-staged (new bytes at the same key), whose message was lost
    trainer.finish(attempt(1, job(44)))
    assert promoter.promote_key(BUCKET, key[44], trigger="sqs:s3").status == "promoted"
    trainer.finish(attempt(1, job(44)), files={"last": Checkpoint(weights("restaged"), epoch=20)})
    # 46: two attempts, neither recorded
    trainer.finish(attempt(1, job(46)))
    trainer.finish(attempt(2, job(46)))
    # not a manifest of the layout: ignored by contract, never promoted nor recorded
    s3.put_object(Bucket=BUCKET, Key="staging/projects/7/jobs/x/attempts/1/manifest.json", Body=b"{}")
    return {
        key[42],
        key[43],
        key[44],
        layout.manifest_key(attempt(1, job(46))),
        layout.manifest_key(attempt(2, job(46))),
    }


def test_backfill_promotes_exactly_the_manifests_without_an_outcome(outage, promoter, storage, engine, layout):
    before = len(records(engine))

    plan = plan_backfill(storage, engine, layout, since=None)

    assert {m.key for m in plan.pending} == outage
    assert plan.recorded == 1  # 41
    assert plan.selection.not_of_layout == ["staging/projects/7/jobs/x/attempts/1/manifest.json"]
    # job by job, the newest attempt first: attempt 1 of job 46 then steps aside without a copy
    assert [m.ref.attempt for m in plan.pending if m.ref.job.job_id == 46] == [2, 1]

    results = run_backfill(promoter, plan.pending, progress=False)

    outcomes = {r.manifest.key: (r.label, r.outcome.trigger if r.outcome else None) for r in results}
    assert tally(results) == {"promoted": 4, "superseded": 1}
    assert outcomes[layout.manifest_key(attempt(1, job(46)))] == ("superseded", "backfill")
    assert all(trigger == "backfill" for _, trigger in outcomes.values())
    assert len(records(engine)) == before + 5
    for n in (42, 43, 44, 46):
        assert paths(engine, n)[20] == f"r2://{BUCKET}/checkpoints/projects/7/jobs/{n}/last.pt"

    # a second run finds nothing, and records nothing
    again = plan_backfill(storage, engine, layout, since=None)
    assert again.pending == []
    assert again.recorded == 6
    assert tally(run_backfill(promoter, again.pending, progress=False)) == {}
    assert len(records(engine)) == before + 5


def test_a_rejected_manifest_has_an_outcome_and_is_not_retried(engine, trainer, promoter, storage, layout, s3):
    add_epochs(engine, 45, {18: 0.6, 20: 0.5})
    trainer.finish(attempt(1, job(45)))
    s3.put_object(Bucket=BUCKET, Key=layout.staged_key(attempt(1, job(45)), "best"), Body=weights("other"))
    rejected = promoter.promote_key(BUCKET, layout.manifest_key(attempt(1, job(45))), trigger="sqs:s3")
    assert rejected.status == "rejected"
    assert "SHA-256" in rejected.reason

    assert plan_backfill(storage, engine, layout, since=None).pending == []


def test_since_leaves_older_manifests_alone(outage, storage, engine, layout):
    future = datetime.now(UTC) + timedelta(minutes=5)

    plan = plan_backfill(storage, engine, layout, since=future)

    assert plan.pending == []
    assert plan.selection.before_since == 6  # every manifest of the layout; the stray key is ignored as before


def test_a_promotion_meanwhile_makes_the_backfill_a_duplicate(engine, trainer, promoter, storage, layout):
    """The notification may promote a manifest between the listing and the backfill's turn: one code path, so
    the backfill answers it as a duplicate."""
    add_epochs(engine, 42, {18: 0.6, 20: 0.5})
    trainer.finish(attempt(1, job(42)))
    plan = plan_backfill(storage, engine, layout, since=None)
    promoter.promote_key(BUCKET, plan.pending[0].key, trigger="sqs:s3")

    assert tally(run_backfill(promoter, plan.pending, progress=False)) == {"duplicate": 1}


@pytest.fixture
def cli_env(monkeypatch, database_url, engine, s3):
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("CHECKPOINT_BUCKET", BUCKET)


def test_the_command_lists_then_promotes_with_a_count(cli_env, outage, engine, capsys):
    before = len(records(engine))

    assert main(["backfill", "--dry-run"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(records(engine)) == before
    assert {line.split()[1] for line in listed[:-1]} == outage
    assert listed[-1] == (
        "6 staged manifests, 1 ignored (not of the key layout); 1 with a recorded outcome; 5 without "
        "(dry run: nothing promoted)"
    )

    assert main(["backfill", "--since", "2d", "--no-progress"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("promoted") for line in out) == 4
    assert out[-1].endswith("5 without: promoted 4, superseded 1")

    assert main(["backfill"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith("0 without: nothing to do")


def test_a_bad_since_is_a_usage_error(cli_env, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["backfill", "--since", "yesterday"])
    assert exit_.value.code == 2
    assert "neither a duration" in capsys.readouterr().err
