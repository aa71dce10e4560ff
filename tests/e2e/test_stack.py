"""``make stack``, smoke-tested: started in a subprocess, it prints a trainer's environment; a job staged with exactly
that environment (``ckpt stage``) is promoted and the outcome printed; a folder left without a manifest is completed by
the sweeper and promoted as abandoned; Ctrl+C stops it cleanly."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from ckpt.adapters.storage import make_client
from tests.e2e.stack import READY

ROOT = Path(__file__).parents[2]


class Running:
    """The stack's process and the lines it printed, read as they come."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            if re.search(pattern, line):
                return line
        raise AssertionError(f"no line matching {pattern!r} in:\n" + "\n".join(self.lines))


def test_make_stack_promotes_what_a_trainer_stages_with_the_printed_environment(tmp_path: Path):
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.e2e.stack",
            "--database-url",
            f"sqlite:///{tmp_path / 'stack.db'}",
            "--sweep-every",
            "1s",
            "--sweep-older-than",
            "2s",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT / "functions")},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    stack = Running(process)
    try:
        stack.wait_for(re.escape(READY))
        trainer_env = dict(re.findall(r"^export (\w+)=(.*)$", "\n".join(stack.lines), re.MULTILINE))
        assert set(trainer_env) == {
            "CHECKPOINT_BUCKET",
            "AWS_S3_ENDPOINT_URL",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_DEFAULT_REGION",
            "DATABASE_URL",
        }
        clean = {name: value for name, value in os.environ.items() if not name.startswith(("AWS_", "CHECKPOINT_"))}
        weights = tmp_path / "weights"
        weights.mkdir()
        (weights / "best.pt").write_bytes(b"best weights")
        (weights / "last.pt").write_bytes(b"last weights")

        staged = subprocess.run(
            [
                str(Path(sys.executable).parent / "ckpt"),
                "stage",
                "--project-id",
                "7",
                "--job-id",
                "42",
                "--weights-dir",
                str(weights),
                "--status",
                "completed",
                "--best-epoch",
                "2",
                "--last-epoch",
                "3",
            ],
            env={**clean, **trainer_env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert staged.returncode == 0, staged.stderr
        line = stack.wait_for(r"promoted +job 42 attempt 1: ")
        assert "attempt 1 (completed): promoted best.pt (epoch 2), last.pt (epoch 3) (sqs:s3)" in line
        stack.wait_for(r"no validation_results row yet for epoch 2, 3")

        # A training killed without a manifest: a last.pt alone, which the sweeper completes after 2 s.
        s3 = make_client(
            trainer_env["AWS_S3_ENDPOINT_URL"],
            trainer_env["AWS_DEFAULT_REGION"],
            credentials={
                "aws_access_key_id": trainer_env["AWS_ACCESS_KEY_ID"],
                "aws_secret_access_key": trainer_env["AWS_SECRET_ACCESS_KEY"],
            },
        )
        s3.put_object(
            Bucket=trainer_env["CHECKPOINT_BUCKET"], Key="staging/projects/7/jobs/43/attempts/1/last.pt", Body=b"w"
        )
        stack.wait_for(r"sweeper +wrote the abandoned manifest of staging/projects/7/jobs/43/attempts/1/")
        stack.wait_for(r"promoted +job 43 attempt 1: attempt 1 \(abandoned\): promoted last.pt")
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=30)
    stack.wait_for(r"^stopped: ", timeout=5)
    assert code == 0, "\n".join(stack.lines)
