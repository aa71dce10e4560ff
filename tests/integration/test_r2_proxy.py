"""tests/r2_proxy.py bites: each R2 rule it enforces, shown with raw boto3 calls through it to moto's server,
and, where it matters, the same call straight to moto for contrast."""

from __future__ import annotations

import base64
import hashlib
import io
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from ckpt.adapters.storage import make_client
from ckpt.trainer.checksums import crc32_b64, crc64nvme_of
from tests.e2e.local_stack import CREDENTIALS, REGION, moto_server
from tests.r2_proxy import MiB, R2Proxy

LIMIT = 8 * MiB  # the proxy's stand-in for R2's 5 GiB - 5 MiB
PART = 5 * MiB  # moto, like S3 and R2, wants every part but the last to be at least 5 MiB


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in CREDENTIALS.items():
            patch.setenv(name, value)
        with moto_server() as endpoint:
            yield endpoint


@pytest.fixture
def proxy(moto_endpoint: str) -> Iterator[R2Proxy]:
    with R2Proxy(moto_endpoint, max_upload_bytes=LIMIT) as running:
        yield running


@pytest.fixture
def s3(proxy: R2Proxy) -> Any:
    """A client configured like production, through the proxy, that does not retry (so nothing is hidden)."""
    return make_client(proxy.endpoint, REGION, max_attempts=1)


@pytest.fixture
def direct(moto_endpoint: str) -> Any:
    return make_client(moto_endpoint, REGION, max_attempts=1)


@pytest.fixture
def bucket(direct: Any) -> str:
    name = f"r2proxy-{uuid.uuid4().hex[:12]}"
    direct.create_bucket(Bucket=name)
    return name


def _error(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    response: Any = exc.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def _upload(s3: Any, bucket: str, key: str, sizes: list[int], **create: Any) -> tuple[str, list[dict[str, Any]]]:
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key, **create)["UploadId"]
    parts = []
    for number, size in enumerate(sizes, start=1):
        body = bytes([number]) * size
        etag = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body)["ETag"]
        parts.append({"PartNumber": number, "ETag": etag})
    return upload_id, parts


# --- 1. part checksums -----------------------------------------------------------------------------------

DATA = b"r2 part " * 128


@pytest.mark.parametrize(
    "checksum",
    [
        {"ChecksumSHA256": _b64(hashlib.sha256(DATA).digest())},
        {"ChecksumSHA1": _b64(hashlib.sha1(DATA).digest())},
        {"ChecksumAlgorithm": "SHA256"},  # botocore computes it and sends x-amz-checksum-sha256
    ],
    ids=["sha256", "sha1", "sdk-sha256"],
)
def test_a_sha_part_checksum_is_not_implemented(
    s3: Any, direct: Any, bucket: str, proxy: R2Proxy, checksum: dict[str, str]
) -> None:
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="model.pt")["UploadId"]
    with pytest.raises(ClientError) as exc:
        s3.upload_part(Bucket=bucket, Key="model.pt", UploadId=upload_id, PartNumber=1, Body=DATA, **checksum)
    assert _error(exc) == ("NotImplemented", 501)
    assert "not implemented" in exc.value.response["Error"]["Message"]
    assert direct.list_parts(Bucket=bucket, Key="model.pt", UploadId=upload_id).get("Parts", []) == []
    assert proxy.count("UploadPart") == 1


@pytest.mark.parametrize(
    "checksum",
    [
        {"ChecksumCRC32": crc32_b64(DATA)},
        {"ChecksumAlgorithm": "CRC32C"},
        {"ContentMD5": _b64(hashlib.md5(DATA).digest())},
        {"ChecksumCRC64NVME": crc64nvme_of(DATA)},
    ],
    ids=["crc32", "crc32c", "content-md5", "crc64nvme"],
)
def test_crc_and_md5_part_checksums_pass(s3: Any, direct: Any, bucket: str, checksum: dict[str, str]) -> None:
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="model.pt")["UploadId"]
    s3.upload_part(Bucket=bucket, Key="model.pt", UploadId=upload_id, PartNumber=1, Body=DATA, **checksum)
    parts = direct.list_parts(Bucket=bucket, Key="model.pt", UploadId=upload_id)["Parts"]
    assert [(part["PartNumber"], part["Size"]) for part in parts] == [(1, len(DATA))]


