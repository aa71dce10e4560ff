"""``ckpt fetch``: download a job's canonical checkpoint, verified, e.g. to resume training from last.pt."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ckpt.errors import ObjectMissing, Rejected
from ckpt.keys import CheckpointName, JobRef, Layout
from ckpt.storage import S3Storage


@dataclass(frozen=True)
class Fetched:
    path: Path
    size: int
    sha256: str
    uri: str


def fetch_checkpoint(client: Any, layout: Layout, job: JobRef, name: CheckpointName, dest: Path) -> Fetched:
    """Download ``name``.pt of ``job`` to ``dest`` (a file, or a folder to put ``name``.pt in).

    The bytes are hashed as they are written and must match the SHA-256 the promotion verified (kept in the
    canonical object's metadata); only then does the file appear at ``dest``, so a failed or tampered
    download never leaves a partial checkpoint behind.
    """
    storage = S3Storage(client, layout.bucket)
    key = layout.canonical_key(job, name)
    try:
        info = storage.head(key)
    except ObjectMissing:
        raise Rejected(f"{job} has no promoted {name}.pt ({layout.uri(key)})") from None
    expected = info.metadata.get("sha256") or info.sha256
    if not expected:
        raise Rejected(f"{layout.uri(key)} carries no SHA-256 to verify against; was it promoted by ckpt?")
    # A folder if it is one, or is written as one ("weights/") or has no file suffix ("weights").
    as_folder = dest.is_dir() or str(dest).endswith(os.sep) or not dest.suffix
    target = dest / f"{name}.pt" if as_folder else dest
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", delete=False) as tmp:
        try:
            streamed = storage.stream_digests(key, info.etag, sink=tmp.write)
            sha256, size = streamed.sha256, streamed.length
            tmp.flush()
            os.fsync(tmp.fileno())
        except BaseException:
            os.unlink(tmp.name)
            raise
    if sha256 != expected or size != info.size:
        os.unlink(tmp.name)
        raise Rejected(f"download of {layout.uri(key)} does not match: SHA-256 {sha256}, expected {expected}")
    os.replace(tmp.name, target)
    return Fetched(path=target, size=size, sha256=sha256, uri=layout.uri(key))
