"""R2QueuePollerFunction's handler, run on a schedule: drain the Cloudflare Queue that R2's event
notifications go to, promoting each manifest with the promotion function's own promoter.

Thin on purpose: read the settings, build the queue client and the promoter, run ``ckpt.promotion.r2_polling.drain``
(whose docstring has the rules: what is acknowledged, retried with a delay, or left), publish its counts.

Safe to run concurrently with itself (overlapping schedules, a manual invoke): a pull leases its messages to
that caller alone until they are acknowledged, retried or the lease runs out, and the lease asked for is
longer than a run can last; so two runs never hold the same delivery, and one Cloudflare delivers twice is
promoted once and recorded as a duplicate (the promotion is idempotent and takes a per-job lock). Neither
a reserved concurrency nor a lock is needed for correctness.
"""

from __future__ import annotations

from ckpt.startup import long_lived_imports

with long_lived_imports():
    import os
    from collections.abc import Callable, Sequence
    from typing import Any

    from aws_lambda_powertools.metrics import MetricUnit
    from aws_lambda_powertools.utilities.typing import LambdaContext

    from ckpt.adapters.cloudflare_queues import CloudflareQueue, PulledMessage, api_token_from_secret
    from ckpt.contract import strict_json
    from ckpt.contract.keys import Layout
    from ckpt.contract.outcome import Outcome
    from ckpt.errors import ConfigurationError, TransientError
    from ckpt.promotion.r2_polling import (
        Disposition,
        DrainPolicy,
        DrainReport,
        PollerSettings,
        UnusableMessage,
        Verdict,
        drain,
        judge,
        manifest_key_test,
    )
    from promote_checkpoints import handler as promotion
    from promote_checkpoints import triggers
    from promote_checkpoints.observability import logger, metrics, tracer
    from promote_checkpoints.secrets import read_secret

# Recorded in ckpt_promotions.trigger (String(32)).
TRIGGER = "r2-queue"


def queue_client(settings: PollerSettings) -> CloudflareQueue:
    token = api_token_from_secret(read_secret(settings.api_token_secret_arn))
    return CloudflareQueue(settings.account_id, settings.queue_id, token, base_url=settings.api_base_url)


def notification_parser(layout: Layout) -> Callable[[bytes | str], Sequence[triggers.ObjectCreated]]:
    """Read a message body as an R2 event notification, the way every other trigger reads one."""
    is_manifest_key = manifest_key_test(layout)

    def parse(body: bytes | str) -> Sequence[triggers.ObjectCreated]:
        try:
            document = strict_json.loads(body, "R2 notification")
            announced = triggers.objects_in(document, is_manifest_key=is_manifest_key)
        except (strict_json.InvalidJson, triggers.UnrecognisedEvent) as exc:
            raise UnusableMessage(str(exc)) from None
        objects = [item for item in announced if isinstance(item, triggers.ObjectCreated)]
        unusable = [item.reason for item in announced if isinstance(item, triggers.Unusable)]
        if unusable and not objects:
            raise UnusableMessage("; ".join(unusable))
        for reason in unusable:  # its readable siblings are promoted, and the message acknowledged with them
            logger.error("record of a message rejected: %s", reason)
        return objects

    return parse


@tracer.capture_method
def promote(obj: triggers.ObjectCreated) -> Outcome:
    # The promotion function's own observability: log keys, PromotionFailures, bytes and latency (the outcome
    # counts, Manifests<Status>, come from the drain's report).
    outcome = promotion.promote_observed(obj, TRIGGER)
    promotion.publish_measures(outcome)
    return outcome


def judged_and_logged(
    parse: Callable[[bytes | str], Sequence[triggers.ObjectCreated]],
) -> Callable[[PulledMessage], Verdict]:
    def judge_message(message: PulledMessage) -> Verdict:
        verdict = judge(message, parse, promote)
        fields = {"message_id": message.id, "attempts": message.attempts, "content_type": message.content_type}
        if verdict.disposition is Disposition.REJECTED:
            logger.error("message rejected, acknowledged: %s", verdict.reason, extra=fields)
        elif verdict.disposition is Disposition.RETRY:
            logger.warning("promotion failed transiently, retried later: %s", verdict.reason, extra=fields)
        return verdict

    return judge_message


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    budget_ms = context.get_remaining_time_in_millis()
    try:
        settings = PollerSettings.from_env(os.environ)
        # Before the first pull: a misconfiguration or an unreachable database leaves the messages in the queue
        # instead of leasing them, which would spend one of their attempts for nothing.
        promoter = promotion.get_promoter()
        queue = queue_client(settings)
    except ConfigurationError as exc:
        promotion.configuration_failed(exc)
        raise
    except TransientError as exc:
        logger.warning("nothing pulled, the promotion cannot run now: %s", exc)
        metrics.add_metric(name="PollsSkipped", unit=MetricUnit.Count, value=1)
        return {**_answer(DrainReport()), "stopped": "unavailable", "reason": str(exc)}

    policy = DrainPolicy.for_run(budget_ms, settings.batch_size, settings.visibility_timeout_seconds)
    report = drain(
        queue, judged_and_logged(notification_parser(promoter.layout)), context.get_remaining_time_in_millis, policy
    )
    _publish(report)
    if isinstance(report.error, ConfigurationError):
        promotion.configuration_failed(report.error)
        raise report.error
    if report.error is not None:
        logger.error("the Cloudflare Queues API failed, the next run carries on: %s", report.error)
        metrics.add_metric(name="QueueApiFailures", unit=MetricUnit.Count, value=1)
    return _answer(report)


def _publish(report: DrainReport) -> None:
    for name, value in (
        ("MessagesPulled", report.pulled),
        ("MessagesAcked", report.acked),
        ("MessagesRetried", report.retried),
        ("MessagesUnprocessed", report.unprocessed),
        # The same metric the promotion function counts events that are no manifest notification in.
        ("EventsRejected", report.rejected),
    ):
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
    for status, count in report.outcome_counts().items():
        metrics.add_metric(name=f"Manifests{status.title()}", unit=MetricUnit.Count, value=count)


def _answer(report: DrainReport) -> dict[str, Any]:
    return {
        "stopped": str(report.stopped),
        "batches": report.batches,
        "pulled": report.pulled,
        "acked": report.acked,
        "retried": report.retried,
        "rejected": report.rejected,
        "skipped": report.skipped,
        "unprocessed": report.unprocessed,
        "outcomes": dict(report.outcome_counts()),
    }