def test_a_crc64nvme_full_object_multipart_upload_passes(s3: Any, bucket: str) -> None:
    """R2 supports CRC64NVME with the FULL_OBJECT type on multipart uploads (release note 2025-07-03)."""
    first, last = b"\x01" * PART, b"\x02" * 1000
    upload_id = s3.create_multipart_upload(
        Bucket=bucket, Key="model.pt", ChecksumAlgorithm="CRC64NVME", ChecksumType="FULL_OBJECT"
    )["UploadId"]
    parts = []
    for number, body in enumerate((first, last), start=1):
        crc = crc64nvme_of(body)
        answer = s3.upload_part(
            Bucket=bucket, Key="model.pt", UploadId=upload_id, PartNumber=number, Body=body, ChecksumCRC64NVME=crc
        )
        parts.append({"PartNumber": number, "ETag": answer["ETag"], "ChecksumCRC64NVME": crc})
    whole = crc64nvme_of(first + last)
    s3.complete_multipart_upload(
        Bucket=bucket,
        Key="model.pt",
        UploadId=upload_id,
        MultipartUpload={"Parts": parts},
        ChecksumCRC64NVME=whole,
        ChecksumType="FULL_OBJECT",
    )
    head = s3.head_object(Bucket=bucket, Key="model.pt", ChecksumMode="ENABLED")
    assert (head["ContentLength"], head["ChecksumCRC64NVME"], head["ChecksumType"]) == (
        PART + 1000,
        whole,
        "FULL_OBJECT",
    )


@pytest.mark.parametrize(
    ("algorithm", "kind", "expected"),
    [
        ("CRC32", "FULL_OBJECT", ("NotImplemented", 501)),  # S3 has it, R2's table says ❌
        ("SHA256", "FULL_OBJECT", ("NotImplemented", 501)),
        ("CRC64NVME", "COMPOSITE", ("InvalidRequest", 400)),
    ],
)
def test_checksum_types_r2_lacks_are_refused_at_create(
    s3: Any, bucket: str, algorithm: str, kind: str, expected: tuple[str, int]
) -> None:
    with pytest.raises(ClientError) as exc:
        s3.create_multipart_upload(Bucket=bucket, Key="model.pt", ChecksumAlgorithm=algorithm, ChecksumType=kind)
    assert _error(exc) == expected


# --- 2. CopyObject checksum -------------------------------------------------------------------------------


def test_copy_object_with_a_checksum_algorithm_is_not_implemented(s3: Any, direct: Any, bucket: str) -> None:
    direct.put_object(Bucket=bucket, Key="staging/best.pt", Body=DATA)
    source = {"Bucket": bucket, "Key": "staging/best.pt"}
    with pytest.raises(ClientError) as exc:
        s3.copy_object(Bucket=bucket, Key="checkpoints/best.pt", CopySource=source, ChecksumAlgorithm="SHA256")
    assert _error(exc) == ("NotImplemented", 501)
    assert (
        exc.value.response["Error"]["Message"]
        == "Header 'x-amz-checksum-algorithm' with value 'SHA256' not implemented"
    )
    with pytest.raises(ClientError):
        direct.head_object(Bucket=bucket, Key="checkpoints/best.pt")

    s3.copy_object(Bucket=bucket, Key="checkpoints/best.pt", CopySource=source)
    assert direct.get_object(Bucket=bucket, Key="checkpoints/best.pt")["Body"].read() == DATA


# --- 3. UploadPartCopy conditions ---------------------------------------------------------------------------


