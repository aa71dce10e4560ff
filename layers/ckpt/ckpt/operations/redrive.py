"""``ckpt redrive``: move the dead-letter queue's messages back to the promotion queue.

A manifest's message reaches the dead-letter queue after 5 failed deliveries (the function recorded it
``rejected``, "gave up after 5 deliveries", when the database was reachable). Once the cause is fixed, moving the
messages back lets the function promote them as if they had just arrived.

Two ways, the first where the queue service has it:

- **SQS's message move task** (``StartMessageMoveTask``, the console's "Start DLQ redrive"): SQS moves the
  messages itself, resetting their receive counts; this command waits for the task and reports how many moved.
- **receive, send, delete**, where that API is missing (moto, other SQS-compatible servers) or refused: each
  batch is sent to the queue first and deleted from the dead-letter queue only once sent. A failure in between
  leaves a message in both queues (the promotion answers the second notification ``duplicate``), never in
  neither.

The queue URLs come from the options, from the stack's outputs (``PromotionDeadLetterQueueUrl``,
``PromotionQueueUrl``), or, for the queue, from the dead-letter queue itself (the one queue whose redrive policy
names it). ``region_of``, ``queue_urls_from_outputs`` and ``move_task_progress`` are the pure parts.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from botocore.exceptions import BotoCoreError, ClientError

from ckpt.errors import ConfigurationError, TransientError

Method = Literal["auto", "move-task", "receive-send"]
METHODS: tuple[Method, ...] = ("auto", "move-task", "receive-send")

DLQ_OUTPUT = "PromotionDeadLetterQueueUrl"
QUEUE_OUTPUT = "PromotionQueueUrl"


class RedriveFailed(TransientError):
    """The queue service failed the redrive (the messages not moved stay in the dead-letter queue)."""


# --- the rules (pure) ---------------------------------------------------------------------------------------

_REGION_IN_URL = re.compile(
    r"https?://(?:sqs\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?|([a-z0-9-]+)\.queue\.amazonaws\.com)/"
)


def region_of(queue_url: str) -> str | None:
    """The region an SQS queue URL names (``https://sqs.eu-west-1.amazonaws.com/…``), or None (a local server)."""
    match = _REGION_IN_URL.match(queue_url)
    return None if match is None else (match[1] or match[2])


@dataclass(frozen=True)
class QueueUrls:
    dead_letter: str
    queue: str | None  # None: the queue whose redrive policy names the dead-letter queue


def queue_urls_from_outputs(stack_name: str, outputs: Sequence[Mapping[str, Any]]) -> QueueUrls:
    """The two URLs from a stack's ``Outputs`` (as ``DescribeStacks`` lists them)."""
    values = {str(item.get("OutputKey")): str(item.get("OutputValue")) for item in outputs}
    if DLQ_OUTPUT not in values:
        raise ConfigurationError(
            f"stack {stack_name} has no output {DLQ_OUTPUT}: is it this application's stack? "
            "Give --dlq-url and --queue-url instead"
        )
    return QueueUrls(dead_letter=values[DLQ_OUTPUT], queue=values.get(QUEUE_OUTPUT))


@dataclass(frozen=True)
class MoveTaskProgress:
    status: str  # RUNNING, COMPLETED, CANCELLING, CANCELLED, FAILED
    moved: int
    to_move: int | None
    failure: str | None

    @property
    def finished(self) -> bool:
        return self.status in ("COMPLETED", "CANCELLED", "FAILED")


def move_task_progress(listed: Mapping[str, Any]) -> MoveTaskProgress | None:
    """The newest move task of a ``ListMessageMoveTasks`` answer, or None when it lists none."""
    results = listed.get("Results") or []
    if not results:
        return None
    newest = results[0]
    to_move = newest.get("ApproximateNumberOfMessagesToMove")
    return MoveTaskProgress(
        status=str(newest.get("Status", "")),
        moved=int(newest.get("ApproximateNumberOfMessagesMoved", 0)),
        to_move=None if to_move is None else int(to_move),
        failure=newest.get("FailureReason") or None,
    )


# --- the shell ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RedriveReport:
    dead_letter_url: str
    queue_url: str
    method: Literal["move-task", "receive-send"]
    moved: int
    failures: list[str] = field(default_factory=list)  # what could not be moved, and why
    note: str | None = None  # why the move task was not used, under "auto"

    @property
    def ok(self) -> bool:
        return not self.failures


def queue_urls_from_stack(cloudformation: Any, stack_name: str) -> QueueUrls:
    """The URLs from the deployed stack's outputs (``aws cloudformation describe-stacks`` shows the same)."""
    try:
        stacks = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    except ClientError as exc:
        raise ConfigurationError(f"cannot read stack {stack_name}: {exc}") from None
    except BotoCoreError as exc:
        raise RedriveFailed(f"cannot read stack {stack_name}: {exc}") from None
    return queue_urls_from_outputs(stack_name, stacks[0].get("Outputs") or [])


def source_queue(sqs: Any, dead_letter_url: str) -> str:
    """The queue whose redrive policy names ``dead_letter_url`` (it must be exactly one)."""
    with _sqs_errors("ListDeadLetterSourceQueues"):
        sources = list(sqs.list_dead_letter_source_queues(QueueUrl=dead_letter_url).get("queueUrls", []))
    if len(sources) != 1:
        found = ", ".join(sources) or "none"
        raise ConfigurationError(
            f"{dead_letter_url} is the dead-letter queue of {len(sources)} queues ({found}): give --queue-url"
        )
    return sources[0]


def waiting_messages(sqs: Any, queue_url: str) -> int:
    """How many messages ``queue_url`` holds that a receive could return now (SQS's approximate count)."""
    with _sqs_errors("GetQueueAttributes"):
        attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages"])
    return int(attributes["Attributes"]["ApproximateNumberOfMessages"])


def redrive(
    sqs: Any,
    dead_letter_url: str,
    queue_url: str,
    method: Method = "auto",
    *,
    poll_seconds: float = 2.0,
    timeout_seconds: float = 900.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> RedriveReport:
    """Move every message of the dead-letter queue to ``queue_url``, and say how many moved."""
    if method == "receive-send":
        return _receive_send_delete(sqs, dead_letter_url, queue_url)
    dead_letter_arn, queue_arn = _arn(sqs, dead_letter_url), _arn(sqs, queue_url)
    try:
        task = sqs.start_message_move_task(SourceArn=dead_letter_arn, DestinationArn=queue_arn)
    except (ClientError, BotoCoreError, NotImplementedError) as exc:
        if method == "move-task":
            raise RedriveFailed(f"StartMessageMoveTask failed: {_described(exc)}") from None
        fallback = _receive_send_delete(sqs, dead_letter_url, queue_url)
        note = f"StartMessageMoveTask is not available here ({_described(exc)}): moved by receive, send, delete"
        return replace(fallback, note=note)
    progress = _wait_for_task(sqs, dead_letter_arn, poll_seconds, timeout_seconds, sleep, clock)
    failures = []
    if progress is None:
        failures.append(f"the move task {task.get('TaskHandle', '')} is not listed; see the console")
    elif not progress.finished:
        failures.append(f"the move task is still {progress.status} after {timeout_seconds:.0f} s; it goes on")
    elif progress.status != "COMPLETED":
        failures.append(f"the move task ended {progress.status}: {progress.failure or 'no reason given'}")
    return RedriveReport(
        dead_letter_url=dead_letter_url,
        queue_url=queue_url,
        method="move-task",
        moved=progress.moved if progress is not None else 0,
        failures=failures,
    )


def _wait_for_task(
    sqs: Any,
    dead_letter_arn: str,
    poll_seconds: float,
    timeout_seconds: float,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
) -> MoveTaskProgress | None:
    deadline = clock() + timeout_seconds
    while True:
        with _sqs_errors("ListMessageMoveTasks"):
            progress = move_task_progress(sqs.list_message_move_tasks(SourceArn=dead_letter_arn, MaxResults=1))
        if progress is None or progress.finished or clock() >= deadline:
            return progress
        sleep(poll_seconds)


# A received message stays hidden this long: ample for one send and one delete of its batch.
VISIBILITY_SECONDS = 60
# An empty long-polled receive (every SQS server asked) means the dead-letter queue is empty.
WAIT_SECONDS = 2


def _receive_send_delete(sqs: Any, dead_letter_url: str, queue_url: str) -> RedriveReport:
    moved = 0
    failures: list[str] = []
    while True:
        with _sqs_errors("ReceiveMessage"):
            received = sqs.receive_message(
                QueueUrl=dead_letter_url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=WAIT_SECONDS,
                VisibilityTimeout=VISIBILITY_SECONDS,
                MessageAttributeNames=["All"],
            ).get("Messages", [])
        if not received:
            break
        entries = {str(n): message for n, message in enumerate(received)}
        with _sqs_errors("SendMessageBatch"):
            sent = sqs.send_message_batch(
                QueueUrl=queue_url,
                Entries=[{"Id": n, "MessageBody": m["Body"], **_attributes(m)} for n, m in entries.items()],
            )
        failures += [
            f"message {entries[item['Id']]['MessageId']} not sent: {item.get('Code')} {item.get('Message', '')}"
            for item in sent.get("Failed", [])
        ]
        sent_ids = [item["Id"] for item in sent.get("Successful", [])]
        if sent_ids:
            with _sqs_errors("DeleteMessageBatch"):
                deleted = sqs.delete_message_batch(
                    QueueUrl=dead_letter_url,
                    Entries=[{"Id": n, "ReceiptHandle": entries[n]["ReceiptHandle"]} for n in sent_ids],
                )
            failures += [
                f"message {entries[item['Id']]['MessageId']} sent but not deleted from the dead-letter queue "
                f"(it will be delivered twice, harmlessly): {item.get('Code')}"
                for item in deleted.get("Failed", [])
            ]
        moved += len(sent_ids)
        if sent.get("Failed"):
            break  # the unsent ones return to the dead-letter queue when their visibility ends; run again then
    return RedriveReport(
        dead_letter_url=dead_letter_url, queue_url=queue_url, method="receive-send", moved=moved, failures=failures
    )


def _attributes(message: Mapping[str, Any]) -> dict[str, Any]:
    """The message's own attributes, as SendMessage takes them (S3's notifications carry none)."""
    attributes = {
        name: {key: value for key, value in attribute.items() if key in ("DataType", "StringValue", "BinaryValue")}
        for name, attribute in (message.get("MessageAttributes") or {}).items()
    }
    return {"MessageAttributes": attributes} if attributes else {}


def _arn(sqs: Any, queue_url: str) -> str:
    with _sqs_errors("GetQueueAttributes"):
        attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
    return str(attributes["Attributes"]["QueueArn"])


def _described(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        message = str(error.get("Message", "")).strip()
        short = message if message and len(message) <= 200 and "<" not in message else ""
        return f"{error.get('Code') or status} {short}".strip()
    return f"{type(exc).__name__}: {exc}"


@contextmanager
def _sqs_errors(operation: str) -> Iterator[None]:
    """The queue service's failures as RedriveFailed, naming the operation."""
    try:
        yield
    except (ClientError, BotoCoreError) as exc:
        raise RedriveFailed(f"{operation} failed: {_described(exc)}") from exc
