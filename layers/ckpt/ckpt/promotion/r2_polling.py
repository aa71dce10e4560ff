"""Draining a Cloudflare Queue of R2 event notifications into promotions.

R2 sends its event notifications to a Cloudflare Queue, not to SQS; the poller pulls them over HTTP and hands
each object-create to the same promotion as every other trigger. This module is the poller's logic, free of
Lambda, HTTP and the database: the queue, the parsing and the promotion are passed in, so it is tested with
fakes. Its decisions are pure functions (``settle``, ``retry_delay_seconds``, ``pull_size``); ``drain`` is the
loop that applies them.

What happens to a message (the lease is Cloudflare's: a pulled message is invisible to every other consumer
until it is acknowledged, marked for retry, or its visibility timeout passes):

| the message | verdict | sent to Cloudflare |
|---|---|---|
| every object it names was answered (promoted, duplicate, superseded, rejected or ignored) | answered | ack |
| a notification of no object creation (DeleteObject, LifecycleDeletion, …) | skipped | ack |
| undecodable, not JSON, not a notification: no retry can change it (logged at ERROR, counted) | rejected | ack |
| a promotion failed transiently (storage, database, a staged file replaced) | retry | retry, delay by attempts |
| the deployment is misconfigured (``ConfigurationError``) | — | nothing: it and the rest are left |
| not started because the run's time is short | left | nothing: the lease expires, it comes back |

Messages answered before a configuration error or a queue failure in the same batch are still acknowledged:
they were processed, and acknowledging them spares a duplicate. After a batch with a transient failure, or a
configuration error, the run stops pulling: the infrastructure may be failing, and more pulls would only burn
the attempts of messages that would fail the same way (Cloudflare dead-letters a message after
``max_retries``). The next scheduled run carries on.

Concurrent runs are safe: each pull leases its messages to that caller alone, so two runs never process the
same delivery at once; the lease is made longer than a run can last (``DrainPolicy.for_run``), so it cannot
expire while its run still works on it. A message Cloudflare does deliver twice (at-least-once) is promoted
once and recorded as a duplicate the second time: the promotion is idempotent and serialised per job.
"""

from __future__ import annotations

import enum
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from ckpt.adapters.cloudflare_queues import (
    DEFAULT_API_BASE_URL,
    MAX_BATCH_SIZE,
    MAX_DELAY_SECONDS,
    MAX_VISIBILITY_TIMEOUT_MS,
    AckResult,
    PulledMessage,
    Retry,
    Undecodable,
    check_base_url,
)
from ckpt.contract.keys import Layout
from ckpt.contract.outcome import Outcome
from ckpt.errors import ConfigurationError, TransientError
from ckpt.setting_values import whole_number

log = logging.getLogger(__name__)

T = TypeVar("T")

# --- settings --------------------------------------------------------------------------------------------

# Cloudflare account and queue ids are 32 hex digits; anything else would also end up in a URL path.
_CLOUDFLARE_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z_-]{0,63}")


@dataclass(frozen=True)
class PollerSettings:
    """The poller's settings, read once from the environment. The API token itself is not here: only the
    ARN of the secret that holds it."""

    account_id: str
    queue_id: str
    api_token_secret_arn: str
    api_base_url: str = DEFAULT_API_BASE_URL
    batch_size: int = 10
    visibility_timeout_seconds: int = 300

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> PollerSettings:
        def required(name: str) -> str:
            value = (env.get(name) or "").strip()
            if not value:
                raise ConfigurationError(f"{name} is not set")
            return value

        account_id, queue_id = required("CLOUDFLARE_ACCOUNT_ID"), required("CLOUDFLARE_QUEUE_ID")
        for name, value in (("CLOUDFLARE_ACCOUNT_ID", account_id), ("CLOUDFLARE_QUEUE_ID", queue_id)):
            if not _CLOUDFLARE_ID.fullmatch(value):
                raise ConfigurationError(f"{name} must be a Cloudflare id (letters and digits), got {value!r}")
        return cls(
            account_id=account_id,
            queue_id=queue_id,
            api_token_secret_arn=required("CLOUDFLARE_API_TOKEN_SECRET_ARN"),
            api_base_url=check_base_url(env.get("CLOUDFLARE_API_BASE_URL") or DEFAULT_API_BASE_URL),
            batch_size=whole_number("CLOUDFLARE_BATCH_SIZE", env.get("CLOUDFLARE_BATCH_SIZE"), 10, 1, MAX_BATCH_SIZE),
            visibility_timeout_seconds=whole_number(
                "CLOUDFLARE_VISIBILITY_TIMEOUT_SECONDS",
                env.get("CLOUDFLARE_VISIBILITY_TIMEOUT_SECONDS"),
                300,
                1,
                MAX_VISIBILITY_TIMEOUT_MS // 1000,
            ),
        )