def test_upload_part_copy_ignores_copy_source_conditions(s3: Any, direct: Any, bucket: str, proxy: R2Proxy) -> None:
    direct.put_object(Bucket=bucket, Key="staging/best.pt", Body=DATA)
    stale = '"' + "0" * 32 + '"'
    source = {"Bucket": bucket, "Key": "staging/best.pt"}

    upload_id = direct.create_multipart_upload(Bucket=bucket, Key="checkpoints/best.pt")["UploadId"]
    with pytest.raises(ClientError) as exc:  # moto, like S3, honours the condition
        direct.upload_part_copy(
            Bucket=bucket,
            Key="checkpoints/best.pt",
            UploadId=upload_id,
            PartNumber=1,
            CopySource=source,
            CopySourceIfMatch=stale,
        )
    assert _error(exc) == ("PreconditionFailed", 412)

    # through the proxy, as on R2, the condition is ignored and the copy happens
    answer = s3.upload_part_copy(
        Bucket=bucket,
        Key="checkpoints/best.pt",
        UploadId=upload_id,
        PartNumber=1,
        CopySource=source,
        CopySourceIfMatch=stale,
        CopySourceIfUnmodifiedSince="2000-01-01T00:00:00Z",
    )
    assert answer["CopyPartResult"]["ETag"]
    assert proxy.stripped_headers == [
        (f"{bucket}/checkpoints/best.pt", "x-amz-copy-source-if-match"),
        (f"{bucket}/checkpoints/best.pt", "x-amz-copy-source-if-unmodified-since"),
    ]
    assert proxy.parts_of(upload_id) == {1: len(DATA)}


def test_copy_object_keeps_its_copy_source_condition(s3: Any, direct: Any, bucket: str) -> None:
    """R2 documents x-amz-copy-source-if-match for CopyObject: the proxy leaves it to moto."""
    direct.put_object(Bucket=bucket, Key="staging/best.pt", Body=DATA)
    with pytest.raises(ClientError) as exc:
        s3.copy_object(
            Bucket=bucket,
            Key="checkpoints/best.pt",
            CopySource={"Bucket": bucket, "Key": "staging/best.pt"},
            CopySourceIfMatch='"' + "0" * 32 + '"',
        )
    assert _error(exc) == ("PreconditionFailed", 412)


# --- 4. part sizes -----------------------------------------------------------------------------------------


def test_a_middle_part_of_another_size_is_refused_at_completion(s3: Any, direct: Any, bucket: str) -> None:
    upload_id, parts = _upload(s3, bucket, "model.pt", [PART + 1024, PART, 1024])
    with pytest.raises(ClientError) as exc:
        s3.complete_multipart_upload(
            Bucket=bucket, Key="model.pt", UploadId=upload_id, MultipartUpload={"Parts": parts}
        )
    assert _error(exc) == ("InvalidPart", 400)
    assert "All non-trailing parts must have the same size" in exc.value.response["Error"]["Message"]
    # moto alone would have taken it: the upload is still open, and completes when asked directly
    direct.complete_multipart_upload(
        Bucket=bucket, Key="model.pt", UploadId=upload_id, MultipartUpload={"Parts": parts}
    )


def test_equal_parts_and_a_smaller_last_complete(s3: Any, direct: Any, bucket: str, proxy: R2Proxy) -> None:
    upload_id, parts = _upload(s3, bucket, "model.pt", [PART, PART, 1024])
    assert proxy.parts_of(upload_id) == {1: PART, 2: PART, 3: 1024}
    s3.complete_multipart_upload(Bucket=bucket, Key="model.pt", UploadId=upload_id, MultipartUpload={"Parts": parts})
    assert direct.head_object(Bucket=bucket, Key="model.pt")["ContentLength"] == 2 * PART + 1024
    assert proxy.parts_of(upload_id) == {}


def test_a_last_part_larger_than_the_others_is_refused(s3: Any, bucket: str) -> None:
    upload_id, parts = _upload(s3, bucket, "model.pt", [PART, PART + 1])
    with pytest.raises(ClientError) as exc:
        s3.complete_multipart_upload(
            Bucket=bucket, Key="model.pt", UploadId=upload_id, MultipartUpload={"Parts": parts}
        )
    assert _error(exc) == ("InvalidPart", 400)


