"""A local Cloudflare Queue with an HTTP pull consumer, on loopback: what the R2 poller talks to in tests.

It serves ``POST /client/v4/accounts/{account}/queues/{queue}/messages/pull`` and ``…/messages/ack`` with the
shapes of Cloudflare's Queues API (https://developers.cloudflare.com/queues/configuration/pull-consumers/):

- bodies published as ``json`` or ``bytes`` go out base64-encoded, ``text`` as it is, with
  ``metadata["CF-Content-Type"]``;
- a pull leases messages for ``visibility_timeout_ms``; a lease that expires makes the message visible again,
  and each delivery counts in ``attempts``;
- an ack removes the message; a retry makes it visible again after ``delay_seconds``; both accept a lease that
  has expired, as Cloudflare does;
- after ``max_retries`` failed deliveries (retried or expired) a message goes to ``dead_letters``
  (Cloudflare: "when attempts reaches max_retries, the message will not be re-delivered");
- a wrong or missing Bearer token answers 401, another account or queue 404, a request beyond the configured
  budget 429 with ``Retry-After``.

Time is the server's ``clock`` (a ``ManualClock`` in tests), so a retry delay or a lease can be made to pass
without sleeping.
"""

from __future__ import annotations

import base64
import itertools
import json
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ACCOUNT_ID = "3f4b7e2a9c1d4e8f9a0b1c2d3e4f5a6b"
QUEUE_ID = "9a8b7c6d5e4f30211f2e3d4c5b6a7980"
TOKEN = "local-queues-token"
MAX_VISIBILITY_TIMEOUT_MS = 12 * 60 * 60 * 1000


