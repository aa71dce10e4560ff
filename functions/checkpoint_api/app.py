"""CheckpointApiFunction's handler: the routes of the checkpoint API, thin on purpose.

Each route parses (Powertools validates the path and query against ``models``), asks ``ckpt.promotion.promoted`` one
question (what the database records as the job's promoted checkpoints; a download link to one of them) and
shapes the answer. Everything that goes wrong is an answer with a JSON ``ErrorBody``, never a stack trace:

| what | status |
|---|---|
| a malformed id, name or expiry | 422 ``invalid_request`` with each parameter's problem |
| an unknown job, nothing promoted, not that checkpoint, another project's job | 404 with the reason |
| the canonical object is being replaced by a promotion in flight | 409 ``checkpoint_changing``, Retry-After |
| the database or the store is unreachable | 503 ``unavailable``, Retry-After |
| a setting, or the store's copy of a recorded object, missing | 500, logged at ERROR |

Authorisation (IAM or JWT) happens in API Gateway before the function runs; the caller it established is logged.
Test jobs (no project) live under ``/test-jobs/{job_id}``, as their keys live under ``test-jobs/job_{job_id}/``.
"""

from __future__ import annotations

from ckpt.startup import long_lived_imports

with long_lived_imports():
    import os
    from dataclasses import dataclass
    from datetime import UTC, datetime
    from http import HTTPStatus
    from typing import Any

    import boto3
    from aws_lambda_powertools import Logger, Tracer
    from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
    from aws_lambda_powertools.event_handler.exceptions import NotFoundError
    from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
    from aws_lambda_powertools.event_handler.openapi.types import OpenAPIResponse
    from aws_lambda_powertools.logging import correlation_paths
    from aws_lambda_powertools.utilities.typing import LambdaContext
    from botocore.config import Config
    from sqlalchemy import Engine

    from checkpoint_api.models import Checkpoint as CheckpointAnswer
    from checkpoint_api.models import (
        CheckpointDownload,
        CheckpointName,
        ErrorBody,
        ErrorDetail,
        ExpiresIn,
        JobCheckpoints,
        JobId,
        ProjectId,
        PromotedFiles,
    )
    from ckpt.adapters.db.store import PromotionStore
    from ckpt.config import Settings, storage_credentials_from_secret
    from ckpt.contract.keys import CheckpointName as Name
    from ckpt.contract.keys import JobRef, Layout
    from ckpt.errors import ConfigurationError, TransientError
    from ckpt.promotion.promoted import (
        DEFAULT_LINK_SECONDS,
        CheckpointMissing,
        CheckpointReplaced,
        NotPromoted,
        promoted_link,
        read_promoted,
    )
    from ckpt.service import check_schema, engine_from_settings
    from promote_checkpoints.secrets import read_secret

logger = Logger(service="checkpoint-api")
tracer = Tracer(service="checkpoint-api")
app = APIGatewayHttpResolver(enable_validation=True)

# Seconds a caller should wait before asking again: a promotion commits within seconds of its copies; an outage
# takes longer.
RETRY_CHANGING_SECONDS = 5
RETRY_UNAVAILABLE_SECONDS = 30


# --- wiring ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Wiring:
    engine: Engine
    client: Any
    layout: Layout


_wiring: Wiring | None = None


def wiring() -> Wiring:
    """Built on first use and kept for the life of the execution environment (one engine, one client). A failure
    is not kept: the next request builds again, so a fixed setting or secret takes effect."""
    global _wiring
    if _wiring is None:
        settings = Settings.from_env(os.environ)
        engine = engine_from_settings(settings, read_secret)
        check_schema(PromotionStore(engine))
        _wiring = Wiring(engine=engine, client=presigning_client(settings), layout=settings.layout())
    return _wiring


def presigning_client(settings: Settings) -> Any:
    """A client of the store for HEAD and presigning, as ``ckpt.service.s3_client`` makes one (the endpoint, the
    region from the environment, R2's keys from their secret or else the role's), but asking for SigV4 by name:
    left to its default, botocore presigns a SigV2 URL for AWS S3's global endpoint, which S3 refuses for buckets
    made since 2020 and R2 always. Few retries and short timeouts: API Gateway gives a request 30 s in all.
    A link made with the role's credentials also ends when their session does; one made with R2's keys does not."""
    credentials: dict[str, str] = {}
    if settings.storage_credentials_secret_arn:
        credentials = storage_credentials_from_secret(read_secret(settings.storage_credentials_secret_arn))
    # None: the default chain (the function's role, refreshed as it rotates)
    access_key, secret_key = credentials.get("aws_access_key_id"), credentials.get("aws_secret_access_key")
    config = Config(
        signature_version="s3v4",
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"mode": "standard", "total_max_attempts": 3},
        connect_timeout=5,
        read_timeout=10,
    )
    return boto3.client(
        "s3",
        endpoint_url=settings.endpoint_url or None,
        config=config,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
    )


