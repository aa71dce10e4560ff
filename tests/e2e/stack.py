"""``make stack``: the embedded stack, kept running in the foreground, for a real training to point at.

    python -m tests.e2e.stack [--database-url URL] [--bucket NAME] [--sweep-every 30s] [--sweep-older-than 2m] [-v]

What runs, all on this machine (the pieces of ``tests/e2e/local_stack.py``):

- moto's standalone server (S3 and SQS over HTTP on loopback) holding the bucket, whose ``manifest.json``
  notification goes to an SQS queue, as ``template.yaml`` deploys it;
- the database: a fresh SQLite file (``.stack/ckpt.db``) unless ``--database-url`` (or ``DATABASE_URL``) names one;
  the service's tables are created or upgraded (``ckpt db upgrade``), and ``validation_results`` where it is missing;
- the loop Lambda runs for PromoteCheckpointsFunction: receive a batch from the queue, hand it to the real handler,
  delete what succeeded (a failed message comes back after its visibility timeout, 30 s);
- SweeperFunction's real handler on a short schedule (``--sweep-every``) with a short age (``--sweep-older-than``),
  so a training killed with SIGKILL is completed as ``abandoned`` within minutes instead of hours.

It prints the environment a trainer needs, then each outcome as the promotion records it and each attempt the
sweeper completes. Ctrl+C (or SIGTERM) stops it: the server stops, the database stays.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, inspect

from ckpt.adapters.db import migrate
from ckpt.adapters.db.engine import make_engine
from ckpt.adapters.db.schema import platform_metadata
from ckpt.adapters.db.store import PromotionStore
from ckpt.operations.sweep import format_duration, parse_duration
from tests.e2e.local_stack import CREDENTIALS, REGION, REPO_ROOT, Pipeline, moto_server
from tests.support import LambdaContext

DEFAULT_BUCKET = "vision-platform-prod"
READY = "ready: "  # the line that says the stack is listening (the smoke test waits for it)


class ScheduledContext(LambdaContext):
    """Lambda's context for a scheduled run: SweeperFunction's name, and the time its run has left."""

    def __init__(self, seconds: float = 900.0) -> None:
        super().__init__(
            function_name="SweeperFunction",
            invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:SweeperFunction",
        )
        self._deadline = time.monotonic() + seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def trainer_environment(pipeline: Pipeline, database_url: str) -> dict[str, str]:
    """What a trainer (and ``ckpt``) needs to stage into this stack; the database for ``resume=True`` and ``ckpt``."""
    return {
        "CHECKPOINT_BUCKET": pipeline.bucket,
        "AWS_S3_ENDPOINT_URL": pipeline.endpoint,
        "AWS_ACCESS_KEY_ID": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "AWS_DEFAULT_REGION": REGION,
        "DATABASE_URL": database_url,
    }


def prepare_database(database_url: str) -> Engine:
    """The service's tables (``ckpt db upgrade``), and the platform's ``validation_results`` where it is missing."""
    engine = make_engine(database_url)
    if "validation_results" not in inspect(engine).get_table_names():
        platform_metadata.create_all(engine)
    migrate.upgrade(engine)
    return engine


def outcome_line(record: dict[str, Any]) -> str:
    """One recorded outcome, as the stack shows it."""
    job = "" if record["job_id"] is None else f"job {record['job_id']} attempt {record['attempt']}: "
    line = f"{record['outcome']:<10} {job}{record['reason']} ({record['trigger']})"
    missing = (record.get("details") or {}).get("missing_rows") or []
    if missing:
        line += (
            f"\n           no validation_results row yet for epoch {', '.join(map(str, missing))}: the platform writes"
            " them; a re-delivery or `ckpt reprocess` then points them"
        )
    return line


class Stack:
    """The running stack: the queue loop, the sweeper's schedule, and what they print."""

    def __init__(
        self,
        pipeline: Pipeline,
        engine: Engine,
        *,
        sweep_every: timedelta,
        say: Callable[[str], None],
        verbose: bool = False,
    ) -> None:
        from promote_checkpoints import handler as promotion  # imported once the environment is the function's
        from sweeper import handler as sweeper

        self.pipeline = pipeline
        self.store = PromotionStore(engine)
        self.promotion = promotion
        self.sweeper = sweeper
        self.sweep_every = sweep_every
        self.say = say
        self.verbose = verbose
        self.last_record_id = max((row["id"] for row in self.store.history(limit=1)), default=0)
        self.next_sweep = time.monotonic() + sweep_every.total_seconds()

    def run_once(self) -> None:
        """One turn: a long poll of the queue (1 s), its batch to the handler, then the sweep when it is due."""
        messages = self.pipeline.receive(wait_seconds=1.0, expect=1)
        if messages:
            with self._function_output():
                answer = self.pipeline.deliver(self.promotion, messages)
            for failure in answer.get("batchItemFailures", []):
                self._say(f"retrying  message {failure['itemIdentifier']}: it failed and returns to the queue in 30 s")
        self._print_new_outcomes()
        if time.monotonic() >= self.next_sweep:
            self.next_sweep = time.monotonic() + self.sweep_every.total_seconds()
            with self._function_output():
                answer = self.sweeper.lambda_handler({}, ScheduledContext())
            for folder in answer["swept"]:
                self._say(f"sweeper    wrote the abandoned manifest of {folder}: its trainer died without one")
            if answer["failed"]:
                self._say(f"sweeper    {answer['failed']} folder(s) failed; the next sweep tries again")

    @contextmanager
    def _function_output(self) -> Iterator[None]:
        """The functions' metrics (EMF lines on stdout, the cold start's even with metrics disabled) are shown only
        with --verbose; their logs go through the logger at the level POWERTOOLS_LOG_LEVEL sets."""
        if self.verbose:
            yield
            return
        with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
            warnings.filterwarnings("ignore", message="No application metrics to publish")
            yield

    def _print_new_outcomes(self) -> None:
        rows = self.store.history(limit=100)
        for row in sorted((row for row in rows if row["id"] > self.last_record_id), key=lambda row: row["id"]):
            self._say(outcome_line(row))
            self.last_record_id = row["id"]

    def _say(self, line: str) -> None:
        self.say(f"[{datetime.now():%H:%M:%S}] {line}")


