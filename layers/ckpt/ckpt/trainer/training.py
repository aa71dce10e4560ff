"""Stage checkpoints however training ends: the API a training script wraps around its training call.

    from ckpt.trainer.training import TrainingRun

    with TrainingRun(project_id=7, job_id=42, weights_dir="runs/job_42/weights") as run:
        for epoch in range(1, epochs + 1):
            value = train_and_validate(epoch)
            with run.epoch_end(epoch, value) as is_best:   # Ctrl+C/SIGTERM wait until the block is done
                torch.save(state, "runs/job_42/weights/last.pt")
                if is_best:
                    torch.save(state, "runs/job_42/weights/best.pt")

On leaving the block, normally or through KeyboardInterrupt, SIGTERM or any exception, whichever of
best.pt and last.pt exist are uploaded to the attempt's staging folder and then the manifest is written with
the status, epochs, metric and error. The exception (or signal) then goes on as it would have: the process
exits exactly as it would without this block. An upload failure (or any other failure of the staging) is
retried where it can be, then logged loudly and returned in ``run.result``; it never raises into the training
script.

``resume=True`` starts the run from the job's promoted last.pt: the database's record says what that is
(``ckpt.promotion.promoted``, the record ``ckpt fetch`` and the checkpoint API read), the file is downloaded and checked
against the recorded SHA-256 before ``run.resumed`` names it, and the run stages as a new attempt. With nothing
promoted it starts fresh and logs so.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shlex
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from sqlalchemy import Engine

from ckpt.adapters.storage import HASH_CHUNK_BYTES, make_client
from ckpt.config import Settings
from ckpt.contract.keys import CHECKPOINT_NAMES, AttemptRef, CheckpointName, JobRef, Layout
from ckpt.contract.manifest import Manifest, Metric, Status
from ckpt.contract.rules import EpochMetric
from ckpt.errors import StorageUnavailable
from ckpt.promotion.promoted import CheckpointNotPromoted, NothingPromoted, PromotedJob, UnknownJob
from ckpt.service import engine_from_settings, read_secret
from ckpt.trainer.fetch import Fetched, fetch_checkpoint
from ckpt.trainer.staging import Checkpoint, resolve_attempt, stage_attempt
from ckpt.trainer.tracking import EpochTracker
from ckpt.trainer.upload import Uploaded, Uploader, UploadPolicy

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


@contextmanager
def deferred_signals(signums: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Hold Ctrl+C and SIGTERM until the block is done, then deliver them: a checkpoint write and the
    record of which epoch it holds happen together or not at all, and a file is never cut half-written."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals only reach the main thread; nothing to hold here
        return
    received: list[int] = []
    previous = {signum: signal.getsignal(signum) for signum in signums}
    for signum in signums:
        signal.signal(signum, lambda number, frame: received.append(number))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        for signum in dict.fromkeys(received):
            signal.raise_signal(signum)


@dataclass(frozen=True)
class StageResult:
    ref: AttemptRef | None  # None when not even the attempt could be chosen (store unreachable)
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
    files = {}
    for name in CHECKPOINT_NAMES:
        if weights_dir is None:
            break
        path = Path(weights_dir) / f"{name}.pt"
        if path.is_file():
            files[name] = Checkpoint(path, epoch=epochs.get(name))
        elif path.is_symlink() or path.exists():
            # Named like a checkpoint but unreadable as one (a folder, a broken link): say so, rather than
            # stage "no checkpoints" and lose it.
            raise OSError(f"{path} is not a readable file ({'a broken link' if path.is_symlink() else 'a folder'})")
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
        resume: bool = False,
        engine: Engine | None = None,
    ) -> None:
        """``attempt``: explicit, else CKPT_ATTEMPT, else one more than the highest staged (see
        ``ckpt.trainer.staging.next_attempt``). ``backup_every_minutes``: re-stage last.pt in the background at most
        that often (off by default), so a job killed with SIGKILL still leaves a recent last.pt in staging.
        ``resume``: start from the job's promoted last.pt (``run.resumed``), fetched and verified when the run
        starts; that needs the database (``engine``, else DATABASE_URL or DATABASE_SECRET_ARN), which holds the
        record of what is promoted. Settings (bucket, endpoint, prefixes) come from the environment unless
        given."""
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
        self._sigterm_received = False
        self._backup: _Backup | None = None
        self.ref: AttemptRef | None = None
        self.layout: Layout | None = None
        self._resume = resume
        self._engine = engine
        self._resume_folder: tempfile.TemporaryDirectory[str] | None = None
        # The promoted last.pt this run resumes from (downloaded and verified), or None (a fresh start).
        self.resumed: Fetched | None = None

    # --- the training loop's side ----------------------------------------------------------------------

    def report(self, epoch: int, value: float | None = None, *, is_best: bool | None = None) -> bool:
        """Record a finished epoch and its metric; returns whether it is the new best. Prefer
        ``epoch_end``, which also keeps a signal from landing between a save and its record."""
        return self.tracker.report(epoch, value, is_best=is_best)

    @contextmanager
    def epoch_end(self, epoch: int, value: float | None = None) -> Iterator[bool]:
        """Save the epoch's checkpoints inside this block; it yields whether the epoch is the new best.
        The epoch is recorded when the block completes, and Ctrl+C or SIGTERM arriving meanwhile waits for
        it, so the manifest never names an epoch other than the one in the file."""
        with deferred_signals():
            is_best = self.tracker.would_be_best(epoch, value)
            yield is_best
            self.tracker.report(epoch, value, is_best=is_best)

    # --- context manager ---------------------------------------------------------------------------------

    def __enter__(self) -> TrainingRun:
        settings = self._settings or Settings.from_env(os.environ)
        self.layout = settings.layout()
        policy = self._policy or UploadPolicy()
        self._policy = policy if policy.profile else replace(policy, profile=settings.profile())
        if self._client is None:
            self._client = make_client(settings.endpoint_url)
        if self._resume:
            # Before anything else: a failure here (database or store unreachable, a job id of another project)
            # ends the run before it trains, rather than training from scratch over the promoted progress.
            try:
                self.resumed = self._fetch_resume_point(settings)
            except BaseException:
                self._resume_ended()  # no __exit__ follows a failed __enter__
                raise
        try:
            self._resolve_ref()
        except Exception as exc:  # the store may be down now and back by the end of training
            log.warning("could not choose the attempt of %s yet (%s); trying again when staging", self.job, exc)
        if self._handle_sigterm:
            self._install_sigterm()
        if self._backup_minutes:
            self._backup = _Backup(self, self._backup_minutes * 60)
            self._backup.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        status, error = ending(exc)
        if status == "completed" and self._sigterm_received:
            status, error = "interrupted", "SIGTERM"  # the program's own handler stopped it gracefully
        try:
            if self._handle_sigterm:
                self._ignore_sigterm_while_staging()
            self.result = self.stage(status, error)
        finally:
            if self._handle_sigterm:
                self._restore_sigterm()
            self._resume_ended()
            if isinstance(exc, Terminated):
                # Die of SIGTERM as the process would have without us.
                signal.raise_signal(signal.SIGTERM)

    def _resolve_ref(self) -> AttemptRef:
        if self.ref is None:
            assert self.layout is not None, "use TrainingRun as a context manager"
            attempt = resolve_attempt(
                self._client, self.layout, self.job, self._attempt, os.environ.get("CKPT_ATTEMPT")
            )
            self.ref = AttemptRef(job=self.job, attempt=attempt)
            log.info("staging checkpoints of %s as attempt %d", self.job, attempt)
        return self.ref

    def stage(self, status: Status, error: str | None) -> StageResult:
        """Upload what exists, then the manifest. Never raises: the outcome is the returned result."""
        assert self.layout is not None, "use TrainingRun as a context manager"
        started = time.monotonic()
        epochs: dict[CheckpointName, int | None] = {
            "best": self.tracker.best_epoch,
            "last": self.tracker.last_epoch,
        }
        try:
            already = self._backup.stop() if self._backup else {}
            ref = self._resolve_ref()
            manifest = stage_weights(
                self._client,
                self.layout,
                ref,
                self._weights(),
                status,
                epochs,
                policy=self._policy,
                already_staged=already,
                metric=self.metric,
                error=error,
            )
        except Exception as failure:  # whatever went wrong, training must end as it would have
            log.error(
                "checkpoints of %s were NOT staged: %s: %s. They are still in %s; stage them later with: %s",
                self.job,
                type(failure).__name__,
                failure,
                self._weights() or "the weights folder",
                self._stage_command(status, epochs, error),
                exc_info=not isinstance(failure, OSError | StorageUnavailable),
            )
            return StageResult(
                self.ref, status, None, f"{type(failure).__name__}: {failure}", time.monotonic() - started
            )
        result = StageResult(ref, status, manifest, None, time.monotonic() - started)
        log.info(
            "staged %s (%s) in %.1f s: %s",
            self.layout.attempt_folder(ref),
            status,
            result.seconds,
            ", ".join(manifest.checkpoints.present()) or "no checkpoints",
        )
        return result

    def _weights(self) -> Path | None:
        """The folder holding best.pt and last.pt (integrations may find it late)."""
        return self.weights_dir

    # --- resume ------------------------------------------------------------------------------------------

    def _fetch_resume_point(self, settings: Settings) -> Fetched | None:
        """The promoted last.pt, downloaded and verified, or None (logged) when the record has none."""
        assert self.layout is not None
        engine = self._engine or engine_from_settings(settings, read_secret)
        destination = self._resume_to()
        local = _sha256_of(destination / "last.pt" if destination.is_dir() else destination)
        try:
            fetched = fetch_checkpoint(self._client, self.layout, engine, self.job, "last", destination)
        except (UnknownJob, NothingPromoted, CheckpointNotPromoted) as nothing:
            log.warning("resume: %s; starting fresh", nothing.reason)
            return None
        if local is not None and local != fetched.sha256:
            log.warning("resume: the local %s (SHA-256 %s) was replaced by the promoted last.pt", fetched.path, local)
        if not self._can_resume_from(fetched):
            return None
        self.tracker.reports.extend(resume_reports(fetched.promoted))
        record = fetched.checkpoint
        log.info(
            "resuming %s from its promoted last.pt: epoch %s of attempt %d, %s (SHA-256 %s verified)",
            self.job,
            "unknown" if record.epoch is None else record.epoch,
            record.attempt,
            fetched.path,
            fetched.sha256,
        )
        return fetched

    def _resume_to(self) -> Path:
        """Where the promoted last.pt goes: the weights folder's last.pt, as if this run had saved it, so a run
        stopped before its first epoch stages it again with its epoch; without a weights folder, a temporary one
        that lives as long as the run."""
        if self.weights_dir is not None:
            return self.weights_dir / "last.pt"
        return self._temporary_resume_folder()

    def _temporary_resume_folder(self) -> Path:
        self._resume_folder = tempfile.TemporaryDirectory(prefix=f"ckpt-resume-job-{self.job.job_id}-")
        return Path(self._resume_folder.name)

    def _can_resume_from(self, fetched: Fetched) -> bool:
        """Whether training can go on from ``fetched`` (integrations check their framework's own rules)."""
        return True

    def _resume_ended(self) -> None:
        if self._resume_folder is not None:
            self._resume_folder.cleanup()
            self._resume_folder = None

    def _stage_command(self, status: Status, epochs: Mapping[CheckpointName, int | None], error: str | None) -> str:
        parts = ["ckpt stage"]
        if self.job.project_id is not None:
            parts.append(f"--project-id {self.job.project_id}")
        parts.append(f"--job-id {self.job.job_id}")
        if self.ref is not None:
            parts.append(f"--attempt {self.ref.attempt}")
        parts += [f"--weights-dir {shlex.quote(str(self._weights() or '<weights folder>'))}", f"--status {status}"]
        parts += [f"--{name}-epoch {epoch}" for name, epoch in epochs.items() if epoch is not None]
        if self.metric is not None and self.metric.name:
            parts.append(f"--metric-name {shlex.quote(self.metric.name)} --metric-mode {self.metric.mode}")
        if error:
            parts.append(f"--error {shlex.quote(error)}")
        return " ".join(parts)

    # --- SIGTERM ---------------------------------------------------------------------------------------

    def _install_sigterm(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            self._handle_sigterm = False  # signals are only delivered to the main thread
            return
        previous = signal.getsignal(signal.SIGTERM)
        if previous is signal.SIG_IGN or previous is None:
            # Ignored on purpose, or handled outside Python: leave it exactly as it is.
            self._handle_sigterm = False
            return
        self._previous_sigterm = previous

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            self._sigterm_received = True
            if callable(previous):
                previous(signum, frame)  # the program's own handler decides how training stops
            else:
                raise Terminated("SIGTERM")

        signal.signal(signal.SIGTERM, on_sigterm)

    def _ignore_sigterm_while_staging(self) -> None:
        # A second SIGTERM must not abort the upload it asked for; SIGKILL still ends everything.
        signal.signal(signal.SIGTERM, lambda signum, frame: log.warning("SIGTERM again while staging; continuing"))

    def _restore_sigterm(self) -> None:
        signal.signal(signal.SIGTERM, self._previous_sigterm)


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
        weights = run._weights()
        if weights is None or not (path := weights / "last.pt").is_file():
            return
        ref = run._resolve_ref()
        assert run.layout is not None
        signature = _signature(path)
        if self._staged and self._staged[0] == signature:
            return
        with tempfile.TemporaryDirectory() as tmp:
            snapshot = Path(tmp) / "last.pt"
            shutil.copyfile(path, snapshot)
            if _signature(path) != signature:
                return  # written while we copied: take it next time
            uploaded = Uploader(run._client, run.layout.bucket, replace(run._policy or UploadPolicy(), progress=False))
            staged = uploaded.upload(snapshot, run.layout.staged_key(ref, "last"), label="last.pt backup")
        self._staged = (signature, staged)
        self.backups += 1
        log.info("backed up last.pt (%d bytes) to staging", staged.size)

    def stop(self) -> dict[CheckpointName, Uploaded]:
        """Stop, wait for an upload in flight, and say what staging already holds, if still current."""
        self._stopping.set()
        self.join()
        weights = self._run._weights()
        if self._staged and weights is not None:
            path = weights / "last.pt"
            if path.is_file() and _signature(path) == self._staged[0]:
                return {"last": self._staged[1]}
        return {}


def resume_reports(promoted: PromotedJob) -> list[EpochMetric]:
    """What a resumed run's tracker starts from: the promoted best and last epochs with their recorded metric,
    so a resumed epoch is "best" only when it beats the promoted best.pt (whose file the canonical key keeps),
    and a run stopped before its first epoch names the resumed last.pt by its epoch. Last comes last: it is the
    tracker's last epoch."""
    best, last = promoted.checkpoints.get("best"), promoted.checkpoints.get("last")
    reports = []
    if best is not None and best.epoch is not None and (last is None or last.epoch != best.epoch):
        reports.append(EpochMetric(epoch=best.epoch, value=best.metric_value))
    if last is not None and last.epoch is not None:
        reports.append(EpochMetric(epoch=last.epoch, value=last.metric_value))
    return reports


def _sha256_of(path: Path) -> str | None:
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _signature(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size
