"""moto, with the copy conditions S3 documents and moto skips put back in.

S3 answers CopyObject and UploadPartCopy with 412 PreconditionFailed when ``x-amz-copy-source-if-match``
names an ETag the source no longer has (S3 API reference, CopyObject and UploadPartCopy). R2 documents the
same for CopyObject. moto 5 checks only ``…-if-none-match``, so without this a test of "the staged file was
replaced between verification and copy" would pass against moto and prove nothing. The in-process
``mock_aws`` tests import this module (tests/conftest.py); the standalone server is started through it
(``python -m tests.moto_conformance``, tests/e2e/local_stack.py).
"""

from __future__ import annotations

import sys
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from moto.s3.exceptions import PreconditionFailed
from moto.s3.responses import S3Response

_PATCHED = "_ckpt_copy_source_if_match"


def _check_copy_source_if_match(response: Any) -> None:
    wanted = response.headers.get("x-amz-copy-source-if-match")
    if wanted is None:
        return
    copy_source = response.headers.get("x-amz-copy-source")
    if isinstance(copy_source, bytes):
        copy_source = copy_source.decode()
    parsed = urlparse(copy_source)
    bucket, key = unquote(parsed.path).lstrip("/").split("/", 1)
    version_id = parse_qs(parsed.query).get("versionId", [None])[0]
    source = response.backend.get_object(bucket, key, version_id=version_id)
    if source is not None and wanted.strip('"') != source.etag.strip('"'):
        raise PreconditionFailed(failed_condition="x-amz-copy-source-If-Match")


def enforce_copy_conditions() -> None:
    """Patch moto's S3 responses once, in this process."""
    if getattr(S3Response, _PATCHED, False):
        return
    for name in ("copy_object", "upload_part_copy"):
        original = getattr(S3Response, name)

        def checked(self: Any, _original: Any = original) -> Any:
            _check_copy_source_if_match(self)
            return _original(self)

        setattr(S3Response, name, checked)
    setattr(S3Response, _PATCHED, True)


if __name__ == "__main__":
    from moto.server import main

    enforce_copy_conditions()
    main(sys.argv[1:])
