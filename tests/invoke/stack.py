"""The local stack that ``events/env.json`` points a Lambda container at, and the example attempt an event names.

``events/env.json`` is the only statement of the function's settings: the container gets it as it is
(``sam local invoke --env-vars events/env.json``), and this module reads the same file to decide what to start.
Every address there is ``host.docker.internal:PORT``; for each, a forwarder on the Docker bridge's gateway hands
the container's connections to the service on the host's loopback:

- ``AWS_S3_ENDPOINT_URL``: moto's server (``tests/e2e/local_stack.py``, S3's copy conditions enforced) on a free
  loopback port, holding ``CHECKPOINT_BUCKET``;
- ``DATABASE_URL``: the host's PostgreSQL on the same port (no forwarder when it already listens on the bridge);
  its database (``ckpt_local``) is created when missing, and the host connects to it by the same URL with
  ``127.0.0.1`` for the host name.

``prepare(event)`` then plays the trainer and the platform for the attempts the event names (the manifest keys of
a notification, or the job of a reprocess request): the trainer's own code (``tests.support.Trainer``, i.e.
``ckpt.trainer.staging.stage_attempt``) stages ``best.pt`` (epoch 18), ``last.pt`` (epoch 20) and the manifest of a job
interrupted at epoch 20, and the platform's ``validation_results`` rows for epochs 1 to 20 are written.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Engine, insert, text
from sqlalchemy.engine import make_url

from ckpt.adapters.db.engine import make_engine
from ckpt.adapters.db.schema import validation_results
from ckpt.adapters.db.store import PromotionStore
from ckpt.adapters.storage import make_client
from ckpt.config import Settings
from ckpt.contract.keys import AttemptRef, CheckpointName, JobRef, Layout, LayoutError
from tests.e2e.demo import validation_curve
from tests.e2e.local_stack import CREDENTIALS, REGION, moto_server
from tests.invoke.forward import Forwarder
from tests.support import Trainer, reset_database

REPO_ROOT = Path(__file__).resolve().parents[2]
ENV_FILE = REPO_ROOT / "events" / "env.json"
CONTAINER_HOST = "host.docker.internal"
PROMOTION_FUNCTION = "PromoteCheckpointsFunction"
# The example job: interrupted at epoch 20, its best epoch 18 (the trainer's files say so, and the metric agrees).
EXAMPLE_JOB = JobRef(job_id=42, project_id=7)
LAST_EPOCH, BEST_EPOCH = 20, 18


class StackError(RuntimeError):
    pass


def function_settings(function: str = PROMOTION_FUNCTION) -> dict[str, str]:
    """The function's block of events/env.json: what the container gets."""
    document = json.loads(ENV_FILE.read_text())
    if function not in document:
        raise StackError(f"{ENV_FILE.relative_to(REPO_ROOT)} has no settings for {function}")
    return dict(document[function])


