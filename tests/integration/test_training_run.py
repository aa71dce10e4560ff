"""TrainingRun in-process against moto's S3: every ending stages what exists, then the manifest, and lets
the ending go on. (Signals and real trainers are in tests/e2e, in subprocesses.)"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

import pytest

from ckpt.adapters.storage import make_client
from ckpt.config import Settings
from ckpt.contract.keys import JobRef
from ckpt.contract.manifest import Metric, parse_manifest
from ckpt.trainer.training import TrainingRun
from tests.support import BUCKET, attempt, weights

SETTINGS = Settings(bucket=BUCKET)


def staged(s3, prefix: str = "staging/projects/7/jobs/42/") -> list[str]:
    listing = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return sorted(obj["Key"].removeprefix(prefix) for obj in listing)


def manifest(s3, n: int = 1):
    body = s3.get_object(Bucket=BUCKET, Key=f"staging/projects/7/jobs/42/attempts/{n}/manifest.json")["Body"]
    return parse_manifest(body.read())


def run_for(s3, weights_dir: Path, **options) -> TrainingRun:
    return TrainingRun(project_id=7, job_id=42, weights_dir=weights_dir, settings=SETTINGS, client=s3, **options)


def train(run: TrainingRun, weights_dir: Path, metrics: list[float], *, save_best: bool = True) -> None:
    for epoch, value in enumerate(metrics, start=1):
        is_best = run.report(epoch, value)
        (weights_dir / "last.pt").write_bytes(weights(f"epoch-{epoch}"))
        if is_best and save_best:
            (weights_dir / "best.pt").write_bytes(weights(f"epoch-{epoch}"))


def test_a_completed_run_stages_both_files_then_the_manifest(s3, tmp_path):
    with run_for(s3, tmp_path, metric=Metric(name="mAP50-95", mode="max")) as run:
        train(run, tmp_path, [0.1, 0.3, 0.2])

    assert run.result is not None and run.result.ok
    assert staged(s3) == ["attempts/1/best.pt", "attempts/1/last.pt", "attempts/1/manifest.json"]
    written = manifest(s3)
    assert (written.status, written.checkpoints.best.epoch, written.checkpoints.last.epoch) == ("completed", 2, 3)
    assert written.metric == Metric(name="mAP50-95", mode="max")
    assert written.error is None


def test_ctrl_c_stages_and_the_keyboard_interrupt_goes_on(s3, tmp_path):
    with pytest.raises(KeyboardInterrupt), run_for(s3, tmp_path) as run:
        train(run, tmp_path, [0.5, 0.4])
        raise KeyboardInterrupt

    written = manifest(s3)
    assert (written.status, written.error, written.checkpoints.best.epoch) == ("interrupted", "KeyboardInterrupt", 1)


def test_an_exception_stages_with_its_text_and_is_re_raised(s3, tmp_path):
    with pytest.raises(RuntimeError, match="CUDA out of memory"), run_for(s3, tmp_path) as run:
        train(run, tmp_path, [0.5])
        raise RuntimeError("CUDA out of memory")

    assert (manifest(s3).status, manifest(s3).error) == ("failed", "RuntimeError: CUDA out of memory")


@pytest.mark.parametrize(
    "message",
    [
        "Error(s) in loading state_dict: Missing key(s): " + ", ".join(f'"model.{n}.weight"' for n in range(3000)),
        "cannot open " + os.fsdecode(b"/data/img_\xe9.jpg"),  # a lone surrogate: not encodable as UTF-8
    ],
    ids=["70k-characters", "lone-surrogate"],
)
def test_whatever_an_exception_says_the_manifest_is_one_the_function_accepts(
    s3, tmp_path, message, engine, promoter, layout
):
    with pytest.raises(RuntimeError), run_for(s3, tmp_path, metric=Metric(name="mAP\udcff" * 300)) as run:
        train(run, tmp_path, [0.5])
        raise RuntimeError(message)

    assert run.result is not None and run.result.ok
    written = manifest(s3)  # parsed by the function's own parser
    assert written.error is not None and written.error.startswith("RuntimeError: ")
    assert len(written.error) <= 8192
    outcome = promoter.promote_key(layout.bucket, layout.manifest_key(attempt(1)), trigger="test")
    assert outcome.status == "promoted"


def test_an_early_stop_with_last_only_lists_last_only(s3, tmp_path):
    with pytest.raises(KeyboardInterrupt), run_for(s3, tmp_path) as run:
        train(run, tmp_path, [float("nan"), float("nan")], save_best=False)
        raise KeyboardInterrupt

    assert staged(s3) == ["attempts/1/last.pt", "attempts/1/manifest.json"]
    assert manifest(s3).checkpoints.best is None


def test_a_crash_before_any_checkpoint_still_says_how_the_job_ended(s3, tmp_path):
    with pytest.raises(ValueError), run_for(s3, tmp_path / "never-created"):
        raise ValueError("bad dataset path")

    assert staged(s3) == ["attempts/1/manifest.json"]
    assert manifest(s3).checkpoints.present() == {}
    assert manifest(s3).error == "ValueError: bad dataset path"


def test_a_restarted_job_stages_as_the_next_attempt(s3, tmp_path, monkeypatch):
    for _ in range(2):
        with run_for(s3, tmp_path) as run:
            train(run, tmp_path, [0.1])
    monkeypatch.setenv("CKPT_ATTEMPT", "7")
    with run_for(s3, tmp_path) as by_env:
        pass
    with run_for(s3, tmp_path, attempt=9) as explicit:
        pass

    assert [r.ref.attempt for r in (run, by_env, explicit)] == [2, 7, 9]
    assert manifest(s3, 2).attempt == 2


def test_a_store_that_stays_down_is_reported_not_raised(aws_credentials, tmp_path, caplog):
    down = make_client("http://127.0.0.1:1", region="us-east-1", max_attempts=1)
    (tmp_path / "last.pt").write_bytes(b"weights")

    with caplog.at_level(logging.ERROR), pytest.raises(KeyboardInterrupt):  # noqa: SIM117 - the order is the point
        with TrainingRun(
            job_id=42, project_id=7, weights_dir=tmp_path, settings=SETTINGS, client=down, attempt=3
        ) as run:
            run.report(1, 0.5)
            raise KeyboardInterrupt

    assert run.result is not None and not run.result.ok
    assert "NOT staged" in caplog.text
    assert "ckpt stage --project-id 7 --job-id 42 --attempt 3" in caplog.text


def test_background_backup_stages_last_without_a_manifest_and_the_end_reuses_it(s3, tmp_path, monkeypatch):
    sent: list[str] = []
    s3.meta.events.register("before-send.s3.PutObject", lambda request, **_: sent.append(request.url))
    with run_for(s3, tmp_path, backup_every_minutes=0.002) as run:
        train(run, tmp_path, [0.1, 0.2])
        deadline = time.monotonic() + 10
        while run._backup.backups == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert staged(s3) == ["attempts/1/last.pt"]  # no manifest during training
        assert s3.get_object(Bucket=BUCKET, Key="staging/projects/7/jobs/42/attempts/1/last.pt")[
            "Body"
        ].read() == weights("epoch-2")

    last_puts = [url for url in sent if url.endswith("/last.pt")]
    assert len(last_puts) == 1  # unchanged since the backup: not uploaded again at the end
    assert manifest(s3).checkpoints.last.sha256 == hashlib.sha256(weights("epoch-2")).hexdigest()


def test_re_staging_the_same_attempt_is_safe_and_the_newer_staging_wins(engine, promoter, s3, layout, tmp_path):
    from tests.support import add_epochs, canonical_bytes

    add_epochs(engine, 42, {1: 0.5, 2: 0.6})
    outcomes = []
    for label in ("first", "second"):
        (tmp_path / "best.pt").write_bytes(weights(label))
        with run_for(s3, tmp_path, attempt=1) as run:
            run.report(2, 0.6)
        outcomes.append(promoter.promote_key(BUCKET, layout.manifest_key(attempt(1)), trigger="test").status)

    assert outcomes == ["promoted", "promoted"]
    assert canonical_bytes(s3, layout, JobRef(job_id=42, project_id=7), "best") == weights("second")


def test_a_store_down_when_training_starts_does_not_stop_training(aws_credentials, tmp_path):
    down = make_client("http://127.0.0.1:1", region="us-east-1", max_attempts=1)
    run = TrainingRun(job_id=42, project_id=7, weights_dir=tmp_path, settings=SETTINGS, client=down)

    with pytest.raises(ValueError, match="the training's own error"), run:  # no attempt given: listing fails
        run.report(1, 0.5)
        raise ValueError("the training's own error")

    assert run.result is not None and not run.result.ok
    assert "StorageUnavailable" in run.result.error


def test_a_store_back_by_the_end_of_training_gets_the_checkpoints(s3, tmp_path, monkeypatch):
    import ckpt.trainer.training
    from ckpt.errors import StorageUnavailable

    real = ckpt.trainer.training.resolve_attempt
    calls = iter([StorageUnavailable("down at start"), None])

    def flaky(*args, **kwargs):
        failure = next(calls)
        if failure:
            raise failure
        return real(*args, **kwargs)

    monkeypatch.setattr(ckpt.trainer.training, "resolve_attempt", flaky)
    with run_for(s3, tmp_path) as run:
        train(run, tmp_path, [0.1])

    assert run.result.ok and staged(s3) == ["attempts/1/best.pt", "attempts/1/last.pt", "attempts/1/manifest.json"]


def test_a_misconfigured_bucket_is_reported_and_the_training_ending_is_kept(s3, tmp_path):
    run = TrainingRun(
        job_id=42, project_id=7, weights_dir=tmp_path, settings=Settings(bucket="no-such-bucket"), client=s3, attempt=1
    )

    with pytest.raises(KeyboardInterrupt), run:
        train(run, tmp_path, [0.1])
        raise KeyboardInterrupt

    assert run.result is not None and not run.result.ok


def test_epoch_end_holds_ctrl_c_until_the_epoch_and_its_file_are_both_done(s3, tmp_path):
    import signal

    with pytest.raises(KeyboardInterrupt), run_for(s3, tmp_path) as run:
        with run.epoch_end(1, 0.5) as is_best:
            signal.raise_signal(signal.SIGINT)  # Ctrl+C in the middle of saving
            (tmp_path / "last.pt").write_bytes(weights("epoch-1"))
            if is_best:
                (tmp_path / "best.pt").write_bytes(weights("epoch-1"))
        pytest.fail("the held Ctrl+C was not delivered after the block")

    written = manifest(s3)
    assert (written.checkpoints.best.epoch, written.checkpoints.last.epoch) == (1, 1)
    assert written.status == "interrupted"


def test_the_logged_stage_command_repeats_everything_the_manifest_needed(aws_credentials, tmp_path, caplog):
    down = make_client("http://127.0.0.1:1", region="us-east-1", max_attempts=1)
    run = TrainingRun(
        job_id=42,
        project_id=7,
        weights_dir=tmp_path,
        settings=SETTINGS,
        client=down,
        attempt=2,
        metric=Metric(name="mAP50-95", mode="max"),
    )
    (tmp_path / "last.pt").write_bytes(b"w")

    with caplog.at_level(logging.ERROR), pytest.raises(RuntimeError), run:
        run.report(4, 0.3)
        raise RuntimeError("disk full")

    assert (
        f"ckpt stage --project-id 7 --job-id 42 --attempt 2 --weights-dir {tmp_path} --status failed "
        "--best-epoch 4 --last-epoch 4 --metric-name mAP50-95 --metric-mode max --error 'RuntimeError: disk full'"
    ) in caplog.text


def test_after_the_largest_attempt_a_run_says_to_give_the_attempt_and_still_ends_as_it_would(s3, tmp_path, caplog):
    s3.put_object(Bucket=BUCKET, Key="staging/projects/7/jobs/42/attempts/2147483647/manifest.json", Body=b"{}")

    with run_for(s3, tmp_path) as run:
        train(run, tmp_path, [0.5])

    assert run.result is not None and not run.result.ok
    assert "give the attempt explicitly" in (run.result.error or "")
