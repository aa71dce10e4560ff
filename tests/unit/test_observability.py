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
