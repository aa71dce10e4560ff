"""The ``ckpt`` command for operators, against moto's S3 and a real database."""

from __future__ import annotations

import json

import pytest

from ckpt.adapters.db import migrate
from ckpt.cli import main
from tests.support import add_epochs, attempt, paths, weights


@pytest.fixture
def cli_env(monkeypatch, database_url, engine, s3):
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("CHECKPOINT_BUCKET", "vision-platform-prod")


def test_db_upgrade_creates_the_service_tables(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    url = f"sqlite:///{tmp_path / 'fresh.db'}"

    assert main(["--database-url", url, "db", "upgrade"]) == 0
    assert main(["--database-url", url, "db", "current"]) == 0

    newest = migrate.head_revision()
    assert capsys.readouterr().out.splitlines() == [f"schema revision {newest} (newest {newest})"] * 2


def test_no_database_is_a_configuration_error_with_the_fix(capsys, monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("DATABASE_SECRET_ARN", raising=False)

    assert main(["db", "upgrade"]) == 2
    assert "set DATABASE_URL" in capsys.readouterr().err


def test_reprocess_promotes_and_prints_the_outcome(cli_env, engine, trainer, capsys):
    add_epochs(engine, 42, {18: 0.5, 20: 0.4})
    trainer.finish(attempt(1))

    assert main(["reprocess", "--project-id", "7", "--job-id", "42"]) == 0

    answer = json.loads(capsys.readouterr().out)
    assert (answer["outcome"], answer["attempt"], answer["trigger"]) == ("promoted", 1, "reprocess")
    assert paths(engine, 42)[18] == "r2://vision-platform-prod/checkpoints/projects/7/jobs/42/best.pt"

    assert main(["history", "--job-id", "42"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["outcome"] == "promoted"


def test_reprocess_of_nothing_staged_fails_with_the_reason(cli_env, capsys):
    assert main(["reprocess", "--project-id", "7", "--job-id", "42"]) == 1
    assert "no staged manifest" in capsys.readouterr().err


def test_a_rejected_reprocess_exits_non_zero(cli_env, trainer, capsys):
    trainer.put_manifest(attempt(1), b"{broken")

    assert main(["reprocess", "--project-id", "7", "--job-id", "42", "--dry-run"]) == 1
    assert json.loads(capsys.readouterr().out)["outcome"] == "rejected"


def test_stage_uploads_a_finished_runs_weights_then_its_manifest(cli_env, s3, tmp_path, capsys):
    (tmp_path / "best.pt").write_bytes(b"best")
    (tmp_path / "last.pt").write_bytes(b"last")

    where = ["--project-id", "7", "--job-id", "42", "--weights-dir", str(tmp_path)]
    code = main(
        [
            "stage",
            *where,
            "--status",
            "interrupted",
            "--best-epoch",
            "18",
            "--last-epoch",
            "20",
            "--metric-name",
            "mAP50-95",
        ]
    )

    assert code == 0
    assert "staging/projects/7/jobs/42/attempts/1/manifest.json" in capsys.readouterr().out
    key = "staging/projects/7/jobs/42/attempts/1/manifest.json"
    manifest = json.loads(s3.get_object(Bucket="vision-platform-prod", Key=key)["Body"].read())
    assert (manifest["status"], manifest["checkpoints"]["best"]["epoch"], manifest["metric"]["name"]) == (
        "interrupted",
        18,
        "mAP50-95",
    )
    assert (
        main(["stage", "--job-id", "42", "--project-id", "7", "--weights-dir", str(tmp_path), "--status", "completed"])
        == 0
    )
    assert "attempts/2/manifest.json" in capsys.readouterr().out  # the next run is the next attempt


def test_stage_exits_non_zero_when_the_store_stays_down(cli_env, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AWS_S3_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    (tmp_path / "last.pt").write_bytes(b"last")

    code = main(["stage", "--job-id", "42", "--weights-dir", str(tmp_path), "--status", "failed", "--attempt", "1"])

    assert code == 1
    assert "ckpt:" in capsys.readouterr().err


def test_fetch_downloads_the_promoted_last_checkpoint(cli_env, engine, trainer, tmp_path, capsys):
    add_epochs(engine, 42, {18: 0.5, 20: 0.4})
    trainer.finish(attempt(1))
    assert main(["reprocess", "--project-id", "7", "--job-id", "42"]) == 0
    capsys.readouterr()

    assert main(["fetch", "--project-id", "7", "--job-id", "42", "-o", str(tmp_path)]) == 0

    assert (tmp_path / "last.pt").read_bytes() == weights("last-1")
    assert "verified" in capsys.readouterr().out
    assert main(["fetch", "--project-id", "7", "--job-id", "43", "-o", str(tmp_path)]) == 1


@pytest.mark.parametrize(
    "argument",
    [
        ["--job-id", "0"],
        ["--job-id", "2147483648"],
        ["--job-id", "x"],
        ["--best-epoch", "0"],
        ["--job-id", "+42"],
        ["--job-id", "042"],
        ["--job-id", "4_2"],
        ["--job-id", " 42 "],
        ["--job-id", "\u0664\u0662"],
    ],
    ids=str,
)
def test_ids_and_epochs_outside_the_platforms_range_are_refused_before_anything_runs(argument, tmp_path, capsys):
    where = {"--job-id": "42", "--project-id": "7", "--weights-dir": str(tmp_path), "--status": "completed"}
    where.update(dict([argument]))

    with pytest.raises(SystemExit) as exited:
        main(["stage", *[part for pair in where.items() for part in pair]])

    assert exited.value.code == 2
    assert "from 1 to 2147483647 in plain digits" in capsys.readouterr().err


def test_a_trainer_cannot_stage_a_manifest_as_abandoned(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["stage", "--job-id", "42", "--weights-dir", str(tmp_path), "--status", "abandoned"])

    assert exited.value.code == 2
    assert "invalid choice: 'abandoned'" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["folder", "broken-link"])
def test_stage_refuses_a_checkpoint_it_cannot_read_instead_of_staging_nothing(cli_env, tmp_path, capsys, kind):
    (tmp_path / "last.pt").write_bytes(b"last")
    if kind == "folder":
        (tmp_path / "best.pt").mkdir()
    else:
        (tmp_path / "best.pt").symlink_to(tmp_path / "gone.pt")

    code = main(["stage", "--job-id", "42", "--weights-dir", str(tmp_path), "--status", "completed"])

    assert code == 1
    assert "best.pt is not a readable file" in capsys.readouterr().err


def test_db_upgrade_against_an_unreachable_database_says_so_in_one_line(capsys):
    code = main(["--database-url", "postgresql+pg8000://postgres@127.0.0.1:1/none", "db", "upgrade"])

    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("ckpt: ") and "Traceback" not in err and len(err.splitlines()) == 1
