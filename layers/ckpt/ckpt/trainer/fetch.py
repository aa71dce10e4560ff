"""``ckpt fetch``: download a job's promoted checkpoint, verified, e.g. to resume training from last.pt.

What is promoted, and the SHA-256 the bytes must have, come from the database's record
(``ckpt.promotion.promoted.read_promoted``, the same answer the checkpoint API and a resumed training get), never
from the object alone: a canonical key can hold bytes the record does not name yet while a promotion is copying over it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from ckpt.adapters.storage import HASH_CHUNK_BYTES, translated_errors
from ckpt.contract.keys import CheckpointName, JobRef, Layout
from ckpt.errors import ObjectMissing, Rejected
from ckpt.promotion.promoted import PromotedCheckpoint, PromotedJob, read_promoted

log = logging.getLogger(__name__)

# Pauses before reading the record again when the bytes downloaded are not the recorded ones: a promotion of
# the job copying over the key commits within seconds, and then the record names the new bytes.
RETRY_DELAYS_SECONDS = (0.5, 1.0, 2.0)


@dataclass(frozen=True)
class Fetched:
    path: Path
    size: int
    sha256: str
    uri: str
    name: CheckpointName
    promoted: PromotedJob  # the record the file was verified against

    @property
    def checkpoint(self) -> PromotedCheckpoint:
        """The file's own record: epoch, metric, attempt, when."""
        return self.promoted.checkpoints[self.name]


class _NotTheRecordedBytes(Exception):
    pass


def fetch_checkpoint(
    client: Any,
    layout: Layout,
    engine: Engine,
    job: JobRef,
    name: CheckpointName,
    dest: Path,
    *,
    retry_delays: Sequence[float] = RETRY_DELAYS_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
) -> Fetched:
    """Download the promoted ``name``.pt of ``job`` to ``dest`` (a file, or a folder to put ``name``.pt in).

    The bytes are hashed as they are written and must match the size and SHA-256 the database records for the
    promotion; only then does the file appear at ``dest``, so a failed or tampered download never leaves a partial
    checkpoint behind. Raises ``ckpt.promotion.promoted.NotPromoted`` when the record has no such checkpoint,
    ``Rejected`` when the store keeps serving other bytes than the recorded ones."""
    target = _target(dest, name)
    for delay in (*retry_delays, None):
        promoted = read_promoted(engine, layout, job)
        checkpoint = promoted.checkpoint(name)
        try:
            size, sha256 = _download_verified(client, layout.bucket, checkpoint, target)
        except _NotTheRecordedBytes as mismatch:
            if delay is None:
                raise Rejected(
                    f"download of {checkpoint.uri} does not match the promoted checkpoint: {mismatch}. If a "
                    f"promotion of {job} is running, try again once it is done"
                ) from None
            log.info("%s: %s; reading the record again in %.1f s", checkpoint.uri, mismatch, delay)
            sleep(delay)
            continue
        return Fetched(path=target, size=size, sha256=sha256, uri=checkpoint.uri, name=name, promoted=promoted)
    raise AssertionError("unreachable")  # the last pass either returns or raises


def _target(dest: Path, name: CheckpointName) -> Path:
    # A folder if it is one, or is written as one ("weights/") or has no file suffix ("weights").
    as_folder = dest.is_dir() or str(dest).endswith(os.sep) or not dest.suffix
    return dest / f"{name}.pt" if as_folder else dest


def _download_verified(client: Any, bucket: str, checkpoint: PromotedCheckpoint, target: Path) -> tuple[int, str]:
    target.parent.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", delete=False) as tmp:
        try:
            try:
                with translated_errors(checkpoint.key):
                    body = client.get_object(Bucket=bucket, Key=checkpoint.key)["Body"]
                    for chunk in body.iter_chunks(HASH_CHUNK_BYTES):
                        digest.update(chunk)
                        size += len(chunk)
                        tmp.write(chunk)
            except ObjectMissing:
                raise Rejected(f"the store has no {checkpoint.uri}, which the database records as promoted") from None
            tmp.flush()
            os.fsync(tmp.fileno())
            sha256 = digest.hexdigest()
            if (size, sha256) != (checkpoint.size, checkpoint.sha256):
                raise _NotTheRecordedBytes(
                    f"{size} bytes with SHA-256 {sha256}, recorded {checkpoint.size} bytes with {checkpoint.sha256}"
                )
        except BaseException:
            os.unlink(tmp.name)
            raise
    os.replace(tmp.name, target)
    return size, sha256
