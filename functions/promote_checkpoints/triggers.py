"""What an invocation asks for, whatever delivered it.

Accepted shapes (one fixture each in events/): an S3 event notification, an SQS batch whose bodies are S3
notifications (``s3:TestEvent`` included, and skipped) or R2 event notifications, an R2 event notification
on its own, and a manual reprocess request. S3 notifications are read with Powertools' event source data
classes; the R2 and reprocess shapes, which no library defines, with pydantic models.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from urllib.parse import unquote, unquote_plus

from aws_lambda_powertools.utilities.data_classes.s3_event import S3EventRecord
from aws_lambda_powertools.utilities.parser import BaseModel
from pydantic import ConfigDict, Field, ValidationError

from ckpt.contract import strict_json
from ckpt.contract.keys import MAX_ID
from ckpt.errors import describe
from ckpt.text import bounded, escaped, shown

# R2 notifications name the action; only these create an object.
R2_CREATE_ACTIONS = frozenset({"PutObject", "CopyObject", "CompleteMultipartUpload"})


class UnrecognisedEvent(ValueError):
    """The event (or an SQS body) is not a shape this function accepts; retrying cannot change that."""


@dataclass(frozen=True)
class ObjectCreated:
    bucket: str
    key: str  # decoded: exactly the object's key
    source: Literal["s3", "r2"]


@dataclass(frozen=True)
class Unusable:
    """A record of a notification that cannot be read; answered with ``reason``, never retried."""

    reason: str


Announced = ObjectCreated | Unusable


class Reprocess(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: Literal["reprocess"]
    # The bounds of the platform's 32-bit id columns, so a too-large id is refused here, with its reason.
    project_id: int | None = Field(default=None, gt=0, le=MAX_ID, strict=True)
    job_id: int = Field(gt=0, le=MAX_ID, strict=True)
    attempt: int | None = Field(default=None, gt=0, le=MAX_ID, strict=True)
    # Strict like the ids: "false" or 0 must not quietly run a real promotion.
    dry_run: bool = Field(default=False, strict=True)


class R2Object(BaseModel):
    key: str
    size: int | None = None
    eTag: str | None = None


class R2EventNotification(BaseModel):
    account: str
    action: str
    bucket: str
    object: R2Object
    eventTime: datetime | None = None


Kind = Literal["sqs", "reprocess", "notification"]


def kind_of(event: Any) -> Kind:
    if not isinstance(event, dict):
        raise UnrecognisedEvent(f"event must be a JSON object, got {type(event).__name__}")
    records = event.get("Records")
    if (
        isinstance(records, list)
        and records
        and all(isinstance(r, dict) and r.get("eventSource") == "aws:sqs" for r in records)
    ):
        return "sqs"
    if event.get("action") == "reprocess":
        return "reprocess"
    return "notification"


def parse_reprocess(event: dict[str, Any]) -> Reprocess:
    try:
        return Reprocess.model_validate(event)
    except ValidationError as exc:
        raise UnrecognisedEvent(f"invalid reprocess event: {describe(exc)}") from None


def objects_in_body(body: Any) -> list[Announced]:
    """The objects an SQS message body announces."""
    try:
        document = strict_json.loads(body, "SQS body")
    except strict_json.InvalidJson as exc:
        raise UnrecognisedEvent(str(exc)) from None
    return objects_in(document)


def _s3_objects(document: dict[str, Any]) -> list[Announced | None]:
    """Each record of an S3 notification read on its own, so one malformed record is answered as such and
    never costs its siblings their promotion."""
    records = document.get("Records")
    if not isinstance(records, list) or not records:
        raise UnrecognisedEvent("invalid S3 event notification: Records must be a non-empty list")
    return [_s3_object(record) for record in records]


def _s3_object(record: Any) -> Announced | None:
    # Read leniently (Powertools' data classes, not its strict parser model): S3-compatible stores and moto
    # omit fields AWS sends (userIdentity, requestParameters, …) that the promotion never needs, and a
    # manifest notification must not be rejected for lacking them.
    if not isinstance(record, dict):
        return Unusable(f"invalid S3 event record: must be a JSON object, got {type(record).__name__}")
    if record.get("eventSource") != "aws:s3":
        return Unusable(f"invalid S3 event record: eventSource is {shown(record.get('eventSource'), 60)}, not 'aws:s3'")
    try:
        parsed = S3EventRecord(record)
        event_name, bucket, key = parsed.event_name, parsed.s3.bucket.name, parsed.s3.get_object.key
    except (KeyError, TypeError, AttributeError) as exc:
        return Unusable(f"invalid S3 event record: missing or malformed field {shown(str(exc), 100)}")
    if not all(isinstance(value, str) for value in (event_name, bucket, key)):
        return Unusable("invalid S3 event record: eventName, s3.bucket.name and s3.object.key must be strings")
    if not event_name.startswith("ObjectCreated:"):
        return None
    # S3 form-encodes keys in notifications ('+' for space); decoded here and nowhere else.
    return ObjectCreated(bucket=bucket, key=unquote_plus(key), source="s3")


def objects_in(document: Any, *, is_manifest_key: Callable[[str], bool] | None = None) -> list[Announced]:
    """The created objects a notification announces, and its records that cannot be read (``Unusable``, each
    to be answered with its reason); [] for ``s3:TestEvent`` and non-create events.

    ``is_manifest_key`` (the layout's test) lets an R2 notification's key be read by ``r2_object_key``;
    without it the key is taken as given."""
    if not isinstance(document, dict):
        raise UnrecognisedEvent(f"notification must be a JSON object, got {type(document).__name__}")
    if document.get("Event") == "s3:TestEvent":
        return []
    if "Records" in document:
        return [item for item in _s3_objects(document) if item is not None]
    if {"account", "action", "bucket", "object"} <= document.keys():
        try:
            r2_event = R2EventNotification.model_validate(document)
        except ValidationError as exc:
            raise UnrecognisedEvent(f"invalid R2 event notification: {describe(exc)}") from None
        if r2_event.action not in R2_CREATE_ACTIONS:
            return []
        key = r2_event.object.key
        if is_manifest_key is not None:
            key = r2_object_key(key, is_manifest_key)
        return [ObjectCreated(bucket=r2_event.bucket, key=key, source="r2")]
    raise UnrecognisedEvent(
        "not an S3 event notification, an R2 event notification, an SQS batch or a reprocess request "
        f"(top-level fields: {bounded(escaped(', '.join(sorted(map(str, document)))), 200) if document else 'none'})"
    )


def r2_object_key(raw: str, is_manifest_key: Callable[[str], bool]) -> str:
    """The object key an R2 notification names. Cloudflare does not document whether R2 URL-encodes it (its
    examples are plain), and a key may legitimately contain ``%41`` or ``+``. Rule: the key as given when it is
    a manifest key of the layout; else its percent-decoding, then its form-decoding (``+`` as space, as S3
    encodes), whichever first is one; else as given (then ignored or rejected under that name). Only a key of
    the layout is ever chosen, and the promotion reads exactly that key, so a wrong guess can only find no
    manifest (rejected and recorded), never promote another job's files."""
    if is_manifest_key(raw):
        return raw
    for decoded in (unquote(raw), unquote_plus(raw)):
        if decoded != raw and is_manifest_key(decoded):
            return decoded
    return raw
