"""The completion manifest, schema version 1: what is accepted, what is rejected and why."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from ckpt.contract.keys import AttemptRef, JobRef
from ckpt.contract.manifest import MAX_MANIFEST_BYTES, ManifestError, check_matches_key, parse_manifest

SHA_BEST = hashlib.sha256(b"best.pt weights").hexdigest()
SHA_LAST = hashlib.sha256(b"last.pt weights").hexdigest()
DELETE = object()  # marks a field to remove in `edited`


def example() -> dict[str, Any]:
    """The contract's example manifest, with real SHA-256 digests."""
    return {
        "schema_version": 1,
        "project_id": 7,
        "job_id": 42,
        "attempt": 1,
        "status": "interrupted",
        "finished_at": "2025-11-05T14:30:00Z",
        "metric": {"name": "mAP50-95", "mode": "max"},
        "checkpoints": {
            "best": {"epoch": 18, "size": 5411290, "sha256": SHA_BEST},
            "last": {"epoch": 20, "size": 5411290, "sha256": SHA_LAST},
        },
        "error": None,
    }


def edited(path: str, value: Any) -> dict[str, Any]:
    """The example with the dotted ``path`` set to ``value`` (or removed, for DELETE)."""
    document = example()
    *parents, leaf = path.split(".")
    target = document
    for part in parents:
        target = target[part]
    if value is DELETE:
        del target[leaf]
    else:
        target[leaf] = value
    return document


def encode(document: Any) -> bytes:
    return json.dumps(document).encode()


# --- accepted -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["completed", "interrupted", "failed", "abandoned"])
def test_every_status_of_the_contract_is_read(status: str) -> None:
    assert parse_manifest(encode(edited("status", status))).status == status


def test_contract_example_parses() -> None:
    manifest = parse_manifest(encode(example()))

    assert manifest.ref == AttemptRef(job=JobRef(job_id=42, project_id=7), attempt=1)
    assert manifest.status == "interrupted"
    assert manifest.finished_at == datetime(2025, 11, 5, 14, 30, tzinfo=UTC)
    assert manifest.metric is not None
    assert (manifest.metric.name, manifest.metric_mode) == ("mAP50-95", "max")
    present = manifest.checkpoints.present()
    assert list(present) == ["best", "last"]
    assert (present["best"].epoch, present["best"].size, present["best"].sha256) == (18, 5411290, SHA_BEST)
    assert (present["last"].epoch, present["last"].size, present["last"].sha256) == (20, 5411290, SHA_LAST)
    assert manifest.error is None


def test_test_job_manifest_has_no_project() -> None:
    manifest = parse_manifest(encode(edited("project_id", None)))
    assert manifest.ref == AttemptRef(job=JobRef(job_id=42, project_id=None), attempt=1)


@pytest.mark.parametrize(
    ("checkpoints", "names"),
    [
        pytest.param({}, [], id="crash-before-any-checkpoint"),
        pytest.param({"last": {"epoch": 3, "size": 10, "sha256": SHA_LAST}}, ["last"], id="last-only"),
        pytest.param({"best": None, "last": None}, [], id="explicit-nulls"),
    ],
)
def test_checkpoints_lists_only_present_files(checkpoints: dict[str, Any], names: list[str]) -> None:
    manifest = parse_manifest(encode(edited("checkpoints", checkpoints)))
    assert list(manifest.checkpoints.present()) == names


def test_manifest_without_checkpoints_field_has_none() -> None:
    assert parse_manifest(encode(edited("checkpoints", DELETE))).checkpoints.present() == {}


def test_epoch_may_be_null() -> None:
    manifest = parse_manifest(encode(edited("checkpoints.best.epoch", None)))
    assert manifest.checkpoints.present()["best"].epoch is None


@pytest.mark.parametrize("status", ["completed", "interrupted", "failed"])
def test_every_contract_status_is_accepted(status: str) -> None:
    assert parse_manifest(encode(edited("status", status))).status == status


@pytest.mark.parametrize(
    ("metric", "mode"),
    [
        pytest.param(DELETE, "max", id="metric-absent"),
        pytest.param(None, "max", id="metric-null"),
        pytest.param({"name": "mAP50-95"}, "max", id="mode-absent"),
        pytest.param({"name": "val/loss", "mode": "min"}, "min", id="min"),
        pytest.param({"name": "mAP50", "mode": "max"}, "max", id="max"),
    ],
)
def test_metric_mode_defaults_to_max(metric: Any, mode: str) -> None:
    assert parse_manifest(encode(edited("metric", metric))).metric_mode == mode


