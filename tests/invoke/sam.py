"""The ``sam local invoke`` command line, run against the built artifact, and its answer.

    sam local invoke FUNCTION --template .aws-sam/build/template.yaml --event EVENT --env-vars events/env.json \\
        --skip-pull-image --add-host host.docker.internal:<Docker bridge gateway>

- ``--template .aws-sam/build/template.yaml``: the built function and layer, never the source tree (the source
  template would mount ``functions/`` and a layer without its dependencies);
- ``--env-vars events/env.json``: the function's settings, as they are in that file;
- ``--skip-pull-image``: the base image is in place (``make lambda-image``: the official one, or the stand-in);
- ``--add-host``: ``host.docker.internal`` is the host on Docker's bridge, where ``stack.py``'s forwarders listen.

SAM prints the function's answer on stdout and the container's log on stderr.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.invoke.stack import CONTAINER_HOST, ENV_FILE, REPO_ROOT

SAM = Path(sys.executable).with_name("sam")
BUILT_TEMPLATE = REPO_ROOT / ".aws-sam" / "build" / "template.yaml"
# The credentials and region SAM hands the container (moto takes any), and no telemetry.
ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "local",
    "AWS_SECRET_ACCESS_KEY": "local",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "SAM_CLI_TELEMETRY": "0",
}


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def command(function: str, event: Path, gateway: str) -> list[str]:
    return [
        _shown(SAM),
        "local",
        "invoke",
        function,
        "--template",
        _shown(BUILT_TEMPLATE),
        "--event",
        _shown(event),
        "--env-vars",
        _shown(ENV_FILE),
        "--skip-pull-image",
        "--add-host",
        f"{CONTAINER_HOST}:{gateway}",
    ]


@dataclass
class Invocation:
    command: list[str]
    returncode: int
    answer: Any  # the function's answer (JSON), or None when SAM printed none
    stdout: str
    log: str
    seconds: float

    @property
    def failed(self) -> bool:
        """SAM failed, or the function raised (Lambda's error answer)."""
        return (
            self.returncode != 0
            or self.answer is None
            or (isinstance(self.answer, dict) and "errorType" in self.answer)
        )

    def describe(self) -> str:
        return (
            f"$ {' '.join(self.command)}\nexit {self.returncode} after {self.seconds:.1f} s\n"
            f"--- answer (stdout)\n{self.stdout}\n--- log (stderr)\n{self.log}"
        )


def invoke(function: str, event: Path, gateway: str, *, echo_log: bool = False, timeout: float = 600) -> Invocation:
    """Run ``sam local invoke``; with ``echo_log`` the container's log goes to this process's stderr as it comes."""
    if not BUILT_TEMPLATE.exists():
        raise FileNotFoundError(f"{_shown(BUILT_TEMPLATE)} is missing: run make build (sam build) first")
    argv = command(function, event, gateway)
    started = time.monotonic()
    process = subprocess.Popen(
        argv,
        cwd=REPO_ROOT,
        env={**os.environ, **ENVIRONMENT},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    log_lines: list[str] = []
    assert process.stderr is not None and process.stdout is not None
    watchdog = threading.Timer(timeout, process.kill)  # SAM stops the function at its Timeout; this stops SAM
    watchdog.start()
    try:
        for line in process.stderr:
            log_lines.append(line)
            if echo_log:
                sys.stderr.write(line)
                sys.stderr.flush()
        stdout = process.stdout.read()
        process.wait(timeout=timeout)
    except BaseException:
        process.kill()
        process.wait()
        raise
    finally:
        watchdog.cancel()
    return Invocation(
        command=argv,
        returncode=process.returncode,
        answer=_answer(stdout),
        stdout=stdout,
        log="".join(log_lines),
        seconds=time.monotonic() - started,
    )


def _answer(stdout: str) -> Any:
    text = stdout.strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        last = text.splitlines()[-1]
        try:
            return json.loads(last)
        except json.JSONDecodeError:
            return None
