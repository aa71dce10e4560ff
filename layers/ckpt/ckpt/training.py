"""Stage checkpoints however training ends: the API a training script wraps around its training call.

    from ckpt.training import TrainingRun

    with TrainingRun(project_id=7, job_id=42, weights_dir="runs/job_42/weights") as run:
        for epoch in range(1, epochs + 1):
            value = train_and_validate(epoch)
            is_best = run.report(epoch, value)       # record the epoch, then save what it says
            torch.save(state, "runs/job_42/weights/last.pt")
            if is_best:
                torch.save(state, "runs/job_42/weights/best.pt")

On leaving the block, normally or through KeyboardInterrupt, SIGTERM or any exception, whichever of
best.pt and last.pt exist are uploaded to the attempt's staging folder and then the manifest is written with
the status, epochs, metric and error. The exception (or signal) then goes on as it would have: the process
exits exactly as it would without this block. An upload failure is retried, then logged loudly and returned
in ``run.result``; it never raises into the training script.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from ckpt.config import Settings
from ckpt.errors import StorageUnavailable
from ckpt.keys import CHECKPOINT_NAMES, AttemptRef, CheckpointName, JobRef, Layout
from ckpt.manifest import Manifest, Metric, Status
from ckpt.staging import Checkpoint, next_attempt, stage_attempt
from ckpt.storage import make_client
from ckpt.tracking import EpochTracker
from ckpt.upload import Uploaded, Uploader, UploadPolicy

log = logging.getLogger(__name__)


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM, so the training call unwinds like on Ctrl+C.
    A BaseException, like KeyboardInterrupt, so ``except Exception`` in training code does not swallow it."""


def ending(exc: BaseException | None) -> tuple[Status, str | None]:
    """How a run ended, from what left the ``with`` block."""
    if exc is None:
        return "completed", None
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", "KeyboardInterrupt"
    if isinstance(exc, Terminated):
        return "interrupted", "SIGTERM"
    if isinstance(exc, SystemExit) and exc.code in (0, None):
        return "completed", None
    return "failed", f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class StageResult:
    ref: AttemptRef
    status: Status
    manifest: Manifest | None  # None when staging failed
    error: str | None  # why staging failed
    seconds: float  # time spent staging at the end of training

    @property
    def ok(self) -> bool:
        return self.manifest is not None


def stage_weights(
    client: Any,
    layout: Layout,
    ref: AttemptRef,
    weights_dir: Path | None,
    status: Status,
    epochs: Mapping[CheckpointName, int | None],
    *,
    policy: UploadPolicy | None = None,
    already_staged: Mapping[CheckpointName, Uploaded] | None = None,
    **manifest_fields: Any,
) -> Manifest:
    """Stage whichever of best.pt and last.pt exist in ``weights_dir`` (none is fine: the manifest still
    says how the job ended). Raises ``StorageUnavailable`` when the store keeps failing."""
    files = {
        name: Checkpoint(path, epoch=epochs.get(name))
        for name in CHECKPOINT_NAMES
        if weights_dir is not None and (path := Path(weights_dir) / f"{name}.pt").is_file()
    }
    return stage_attempt(
        client, layout, ref, status, files, policy=policy, already_staged=already_staged, **manifest_fields
    )


