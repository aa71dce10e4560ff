"""The Cloudflare Queues pull-consumer client: its pure parts, then the client against the local server."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
from datetime import UTC, datetime

import pytest

from ckpt.adapters.cloudflare_queues import (
    Backoff,
    CloudflareQueue,
    QueueRequestRefused,
    QueueUnavailable,
    Retry,
    Undecodable,
    ack_request,
    api_token_from_secret,
    check_base_url,
    decode_body,
    parse_pull_answer,
    parse_retry_after,
    pull_request,
    wait_before_retry,
)
from ckpt.errors import ConfigurationError, TransientError
from tests.cloudflare_queues_server import LocalQueue, RateLimit, queues_server

BASE = "https://api.cloudflare.com/client/v4"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- bodies --------------------------------------------------------------------------------------------


def test_json_and_bytes_bodies_are_base64_and_text_bodies_are_as_sent():
    assert decode_body(b64(b'{"a": 1}'), "json") == b'{"a": 1}'
    assert decode_body(b64(b"\x00\xff"), "bytes") == b"\x00\xff"
    assert decode_body('{"a": 1}', "text") == '{"a": 1}'


@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [
        ("not base64!", "json", "not valid base64"),
        ("abc", "bytes", "not valid base64"),  # bad padding
        (b64(b"x"), "v8", "'v8' cannot be read by a pull consumer"),
        (None, "json", "body is NoneType"),
        ({"a": 1}, "text", "body is dict"),
    ],
)
def test_a_body_that_cannot_be_decoded_says_why(body, content_type, reason):
    decoded = decode_body(body, content_type)
    assert isinstance(decoded, Undecodable)
    assert reason in decoded.reason


def test_a_pull_answer_becomes_typed_messages():
    answer = {
        "success": True,
        "errors": [],
        "result": {
            "message_backlog_count": 2,
            "messages": [
                {
                    "id": "m1",
                    "body": b64(b'{"k": "v"}'),
                    "attempts": 2,
                    "lease_id": "lease-1",
                    "timestamp_ms": 1689615013586,
                    "metadata": {"CF-sourceMessageSource": "dash", "CF-Content-Type": "json"},
                },
                {"id": "m2", "body": "plain", "lease_id": "lease-2", "metadata": {"CF-Content-Type": "text"}},
                # no content type: Cloudflare's default, json
                {"id": "m3", "body": b64(b"[]"), "lease_id": "lease-3", "attempts": 1},
                {"id": "no-lease", "body": "x", "attempts": 1},
            ],
        },
    }
    first, second, third = parse_pull_answer(answer)
    assert (first.id, first.lease_id, first.attempts, first.body) == ("m1", "lease-1", 2, b'{"k": "v"}')
    assert (first.content_type, first.timestamp_ms) == ("json", 1689615013586)
    assert (second.body, second.attempts, second.content_type) == ("plain", 1, "text")
    assert (third.body, third.content_type) == (b"[]", "json")


@pytest.mark.parametrize(
    "answer", [{"success": False, "errors": [{"code": 10000, "message": "nope"}]}, [], "x", {"result": {}}]
)
def test_an_answer_without_success_is_a_transient_failure(answer):
    with pytest.raises(QueueUnavailable, match="did not report success"):
        parse_pull_answer(answer)


def test_a_successful_pull_of_nothing_is_an_empty_batch():
    assert parse_pull_answer({"success": True, "result": {"messages": []}}) == []
    assert parse_pull_answer({"success": True, "result": None}) == []


# --- requests ------------------------------------------------------------------------------------------


def test_requests_have_the_documented_paths_and_bodies():
    pull = pull_request(BASE, "acc", "q", 10, 300_000)
    assert pull.url == f"{BASE}/accounts/acc/queues/q/messages/pull"
    assert pull.body == {"batch_size": 10, "visibility_timeout_ms": 300_000}
    ack = ack_request(BASE, "acc", "q", ["l1"], [Retry("l2", 30), Retry("l3", 10**9)])
    assert ack.url == f"{BASE}/accounts/acc/queues/q/messages/ack"
    assert ack.body == {
        "acks": [{"lease_id": "l1"}],
        "retries": [{"lease_id": "l2", "delay_seconds": 30}, {"lease_id": "l3", "delay_seconds": 43200}],
    }


def test_ids_cannot_change_the_path():
    assert "/accounts/a%2F..%2Fx/queues/q%3F/" in pull_request(BASE, "a/../x", "q?", 1, 1).url


@pytest.mark.parametrize(("batch_size", "visibility"), [(0, 1000), (101, 1000), (10, 0), (10, 12 * 3600 * 1000 + 1)])
def test_pull_sizes_and_leases_stay_within_cloudflares_limits(batch_size, visibility):
    with pytest.raises(ValueError):
        pull_request(BASE, "a", "q", batch_size, visibility)


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://api.cloudflare.com/client/v4", True),
        ("https://api.cloudflare.com/client/v4/", True),
        ("http://127.0.0.1:8080/client/v4", True),
        ("http://localhost:8080/client/v4", True),
        ("http://api.cloudflare.com/client/v4", False),  # the token would cross a network in clear text
        ("ftp://example.com", False),
        ("api.cloudflare.com", False),
    ],
)
def test_the_token_only_goes_over_https_or_to_loopback(url, allowed):
    if allowed:
        assert check_base_url(url) == url.rstrip("/")
    else:
        with pytest.raises(ConfigurationError):
            check_base_url(url)


def test_the_token_secret_is_the_token_or_a_json_object_with_it():
    assert api_token_from_secret("  abc123_-XYZ\n") == "abc123_-XYZ"
    assert api_token_from_secret('{"api_token": "abc"}') == "abc"


@pytest.mark.parametrize("secret", ["", "   ", "two tokens", '{"token": "abc"}', "{not json"])
def test_an_unusable_token_secret_is_refused_without_quoting_it(secret):
    with pytest.raises(ConfigurationError) as caught:
        api_token_from_secret(secret)
    assert "abc" not in str(caught.value) and "two" not in str(caught.value)


# --- backoff -------------------------------------------------------------------------------------------


def test_retry_after_is_read_as_seconds_or_an_http_date():
    now = datetime(2025, 11, 5, 14, 30, 0, tzinfo=UTC)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 05 Nov 2025 14:30:12 GMT", now=now) == 12.0
    assert parse_retry_after("Wed, 05 Nov 2025 14:29:00 GMT", now=now) == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None


def test_waits_double_honour_retry_after_and_are_bounded_in_count_and_total():
    policy = Backoff(attempts=4, first_wait=1.0, max_wait=20.0)
    assert [wait_before_retry(policy, n, 0.0, None) for n in (1, 2, 3)] == [1.0, 2.0, 4.0]
    assert wait_before_retry(policy, 4, 0.0, None) is None  # the fourth failure was the last try
    assert wait_before_retry(policy, 1, 0.0, 5.0) == 5.0
    # Cloudflare may block for five minutes: waiting that long would outlast the run, so give up now
    assert wait_before_retry(policy, 1, 0.0, 300.0) is None
    assert wait_before_retry(policy, 2, 18.0, 3.0) is None


# --- the client against the local server ------------------------------------------------------------------


def client(server, token=None, **kwargs) -> CloudflareQueue:
    return CloudflareQueue(
        server.account_id, server.queue_id, token or server.token, base_url=server.base_url, **kwargs
    )


def test_pull_then_ack_and_retry_over_http():
    with queues_server() as server:
        server.queue.send({"n": 1})
        server.queue.send("two", content_type="text")
        server.queue.send({"n": 3})
        queue = client(server)

        first, second, third = queue.pull(10, 60_000)
        assert (json.loads(first.body), second.body, second.content_type) == ({"n": 1}, "two", "text")
        assert queue.pull(10, 60_000) == []  # leased: invisible to every other pull

        answer = queue.ack([first.lease_id, second.lease_id], [Retry(third.lease_id, 0)])

        assert (answer.acked, answer.retried) == (2, 1)
        [again] = queue.pull(10, 60_000)
        assert (again.id, again.attempts) == (third.id, 2)


def test_an_empty_ack_sends_nothing():
    with queues_server() as server:
        client(server).ack([], [])
        assert server.queue.requests == []


def test_a_refused_token_is_a_configuration_error_that_never_shows_the_token():
    with queues_server() as server:
        queue = client(server, token="wrong-secret-token")
        with pytest.raises(QueueRequestRefused, match="HTTP 401") as caught:
            queue.pull(1, 1000)
        assert "wrong-secret-token" not in str(caught.value)
        assert "wrong-secret-token" not in repr(queue)


def test_another_queue_is_a_configuration_error():
    with queues_server() as server:
        queue = CloudflareQueue(server.account_id, "0" * 32, server.token, base_url=server.base_url)
        with pytest.raises(QueueRequestRefused, match=r"HTTP 404.*CLOUDFLARE_QUEUE_ID"):
            queue.pull(1, 1000)


def test_throttling_is_waited_out_for_as_long_as_retry_after_says():
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        time.sleep(seconds)

    with queues_server(LocalQueue()) as server:
        server.queue.rate_limit = RateLimit(requests=1, window_seconds=1.0)
        queue = client(server, sleep=sleep)
        assert queue.pull(1, 1000) == []
        assert queue.pull(1, 1000) == []  # throttled once, then allowed

    assert server.queue.statuses() == [200, 429, 200]
    assert waits == [1.0]


def test_throttling_past_the_backoff_is_a_transient_failure():
    with queues_server(LocalQueue()) as server:
        server.queue.rate_limit = RateLimit(requests=0, window_seconds=60.0)
        queue = client(server, backoff=Backoff(attempts=3, max_wait=20.0))
        with pytest.raises(QueueUnavailable, match="HTTP 429") as caught:
            queue.pull(1, 1000)
    assert isinstance(caught.value, TransientError)
    assert server.queue.statuses() == [429]  # Retry-After (60 s) is beyond the backoff: no second try


class _FakeResponse:
    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def __enter__(self) -> _FakeResponse:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def read(self) -> bytes:
        return self.payload


def test_server_errors_and_lost_connections_are_retried_with_growing_waits():
    failures = [
        urllib.error.HTTPError("u", 503, "Service Unavailable", {}, None),  # type: ignore[arg-type]
        urllib.error.URLError(ConnectionResetError("reset")),
    ]
    sent = []

    def opener(request, timeout):
        sent.append((request.get_header("Authorization"), timeout))
        if failures:
            raise failures.pop(0)
        return _FakeResponse(b'{"success": true, "result": {"messages": []}}')

    waits: list[float] = []
    queue = CloudflareQueue("a", "q", "tok", opener=opener, sleep=waits.append, timeout=7)

    assert queue.pull(5, 1000) == []
    assert waits == [1.0, 2.0]
    assert sent == [("Bearer tok", 7)] * 3


def test_an_unreachable_api_is_a_transient_failure_after_the_backoff():
    def opener(request, timeout):
        raise urllib.error.URLError(ConnectionRefusedError("refused"))

    queue = CloudflareQueue("a", "q", "tok", opener=opener, sleep=lambda s: None, backoff=Backoff(attempts=2))
    with pytest.raises(QueueUnavailable, match="after 2 tries"):
        queue.ack(["l1"])


def test_an_answer_that_is_not_json_is_a_transient_failure():
    queue = CloudflareQueue("a", "q", "tok", opener=lambda request, timeout: _FakeResponse(b"<html>"))
    with pytest.raises(QueueUnavailable, match="not JSON"):
        queue.pull(1, 1000)


@pytest.mark.parametrize(
    "secret", ['{"api_token": ' + "1" * 5000 + "}", "{" * 5000, '{"api_token": "a", "api_token": "b"}']
)
def test_a_token_secret_that_is_no_usable_json_is_a_configuration_error(secret):
    with pytest.raises(ConfigurationError, match="without a string api_token"):
        api_token_from_secret(secret)
