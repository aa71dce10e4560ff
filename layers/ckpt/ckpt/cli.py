"""``ckpt``: the command-line tool for trainers and operators.

    ckpt db upgrade                      create or upgrade the service's own tables
    ckpt db current                      show the schema revision
    ckpt reprocess --job-id 42 [--project-id 7] [--attempt 2] [--dry-run]
    ckpt history [--job-id 42]           recorded outcomes, newest first
    ckpt stage --job-id 42 [--project-id 7] --weights-dir runs/job_42/weights --status interrupted
               [--best-epoch 18] [--last-epoch 20] [--attempt 2]
    ckpt fetch --job-id 42 [--project-id 7] [--which last|best] [-o runs/job_42/weights/]
    ckpt sweep [--older-than 6h] [--dry-run]   write the `abandoned` manifest of attempts that died without one
    ckpt backfill [--since 2d] [--dry-run]     promote every staged manifest that has no recorded outcome
    ckpt redrive [--dlq-url URL] [--queue-url URL] [--stack-name NAME] [--dry-run]
                                         move the dead-letter queue's messages back to the promotion queue
    ckpt migrate-local-paths [--dry-run] [--repromote]
                                         clear checkpoint_path values that are no r2:// URI (the seed's step 2)
    ckpt status --job-id 42 [--project-id 7] [--json]   epochs with ✓, promoted best/last, promotion history

Settings come from the environment (see README: CHECKPOINT_BUCKET, DATABASE_URL, …); ``--database-url``
overrides DATABASE_URL.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, get_args

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from ckpt.adapters.db import migrate
from ckpt.adapters.db.store import PromotionStore
from ckpt.adapters.storage import S3Storage
from ckpt.config import Settings
from ckpt.contract.keys import MAX_ID, AttemptRef, JobRef, parse_id
from ckpt.contract.manifest import Metric, TrainerStatus
from ckpt.contract.outcome import Status
from ckpt.errors import ConfigurationError, Rejected, TransientError
from ckpt.operations import backfill, local_paths, redrive, status
from ckpt.operations.sweep import DEFAULT_OLDER_THAN, Action, build_sweeper, parse_duration
from ckpt.promotion.promoted import NotPromoted
from ckpt.service import build_promoter, check_schema, engine_from_settings, read_secret, s3_client
from ckpt.trainer.fetch import fetch_checkpoint
from ckpt.trainer.staging import resolve_attempt
from ckpt.trainer.training import stage_weights
from ckpt.trainer.upload import UploadPolicy


def _id(text: str) -> int:
    """An id, attempt or epoch: plain decimal digits, as in the contract's keys (not "+7", "07", "4_2" or
    non-ASCII digits), from 1 to MAX_ID (the platform's 32-bit columns; epochs are 1-based)."""
    value = parse_id(text)
    if value is None:
        raise argparse.ArgumentTypeError(f"must be an integer from 1 to {MAX_ID} in plain digits, got {text!r}")
    return value


def _count(text: str) -> int:
    value = parse_id(text)
    if value is None:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _duration(text: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ckpt", description="Checkpoint promotion tool.")
    parser.add_argument("--database-url", help="SQLAlchemy URL; overrides DATABASE_URL")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    commands = parser.add_subparsers(dest="command", required=True)

    db = commands.add_parser("db", help="the service's own tables").add_subparsers(dest="db_command", required=True)
    db.add_parser("upgrade", help="create or upgrade the service's tables (never the platform's)")
    db.add_parser("current", help="print the current and the newest schema revision")

    reprocess = commands.add_parser("reprocess", help="re-run the promotion of a job's newest (or given) attempt")
    reprocess.add_argument("--project-id", type=_id, default=None, help="omit for test jobs")
    reprocess.add_argument("--job-id", type=_id, required=True)
    reprocess.add_argument("--attempt", type=_id, default=None)
    reprocess.add_argument("--dry-run", action="store_true", help="verify and show the plan; copy and write nothing")

    history = commands.add_parser("history", help="recorded promotion outcomes, newest first")
    history.add_argument("--job-id", type=_id, default=None)
    history.add_argument("--limit", type=_count, default=20)

    stage = commands.add_parser("stage", help="stage a run's best.pt/last.pt and write its manifest")
    stage.add_argument("--project-id", type=_id, default=None, help="omit for test jobs")
    stage.add_argument("--job-id", type=_id, required=True)
    stage.add_argument("--weights-dir", type=Path, required=True, help="the folder holding best.pt / last.pt")
    stage.add_argument("--status", choices=get_args(TrainerStatus), required=True)
    stage.add_argument("--attempt", type=_id, default=None, help="default: CKPT_ATTEMPT, else the next attempt")
    stage.add_argument("--best-epoch", type=_id, default=None, help="default: the database's best epoch")
    stage.add_argument("--last-epoch", type=_id, default=None, help="default: the database's highest epoch")
    stage.add_argument("--metric-name", default=None)
    stage.add_argument("--metric-mode", choices=["max", "min"], default="max")
    stage.add_argument("--error", default=None, help="what went wrong, for a failed run")
    stage.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)

    fetch = commands.add_parser(
        "fetch", help="download a job's promoted checkpoint (as the database records it), verified by its SHA-256"
    )
    fetch.add_argument("--project-id", type=_id, default=None, help="omit for test jobs")
    fetch.add_argument("--job-id", type=_id, required=True)
    fetch.add_argument("--which", choices=["last", "best"], default="last")
    fetch.add_argument("-o", "--output", type=Path, default=Path("."), help="a file, or a folder (default: .)")

    sweep = commands.add_parser(
        "sweep",
        help="complete attempts that died without a manifest: write their `abandoned` manifest, which is then "
        "promoted like any other",
    )
    sweep.add_argument(
        "--older-than",
        type=_duration,
        default=DEFAULT_OLDER_THAN,
        help="only folders unchanged for longer than this: 90s, 30m, 6h, 1h30m (default 6h; 0s: every folder "
        "without a manifest)",
    )
    sweep.add_argument("--dry-run", action="store_true", help="say what would be completed; write nothing")
    _add_repair_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    settings = Settings.from_env(os.environ)
    if args.database_url:
        settings = replace(settings, database_url=args.database_url)
    try:
        return _run(args, settings)
    except (ConfigurationError, Rejected, TransientError, OSError, ValueError) as exc:
        print(f"ckpt: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigurationError) else 1
    except SQLAlchemyError as exc:  # from the migrations, which talk to the database without the store
        cause = getattr(exc, "orig", None) or exc
        print(f"ckpt: database error: {type(cause).__name__}: {cause}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "stage":
        return _stage(args, settings)
    if args.command == "redrive":  # the queues only: no database
        return _redrive(args)
    if args.command == "fetch":
        return _fetch(args, settings)
    engine = engine_from_settings(settings, read_secret)
    if args.command == "db":
        if args.db_command == "upgrade":
            migrate.upgrade(engine)
        print(f"schema revision {migrate.current_revision(engine)} (newest {migrate.head_revision()})")
        return 0
    if args.command == "sweep":
        return _sweep(args, settings, engine)
    if args.command in _REPAIR_COMMANDS:
        return _REPAIR_COMMANDS[args.command](args, settings, engine)
    if args.command == "history":
        rows = PromotionStore(engine).history(args.job_id, args.limit)
        for row in rows:
            print(json.dumps(row, default=str))
        return 0
    promoter = build_promoter(settings, engine, read_secret)
    job = JobRef(job_id=args.job_id, project_id=args.project_id)
    outcome = promoter.reprocess(job, args.attempt, dry_run=args.dry_run)
    print(json.dumps(outcome.log_fields(), indent=2, default=str))
    return 0 if outcome.status in (Status.PROMOTED, Status.PLANNED, Status.DUPLICATE) else 1


def _sweep(args: argparse.Namespace, settings: Settings, engine: Engine) -> int:
    report = build_sweeper(settings, engine, read_secret).sweep(args.older_than, dry_run=args.dry_run)
    for result in report.results:
        print(result.line())
    print(report.summary())
    return 1 if report.count(Action.FAILED) else 0


def _fetch(args: argparse.Namespace, settings: Settings) -> int:
    """The promoted checkpoint as the database records it (the record the API and a resumed training read too)."""
    job = JobRef(job_id=args.job_id, project_id=args.project_id)
    engine = engine_from_settings(settings, read_secret)
    client = s3_client(settings, read_secret)
    try:
        fetched = fetch_checkpoint(client, settings.layout(), engine, job, args.which, args.output)
    except NotPromoted as exc:
        print(f"ckpt: {exc.reason}", file=sys.stderr)
        return 1
    record = fetched.checkpoint
    epoch = "unknown epoch" if record.epoch is None else f"epoch {record.epoch}"
    print(
        f"{fetched.uri} -> {fetched.path} ({epoch}, attempt {record.attempt}, {fetched.size} bytes, "
        f"sha256 {fetched.sha256}, verified)"
    )
    return 0


def _stage(args: argparse.Namespace, settings: Settings) -> int:
    client = s3_client(settings, read_secret)
    layout = settings.layout()
    job = JobRef(job_id=args.job_id, project_id=args.project_id)
    ref = AttemptRef(
        job=job, attempt=resolve_attempt(client, layout, job, args.attempt, os.environ.get("CKPT_ATTEMPT"))
    )
    if not args.weights_dir.is_dir():
        raise ConfigurationError(f"--weights-dir {args.weights_dir} is not a folder")
    manifest = stage_weights(
        client,
        layout,
        ref,
        args.weights_dir,
        args.status,
        {"best": args.best_epoch, "last": args.last_epoch},
        policy=UploadPolicy(progress=args.progress, profile=settings.profile()),
        metric=Metric(name=args.metric_name, mode=args.metric_mode) if args.metric_name else None,
        error=args.error,
    )
    staged = ", ".join(manifest.checkpoints.present()) or "no checkpoints"
    print(f"staged {staged} and {layout.manifest_key(ref)}")
    return 0


# --- backfill, redrive, migrate-local-paths, status (ckpt/operations/) -------------------------------------------


def _since(text: str) -> datetime:
    try:
        return backfill.parse_since(text, datetime.now(UTC))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_repair_commands(commands: Any) -> None:
    fill = commands.add_parser(
        "backfill",
        help="promote every staged manifest that has no recorded outcome (after an outage, or when the "
        "dead-letter queue's messages are gone)",
    )
    fill.add_argument(
        "--since",
        type=_since,
        default=None,
        help="only manifests written since: a duration back from now (2d, 6h, 1h30m) or an ISO date or time "
        "(2025-11-05, 2025-11-05T14:30:00Z; UTC without a zone)",
    )
    fill.add_argument("--dry-run", action="store_true", help="list them; promote nothing")
    fill.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="default: on a terminal")

    drive = commands.add_parser("redrive", help="move the dead-letter queue's messages back to the promotion queue")
    drive.add_argument("--dlq-url", help="the dead-letter queue (the stack's output PromotionDeadLetterQueueUrl)")
    drive.add_argument(
        "--queue-url",
        help="the promotion queue (output PromotionQueueUrl); default: the queue whose redrive policy names the DLQ",
    )
    drive.add_argument("--stack-name", help="read both URLs from this CloudFormation stack's outputs")
    drive.add_argument(
        "--method",
        choices=redrive.METHODS,
        default="auto",
        help="auto: SQS's message move task, else receive/send/delete (default auto)",
    )
    drive.add_argument("--dry-run", action="store_true", help="count the dead-letter queue's messages; move nothing")

    migrate_paths = commands.add_parser(
        "migrate-local-paths",
        help="clear validation_results.checkpoint_path values that are no r2:// URI (the old behaviour's local "
        "paths), in one recorded transaction; run with --dry-run first",
    )
    migrate_paths.add_argument("--dry-run", action="store_true", help="print the count per job and a sample")
    migrate_paths.add_argument(
        "--repromote", action="store_true", help="then re-promote the affected jobs whose staging holds a manifest"
    )
    migrate_paths.add_argument("--sample", type=_count, default=10, help="rows shown as a sample (default 10)")

    job_status = commands.add_parser(
        "status", help="a job's epochs (✓ on r2:// paths), its promoted best/last and its promotion history"
    )
    job_status.add_argument("--job-id", type=_id, required=True)
    job_status.add_argument("--project-id", type=_id, default=None, help="default: the project its record names")
    job_status.add_argument("--history", type=_count, default=status.DEFAULT_HISTORY, help="records shown")
    job_status.add_argument("--json", action="store_true", help="one JSON document, for scripts")


def _staging(settings: Settings) -> S3Storage:
    return S3Storage(s3_client(settings, read_secret), settings.bucket, profile=settings.profile())


def _backfill(args: argparse.Namespace, settings: Settings, engine: Engine) -> int:
    check_schema(PromotionStore(engine))
    plan = backfill.plan_backfill(_staging(settings), engine, settings.layout(), args.since)
    if args.dry_run:
        for manifest in plan.pending:
            print(f"{manifest.last_modified.isoformat()}  {manifest.key}")
        print(backfill.summary(plan, None) + " (dry run: nothing promoted)")
        return 0
    promoter = build_promoter(settings, engine, read_secret)

    def describe(result: backfill.BackfillResult) -> str:
        why = result.error if result.outcome is None else result.outcome.reason
        return f"{result.label:<10}  {result.manifest.key}  {why}"

    results = backfill.run_backfill(promoter, plan.pending, progress=args.progress, describe=describe)
    counts = backfill.tally(results)
    print(backfill.summary(plan, counts))
    return 1 if counts.get("failed") else 0


def _redrive(args: argparse.Namespace) -> int:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import NoRegionError

    try:
        if args.stack_name:
            urls = redrive.queue_urls_from_stack(boto3.client("cloudformation"), args.stack_name)
        elif args.dlq_url:
            urls = redrive.QueueUrls(dead_letter=args.dlq_url, queue=None)
        else:
            raise ConfigurationError(
                "give --dlq-url (and optionally --queue-url), or --stack-name: the stack's outputs "
                "PromotionDeadLetterQueueUrl and PromotionQueueUrl name them"
            )
        dead_letter = args.dlq_url or urls.dead_letter
        sqs = boto3.client(
            "sqs",
            region_name=redrive.region_of(dead_letter),  # None: the configured region
            config=Config(retries={"mode": "standard", "total_max_attempts": 3}),
        )
    except NoRegionError:
        raise ConfigurationError("no AWS region: set AWS_DEFAULT_REGION (or AWS_REGION)") from None
    queue = args.queue_url or urls.queue or redrive.source_queue(sqs, dead_letter)
    waiting = redrive.waiting_messages(sqs, dead_letter)
    if args.dry_run:
        print(f"{dead_letter} holds about {waiting} message(s); they would move to {queue} (dry run: none moved)")
        return 0
    report = redrive.redrive(sqs, dead_letter, queue, args.method)
    if report.note:
        print(report.note)
    for failure in report.failures:
        print(f"ckpt: {failure}", file=sys.stderr)
    print(f"moved {report.moved} message(s) from {dead_letter} to {queue} ({report.method})")
    return 0 if report.ok else 1


def _migrate_local_paths(args: argparse.Namespace, settings: Settings, engine: Engine) -> int:
    layout = settings.layout()
    plan = local_paths.plan_local_paths(engine, layout)
    for line in plan.describe(args.sample):
        print(line)
    if args.dry_run:
        if args.repromote:
            staged = local_paths.staged_jobs(_staging(settings), layout, plan.per_job)
            print("would re-promote (staging holds a manifest): " + (", ".join(map(str, staged)) or "none"))
        print("dry run: nothing changed")
        return 0
    cleared = local_paths.clear_local_paths(engine, layout)
    print(cleared.describe())
    if not args.repromote:
        return 0
    staged = local_paths.staged_jobs(_staging(settings), layout, cleared.plan.per_job)
    if not staged:
        print("re-promoted: none (no affected job's staging holds a manifest)")
        return 0
    results = local_paths.repromote(build_promoter(settings, engine, read_secret), staged)
    print("re-promoted:")
    for result in results:
        print(result.describe())
    return 1 if any(result.outcome is None for result in results) else 0


def _status(args: argparse.Namespace, settings: Settings, engine: Engine) -> int:
    answer = status.read_status(engine, settings.layout(), args.job_id, args.project_id, history=args.history)
    if args.json:
        print(json.dumps(status.as_json(answer), indent=2, ensure_ascii=False))
    else:
        print("\n".join(status.render(answer)))
    return 0 if answer.known else 1


_REPAIR_COMMANDS: dict[str, Callable[[argparse.Namespace, Settings, Engine], int]] = {
    "backfill": _backfill,
    "migrate-local-paths": _migrate_local_paths,
    "status": _status,
}


if __name__ == "__main__":
    sys.exit(main())
