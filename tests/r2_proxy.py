"""An HTTP proxy in front of moto's standalone server that answers the way Cloudflare R2 does where R2
differs from S3, so code tested through it meets R2's rules instead of moto's (which are S3's).

Each rule below names its source. Everything else is forwarded unchanged, bodies streamed both ways (a
300 MB object passes without being held in memory), headers as sent: boto3 signs for the proxy's host, and
moto does not check signatures.

1. UploadPart with a SHA-256 or SHA-1 checksum (``x-amz-checksum-sha256``/``-sha1``, or
   ``x-amz-sdk-checksum-algorithm``/``x-amz-trailer`` naming one) → 501 NotImplemented. CRC32, CRC32C,
   CRC64NVME and Content-MD5 on parts pass. R2's own pages do not say it (their "Checksum Types" table even
   marks SHA-1/SHA-256 COMPOSITE ✅); the source is a probe of live R2 reported in
   https://github.com/Alos-no/Cloudflare.NET/pull/43 (2026-08-24): "R2 answers 501 NotImplemented to any part
   upload carrying a sha1 or sha256 checksum header, regardless of the digest". CRC64NVME:
   https://developers.cloudflare.com/r2/api/s3/api/ "Checksum Types": CRC-64/NVME ✅ FULL_OBJECT, ❌ COMPOSITE;
   CRC-32, CRC-32C, SHA-1, SHA-256 ✅ COMPOSITE, ❌ FULL_OBJECT; and R2's release note of 2025-07-03
   (https://github.com/cloudflare/cloudflare-docs/pull/23443): "The CRC64NVME Checksum algorithm is now
   supported for both single and multipart objects. This also brings support for the FULL_OBJECT Checksum
   Type on Multipart Uploads." CreateMultipartUpload asking for a
   combination that table marks ❌ is refused too (status assumed: 501, R2's answer to unsupported headers;
   400 InvalidRequest for CRC64NVME COMPOSITE, which S3 refuses as well).
2. CopyObject with ``x-amz-checksum-algorithm`` → 501 NotImplemented (the compatibility page: CopyObject
   "❌ Checksums: ❌ x-amz-checksum-algorithm"; the body text is the one R2 returns, reported in
   https://github.com/cloudflare/cloudflare-docs/issues/4508: "NotImplemented: Header
   'x-amz-checksum-algorithm' with value 'SHA256' not implemented").
3. UploadPartCopy ignores ``x-amz-copy-source-if-*`` (the compatibility page: UploadPartCopy "❌ Conditional
   Operations: ❌ x-amz-copy-source-if-match …"): the proxy strips them, since tests/moto_conformance.py makes
   moto enforce if-match there.
4. All parts but the last have one size, the last no larger, at most 10,000 parts
   (https://developers.cloudflare.com/r2/objects/multipart-objects/: "All parts except the last one must be the same
   size. The last part has no minimum size, but must be the same or smaller than the other parts. The maximum
   number of parts is 10,000."), checked at CompleteMultipartUpload (release note 2022-10-28: "this enforcement
   is now done when you complete an upload"), parts taken in ascending order (release note 2024-01-26) →
   400 InvalidPart, R2's error 10048 "All non-trailing parts must have the same size."
   (https://developers.cloudflare.com/r2/api/error-codes/).
5. One PutObject, one part (uploaded or copied) and one CopyObject carry at most ``max_upload_bytes``
   (R2: 5 GiB - 5 MiB, https://developers.cloudflare.com/r2/platform/limits/): over it → 400 EntityTooLarge (error
   100100); a CopyObject whose source is larger → 400 InvalidRequest with S3's text, R2 documenting no other.
6. At most one write (PutObject, CopyObject, CompleteMultipartUpload) to a key per ``same_key_write_interval``
   seconds, counted from the end of the previous successful write, and none while another is in flight →
   429 TooManyRequests (R2 error 10058: "Rate limit exceeded. Often caused by multiple concurrent requests to
   the same object key (limit: 1 write/second per key).").

It also counts: ``requests`` (method, path, query, status) in arrival order, ``operations`` by S3 operation
name, ``bytes_downloaded`` (GetObject response bodies) and the same per ``bucket/key``.
"""

from __future__ import annotations

import http.client
import http.server
import re
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import parse_qs, quote, unquote, urlsplit
from xml.sax.saxutils import escape

MiB = 1024 * 1024
GiB = 1024 * MiB
R2_MAX_UPLOAD_BYTES = 5 * GiB - 5 * MiB
R2_MAX_PARTS = 10_000
CHUNK = 1024 * 1024

