"""SweeperFunction's handler, run on a schedule: complete the attempts whose trainer died without a manifest.

Thin on purpose: read the settings (``SWEEP_OLDER_THAN``, the age, e.g. ``6h``; the store and the database as every
function reads them), build the sweeper once per execution environment, run ``ckpt.operations.sweep.Sweeper`` (its
module docstring has the rules), publish the counts. The manifests it writes are promoted by
PromoteCheckpointsFunction through the bucket notification, like any other: the sweeper never promotes.

Metrics: ``SweptAttempts``, the attempt folders a run examined; ``SweepFindings``, the abandoned attempts it completed
(each one a trainer that died: the template alarms on it); ``SweepFailures``, folders the store or the database
failed on (the next run tries them again). Safe to run concurrently with itself or ``ckpt sweep``: a manifest is
written only where no object has its key yet, so of two sweeps (or a sweep and a trainer) the first write wins.
"""

from __future__ import annotations

from ckpt.startup import long_lived_imports

with long_lived_imports():
    import os
    from collections.abc import Callable, Mapping
    from datetime import timedelta
    from typing import Any

    from aws_lambda_powertools.metrics import MetricUnit
    from aws_lambda_powertools.utilities.typing import LambdaContext

    from ckpt.config import Settings
    from ckpt.errors import ConfigurationError
    from ckpt.operations.sweep import DEFAULT_OLDER_THAN, Action, Sweeper, SweepReport, build_sweeper, parse_duration
    from ckpt.service import engine_from_settings
    from promote_checkpoints.observability import logger, metrics, tracer
    from promote_checkpoints.secrets import read_secret

_sweeper: Sweeper | None = None

# A folder's work is started only while more than this share of the run's time is left: hashing a multipart
# checkpoint (the store keeps no SHA-256 of one) reads all of it, and a run cut off by its timeout writes nothing.
RESERVED_SHARE_OF_RUN = 0.25


def get_sweeper() -> Sweeper:
    """Built on first use and kept for the life of the execution environment; a failure is not kept."""
    global _sweeper
    if _sweeper is None:
        settings = Settings.from_env(os.environ)
        _sweeper = build_sweeper(settings, engine_from_settings(settings, read_secret), read_secret)
    return _sweeper


def older_than_from_env(env: Mapping[str, str]) -> timedelta:
    raw = env.get("SWEEP_OLDER_THAN") or ""
    if not raw.strip():
        return DEFAULT_OLDER_THAN
    try:
        return parse_duration(raw)
    except ValueError as exc:
        raise ConfigurationError(f"SWEEP_OLDER_THAN: {exc}") from None


def out_of_time(context: LambdaContext) -> Callable[[], bool]:
    reserve_ms = context.get_remaining_time_in_millis() * RESERVED_SHARE_OF_RUN
    return lambda: context.get_remaining_time_in_millis() < reserve_ms


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    global _sweeper
    try:
        older_than = older_than_from_env(os.environ)
        report = get_sweeper().sweep(older_than, out_of_time=out_of_time(context))
    except ConfigurationError as exc:
        _sweeper = None
        logger.error("the sweeper is misconfigured, nothing is swept until it is fixed: %s", exc)
        raise
    _publish(report)
    return _answer(report)


def _publish(report: SweepReport) -> None:
    metrics.add_metric(name="SweptAttempts", unit=MetricUnit.Count, value=report.examined)
    metrics.add_metric(name="SweepFindings", unit=MetricUnit.Count, value=report.count(Action.SWEPT))
    metrics.add_metric(name="SweepFailures", unit=MetricUnit.Count, value=report.count(Action.FAILED))
    logger.info(report.summary())


def _answer(report: SweepReport) -> dict[str, Any]:
    return {
        "older_than": int(report.older_than.total_seconds()),
        "examined": report.examined,
        "swept": [result.prefix for result in report.swept],
        **{str(action): report.count(action) for action in (Action.SKIPPED, Action.DEFERRED, Action.FAILED)},
    }
