"""The object-store adapter (boto3, S3-compatible: AWS S3, Cloudflare R2, moto).

It speaks in keys, ETags and hex SHA-256 digests and raises the domain errors of ``ckpt.errors``;
the promotion logic never sees botocore.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from ckpt.errors import ObjectChanged, ObjectMissing, StorageUnavailable
from ckpt.ports import ObjectInfo

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
    config = Config(
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        # AWS_MAX_ATTEMPTS, the standard variable, wins over the default when set
        retries={"mode": "standard"}
        if "AWS_MAX_ATTEMPTS" in os.environ
        else {"mode": "standard", "max_attempts": max_attempts},
        connect_timeout=10,
        read_timeout=60,
    )
    credentials = credentials or {}
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url or None,
        region_name=region or None,
        config=config,
        aws_access_key_id=credentials.get("aws_access_key_id"),
        aws_secret_access_key=credentials.get("aws_secret_access_key"),
    )


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
    try:
        return base64.b64decode(checksum, validate=True).hex()
    except (binascii.Error, ValueError):
        return None


class S3Storage:
    """One bucket of an S3-compatible store."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        *,
        multipart_threshold: int = 256 * MiB,
        multipart_chunksize: int = 64 * MiB,
        max_concurrency: int = 8,
    ) -> None:
        self._s3 = client
        self.bucket = bucket
        self._transfer = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=multipart_chunksize,
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
            metadata=response.get("Metadata", {}),
        )

    def read(self, key: str, max_bytes: int) -> tuple[bytes, str]:
        """The object's first ``max_bytes + 1`` bytes (enough to tell it is too large) and its ETag."""
        with translated_errors(key):
            try:
                response = self._s3.get_object(Bucket=self.bucket, Key=key, Range=f"bytes=0-{max_bytes}")
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "InvalidRange":
                    raise
                # No byte 0 to start a range at: the object is empty.
                response = self._s3.get_object(Bucket=self.bucket, Key=key)
            return response["Body"].read(), response["ETag"]

    def stream_sha256(self, key: str, etag: str, sink: Callable[[bytes], object] | None = None) -> tuple[str, int]:
        """SHA-256 and length of exactly the version ``etag``, read in fixed-size chunks (each also handed
        to ``sink``, when given: a download hashes in the pass that writes it)."""
        digest = hashlib.sha256()
        length = 0
        with translated_errors(key):
            response = self._s3.get_object(Bucket=self.bucket, Key=key, IfMatch=etag)
            for chunk in response["Body"].iter_chunks(HASH_CHUNK_BYTES):
                digest.update(chunk)
                length += len(chunk)
                if sink is not None:
                    sink(chunk)
        return digest.hexdigest(), length

    def copy(self, source_key: str, source_etag: str, dest_key: str, metadata: Mapping[str, str]) -> ObjectInfo:
        """Server-side copy of exactly the version ``source_etag`` (CopyObject, or multipart
        UploadPartCopy above the threshold), then the destination as the store now reports it."""
        with translated_errors(source_key):
            self._s3.copy(
                CopySource={"Bucket": self.bucket, "Key": source_key},
                Bucket=self.bucket,
                Key=dest_key,
                ExtraArgs={
                    "CopySourceIfMatch": source_etag,
                    "Metadata": dict(metadata),
                    "MetadataDirective": "REPLACE",
                },
                Config=self._transfer,
            )
        return self.head(dest_key)

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
