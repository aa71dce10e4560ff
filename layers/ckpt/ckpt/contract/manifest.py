"""The completion manifest, schema version 1: parse, validate, build.

Trainers build manifests with ``Manifest.to_json``; the function reads them with ``parse_manifest``.
Both sides use the same model, so a manifest the trainer writes is one the function accepts.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StringConstraints,
    ValidationError,
    model_serializer,
    model_validator,
)

from ckpt.contract import strict_json
from ckpt.contract.keys import CHECKPOINT_NAMES, MAX_ID, AttemptRef, CheckpointName, JobRef
from ckpt.errors import describe

SCHEMA_VERSION = 1
MAX_MANIFEST_BYTES = 64 * 1024

PositiveId = Annotated[int, Field(strict=True, gt=0, le=MAX_ID)]
# 1-based, as in Ultralytics' results.csv: the first epoch is 1.
Epoch = Annotated[int, Field(strict=True, ge=1, le=MAX_ID)]
# The pattern is checked before to_lower applies, so it admits upper case too.
Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{64}$", to_lower=True)]
# base64 of 8 bytes: 11 characters and one '=' of padding.
Crc64Base64 = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/]{10}[AEIMQUYcgkosw048]=$")]
# How a trainer's run ended; "abandoned" is written by the service's sweeper only, for an attempt folder that
# held checkpoints but no manifest and stopped changing (the trainer was killed, its machine lost).
TrainerStatus = Literal["completed", "interrupted", "failed"]
Status = Literal[TrainerStatus, "abandoned"]
MetricMode = Literal["max", "min"]


class ManifestError(ValueError):
    """The manifest cannot be accepted; the message says why, for the person who wrote it."""


class _Model(BaseModel):
    # Unknown fields are kept (forward compatibility) and written back out unchanged.
    model_config = ConfigDict(extra="allow", frozen=True)


class Metric(_Model):
    name: str | None = None
    mode: MetricMode = "max"


class CheckpointEntry(_Model):
    epoch: Epoch | None = None
    size: Annotated[int, Field(strict=True, ge=0)]
    sha256: Sha256Hex
    # The file's full-object CRC-64/NVME as S3 and R2 report it (base64 of 8 bytes), when the trainer
    # computed one: a multipart object is then verified by the store's checksum, without reading it.
    crc64nvme: Crc64Base64 | None = None

    @model_serializer(mode="wrap")
    def _without_absent_crc(self, write: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Optional and newer than the rest: left out, not null, when the trainer had none to give.
        fields: dict[str, Any] = write(self)
        if fields.get("crc64nvme") is None:
            fields.pop("crc64nvme", None)
        return fields


class Checkpoints(_Model):
    best: CheckpointEntry | None = None
    last: CheckpointEntry | None = None

    @model_validator(mode="after")
    def _no_misspelt_names(self) -> Checkpoints:
        # Other entries are kept (forward compatibility), but one that reads as best or last ("Best", "best.pt")
        # is a typo that would silently promote nothing.
        for name in self.model_extra or {}:
            plain = re.sub(r"[^a-z]", "", name.lower().removesuffix(".pt"))
            if plain in CHECKPOINT_NAMES:
                raise ValueError(f"{name!r} is not a checkpoint name: write {plain!r} (the file {plain}.pt)")
        return self

    def present(self) -> dict[CheckpointName, CheckpointEntry]:
        return {name: entry for name in CHECKPOINT_NAMES if (entry := getattr(self, name)) is not None}


class Manifest(_Model):
    schema_version: Literal[1]
    project_id: PositiveId | None
    job_id: PositiveId
    attempt: PositiveId
    status: Status
    finished_at: datetime | None = None
    metric: Metric | None = None
    checkpoints: Checkpoints = Field(default_factory=Checkpoints)
    error: str | None = None

    @model_validator(mode="after")
    def _finished_at_has_zone(self) -> Manifest:
        if self.finished_at is not None and self.finished_at.tzinfo is None:
            raise ValueError("finished_at must carry a time zone, e.g. 2025-11-05T14:30:00Z")
        return self

    @property
    def ref(self) -> AttemptRef:
        return AttemptRef(job=JobRef(job_id=self.job_id, project_id=self.project_id), attempt=self.attempt)

    @property
    def metric_mode(self) -> MetricMode:
        return self.metric.mode if self.metric else "max"

    def to_json(self) -> bytes:
        return self.model_dump_json(indent=2, exclude_none=False).encode()


def parse_manifest(raw: bytes) -> Manifest:
    """Parse and validate a manifest, or raise ``ManifestError`` with a reason a person can act on."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"manifest is larger than the limit of {MAX_MANIFEST_BYTES} bytes (64 KiB)")
    try:
        document = strict_json.loads(raw, "manifest")
    except strict_json.InvalidJson as exc:
        raise ManifestError(str(exc)) from None
    if not isinstance(document, dict):
        raise ManifestError(f"manifest must be a JSON object, got {type(document).__name__}")
    version = document.get("schema_version")
    if type(version) is not int or version != SCHEMA_VERSION:  # `true == 1` in Python
        raise ManifestError(
            f"unsupported schema_version {version!r}: this function reads schema_version {SCHEMA_VERSION}"
        )
    try:
        return Manifest.model_validate(document)
    except ValidationError as exc:
        raise ManifestError("invalid manifest: " + describe(exc)) from None


def check_matches_key(manifest: Manifest, key_ref: AttemptRef) -> None:
    """A manifest may only speak for the attempt its key names (the contract's isolation rule)."""
    if manifest.ref != key_ref:
        raise ManifestError(
            f"manifest ids (project_id={manifest.project_id}, job_id={manifest.job_id}, "
            f"attempt={manifest.attempt}) differ from its key's (project_id={key_ref.job.project_id}, "
            f"job_id={key_ref.job.job_id}, attempt={key_ref.attempt})"
        )