def test_copied_parts_are_sized_by_their_ranges(s3: Any, direct: Any, bucket: str) -> None:
    """UploadPartCopy moves no bytes through the client: the proxy sizes its parts from the ranges."""
    size = 2 * PART + 4096
    direct.put_object(Bucket=bucket, Key="staging/last.pt", Body=b"\x07" * size)
    source = {"Bucket": bucket, "Key": "staging/last.pt"}

    def copy(ranges: list[tuple[int, int]], key: str) -> tuple[str, list[dict[str, Any]]]:
        upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        parts = []
        for number, (first, last) in enumerate(ranges, start=1):
            answer = s3.upload_part_copy(
                Bucket=bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                CopySource=source,
                CopySourceRange=f"bytes={first}-{last}",
            )
            parts.append({"PartNumber": number, "ETag": answer["CopyPartResult"]["ETag"]})
        return upload_id, parts

    uneven, parts = copy([(0, PART + 99), (PART + 100, size - 1)], "uneven.pt")  # last part larger
    with pytest.raises(ClientError) as exc:
        s3.complete_multipart_upload(Bucket=bucket, Key="uneven.pt", UploadId=uneven, MultipartUpload={"Parts": parts})
    assert _error(exc) == ("InvalidPart", 400)

    even, parts = copy([(0, PART - 1), (PART, 2 * PART - 1), (2 * PART, size - 1)], "even.pt")
    s3.complete_multipart_upload(Bucket=bucket, Key="even.pt", UploadId=even, MultipartUpload={"Parts": parts})
    assert direct.head_object(Bucket=bucket, Key="even.pt")["ContentLength"] == size


def test_part_numbers_stop_at_the_limit(s3: Any, bucket: str) -> None:
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="model.pt")["UploadId"]
    with pytest.raises(ClientError) as exc:
        s3.upload_part(Bucket=bucket, Key="model.pt", UploadId=upload_id, PartNumber=10_001, Body=DATA)
    assert _error(exc) == ("InvalidArgument", 400)


# --- 5. size limits ----------------------------------------------------------------------------------------


def test_a_put_object_over_the_limit_is_entity_too_large(s3: Any, direct: Any, bucket: str) -> None:
    with pytest.raises(ClientError) as exc:  # bytes: sent without Expect, drained by the proxy
        s3.put_object(Bucket=bucket, Key="big.pt", Body=b"\0" * (LIMIT + 1))
    assert _error(exc) == ("EntityTooLarge", 400)
    with pytest.raises(ClientError) as exc:  # a file: botocore waits for 100 Continue, which never comes
        s3.put_object(Bucket=bucket, Key="big.pt", Body=io.BytesIO(b"\0" * (LIMIT + 1)))
    assert _error(exc) == ("EntityTooLarge", 400)
    assert direct.list_objects_v2(Bucket=bucket).get("KeyCount") == 0

    s3.put_object(Bucket=bucket, Key="fits.pt", Body=io.BytesIO(b"\0" * LIMIT))  # the same client goes on
    assert direct.head_object(Bucket=bucket, Key="fits.pt")["ContentLength"] == LIMIT


def test_a_part_over_the_limit_is_entity_too_large(s3: Any, direct: Any, bucket: str) -> None:
    direct.put_object(Bucket=bucket, Key="staging/huge.pt", Body=b"\0" * (LIMIT + 1))
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="model.pt")["UploadId"]
    with pytest.raises(ClientError) as exc:
        s3.upload_part(
            Bucket=bucket, Key="model.pt", UploadId=upload_id, PartNumber=1, Body=io.BytesIO(b"\0" * (LIMIT + 1))
        )
    assert _error(exc) == ("EntityTooLarge", 400)
    with pytest.raises(ClientError) as exc:
        s3.upload_part_copy(
            Bucket=bucket,
            Key="model.pt",
            UploadId=upload_id,
            PartNumber=1,
            CopySource={"Bucket": bucket, "Key": "staging/huge.pt"},
        )
    assert _error(exc) == ("EntityTooLarge", 400)


def test_copy_object_of_a_source_over_the_limit_is_refused(s3: Any, direct: Any, bucket: str) -> None:
    direct.put_object(Bucket=bucket, Key="staging/huge.pt", Body=b"\0" * (LIMIT + 1))
    with pytest.raises(ClientError) as exc:
        s3.copy_object(
            Bucket=bucket, Key="checkpoints/huge.pt", CopySource={"Bucket": bucket, "Key": "staging/huge.pt"}
        )
    assert _error(exc) == ("InvalidRequest", 400)
    assert exc.value.response["Error"]["Message"] == (
        f"The specified copy source is larger than the maximum allowable size for a copy source: {LIMIT}"
    )


# --- 6. one write per key per second --------------------------------------------------------------------------