# --- time ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DrainPolicy:
    """How much a run pulls, and when it stops, given the time it has.

    ``message_reserve_ms`` is the time set aside for each message: a run pulls no more messages than it has
    reserves for, and starts none with less than one reserve left (plus ``ack_margin_ms`` to acknowledge
    what it did). ``visibility_timeout_ms`` is the lease asked for with each pull."""

    batch_size: int
    visibility_timeout_ms: int
    message_reserve_ms: int
    ack_margin_ms: int

    @classmethod
    def for_run(cls, budget_ms: int, batch_size: int, visibility_timeout_seconds: int) -> DrainPolicy:
        """The policy of a run that has ``budget_ms`` in all (the Lambda timeout, read at its start).

        Each message gets a tenth of what is left after the ack margin: the share of the same timeout the SQS
        trigger gives each manifest of a batch of 10. The lease is at least the run's time plus a minute, so it
        outlives the run (a shorter one could expire mid-promotion and hand the message to a second run)."""
        ack_margin = min(10_000, max(1_000, budget_ms // 6))
        reserve = max(1_000, (budget_ms - ack_margin) // 10)
        visibility = max(visibility_timeout_seconds * 1000, budget_ms + 60_000)
        return cls(
            batch_size=batch_size,
            visibility_timeout_ms=min(visibility, MAX_VISIBILITY_TIMEOUT_MS),
            message_reserve_ms=reserve,
            ack_margin_ms=ack_margin,
        )


def pull_size(remaining_ms: int, policy: DrainPolicy) -> int:
    """How many messages to pull with ``remaining_ms`` left: no more than there is time to process; 0 = stop."""
    affordable = (remaining_ms - policy.ack_margin_ms) // policy.message_reserve_ms
    return max(0, min(policy.batch_size, affordable))


def can_start(remaining_ms: int, policy: DrainPolicy) -> bool:
    return remaining_ms - policy.ack_margin_ms >= policy.message_reserve_ms


# --- decisions -------------------------------------------------------------------------------------------


class Disposition(enum.StrEnum):
    ANSWERED = "answered"
    SKIPPED = "skipped"
    REJECTED = "rejected"
    RETRY = "retry"


ACKNOWLEDGED = frozenset({Disposition.ANSWERED, Disposition.SKIPPED, Disposition.REJECTED})


@dataclass(frozen=True)
class Verdict:
    disposition: Disposition
    reason: str = ""
    outcomes: tuple[Outcome, ...] = ()


RETRY_FIRST_DELAY_SECONDS = 30
RETRY_MAX_DELAY_SECONDS = 15 * 60


def retry_delay_seconds(attempts: int) -> int:
    """The delay before a transiently failed message is delivered again: 30 s after its first attempt,
    doubling with each attempt, at most 15 minutes (a database or store outage gets time to end before the
    message's attempts run out)."""
    exponent = max(0, min(attempts - 1, 16))
    return min(RETRY_FIRST_DELAY_SECONDS * 2**exponent, RETRY_MAX_DELAY_SECONDS, MAX_DELAY_SECONDS)


def settle(judged: Iterable[tuple[PulledMessage, Verdict]]) -> tuple[list[str], list[Retry]]:
    """The acks and retries for the messages judged so far; a message not judged is in neither."""
    acks: list[str] = []
    retries: list[Retry] = []
    for message, verdict in judged:
        if verdict.disposition in ACKNOWLEDGED:
            acks.append(message.lease_id)
        elif verdict.disposition is Disposition.RETRY:
            retries.append(Retry(message.lease_id, retry_delay_seconds(message.attempts)))
    return acks, retries


# --- one message -----------------------------------------------------------------------------------------


class UnusableMessage(ValueError):
    """The body is not a notification this service accepts; retrying cannot change that."""


def judge(
    message: PulledMessage,
    parse: Callable[[bytes | str], Sequence[T]],
    promote: Callable[[T], Outcome],
) -> Verdict:
    """Decode, parse and promote one message. ``TransientError`` becomes a retry; ``ConfigurationError``
    propagates (the message must not be acknowledged, and the run must stop)."""
    if isinstance(message.body, Undecodable):
        return Verdict(Disposition.REJECTED, message.body.reason)
    try:
        objects = parse(message.body)
    except UnusableMessage as exc:
        return Verdict(Disposition.REJECTED, str(exc))
    if not objects:
        return Verdict(Disposition.SKIPPED, "no object was created")
    outcomes = []
    for obj in objects:
        try:
            outcomes.append(promote(obj))
        except TransientError as exc:
            return Verdict(Disposition.RETRY, str(exc), tuple(outcomes))
    return Verdict(Disposition.ANSWERED, outcomes=tuple(outcomes))


# --- keys ------------------------------------------------------------------------------------------------


def manifest_key_test(layout: Layout) -> Callable[[str], bool]:
    """Whether a key is a manifest key of ``layout``: how ``triggers.objects_in`` chooses between an R2
    notification's key as given and its URL-decoding (``triggers.r2_object_key``)."""

    def is_manifest_key(key: str) -> bool:
        try:
            layout.parse_manifest_key(key)
        except ValueError:
            return False
        return True

    return is_manifest_key


# --- the loop --------------------------------------------------------------------------------------------


class MessageQueue(Protocol):
    def pull(self, batch_size: int, visibility_timeout_ms: int) -> list[PulledMessage]: ...

    def ack(self, acks: Sequence[str], retries: Sequence[Retry] = ()) -> AckResult: ...


class StopReason(enum.StrEnum):
    EMPTY = "empty"  # a pull returned nothing
    TIME = "time"  # not enough time left for another message
    TRANSIENT = "transient"  # a batch had a transient failure
    CONFIGURATION = "configuration"  # misconfigured: nothing more can succeed
    QUEUE_UNAVAILABLE = "queue-unavailable"  # the Queues API failed past its backoff


@dataclass
class DrainReport:
    pulled: int = 0
    acked: int = 0
    retried: int = 0
    rejected: int = 0
    skipped: int = 0
    # pulled but neither acknowledged nor retried: not started for lack of time, left by a configuration
    # error, or processed but not acknowledged because the ack request failed. Their leases expire.
    unprocessed: int = 0
    batches: int = 0
    outcomes: list[Outcome] = field(default_factory=list)
    stopped: StopReason = StopReason.EMPTY
    error: Exception | None = None

    def outcome_counts(self) -> Counter[str]:
        return Counter(str(outcome.status) for outcome in self.outcomes)


def drain(
    queue: MessageQueue,
    judge_message: Callable[[PulledMessage], Verdict],
    remaining_ms: Callable[[], int],
    policy: DrainPolicy,
) -> DrainReport:
    """Pull and settle batches until the queue is empty, time is short, or something fails. Never raises for
    the queue or a message: the report says what happened (``error`` holds a configuration error or a queue
    failure for the caller to raise or log)."""
    report = DrainReport()
    while True:
        size = pull_size(remaining_ms(), policy)
        if size == 0:
            report.stopped = StopReason.TIME
            return report
        try:
            batch = queue.pull(size, policy.visibility_timeout_ms)
        except (TransientError, ConfigurationError) as exc:
            return _stopped(report, exc)
        if not batch:
            report.stopped = StopReason.EMPTY
            return report
        report.batches += 1
        report.pulled += len(batch)
        judged, stop = _judge_batch(batch, judge_message, remaining_ms, policy, report)
        acks, retries = settle(judged)
        try:
            queue.ack(acks, retries)
        except (TransientError, ConfigurationError) as exc:
            report.unprocessed += len(judged)
            return _stopped(report, exc)
        _count(report, judged)
        if stop is not None:
            return stop
        if any(verdict.disposition is Disposition.RETRY for _, verdict in judged):
            report.stopped = StopReason.TRANSIENT
            return report


def _judge_batch(
    batch: list[PulledMessage],
    judge_message: Callable[[PulledMessage], Verdict],
    remaining_ms: Callable[[], int],
    policy: DrainPolicy,
    report: DrainReport,
) -> tuple[list[tuple[PulledMessage, Verdict]], DrainReport | None]:
    """The verdicts of a batch, in order, and the finished report when the run must stop after this batch."""
    judged: list[tuple[PulledMessage, Verdict]] = []
    for index, message in enumerate(batch):
        if not can_start(remaining_ms(), policy):
            left = len(batch) - index
            report.unprocessed += left
            log.warning("%d pulled message(s) left for lack of time; their leases expire", left)
            report.stopped = StopReason.TIME
            return judged, report
        try:
            verdict = judge_message(message)
        except ConfigurationError as exc:
            report.unprocessed += len(batch) - index
            return judged, _stopped(report, exc)
        judged.append((message, verdict))
    return judged, None


def _count(report: DrainReport, judged: list[tuple[PulledMessage, Verdict]]) -> None:
    for _, verdict in judged:
        report.outcomes.extend(verdict.outcomes if verdict.disposition is not Disposition.RETRY else ())
        if verdict.disposition in ACKNOWLEDGED:
            report.acked += 1
        else:
            report.retried += 1
        if verdict.disposition is Disposition.REJECTED:
            report.rejected += 1
        elif verdict.disposition is Disposition.SKIPPED:
            report.skipped += 1


def _stopped(report: DrainReport, exc: Exception) -> DrainReport:
    report.error = exc
    report.stopped = StopReason.CONFIGURATION if isinstance(exc, ConfigurationError) else StopReason.QUEUE_UNAVAILABLE
    return report
