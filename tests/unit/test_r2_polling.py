"""The R2 poller's logic with fakes: settings, time budget, what is acknowledged, retried or left, and how an
R2 notification's key is read."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from ckpt.adapters.cloudflare_queues import (
    AckResult,
    PulledMessage,
    QueueRequestRefused,
    QueueUnavailable,
    Retry,
    Undecodable,
)
from ckpt.contract.keys import Layout
from ckpt.contract.outcome import Outcome, Status
from ckpt.errors import ConfigurationError, DatabaseUnavailable
from ckpt.promotion.r2_polling import (
    Disposition,
    DrainPolicy,
    PollerSettings,
    StopReason,
    UnusableMessage,
    Verdict,
    can_start,
    drain,
    judge,
    manifest_key_test,
    pull_size,
    retry_delay_seconds,
    settle,
)
from promote_checkpoints import triggers

MANIFEST = "staging/projects/7/jobs/42/attempts/1/manifest.json"
SECRET_ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:cloudflare-queues-AbCdEf"


# --- settings --------------------------------------------------------------------------------------------


def env(**overrides: str) -> dict[str, str]:
    return {
        "CLOUDFLARE_ACCOUNT_ID": "3f4b7e2a9c1d4e8f9a0b1c2d3e4f5a6b",
        "CLOUDFLARE_QUEUE_ID": "9a8b7c6d5e4f30211f2e3d4c5b6a7980",
        "CLOUDFLARE_API_TOKEN_SECRET_ARN": SECRET_ARN,
        **overrides,
    }


def test_settings_come_from_the_environment_with_cloudflares_api_by_default():
    settings = PollerSettings.from_env(env(CLOUDFLARE_API_BASE_URL=""))
    assert settings.api_base_url == "https://api.cloudflare.com/client/v4"
    assert (settings.batch_size, settings.visibility_timeout_seconds) == (10, 300)
    assert settings.api_token_secret_arn == SECRET_ARN
    custom = PollerSettings.from_env(env(CLOUDFLARE_BATCH_SIZE="100", CLOUDFLARE_VISIBILITY_TIMEOUT_SECONDS="43200"))
    assert (custom.batch_size, custom.visibility_timeout_seconds) == (100, 43200)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"CLOUDFLARE_QUEUE_ID": ""}, "CLOUDFLARE_QUEUE_ID is not set"),
        ({"CLOUDFLARE_API_TOKEN_SECRET_ARN": " "}, "CLOUDFLARE_API_TOKEN_SECRET_ARN is not set"),
        ({"CLOUDFLARE_ACCOUNT_ID": "../other"}, "CLOUDFLARE_ACCOUNT_ID must be a Cloudflare id"),
        ({"CLOUDFLARE_BATCH_SIZE": "101"}, "from 1 to 100"),
        ({"CLOUDFLARE_BATCH_SIZE": "ten"}, "from 1 to 100"),
        ({"CLOUDFLARE_VISIBILITY_TIMEOUT_SECONDS": "43201"}, "from 1 to 43200"),
        ({"CLOUDFLARE_API_BASE_URL": "http://example.com/client/v4"}, "https://"),
    ],
)
def test_a_bad_setting_is_a_configuration_error_naming_it(overrides, message):
    with pytest.raises(ConfigurationError, match=message):
        PollerSettings.from_env(env(**overrides))


# --- time --------------------------------------------------------------------------------------------------


def test_each_message_gets_a_tenth_of_the_run_and_the_lease_outlives_the_run():
    policy = DrainPolicy.for_run(budget_ms=120_000, batch_size=10, visibility_timeout_seconds=30)
    assert (policy.ack_margin_ms, policy.message_reserve_ms) == (10_000, 11_000)
    assert policy.visibility_timeout_ms == 180_000  # 30 s asked for, raised to the run's 120 s + a minute
    assert pull_size(120_000, policy) == 10
    assert pull_size(60_000, policy) == 4  # (60 - 10) // 11
    assert pull_size(20_999, policy) == 0
    assert can_start(21_000, policy) and not can_start(20_999, policy)
    longer = DrainPolicy.for_run(budget_ms=120_000, batch_size=10, visibility_timeout_seconds=3600)
    assert longer.visibility_timeout_ms == 3_600_000
    capped = DrainPolicy.for_run(budget_ms=900_000, batch_size=100, visibility_timeout_seconds=43200)
    assert capped.visibility_timeout_ms == 43_200_000


def test_the_pull_never_exceeds_the_batch_size():
    policy = DrainPolicy.for_run(budget_ms=900_000, batch_size=3, visibility_timeout_seconds=60)
    assert pull_size(900_000, policy) == 3


def test_retry_delays_grow_with_attempts_up_to_a_quarter_hour():
    assert [retry_delay_seconds(n) for n in (1, 2, 3, 4, 5, 6, 7, 50)] == [30, 60, 120, 240, 480, 900, 900, 900]
    assert retry_delay_seconds(0) == 30


# --- one message -------------------------------------------------------------------------------------------


def message(n: int = 1, body: bytes | str | Undecodable = b"{}", attempts: int = 1) -> PulledMessage:
    return PulledMessage(id=f"m{n}", lease_id=f"lease-{n}", attempts=attempts, body=body, content_type="json")


def outcome(key: str = MANIFEST, status: Status = Status.PROMOTED) -> Outcome:
    return Outcome(status=status, reason="", bucket="b", manifest_key=key, trigger="r2-queue")


def test_settle_acks_answered_skipped_and_rejected_and_retries_the_rest_with_a_delay():
    judged = [
        (message(1), Verdict(Disposition.ANSWERED)),
        (message(2), Verdict(Disposition.SKIPPED)),
        (message(3), Verdict(Disposition.REJECTED, "bad")),
        (message(4, attempts=3), Verdict(Disposition.RETRY, "db down")),
    ]
    assert settle(judged) == (["lease-1", "lease-2", "lease-3"], [Retry("lease-4", 120)])


def parse_keys(body: bytes | str) -> Sequence[str]:
    if body == b"not json":
        raise UnusableMessage("R2 notification is not valid JSON")
    return [] if body == b"[]" else [part for part in (body.decode() if isinstance(body, bytes) else body).split()]


def test_judge_rejects_what_cannot_be_read_and_skips_what_creates_nothing():
    promote = pytest.fail  # never reached
    assert judge(message(body=Undecodable("bad base64")), parse_keys, promote) == Verdict(
        Disposition.REJECTED, "bad base64"
    )
    assert judge(message(body=b"not json"), parse_keys, promote) == Verdict(
        Disposition.REJECTED, "R2 notification is not valid JSON"
    )
    assert judge(message(body=b"[]"), parse_keys, promote).disposition is Disposition.SKIPPED


def test_judge_answers_with_every_outcome_and_retries_on_a_transient_failure():
    assert judge(message(body=b"a b"), parse_keys, outcome) == Verdict(
        Disposition.ANSWERED, outcomes=(outcome("a"), outcome("b"))
    )

    def flaky(key: str) -> Outcome:
        if key == "b":
            raise DatabaseUnavailable("database error: connection refused")
        return outcome(key)

    verdict = judge(message(body=b"a b"), parse_keys, flaky)
    assert verdict.disposition is Disposition.RETRY
    assert verdict.reason == "database error: connection refused"


def test_judge_lets_a_configuration_error_through():
    def misconfigured(key: str) -> Outcome:
        raise ConfigurationError("missing tables ckpt_promotions")

    with pytest.raises(ConfigurationError):
        judge(message(body=b"a"), parse_keys, misconfigured)


# --- keys --------------------------------------------------------------------------------------------------

LAYOUT = Layout(bucket="vision-platform-prod")
IS_MANIFEST = manifest_key_test(LAYOUT)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        (MANIFEST, MANIFEST),  # as R2's examples send it
        ("staging%2Fprojects%2F7%2Fjobs%2F42%2Fattempts%2F1%2Fmanifest.json", MANIFEST),  # percent-encoded
        ("staging/projects/7/jobs/42/attempts/1/manifest%2Ejson", MANIFEST),
        ("staging/projects/7/jobs/42/attempts/1/best.pt", "staging/projects/7/jobs/42/attempts/1/best.pt"),
        ("staging/other%41/manifest.json", "staging/other%41/manifest.json"),  # neither reading is a manifest
        ("staging%2Fprojects%2F07%2Fjobs%2F42%2Fattempts%2F1%2Fmanifest.json", None),  # decoded, still not one
    ],
)
def test_an_r2_key_is_read_as_given_unless_only_its_decoding_is_a_manifest_key(raw, key):
    assert triggers.r2_object_key(raw, IS_MANIFEST) == (key or raw)


def test_a_key_that_is_a_manifest_key_as_given_is_never_decoded():
    layout = Layout(bucket="b", staging_prefix="st%41ging/")  # a prefix with a literal %41
    literal = "st%41ging/projects/7/jobs/42/attempts/1/manifest.json"
    assert triggers.r2_object_key(literal, manifest_key_test(layout)) == literal


def test_form_encoded_keys_are_decoded_when_the_prefix_has_a_space():
    layout = Layout(bucket="b", staging_prefix="my staging/")
    is_manifest = manifest_key_test(layout)
    expected = "my staging/projects/7/jobs/42/attempts/1/manifest.json"
    assert triggers.r2_object_key("my+staging/projects/7/jobs/42/attempts/1/manifest.json", is_manifest) == expected
    assert triggers.r2_object_key("my%20staging/projects/7/jobs/42/attempts/1/manifest.json", is_manifest) == expected


def test_objects_in_reads_r2_keys_with_the_layouts_test_and_as_given_without_it():
    document = {
        "account": "a",
        "action": "PutObject",
        "bucket": "vision-platform-prod",
        "object": {"key": "staging%2Fprojects%2F7%2Fjobs%2F42%2Fattempts%2F1%2Fmanifest.json"},
    }
    [decoded] = triggers.objects_in(document, is_manifest_key=IS_MANIFEST)
    assert decoded.key == MANIFEST
    [as_given] = triggers.objects_in(document)
    assert as_given.key == document["object"]["key"]


# --- the loop ----------------------------------------------------------------------------------------------


@dataclass
class FakeQueue:
    """Batches handed out in order; every ack recorded; optional failures."""

    batches: list[list[PulledMessage]]
    acks: list[tuple[list[str], list[Retry]]] = field(default_factory=list)
    pulls: list[int] = field(default_factory=list)
    fail_pull: Exception | None = None
    fail_ack: Exception | None = None

    def pull(self, batch_size: int, visibility_timeout_ms: int) -> list[PulledMessage]:
        self.pulls.append(batch_size)
        if self.fail_pull is not None:
            raise self.fail_pull
        return self.batches.pop(0)[:batch_size] if self.batches else []

    def ack(self, acks: Sequence[str], retries: Sequence[Retry] = ()) -> AckResult:
        if self.fail_ack is not None:
            raise self.fail_ack
        self.acks.append((list(acks), list(retries)))
        return AckResult(acked=len(acks), retried=len(retries))


@dataclass
class FakeClock:
    """Remaining milliseconds; ``judge_by_body`` spends some for each message it judges."""

    remaining: int = 120_000

    def __call__(self) -> int:
        return self.remaining


POLICY = DrainPolicy.for_run(budget_ms=120_000, batch_size=10, visibility_timeout_seconds=300)


def judge_by_body(clock: FakeClock | None = None, spend: int = 0):
    """Bodies say what happens: promote, delete (skipped), garbage (rejected), transient, config."""

    def judge_message(m: PulledMessage) -> Verdict:
        if clock is not None:
            clock.remaining -= spend
        match m.body:
            case b"promote":
                return Verdict(Disposition.ANSWERED, outcomes=(outcome(),))
            case b"duplicate":
                return Verdict(Disposition.ANSWERED, outcomes=(outcome(status=Status.DUPLICATE),))
            case b"delete":
                return Verdict(Disposition.SKIPPED)
            case b"transient":
                return Verdict(Disposition.RETRY, "db down")
            case b"config":
                raise ConfigurationError("missing tables")
        return Verdict(Disposition.REJECTED, "not a notification")

    return judge_message


def batch(*bodies: bytes, start: int = 1) -> list[PulledMessage]:
    return [message(n, body) for n, body in enumerate(bodies, start)]


def test_drains_batches_until_a_pull_is_empty():
    queue = FakeQueue([batch(b"promote", b"delete", b"garbage"), batch(b"duplicate", start=4)])

    report = drain(queue, judge_by_body(), FakeClock(), POLICY)

    assert queue.acks == [(["lease-1", "lease-2", "lease-3"], []), (["lease-4"], [])]
    assert queue.pulls == [10, 10, 10]
    assert (report.pulled, report.acked, report.rejected, report.skipped, report.retried) == (4, 4, 1, 1, 0)
    assert (report.batches, report.stopped, report.error) == (2, StopReason.EMPTY, None)
    assert report.outcome_counts() == {"promoted": 1, "duplicate": 1}


def test_a_transient_failure_is_retried_with_a_delay_and_ends_the_run_after_its_batch():
    queue = FakeQueue([batch(b"transient", b"promote"), batch(b"promote", start=3)])

    report = drain(queue, judge_by_body(), FakeClock(), POLICY)

    assert queue.acks == [(["lease-2"], [Retry("lease-1", 30)])]
    assert (report.acked, report.retried, report.stopped) == (1, 1, StopReason.TRANSIENT)
    assert len(queue.batches) == 1  # not pulled: it would only spend attempts while the database is down


def test_a_configuration_error_acks_what_was_answered_and_leaves_the_rest():
    queue = FakeQueue([batch(b"promote", b"config", b"promote")])

    report = drain(queue, judge_by_body(), FakeClock(), POLICY)

    assert queue.acks == [(["lease-1"], [])]
    assert (report.acked, report.unprocessed, report.stopped) == (1, 2, StopReason.CONFIGURATION)
    assert isinstance(report.error, ConfigurationError)


def test_nothing_is_pulled_without_time_for_a_message():
    queue = FakeQueue([batch(b"promote")])
    report = drain(queue, judge_by_body(), FakeClock(remaining=20_000), POLICY)
    assert (queue.pulls, report.stopped, report.pulled) == ([], StopReason.TIME, 0)


def test_messages_not_started_for_lack_of_time_are_neither_acked_nor_retried():
    clock = FakeClock(remaining=60_000)  # room for 4 messages of 11 s, after a 10 s margin
    queue = FakeQueue([batch(b"promote", b"promote", b"promote", b"promote")])

    report = drain(queue, judge_by_body(clock, spend=20_000), clock, POLICY)  # each takes longer than its share

    assert queue.pulls == [4]
    assert queue.acks == [(["lease-1", "lease-2"], [])]
    assert (report.acked, report.unprocessed, report.stopped) == (2, 2, StopReason.TIME)


def test_the_pull_shrinks_as_time_runs_out():
    clock = FakeClock(remaining=120_000)
    queue = FakeQueue([batch(*[b"promote"] * 10), batch(*[b"promote"] * 10, start=11)])

    drain(queue, judge_by_body(clock, spend=6_000), clock, POLICY)

    # 120 s left: 10; then 60 s: (60 - 10) // 11 = 4; then 36 s: 2 (and that pull finds the queue empty)
    assert queue.pulls == [10, 4, 2]


def test_a_failed_pull_ends_the_run_with_the_error():
    queue = FakeQueue([], fail_pull=QueueUnavailable("HTTP 503"))
    report = drain(queue, judge_by_body(), FakeClock(), POLICY)
    assert (report.stopped, str(report.error)) == (StopReason.QUEUE_UNAVAILABLE, "HTTP 503")


def test_a_refused_pull_is_a_configuration_stop():
    queue = FakeQueue([], fail_pull=QueueRequestRefused("HTTP 403"))
    report = drain(queue, judge_by_body(), FakeClock(), POLICY)
    assert report.stopped is StopReason.CONFIGURATION


def test_when_the_ack_fails_the_processed_messages_count_as_unprocessed():
    queue = FakeQueue([batch(b"promote", b"garbage")], fail_ack=QueueUnavailable("HTTP 429"))

    report = drain(queue, judge_by_body(), FakeClock(), POLICY)

    # their leases expire and Cloudflare delivers them again: the promotion answers "duplicate" then
    assert (report.acked, report.unprocessed, report.stopped) == (0, 2, StopReason.QUEUE_UNAVAILABLE)
    assert report.outcomes == []
