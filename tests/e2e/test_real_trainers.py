"""Real trainers in subprocesses (CPU PyTorch and Ultralytics YOLO) against moto's standalone server:
however training ends, the right files and manifest reach staging, the process exits exactly as it would
without ckpt, and the promotion then puts the right URIs on the right rows."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch

from ckpt.adapters.db import migrate
from ckpt.adapters.db.engine import make_engine
from ckpt.adapters.db.schema import platform_metadata
from ckpt.contract.manifest import parse_manifest
from tests.e2e.local_stack import Pipeline
from tests.support import add_epochs, paths

ROOT = Path(__file__).parents[2]
EPOCH_LINE = re.compile(r"^epoch (\d+) (?:val_loss|fitness) (\S+) best=(True|False)$")


class Stack:
    """A bucket with its notification, a SQLite platform database, and the env a trainer process needs."""

    def __init__(self, endpoint: str, tmp_path: Path) -> None:
        self.bucket = f"trainers-{uuid.uuid4().hex[:8]}"
        self.pipeline = Pipeline(endpoint, self.bucket).create()
        self.database_url = f"sqlite:///{tmp_path / 'platform.db'}"
        self.engine = make_engine(self.database_url)
        platform_metadata.create_all(self.engine)
        migrate.upgrade(self.engine)
        self.trainer_env = {
            **os.environ,
            **self.pipeline.function_environment(self.database_url),
            "PYTHONPATH": str(ROOT / "functions"),
        }
        self.pipeline.receive(expect=1, wait_seconds=2)  # S3's s3:TestEvent for the new notification

    def manifest(self, attempt: int = 1):  # type: ignore[no-untyped-def]
        key = f"staging/projects/7/jobs/42/attempts/{attempt}/manifest.json"
        return parse_manifest(self.pipeline.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def staged(self) -> list[str]:
        prefix = "staging/projects/7/jobs/42/attempts/1/"
        listing = self.pipeline.s3.list_objects_v2(Bucket=self.bucket, Prefix=prefix).get("Contents", [])
        return sorted(obj["Key"].removeprefix(prefix) for obj in listing)

    def promote(self, epochs: dict[int, float]) -> dict[int, str | None]:
        """The platform records the epochs; the notification reaches the handler; the rows it set."""
        add_epochs(self.engine, 42, epochs)
        os.environ.update(self.pipeline.function_environment(self.database_url))
        from promote_checkpoints import handler

        messages = self.pipeline.receive(expect=1)
        assert len(messages) == 1, "exactly one notification: the manifest's"
        assert self.pipeline.deliver(handler, messages) == {"batchItemFailures": []}
        return paths(self.engine, 42)

    def uri(self, name: str) -> str:
        return f"r2://{self.bucket}/checkpoints/projects/7/jobs/42/{name}.pt"


@pytest.fixture
def stack(endpoint: str, tmp_path: Path, clean_environment: None) -> Stack:
    return Stack(endpoint, tmp_path)


def run_trainer(
    module: str, args: list[str], env: dict[str, str], *, stop_after_epoch: int | None = None, send: int = 0
) -> tuple[int, list[tuple[int, float, bool]], str]:
    """Run a trainer; after the epoch line ``stop_after_epoch`` send it ``send``. Returns its exit status,
    its (epoch, metric, best) lines, and its output."""
    process = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    epochs: list[tuple[int, float, bool]] = []
    output: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:
        output.append(line)
        match = EPOCH_LINE.match(line.strip())
        if match:
            epochs.append((int(match[1]), float(match[2]), match[3] == "True"))
            if stop_after_epoch is not None and int(match[1]) == stop_after_epoch:
                process.send_signal(send)
    return process.wait(timeout=300), epochs, "".join(output)


def best_and_last(epochs: list[tuple[int, float, bool]]) -> tuple[int, int]:
    return max(e for e, _, best in epochs if best), epochs[-1][0]


# --- plain PyTorch ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("send", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_torch_loop_stopped_by_a_signal_stages_and_exits_as_it_would_have(stack: Stack, tmp_path: Path, send):
    trainer = "tests.e2e.trainers.torch_loop"
    baseline, _, _ = run_trainer(
        trainer, [str(tmp_path / "baseline"), "--no-staging"], stack.trainer_env, stop_after_epoch=3, send=send
    )

    status, epochs, output = run_trainer(
        trainer, [str(tmp_path / "weights")], stack.trainer_env, stop_after_epoch=3, send=send
    )

    assert status == baseline == -send, output
    assert stack.staged() == ["best.pt", "last.pt", "manifest.json"]
    manifest = stack.manifest()
    best, last = best_and_last(epochs)
    assert (manifest.status, manifest.error) == (
        "interrupted",
        "KeyboardInterrupt" if send == signal.SIGINT else "SIGTERM",
    )
    assert (manifest.checkpoints.best.epoch, manifest.checkpoints.last.epoch) == (best, last)
    assert torch.load(tmp_path / "weights" / "last.pt")["epoch"] == last

    rows = stack.promote({epoch: value for epoch, value, _ in epochs})

    assert {e: p for e, p in rows.items() if p} == (
        {best: stack.uri("best"), last: stack.uri("last")} if best != last else {best: stack.uri("best")}
    )


def test_a_program_with_its_own_sigterm_handler_keeps_it(stack: Stack, tmp_path: Path):
    trainer = "tests.e2e.trainers.torch_loop"
    options = ["--graceful-sigterm"]
    baseline, _, _ = run_trainer(
        trainer,
        [str(tmp_path / "b"), *options, "--no-staging"],
        stack.trainer_env,
        stop_after_epoch=2,
        send=signal.SIGTERM,
    )

    status, epochs, output = run_trainer(
        trainer, [str(tmp_path / "w"), *options], stack.trainer_env, stop_after_epoch=2, send=signal.SIGTERM
    )

    assert status == baseline == 0, output
    assert "stopping: SIGTERM" in output  # the program's handler ran, not ours
    manifest = stack.manifest()
    assert (manifest.status, manifest.error, manifest.checkpoints.last.epoch) == (
        "interrupted",
        "SIGTERM",
        epochs[-1][0],
    )


def test_a_torch_loop_that_raises_stages_as_failed_and_exits_as_it_would_have(stack: Stack, tmp_path: Path):
    trainer = "tests.e2e.trainers.torch_loop"
    baseline, _, _ = run_trainer(trainer, [str(tmp_path / "b"), "--raise-at", "3", "--no-staging"], stack.trainer_env)

    status, epochs, output = run_trainer(trainer, [str(tmp_path / "w"), "--raise-at", "3"], stack.trainer_env)

    assert status == baseline == 1, output
    assert "RuntimeError: loss diverged at epoch 3" in output
    manifest = stack.manifest()
    assert (manifest.status, manifest.error) == ("failed", "RuntimeError: loss diverged at epoch 3")
    assert manifest.checkpoints.last.epoch == 3
    rows = stack.promote({epoch: value for epoch, value, _ in epochs})
    best, last = best_and_last(epochs)
    assert rows[last] is not None and rows[best] is not None


# --- Ultralytics YOLO -----------------------------------------------------------------------------------------


def _ultralytics_checkpoint_epoch(path: Path) -> int:
    checkpoint: dict[str, Any] = torch.load(path, weights_only=False)
    return int(checkpoint["epoch"]) + 1  # Ultralytics counts from 0


def test_a_completed_yolo_training_stages_best_and_last(stack: Stack, tmp_path: Path):
    status, epochs, output = run_trainer(
        "tests.e2e.trainers.yolo_train", [str(tmp_path), "--epochs", "3"], stack.trainer_env
    )

    assert status == 0, output
    manifest = stack.manifest()
    best, last = best_and_last(epochs)  # what Ultralytics itself decided, epoch by epoch
    assert (manifest.status, manifest.checkpoints.best.epoch, manifest.checkpoints.last.epoch) == (
        "completed",
        best,
        last,
    )
    assert last == 3
    weights = tmp_path / "runs" / "job_42" / "weights"
    for name in ("best", "last"):  # the staged bytes are the final, optimizer-stripped files
        staged = stack.pipeline.s3.get_object(
            Bucket=stack.bucket, Key=f"staging/projects/7/jobs/42/attempts/1/{name}.pt"
        )["Body"].read()
        assert staged == (weights / f"{name}.pt").read_bytes()

    rows = stack.promote({epoch: value for epoch, value, _ in epochs})
    assert rows[last] == stack.uri("best" if best == last else "last")


def test_an_interrupted_yolo_training_stages_the_epochs_its_files_hold(stack: Stack, tmp_path: Path):
    trainer = "tests.e2e.trainers.yolo_train"
    baseline, _, _ = run_trainer(
        trainer,
        [str(tmp_path / "baseline"), "--epochs", "30", "--no-staging"],
        stack.trainer_env,
        stop_after_epoch=2,
        send=signal.SIGINT,
    )

    status, epochs, output = run_trainer(
        trainer, [str(tmp_path / "run"), "--epochs", "30"], stack.trainer_env, stop_after_epoch=2, send=signal.SIGINT
    )

    assert status == baseline, output
    manifest = stack.manifest()
    weights = tmp_path / "run" / "runs" / "job_42" / "weights"
    assert manifest.status == "interrupted"
    # Interrupted, the files keep Ultralytics' own epoch counter: the manifest must agree with it.
    assert manifest.checkpoints.best.epoch == _ultralytics_checkpoint_epoch(weights / "best.pt")
    assert manifest.checkpoints.last.epoch == _ultralytics_checkpoint_epoch(weights / "last.pt") == epochs[-1][0]
    rows = stack.promote({epoch: value for epoch, value, _ in epochs})
    assert rows[manifest.checkpoints.best.epoch] == stack.uri("best")
