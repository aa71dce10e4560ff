"""PromoteCheckpointsFunction's handler: parse the trigger, promote each manifest, shape the answer.

Retry policy lives in one place, here: ``TransientError`` propagates (an SQS record becomes a batch item
failure and is redelivered, then dead-lettered after 5 receives; a direct invocation fails and Lambda
retries it); everything permanent is answered, logged and counted, and never retried.
"""

from __future__ import annotations

import os
import re
from contextlib import suppress
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from ckpt.config import Settings
from ckpt.contract.keys import JobRef
from ckpt.contract.outcome import LOGGED_TEXT_LIMIT, Outcome
from ckpt.errors import ConfigurationError, Rejected, TransientError
from ckpt.promotion.promoter import Promoter
from ckpt.service import build_promoter, engine_from_settings
from ckpt.text import bounded, escaped
from promote_checkpoints import triggers
from promote_checkpoints.observability import logger, metrics, tracer
from promote_checkpoints.secrets import read_secret

processor = BatchProcessor(event_type=EventType.SQS)
_promoter: Promoter | None = None


_configuration_errors_reported: set[str] = set()


def get_promoter() -> Promoter:
    """Built on first use and kept for the life of the execution environment (one engine, one client).
    A failure is not kept: the next invocation builds again, so a fixed setting or secret takes effect."""
    global _promoter
    if _promoter is None:
        settings = Settings.from_env(os.environ)
        engine = engine_from_settings(settings, read_secret)
        _promoter = build_promoter(settings, engine, read_secret)
    return _promoter


def configuration_failed(exc: ConfigurationError) -> None:
    """Say once per execution environment what is misconfigured, and drop the promoter built on it.

    The event is not answered: its messages stay in the queue (then the dead-letter queue) to be redriven
    once the setting is fixed, instead of being recorded as the manifests' fault."""
    global _promoter
    _promoter = None
    metrics.add_metric(name="ConfigurationErrors", unit=MetricUnit.Count, value=1)
    if str(exc) not in _configuration_errors_reported:
        _configuration_errors_reported.add(str(exc))
        logger.error("the function is misconfigured, nothing can be promoted until it is fixed: %s", exc)


@tracer.capture_method
def promote(obj: triggers.ObjectCreated, trigger: str) -> dict[str, Any]:
    return _answer(get_promoter().promote_key(obj.bucket, obj.key, trigger=trigger))


def record_handler(record: SQSRecord) -> list[dict[str, Any]]:
    # Read with .get: a record missing its body or id is answered as unrecognised, never a KeyError.
    message_id = str(record.get("messageId"))
    try:
        announced = triggers.objects_in_body(record.get("body"))
    except triggers.UnrecognisedEvent as exc:
        return [_unrecognised(str(exc), message_id=message_id)]
    answers = []
    for item in announced:
        if isinstance(item, triggers.Unusable):
            answers.append(_unrecognised(item.reason, message_id=message_id))
            continue
        try:
            answers.append(promote(item, trigger=f"sqs:{item.source}"))
        except TransientError as exc:
            if _is_last_delivery(record):
                _record_giving_up(item, exc)
            raise
        except ConfigurationError as exc:  # e.g. the database's certificate fails verification at connect
            configuration_failed(exc)
            raise
    return answers


def _is_last_delivery(record: SQSRecord) -> bool:
    count = (record.get("attributes") or {}).get("ApproximateReceiveCount")
    try:
        return int(float(str(count))) >= _max_receives()
    except ValueError:  # not a number: SQS always sends one, so this is no message of the queue's
        return False


def _max_receives() -> int:
    # The queue's maxReceiveCount (template.yaml passes it); on the last delivery the message goes to the DLQ.
    value = os.environ.get("MAX_RECEIVE_COUNT") or "5"
    if not re.fullmatch(r"[0-9]{1,4}", value) or int(value) < 1:
        raise ConfigurationError(f"MAX_RECEIVE_COUNT must be the queue's maxReceiveCount (1 to 1000), got {value!r}")
    return int(value)


def _record_giving_up(obj: triggers.ObjectCreated, exc: TransientError) -> None:
    """On the last delivery, leave an outcome behind before the message moves to the dead-letter queue."""
    reason = f"gave up after {_max_receives()} deliveries, now in the dead-letter queue: {exc}"
    try:
        get_promoter().record_rejection(obj.bucket, obj.key, trigger=f"sqs:{obj.source}", reason=reason)
    except Exception:  # the database may be what is down; the log and the DLQ still say it
        logger.exception("could not record the final failure of %s", obj.key)


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    try:
        return _handle(event, context)
    except ConfigurationError as exc:
        configuration_failed(exc)
        raise


def _handle(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    try:
        kind = triggers.kind_of(event)
        if kind == "sqs":
            # A misconfiguration fails the batch once, not each of its records; a database that is down fails
            # only the records that need it (below), to be retried.
            with suppress(TransientError):
                get_promoter()

            return dict(
                process_partial_response(
                    event=event, record_handler=record_handler, processor=processor, context=context
                )
            )
        if kind == "reprocess":
            request = triggers.parse_reprocess(event)
            job = JobRef(job_id=request.job_id, project_id=request.project_id)
            try:
                outcome = get_promoter().reprocess(job, request.attempt, dry_run=request.dry_run)
            except Rejected as exc:
                return {"outcomes": [_unrecognised(exc.reason)]}
            return {"outcomes": [_answer(outcome)]}
        return {"outcomes": [_answer_announced(item) for item in triggers.objects_in(event)]}
    except triggers.UnrecognisedEvent as exc:
        return {"outcomes": [_unrecognised(str(exc))]}


def _answer_announced(item: triggers.Announced) -> dict[str, Any]:
    if isinstance(item, triggers.Unusable):
        return _unrecognised(item.reason)
    return promote(item, trigger=item.source)


def _answer(outcome: Outcome) -> dict[str, Any]:
    metrics.add_metric(name=f"Manifests{outcome.status.title()}", unit=MetricUnit.Count, value=1)
    for report in outcome.files.values():
        metrics.add_metric(name=f"ChecksumFrom{report.checksum_source.title()}", unit=MetricUnit.Count, value=1)
    fields = outcome.log_fields()
    return {name: fields[name] for name in ("outcome", "reason", "manifest_key", "job_id", "attempt")}


def _unrecognised(reason: str, **context: str) -> dict[str, Any]:
    reason = bounded(escaped(reason), LOGGED_TEXT_LIMIT)
    logger.error("event rejected: %s", reason, extra=context)
    metrics.add_metric(name="EventsRejected", unit=MetricUnit.Count, value=1)
    return {"outcome": "rejected", "reason": reason}