class ManualClock:
    """Seconds that move only when told to."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


@dataclass
class StoredMessage:
    id: str
    body: str  # as it goes out on the wire (base64 for json and bytes)
    content_type: str
    timestamp_ms: int
    attempts: int = 0
    visible_at: float = 0.0
    lease_id: str | None = None
    lease_expires: float = 0.0


@dataclass
class RateLimit:
    """At most ``requests`` per ``window_seconds`` of real time (the client really waits); beyond, 429 with
    Retry-After."""

    requests: int
    window_seconds: float = 1.0
    seen: deque[float] = field(default_factory=deque)


@dataclass
class Request:
    action: str
    status: int
    body: Any


class LocalQueue:
    """The queue's state, shared by the server's threads."""

    def __init__(self, clock: Callable[[], float] = time.time, max_retries: int = 3) -> None:
        self.clock = clock
        self.max_retries = max_retries
        self.messages: list[StoredMessage] = []
        self.dead_letters: list[StoredMessage] = []
        self.acked: list[StoredMessage] = []
        self.requests: list[Request] = []
        self.rate_limit: RateLimit | None = None
        self._leases: dict[str, StoredMessage] = {}
        self._lock = threading.RLock()
        self._ids = itertools.count(1)

    # --- what a producer (R2) does ---------------------------------------------------------------------

    def send(self, body: bytes | str | Any, content_type: str = "json", copies: int = 1) -> str:
        """Publish a message; ``copies`` > 1 stores the same message that many times under one id, as an
        at-least-once queue may deliver it. Returns the message id."""
        if content_type == "json":
            wire = base64.b64encode(json.dumps(body).encode()).decode()
        elif content_type == "bytes":
            wire = base64.b64encode(body if isinstance(body, bytes) else str(body).encode()).decode()
        elif content_type == "text":
            wire = body if isinstance(body, str) else str(body)
        else:  # v8 and anything else: what a pull consumer cannot read
            wire = base64.b64encode(str(body).encode()).decode()
        with self._lock:
            message_id = f"{next(self._ids):032x}"
            for _ in range(copies):
                self.messages.append(
                    StoredMessage(message_id, wire, content_type, timestamp_ms=int(self.clock() * 1000))
                )
        return message_id

    # --- what tests look at ----------------------------------------------------------------------------

    def visible(self) -> list[StoredMessage]:
        with self._lock:
            self._expire_leases()
            now = self.clock()
            return [m for m in self.messages if m.lease_id is None and m.visible_at <= now]

    def pending(self) -> list[StoredMessage]:
        with self._lock:
            self._expire_leases()
            return list(self.messages)

    def acks_and_retries(self) -> list[Any]:
        return [r.body for r in self.requests if r.action == "ack" and r.status == 200]

    def statuses(self) -> list[int]:
        return [r.status for r in self.requests]

    # --- the API ---------------------------------------------------------------------------------------

    def pull(self, batch_size: int, visibility_timeout_ms: int) -> list[dict[str, Any]]:
        with self._lock:
            self._expire_leases()
            now = self.clock()
            batch = [m for m in self.messages if m.lease_id is None and m.visible_at <= now][:batch_size]
            out = []
            for message in batch:
                message.attempts += 1
                message.lease_id = f"lease-{uuid.uuid4().hex}"
                message.lease_expires = now + visibility_timeout_ms / 1000
                self._leases[message.lease_id] = message
                out.append(
                    {
                        "id": message.id,
                        "body": message.body,
                        "attempts": message.attempts,
                        "lease_id": message.lease_id,
                        "timestamp_ms": message.timestamp_ms,
                        "metadata": {"CF-sourceMessageSource": "r2", "CF-Content-Type": message.content_type},
                    }
                )
            return out

    def ack(self, acks: list[dict[str, Any]], retries: list[dict[str, Any]]) -> dict[str, Any]:
        with self._lock:
            acked = retried = 0
            warnings: dict[str, str] = {}
            for item in acks:
                message = self._leases.pop(item["lease_id"], None)
                if message is None or message not in self.messages:
                    warnings[item["lease_id"]] = "unknown lease"
                    continue
                self.messages.remove(message)
                self.acked.append(message)
                acked += 1
            for item in retries:
                message = self._leases.pop(item["lease_id"], None)
                if message is None or message not in self.messages:
                    warnings[item["lease_id"]] = "unknown lease"
                    continue
                self._release(message, delay=float(item.get("delay_seconds") or 0))
                retried += 1
            return {"ackCount": acked, "retryCount": retried, "warnings": warnings}

    def throttled(self) -> float | None:
        """Seconds until the budget allows another request, or None when this one is allowed (and counted)."""
        with self._lock:
            if self.rate_limit is None:
                return None
            limit, now = self.rate_limit, time.monotonic()
            while limit.seen and limit.seen[0] <= now - limit.window_seconds:
                limit.seen.popleft()
            if len(limit.seen) >= limit.requests:
                return (limit.seen[0] + limit.window_seconds - now) if limit.seen else limit.window_seconds
            limit.seen.append(now)
            return None

    def _release(self, message: StoredMessage, delay: float) -> None:
        """A delivery failed (retried, or its lease expired): deliver again after ``delay``, or dead-letter."""
        message.lease_id = None
        if message.attempts >= self.max_retries:
            self.messages.remove(message)
            self.dead_letters.append(message)
            return
        message.visible_at = self.clock() + delay

    def _expire_leases(self) -> None:
        now = self.clock()
        for message in list(self.messages):
            if message.lease_id is not None and message.lease_expires <= now:
                # The old lease stays known: Cloudflare still accepts an ack for it.
                self._release(message, delay=0)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        queue = self.server.queue
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        prefix = f"/client/v4/accounts/{self.server.account_id}/queues/{self.server.queue_id}/messages/"
        action = self.path[len(prefix) :] if self.path.startswith(prefix) else ""
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            body = None
        if self.headers.get("Authorization") != f"Bearer {self.server.token}":
            return self._answer(queue, action, body, 401, errors=[{"code": 10000, "message": "Authentication error"}])
        if action not in ("pull", "ack"):
            return self._answer(queue, action, body, 404, errors=[{"code": 7003, "message": "No route for the URI"}])
        wait = queue.throttled()
        if wait is not None:
            return self._answer(
                queue, action, body, 429, errors=[{"code": 971, "message": "Please wait"}], retry_after=wait
            )
        if not isinstance(body, dict):
            return self._answer(queue, action, body, 400, errors=[{"code": 10001, "message": "bad JSON"}])
        if action == "pull":
            batch_size = body.get("batch_size", 5)
            visibility = body.get("visibility_timeout_ms", 30_000)
            if not (isinstance(batch_size, int) and 1 <= batch_size <= 100) or not (
                isinstance(visibility, int) and 1 <= visibility <= MAX_VISIBILITY_TIMEOUT_MS
            ):
                return self._answer(queue, action, body, 400, errors=[{"code": 10001, "message": "bad pull"}])
            messages = queue.pull(batch_size, visibility)
            return self._answer(queue, action, body, 200, result={"messages": messages})
        result = queue.ack(list(body.get("acks") or []), list(body.get("retries") or []))
        return self._answer(queue, action, body, 200, result=result)

    def _answer(
        self,
        queue: LocalQueue,
        action: str,
        body: Any,
        status: int,
        *,
        result: Any = None,
        errors: list[dict[str, Any]] | None = None,
        retry_after: float | None = None,
    ) -> None:
        queue.requests.append(Request(action, status, body))
        payload = json.dumps(
            {"success": status == 200, "errors": errors or [], "messages": [], "result": result}
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        if retry_after is not None:
            self.send_header("Retry-After", str(max(1, math.ceil(retry_after))))
        self.end_headers()
        self.wfile.write(payload)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, queue: LocalQueue, account_id: str, queue_id: str, token: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.queue = queue
        self.account_id = account_id
        self.queue_id = queue_id
        self.token = token


@dataclass
class RunningQueue:
    queue: LocalQueue
    base_url: str
    account_id: str
    queue_id: str
    token: str


@contextmanager
def queues_server(
    queue: LocalQueue | None = None, account_id: str = ACCOUNT_ID, queue_id: str = QUEUE_ID, token: str = TOKEN
) -> Iterator[RunningQueue]:
    """Serve ``queue`` on a free loopback port for the duration of the block."""
    queue = queue or LocalQueue()
    server = _Server(queue, account_id, queue_id, token)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield RunningQueue(
            queue=queue,
            base_url=f"http://127.0.0.1:{server.server_address[1]}/client/v4",
            account_id=account_id,
            queue_id=queue_id,
            token=token,
        )
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def r2_notification(
    bucket: str,
    key: str,
    action: str = "PutObject",
    size: int = 612,
    etag: str = "5d41402abc4b2a76b9719d911017c592",
    account: str = ACCOUNT_ID,
) -> dict[str, Any]:
    """The body R2 sends to the queue for an object (Cloudflare's documented message format)."""
    document: dict[str, Any] = {
        "account": account,
        "action": action,
        "bucket": bucket,
        "object": {"key": key, "size": size, "eTag": etag},
        "eventTime": "2025-11-05T14:30:02.418Z",
    }
    if action == "CopyObject":
        document["copySource"] = {"bucket": bucket, "object": key + ".orig"}
    if action in ("DeleteObject", "LifecycleDeletion"):
        del document["object"]["size"], document["object"]["eTag"]
    return document


def send_r2_notification(
    queue: LocalQueue, bucket: str, key: str, content_type: str = "json", copies: int = 1, **fields: Any
) -> str:
    """Put R2's notification for ``bucket``/``key`` on the queue, as ``json`` (base64 on the wire) or ``text``."""
    document = r2_notification(bucket, key, **fields)
    body: Any = document if content_type == "json" else json.dumps(document)
    return queue.send(body, content_type=content_type, copies=copies)