def docker_gateway() -> str:
    """The host's address on Docker's default bridge (docker0), where the container finds it."""
    found = subprocess.run(
        ["docker", "network", "inspect", "bridge", "--format", "{{json .}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if found.returncode != 0:
        raise StackError(f"cannot inspect Docker's bridge network (is dockerd running?): {found.stderr.strip()}")
    network = json.loads(found.stdout)
    for config in (network.get("IPAM") or {}).get("Config") or []:
        if config.get("Gateway"):
            return str(config["Gateway"])
    # The default bridge often states no gateway: it is the bridge interface's own address.
    interface = (network.get("Options") or {}).get("com.docker.network.bridge.name", "docker0")
    try:
        return _ipv4_of(interface)
    except OSError as exc:
        raise StackError(f"cannot find the address of Docker's bridge {interface}: {exc}") from exc


def _ipv4_of(interface: str) -> str:
    import fcntl
    import struct

    siocgifaddr = 0x8915
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        packed = fcntl.ioctl(sock.fileno(), siocgifaddr, struct.pack("256s", interface[:15].encode()))
    return socket.inet_ntoa(packed[20:24])


def _container_port(url: str, variable: str) -> int:
    parts = urlsplit(url)
    if parts.hostname != CONTAINER_HOST or parts.port is None:
        raise StackError(
            f"events/env.json: {variable} must name {CONTAINER_HOST}:PORT (the host as the container sees it), "
            f"got {url!r}"
        )
    return parts.port


@dataclass
class LocalStack:
    settings: Mapping[str, str]
    gateway: str
    endpoint: str  # moto's server, as the host reaches it
    database_url: str  # env.json's database, as the host reaches it
    s3: Any
    engine: Engine
    layout: Layout

    def reset(self) -> None:
        """An empty bucket and an empty database (the platform's table, then the service's by migration)."""
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass
        self.s3.create_bucket(Bucket=self.layout.bucket)
        reset_database(self.engine)

    def attempts_named_by(self, event: Any) -> list[AttemptRef]:
        """The attempts whose manifests the event announces (or a reprocess request names); the example
        attempt for an event that names none (a scheduled poll, an unreadable event)."""
        from promote_checkpoints import triggers

        named: list[AttemptRef] = []
        try:
            kind = triggers.kind_of(event)
            if kind == "reprocess":
                request = triggers.parse_reprocess(event)
                job = JobRef(job_id=request.job_id, project_id=request.project_id)
                named.append(AttemptRef(job=job, attempt=request.attempt or 1))
            else:
                bodies = [record.get("body") for record in event["Records"]] if kind == "sqs" else [None]
                for body in bodies:
                    announced = triggers.objects_in(event) if body is None else triggers.objects_in_body(body)
                    for item in announced:
                        if isinstance(item, triggers.ObjectCreated) and item.bucket == self.layout.bucket:
                            try:
                                named.append(self.layout.parse_manifest_key(item.key))
                            except LayoutError:
                                continue
        except triggers.UnrecognisedEvent:
            pass
        return list(dict.fromkeys(named)) or [AttemptRef(job=EXAMPLE_JOB, attempt=1)]

    def prepare(self, event: Any) -> list[AttemptRef]:
        """Stage the attempts the event names, as the trainer does, and write the platform's rows of their jobs."""
        refs = self.attempts_named_by(event)
        for job in dict.fromkeys(ref.job for ref in refs):
            self.add_epochs(job)
        trainer = Trainer(self.s3, self.layout)
        for ref in refs:
            trainer.finish(ref)  # best.pt (epoch 18), last.pt (epoch 20), then the manifest: interrupted
        return refs

    def promote(self, ref: AttemptRef) -> str:
        """Promote a staged attempt from this process (for the functions that read promotions, such as the
        checkpoint API); recorded with the trigger ``local-setup``. Returns the outcome."""
        from ckpt.adapters.storage import S3Storage
        from ckpt.promotion.promoter import Promoter

        promoter = Promoter(self.layout, S3Storage(self.s3, self.layout.bucket), PromotionStore(self.engine))
        outcome = promoter.promote_key(self.layout.bucket, self.layout.manifest_key(ref), trigger="local-setup")
        return f"{outcome.status}: {outcome.reason}"

    def add_epochs(self, job: JobRef) -> None:
        """The platform's validation_results of the job: epochs 1 to 20, mAP50-95 best at epoch 18."""
        curve = validation_curve(LAST_EPOCH, BEST_EPOCH)
        with self.engine.begin() as connection:
            connection.execute(validation_results.delete().where(validation_results.c.job_id == job.job_id))
            connection.execute(
                insert(validation_results),
                [{"job_id": job.job_id, "epoch": e, "primary_metric_value": v} for e, v in curve.items()],
            )

    def rows(self, job_id: int) -> list[tuple[int, float | None, str | None]]:
        return PromotionStore(self.engine).checkpoint_paths(job_id)

    def paths(self, job_id: int) -> dict[int, str]:
        """epoch → checkpoint_path of the job's rows that have one."""
        return {epoch: path for epoch, _, path in self.rows(job_id) if path}

    def records(self, job_id: int | None = None) -> list[dict[str, Any]]:
        """ckpt_promotions, oldest first."""
        return PromotionStore(self.engine).history(job_id, limit=1000)[::-1]

    def canonical(self, job: JobRef, name: CheckpointName) -> bytes | None:
        try:
            answer = self.s3.get_object(Bucket=self.layout.bucket, Key=self.layout.canonical_key(job, name))
        except self.s3.exceptions.NoSuchKey:
            return None
        return bytes(answer["Body"].read())

    def staged(self, ref: AttemptRef, name: CheckpointName) -> bytes:
        answer = self.s3.get_object(Bucket=self.layout.bucket, Key=self.layout.staged_key(ref, name))
        return bytes(answer["Body"].read())

    def table(self, job_id: int) -> str:
        """The job's validation_results as make demo prints them: ✓ on the rows that name an r2:// checkpoint."""
        lines = [f"validation_results of job {job_id}", f"{'epoch':>6}  {'mAP50-95':>8}  checkpoint"]
        for epoch, value, path in self.rows(job_id):
            mark = "✓" if path and path.startswith("r2://") else "·"
            metric = f"{value:>8.4f}" if value is not None else f"{'NULL':>8}"
            lines.append(f"{epoch:>6}  {metric}  {mark} {path or ''}".rstrip())
        return "\n".join(lines)


@contextmanager
def local_stack(function: str = PROMOTION_FUNCTION) -> Iterator[LocalStack]:
    """moto's server and the forwarders that events/env.json's addresses need, the database it names (created
    if missing), and the bucket; stopped on exit."""
    settings = function_settings(function)
    store_port = _container_port(settings.get("AWS_S3_ENDPOINT_URL", ""), "AWS_S3_ENDPOINT_URL")
    container_db = make_url(settings.get("DATABASE_URL") or "postgresql+pg8000://missing")
    db_port = _container_port(
        f"postgresql://{container_db.host}:{container_db.port or 5432}/", "DATABASE_URL (host and port)"
    )
    database_url = container_db.set(host="127.0.0.1", port=db_port).render_as_string(hide_password=False)
    gateway = docker_gateway()
    os.environ.update(CREDENTIALS)
    with ExitStack() as stack:
        endpoint = stack.enter_context(moto_server())
        moto_port = urlsplit(endpoint).port
        assert moto_port is not None
        stack.enter_context(Forwarder((gateway, store_port), ("127.0.0.1", moto_port)))
        if not _accepts(gateway, db_port):  # a PostgreSQL that listens on every address needs no forwarder
            stack.enter_context(Forwarder((gateway, db_port), ("127.0.0.1", db_port)))
        _create_database(database_url)
        engine = make_engine(database_url)
        stack.callback(engine.dispose)
        layout = Settings.from_env(settings).layout()
        s3 = make_client(endpoint, REGION)
        s3.create_bucket(Bucket=layout.bucket)
        yield LocalStack(settings, gateway, endpoint, database_url, s3, engine, layout)


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _create_database(url: str) -> None:
    """env.json's database on the host's server, created when missing (connecting to the server's ``postgres``)."""
    target = make_url(url)
    if not target.drivername.startswith("postgresql"):
        return
    admin = make_engine(target.set(database="postgres"))  # autocommit, as CREATE DATABASE needs
    try:
        with admin.connect() as connection:
            exists = connection.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": target.database}
            ).first()
            if not exists:
                connection.exec_driver_sql(f'CREATE DATABASE "{target.database}"')
    except Exception as exc:
        raise StackError(
            f"PostgreSQL is required at 127.0.0.1:{target.port or 5432} for events/env.json's DATABASE_URL "
            f"(make postgres starts the local one): {exc}"
        ) from exc
    finally:
        admin.dispose()
