"""The object-store adapter (boto3, S3-compatible: AWS S3, Cloudflare R2, moto).

It speaks in keys, ETags and hex SHA-256 digests and raises the domain errors of ``ckpt.errors``;
the promotion logic never sees botocore.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import random
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from ckpt.adapters.profiles import S3, StorageProfile
from ckpt.errors import ObjectChanged, ObjectMissing, StorageUnavailable
from ckpt.promotion.ports import CopiedObject, ObjectInfo, StreamedDigests
from ckpt.setting_values import whole_number

MiB = 1024 * 1024
HASH_CHUNK_BYTES = 8 * MiB  # memory used by the streaming hash, whatever the file's size


def make_client(
    endpoint_url: str | None = None,
    region: str | None = None,
    credentials: Mapping[str, str] | None = None,
    max_attempts: int = 5,
) -> Any:
    """An S3 client that works against AWS S3 and R2 alike.

    R2 rejects the CRC checksums boto3 adds to every request since 1.36 unless told to send them only
    when an operation requires one; R2's region is ``auto``.
    """
    # AWS_MAX_ATTEMPTS, the standard variable, when set (attempts in all, as AWS counts them)
    attempts = whole_number("AWS_MAX_ATTEMPTS", os.environ.get("AWS_MAX_ATTEMPTS"), max_attempts, 1, 20)
    config = Config(
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"mode": "standard", "total_max_attempts": attempts},  # attempts in all, as AWS_MAX_ATTEMPTS counts
        connect_timeout=10,
        read_timeout=60,
    )
    credentials = credentials or {}
    client = boto3.client(
        "s3",
        endpoint_url=endpoint_url or None,
        region_name=region or None,
        config=config,
        aws_access_key_id=credentials.get("aws_access_key_id"),
        aws_secret_access_key=credentials.get("aws_secret_access_key"),
    )
    client.meta.events.register_first("needs-retry.s3", _retry_too_many_requests(attempts))  # type: ignore[arg-type]
    return client


def _retry_too_many_requests(max_attempts: int) -> Callable[..., float | None]:
    """Retry HTTP 429 with jittered exponential backoff. botocore's standard mode retries throttling only by
    error code (SlowDown, …); R2 answers a second write to one key within a second with a bare 429."""

    def needs_retry(response: Any = None, attempts: int = 1, **_: Any) -> float | None:
        if response is None or response[0].status_code != 429 or attempts >= max_attempts:
            return None  # botocore's own retry rules decide
        return float(min(20.0, 0.5 * 2 ** (attempts - 1)) * random.uniform(0.5, 1.0))

    return needs_retry


@contextmanager
def translated_errors(key: str) -> Iterator[None]:
    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in {"NoSuchKey", "404", "NotFound"} or status == 404:
            raise ObjectMissing(key) from exc
        if code in {"PreconditionFailed", "412"} or status == 412:
            raise ObjectChanged(f"{key} changed while it was being promoted") from exc
        raise StorageUnavailable(f"{code or status} on {key}: {error.get('Message', exc)}") from exc
    except BotoCoreError as exc:
        raise StorageUnavailable(f"{type(exc).__name__} on {key}: {exc}") from exc


def _base64_hex(value: str) -> str | None:
    try:
        return base64.b64decode(value, validate=True).hex()
    except (binascii.Error, ValueError):
        return None


def _sha256_hex(response: Mapping[str, Any]) -> str | None:
    """The whole object's SHA-256 from a HEAD response, or None when the store has none to offer.

    A multipart object's checksum is a checksum of its parts' checksums. S3 marks it (ChecksumType
    COMPOSITE, a '-N' suffix) but not every S3-compatible store does, so a multipart ETag ('…-N') rules the
    store's checksum out too, and the bytes are hashed instead."""
    checksum = response.get("ChecksumSHA256")
    if not checksum or response.get("ChecksumType") == "COMPOSITE" or "-" in checksum:
        return None
    if "-" in response.get("ETag", ""):
        return None
    return _base64_hex(checksum)


def _crc64nvme(response: Mapping[str, Any]) -> str | None:
    """The object's full-object CRC-64/NVME from a HEAD response. S3 defines CRC-64/NVME as full-object
    only; a value marked COMPOSITE or carrying a '-N' part count is refused all the same."""
    checksum = response.get("ChecksumCRC64NVME")
    if not checksum or "-" in checksum or response.get("ChecksumType") not in (None, "FULL_OBJECT"):
        return None
    return str(checksum)


# Server-side encryption with KMS keys or customer keys gives objects ETags that are not their MD5.
_OPAQUE_ETAG_ENCRYPTION = frozenset({"aws:kms", "aws:kms:dsse"})


