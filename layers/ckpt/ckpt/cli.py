"""``ckpt``: the command-line tool for trainers and operators.

    ckpt db upgrade                      create or upgrade the service's own tables
    ckpt db current                      show the schema revision
    ckpt reprocess --job-id 42 [--project-id 7] [--attempt 2] [--dry-run]
    ckpt history [--job-id 42]           recorded outcomes, newest first
    ckpt stage --job-id 42 [--project-id 7] --weights-dir runs/job_42/weights --status interrupted
               [--best-epoch 18] [--last-epoch 20] [--attempt 2]
    ckpt fetch --job-id 42 [--project-id 7] [--which last|best] [-o runs/job_42/weights/]

Settings come from the environment (see README: CHECKPOINT_BUCKET, DATABASE_URL, …); ``--database-url``
overrides DATABASE_URL.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import get_args

from sqlalchemy.exc import SQLAlchemyError

from ckpt.adapters.db import migrate
from ckpt.adapters.db.store import PromotionStore
from ckpt.config import Settings
from ckpt.contract.keys import MAX_ID, AttemptRef, JobRef, parse_id
from ckpt.contract.manifest import Metric, TrainerStatus
from ckpt.contract.outcome import Status
from ckpt.errors import ConfigurationError, Rejected, TransientError
from ckpt.promotion.promoted import NotPromoted
from ckpt.service import build_promoter, engine_from_settings, s3_client
from ckpt.trainer.fetch import fetch_checkpoint
from ckpt.trainer.staging import resolve_attempt
from ckpt.trainer.training import stage_weights
from ckpt.trainer.upload import UploadPolicy


def _read_secret(arn: str) -> str:
    import boto3

    return str(boto3.client("secretsmanager").get_secret_value(SecretId=arn)["SecretString"])


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
    if args.command == "fetch":
        return _fetch(args, settings)
    engine = engine_from_settings(settings, _read_secret)
    if args.command == "db":
        if args.db_command == "upgrade":
            migrate.upgrade(engine)
        print(f"schema revision {migrate.current_revision(engine)} (newest {migrate.head_revision()})")
        return 0
    if args.command == "history":
        rows = PromotionStore(engine).history(args.job_id, args.limit)
        for row in rows:
            print(json.dumps(row, default=str))
        return 0
    promoter = build_promoter(settings, engine, _read_secret)
    job = JobRef(job_id=args.job_id, project_id=args.project_id)
    outcome = promoter.reprocess(job, args.attempt, dry_run=args.dry_run)
    print(json.dumps(outcome.log_fields(), indent=2, default=str))
    return 0 if outcome.status in (Status.PROMOTED, Status.PLANNED, Status.DUPLICATE) else 1


def _fetch(args: argparse.Namespace, settings: Settings) -> int:
    """The promoted checkpoint as the database records it (the record the API and a resumed training read too)."""
    job = JobRef(job_id=args.job_id, project_id=args.project_id)
    engine = engine_from_settings(settings, _read_secret)
    client = s3_client(settings, _read_secret)
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
    client = s3_client(settings, _read_secret)
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


if __name__ == "__main__":
    sys.exit(main())
