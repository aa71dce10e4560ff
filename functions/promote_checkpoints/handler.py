"""PromoteCheckpointsFunction's handler: parse the trigger, promote each manifest, shape the answer.

Retry policy lives in one place, here: ``TransientError`` propagates (an SQS record becomes a batch item
failure and is redelivered, then dead-lettered after 5 receives; a direct invocation fails and Lambda
retries it); everything permanent is answered, logged and counted, and never retried.

Observability, also here: every log line of a promotion (the ``ckpt`` package's included) carries its
``project_id``, ``job_id`` and ``attempt``; each outcome is counted (``Manifests<Status>``) and measured
(``measures``); a promotion that raises counts in ``PromotionFailures``. template.yaml's failure-rate alarm
and dashboard are built on these names.
"""

from __future__ import annotations

from ckpt.startup import long_lived_imports

with long_lived_imports():
    import os
    from collections.abc import Iterator
    from contextlib import contextmanager, suppress
    from typing import Any

    from aws_lambda_powertools.metrics import MetricUnit
    from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
    from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
    from aws_lambda_powertools.utilities.typing import LambdaContext

    from ckpt.config import Settings
    from ckpt.contract.keys import JobRef, Layout, LayoutError
    from ckpt.contract.outcome import LOGGED_TEXT_LIMIT, Outcome, Status
    from ckpt.errors import ConfigurationError, Rejected, TransientError
    from ckpt.promotion.promoter import Promoter
    from ckpt.service import build_promoter, engine_from_settings
    from ckpt.setting_values import whole_number
    from ckpt.text import bounded, escaped
    from promote_checkpoints import triggers
    from promote_checkpoints.observability import carry_trace, logger, metrics, tracer
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
        _promoter = build_promoter(settings, engine, read_secret, carry_trace)
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
    return _answer(promote_observed(obj, trigger))


def promote_observed(obj: triggers.ObjectCreated, trigger: str) -> Outcome:
    """Promote one announced manifest with the function's observability around it: its log lines carry its
    project, job and attempt, and a promotion that raises counts in ``PromotionFailures``. Publishing the
    outcome (``Manifests<Status>``, ``publish_measures``) is the caller's."""
    with counted_failures():
        promoter = get_promoter()
        with log_keys(**_attempt_fields(promoter.layout, obj.key)):
            return promoter.promote_key(obj.bucket, obj.key, trigger=trigger)


@contextmanager
def counted_failures() -> Iterator[None]:
    """Count a promotion that raises (a transient failure, a misconfiguration, a bug): it ends in no outcome and
    is retried. ``Rejected`` (a reprocess of a job with nothing staged) is an answer, not a failure."""
    try:
        yield
    except Rejected:
        raise
    except Exception:
        metrics.add_metric(name="PromotionFailures", unit=MetricUnit.Count, value=1)
        raise


@contextmanager
def log_keys(**keys: object) -> Iterator[None]:
    """``keys`` on every log line written in the block, by this logger and by the ``ckpt`` package's (whose
    loggers share its handler, see observability.py). Thread-local: a promotion in another thread never
    carries them. Keys without a value (a test job's project) are left out."""
    present = {name: value for name, value in keys.items() if value is not None}
    logger.thread_safe_append_keys(**present)
    try:
        yield
    finally:
        logger.thread_safe_remove_keys(list(present))


def _attempt_fields(layout: Layout, key: str) -> dict[str, int | None]:
    try:
        ref = layout.parse_manifest_key(key)
    except LayoutError:  # no manifest of the layout: its log lines say the key instead
        return {}
    return {"project_id": ref.job.project_id, "job_id": ref.job.job_id, "attempt": ref.attempt}


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
    return whole_number("MAX_RECEIVE_COUNT", os.environ.get("MAX_RECEIVE_COUNT"), 5, 1, 1000)  # SQS allows 1-1000


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
            fields = {"project_id": job.project_id, "job_id": job.job_id, "attempt": request.attempt}
            try:
                with counted_failures(), log_keys(**fields):
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
    publish_measures(outcome)
    fields = outcome.log_fields()
    return {name: fields[name] for name in ("outcome", "reason", "manifest_key", "job_id", "attempt")}


def publish_measures(outcome: Outcome) -> None:
    for name, unit, value in measures(outcome):
        metrics.add_metric(name=name, unit=unit, value=value)


def measures(outcome: Outcome) -> list[tuple[str, MetricUnit, float]]:
    """What one outcome adds to the metrics besides its count (``Manifests<Status>``):

    - ``ChecksumFrom<Source>``: one per verified file, by how it was verified (``store``, ``crc64nvme``, ``stream``);
    - ``BytesVerified``: the sizes of the files shown to be the trainer's bytes, however shown (promotions and dry
      runs; a duplicate verifies nothing);
    - ``BytesHashed``: of those, the bytes the function read and hashed itself (``stream``): the part of a
      promotion's time and transfer that grows with the files (a store checksum costs one HEAD whatever the size);
    - ``BytesCopied``: the sizes copied server-side to the canonical keys (promotions only);
    - ``PromotionLatency``: from the manifest's ``finished_at`` to the commit (``Outcome.promotion_latency``);
    - ``StagedFilesDeleted``, ``StagedDeletionFailures``: the cleanup after the commit, when it runs.
    """
    files = outcome.files.values()
    found: list[tuple[str, MetricUnit, float]] = [
        (f"ChecksumFrom{report.checksum_source.title()}", MetricUnit.Count, 1) for report in files
    ]
    if outcome.status in (Status.PROMOTED, Status.PLANNED):
        found.append(("BytesVerified", MetricUnit.Bytes, sum(f.size for f in files)))
        found.append(("BytesHashed", MetricUnit.Bytes, sum(f.size for f in files if f.checksum_source == "stream")))
    if outcome.status is Status.PROMOTED:
        found.append(("BytesCopied", MetricUnit.Bytes, sum(f.size for f in files)))
    latency = outcome.promotion_latency()
    if latency is not None:
        found.append(("PromotionLatency", MetricUnit.Milliseconds, latency.total_seconds() * 1000))
    if outcome.cleanup is not None:
        found.append(("StagedFilesDeleted", MetricUnit.Count, len(outcome.cleanup.deleted)))
        found.append(("StagedDeletionFailures", MetricUnit.Count, len(outcome.cleanup.failed)))
    return found


def _unrecognised(reason: str, **context: str) -> dict[str, Any]:
    reason = bounded(escaped(reason), LOGGED_TEXT_LIMIT)
    logger.error("event rejected: %s", reason, extra=context)
    metrics.add_metric(name="EventsRejected", unit=MetricUnit.Count, value=1)
    return {"outcome": "rejected", "reason": reason}