def _content_md5(etag: str | None, response: Mapping[str, Any]) -> str | None:
    """The object's MD5 (hex) when its ETag is one, else None.

    S3 documents when that is so: an object written in one request (PUT, POST or copy), unencrypted or with
    SSE-S3, has the MD5 of its bytes as ETag; a multipart ETag ('…-N') and the ETags of SSE-KMS and SSE-C
    objects are not content hashes. R2 follows the same rule for single-request objects."""
    value = (etag or "").strip('"').lower()
    if len(value) != 32 or any(c not in "0123456789abcdef" for c in value):
        return None
    if response.get("ServerSideEncryption") in _OPAQUE_ETAG_ENCRYPTION or response.get("SSECustomerAlgorithm"):
        return None
    return value


def _copy_sha256(result: Mapping[str, Any], requested: bool) -> str | None:
    """The SHA-256 the store computed over the bytes it copied, or None.

    Only a checksum the copy request asked for is one the store computed for this object: without
    x-amz-checksum-algorithm, S3 copies the source's checksum (a checksum of parts, for a multipart source,
    unmarked by some stores), and R2 has been seen to report a destination checksum that does not describe
    the copied body. A composite value ('-N', or ChecksumType COMPOSITE) is never the file's SHA-256."""
    checksum = result.get("ChecksumSHA256")
    if not requested or not checksum or "-" in checksum:
        return None
    if result.get("ChecksumType") not in (None, "FULL_OBJECT"):
        return None
    return _base64_hex(checksum)


