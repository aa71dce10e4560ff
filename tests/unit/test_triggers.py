"""What an invocation asks for: every fixture in events/, key decoding, and the shapes that are refused."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from aws_lambda_powertools.utilities.parser.models import S3Model, SqsModel

from ckpt.contract.keys import AttemptRef, JobRef, Layout
from promote_checkpoints import triggers
from promote_checkpoints.triggers import ObjectCreated, Reprocess, UnrecognisedEvent

EVENTS = Path(__file__).resolve().parents[2] / "events"
BUCKET = "vision-platform-prod"
KEY = "staging/projects/7/jobs/42/attempts/1/manifest.json"
S3_MANIFEST = ObjectCreated(bucket=BUCKET, key=KEY, source="s3")
R2_MANIFEST = ObjectCreated(bucket=BUCKET, key=KEY, source="r2")


def load(name: str) -> Any:
    return json.loads((EVENTS / name).read_text())


# --- the fixtures -------------------------------------------------------------------------------------------

KINDS = {
    "s3-object-created.json": "notification",
    "r2-event-notification.json": "notification",
    "sqs-s3-notification.json": "sqs",
    "sqs-r2-notification.json": "sqs",
    "reprocess.json": "reprocess",
    "reprocess-dry-run.json": "reprocess",
}


def test_every_event_fixture_is_covered_here() -> None:
    fixtures = {path.name for path in EVENTS.glob("*.json")} - {
        "env.json",
        "r2-queue-poll.json",  # the poller's event: tests/e2e/test_r2_queue_poller.py
        "sweeper-schedule.json",  # SweeperFunction's schedule: tests/integration/test_sweeper.py
    }
    # CheckpointApiFunction's HTTP API events: tests/e2e/test_checkpoint_api.py
    fixtures -= {path.name for path in EVENTS.glob("api-*.json")}
    assert fixtures == set(KINDS)


@pytest.mark.parametrize(("name", "kind"), KINDS.items())
def test_kind_of_classifies_each_fixture(name: str, kind: str) -> None:
    assert triggers.kind_of(load(name)) == kind


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("s3-object-created.json", [S3_MANIFEST]),
        ("r2-event-notification.json", [R2_MANIFEST]),
    ],
)
def test_objects_in_notification_fixture(name: str, expected: list[ObjectCreated]) -> None:
    assert triggers.objects_in(load(name)) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # one list per SQS record: the manifest, then the s3:TestEvent (skipped)
        ("sqs-s3-notification.json", [[S3_MANIFEST], []]),
        ("sqs-r2-notification.json", [[R2_MANIFEST]]),
    ],
)
def test_objects_in_body_of_each_sqs_fixture_record(name: str, expected: list[list[ObjectCreated]]) -> None:
    assert [triggers.objects_in_body(record["body"]) for record in load(name)["Records"]] == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("reprocess.json", Reprocess(action="reprocess", project_id=7, job_id=42)),
        ("reprocess-dry-run.json", Reprocess(action="reprocess", project_id=7, job_id=42, attempt=1, dry_run=True)),
    ],
)
def test_parse_reprocess_fixture(name: str, expected: Reprocess) -> None:
    assert triggers.parse_reprocess(load(name)) == expected


def test_reprocess_defaults_to_newest_attempt_without_dry_run() -> None:
    request = triggers.parse_reprocess(load("reprocess.json"))
    assert (request.attempt, request.dry_run) == (None, False)


def test_reprocess_without_project_is_a_test_job() -> None:
    assert triggers.parse_reprocess({"action": "reprocess", "job_id": 42}).project_id is None


def test_s3_fixture_is_a_valid_powertools_s3_event() -> None:
    event = S3Model.model_validate(load("s3-object-created.json"))
    record = event.Records[0]
    assert (record.eventVersion, record.eventSource, record.eventName) == ("2.1", "aws:s3", "ObjectCreated:Put")
    assert (record.s3.bucket.name, record.s3.bucket.arn) == (BUCKET, f"arn:aws:s3:::{BUCKET}")


@pytest.mark.parametrize("name", ["sqs-s3-notification.json", "sqs-r2-notification.json"])
def test_sqs_fixtures_are_valid_powertools_sqs_batches_with_matching_md5(name: str) -> None:
    batch = SqsModel.model_validate(load(name))
    for record in batch.Records:
        assert record.eventSource == "aws:sqs"
        assert record.md5OfBody == hashlib.md5(record.body.encode()).hexdigest()


def test_sqs_s3_fixture_carries_the_s3_fixture_and_a_test_event() -> None:
    first, second = (json.loads(record["body"]) for record in load("sqs-s3-notification.json")["Records"])
    assert first == load("s3-object-created.json")
    assert second["Event"] == "s3:TestEvent"
    assert set(second) == {"Service", "Event", "Time", "Bucket", "RequestId", "HostId"}


def test_sqs_r2_fixture_carries_the_r2_fixture() -> None:
    (record,) = load("sqs-r2-notification.json")["Records"]
    assert json.loads(record["body"]) == load("r2-event-notification.json")


@pytest.mark.parametrize("name", ["s3-object-created.json", "r2-event-notification.json"])
def test_fixture_key_is_the_manifest_of_project_7_job_42_attempt_1(name: str) -> None:
    (created,) = triggers.objects_in(load(name))
    assert Layout(bucket=BUCKET).parse_manifest_key(created.key) == AttemptRef(JobRef(42, 7), 1)


# --- S3 notifications ---------------------------------------------------------------------------------------


def s3_event(*records: tuple[str, str]) -> dict[str, Any]:
    """The S3 fixture with one record per (eventName, key)."""
    template = load("s3-object-created.json")["Records"][0]
    event: dict[str, Any] = {"Records": []}
    for name, key in records:
        record = copy.deepcopy(template)
        record["eventName"] = name
        record["s3"]["object"]["key"] = key
        if name.startswith("ObjectRemoved:"):  # S3 sends neither size nor eTag for deletions
            del record["s3"]["object"]["size"], record["s3"]["object"]["eTag"]
        event["Records"].append(record)
    return event


def test_s3_test_event_yields_nothing() -> None:
    test_event = json.loads(load("sqs-s3-notification.json")["Records"][1]["body"])
    assert triggers.objects_in(test_event) == []
    assert triggers.objects_in_body(json.dumps(test_event)) == []


@pytest.mark.parametrize(
    ("encoded", "decoded"),
    [
        pytest.param(KEY, KEY, id="plain"),
        pytest.param("staging/a+b/manifest.json", "staging/a b/manifest.json", id="plus-is-space"),
        pytest.param("staging/a%20b/manifest.json", "staging/a b/manifest.json", id="percent-20-is-space"),
        pytest.param("staging/a%2Bb/manifest.json", "staging/a+b/manifest.json", id="percent-2B-is-plus"),
        pytest.param("staging/%2541/manifest.json", "staging/%41/manifest.json", id="decoded-exactly-once"),
        pytest.param("staging/caf%C3%A9/manifest.json", "staging/caf\u00e9/manifest.json", id="utf8"),
        pytest.param("staging/projects/7/jobs/42/attempts/1%2Fmanifest.json", KEY, id="encoded-slash"),
    ],
)
def test_s3_keys_are_url_decoded_exactly_once(encoded: str, decoded: str) -> None:
    assert triggers.objects_in(s3_event(("ObjectCreated:Put", encoded))) == [ObjectCreated(BUCKET, decoded, "s3")]


@pytest.mark.parametrize(
    "name", ["ObjectCreated:Put", "ObjectCreated:Post", "ObjectCreated:Copy", "ObjectCreated:CompleteMultipartUpload"]
)
def test_every_s3_object_created_event_yields_the_object(name: str) -> None:
    assert triggers.objects_in(s3_event((name, KEY))) == [S3_MANIFEST]


@pytest.mark.parametrize("name", ["ObjectRemoved:Delete", "ObjectRemoved:DeleteMarkerCreated"])
def test_s3_object_removed_yields_nothing(name: str) -> None:
    assert triggers.objects_in(s3_event((name, KEY))) == []


def test_s3_event_with_several_records_yields_the_created_objects_in_order() -> None:
    other = "staging/test-jobs/job_9/attempts/2/manifest.json"
    event = s3_event(("ObjectCreated:Put", KEY), ("ObjectRemoved:Delete", KEY), ("ObjectCreated:Put", other))
    assert triggers.objects_in(event) == [S3_MANIFEST, ObjectCreated(BUCKET, other, "s3")]


# --- R2 notifications ---------------------------------------------------------------------------------------


def r2_event(action: str = "PutObject", key: str = KEY) -> dict[str, Any]:
    event = load("r2-event-notification.json")
    event["action"] = action
    event["object"]["key"] = key
    return event


@pytest.mark.parametrize("key", ["staging/a+b/manifest.json", "staging/%2541/manifest.json", "staging/a%20b/x.json"])
def test_r2_keys_are_not_decoded(key: str) -> None:
    assert triggers.objects_in(r2_event(key=key)) == [ObjectCreated(BUCKET, key, "r2")]


@pytest.mark.parametrize("action", ["PutObject", "CopyObject", "CompleteMultipartUpload"])
def test_r2_create_actions_yield_the_object(action: str) -> None:
    assert triggers.objects_in(r2_event(action)) == [R2_MANIFEST]


@pytest.mark.parametrize("action", ["DeleteObject", "LifecycleDeletion"])
def test_r2_delete_actions_yield_nothing(action: str) -> None:
    assert triggers.objects_in(r2_event(action)) == []


def test_r2_notification_inside_an_sqs_body() -> None:
    assert triggers.objects_in_body(json.dumps(r2_event())) == [R2_MANIFEST]


def test_r2_copy_notification_with_copy_source_is_accepted() -> None:
    event = r2_event("CopyObject")
    event["copySource"] = {"bucket": BUCKET, "object": "staging/elsewhere/manifest.json"}
    assert triggers.objects_in(event) == [R2_MANIFEST]


# --- refused shapes -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("event", [None, [], ["Records"], "reprocess", 42, True], ids=repr)
def test_kind_of_refuses_events_that_are_not_objects(event: Any) -> None:
    with pytest.raises(UnrecognisedEvent, match="JSON object"):
        triggers.kind_of(event)


def test_kind_of_requires_every_record_to_come_from_sqs() -> None:
    batch = load("sqs-s3-notification.json")
    batch["Records"][1]["eventSource"] = "aws:s3"
    assert triggers.kind_of(batch) != "sqs"


def sns_event() -> dict[str, Any]:
    """S3 -> SNS -> Lambda: not a trigger this function accepts."""
    return {
        "Records": [
            {
                "EventSource": "aws:sns",
                "EventVersion": "1.0",
                "EventSubscriptionArn": "arn:aws:sns:eu-west-1:123456789012:manifests:1b2c",
                "Sns": {"Type": "Notification", "Message": json.dumps(load("s3-object-created.json"))},
            }
        ]
    }


def eventbridge_event() -> dict[str, Any]:
    return {
        "version": "0",
        "detail-type": "Object Created",
        "source": "aws.s3",
        "detail": {"bucket": {"name": BUCKET}, "object": {"key": KEY, "size": 612}},
    }


def s3_created_with_get_object_only() -> dict[str, Any]:
    """``get_object`` is the Intelligent-Tiering field; an ObjectCreated record carries ``object``."""
    event = load("s3-object-created.json")
    s3 = event["Records"][0]["s3"]
    s3["get_object"] = s3.pop("object")
    return event


def s3_record_without(*path: str) -> dict[str, Any]:
    event = load("s3-object-created.json")
    target = event["Records"][0]
    for part in path[:-1]:
        target = target[part]
    del target[path[-1]]
    return event


def s3_record_with(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    event = load("s3-object-created.json")
    target = event["Records"][0]
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return event


UNKNOWN_SHAPES = {
    "empty-object": ({}, "top-level fields: none"),
    "unrelated-object": ({"hello": "world"}, "top-level fields: hello"),
    "eventbridge-s3-event": (eventbridge_event(), "top-level fields"),
    "r2-without-bucket": ({k: v for k, v in r2_event().items() if k != "bucket"}, "top-level fields"),
    "r2-object-without-key": ({**r2_event(), "object": {"size": 1}}, "invalid R2 event notification"),
    "r2-object-not-an-object": ({**r2_event(), "object": KEY}, "invalid R2 event notification"),
    "records-not-a-list": ({"Records": "x"}, "invalid S3 event notification"),
}
# Records that cannot be read: each is answered on its own (Unusable), so its siblings are still promoted.
UNUSABLE_RECORDS = {
    "s3-record-without-object": (s3_record_without("s3", "object"), "invalid S3 event record"),
    "s3-record-without-s3": (s3_record_without("s3"), "invalid S3 event record"),
    "empty-record": ({"Records": [{}]}, "invalid S3 event record"),
    "record-not-an-object": ({"Records": ["x"]}, "must be a JSON object"),
    "sns-event": (sns_event(), "eventSource is"),
    "bucket-name-a-number": (s3_record_with(("s3", "bucket", "name"), 5), "must be strings"),
    "key-null": (s3_record_with(("s3", "object", "key"), None), "must be strings"),
}


@pytest.mark.parametrize(("event", "message"), UNUSABLE_RECORDS.values(), ids=UNUSABLE_RECORDS.keys())
def test_a_record_that_cannot_be_read_is_answered_alone_and_its_siblings_still_count(
    event: dict[str, Any], message: str
) -> None:
    good = json.loads((EVENTS / "s3-object-created.json").read_text())["Records"][0]
    event = {"Records": [*event["Records"], good]}

    bad, created = triggers.objects_in(event)

    assert isinstance(bad, triggers.Unusable) and message in bad.reason
    assert created == triggers.ObjectCreated(bucket="vision-platform-prod", key=KEY, source="s3")


@pytest.mark.parametrize(("event", "message"), UNKNOWN_SHAPES.values(), ids=UNKNOWN_SHAPES.keys())
def test_unknown_shapes_are_unrecognised_with_a_helpful_message(event: dict[str, Any], message: str) -> None:
    assert triggers.kind_of(event) == "notification"
    with pytest.raises(UnrecognisedEvent, match=message):
        triggers.objects_in(event)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param("not json", "not valid JSON", id="text"),
        pytest.param("", "not valid JSON", id="empty"),
        pytest.param('{"Records": [', "not valid JSON", id="truncated"),
        pytest.param("[" * 100_000 + "]" * 100_000, "nests deeper than 64 levels", id="deeply-nested"),
        pytest.param("[" * 65 + "]" * 65, "nests deeper than 64 levels", id="nested-65"),
        pytest.param("1" * 5000, "not usable JSON", id="integer-too-long"),
        pytest.param('{"Event": "s3:TestEvent", "Event": "x"}', "'Event' appears more than once", id="repeated-key"),
        pytest.param("[]", "JSON object", id="array"),
        pytest.param("null", "JSON object", id="null"),
        pytest.param('"staging/projects/7/jobs/42/attempts/1/manifest.json"', "JSON object", id="string"),
        pytest.param('{"hello": "world"}', "top-level fields: hello", id="unknown-object"),
    ],
)
def test_unusable_sqs_bodies_are_unrecognised(body: str, message: str) -> None:
    with pytest.raises(UnrecognisedEvent, match=message):
        triggers.objects_in_body(body)


@pytest.mark.parametrize(
    ("event", "field"),
    [
        pytest.param({"action": "reprocess", "project_id": 7}, "job_id", id="missing-job_id"),
        pytest.param({"action": "reprocess", "project_id": 7, "job_id": "42"}, "job_id", id="job_id-string"),
        pytest.param({"action": "reprocess", "project_id": 7, "job_id": True}, "job_id", id="job_id-true"),
        pytest.param({"action": "reprocess", "project_id": 7, "job_id": 0}, "job_id", id="job_id-zero"),
        pytest.param({"action": "reprocess", "project_id": 0, "job_id": 42}, "project_id", id="project_id-zero"),
        pytest.param({"action": "reprocess", "project_id": "7", "job_id": 42}, "project_id", id="project_id-string"),
        pytest.param({"action": "reprocess", "job_id": 42, "attempt": 0}, "attempt", id="attempt-zero"),
        pytest.param({"action": "reprocess", "job_id": 42, "attempt": -1}, "attempt", id="attempt-negative"),
        pytest.param({"action": "reprocess", "job_id": 42, "attempt": 1.5}, "attempt", id="attempt-float"),
        pytest.param({"action": "reprocess", "job_id": 42, "force": True}, "force", id="extra-field"),
        pytest.param({"action": "reprocess", "job_id": 42, "dryrun": True}, "dryrun", id="misspelt-dry_run"),
        pytest.param({"action": "reprocess", "job_id": 2**31}, "job_id", id="job_id-over-32-bit"),
        pytest.param(
            {"action": "reprocess", "project_id": 2**31, "job_id": 42}, "project_id", id="project-over-32-bit"
        ),
        pytest.param({"action": "reprocess", "job_id": 42, "attempt": 2**31}, "attempt", id="attempt-over-32-bit"),
        pytest.param({"action": "reprocess", "job_id": 42, "dry_run": "false"}, "dry_run", id="dry_run-string"),
        pytest.param({"action": "reprocess", "job_id": 42, "dry_run": 0}, "dry_run", id="dry_run-zero"),
        pytest.param({"action": "reprocess", "job_id": 42, "dry_run": None}, "dry_run", id="dry_run-null"),
    ],
)
def test_invalid_reprocess_events_are_unrecognised_naming_the_field(event: dict[str, Any], field: str) -> None:
    assert triggers.kind_of(event) == "reprocess"
    with pytest.raises(UnrecognisedEvent, match="invalid reprocess event") as caught:
        triggers.parse_reprocess(event)
    assert field in str(caught.value)


@pytest.mark.parametrize(
    "event",
    [s3_record_without("eventTime"), s3_record_without("s3", "object", "size"), s3_created_with_get_object_only()],
    ids=["without-event-time", "without-size", "get_object-only"],
)
def test_s3_records_missing_fields_the_promotion_does_not_need_are_still_read(event: dict[str, Any]) -> None:
    # S3-compatible stores and moto leave out fields AWS sends; a manifest must not be lost for that.
    [created] = triggers.objects_in(event)
    assert created.key == "staging/projects/7/jobs/42/attempts/1/manifest.json"
