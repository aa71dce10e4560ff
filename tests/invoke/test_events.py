"""Every promotion event in ``events/`` through the real ``sam local invoke``: the built function and layer
(``.aws-sam/build``) in a Lambda container, ``events/env.json`` as its settings, moto's S3 and PostgreSQL behind
it. Each test asserts the function's answer and the database's effect. ``make test-invoke``; needs Docker.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ckpt.contract.keys import AttemptRef
from tests.invoke import image, sam
from tests.invoke.stack import EXAMPLE_JOB, PROMOTION_FUNCTION, REPO_ROOT, LocalStack
from tests.support import Trainer

EVENTS = REPO_ROOT / "events"
ATTEMPT = AttemptRef(job=EXAMPLE_JOB, attempt=1)
PROMOTED = "attempt 1 (interrupted): promoted best.pt (epoch 18), last.pt (epoch 20)"
KEY = "staging/projects/7/jobs/42/attempts/1/manifest.json"
# The module path the runtime's bootstrap gives the function (tests/invoke/image.py, as in Lambda).
BOOTSTRAP_PATH = "/var/task:/opt/python/lib/python3.11/site-packages:/opt/python:/var/runtime"

# Each promotion event file and the trigger its promotion is recorded with.
PROMOTION_EVENTS = {
    "s3-object-created.json": "s3",
    "sqs-s3-notification.json": "sqs:s3",
    "r2-event-notification.json": "r2",
    "sqs-r2-notification.json": "sqs:r2",
    "reprocess.json": "reprocess",
    "reprocess-dry-run.json": "reprocess",
}


def other_functions_events(name: str) -> bool:
    """R2QueuePollerFunction's schedule (not runnable under sam local invoke yet: tests/invoke/__main__.py says
    why) and CheckpointApiFunction's requests (api-*.json, tested with that function)."""
    return name in {"r2-queue-poll.json", "sweeper-schedule.json"} or name.startswith("api-")


@pytest.fixture
def fresh(stack: LocalStack) -> LocalStack:
    stack.reset()
    return stack


def load(name: str) -> Any:
    return json.loads((EVENTS / name).read_text())


def invoke(stack: LocalStack, event: Path) -> Any:
    invocation = sam.invoke(PROMOTION_FUNCTION, event, stack.gateway)
    assert not invocation.failed, invocation.describe()
    return invocation.answer


def answer(outcome: str, reason: str, attempt: int = 1) -> dict[str, Any]:
    key = f"staging/projects/7/jobs/42/attempts/{attempt}/manifest.json"
    return {"outcome": outcome, "reason": reason, "manifest_key": key, "job_id": 42, "attempt": attempt}


def assert_promoted(stack: LocalStack, ref: AttemptRef = ATTEMPT) -> None:
    """best.pt's URI on epoch 18's row, last.pt's on epoch 20's, NULL elsewhere; the canonical objects hold the
    attempt's staged bytes."""
    uris = stack.layout.canonical_uris(ref.job)
    assert stack.paths(ref.job.job_id) == {18: uris["best"], 20: uris["last"]}
    assert all(path.startswith("r2://vision-platform-prod/checkpoints/projects/7/jobs/42/") for path in uris.values())
    for name in ("best", "last"):
        assert stack.canonical(ref.job, name) == stack.staged(ref, name)


def assert_untouched(stack: LocalStack) -> None:
    assert stack.paths(EXAMPLE_JOB.job_id) == {}
    assert len(stack.rows(EXAMPLE_JOB.job_id)) == 20
    assert stack.canonical(EXAMPLE_JOB, "best") is None
    assert stack.canonical(EXAMPLE_JOB, "last") is None


def test_every_promotion_event_file_is_invoked_here() -> None:
    files = {path.name for path in EVENTS.glob("*.json")} - {"env.json"}
    assert {name for name in files if not other_functions_events(name)} == set(PROMOTION_EVENTS)