# not forwarded either way: they describe one connection, not the message
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
}
_COPY_CONDITIONS = (
    "x-amz-copy-source-if-match",
    "x-amz-copy-source-if-none-match",
    "x-amz-copy-source-if-modified-since",
    "x-amz-copy-source-if-unmodified-since",
)
_PART_CHECKSUMS_REFUSED = {"SHA256", "SHA1"}
_RANGE = re.compile(r"^bytes=(\d+)-(\d+)$")


class RequestRecord(NamedTuple):
    method: str
    path: str  # URL-decoded: /bucket/key
    query: str  # as sent
    status: int


class Rejection(NamedTuple):
    operation: str
    resource: str  # bucket/key
    status: int
    code: str


@dataclass
class _Request:
    method: str
    bucket: str
    key: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    part_size: int | None = None  # UploadPart / UploadPartCopy: the part's size, once known

    @property
    def resource(self) -> str:
        return f"{self.bucket}/{self.key}" if self.key else self.bucket

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    @property
    def body_size(self) -> int | None:
        """The payload size: x-amz-decoded-content-length for aws-chunked bodies, else Content-Length."""
        value = self.headers.get("x-amz-decoded-content-length") or self.headers.get("content-length")
        return int(value) if value is not None and value.strip().isdigit() else None