def test_upper_case_sha256_is_normalised_to_lower_case() -> None:
    manifest = parse_manifest(encode(edited("checkpoints.best.sha256", SHA_BEST.upper())))
    assert manifest.checkpoints.present()["best"].sha256 == SHA_BEST


def test_finished_at_keeps_its_offset() -> None:
    manifest = parse_manifest(encode(edited("finished_at", "2025-11-05T16:30:00+02:00")))
    assert manifest.finished_at == datetime(2025, 11, 5, 14, 30, tzinfo=UTC)


def with_extras() -> dict[str, Any]:
    document = example()
    document["trainer"] = {"name": "ultralytics", "version": "8.3.40"}
    document["host"] = "gpu-node-12"
    document["metric"]["higher_is_better"] = True
    document["checkpoints"]["best"]["format"] = "torch"
    document["checkpoints"]["ema"] = {"epoch": 20, "size": 1, "sha256": SHA_LAST}
    return document


def test_unknown_fields_are_kept() -> None:
    manifest = parse_manifest(encode(with_extras()))
    assert manifest.model_extra == {"trainer": {"name": "ultralytics", "version": "8.3.40"}, "host": "gpu-node-12"}
    assert manifest.metric is not None
    assert manifest.metric.model_extra == {"higher_is_better": True}
    assert manifest.checkpoints.present()["best"].model_extra == {"format": "torch"}


def test_unknown_fields_survive_to_json_round_trip() -> None:
    manifest = parse_manifest(encode(with_extras()))
    written = manifest.to_json()

    assert json.loads(written) == with_extras()
    assert parse_manifest(written) == manifest


def test_to_json_round_trips_the_example() -> None:
    manifest = parse_manifest(encode(example()))
    assert parse_manifest(manifest.to_json()) == manifest
    assert json.loads(manifest.to_json()) == example()


def padded(size: int) -> bytes:
    """The example, padded with an extra field to exactly ``size`` bytes."""
    document = example()
    document["padding"] = ""
    base = len(encode(document))
    document["padding"] = "x" * (size - base)
    raw = encode(document)
    assert len(raw) == size
    return raw


def test_manifest_of_exactly_64_kib_is_accepted() -> None:
    assert MAX_MANIFEST_BYTES == 64 * 1024
    assert parse_manifest(padded(64 * 1024)).job_id == 42


def test_manifest_one_byte_over_64_kib_is_rejected() -> None:
    with pytest.raises(ManifestError, match="64 KiB"):
        parse_manifest(padded(64 * 1024 + 1))


# --- rejected -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        pytest.param(b"{", "not valid JSON", id="truncated"),
        pytest.param(b"", "not valid JSON", id="empty"),
        pytest.param(b"schema_version: 1", "not valid JSON", id="yaml"),
        pytest.param(b'{"schema_version": 1,}', "not valid JSON", id="trailing-comma"),
        pytest.param(b"\xff\xfe\x00", "UTF-8", id="not-utf8"),
        pytest.param(b"[]", "JSON object", id="array"),
        pytest.param(b"null", "JSON object", id="null"),
        pytest.param(b"42", "JSON object", id="number"),
        pytest.param(b'"manifest"', "JSON object", id="string"),
    ],
)
def test_rejects_documents_that_are_not_a_json_object(raw: bytes, problem: str) -> None:
    with pytest.raises(ManifestError, match=problem):
        parse_manifest(raw)


@pytest.mark.parametrize(
    ("encode_text", "problem"),
    [
        pytest.param(lambda text: b"\xef\xbb\xbf" + text.encode(), "byte-order mark", id="utf8-bom"),
        pytest.param(lambda text: text.encode("utf-16"), "byte-order mark", id="utf16-bom"),
        pytest.param(lambda text: text.encode("utf-16-le"), "UTF-16 or UTF-32", id="utf16-le"),
        pytest.param(lambda text: text.encode("utf-16-be"), "UTF-16 or UTF-32", id="utf16-be"),
        pytest.param(lambda text: text.encode("utf-32"), "byte-order mark", id="utf32-bom"),
        pytest.param(lambda text: text.encode("utf-32-be"), "UTF-16 or UTF-32", id="utf32-be"),
        pytest.param(lambda text: text.encode("latin-1") + b"\xe9", "UTF-8", id="latin-1"),
    ],
)
def test_only_utf8_without_a_byte_order_mark_is_read(encode_text: Any, problem: str) -> None:
    text = encode(example()).decode()
    assert parse_manifest(text.encode()).job_id == 42  # the same document in UTF-8 is fine

    with pytest.raises(ManifestError, match=problem):
        parse_manifest(encode_text(text))