def test_built_artifact_runs_on_the_layer_and_the_function_alone() -> None:
    """The clean room: in the Lambda image, with the built layer at /opt and the built function at /var/task as
    Lambda mounts them, no network and nothing of the repository's venv, the handlers import, and every module
    they load comes from the function, the layer or Python's standard library."""
    build = sam.BUILT_TEMPLATE.parent
    script = """
import importlib, importlib.util, json, sys, sysconfig
import promote_checkpoints.handler, r2_queue_poller.handler
if importlib.util.find_spec("checkpoint_api"):  # CheckpointApiFunction, built from the same folder
    importlib.import_module("checkpoint_api.app")
stdlib = (sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"])
origins = {}
for name, module in list(sys.modules.items()):
    path = getattr(module, "__file__", None)
    if not path:
        continue
    if path.startswith(("/var/task/", "/opt/python/")):
        origin = path.split("/")[1] + "/" + path.split("/")[2]
    elif path.startswith(stdlib) and "-packages/" not in path:
        origin = "stdlib"
    else:
        origin = path
    origins.setdefault(origin, []).append(name)
known = ("var/task", "opt/python", "stdlib")
print(json.dumps({origin: len(names) if origin in known else names for origin, names in origins.items()}))
"""
    mounts = [
        f"--volume={build / 'CkptLayer'}:/opt:ro",
        f"--volume={build / 'PromoteCheckpointsFunction'}:/var/task:ro",
    ]
    run = ["docker", "run", "--rm", "--network=none", *mounts, f"--env=PYTHONPATH={BOOTSTRAP_PATH}"]
    found = subprocess.run(
        [*run, "--entrypoint=/var/lang/bin/python3.11", image.IMAGE, "-c", script],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert found.returncode == 0, found.stderr
    origins = json.loads(found.stdout.strip().splitlines()[-1])
    assert set(origins) <= {"var/task", "opt/python", "stdlib"}, origins
    assert origins.get("var/task") and origins.get("opt/python"), origins


def test_s3_notification_promotes_then_the_same_one_again_is_a_duplicate(fresh: LocalStack) -> None:
    fresh.prepare(load("s3-object-created.json"))

    assert invoke(fresh, EVENTS / "s3-object-created.json") == {"outcomes": [answer("promoted", PROMOTED)]}
    assert_promoted(fresh)
    assert invoke(fresh, EVENTS / "s3-object-created.json") == {
        "outcomes": [answer("duplicate", "this manifest was already promoted")]
    }
    assert_promoted(fresh)
    records = fresh.records()
    assert [(r["outcome"], r["trigger"], r["attempt"]) for r in records] == [
        ("promoted", "s3", 1),
        ("duplicate", "s3", 1),
    ]
    assert records[0]["reason"] == PROMOTED
    assert (records[0]["best_epoch"], records[0]["last_epoch"]) == (18, 20)


@pytest.mark.parametrize("name", ["sqs-s3-notification.json", "r2-event-notification.json", "sqs-r2-notification.json"])
def test_each_notification_shape_promotes(fresh: LocalStack, name: str) -> None:
    fresh.prepare(load(name))

    result = invoke(fresh, EVENTS / name)

    if name.startswith("sqs-"):
        assert result == {"batchItemFailures": []}  # sqs-s3's second record, S3's s3:TestEvent, is skipped
    else:
        assert result == {"outcomes": [answer("promoted", PROMOTED)]}
    assert_promoted(fresh)
    [record] = fresh.records()  # one manifest, one record: the test event records nothing
    assert (record["outcome"], record["trigger"], record["reason"]) == ("promoted", PROMOTION_EVENTS[name], PROMOTED)
    assert record["manifest_key"] == KEY


def test_reprocess_promotes_the_newest_staged_attempt(fresh: LocalStack) -> None:
    fresh.prepare(load("reprocess.json"))  # attempt 1
    newest = AttemptRef(job=EXAMPLE_JOB, attempt=2)
    Trainer(fresh.s3, fresh.layout).finish(newest)

    result = invoke(fresh, EVENTS / "reprocess.json")

    reason = PROMOTED.replace("attempt 1", "attempt 2")
    assert result == {"outcomes": [answer("promoted", reason, attempt=2)]}
    assert_promoted(fresh, newest)
    [record] = fresh.records()
    assert (record["outcome"], record["trigger"], record["attempt"]) == ("promoted", "reprocess", 2)


def test_reprocess_dry_run_answers_the_plan_and_changes_nothing(fresh: LocalStack) -> None:
    fresh.prepare(load("reprocess-dry-run.json"))

    result = invoke(fresh, EVENTS / "reprocess-dry-run.json")

    assert result == {"outcomes": [answer("planned", f"dry run: {PROMOTED}")]}
    assert_untouched(fresh)
    assert fresh.records() == []


def test_a_manifest_that_is_not_json_is_rejected_and_recorded_with_its_reason(fresh: LocalStack) -> None:
    fresh.prepare(load("s3-object-created.json"))
    Trainer(fresh.s3, fresh.layout).put_manifest(ATTEMPT, b'{"schema_version": 1, "job_id": 42,')

    [outcome] = invoke(fresh, EVENTS / "s3-object-created.json")["outcomes"]

    assert (outcome["outcome"], outcome["manifest_key"]) == ("rejected", KEY)
    assert "manifest" in outcome["reason"] and "not valid JSON" in outcome["reason"], outcome
    assert_untouched(fresh)
    [record] = fresh.records()
    assert (record["outcome"], record["reason"], record["trigger"]) == ("rejected", outcome["reason"], "s3")


def test_an_event_of_no_known_shape_is_rejected_with_its_reason(fresh: LocalStack, tmp_path: Path) -> None:
    event = tmp_path / "not-a-notification.json"
    event.write_text(json.dumps({"hello": "world"}))
    fresh.prepare(load("s3-object-created.json"))

    result = invoke(fresh, event)

    assert result == {
        "outcomes": [
            {
                "outcome": "rejected",
                "reason": "not an S3 event notification, an R2 event notification, an SQS batch or a reprocess "
                "request (top-level fields: hello)",
            }
        ]
    }
    assert_untouched(fresh)
    assert fresh.records() == []  # no manifest to record against: answered and logged only