class _Refusal(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _operation(method: str, bucket: str, key: str, query: dict[str, list[str]], headers: dict[str, str]) -> str:
    """The S3 operation a path-style request names (enough of them to count what tests look at)."""
    query = {name: value for name, value in query.items() if name != "x-id"}
    if not bucket:
        return "ListBuckets" if method == "GET" else f"{method} /"
    copy = "x-amz-copy-source" in headers
    if key:
        if method == "PUT":
            if "partNumber" in query and "uploadId" in query:
                return "UploadPartCopy" if copy else "UploadPart"
            for sub, name in (("tagging", "PutObjectTagging"), ("acl", "PutObjectAcl")):
                if sub in query:
                    return name
            if query:
                return "PutObject?" + "&".join(sorted(query))
            return "CopyObject" if copy else "PutObject"
        if method == "POST":
            if "uploads" in query:
                return "CreateMultipartUpload"
            if "uploadId" in query:
                return "CompleteMultipartUpload"
            return "PostObject"
        if method == "GET":
            if "uploadId" in query:
                return "ListParts"
            for sub, name in (
                ("tagging", "GetObjectTagging"),
                ("acl", "GetObjectAcl"),
                ("attributes", "GetObjectAttributes"),
            ):
                if sub in query:
                    return name
            return "GetObject"
        if method == "HEAD":
            return "HeadObject"
        if method == "DELETE":
            return "AbortMultipartUpload" if "uploadId" in query else "DeleteObject"
        return f"{method} object"
    if method == "GET":
        if query.get("list-type") == ["2"]:
            return "ListObjectsV2"
        for sub, name in (
            ("uploads", "ListMultipartUploads"),
            ("location", "GetBucketLocation"),
            ("notification", "GetBucketNotificationConfiguration"),
            ("versions", "ListObjectVersions"),
        ):
            if sub in query:
                return name
        return "ListObjects"
    if method == "POST" and "delete" in query:
        return "DeleteObjects"
    if method == "PUT":
        return "PutBucket?" + "&".join(sorted(query)) if query else "CreateBucket"
    if method == "HEAD":
        return "HeadBucket"
    if method == "DELETE":
        return "DeleteBucket?" + "&".join(sorted(query)) if query else "DeleteBucket"
    return f"{method} bucket"


def _error_body(code: str, message: str, resource: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
        f"<Resource>/{escape(resource)}</Resource><RequestId>{uuid.uuid4().hex}</RequestId></Error>"
    ).encode()


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _completed_part_numbers(body: bytes) -> list[int]:
    """The PartNumbers a CompleteMultipartUpload body lists (namespace or not)."""
    root = ET.fromstring(body)  # our own test traffic, from boto3
    numbers = []
    for part in root:
        if _local(part.tag) != "Part":
            continue
        for child in part:
            if _local(child.tag) == "PartNumber" and child.text:
                numbers.append(int(child.text.strip()))
    return numbers


class R2Proxy:
    """The proxy: ``with R2Proxy(moto_endpoint, max_upload_bytes=8 * MiB) as proxy: make_client(proxy.endpoint)``.

    ``upstream``: moto's endpoint URL. ``max_upload_bytes``: the largest single PutObject, part or
    CopyObject source (R2's 5 GiB - 5 MiB by default). ``same_key_write_interval``: seconds between writes
    to one key (1.0, R2's documented limit; ``None`` or 0 turns the rule off). ``max_parts``: 10,000.
    ``timeout``: seconds the proxy waits on moto. ``on_object_created``: called with (bucket, key, action) after
    each object-create, as R2 sends its event notifications.
    """

    def __init__(
        self,
        upstream: str,
        *,
        max_upload_bytes: int = R2_MAX_UPLOAD_BYTES,
        same_key_write_interval: float | None = 1.0,
        max_parts: int = R2_MAX_PARTS,
        timeout: float = 300.0,
        on_object_created: Callable[[str, str, str], None] | None = None,
    ) -> None:
        target = urlsplit(upstream)
        if target.scheme != "http" or not target.hostname:
            raise ValueError(f"upstream must be an http:// URL, got {upstream!r}")
        self.upstream = upstream
        self._upstream_host = target.hostname
        self._upstream_port = target.port or 80
        self.max_upload_bytes = max_upload_bytes
        self.same_key_write_interval = same_key_write_interval
        self.max_parts = max_parts
        self.timeout = timeout
        # Called with (bucket, key, action) after each successful object-create, as R2's event notifications
        # are sent: the demo's R2 mode puts them on a local Cloudflare Queue.
        self.on_object_created = on_object_created

        self.lock = threading.Lock()
        self.requests: list[RequestRecord] = []
        self.operations: Counter[str] = Counter()
        self.bytes_downloaded = 0
        self.bytes_downloaded_by_key: Counter[str] = Counter()
        self.rejections: list[Rejection] = []
        self.stripped_headers: list[tuple[str, str]] = []  # (bucket/key, header name)
        # uploadId → {partNumber: size}
        self._parts: dict[str, dict[int, int]] = {}
        # bucket/key → monotonic end of the last successful write; keys with a write in flight
        self._last_write: dict[str, float] = {}
        self._writing: set[str] = set()

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(self))
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="r2-proxy", daemon=True)
        self._started = False

    # --- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> R2Proxy:
        if not self._started:
            self._thread.start()
            self._started = True
        return self

    def close(self) -> None:
        if self._started:
            self._server.shutdown()
            self._thread.join(timeout=10)
            self._started = False
        self._server.server_close()

    def __enter__(self) -> R2Proxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- counters ------------------------------------------------------------------------------------------

    def reset_counters(self) -> None:
        """Forget the requests, operations, bytes and rejections counted so far (not the rules' state)."""
        with self.lock:
            self.requests.clear()
            self.operations.clear()
            self.bytes_downloaded = 0
            self.bytes_downloaded_by_key.clear()
            self.rejections.clear()
            self.stripped_headers.clear()

    def count(self, operation: str) -> int:
        with self.lock:
            return self.operations[operation]

    def parts_of(self, upload_id: str) -> dict[int, int]:
        """The part sizes the proxy saw uploaded (or copied) for an upload still in progress."""
        with self.lock:
            return dict(self._parts.get(upload_id, {}))

    # --- the rules -----------------------------------------------------------------------------------------

    def _check(self, op: str, request: _Request, upstream_head: Callable[[str], int | None]) -> None:
        """Raise _Refusal for what R2 would refuse before touching the data; strip what R2 ignores."""
        h = request.header
        if op == "UploadPart":
            self._check_part_number(request)
            for algorithm in sorted(_PART_CHECKSUMS_REFUSED):
                name = f"x-amz-checksum-{algorithm.lower()}"
                if h(name) is not None:
                    raise _Refusal(501, "NotImplemented", f"Header '{name}' with value '{h(name)}' not implemented")
            sdk = (h("x-amz-sdk-checksum-algorithm") or "").upper()
            if sdk in _PART_CHECKSUMS_REFUSED:
                raise _Refusal(
                    501,
                    "NotImplemented",
                    f"Header 'x-amz-sdk-checksum-algorithm' with value '{h('x-amz-sdk-checksum-algorithm')}' "
                    "not implemented",
                )
            trailer = (h("x-amz-trailer") or "").lower()
            for algorithm in _PART_CHECKSUMS_REFUSED:
                if f"x-amz-checksum-{algorithm.lower()}" in trailer:
                    raise _Refusal(
                        501, "NotImplemented", f"Header 'x-amz-trailer' with value '{trailer}' not implemented"
                    )
            request.part_size = size = request.body_size
            if size is not None and size > self.max_upload_bytes:
                raise _too_large(size, self.max_upload_bytes)
        elif op == "PutObject":
            size = request.body_size
            if size is not None and size > self.max_upload_bytes:
                raise _too_large(size, self.max_upload_bytes)
        elif op == "CreateMultipartUpload":
            algorithm = (h("x-amz-checksum-algorithm") or "").upper()
            kind = (h("x-amz-checksum-type") or "").upper()
            if kind == "FULL_OBJECT" and algorithm != "CRC64NVME":
                raise _Refusal(
                    501, "NotImplemented", f"Header 'x-amz-checksum-type' with value '{kind}' not implemented"
                )
            if kind == "COMPOSITE" and algorithm == "CRC64NVME":
                raise _Refusal(
                    400,
                    "InvalidRequest",
                    "The COMPOSITE checksum type cannot be used with the crc64nvme checksum algorithm.",
                )
        elif op == "CopyObject":
            asked = h("x-amz-checksum-algorithm")
            if asked is not None:
                raise _Refusal(
                    501, "NotImplemented", f"Header 'x-amz-checksum-algorithm' with value '{asked}' not implemented"
                )
            size = upstream_head(request.header("x-amz-copy-source") or "")
            if size is not None and size > self.max_upload_bytes:
                raise _Refusal(
                    400,
                    "InvalidRequest",
                    "The specified copy source is larger than the maximum allowable size for a copy source: "
                    f"{self.max_upload_bytes}",
                )
        elif op == "UploadPartCopy":
            self._check_part_number(request)
            for name in _COPY_CONDITIONS:
                if request.headers.pop(name, None) is not None:
                    with self.lock:
                        self.stripped_headers.append((request.resource, name))
            size = _range_size(h("x-amz-copy-source-range"))
            if size is None:
                size = upstream_head(h("x-amz-copy-source") or "")
            request.part_size = size
            if size is not None and size > self.max_upload_bytes:
                raise _too_large(size, self.max_upload_bytes)
        elif op == "CompleteMultipartUpload":
            pass  # needs the body: _check_complete

    def _check_part_number(self, request: _Request) -> None:
        raw = (request.query.get("partNumber") or [""])[0]
        if not raw.isdigit() or not 1 <= int(raw) <= self.max_parts:
            raise _Refusal(
                400, "InvalidArgument", f"Part number must be an integer between 1 and {self.max_parts}, inclusive"
            )

    def _check_complete(self, upload_id: str, body: bytes) -> None:
        try:
            numbers = sorted(set(_completed_part_numbers(body)))
        except (ET.ParseError, ValueError):
            return  # malformed: moto answers MalformedXML
        if len(numbers) > self.max_parts:
            raise _Refusal(400, "InvalidPart", f"A multipart upload has at most {self.max_parts} parts.")
        with self.lock:
            known = self._parts.get(upload_id, {})
            sizes = [known.get(number) for number in numbers]
        if len(sizes) < 2 or any(size is None for size in sizes):
            return  # a part the proxy did not see: moto judges it
        first = sizes[0]
        if any(size != first for size in sizes[:-1]) or (sizes[-1] or 0) > (first or 0):
            described = ", ".join(f"{n}: {s}" for n, s in zip(numbers, sizes, strict=True))
            raise _Refusal(
                400, "InvalidPart", f"All non-trailing parts must have the same size. (part sizes {described})"
            )

    def _begin_write(self, resource: str) -> None:
        interval = self.same_key_write_interval
        with self.lock:
            last = self._last_write.get(resource)
            busy = resource in self._writing or (last is not None and time.monotonic() - last < (interval or 0))
            if interval and busy:
                raise _Refusal(
                    429,
                    "TooManyRequests",
                    "Reduce your concurrent request rate for the same object "
                    f"(limit: 1 write per {interval:g} s per key).",
                )
            self._writing.add(resource)

    def _end_write(self, resource: str, ok: bool) -> None:
        with self.lock:
            self._writing.discard(resource)
            if ok:
                self._last_write[resource] = time.monotonic()

    def _after(self, op: str, request: _Request, status: int) -> None:
        ok = 200 <= status < 300
        upload_id = (request.query.get("uploadId") or [""])[0]
        with self.lock:
            if ok and op in {"UploadPart", "UploadPartCopy"} and request.part_size is not None:
                self._parts.setdefault(upload_id, {})[int(request.query["partNumber"][0])] = request.part_size
            elif ok and op in {"CompleteMultipartUpload", "AbortMultipartUpload"}:
                self._parts.pop(upload_id, None)
        if ok and op in {"PutObject", "CopyObject", "CompleteMultipartUpload"} and self.on_object_created:
            self.on_object_created(request.bucket, request.key, op)