# --- routes ---------------------------------------------------------------------------------------------------

PROJECT_JOB = "/projects/<project_id>/jobs/<job_id>/checkpoints"
TEST_JOB = "/test-jobs/<job_id>/checkpoints"


def _error(description: str) -> OpenAPIResponse:
    return {"description": description, "content": {content_types.APPLICATION_JSON: {"model": ErrorBody}}}


_RESPONSES: dict[int, OpenAPIResponse] = {
    200: {"description": "The job's promoted checkpoints (a file never promoted is null)."},
    404: _error("Unknown job, nothing promoted, or a job of another project."),
    422: _error("A malformed id (not plain decimal 1 to 2147483647)."),
    500: _error("The service is misconfigured, or the store lost a recorded object."),
    503: _error("The database or the store is unreachable; retry after Retry-After seconds."),
}
_DOWNLOAD_RESPONSES: dict[int, OpenAPIResponse] = {
    **_RESPONSES,
    200: {"description": "A presigned link to the promoted file, its size and SHA-256."},
    404: _error("Unknown job, nothing promoted, that checkpoint not promoted, or a job of another project."),
    409: _error("A promotion is replacing the checkpoint right now; retry after Retry-After seconds."),
    422: _error("A malformed id, a name other than best or last, or expires_in out of 60 to 3600."),
}


@app.get(
    PROJECT_JOB,
    summary="A project job's promoted checkpoints",
    description="Which checkpoints are promoted, their epochs, metric, size, SHA-256, attempt and time, as the "
    "database records them.",
    responses=_RESPONSES,
    tags=["checkpoints"],
    operation_id="listJobCheckpoints",
)
def checkpoints_of_project_job(project_id: ProjectId, job_id: JobId) -> JobCheckpoints:
    return job_checkpoints(JobRef(job_id=job_id, project_id=project_id))


@app.get(
    f"{PROJECT_JOB}/<name>",
    summary="A download link to a project job's promoted best.pt or last.pt",
    description="A presigned GET URL of the canonical object, with the size and SHA-256 to check the download against.",
    responses=_DOWNLOAD_RESPONSES,
    tags=["checkpoints"],
    operation_id="getJobCheckpointLink",
)
def download_of_project_job(
    project_id: ProjectId, job_id: JobId, name: CheckpointName, expires_in: ExpiresIn = DEFAULT_LINK_SECONDS
) -> CheckpointDownload:
    return checkpoint_download(JobRef(job_id=job_id, project_id=project_id), name, expires_in)


@app.get(
    TEST_JOB,
    summary="A test job's promoted checkpoints",
    description="As for a project's job; test jobs have no project (keys under test-jobs/job_{job_id}/).",
    responses=_RESPONSES,
    tags=["test jobs"],
    operation_id="listTestJobCheckpoints",
)
def checkpoints_of_test_job(job_id: JobId) -> JobCheckpoints:
    return job_checkpoints(JobRef(job_id=job_id))


@app.get(
    f"{TEST_JOB}/<name>",
    summary="A download link to a test job's promoted best.pt or last.pt",
    description="As for a project's job.",
    responses=_DOWNLOAD_RESPONSES,
    tags=["test jobs"],
    operation_id="getTestJobCheckpointLink",
)
def download_of_test_job(
    job_id: JobId, name: CheckpointName, expires_in: ExpiresIn = DEFAULT_LINK_SECONDS
) -> CheckpointDownload:
    return checkpoint_download(JobRef(job_id=job_id), name, expires_in)


def job_checkpoints(job: JobRef) -> JobCheckpoints:
    w = wiring()
    promoted = read_promoted(w.engine, w.layout, job)
    files = {name: CheckpointAnswer.of(found, download_path(job, name)) for name, found in promoted.checkpoints.items()}
    return JobCheckpoints(
        project_id=job.project_id,
        job_id=job.job_id,
        attempt=promoted.attempt,
        updated_at=promoted.updated_at,
        checkpoints=PromotedFiles(best=files.get("best"), last=files.get("last")),
    )


