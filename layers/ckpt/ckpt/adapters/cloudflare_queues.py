"""A small client for Cloudflare Queues' HTTP pull consumer: pull a batch of leased messages, then
acknowledge or retry them by lease.

Cloudflare's API, as its documentation states it (the facts this module relies on):
- ``POST {base}/accounts/{account_id}/queues/{queue_id}/messages/pull`` with ``{"batch_size",
  "visibility_timeout_ms"}`` (at most 100 messages; a lease of at most 12 hours) answers
  ``{"success": true, "result": {"messages": [{"id", "body", "attempts", "lease_id", "timestamp_ms",
  "metadata"}]}}``. A body published as ``json`` or ``bytes`` arrives base64-encoded, ``text`` as it is; the
  content type is in ``metadata["CF-Content-Type"]`` (``json`` when absent: it is the default). ``v8`` bodies
  can only be read inside Workers.
- ``POST {base}/accounts/{account_id}/queues/{queue_id}/messages/ack`` with ``{"acks": [{"lease_id"}],
  "retries": [{"lease_id", "delay_seconds"}]}`` (a delay of at most 12 hours).
- A Bearer API token with Queues read and write. Over the API's rate limit it answers 429, with
  ``Retry-After`` in seconds.

The pure parts (building a request, reading an answer, decoding a body, choosing a wait) are functions;
``CloudflareQueue`` is the shell that sends them with ``urllib.request``. The token is only ever put in the
``Authorization`` header: it is in no message, log line or ``repr``.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import json
import logging
import math
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

from ckpt.contract import strict_json
from ckpt.errors import ConfigurationError, TransientError

log = logging.getLogger(__name__)

DEFAULT_API_BASE_URL = "https://api.cloudflare.com/client/v4"
MAX_BATCH_SIZE = 100
MAX_VISIBILITY_TIMEOUT_MS = 12 * 60 * 60 * 1000
MAX_DELAY_SECONDS = 12 * 60 * 60
# The content type Cloudflare assumes when a producer names none.
DEFAULT_CONTENT_TYPE = "json"
_BASE64_CONTENT_TYPES = frozenset({"json", "bytes"})
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


class QueueUnavailable(TransientError):
    """The Queues API failed, throttled us past the backoff, or answered something unreadable: try later."""


class QueueRequestRefused(ConfigurationError):
    """The Queues API refused the request for a reason retrying cannot change: a wrong token or permission,
    account or queue id, or a queue without an HTTP pull consumer."""


# --- messages --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Undecodable:
    """A body that cannot be turned into bytes or text; ``reason`` says why."""

    reason: str


Body = bytes | str | Undecodable


@dataclass(frozen=True)
class PulledMessage:
    """One leased message. ``body`` is decoded by content type: bytes for ``json`` and ``bytes`` (base64 on
    the wire), text for ``text``, ``Undecodable`` otherwise."""

    id: str
    lease_id: str
    attempts: int
    body: Body
    content_type: str
    timestamp_ms: int | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Retry:
    """Put a leased message back, visible again after ``delay_seconds``."""

    lease_id: str
    delay_seconds: int


@dataclass(frozen=True)
class AckResult:
    acked: int | None  # as Cloudflare counted them (None when it did not say)
    retried: int | None
    warnings: object = None


def decode_body(body: Any, content_type: str) -> Body:
    """The message body as the producer sent it."""
    if not isinstance(body, str):
        return Undecodable(f"body is {type(body).__name__}, not a string")
    if content_type == "text":
        return body
    if content_type in _BASE64_CONTENT_TYPES:
        try:
            return base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError) as exc:
            return Undecodable(f"{content_type} body is not valid base64: {exc}")
    return Undecodable(
        f"content type {content_type!r} cannot be read by a pull consumer (only json, bytes and text can)"
    )


def parse_message(item: Any) -> PulledMessage | None:
    """A pulled message, or None for an entry without a lease (it cannot be acknowledged; its lease, if any,
    expires and Cloudflare delivers it again)."""
    if not isinstance(item, Mapping) or not isinstance(item.get("lease_id"), str) or not item["lease_id"]:
        return None
    raw_metadata = item.get("metadata")
    metadata: Mapping[str, Any] = raw_metadata if isinstance(raw_metadata, Mapping) else {}
    content_type = str(metadata.get("CF-Content-Type") or DEFAULT_CONTENT_TYPE)
    return PulledMessage(
        id=str(item.get("id") or ""),
        lease_id=item["lease_id"],
        attempts=_whole_number(item.get("attempts"), default=1),
        body=decode_body(item.get("body"), content_type),
        content_type=content_type,
        timestamp_ms=_whole_number(item.get("timestamp_ms"), default=None),
        metadata=dict(metadata),
    )


def parse_pull_answer(document: Any) -> list[PulledMessage]:
    """The messages of a pull answer; QueueUnavailable when the answer is not one."""
    result = _result(document, "pull")
    messages = result.get("messages") if isinstance(result, Mapping) else None
    if messages is None:
        return []
    if not isinstance(messages, list):
        raise QueueUnavailable("the Queues API answered a pull with result.messages that is not a list")
    pulled = []
    for item in messages:
        message = parse_message(item)
        if message is None:
            log.warning("pulled a message without a lease id, left for Cloudflare to deliver again")
            continue
        pulled.append(message)
    return pulled


def parse_ack_answer(document: Any) -> AckResult:
    result = _result(document, "ack")
    if not isinstance(result, Mapping):
        return AckResult(acked=None, retried=None)
    return AckResult(
        acked=_whole_number(result.get("ackCount"), default=None),
        retried=_whole_number(result.get("retryCount"), default=None),
        warnings=result.get("warnings") or None,
    )


def _result(document: Any, what: str) -> Any:
    if not isinstance(document, Mapping) or document.get("success") is not True:
        errors = document.get("errors") if isinstance(document, Mapping) else None
        raise QueueUnavailable(f"the Queues API did not report success for a {what}: {_describe_errors(errors)}")
    return document.get("result")


def _whole_number(value: Any, *, default: int | None) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return default
    return int(value)


def _describe_errors(errors: Any) -> str:
    if isinstance(errors, list) and errors:
        return "; ".join(
            f"{e.get('code')}: {e.get('message')}" if isinstance(e, Mapping) else str(e) for e in errors[:5]
        )
    return "no error given"


# --- requests --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiRequest:
    """A request without its credentials: what is safe to log."""

    url: str
    body: dict[str, Any]


def queue_url(base_url: str, account_id: str, queue_id: str, action: str) -> str:
    return (
        f"{base_url.rstrip('/')}/accounts/{quote(account_id, safe='')}/queues/{quote(queue_id, safe='')}"
        f"/messages/{action}"
    )


def pull_request(
    base_url: str, account_id: str, queue_id: str, batch_size: int, visibility_timeout_ms: int
) -> ApiRequest:
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise ValueError(f"batch_size must be from 1 to {MAX_BATCH_SIZE}, got {batch_size}")
    if not 1 <= visibility_timeout_ms <= MAX_VISIBILITY_TIMEOUT_MS:
        raise ValueError(
            f"visibility_timeout_ms must be from 1 to {MAX_VISIBILITY_TIMEOUT_MS}, got {visibility_timeout_ms}"
        )
    return ApiRequest(
        url=queue_url(base_url, account_id, queue_id, "pull"),
        body={"batch_size": batch_size, "visibility_timeout_ms": visibility_timeout_ms},
    )


def ack_request(
    base_url: str, account_id: str, queue_id: str, acks: Sequence[str], retries: Sequence[Retry]
) -> ApiRequest:
    return ApiRequest(
        url=queue_url(base_url, account_id, queue_id, "ack"),
        body={
            "acks": [{"lease_id": lease_id} for lease_id in acks],
            "retries": [
                {"lease_id": r.lease_id, "delay_seconds": max(0, min(r.delay_seconds, MAX_DELAY_SECONDS))}
                for r in retries
            ],
        },
    )


def check_base_url(base_url: str) -> str:
    """The API base URL, refused when it would send the token in clear text to another machine."""
    parts = urlsplit(base_url)
    if parts.scheme == "https" and parts.hostname:
        return base_url.rstrip("/")
    if parts.scheme == "http" and parts.hostname in _LOOPBACK_HOSTS:
        return base_url.rstrip("/")  # a local test server: nothing crosses a network
    raise ConfigurationError(
        f"CLOUDFLARE_API_BASE_URL must be an https:// URL (http:// only for a loopback host), got {base_url!r}"
    )


def api_token_from_secret(secret: str) -> str:
    """The API token from its secret: the token itself, or a JSON object with ``api_token``."""
    text = secret.strip()
    if text.startswith("{"):
        try:
            document = strict_json.loads(text, "the Cloudflare API token secret")
        except strict_json.InvalidJson:  # the reason could quote the token: not passed on
            document = None
        token = document.get("api_token") if isinstance(document, dict) else None
        if not isinstance(token, str) or not token.strip():
            raise ConfigurationError("the Cloudflare API token secret is a JSON object without a string api_token")
        text = token.strip()
    if not text or any(c.isspace() or not c.isprintable() for c in text):
        # Never quoted: it would be the token, or most of it.
        raise ConfigurationError("the Cloudflare API token secret is empty or holds more than one token")
    return text


# --- backoff ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backoff:
    """How a throttled (429) or failing (5xx, network) request is retried: at most ``attempts`` tries, waits
    of ``first_wait`` seconds doubling, or ``Retry-After`` when the API gives it, and at most ``max_wait``
    seconds of waiting in all, so a caller with a deadline is not held past it."""

    attempts: int = 4
    first_wait: float = 1.0
    max_wait: float = 20.0


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds, or an HTTP date); None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if re.fullmatch(r"[0-9]{1,6}", value):  # ASCII digits only, and bounded: isdigit() admits "²" and "٣"
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def wait_before_retry(policy: Backoff, tries_done: int, waited: float, retry_after: float | None) -> float | None:
    """Seconds to wait before the next try, or None to give up. ``tries_done`` counts the failed tries so far."""
    if tries_done >= policy.attempts:
        return None
    wait = retry_after if retry_after is not None else policy.first_wait * 2 ** (tries_done - 1)
    if waited + wait > policy.max_wait:
        return None
    return wait


# --- the client ------------------------------------------------------------------------------------------

Opener = Callable[..., Any]


class CloudflareQueue:
    """One queue's pull consumer. Thread-compatible, holds no connection between calls."""

    def __init__(
        self,
        account_id: str,
        queue_id: str,
        api_token: str,
        *,
        base_url: str = DEFAULT_API_BASE_URL,
        timeout: float = 10.0,
        backoff: Backoff | None = None,
        sleep: Callable[[float], None] = time.sleep,
        opener: Opener = urllib.request.urlopen,
    ) -> None:
        self.account_id = account_id
        self.queue_id = queue_id
        self._token = api_token
        self.base_url = check_base_url(base_url)
        self.timeout = timeout
        self.backoff = backoff or Backoff()
        self._sleep = sleep
        self._open = opener

    def __repr__(self) -> str:  # the token stays out of every repr and log line
        return (
            f"CloudflareQueue(account_id={self.account_id!r}, queue_id={self.queue_id!r}, base_url={self.base_url!r})"
        )

    def pull(self, batch_size: int, visibility_timeout_ms: int) -> list[PulledMessage]:
        request = pull_request(self.base_url, self.account_id, self.queue_id, batch_size, visibility_timeout_ms)
        return parse_pull_answer(self._send(request, "pull"))

    def ack(self, acks: Sequence[str], retries: Sequence[Retry] = ()) -> AckResult:
        if not acks and not retries:
            return AckResult(acked=0, retried=0)
        request = ack_request(self.base_url, self.account_id, self.queue_id, acks, retries)
        answer = parse_ack_answer(self._send(request, "ack"))
        if answer.warnings:
            log.warning("the Queues API warned about an ack: %s", answer.warnings)
        return answer

    def _send(self, request: ApiRequest, what: str) -> Any:
        tries, waited = 0, 0.0
        while True:
            tries += 1
            try:
                return self._send_once(request)
            except _Retryable as exc:
                wait = wait_before_retry(self.backoff, tries, waited, exc.retry_after)
                if wait is None:
                    raise QueueUnavailable(
                        f"the Queues API {what} failed after {tries} tries ({waited:.0f} s of backoff): {exc}"
                    ) from None
                log.warning("the Queues API %s failed (%s); trying again in %.1f s", what, exc, wait)
                self._sleep(wait)
                waited += wait

    def _send_once(self, request: ApiRequest) -> Any:
        http_request = urllib.request.Request(
            request.url,
            data=json.dumps(request.body).encode(),
            method="POST",
            headers={
                "Authorization": f"Bearer {self._token}",
                "Content-Type": "application/json",
                "Accept": "application/json",
            },
        )
        try:
            with self._open(http_request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise _http_error(exc, request.url) from None
        except OSError as exc:  # URLError, timeouts, refused and reset connections
            raise _Retryable(f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}", None) from None
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise QueueUnavailable(f"the Queues API answered {request.url} with something that is not JSON") from None


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _http_error(exc: urllib.error.HTTPError, url: str) -> Exception:
    """Classify an HTTP error answer: retry throttling and server errors, refuse the rest as configuration."""
    status = exc.code
    try:
        document = json.loads(exc.read() or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        document = None
    errors = _describe_errors(document.get("errors") if isinstance(document, Mapping) else None)
    if status in (408, 429) or status >= 500:
        return _Retryable(f"HTTP {status}: {errors}", parse_retry_after(exc.headers.get("Retry-After")))
    hint = {
        401: "the API token was refused: check the token secret",
        403: "the API token lacks permission: it needs Account > Queues > Edit (queues read and write)",
        404: "no such account or queue: check CLOUDFLARE_ACCOUNT_ID and CLOUDFLARE_QUEUE_ID",
    }.get(status, "is an HTTP pull consumer attached to the queue (wrangler queues consumer http add)?")
    return QueueRequestRefused(f"the Queues API refused {url} with HTTP {status} ({errors}): {hint}")
