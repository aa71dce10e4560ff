"""The Lambda handler with the events/ fixtures, moto's S3 and a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

from ckpt.errors import StorageUnavailable
from tests.support import LambdaContext, add_epochs, attempt, configured_handler, paths, records

EVENTS = Path(__file__).parents[2] / "events"
URI_BEST = "r2://vision-platform-prod/checkpoints/projects/7/jobs/42/best.pt"
URI_LAST = "r2://vision-platform-prod/checkpoints/projects/7/jobs/42/last.pt"


def event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


@pytest.fixture
def handler(monkeypatch, database_url, engine, s3):
    """The handler module, configured through the environment as template.yaml configures it."""
    return configured_handler(monkeypatch, database_url)


@pytest.fixture
def staged(engine, trainer):
    add_epochs(engine, 42, {epoch: epoch / 100 for epoch in range(1, 21)} | {19: 0.1, 20: 0.12})
    trainer.finish(attempt(1))


def invoke(handler: Any, payload: dict[str, Any]) -> dict[str, Any]:
    return handler.lambda_handler(payload, LambdaContext())


@pytest.mark.parametrize(
    "fixture", ["s3-object-created.json", "r2-event-notification.json", "reprocess.json"], ids=lambda f: f[:-5]
)
def test_direct_triggers_promote_the_staged_attempt(handler, staged, engine, fixture):
    answer = invoke(handler, event(fixture))

    assert [o["outcome"] for o in answer["outcomes"]] == ["promoted"]
    assert {e: p for e, p in paths(engine, 42).items() if p} == {18: URI_BEST, 20: URI_LAST}


@pytest.mark.parametrize("fixture", ["sqs-s3-notification.json", "sqs-r2-notification.json"], ids=lambda f: f[:-5])
def test_sqs_batches_promote_and_report_no_failures(handler, staged, engine, fixture):
    answer = invoke(handler, event(fixture))

    assert answer == {"batchItemFailures": []}
    assert {e: p for e, p in paths(engine, 42).items() if p} == {18: URI_BEST, 20: URI_LAST}
    assert [r["trigger"] for r in records(engine, 42)] == [f"sqs:{fixture.split('-')[1]}"]


def test_the_s3_test_event_is_skipped(handler, engine):
    test_event = event("sqs-s3-notification.json")
    test_event["Records"] = test_event["Records"][1:]

    assert invoke(handler, test_event) == {"batchItemFailures": []}
    assert records(engine) == []


def test_a_dry_run_reprocess_plans_without_writing(handler, staged, engine):
    answer = invoke(handler, event("reprocess-dry-run.json"))

    assert [o["outcome"] for o in answer["outcomes"]] == ["planned"]
    assert not any(paths(engine, 42).values())


def _sqs_record(body: str, message_id: str) -> dict[str, Any]:
    record = copy.deepcopy(event("sqs-s3-notification.json")["Records"][0])
    record.update(body=body, messageId=message_id)
    return record


def _s3_body(key: str) -> str:
    notification = json.loads(event("sqs-s3-notification.json")["Records"][0]["body"])
    notification["Records"][0]["s3"]["object"]["key"] = key
    return json.dumps(notification)


def test_permanent_errors_do_not_fail_the_rest_of_the_batch(handler, staged, engine, trainer):
    trainer.put_manifest(attempt(1, attempt(1).job.__class__(job_id=50, project_id=7)), b"{not json")
    batch = {
        "Records": [
            _sqs_record("this is not JSON", "bad-body"),
            _sqs_record('{"hello": "world"}', "unknown-shape"),
            _sqs_record(_s3_body("staging/projects/7/jobs/50/attempts/1/manifest.json"), "bad-manifest"),
            _sqs_record(_s3_body("staging/projects/7/jobs/42/attempts/1/best.pt"), "not-a-manifest"),
            _sqs_record(_s3_body("staging/projects/7/jobs/42/attempts/1/manifest.json"), "good"),
        ]
    }

    answer = invoke(handler, batch)

    assert answer == {"batchItemFailures": []}
    assert paths(engine, 42)[18] == URI_BEST
    assert [(r["job_id"], r["outcome"]) for r in records(engine)] == [(50, "rejected"), (42, "promoted")]


def _s3_event(bucket: str, key: str) -> dict[str, Any]:
    notification = event("s3-object-created.json")
    notification["Records"][0]["s3"]["bucket"]["name"] = bucket
    notification["Records"][0]["s3"]["object"]["key"] = key
    return notification


UNSTORABLE = {
    "nul-in-key": ("vision-platform-prod", "checkpoints/evil\x00.json", "manifest_key", "checkpoints/evil\\x00.json"),
    "surrogate-in-key": ("vision-platform-prod", "checkpoints/\ud800.json", "manifest_key", "checkpoints/\\ud800.json"),
    "key-of-2000-chars": ("vision-platform-prod", "k" * 2000, "manifest_key", "k" * 990),
    "bucket-of-300-chars": ("b" * 300, "staging/projects/7/jobs/42/attempts/1/manifest.json", "bucket", "b" * 220),
}


@pytest.mark.parametrize(("bucket", "key", "column", "recorded"), UNSTORABLE.values(), ids=UNSTORABLE.keys())
def test_a_rejection_the_database_could_not_store_as_is_is_recorded_bounded_and_escaped(
    handler, engine, bucket, key, column, recorded
):
    direct = invoke(handler, _s3_event(bucket, key))
    batch = invoke(handler, {"Records": [_sqs_record(json.dumps(_s3_event(bucket, key)), "garbage")]})

    assert [o["outcome"] for o in direct["outcomes"]] == ["rejected"]
    assert batch == {"batchItemFailures": []}
    rows = records(engine)
    assert [r["outcome"] for r in rows] == ["rejected", "rejected"]
    limit = {"manifest_key": 1024, "bucket": 255}[column]
    assert all(r[column].startswith(recorded) and len(r[column]) <= limit for r in rows)


def test_a_rejection_the_database_refuses_to_record_still_answers_the_event(handler, engine, monkeypatch):
    from ckpt.errors import Rejected

    promoter = handler.get_promoter()

    def refuse(outcome: Any) -> int:
        raise Rejected("the database refused the promotion: value too long")

    monkeypatch.setattr(promoter.store, "record", refuse)
    answer = invoke(handler, {"Records": [_sqs_record(_s3_body("checkpoints/elsewhere.json"), "m-1")]})

    assert answer == {"batchItemFailures": []}


def test_transient_errors_fail_only_their_record_and_the_retry_succeeds(handler, staged, engine, trainer, monkeypatch):
    from ckpt.contract.keys import JobRef

    other = JobRef(job_id=43, project_id=7)
    add_epochs(engine, 43, {18: 0.5, 20: 0.4})
    trainer.finish(attempt(1, other))
    promoter = handler.get_promoter()
    real_copy = promoter.storage.copy

    def copy_failing_for_job_43(source: Any, *args: Any) -> Any:
        if "/jobs/43/" in source.key:
            raise StorageUnavailable("injected: 500 InternalError")
        return real_copy(source, *args)

    monkeypatch.setattr(promoter.storage, "copy", copy_failing_for_job_43)
    batch = {
        "Records": [
            _sqs_record(_s3_body("staging/projects/7/jobs/43/attempts/1/manifest.json"), "job-43"),
            _sqs_record(_s3_body("staging/projects/7/jobs/42/attempts/1/manifest.json"), "job-42"),
        ]
    }

    assert invoke(handler, batch) == {"batchItemFailures": [{"itemIdentifier": "job-43"}]}
    assert paths(engine, 43) == {18: None, 20: None}

    monkeypatch.setattr(promoter.storage, "copy", real_copy)
    assert invoke(handler, {"Records": batch["Records"][:1]}) == {"batchItemFailures": []}
    assert paths(engine, 43)[18] == "r2://vision-platform-prod/checkpoints/projects/7/jobs/43/best.pt"


def test_an_unreachable_database_fails_the_records_that_need_it(handler, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql+pg8000://postgres@127.0.0.1:1/none")
    batch = event("sqs-s3-notification.json")  # a manifest notification, then s3:TestEvent

    answer = invoke(handler, batch)

    assert answer == {"batchItemFailures": [{"itemIdentifier": batch["Records"][0]["messageId"]}]}
    # With every record failing, Powertools fails the whole invocation so Lambda redelivers the batch.
    with pytest.raises(BatchProcessingError):
        invoke(handler, {"Records": batch["Records"][:1]})


@pytest.mark.parametrize(
    "payload",
    [{"hello": "world"}, {"action": "reprocess", "job_id": "42"}, {"Records": [{"eventSource": "aws:s3"}]}],
    ids=["unknown", "bad-reprocess", "bad-s3"],
)
def test_unrecognised_direct_events_are_answered_not_raised(handler, payload, engine):
    answer = invoke(handler, payload)

    [outcome] = answer["outcomes"]
    assert outcome["outcome"] == "rejected"
    assert outcome["reason"]


def test_reprocess_of_a_job_with_nothing_staged_is_answered_with_the_reason(handler, engine):
    answer = invoke(handler, {"action": "reprocess", "project_id": 7, "job_id": 999})

    assert answer["outcomes"][0]["outcome"] == "rejected"
    assert "no staged manifest" in answer["outcomes"][0]["reason"]


def test_missing_service_tables_fail_with_the_command_that_fixes_them(handler, engine, monkeypatch):
    from ckpt.errors import ConfigurationError

    with engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE ckpt_promotions")

    with pytest.raises(ConfigurationError, match="ckpt db upgrade"):
        invoke(handler, event("s3-object-created.json"))


def test_the_last_delivery_of_a_failing_message_leaves_a_recorded_outcome(handler, staged, engine, monkeypatch):
    promoter = handler.get_promoter()

    def store_down(*args: Any) -> Any:
        raise StorageUnavailable("injected: 503 Slow Down")

    monkeypatch.setattr(promoter.storage, "copy", store_down)
    record = _sqs_record(_s3_body("staging/projects/7/jobs/42/attempts/1/manifest.json"), "m-1")

    for receive_count in ("1", "4"):
        record["attributes"]["ApproximateReceiveCount"] = receive_count
        with pytest.raises(BatchProcessingError):
            invoke(handler, {"Records": [record]})
    assert records(engine, 42) == []  # still being retried: nothing final to say

    record["attributes"]["ApproximateReceiveCount"] = "5"
    with pytest.raises(BatchProcessingError):
        invoke(handler, {"Records": [record]})

    [final] = records(engine, 42)
    assert final["outcome"] == "rejected"
    assert "gave up after 5 deliveries" in final["reason"] and "503 Slow Down" in final["reason"]


def test_a_misconfigured_database_url_fails_the_batch_once_says_why_and_hides_the_password(
    handler, engine, database_url, monkeypatch, caplog
):
    import logging

    from ckpt.errors import ConfigurationError

    monkeypatch.setenv("DATABASE_URL", "postgresql+pg8000://ckpt:s3cr@t-word@db.internal:5432/platform")
    monkeypatch.setattr(handler, "_configuration_errors_reported", set())
    batch = event("sqs-s3-notification.json")

    with caplog.at_level(logging.ERROR):
        for _ in range(2):
            with pytest.raises(ConfigurationError, match="more than one '@'") as caught:
                invoke(handler, batch)
            assert "s3cr" not in str(caught.value)
    said = [r.getMessage() for r in caplog.records if "misconfigured" in r.getMessage()]
    assert len(said) == 1 and "s3cr" not in said[0] and "percent-encode" in said[0]

    monkeypatch.setenv("DATABASE_URL", database_url)  # fixed: the next invocation builds again and works
    assert invoke(handler, batch) == {"batchItemFailures": []}


@pytest.mark.parametrize("body", [None, 5, True, {"Records": []}, ["x"], "MISSING"], ids=str)
def test_an_sqs_record_whose_body_is_not_text_is_answered_not_failed(handler, engine, body):
    record = _sqs_record("{}", "odd-body")
    if body == "MISSING":
        del record["body"]
    else:
        record["body"] = body
    good = _sqs_record(_s3_body("checkpoints/elsewhere.json"), "good")

    answer = invoke(handler, {"Records": [record, good]})

    assert answer == {"batchItemFailures": []}
    assert [r["outcome"] for r in records(engine)] == ["rejected"]  # the good record, outside staging


def test_an_sqs_record_without_a_message_id_is_answered_not_failed(handler, engine):
    record = _sqs_record("not json", "x")
    del record["messageId"]

    assert invoke(handler, {"Records": [record, _sqs_record("{}", "y")]}) == {"batchItemFailures": []}


@pytest.mark.parametrize("name", [5, None, ["b"], {"b": 1}, 1.5, True])
def test_a_bucket_name_that_is_not_text_is_answered_and_its_sibling_promoted(handler, staged, engine, name):
    notification = event("s3-object-created.json")
    odd = copy.deepcopy(notification["Records"][0])
    odd["s3"]["bucket"]["name"] = name
    notification["Records"].insert(0, odd)

    direct = invoke(handler, notification)
    batch = invoke(handler, {"Records": [_sqs_record(json.dumps(notification), "m")]})

    assert [o["outcome"] for o in direct["outcomes"]] == ["rejected", "promoted"]
    assert "must be strings" in direct["outcomes"][0]["reason"]
    assert batch == {"batchItemFailures": []}
    assert paths(engine, 42)[18] == URI_BEST


@pytest.mark.parametrize("count", ["5.0", "5"])
def test_the_last_delivery_is_known_however_the_count_is_written(handler, staged, engine, monkeypatch, count):
    monkeypatch.setattr(handler.get_promoter().storage, "copy", _store_down)
    record = _sqs_record(_s3_body("staging/projects/7/jobs/42/attempts/1/manifest.json"), "m-1")
    record["attributes"]["ApproximateReceiveCount"] = count

    with pytest.raises(BatchProcessingError):
        invoke(handler, {"Records": [record]})

    assert [r["outcome"] for r in records(engine, 42)] == ["rejected"]


def _store_down(*args: Any) -> Any:
    raise StorageUnavailable("injected: 503 Slow Down")


def test_a_stray_folder_beyond_the_largest_attempt_does_not_break_a_reprocess(handler, staged, engine, s3):
    s3.put_object(Bucket="vision-platform-prod", Key="staging/projects/7/jobs/42/attempts/9999999999/x", Body=b"")

    answer = invoke(handler, {"action": "reprocess", "project_id": 7, "job_id": 42})

    assert [(o["outcome"], o["attempt"]) for o in answer["outcomes"]] == [("promoted", 1)]