def checkpoint_download(job: JobRef, name: Name, expires_in: int) -> CheckpointDownload:
    w = wiring()
    link = promoted_link(w.engine, w.client, w.layout, job, name, expires_in, datetime.now(UTC))
    logger.info("download link", extra={"uri": link.checkpoint.uri, "sha256": link.checkpoint.sha256})
    return CheckpointDownload.of_link(link, download_path(job, name))


def download_path(job: JobRef, name: Name) -> str:
    if job.project_id is None:
        return f"/test-jobs/{job.job_id}/checkpoints/{name}"
    return f"/projects/{job.project_id}/jobs/{job.job_id}/checkpoints/{name}"


# --- errors -----------------------------------------------------------------------------------------------------


def _answer(status: HTTPStatus, error: str, message: str, retry_after: int | None = None, **extra: Any) -> Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    body = ErrorBody(error=error, message=message, **extra).model_dump(mode="json", exclude_none=True)
    return Response(status_code=status, content_type=content_types.APPLICATION_JSON, body=body, headers=headers)


@app.exception_handler(RequestValidationError)
def invalid_request(exc: RequestValidationError) -> Response:
    details = [
        ErrorDetail(
            location=".".join(str(part) for part in error.get("loc", ())),
            # pydantic prefixes the validators' own messages; the rest are pydantic's plain words
            message=str(error.get("msg", error.get("type", "invalid"))).removeprefix("Value error, "),
        )
        for error in exc.errors()
    ]
    summary = "; ".join(f"{detail.location}: {detail.message}" for detail in details)
    return _answer(HTTPStatus.UNPROCESSABLE_ENTITY, "invalid_request", summary or "invalid request", details=details)


@app.exception_handler(NotPromoted)
def not_promoted(exc: NotPromoted) -> Response:
    return _answer(HTTPStatus.NOT_FOUND, exc.code, exc.reason)


@app.not_found
def no_such_route(exc: NotFoundError) -> Response:
    event = app.current_event
    return _answer(
        HTTPStatus.NOT_FOUND,
        "not_found",
        f"no route {event.http_method} {event.path}: the routes are "
        "/projects/{project_id}/jobs/{job_id}/checkpoints[/{name}] and /test-jobs/{job_id}/checkpoints[/{name}]",
    )


@app.exception_handler(CheckpointReplaced)
def checkpoint_changing(exc: CheckpointReplaced) -> Response:
    logger.info("checkpoint changing", extra={"reason": str(exc)})
    return _answer(HTTPStatus.CONFLICT, "checkpoint_changing", str(exc), retry_after=RETRY_CHANGING_SECONDS)


@app.exception_handler(TransientError)
def unavailable(exc: TransientError) -> Response:
    logger.warning("dependency unavailable: %s", exc)
    return _answer(
        HTTPStatus.SERVICE_UNAVAILABLE,
        "unavailable",
        "the database or the object store is unreachable; try again later",
        retry_after=RETRY_UNAVAILABLE_SECONDS,
    )


@app.exception_handler(CheckpointMissing)
def checkpoint_missing(exc: CheckpointMissing) -> Response:
    logger.error("the store lost a promoted checkpoint: %s", exc)
    return _answer(HTTPStatus.INTERNAL_SERVER_ERROR, "checkpoint_missing", str(exc))


@app.exception_handler(ConfigurationError)
def misconfigured(exc: ConfigurationError) -> Response:
    global _wiring
    _wiring = None
    logger.error("the function is misconfigured: %s", exc)
    return _answer(HTTPStatus.INTERNAL_SERVER_ERROR, "internal_error", "the service is misconfigured (logged)")


@app.exception_handler(Exception)
def internal_error(exc: Exception) -> Response:
    logger.exception("unexpected failure")
    return _answer(HTTPStatus.INTERNAL_SERVER_ERROR, "internal_error", "unexpected failure (logged)")


# --- entry point --------------------------------------------------------------------------------------------------


def caller(event: dict[str, Any]) -> str | None:
    """Who API Gateway let in: the IAM principal, or the JWT's subject."""
    authorizer = (event.get("requestContext") or {}).get("authorizer") or {}
    iam = authorizer.get("iam") or {}
    claims = (authorizer.get("jwt") or {}).get("claims") or {}
    found = iam.get("userArn") or claims.get("sub")
    return str(found) if found else None


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP, clear_state=True)
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    logger.append_keys(caller=caller(event))
    return app.resolve(event, context)