def serve(
    database_url: str,
    *,
    bucket: str = DEFAULT_BUCKET,
    sweep_every: timedelta = timedelta(seconds=30),
    sweep_older_than: timedelta = timedelta(minutes=2),
    verbose: bool = False,
    say: Callable[[str], None] = print,
) -> None:
    """Run the stack until interrupted (KeyboardInterrupt)."""
    with moto_server() as endpoint:
        pipeline = Pipeline(endpoint, bucket).create()
        engine = prepare_database(database_url)
        os.environ.update(pipeline.function_environment(database_url))
        os.environ.update(
            {
                "SWEEP_OLDER_THAN": f"{int(sweep_older_than.total_seconds())}s",
                "POWERTOOLS_LOG_LEVEL": "INFO" if verbose else "ERROR",
                "POWERTOOLS_METRICS_DISABLED": "false" if verbose else "true",
            }
        )
        stack = Stack(pipeline, engine, sweep_every=sweep_every, say=say, verbose=verbose)
        say(
            f"· moto S3 + SQS on {endpoint}: bucket {bucket}, its staging/…manifest.json notification → SQS → "
            "PromoteCheckpointsFunction"
        )
        say(f"· database {engine.url.render_as_string(hide_password=True)}")
        say(
            f"· SweeperFunction every {format_duration(sweep_every)}: attempts without a manifest, unchanged for "
            f"{format_duration(sweep_older_than)}, are completed as abandoned"
        )
        say("\nA trainer (or `ckpt`) on this machine needs:\n")
        for name, value in trainer_environment(pipeline, database_url).items():
            say(f"export {name}={value}")
        say(f"\n{READY}outcomes appear below as they are recorded; Ctrl+C stops the stack\n")
        while True:
            stack.run_once()


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL") or None)
    parser.add_argument("--bucket", default=DEFAULT_BUCKET)
    parser.add_argument("--sweep-every", type=parse_duration, default=timedelta(seconds=30))
    parser.add_argument("--sweep-older-than", type=parse_duration, default=timedelta(minutes=2))
    parser.add_argument("-v", "--verbose", action="store_true", help="the functions' JSON logs and metrics too")
    args = parser.parse_args(argv)
    database_url = args.database_url
    if database_url is None:
        folder = REPO_ROOT / ".stack"
        folder.mkdir(exist_ok=True)
        (folder / "ckpt.db").unlink(missing_ok=True)  # the store is new each run: so is its record
        database_url = f"sqlite:///{Path(folder / 'ckpt.db')}"
    # Ctrl+C and SIGTERM stop the stack, even when started with SIGINT ignored (a background job of a script).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)

    def say(line: str) -> None:
        print(line, flush=True)

    try:
        serve(
            database_url,
            bucket=args.bucket,
            sweep_every=args.sweep_every,
            sweep_older_than=args.sweep_older_than,
            verbose=args.verbose,
            say=say,
        )
    except KeyboardInterrupt:
        say("\nstopped: moto's server is down (its objects with it); the database is kept")
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