class TrainingRun:
    def __init__(
        self,
        *,
        job_id: int,
        project_id: int | None = None,
        weights_dir: str | Path | None = None,
        attempt: int | None = None,
        metric: Metric | None = None,
        backup_every_minutes: float | None = None,
        settings: Settings | None = None,
        client: Any = None,
        policy: UploadPolicy | None = None,
        handle_sigterm: bool = True,
    ) -> None:
        """``attempt``: explicit, else CKPT_ATTEMPT, else one more than the highest staged (see
        ``ckpt.staging.next_attempt``). ``backup_every_minutes``: re-stage last.pt in the background at most
        that often (off by default), so a job killed with SIGKILL still leaves a recent last.pt in staging.
        Settings (bucket, endpoint, prefixes) come from the environment unless given."""
        self.job = JobRef(job_id=job_id, project_id=project_id)
        self.weights_dir = Path(weights_dir) if weights_dir is not None else None
        self.metric = metric
        self.tracker = EpochTracker(mode=metric.mode if metric else "max")
        self.result: StageResult | None = None
        self._attempt = attempt
        self._backup_minutes = backup_every_minutes
        self._settings = settings
        self._client = client
        self._policy = policy
        self._handle_sigterm = handle_sigterm
        self._previous_sigterm: Any = None
        self._backup: _Backup | None = None
        self.ref: AttemptRef | None = None
        self.layout: Layout | None = None

    # --- the training loop's side ----------------------------------------------------------------------

    def report(self, epoch: int, value: float | None = None, *, is_best: bool | None = None) -> bool:
        """Record a finished epoch and its metric; returns whether it is the new best."""
        return self.tracker.report(epoch, value, is_best=is_best)

    # --- context manager ---------------------------------------------------------------------------------

    def __enter__(self) -> TrainingRun:
        settings = self._settings or Settings.from_env(os.environ)
        self.layout = settings.layout()
        if self._client is None:
            self._client = make_client(settings.endpoint_url)
        attempt = self._attempt or _int_env("CKPT_ATTEMPT") or next_attempt(self._client, self.layout, self.job)
        self.ref = AttemptRef(job=self.job, attempt=attempt)
        log.info("staging checkpoints of %s as attempt %d", self.job, attempt)
        if self._handle_sigterm:
            self._install_sigterm()
        if self._backup_minutes:
            self._backup = _Backup(self, self._backup_minutes * 60)
            self._backup.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._handle_sigterm:
            self._ignore_sigterm_while_staging()
        try:
            self.result = self.stage(*ending(exc))
        finally:
            if self._handle_sigterm:
                self._restore_sigterm()
        if isinstance(exc, Terminated):
            # Die of SIGTERM as the process would have without us (or run the handler it had).
            signal.raise_signal(signal.SIGTERM)

    def stage(self, status: Status, error: str | None) -> StageResult:
        assert self.ref is not None and self.layout is not None, "use TrainingRun as a context manager"
        started = time.monotonic()
        already = self._backup.stop() if self._backup else {}
        epochs: dict[CheckpointName, int | None] = {
            "best": self.tracker.best_epoch,
            "last": self.tracker.last_epoch,
        }
        try:
            manifest = stage_weights(
                self._client,
                self.layout,
                self.ref,
                self.weights_dir,
                status,
                epochs,
                policy=self._policy,
                already_staged=already,
                metric=self.metric,
                error=error,
            )
        except (StorageUnavailable, OSError) as failure:
            result = StageResult(self.ref, status, None, str(failure), time.monotonic() - started)
            log.error(
                "checkpoints of %s were NOT staged: %s. They are still in %s; stage them later with: %s",
                self.job,
                failure,
                self.weights_dir,
                self._stage_command(status, epochs),
            )
            return result
        result = StageResult(self.ref, status, manifest, None, time.monotonic() - started)
        log.info(
            "staged %s (%s) in %.1f s: %s",
            self.layout.attempt_folder(self.ref),
            status,
            result.seconds,
            ", ".join(manifest.checkpoints.present()) or "no checkpoints",
        )
        return result

    def _stage_command(self, status: Status, epochs: Mapping[CheckpointName, int | None]) -> str:
        assert self.ref is not None
        parts = ["ckpt stage"]
        if self.job.project_id is not None:
            parts.append(f"--project-id {self.job.project_id}")
        parts += [f"--job-id {self.job.job_id}", f"--attempt {self.ref.attempt}"]
        parts += [f"--weights-dir {self.weights_dir}", f"--status {status}"]
        parts += [f"--{name}-epoch {epoch}" for name, epoch in epochs.items() if epoch is not None]
        return " ".join(parts)

    # --- SIGTERM ---------------------------------------------------------------------------------------

    def _install_sigterm(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            self._handle_sigterm = False  # signals are only delivered to the main thread
            return
        previous = signal.getsignal(signal.SIGTERM)
        if previous is signal.SIG_IGN:
            self._handle_sigterm = False  # the process chose to ignore SIGTERM; so do we
            return
        self._previous_sigterm = previous

        def raise_terminated(signum: int, frame: FrameType | None) -> None:
            raise Terminated("SIGTERM")

        signal.signal(signal.SIGTERM, raise_terminated)

    def _ignore_sigterm_while_staging(self) -> None:
        # A second SIGTERM must not abort the upload it asked for; SIGKILL still ends everything.
        signal.signal(signal.SIGTERM, lambda signum, frame: log.warning("SIGTERM again while staging; continuing"))

    def _restore_sigterm(self) -> None:
        signal.signal(signal.SIGTERM, self._previous_sigterm)


def _int_env(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


class _Backup(threading.Thread):
    """Re-stages last.pt every ``interval`` seconds when it changed, from a snapshot, without a manifest."""

    def __init__(self, run: TrainingRun, interval: float) -> None:
        super().__init__(name="ckpt-backup", daemon=True)
        self._run = run
        self._interval = interval
        self._stopping = threading.Event()
        self._staged: tuple[tuple[int, int], Uploaded] | None = None  # (mtime_ns, size) of what is staged
        self.backups = 0

    def run(self) -> None:
        while not self._stopping.wait(self._interval):
            try:
                self.backup_once()
            except Exception as exc:  # a backup failure must never reach training
                log.warning("background backup of last.pt failed: %s", exc)

    def backup_once(self) -> None:
        run = self._run
        assert run.ref is not None and run.layout is not None
        if run.weights_dir is None or not (path := run.weights_dir / "last.pt").is_file():
            return
        signature = _signature(path)
        if self._staged and self._staged[0] == signature:
            return
        with tempfile.TemporaryDirectory() as tmp:
            snapshot = Path(tmp) / "last.pt"
            shutil.copyfile(path, snapshot)
            if _signature(path) != signature:
                return  # written while we copied: take it next time
            uploaded = Uploader(run._client, run.layout.bucket, replace(run._policy or UploadPolicy(), progress=False))
            staged = uploaded.upload(snapshot, run.layout.staged_key(run.ref, "last"), label="last.pt backup")
        self._staged = (signature, staged)
        self.backups += 1
        log.info("backed up last.pt (%d bytes) to staging", staged.size)

    def stop(self) -> dict[CheckpointName, Uploaded]:
        """Stop, wait for an upload in flight, and say what staging already holds, if still current."""
        self._stopping.set()
        self.join()
        run = self._run
        if self._staged and run.weights_dir is not None:
            path = run.weights_dir / "last.pt"
            if path.is_file() and _signature(path) == self._staged[0]:
                return {"last": self._staged[1]}
        return {}


def _signature(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size
