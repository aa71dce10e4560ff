"""Uploads a trainer can trust: the SHA-256 is computed in the same pass that reads the file and sent
with the bytes so the store verifies them; large files go up in parts, several at once, with bounded memory;
transient failures are retried with backoff (botocore's standard retry mode, see ``storage.make_client``);
a progress bar shows on a terminal and stays quiet elsewhere.

Small files (up to ``multipart_threshold``) are one PutObject carrying ``x-amz-checksum-sha256``: the store
then keeps the file's own SHA-256, which the promotion reads instead of hashing again. Larger files are a
multipart upload whose parts each carry their SHA-256; the whole file's digest goes in the manifest.
"""

from __future__ import annotations

import base64
import hashlib
import io
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ckpt.storage import MiB, translated_errors

MAX_PARTS = 10_000


@dataclass(frozen=True)
class UploadPolicy:
    multipart_threshold: int = 64 * MiB
    part_size: int = 16 * MiB  # memory in use is at most part_size * (concurrency + 1)
    concurrency: int = 4
    progress: bool | None = None  # None: a bar only when stderr is a terminal


@dataclass(frozen=True)
class Uploaded:
    key: str
    size: int
    sha256: str
    parts: int  # 0 for a single PutObject


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


class Uploader:
    def __init__(self, client: Any, bucket: str, policy: UploadPolicy | None = None) -> None:
        self._s3 = client
        self.bucket = bucket
        self.policy = policy or UploadPolicy()

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
        size = len(data)
        digest = hashlib.sha256(data)
        with translated_errors(key):
            self._s3.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentLength=size,
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=_b64(digest.digest()),
                Metadata={"sha256": digest.hexdigest()},
            )
        advance(size)  # one request: the bar moves when the store has confirmed it
        return Uploaded(key=key, size=size, sha256=digest.hexdigest(), parts=0)

    def _multipart(self, f: IO[bytes], key: str, size: int, advance: Callable[[int], None]) -> Uploaded:
        with translated_errors(key):
            upload_id = self._s3.create_multipart_upload(Bucket=self.bucket, Key=key, ChecksumAlgorithm="SHA256")[
                "UploadId"
            ]
        whole = hashlib.sha256()
        read = 0
        # S3 and R2 allow 10,000 parts: grow the part size for files beyond part_size * 10,000.
        part_size = max(self.policy.part_size, -(-size // MAX_PARTS))
        in_flight = threading.BoundedSemaphore(self.policy.concurrency)
        futures: list[Future[dict[str, Any]]] = []
        try:
            with ThreadPoolExecutor(max_workers=self.policy.concurrency) as pool:
                number = 0
                while chunk := f.read(part_size):
                    number += 1
                    whole.update(chunk)  # the file's digest, in the pass that reads it for the parts
                    read += len(chunk)
                    in_flight.acquire()
                    future = pool.submit(self._part, key, upload_id, number, chunk, advance)
                    future.add_done_callback(lambda _: in_flight.release())
                    futures.append(future)
                    if any(fut.done() and fut.exception() for fut in futures):
                        break
                wait(futures, return_when=FIRST_EXCEPTION)
            parts = [future.result() for future in futures]  # re-raises the first failure
            with translated_errors(key):
                self._s3.complete_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
                )
        except BaseException:
            with translated_errors(key):
                self._s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            raise
        return Uploaded(key=key, size=read, sha256=whole.hexdigest(), parts=len(parts))

    def _part(
        self, key: str, upload_id: str, number: int, chunk: bytes, advance: Callable[[int], None]
    ) -> dict[str, Any]:
        checksum = _b64(hashlib.sha256(chunk).digest())
        with translated_errors(key):
            response = self._s3.upload_part(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=chunk,
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=checksum,
            )
        advance(len(chunk))
        return {"PartNumber": number, "ETag": response["ETag"], "ChecksumSHA256": checksum}


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
