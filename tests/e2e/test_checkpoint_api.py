"""CheckpointApiFunction's routes against moto's standalone server and PostgreSQL: what the database records as
promoted is what the API lists, a presigned link downloads exactly those bytes, and every bad request is a 4xx
with a JSON error body."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import Engine

from checkpoint_api import app as api
from ckpt.adapters.db.engine import make_engine
from ckpt.adapters.db.store import PromotionStore
from ckpt.adapters.storage import S3Storage, make_client
from ckpt.contract.keys import JobRef, Layout
from ckpt.promotion.promoter import Promoter
from ckpt.trainer.staging import Checkpoint
from tests.e2e.local_stack import CREDENTIALS, REGION
from tests.support import LambdaContext, Trainer, add_epochs, attempt, reset_database, weights

EVENTS = Path(__file__).parents[2] / "events"
PROJECT_JOB = JobRef(job_id=42, project_id=7)
TEST_JOB = JobRef(job_id=9)


class Stack:
    """A bucket on moto's server, a PostgreSQL database, the API's environment, and a promoter to fill them."""

    def __init__(self, endpoint: str, database_url: str, *, versioned: bool = False) -> None:
        self.bucket = f"api-{uuid.uuid4().hex[:8]}"
        self.endpoint = endpoint
        self.database_url = database_url
        os.environ.update(
            {
                **CREDENTIALS,
                "CHECKPOINT_BUCKET": self.bucket,
                "AWS_S3_ENDPOINT_URL": endpoint,
                "DATABASE_URL": database_url,
                "POWERTOOLS_TRACE_DISABLED": "1",
            }
        )
        self.s3 = make_client(endpoint, REGION)
        self.s3.create_bucket(Bucket=self.bucket)
        if versioned:
            self.s3.put_bucket_versioning(Bucket=self.bucket, VersioningConfiguration={"Status": "Enabled"})
        self.layout = Layout(bucket=self.bucket)
        self.engine: Engine = make_engine(database_url)
        reset_database(self.engine)
        self.trainer = Trainer(self.s3, self.layout)
        self.promoter = Promoter(self.layout, S3Storage(self.s3, self.bucket), PromotionStore(self.engine))

    def promote(self, ref: Any, **files: Checkpoint) -> None:
        self.trainer.finish(ref, files=files or None)
        outcome = self.promoter.promote_key(self.bucket, self.layout.manifest_key(ref), trigger="test")
        assert outcome.status == "promoted", outcome.reason


@pytest.fixture
def stack(endpoint: str, pg_url: str, clean_environment: None) -> Iterator[Stack]:
    api._wiring = None  # a new test is a new execution environment
    built = Stack(endpoint, pg_url)
    yield built
    api._wiring = None
    built.engine.dispose()


def request(path: str, query: dict[str, str] | None = None) -> tuple[int, dict[str, str], dict[str, Any]]:
    """Invoke the handler as API Gateway does (an HTTP API v2 payload); (status, headers, JSON body)."""
    event = copy.deepcopy(json.loads((EVENTS / "api-list-checkpoints.json").read_text()))
    event.update(rawPath=path, rawQueryString="&".join(f"{k}={v}" for k, v in (query or {}).items()))
    event["requestContext"]["http"]["path"] = path
    event["queryStringParameters"] = query
    answer = api.lambda_handler(event, LambdaContext(function_name="CheckpointApiFunction"))
    assert answer["headers"]["Content-Type"] == "application/json"
    assert "Traceback" not in answer["body"]
    return answer["statusCode"], answer["headers"], json.loads(answer["body"])


def download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:  # no credentials: the signature is in the URL
        return bytes(response.read())


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- what is promoted --------------------------------------------------------------------------------------------


def test_the_list_is_the_databases_record_of_the_promoted_files(stack: Stack):
    add_epochs(stack.engine, 42, {17: 0.58, 18: 0.61, 19: 0.59, 20: 0.60})
    stack.promote(attempt(1))

    status, _, body = request("/projects/7/jobs/42/checkpoints")

    assert status == 200
    assert (body["project_id"], body["job_id"], body["attempt"]) == (7, 42, 1)
    best, last = body["checkpoints"]["best"], body["checkpoints"]["last"]
    assert (best["name"], best["epoch"], best["metric_value"], best["attempt"]) == ("best", 18, 0.61, 1)
    assert (last["epoch"], last["metric_value"]) == (20, 0.60)
    assert best["size"] == len(weights("best-1")) and best["sha256"] == sha256(weights("best-1"))
    assert last["sha256"] == sha256(weights("last-1"))
    assert best["uri"] == f"r2://{stack.bucket}/checkpoints/projects/7/jobs/42/best.pt"
    assert best["download"] == "/projects/7/jobs/42/checkpoints/best"
    assert best["promoted_at"].endswith(("Z", "+00:00"))


def test_a_presigned_link_downloads_exactly_the_promoted_bytes(stack: Stack):
    add_epochs(stack.engine, 42, {18: 0.6, 20: 0.5})
    stack.promote(attempt(1))

    for name in ("best", "last"):
        status, _, body = request(f"/projects/7/jobs/42/checkpoints/{name}", {"expires_in": "120"})

        assert status == 200
        assert body["url"].startswith(f"{stack.endpoint}/{stack.bucket}/checkpoints/projects/7/jobs/42/{name}.pt?")
        assert parse_qs(urlsplit(body["url"]).query)["X-Amz-Expires"] == ["120"]
        assert body["expires_in"] == 120
        data = download(body["url"])
        assert sha256(data) == body["sha256"] == sha256(weights(f"{name}-1"))
        assert len(data) == body["size"]


def test_the_link_expires_after_fifteen_minutes_unless_asked(stack: Stack):
    stack.promote(attempt(1))

    _, _, body = request("/projects/7/jobs/42/checkpoints/last")

    assert body["expires_in"] == 900
    assert parse_qs(urlsplit(body["url"]).query)["X-Amz-Expires"] == ["900"]


def test_a_later_attempt_that_lists_only_last_keeps_the_earlier_best(stack: Stack):
    add_epochs(stack.engine, 42, {18: 0.6, 20: 0.5, 21: 0.4})
    stack.promote(attempt(1))
    stack.promote(attempt(2), last=Checkpoint(weights("last-2"), epoch=21))

    _, _, body = request("/projects/7/jobs/42/checkpoints")
    _, _, best = request("/projects/7/jobs/42/checkpoints/best")

    assert body["attempt"] == 2
    assert (body["checkpoints"]["best"]["attempt"], body["checkpoints"]["best"]["epoch"]) == (1, 18)
    assert (body["checkpoints"]["last"]["attempt"], body["checkpoints"]["last"]["epoch"]) == (2, 21)
    assert sha256(download(best["url"])) == sha256(weights("best-1"))


def test_test_jobs_are_addressed_without_a_project(stack: Stack):
    stack.promote(attempt(1, TEST_JOB))

    status, _, body = request("/test-jobs/9/checkpoints")
    _, _, last = request("/test-jobs/9/checkpoints/last")

    assert status == 200
    assert (body["project_id"], body["job_id"]) == (None, 9)
    assert body["checkpoints"]["last"]["download"] == "/test-jobs/9/checkpoints/last"
    assert f"/{stack.bucket}/checkpoints/test-jobs/job_9/last.pt?" in last["url"]
    assert sha256(download(last["url"])) == last["sha256"] == sha256(weights("last-1"))


def test_a_link_is_refused_while_a_promotion_is_replacing_the_object(stack: Stack):
    stack.promote(attempt(1))
    # a newer promotion has copied its bytes but not committed: the record still names attempt 1's
    stack.s3.put_object(
        Bucket=stack.bucket,
        Key="checkpoints/projects/7/jobs/42/last.pt",
        Body=weights("last-2"),
        Metadata={"sha256": sha256(weights("last-2"))},
    )

    status, headers, body = request("/projects/7/jobs/42/checkpoints/last")

    assert status == 409
    assert body["error"] == "checkpoint_changing"
    assert headers["Retry-After"] == "5"


def test_in_a_versioned_bucket_the_link_is_for_the_promoted_version(endpoint: str, pg_url: str, clean_environment):
    api._wiring = None
    stack = Stack(endpoint, pg_url, versioned=True)
    stack.promote(attempt(1))
    stack.s3.put_object(  # a promotion in flight overwrites the key
        Bucket=stack.bucket,
        Key="checkpoints/projects/7/jobs/42/last.pt",
        Body=weights("last-2"),
        Metadata={"sha256": sha256(weights("last-2"))},
    )

    status, _, body = request("/projects/7/jobs/42/checkpoints/last")

    assert status == 200
    assert "versionId=" in body["url"]
    assert sha256(download(body["url"])) == body["sha256"] == sha256(weights("last-1"))
    api._wiring = None
    stack.engine.dispose()


# --- bad input -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "query", "location"),
    [
        ("/projects/x/jobs/42/checkpoints", None, "path.project_id"),
        ("/projects/7/jobs/forty-two/checkpoints", None, "path.job_id"),
        ("/projects/07/jobs/42/checkpoints", None, "path.project_id"),
        ("/projects/+7/jobs/42/checkpoints", None, "path.project_id"),
        ("/projects/7/jobs/0/checkpoints", None, "path.job_id"),
        ("/projects/7/jobs/2147483648/checkpoints", None, "path.job_id"),
        ("/projects/7/jobs/99999999999999999999/checkpoints/last", None, "path.job_id"),
        ("/test-jobs/-9/checkpoints", None, "path.job_id"),
        ("/projects/7/jobs/42/checkpoints/final", None, "path.name"),
        ("/projects/7/jobs/42/checkpoints/best.pt", None, "path.name"),
        ("/projects/7/jobs/42/checkpoints/last", {"expires_in": "59"}, "query.expires_in"),
        ("/projects/7/jobs/42/checkpoints/last", {"expires_in": "3601"}, "query.expires_in"),
        ("/projects/7/jobs/42/checkpoints/last", {"expires_in": "ten"}, "query.expires_in"),
        ("/projects/7/jobs/42/checkpoints/last", {"expires_in": "900.5"}, "query.expires_in"),
        ("/test-jobs/9/checkpoints/last", {"expires_in": "-60"}, "query.expires_in"),
    ],
)
def test_malformed_requests_are_422_naming_the_parameter(stack: Stack, path, query, location):
    stack.promote(attempt(1))

    status, _, body = request(path, query)

    assert status == 422
    assert body["error"] == "invalid_request"
    assert [detail["location"] for detail in body["details"]] == [location]
    assert location in body["message"]


def test_the_id_rule_is_said_in_words(stack: Stack):
    _, _, body = request("/projects/07/jobs/42/checkpoints")
    assert body["details"][0]["message"].startswith("must be an integer from 1 to 2147483647 in plain decimal digits")
    _, _, body = request("/projects/7/jobs/42/checkpoints/last", {"expires_in": "7200"})
    assert body["details"][0]["message"] == "must be a whole number of seconds from 60 to 3600"
    _, _, body = request("/projects/7/jobs/42/checkpoints/final")
    assert "'best' or 'last'" in body["details"][0]["message"]


def test_an_unknown_job_is_404(stack: Stack):
    stack.promote(attempt(1))

    for path in ("/projects/7/jobs/43/checkpoints", "/projects/7/jobs/43/checkpoints/last"):
        status, _, body = request(path)

        assert status == 404
        assert body["error"] == "unknown_job"
        assert "job 43 of project 7 is unknown" in body["message"]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/projects/8/jobs/42/checkpoints", "job 42 is not a job of project 8"),
        ("/projects/8/jobs/42/checkpoints/best", "job 42 is not a job of project 8"),
        ("/test-jobs/42/checkpoints", "job 42 is a job of a project, not a test job"),
        ("/projects/7/jobs/9/checkpoints/last", "job 9 is a test job, not a job of project 7"),
    ],
)
def test_a_job_of_another_project_is_404_and_never_served(stack: Stack, path, message):
    stack.promote(attempt(1))
    stack.promote(attempt(1, TEST_JOB))

    status, _, body = request(path)

    assert status == 404
    assert (body["error"], body["message"]) == ("job_in_another_project", message)
    assert "url" not in body


def test_a_job_with_nothing_promoted_is_404_with_the_reason(stack: Stack):
    add_epochs(stack.engine, 42, {1: 0.5})
    add_epochs(stack.engine, 44, {1: 0.5})
    stack.trainer.put_manifest(attempt(1, JobRef(job_id=44, project_id=7)), b"{not json")
    stack.promoter.promote_key(stack.bucket, "staging/projects/7/jobs/44/attempts/1/manifest.json", trigger="test")

    status, _, body = request("/projects/7/jobs/42/checkpoints")
    assert (status, body["error"]) == (404, "nothing_promoted")
    assert body["message"] == "job 42 of project 7 has no promoted checkpoints yet"

    status, _, body = request("/projects/7/jobs/44/checkpoints/last")
    assert (status, body["error"]) == (404, "nothing_promoted")
    assert "its newest manifest (attempt 1) was rejected" in body["message"]


def test_a_checkpoint_that_was_not_promoted_is_404(stack: Stack):
    stack.promote(attempt(1), last=Checkpoint(weights("last-1"), epoch=3))

    status, _, body = request("/projects/7/jobs/42/checkpoints/best")

    assert status == 404
    assert (body["error"], body["message"]) == (
        "checkpoint_not_promoted",
        "job 42 of project 7 has no promoted best.pt (promoted: last.pt)",
    )
    _, _, listed = request("/projects/7/jobs/42/checkpoints")
    assert listed["checkpoints"]["best"] is None


def test_an_unknown_route_is_a_json_404(stack: Stack):
    status, _, body = request("/projects/7/jobs/42")

    assert (status, body["error"]) == (404, "not_found")


def test_an_unreachable_database_is_503_with_retry_after(stack: Stack):
    os.environ["DATABASE_URL"] = "postgresql+pg8000://postgres@127.0.0.1:1/postgres?connect_timeout=2"

    status, headers, body = request("/projects/7/jobs/42/checkpoints")

    assert (status, body["error"]) == (503, "unavailable")
    assert headers["Retry-After"] == "30"
    assert "127.0.0.1" not in body["message"]


def test_a_misconfiguration_is_500_without_details(stack: Stack):
    os.environ["DATABASE_URL"] = "mysql://user:secret@db/platform"

    status, _, body = request("/projects/7/jobs/42/checkpoints")

    assert (status, body["error"]) == (500, "internal_error")
    assert "secret" not in json.dumps(body)


def test_a_recorded_object_missing_from_the_store_is_500(stack: Stack):
    stack.promote(attempt(1))
    stack.s3.delete_object(Bucket=stack.bucket, Key="checkpoints/projects/7/jobs/42/best.pt")

    status, _, body = request("/projects/7/jobs/42/checkpoints/best")

    assert (status, body["error"]) == (500, "checkpoint_missing")


# --- the events in events/ ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "status"),
    [
        ("api-list-checkpoints.json", 200),
        ("api-get-checkpoint.json", 200),
        ("api-list-test-job-checkpoints.json", 200),
        ("api-get-test-job-checkpoint.json", 200),
        ("api-get-checkpoint-bad-expiry.json", 422),
    ],
)
def test_each_event_fixture_reaches_its_route(stack: Stack, name: str, status: int):
    stack.promote(attempt(1))
    stack.promote(attempt(1, TEST_JOB))
    event = json.loads((EVENTS / name).read_text())

    answer = api.lambda_handler(event, LambdaContext(function_name="CheckpointApiFunction"))

    assert answer["statusCode"] == status, answer["body"]
    body = json.loads(answer["body"])
    if "url" in body:
        assert sha256(download(body["url"])) == body["sha256"]


def test_every_api_event_fixture_is_exercised_here():
    fixtures = {path.name for path in EVENTS.glob("api-*.json")}
    assert fixtures == {
        "api-list-checkpoints.json",
        "api-get-checkpoint.json",
        "api-list-test-job-checkpoints.json",
        "api-get-test-job-checkpoint.json",
        "api-get-checkpoint-bad-expiry.json",
    }
