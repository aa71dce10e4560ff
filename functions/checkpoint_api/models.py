"""The API's inputs and answers: path and query parameters as validated types, responses as pydantic models.

Powertools validates each request against these annotations and derives the OpenAPI description from them
(``openapi.json``), so what is checked and what is documented are one thing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from aws_lambda_powertools.event_handler.openapi.params import Path, Query
from pydantic import BaseModel, BeforeValidator, Field

from ckpt.contract.keys import MAX_ID, parse_id
from ckpt.promotion.promoted import (
    DEFAULT_LINK_SECONDS,
    MAX_LINK_SECONDS,
    MIN_LINK_SECONDS,
    DownloadLink,
    PromotedCheckpoint,
)

# --- parameters ---------------------------------------------------------------------------------------------


def _contract_id(value: object) -> object:
    """An id as the contract writes it in keys: plain decimal digits, no sign, no leading zero, 1 to MAX_ID.
    pydantic alone would read "07", "+7", " 7" and "7.0" as 7. The range is checked here rather than with
    ge/le, which Powertools would render into the OpenAPI schema under their pydantic names."""
    if isinstance(value, str):
        parsed = parse_id(value)
        if parsed is None:
            raise ValueError(f"must be an integer from 1 to {MAX_ID} in plain decimal digits (7, not 07 or +7)")
        return parsed
    return value


def _seconds(value: object) -> object:
    """A whole number of seconds in the bounds of a link's life."""
    if isinstance(value, str):
        if not (value.isascii() and value.isdigit()) or not MIN_LINK_SECONDS <= int(value) <= MAX_LINK_SECONDS:
            raise ValueError(f"must be a whole number of seconds from {MIN_LINK_SECONDS} to {MAX_LINK_SECONDS}")
        return int(value)
    return value


_ID_SCHEMA = {"minimum": 1, "maximum": MAX_ID}

ProjectId = Annotated[
    int,
    BeforeValidator(_contract_id),
    Path(description="The project's id (plain decimal, 1 to 2147483647).", json_schema_extra=_ID_SCHEMA),
]
JobId = Annotated[
    int,
    BeforeValidator(_contract_id),
    Path(description="The training job's id (plain decimal, 1 to 2147483647).", json_schema_extra=_ID_SCHEMA),
]
CheckpointName = Annotated[
    Literal["best", "last"], Path(description="best.pt (the best epoch by the job's metric) or last.pt.")
]
ExpiresIn = Annotated[
    int,
    BeforeValidator(_seconds),
    Query(
        description=(
            f"Seconds the download link stays valid, {MIN_LINK_SECONDS} to {MAX_LINK_SECONDS} "
            f"(default {DEFAULT_LINK_SECONDS})."
        ),
        json_schema_extra={"minimum": MIN_LINK_SECONDS, "maximum": MAX_LINK_SECONDS},
    ),
]


# --- answers ---------------------------------------------------------------------------------------------------


class Checkpoint(BaseModel):
    """A promoted checkpoint as the database records it."""

    name: Literal["best", "last"]
    epoch: int | None = Field(description="The epoch the file holds (1-based); null when it was never known.")
    metric_value: float | None = Field(
        description="validation_results.primary_metric_value of that epoch; null when absent or not a number."
    )
    size: int = Field(description="Bytes.")
    sha256: str = Field(description="Hex SHA-256 of the file: check the download against it.")
    attempt: int = Field(description="The training attempt whose file this is.")
    promoted_at: datetime
    uri: str = Field(description="The URI the database records, r2://{bucket}/{canonical key}.")
    download: str = Field(description="This API's path that answers a download link for the file.")

    @classmethod
    def of(cls, checkpoint: PromotedCheckpoint, download: str) -> Checkpoint:
        return cls(
            name=checkpoint.name,
            epoch=checkpoint.epoch,
            metric_value=checkpoint.metric_value,
            size=checkpoint.size,
            sha256=checkpoint.sha256,
            attempt=checkpoint.attempt,
            promoted_at=checkpoint.promoted_at,
            uri=checkpoint.uri,
            download=download,
        )


class PromotedFiles(BaseModel):
    best: Checkpoint | None = Field(description="null when no best.pt was promoted.")
    last: Checkpoint | None = Field(description="null when no last.pt was promoted.")


class JobCheckpoints(BaseModel):
    """A job's promoted checkpoints."""

    project_id: int | None = Field(description="null for a test job.")
    job_id: int
    attempt: int = Field(description="The job's newest promoted attempt.")
    updated_at: datetime = Field(description="When the job's promoted state last changed.")
    checkpoints: PromotedFiles


class CheckpointDownload(Checkpoint):
    """A short-lived link to download one promoted checkpoint, and what its bytes must be."""

    project_id: int | None = Field(description="null for a test job.")
    job_id: int
    url: str = Field(description="Presigned HTTPS GET of the file; needs no credentials until it expires.")
    expires_in: int = Field(description="Seconds the link was made valid for.")
    expires_at: datetime

    @classmethod
    def of_link(cls, link: DownloadLink, download: str) -> CheckpointDownload:
        job = link.checkpoint.job
        return cls(
            **Checkpoint.of(link.checkpoint, download).model_dump(),
            project_id=job.project_id,
            job_id=job.job_id,
            url=link.url,
            expires_in=link.expires_in,
            expires_at=link.expires_at,
        )


class ErrorDetail(BaseModel):
    location: str = Field(description='Where, e.g. "path.job_id" or "query.expires_in".')
    message: str


class ErrorBody(BaseModel):
    """Every error answer: a stable code for programs, a message for people."""

    error: str = Field(
        description=(
            "invalid_request, unknown_job, nothing_promoted, checkpoint_not_promoted, job_in_another_project, "
            "not_found, checkpoint_changing, unavailable, checkpoint_missing or internal_error."
        )
    )
    message: str
    details: list[ErrorDetail] | None = Field(default=None, description="Each invalid parameter (422 only).")