class S3Storage:
    """One bucket of an S3-compatible store, used within the limits its ``profile`` documents."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        *,
        profile: StorageProfile = S3,
        multipart_copy_threshold: int | None = None,
        multipart_chunksize: int | None = None,
        max_concurrency: int = 8,
    ) -> None:
        self._s3 = client
        self.bucket = bucket
        self.profile = profile
        # One CopyObject up to the store's single-request limit: one request, conditional on the source's
        # ETag everywhere, and (on S3) a checksum computed over the copy. Parts only beyond it.
        self.multipart_copy_threshold = multipart_copy_threshold or profile.max_copy_object_bytes
        self._transfer = TransferConfig(
            multipart_threshold=self.multipart_copy_threshold,
            multipart_chunksize=multipart_chunksize or min(64 * MiB, profile.max_part_bytes),
            max_concurrency=max_concurrency,
        )

    def head(self, key: str) -> ObjectInfo:
        with translated_errors(key):
            response = self._s3.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        return ObjectInfo(
            key=key,
            size=int(response["ContentLength"]),
            etag=response["ETag"],
            sha256=_sha256_hex(response),
            md5=_content_md5(response["ETag"], response),
            crc64nvme=_crc64nvme(response),
            metadata=response.get("Metadata", {}),
        )

    def read(self, key: str, max_bytes: int) -> bytes:
        """The object's first ``max_bytes + 1`` bytes (enough to tell it is too large)."""
        with translated_errors(key):
            try:
                response = self._s3.get_object(Bucket=self.bucket, Key=key, Range=f"bytes=0-{max_bytes}")
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "InvalidRange":
                    raise
                # No byte 0 to start a range at: the object is empty.
                response = self._s3.get_object(Bucket=self.bucket, Key=key)
            return bytes(response["Body"].read())

    def stream_digests(self, key: str, etag: str) -> StreamedDigests:
        """SHA-256, MD5 and length of exactly the version ``etag``, read in fixed-size chunks. The MD5 costs
        little more in the same pass and lets the copy be checked against the destination's ETag."""
        sha256 = hashlib.sha256()
        md5 = hashlib.md5(usedforsecurity=False)
        length = 0
        with translated_errors(key):
            response = self._s3.get_object(Bucket=self.bucket, Key=key, IfMatch=etag)
            for chunk in response["Body"].iter_chunks(HASH_CHUNK_BYTES):
                sha256.update(chunk)
                md5.update(chunk)
                length += len(chunk)
        return StreamedDigests(sha256=sha256.hexdigest(), md5=md5.hexdigest(), length=length)

    def copy(self, source: ObjectInfo, dest_key: str, metadata: Mapping[str, str]) -> CopiedObject:
        """Server-side copy of exactly the version ``source.etag``, and what the store says of the copy.

        Up to the profile's single-request limit this is one CopyObject (asking the store for a checksum of
        the copy where the profile allows it); above it, a multipart UploadPartCopy. What is reported comes
        from the store's answer to this copy, or from a HEAD of the destination when that answer says
        too little, and never includes a checksum the store merely copied from the source."""
        args = {
            "CopySource": {"Bucket": self.bucket, "Key": source.key},
            "Bucket": self.bucket,
            "Key": dest_key,
            "CopySourceIfMatch": source.etag,
            "Metadata": dict(metadata),
            "MetadataDirective": "REPLACE",
        }
        with translated_errors(source.key):
            if source.size > self.multipart_copy_threshold:
                extra = {name: value for name, value in args.items() if name not in {"CopySource", "Bucket", "Key"}}
                self._s3.copy(
                    CopySource=args["CopySource"],
                    Bucket=self.bucket,
                    Key=dest_key,
                    ExtraArgs=extra,
                    Config=self._transfer,
                )
                response: Mapping[str, Any] = {}
                if not self.profile.part_copy_conditions:
                    self._check_unchanged(source)
            else:
                algorithm = self.profile.copy_checksum_algorithm
                response = self._s3.copy_object(**args, **({"ChecksumAlgorithm": algorithm} if algorithm else {}))
        result = response.get("CopyObjectResult", {})
        sha256 = _copy_sha256(result, requested=self.profile.copy_checksum_algorithm is not None)
        if sha256 is not None:
            md5 = _content_md5(result.get("ETag"), response)
            return CopiedObject(key=dest_key, size=None, sha256=sha256, md5=md5, version_id=response.get("VersionId"))
        with translated_errors(dest_key):
            landed = self._s3.head_object(Bucket=self.bucket, Key=dest_key)
        return CopiedObject(
            key=dest_key,
            size=int(landed["ContentLength"]),
            sha256=None,  # the destination's checksum, if any, was copied, not computed: no evidence
            md5=_content_md5(landed["ETag"], landed),
            version_id=landed.get("VersionId"),
        )

    def _check_unchanged(self, source: ObjectInfo) -> None:
        """After a multipart copy on a store that ignores the parts' copy conditions: the source must still be
        the verified version, or the parts may mix two versions. The retry copies again; the database still
        names the previous promotion meanwhile."""
        now = self.head(source.key).etag
        if now != source.etag:
            raise ObjectChanged(f"{source.key} changed while it was being copied (ETag {source.etag} is now {now})")

    def list_folders(self, prefix: str) -> list[str]:
        """The immediate sub-folders of ``prefix`` (each ending in '/')."""
        folders: list[str] = []
        with translated_errors(prefix):
            paginator = self._s3.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
                folders.extend(item["Prefix"] for item in page.get("CommonPrefixes", []))
        return folders

    def exists(self, key: str) -> bool:
        try:
            self.head(key)
        except ObjectMissing:
            return False
        return True

    def delete(self, key: str, etag: str) -> None:
        """Delete ``key`` only while its current version is ``etag``: S3's conditional delete (If-Match) answers
        412 when it changed (raised as ``ObjectChanged``) and 404 when it is gone (``ObjectMissing``). In a
        versioned bucket this writes a delete marker; the bytes stay a noncurrent version until the lifecycle
        expires them. Callers compare the ETag from a HEAD first: a store that refuses the condition as
        501 NotImplemented is then asked again without it, the HEAD having checked the version; one that ignores
        it deletes on that check alone."""
        with translated_errors(key):
            try:
                self._s3.delete_object(Bucket=self.bucket, Key=key, IfMatch=etag)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "NotImplemented":
                    raise
                self._s3.delete_object(Bucket=self.bucket, Key=key)

    def create(self, key: str, body: bytes, content_type: str) -> bool:
        """Write ``key`` only if no object has it yet (``If-None-Match: *``, which S3 and R2 honour): True when
        written, False when an object was already there (412), and nothing was written. Of two writers racing
        on one key, the first wins; a plain PUT after it still replaces it. (The sweeper's manifests.)"""
        try:
            with translated_errors(key):
                self._s3.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType=content_type, IfNoneMatch="*")
        except ObjectChanged:  # translated from 412 PreconditionFailed: the key exists
            return False
        return True

    # --- listing (operations: backfill, migration, sweeper) ------------------------------------------------

    def list_objects(self, prefix: str) -> Iterator[ListedObject]:
        """Every object under ``prefix``, page by page (ListObjectsV2, 1,000 keys a request), in key order."""
        with translated_errors(prefix):
            paginator = self._s3.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    yield ListedObject(
                        key=item["Key"],
                        size=int(item["Size"]),
                        etag=item["ETag"],
                        last_modified=item["LastModified"],
                    )


@dataclass(frozen=True)
class ListedObject:
    """An object as a listing shows it (no checksum, no metadata: a HEAD tells those)."""

    key: str
    size: int
    etag: str
    last_modified: datetime  # with a time zone (UTC), as boto3 parses it
