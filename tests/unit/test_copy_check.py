"""The post-copy check and the store answers it may rest on: pure functions, no store."""

from __future__ import annotations

import base64
import hashlib

import pytest

from ckpt.adapters.storage import _content_md5, _copy_sha256
from ckpt.contract.manifest import CheckpointEntry
from ckpt.promotion.ports import CopiedObject, ObjectInfo
from ckpt.promotion.promoter import VerifiedFile, check_copy

DATA = b"checkpoint bytes"
SHA256 = hashlib.sha256(DATA).hexdigest()
MD5 = hashlib.md5(DATA).hexdigest()
OTHER = hashlib.sha256(b"other").hexdigest()


def verified(md5: str | None = MD5) -> VerifiedFile:
    source = ObjectInfo(
        key="staging/x/best.pt", size=len(DATA), etag='"e"', sha256=SHA256, md5=md5, crc64nvme=None, metadata={}
    )
    entry = CheckpointEntry(epoch=1, size=len(DATA), sha256=SHA256)
    return VerifiedFile(name="best", entry=entry, source=source, checksum_source="store", md5=md5)


def copied(size: int | None = None, sha256: str | None = None, md5: str | None = None) -> CopiedObject:
    return CopiedObject(key="checkpoints/x/best.pt", size=size, sha256=sha256, md5=md5)


@pytest.mark.parametrize(
    ("copy", "evidence"),
    [
        (copied(sha256=SHA256), ("sha256",)),
        (copied(size=len(DATA), md5=MD5), ("size", "md5")),
        (copied(size=len(DATA)), ("size",)),
        (copied(size=len(DATA), md5="0" * 32), None),
        (copied(size=len(DATA) + 1, md5=MD5), None),
        (copied(sha256=OTHER), None),
        (copied(), None),
    ],
    ids=["store-sha256", "size-and-etag", "size-only", "wrong-etag", "wrong-size", "wrong-sha256", "nothing"],
)
def test_a_copy_passes_only_on_evidence_that_describes_it(copy, evidence):
    check = check_copy(verified(), copy)
    assert (check.evidence if check.problem is None else None) == evidence


def test_an_etag_cannot_be_checked_when_the_files_md5_is_unknown():
    # a multipart source verified by its store checksum: no MD5 to hold the copy's ETag against
    check = check_copy(verified(md5=None), copied(size=len(DATA), md5="0" * 32))
    assert (check.problem, check.evidence) == (None, ("size",))


@pytest.mark.parametrize(
    ("etag", "headers", "md5"),
    [
        (f'"{MD5}"', {}, MD5),
        (f'"{MD5.upper()}"', {"ServerSideEncryption": "AES256"}, MD5),
        (f'"{MD5}-3"', {}, None),
        (f'"{MD5}"', {"ServerSideEncryption": "aws:kms"}, None),
        (f'"{MD5}"', {"ServerSideEncryption": "aws:kms:dsse"}, None),
        (f'"{MD5}"', {"SSECustomerAlgorithm": "AES256"}, None),
        ('"not-an-md5"', {}, None),
        (None, {}, None),
    ],
    ids=["plain", "sse-s3", "multipart", "sse-kms", "dsse-kms", "sse-c", "not-hex", "missing"],
)
def test_an_etag_is_taken_for_the_md5_only_where_s3_documents_it_is_one(etag, headers, md5):
    assert _content_md5(etag, headers) == md5


def b64(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


@pytest.mark.parametrize(
    ("result", "requested", "sha256"),
    [
        ({"ChecksumSHA256": b64(SHA256)}, True, SHA256),
        ({"ChecksumSHA256": b64(SHA256), "ChecksumType": "FULL_OBJECT"}, True, SHA256),
        ({"ChecksumSHA256": b64(SHA256)}, False, None),
        ({"ChecksumSHA256": b64(SHA256), "ChecksumType": "COMPOSITE"}, True, None),
        ({"ChecksumSHA256": b64(SHA256) + "-3"}, True, None),
        ({"ChecksumSHA256": "%%%"}, True, None),
        ({}, True, None),
    ],
    ids=["computed", "full-object", "not-requested-so-copied", "composite", "parts-suffix", "garbage", "absent"],
)
def test_only_a_checksum_the_copy_asked_the_store_to_compute_counts(result, requested, sha256):
    assert _copy_sha256(result, requested) == sha256