def _too_large(size: int, limit: int) -> _Refusal:
    return _Refusal(
        400,
        "EntityTooLarge",
        f"Your proposed upload exceeds the maximum allowed object size. ({size} bytes, limit {limit})",
    )


def _range_size(value: str | None) -> int | None:
    if not value:
        return None
    match = _RANGE.match(value.strip())
    return int(match[2]) - int(match[1]) + 1 if match else None


def _handler_class(proxy: R2Proxy) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # per request: whether 100 Continue went out, whether the body has been (or is being) read
        _continued = False
        _consumed = False

        def log_message(self, *args: Any) -> None:
            pass

        def handle_expect_100(self) -> bool:
            # answered in _handle: 100 Continue only once the request is accepted, so a refused one never
            # sends its body (botocore waits for it on every file-like body)
            return True

        # --- plumbing ------------------------------------------------------------------------------------

        def _record(self, path: str, query: str, status: int, op: str) -> None:
            with proxy.lock:
                proxy.requests.append(RequestRecord(self.command, path, query, status))
                proxy.operations[op] += 1

        def _continue(self) -> None:
            self._consumed = True  # the caller reads the body next
            if self.headers.get("Expect", "").lower() == "100-continue" and not self._continued:
                self._continued = True
                self.send_response_only(100)
                self.end_headers()

        def _read_body(self) -> bytes:
            self._continue()
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                parts: list[bytes] = []
                self._relay_chunked(parts.append)
                return b"".join(parts)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _relay_chunked(self, sink: Any) -> None:
            """Copy a chunked body as it came (sizes, extensions, trailers) to ``sink``."""
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    raise ConnectionError("client closed mid-body")
                sink(line)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while True:
                        trailer = self.rfile.readline(65537)
                        sink(trailer)
                        if trailer in (b"\r\n", b"\n", b""):
                            return
                remaining = size + 2  # the chunk and its CRLF
                while remaining:
                    data = self.rfile.read(min(CHUNK, remaining))
                    if not data:
                        raise ConnectionError("client closed mid-body")
                    sink(data)
                    remaining -= len(data)

        def _relay_body(self, sink: Any) -> None:
            self._continue()
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                self._relay_chunked(sink)
                return
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining:
                data = self.rfile.read(min(CHUNK, remaining))
                if not data:
                    raise ConnectionError("client closed mid-body")
                sink(data)
                remaining -= len(data)

        def _refuse(self, refusal: _Refusal, resource: str) -> None:
            expecting = self.headers.get("Expect", "").lower() == "100-continue"
            has_body = (
                int(self.headers.get("Content-Length") or 0) > 0
                or "chunked" in self.headers.get("Transfer-Encoding", "").lower()
            )
            if has_body and not expecting and not self._consumed:
                self._relay_body(lambda _data: None)  # drain, so the connection stays in step
            payload = _error_body(refusal.code, refusal.message, resource)
            self.send_response_only(refusal.status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("x-amz-request-id", uuid.uuid4().hex[:16])
            self.send_header("Content-Length", str(len(payload)))
            if has_body and expecting and not self._consumed:
                # the body was never asked for: this connection cannot carry another request
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        def _upstream(self) -> http.client.HTTPConnection:
            return http.client.HTTPConnection(proxy._upstream_host, proxy._upstream_port, timeout=proxy.timeout)

        def _head_size(self, copy_source: str, credentials: dict[str, str]) -> int | None:
            """The size of a copy source, from moto (None when moto does not know it: moto then answers),
            asked with the caller's credentials."""
            source = unquote(copy_source).lstrip("/")
            source, _, version = source.partition("?")
            if "/" not in source:
                return None
            bucket, key = source.split("/", 1)
            path = f"/{quote(bucket)}/{quote(key, safe='/~')}"
            if version.startswith("versionId="):
                path += f"?versionId={quote(version.split('=', 1)[1])}"
            connection = self._upstream()
            try:
                # moto answers an anonymous HEAD with 403; it reads the caller from the (unchecked) signature
                headers = {"Host": f"{proxy._upstream_host}:{proxy._upstream_port}", **credentials}
                connection.request("HEAD", path, headers=headers)
                response = connection.getresponse()
                response.read()
                length = response.getheader("Content-Length")
                return int(length) if response.status == 200 and length and length.isdigit() else None
            finally:
                connection.close()

        # --- one request ---------------------------------------------------------------------------------

        def _handle(self) -> None:
            self._continued = self._consumed = False
            split = urlsplit(self.path)
            path = unquote(split.path)
            query = parse_qs(split.query, keep_blank_values=True)
            headers = {name.lower(): value for name, value in self.headers.items()}
            host = (headers.get("host") or "").rsplit(":", 1)[0]
            if host.endswith(".localhost"):  # virtual-hosted style
                bucket, key = host.split(".", 1)[0], path.lstrip("/")
            else:
                bucket, _, key = path.lstrip("/").partition("/")
            op = _operation(self.command, bucket, key, query, headers)
            request = _Request(self.command, bucket, key, query, headers)
            is_write = op in {"PutObject", "CopyObject", "CompleteMultipartUpload"}
            status = 502
            writing = False
            try:
                credentials = {
                    name: value
                    for name, value in headers.items()
                    if name in ("authorization", "x-amz-date", "x-amz-security-token")
                }
                proxy._check(op, request, lambda source: self._head_size(source, credentials))
                body: bytes | None = None
                if op == "CompleteMultipartUpload":
                    body = self._read_body()
                    proxy._check_complete((query.get("uploadId") or [""])[0], body)
                if is_write:
                    proxy._begin_write(request.resource)
                    writing = True
                status = self._forward(op, request, body)
            except _Refusal as refusal:
                status = refusal.status
                with proxy.lock:
                    proxy.rejections.append(Rejection(op, request.resource, refusal.status, refusal.code))
                self._refuse(refusal, request.resource)
            except (ConnectionError, TimeoutError, OSError) as exc:
                status = 502
                self.close_connection = True
                try:
                    payload = _error_body("BadGateway", f"r2 proxy: {exc}", request.resource)
                    self.send_response_only(502)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass
            finally:
                if writing:
                    proxy._end_write(request.resource, 200 <= status < 300)
                self._record(path, split.query, status, op)

        def _forward(self, op: str, request: _Request, body: bytes | None) -> int:
            connection = self._upstream()
            try:
                connection.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for name, value in self.headers.items():
                    lower = name.lower()
                    if lower in _HOP_BY_HOP and lower != "transfer-encoding":
                        continue
                    if lower in request.headers or lower == "transfer-encoding":
                        connection.putheader(name, value)
                connection.endheaders()
                if body is not None:
                    connection.send(body)
                else:
                    self._relay_body(connection.send)
                response = connection.getresponse()
                proxy._after(op, request, response.status)
                self._relay_response(op, request, response)
                return response.status
            finally:
                connection.close()

        def _relay_response(self, op: str, request: _Request, response: http.client.HTTPResponse) -> None:
            self.send_response_only(response.status, response.reason)
            length = response.getheader("Content-Length")
            for name, value in response.getheaders():
                if name.lower() in _HOP_BY_HOP or name.lower() == "content-length":
                    continue
                self.send_header(name, value)
            no_body = self.command == "HEAD" or response.status in (204, 304) or response.status < 200
            if no_body:
                if length is not None:
                    self.send_header("Content-Length", length)
                self.end_headers()
                return
            if length is None or not length.isdigit():
                data = response.read()  # moto always sends a length; this is the fallback
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                sent = len(data)
            else:
                self.send_header("Content-Length", length)
                self.end_headers()
                sent = 0
                remaining = int(length)
                while remaining:
                    data = response.read(min(CHUNK, remaining))
                    if not data:
                        self.close_connection = True
                        break
                    self.wfile.write(data)
                    sent += len(data)
                    remaining -= len(data)
            if op == "GetObject" and 200 <= response.status < 300:
                with proxy.lock:
                    proxy.bytes_downloaded += sent
                    proxy.bytes_downloaded_by_key[request.resource] += sent

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = do_OPTIONS = _handle

    return Handler


@contextmanager
def r2_proxy(upstream: str, **options: Any) -> Iterator[R2Proxy]:
    """``with r2_proxy(moto_endpoint, max_upload_bytes=8 * MiB) as proxy: …`` (``proxy.endpoint`` is the URL)."""
    with R2Proxy(upstream, **options) as proxy:
        yield proxy