@pytest.mark.parametrize("repeated", ["job_id", "sha256"])
def test_a_key_repeated_in_one_object_is_rejected_naming_it(repeated: str) -> None:
    text = encode(example()).decode()
    if repeated == "job_id":
        raw = text.replace('"job_id": 42', '"job_id": 42, "job_id": 43')
    else:
        raw = text.replace(f'"sha256": "{SHA_BEST}"', f'"sha256": "{SHA_BEST}", "sha256": "{SHA_LAST}"')
    assert raw != text

    with pytest.raises(ManifestError, match=f"'{repeated}' appears more than once"):
        parse_manifest(raw.encode())


@pytest.mark.parametrize(
    ("path", "value", "problem"),
    [
        pytest.param("schema_version", DELETE, "schema_version", id="schema_version-missing"),
        pytest.param("schema_version", 2, "schema_version", id="schema_version-2"),
        pytest.param("schema_version", "1", "schema_version", id="schema_version-string"),
        pytest.param("schema_version", True, "schema_version", id="schema_version-true"),
        pytest.param("schema_version", None, "schema_version", id="schema_version-null"),
        pytest.param("job_id", DELETE, "job_id", id="job_id-missing"),
        pytest.param("attempt", DELETE, "attempt", id="attempt-missing"),
        pytest.param("status", DELETE, "status", id="status-missing"),
        pytest.param("project_id", "7", "project_id", id="project_id-string"),
        pytest.param("job_id", "42", "job_id", id="job_id-string"),
        pytest.param("attempt", "1", "attempt", id="attempt-string"),
        pytest.param("project_id", True, "project_id", id="project_id-true"),
        pytest.param("job_id", True, "job_id", id="job_id-true"),
        pytest.param("attempt", True, "attempt", id="attempt-true"),
        pytest.param("job_id", 42.0, "job_id", id="job_id-float"),
        pytest.param("project_id", 0, "project_id", id="project_id-zero"),
        pytest.param("job_id", 0, "job_id", id="job_id-zero"),
        pytest.param("attempt", 0, "attempt", id="attempt-zero"),
        pytest.param("project_id", -7, "project_id", id="project_id-negative"),
        pytest.param("job_id", -42, "job_id", id="job_id-negative"),
        pytest.param("attempt", -1, "attempt", id="attempt-negative"),
        pytest.param("status", "done", "status", id="status-unknown"),
        pytest.param("status", "Completed", "status", id="status-capitalised"),
        pytest.param("status", None, "status", id="status-null"),
        pytest.param("checkpoints.best.sha256", SHA_BEST[:63], "checkpoints.best.sha256", id="sha256-short"),
        pytest.param("checkpoints.best.sha256", SHA_BEST + "0", "checkpoints.best.sha256", id="sha256-long"),
        pytest.param("checkpoints.last.sha256", "g" * 64, "checkpoints.last.sha256", id="sha256-non-hex"),
        pytest.param("checkpoints.best.sha256", " " + SHA_BEST[1:], "checkpoints.best.sha256", id="sha256-space"),
        pytest.param("checkpoints.best.sha256", DELETE, "checkpoints.best.sha256", id="sha256-missing"),
        pytest.param("checkpoints.best.size", -1, "checkpoints.best.size", id="size-negative"),
        pytest.param("checkpoints.best.size", DELETE, "checkpoints.best.size", id="size-missing"),
        pytest.param("checkpoints.last.size", "5411290", "checkpoints.last.size", id="size-string"),
        pytest.param("checkpoints.last.epoch", -1, "checkpoints.last.epoch", id="epoch-negative"),
        pytest.param("checkpoints.best.epoch", 0, "checkpoints.best.epoch", id="epoch-zero"),
        pytest.param("finished_at", "2025-11-05T14:30:00", "finished_at", id="finished_at-without-zone"),
        pytest.param("finished_at", "yesterday", "finished_at", id="finished_at-not-a-date"),
        pytest.param("metric.mode", "maximize", "metric.mode", id="metric-mode-unknown"),
        pytest.param("metric.mode", "MAX", "metric.mode", id="metric-mode-uppercase"),
    ],
)
def test_rejects_invalid_fields_naming_the_problem(path: str, value: Any, problem: str) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(encode(edited(path, value)))
    assert problem in str(caught.value)


