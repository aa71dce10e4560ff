"""The ports of the promotion: what it needs from the object store and the database, as interfaces.

``ckpt.adapters.storage.S3Storage`` and ``ckpt.adapters.db.store.PromotionStore`` are the adapters that implement
them; tests wrap them to inject failures. Nothing here imports boto3 or SQLAlchemy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol, TypeVar

from ckpt.contract.keys import JobRef
from ckpt.contract.outcome import Outcome
from ckpt.contract.rules import JobSnapshot, JobState

T = TypeVar("T")


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    # Hex SHA-256 of the whole object when the store keeps one (an upload that sent x-amz-checksum-sha256
    # in one part); None for multipart uploads (their checksum is a checksum of checksums) and stores
    # that keep none.
    sha256: str | None
    # Hex MD5 of the bytes when the ETag is one (single-request objects without KMS or customer keys).
    md5: str | None
    # The store's full-object CRC-64/NVME (base64), e.g. of a multipart upload made with one.
    crc64nvme: str | None
    metadata: Mapping[str, str]


@dataclass(frozen=True)
class CopiedObject:
    """What the store says of a copy it just made: only evidence that describes the copy itself."""

    key: str
    size: int | None  # None when the store's answer to the copy did not say
    sha256: str | None  # computed by the store over the copied bytes (never a checksum copied from the source)
    md5: str | None  # the destination's ETag, when that ETag is a content MD5
    version_id: str | None = None  # the version the copy wrote, in a versioned bucket


@dataclass(frozen=True)
class StreamedDigests:
    """Digests of an object's bytes as they streamed by."""

    sha256: str
    md5: str
    length: int


class Storage(Protocol):
    """What the promotion needs from the object store (``ckpt.adapters.storage.S3Storage``)."""

    def head(self, key: str) -> ObjectInfo: ...
    def read(self, key: str, max_bytes: int) -> bytes: ...
    def stream_digests(self, key: str, etag: str) -> StreamedDigests: ...
    def copy(self, source: ObjectInfo, dest_key: str, metadata: Mapping[str, str]) -> CopiedObject: ...
    def list_folders(self, prefix: str) -> list[str]: ...
    def exists(self, key: str) -> bool: ...


class JobTransaction(Protocol):
    """The database side of one promotion, inside the job's lock (``ckpt.adapters.db.store.JobTransaction``)."""

    def snapshot(self) -> JobSnapshot: ...
    def write(self, outcome: Outcome, paths: Mapping[int, str] | None = None, state: JobState | None = None) -> int: ...


class Store(Protocol):
    """What the promotion needs from the database (``ckpt.adapters.db.store.PromotionStore``)."""

    def job(self, job: JobRef) -> AbstractContextManager[JobTransaction]: ...
    def record(self, outcome: Outcome) -> int: ...


class Calls(Protocol):
    """How independent calls are made (``ckpt.adapters.threads.ThreadedCalls``: at the same time)."""

    def all(self, calls: Sequence[Callable[[], T]]) -> list[T]: ...


class InOrder:
    """Calls made one after the other: what a promotion built without a ``Calls`` does."""

    def all(self, calls: Sequence[Callable[[], T]]) -> list[T]:
        return [call() for call in calls]