def test_a_second_write_to_a_key_within_the_window_is_throttled(moto_endpoint: str, direct: Any, bucket: str) -> None:
    # a long window while the refusals are shown, so a slow machine cannot let one slip past it
    with R2Proxy(moto_endpoint, same_key_write_interval=60) as proxy:
        s3 = make_client(proxy.endpoint, REGION, max_attempts=1)
        s3.put_object(Bucket=bucket, Key="manifest.json", Body=b"{}")
        with pytest.raises(ClientError) as exc:
            s3.put_object(Bucket=bucket, Key="manifest.json", Body=b"{ }")
        assert _error(exc) == ("TooManyRequests", 429)
        s3.put_object(Bucket=bucket, Key="other.json", Body=b"{}")  # another key is not held back
        with pytest.raises(ClientError) as exc:
            s3.copy_object(Bucket=bucket, Key="manifest.json", CopySource={"Bucket": bucket, "Key": "other.json"})
        assert _error(exc) == ("TooManyRequests", 429)
        upload_id, parts = _upload(s3, bucket, "manifest.json", [1024])
        with pytest.raises(ClientError) as exc:
            s3.complete_multipart_upload(
                Bucket=bucket, Key="manifest.json", UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        assert _error(exc) == ("TooManyRequests", 429)
        assert direct.get_object(Bucket=bucket, Key="manifest.json")["Body"].read() == b"{}"
        assert [r.code for r in proxy.rejections] == ["TooManyRequests"] * 3

        proxy.same_key_write_interval = 0.3  # read on every write
        time.sleep(0.35)
        s3.put_object(Bucket=bucket, Key="manifest.json", Body=b'{"v": 2}')
        assert direct.get_object(Bucket=bucket, Key="manifest.json")["Body"].read() == b'{"v": 2}'


def test_the_write_window_can_be_turned_off(moto_endpoint: str, bucket: str) -> None:
    with R2Proxy(moto_endpoint, same_key_write_interval=None) as proxy:
        s3 = make_client(proxy.endpoint, REGION, max_attempts=1)
        for version in range(3):
            s3.put_object(Bucket=bucket, Key="manifest.json", Body=str(version).encode())
        assert proxy.rejections == []


# --- 7. counters -------------------------------------------------------------------------------------------------


def test_counters_see_requests_and_downloaded_bytes(s3: Any, direct: Any, bucket: str, proxy: R2Proxy) -> None:
    direct.put_object(Bucket=bucket, Key="staging/best.pt", Body=DATA)
    s3.head_object(Bucket=bucket, Key="staging/best.pt")
    s3.copy_object(Bucket=bucket, Key="checkpoints/best.pt", CopySource={"Bucket": bucket, "Key": "staging/best.pt"})
    assert proxy.bytes_downloaded == 0  # a server-side copy reads nothing through the client

    assert s3.get_object(Bucket=bucket, Key="checkpoints/best.pt")["Body"].read() == DATA
    assert s3.get_object(Bucket=bucket, Key="staging/best.pt", Range="bytes=0-9")["Body"].read() == DATA[:10]
    assert proxy.bytes_downloaded == len(DATA) + 10
    assert proxy.bytes_downloaded_by_key == {
        f"{bucket}/checkpoints/best.pt": len(DATA),
        f"{bucket}/staging/best.pt": 10,
    }
    assert {name: proxy.operations[name] for name in ("HeadObject", "CopyObject", "GetObject")} == {
        "HeadObject": 1,
        "CopyObject": 1,
        "GetObject": 2,
    }
    assert [(r.method, r.path, r.status) for r in proxy.requests] == [
        ("HEAD", f"/{bucket}/staging/best.pt", 200),
        ("PUT", f"/{bucket}/checkpoints/best.pt", 200),
        ("GET", f"/{bucket}/checkpoints/best.pt", 200),
        ("GET", f"/{bucket}/staging/best.pt", 206),
    ]

    proxy.reset_counters()
    assert (proxy.requests, proxy.bytes_downloaded, sum(proxy.operations.values())) == ([], 0, 0)


def test_everything_else_passes_through(s3: Any, bucket: str) -> None:
    key = "staging/projects/7/jobs/42/attempts/1/a key with spaces+plus.pt"
    s3.put_object(Bucket=bucket, Key=key, Body=DATA, Metadata={"epoch": "18"})
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="staging/")["Contents"]
    assert [(o["Key"], o["Size"]) for o in listed] == [(key, len(DATA))]
    assert s3.head_object(Bucket=bucket, Key=key)["Metadata"] == {"epoch": "18"}
    s3.delete_object(Bucket=bucket, Key=key)
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