NOT_A_NUMBER = "__not_a_number__"  # replaced by the literal in the encoded text


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize(
    ("path", "value"),
    [
        pytest.param("error", NOT_A_NUMBER, id="top-level"),
        pytest.param("checkpoints.best.epoch", NOT_A_NUMBER, id="epoch"),
        pytest.param("checkpoints.last.size", NOT_A_NUMBER, id="size"),
        pytest.param("metric.threshold", NOT_A_NUMBER, id="unknown-nested-field"),
        pytest.param("trainer_metrics", {"history": [0.5, NOT_A_NUMBER]}, id="inside-unknown-list"),
    ],
)
def test_rejects_non_finite_json_literals_anywhere(literal: str, path: str, value: Any) -> None:
    raw = encode(edited(path, value)).replace(f'"{NOT_A_NUMBER}"'.encode(), literal.encode())
    assert literal.encode() in raw

    with pytest.raises(ManifestError, match=literal):
        parse_manifest(raw)


# --- the manifest speaks only for its own key ---------------------------------------------------------------


def test_check_matches_key_accepts_its_own_key() -> None:
    manifest = parse_manifest(encode(example()))
    check_matches_key(manifest, AttemptRef(job=JobRef(job_id=42, project_id=7), attempt=1))


def test_check_matches_key_accepts_a_test_job_at_its_own_key() -> None:
    manifest = parse_manifest(encode(edited("project_id", None)))
    check_matches_key(manifest, AttemptRef(job=JobRef(job_id=42), attempt=1))


@pytest.mark.parametrize(
    ("manifest_project", "key_ref"),
    [
        pytest.param(7, AttemptRef(job=JobRef(job_id=42, project_id=8), attempt=1), id="project-differs"),
        pytest.param(7, AttemptRef(job=JobRef(job_id=43, project_id=7), attempt=1), id="job-differs"),
        pytest.param(7, AttemptRef(job=JobRef(job_id=42, project_id=7), attempt=2), id="attempt-differs"),
        pytest.param(7, AttemptRef(job=JobRef(job_id=42), attempt=1), id="project-job-at-test-job-key"),
        pytest.param(None, AttemptRef(job=JobRef(job_id=42, project_id=7), attempt=1), id="test-job-at-project-key"),
    ],
)
def test_check_matches_key_rejects_any_differing_id(manifest_project: int | None, key_ref: AttemptRef) -> None:
    manifest = parse_manifest(encode(edited("project_id", manifest_project)))
    with pytest.raises(ManifestError, match="differ"):
        check_matches_key(manifest, key_ref)


def test_check_matches_key_message_shows_both_sets_of_ids() -> None:
    manifest = parse_manifest(encode(example()))
    with pytest.raises(ManifestError) as caught:
        check_matches_key(manifest, AttemptRef(job=JobRef(job_id=43, project_id=7), attempt=1))
    message = str(caught.value)
    assert "job_id=42" in message
    assert "job_id=43" in message


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"job_id": 2**31}, "job_id"),
        ({"attempt": 2**31}, "attempt"),
        ({"project_id": 2**31}, "project_id"),
    ],
)
def test_ids_beyond_the_platforms_integer_columns_are_rejected(change: dict[str, int], field: str) -> None:
    document = example() | change
    with pytest.raises(ManifestError, match=field):
        parse_manifest(json.dumps(document).encode())


@pytest.mark.parametrize(
    "raw",
    [b"[" * 30_000 + b"]" * 30_000, b'{"schema_version": 1, "x": ' + b"9" * 5000 + b"}"],
    ids=["deep-nesting", "huge-integer"],
)
def test_json_that_crashes_the_parser_is_a_manifest_error(raw: bytes) -> None:
    with pytest.raises(ManifestError):
        parse_manifest(raw)


@pytest.mark.parametrize("name", ["Best", "LAST", "best.pt", "last_", "Best.PT"])
def test_a_checkpoint_name_that_reads_as_best_or_last_is_a_typo_not_an_extra(name: str) -> None:
    document = example()
    document["checkpoints"][name] = document["checkpoints"].pop("best")

    with pytest.raises(ManifestError, match="is not a checkpoint name"):
        parse_manifest(encode(document))


def test_other_checkpoint_entries_are_kept_for_forward_compatibility() -> None:
    document = example()
    document["checkpoints"]["ema"] = document["checkpoints"]["best"]

    assert "ema" in parse_manifest(encode(document)).checkpoints.model_extra
