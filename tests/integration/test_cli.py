"""The ``ckpt`` command for operators, against moto's S3 and a real database."""

from __future__ import annotations

import json

import pytest

from ckpt.cli import main
from tests.support import add_epochs, attempt, paths


@pytest.fixture
def cli_env(monkeypatch, database_url, engine, s3):
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("CHECKPOINT_BUCKET", "vision-platform-prod")


def test_db_upgrade_creates_the_service_tables(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    url = f"sqlite:///{tmp_path / 'fresh.db'}"

    assert main(["--database-url", url, "db", "upgrade"]) == 0
    assert main(["--database-url", url, "db", "current"]) == 0

    assert capsys.readouterr().out.splitlines() == ["schema revision 0001 (newest 0001)"] * 2


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
