"""Uploads a trainer can trust: the digests are computed in the same pass that reads the file and sent
with the bytes so the store verifies them; large files go up in parts, several at once, with bounded memory;
transient failures are retried with backoff (botocore's standard retry mode, see ``storage.make_client``);
a progress bar shows on a terminal and stays quiet elsewhere.

Small files (up to ``multipart_threshold``) are one PutObject carrying ``x-amz-checksum-sha256``: the store
then keeps the file's own SHA-256, which the promotion reads instead of hashing again. Larger files are a
multipart upload with a full-object CRC-64/NVME (each part carries its own CRC-64/NVME, the completion the
whole file's), which S3 and R2 both keep and verify: the promotion compares it with the manifest's and never
reads the bytes. SHA-256 part checksums are not used: R2 answers them with 501 NotImplemented. Without
``awscrt`` (the ``trainer`` extra) parts carry a CRC32 instead, and the promotion hashes the file itself.
All parts but the last have the same size (R2 refuses anything else).
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ckpt.adapters.profiles import S3, StorageProfile
from ckpt.adapters.storage import MiB, translated_errors
from ckpt.trainer.checksums import FileDigests, crc32_b64, crc64nvme_available, crc64nvme_of


@dataclass(frozen=True)
class UploadPolicy:
    multipart_threshold: int = 64 * MiB
    part_size: int = 16 * MiB  # memory in use is at most part_size * (concurrency + 1)
    concurrency: int = 4
    progress: bool | None = None  # None: a bar only when stderr is a terminal
    profile: StorageProfile | None = None  # None: S3's (TrainingRun and the CLI set the configured one)


@dataclass(frozen=True)
class Uploaded:
    key: str
    size: int
    sha256: str
    parts: int  # 0 for a single PutObject
    crc64nvme: str | None = None  # base64, when awscrt is installed


def part_size_for(size: int, policy: UploadPolicy, profile: StorageProfile) -> int:
    """The policy's part size, grown so the file fits the store's part count; refused beyond its part size."""
    part_size = max(policy.part_size, -(-size // profile.max_parts))
    if part_size > profile.max_part_bytes:
        raise ValueError(f"{size} bytes do not fit in {profile.max_parts} parts of at most {profile.max_part_bytes}")
    return part_size


class Uploader:
    def __init__(self, client: Any, bucket: str, policy: UploadPolicy | None = None) -> None:
        self._s3 = client
        self.bucket = bucket
        self.policy = policy or UploadPolicy()
        self.profile = self.policy.profile or S3

    def upload(self, source: Path | bytes, key: str, *, label: str | None = None) -> Uploaded:
        """Store ``source`` at ``key``; raises ``StorageUnavailable`` when the store keeps failing.
        The size and digest recorded are those of the bytes read, whatever the file does meanwhile."""
        size = source.stat().st_size if isinstance(source, Path) else len(source)
        with _progress(label or key.rsplit("/", 1)[-1], size, self.policy.progress) as advance, _opened(source) as f:
            if size <= self.policy.multipart_threshold:
                return self._single(f, key, advance)
            return self._multipart(f, key, size, advance)

    def _single(self, f: IO[bytes], key: str, advance: Callable[[int], None]) -> Uploaded:
        data = f.read()
        digests = FileDigests()
        digests.update(data)
        with translated_errors(key):
            self._s3.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentLength=len(data),
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=digests.sha256_b64,
                Metadata={"sha256": digests.sha256},
            )
        advance(len(data))  # one request: the bar moves when the store has confirmed it
        return Uploaded(key=key, size=len(data), sha256=digests.sha256, parts=0, crc64nvme=digests.crc64nvme)

    def _multipart(self, f: IO[bytes], key: str, size: int, advance: Callable[[int], None]) -> Uploaded:
        full_object = crc64nvme_available()
        algorithm = "CRC64NVME" if full_object else "CRC32"
        with translated_errors(key):
            upload_id = self._s3.create_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                ChecksumAlgorithm=algorithm,
                **({"ChecksumType": "FULL_OBJECT"} if full_object else {}),
            )["UploadId"]
        digests = FileDigests()
        read = 0
        part_size = part_size_for(size, self.policy, self.profile)
        in_flight = threading.BoundedSemaphore(self.policy.concurrency)
        futures: list[Future[dict[str, Any]]] = []
        try:
            with ThreadPoolExecutor(max_workers=self.policy.concurrency) as pool:
                number = 0
                while chunk := f.read(part_size):
                    number += 1
                    digests.update(chunk)  # the file's digests, in the pass that reads it for the parts
                    read += len(chunk)
                    in_flight.acquire()
                    future = pool.submit(self._part, key, upload_id, number, chunk, algorithm, advance)
                    future.add_done_callback(lambda _: in_flight.release())
                    futures.append(future)
                    if any(fut.done() and fut.exception() for fut in futures):
                        break
                wait(futures, return_when=FIRST_EXCEPTION)
            parts = [future.result() for future in futures]  # re-raises the first failure
            whole = {"ChecksumCRC64NVME": digests.crc64nvme, "ChecksumType": "FULL_OBJECT"} if full_object else {}
            with translated_errors(key):
                self._s3.complete_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}, **whole
                )
        except BaseException:
            with translated_errors(key):
                self._s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            raise
        return Uploaded(key=key, size=read, sha256=digests.sha256, parts=len(parts), crc64nvme=digests.crc64nvme)

    def _part(
        self, key: str, upload_id: str, number: int, chunk: bytes, algorithm: str, advance: Callable[[int], None]
    ) -> dict[str, Any]:
        checksum = {f"Checksum{algorithm}": crc64nvme_of(chunk) if algorithm == "CRC64NVME" else crc32_b64(chunk)}
        with translated_errors(key):
            response = self._s3.upload_part(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=chunk,
                ChecksumAlgorithm=algorithm,
                **checksum,
            )
        advance(len(chunk))
        return {"PartNumber": number, "ETag": response["ETag"], **checksum}


@contextmanager
def _opened(source: Path | bytes) -> Iterator[IO[bytes]]:
    if isinstance(source, Path):
        with source.open("rb") as f:
            yield f
    else:
        yield io.BytesIO(source)


@contextmanager
def _progress(label: str, total: int, enabled: bool | None) -> Iterator[Callable[[int], None]]:
    try:
        from tqdm import tqdm
    except ImportError:  # the `trainer` extra is not installed: upload without a bar
        yield lambda n: None
        return

    lock = threading.Lock()
    # disable=None: tqdm shows the bar only when its stream is a terminal
    with tqdm(total=total, desc=label, unit="B", unit_scale=True, unit_divisor=1024, disable=_disable(enabled)) as bar:

        def advance(n: int) -> None:
            with lock:
                bar.update(n)

        yield advance


def _disable(enabled: bool | None) -> bool | None:
    return None if enabled is None else not enabled
