"""The digests a trainer computes in the one pass that reads a checkpoint: SHA-256 (the file's identity)
and, where ``awscrt`` is installed (the ``trainer`` extra), CRC-64/NVME, the full-object checksum S3 and R2
keep for a multipart upload, which lets the function verify the stored bytes without reading them.

``awscrt`` is imported only here and only when a digest is made: botocore would otherwise load it (about
90 ms) in every process that imports it, the function's cold start included, and the function never
computes a CRC; it only compares the store's with the manifest's.
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from collections.abc import Callable
from functools import cache


@cache
def _crc64nvme() -> Callable[[bytes, int], int] | None:
    try:
        from awscrt.checksums import crc64nvme
    except ImportError:
        return None
    return crc64nvme  # type: ignore[no-any-return]


def crc64nvme_available() -> bool:
    return _crc64nvme() is not None


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def crc64nvme_b64(value: int) -> str:
    """A CRC-64/NVME as S3 and R2 write it: base64 of its 8 big-endian bytes."""
    return b64(value.to_bytes(8, "big"))


def crc32_b64(data: bytes) -> str:
    return b64(zlib.crc32(data).to_bytes(4, "big"))


def crc64nvme_of(data: bytes) -> str:
    crc = _crc64nvme()
    if crc is None:
        raise RuntimeError("awscrt is not installed: pip install 'ckpt-pipeline[trainer]'")
    return crc64nvme_b64(crc(data, 0))


class FileDigests:
    """Running SHA-256 and (when available) CRC-64/NVME of bytes fed in order."""

    def __init__(self) -> None:
        self._sha256 = hashlib.sha256()
        self._crc = _crc64nvme()
        self._crc_value = 0

    def update(self, chunk: bytes) -> None:
        self._sha256.update(chunk)
        if self._crc is not None:
            self._crc_value = self._crc(chunk, self._crc_value)

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()

    @property
    def sha256_b64(self) -> str:
        return b64(self._sha256.digest())

    @property
    def crc64nvme(self) -> str | None:
        return crc64nvme_b64(self._crc_value) if self._crc is not None else None
