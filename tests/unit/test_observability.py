"""The functions' tracer: off means no X-Ray SDK loaded at all (a cold-start cost), on means Powertools' own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from promote_checkpoints.observability import tracing_off

ROOT = Path(__file__).parents[2]


@pytest.mark.parametrize(
    ("env", "off"),
    [
        ({"LAMBDA_TASK_ROOT": "/var/task"}, False),
        ({"LAMBDA_TASK_ROOT": "/var/task", "POWERTOOLS_TRACE_DISABLED": "true"}, True),
        ({"LAMBDA_TASK_ROOT": "/var/task", "POWERTOOLS_TRACE_DISABLED": "1"}, True),
        ({"LAMBDA_TASK_ROOT": "/var/task", "POWERTOOLS_TRACE_DISABLED": "false"}, False),
        ({"LAMBDA_TASK_ROOT": "/var/task", "AWS_SAM_LOCAL": "true"}, True),
        ({}, True),
    ],
)
def test_tracing_is_off_where_powertools_would_turn_it_off(env, off):
    assert tracing_off(env) is off


def _loads_xray(env: dict[str, str]) -> bool:
    code = "import sys, promote_checkpoints.handler; print('aws_xray_sdk.core' in sys.modules)"
    pythonpath = os.pathsep.join([str(ROOT / "functions"), str(ROOT / "layers" / "ckpt")])
    answer = subprocess.run(
        [sys.executable, "-c", code],
        env={"PATH": os.environ["PATH"], "PYTHONPATH": pythonpath, "AWS_DEFAULT_REGION": "us-east-1", **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return answer.stdout.strip() == "True"


def test_with_tracing_off_the_handler_never_imports_the_xray_sdk():
    assert not _loads_xray({"LAMBDA_TASK_ROOT": "/var/task", "POWERTOOLS_TRACE_DISABLED": "true"})
    assert _loads_xray({"LAMBDA_TASK_ROOT": "/var/task"})  # on: Powertools' X-Ray provider, as before


class _KeptEmitter:
    """An X-Ray emitter that keeps what it would send to the daemon."""

    def __init__(self) -> None:
        self.sent: list[object] = []

    def send_entity(self, entity: object) -> None:
        self.sent.append(entity)

    def set_daemon_address(self, address: object) -> None:
        pass

    @property
    def ip(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        return 2000


@pytest.fixture
def xray_sdk_enabled():
    """The X-Ray SDK on: a disabled Powertools Tracer (any function's, imported by another test) turns it off."""
    from aws_xray_sdk import global_sdk_config

    was = global_sdk_config.sdk_enabled()
    global_sdk_config.set_sdk_enabled(True)
    yield
    global_sdk_config.set_sdk_enabled(was)


@pytest.mark.parametrize("carried", [True, False])
def test_a_call_made_in_a_worker_thread_nests_under_the_callers_subsegment_only_when_carried(carried, xray_sdk_enabled):
    from aws_xray_sdk.core.recorder import AWSXRayRecorder

    from ckpt.adapters.threads import ThreadedCalls
    from promote_checkpoints.observability import trace_carrier

    recorder = AWSXRayRecorder()
    recorder.configure(sampling=False, context_missing="IGNORE_ERROR", emitter=_KeptEmitter(), streaming_threshold=100)
    recorder.begin_segment("function")
    promote = recorder.begin_subsegment("## promote")
    assert type(promote).__name__ == "Subsegment"  # a real one, not the SDK's dummy

    def s3_call() -> None:
        recorder.begin_subsegment("S3")
        recorder.end_subsegment()

    calls = ThreadedCalls(carry=trace_carrier(recorder) if carried else None)
    calls.all([s3_call, s3_call])
    assert [sub.name for sub in promote.subsegments] == (["S3", "S3"] if carried else [])
    recorder.end_subsegment()
    recorder.end_segment()
