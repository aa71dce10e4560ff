"""The one place the functions' logger, tracer and metrics are created (settings come from the
POWERTOOLS_* environment variables set in template.yaml's Globals)."""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeVar

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from aws_lambda_powertools.tracing.base import BaseProvider, BaseSegment

T = TypeVar("T")


class _NoSegment(BaseSegment):
    """What the tracer annotates when tracing is off: it keeps nothing."""

    def close(self, end_time: int | None = None) -> None:
        pass

    def add_subsegment(self, subsegment: Any) -> None:
        pass

    def remove_subsegment(self, subsegment: Any) -> None:
        pass

    def put_annotation(self, key: str, value: Any) -> None:
        pass

    def put_metadata(self, key: str, value: Any, namespace: str = "default") -> None:
        pass

    def add_exception(self, exception: BaseException, stack: Any, remote: bool = False) -> None:
        pass


class _NoTracing(BaseProvider):
    """The tracer's provider when tracing is off. Powertools would otherwise import the X-Ray SDK (about
    110 ms of every cold start) only to disable it."""

    @contextmanager
    def in_subsegment(self, name: Any = None, **kwargs: Any) -> Generator[BaseSegment, None, None]:
        yield _NoSegment()

    @asynccontextmanager
    async def in_subsegment_async(self, name: Any = None, **kwargs: Any) -> Any:
        yield _NoSegment()

    def put_annotation(self, key: str, value: Any) -> None:
        pass

    def put_metadata(self, key: str, value: Any, namespace: str = "default") -> None:
        pass

    def patch(self, modules: Sequence[str]) -> None:
        pass

    def patch_all(self) -> None:
        pass


def tracing_off(env: Mapping[str, str]) -> bool:
    """Powertools' own rule: off when POWERTOOLS_TRACE_DISABLED says so, and outside Lambda or under SAM's
    local emulator (where no X-Ray daemon listens)."""
    disabled = env.get("POWERTOOLS_TRACE_DISABLED", "false").strip().lower() in {"1", "true", "yes", "on"}
    return disabled or not env.get("LAMBDA_TASK_ROOT") or bool(env.get("AWS_SAM_LOCAL"))


logger = Logger(service="checkpoint-promotion")
tracer = (
    Tracer(service="checkpoint-promotion", disabled=True, provider=_NoTracing())
    if tracing_off(os.environ)
    # botocore only: Powertools' default patches every library X-Ray knows, and the SQLAlchemy patch alone imports
    # sqlalchemy.orm (~200 ms of each cold start) to put a subsegment on every statement.
    else Tracer(service="checkpoint-promotion", patch_modules=["botocore"])
)
metrics = Metrics(namespace="CheckpointPipeline", service="checkpoint-promotion")


def trace_carrier(recorder: Any) -> Callable[[Callable[[], T]], Callable[[], T]]:
    """What makes a call, run in another thread, part of the caller's trace: X-Ray keeps the current segment per
    thread, so without it the S3 calls a promotion makes in its worker threads would not nest under the
    promotion's subsegment (the X-Ray SDK's documented way: set the caller's entity in the thread, then clear)."""

    def carry(call: Callable[[], T]) -> Callable[[], T]:
        entity = recorder.get_trace_entity()  # here, in the caller's thread

        def in_trace() -> T:
            recorder.set_trace_entity(entity)
            try:
                return call()
            finally:
                recorder.clear_trace_entities()

        return in_trace

    return carry


carry_trace = None if tracer.disabled else trace_carrier(tracer.provider)

# The ckpt package logs through the standard library; give its loggers the same JSON format and level.
copy_config_to_registered_loggers(source_logger=logger, include={"ckpt", "ckpt.promotion.promoter"})
