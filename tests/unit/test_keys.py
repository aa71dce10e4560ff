"""The storage layout of the contract: every key it names, the URIs, and which keys are manifests."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ckpt.contract.keys import AttemptRef, JobRef, Layout, NotAManifest, OutsideStaging

LAYOUT = Layout(bucket="vision-platform-prod")
PROJECT_JOB = JobRef(job_id=42, project_id=7)
TEST_JOB = JobRef(job_id=42)
PROJECT_ATTEMPT = AttemptRef(job=PROJECT_JOB, attempt=1)
TEST_ATTEMPT = AttemptRef(job=TEST_JOB, attempt=3)
MANIFEST_KEY = "staging/projects/7/jobs/42/attempts/1/manifest.json"


# --- building keys ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        pytest.param(
            lambda lay: lay.staged_key(PROJECT_ATTEMPT, "best"),
            "staging/projects/7/jobs/42/attempts/1/best.pt",
            id="staged-best",
        ),
        pytest.param(
            lambda lay: lay.staged_key(PROJECT_ATTEMPT, "last"),
            "staging/projects/7/jobs/42/attempts/1/last.pt",
            id="staged-last",
        ),
        pytest.param(lambda lay: lay.manifest_key(PROJECT_ATTEMPT), MANIFEST_KEY, id="manifest"),
        pytest.param(
            lambda lay: lay.attempt_folder(PROJECT_ATTEMPT),
            "staging/projects/7/jobs/42/attempts/1/",
            id="attempt-folder",
        ),
        pytest.param(
            lambda lay: lay.job_staging_folder(PROJECT_JOB),
            "staging/projects/7/jobs/42/attempts/",
            id="job-staging-folder",
        ),
        pytest.param(
            lambda lay: lay.canonical_key(PROJECT_JOB, "best"),
            "checkpoints/projects/7/jobs/42/best.pt",
            id="canonical-best",
        ),
        pytest.param(
            lambda lay: lay.canonical_key(PROJECT_JOB, "last"),
            "checkpoints/projects/7/jobs/42/last.pt",
            id="canonical-last",
        ),
        pytest.param(
            lambda lay: lay.staged_key(TEST_ATTEMPT, "best"),
            "staging/test-jobs/job_42/attempts/3/best.pt",
            id="test-job-staged-best",
        ),
        pytest.param(
            lambda lay: lay.staged_key(TEST_ATTEMPT, "last"),
            "staging/test-jobs/job_42/attempts/3/last.pt",
            id="test-job-staged-last",
        ),
        pytest.param(
            lambda lay: lay.manifest_key(TEST_ATTEMPT),
            "staging/test-jobs/job_42/attempts/3/manifest.json",
            id="test-job-manifest",
        ),
        pytest.param(
            lambda lay: lay.job_staging_folder(TEST_JOB),
            "staging/test-jobs/job_42/attempts/",
            id="test-job-staging-folder",
        ),
        pytest.param(
            lambda lay: lay.canonical_key(TEST_JOB, "best"),
            "checkpoints/test-jobs/job_42/best.pt",
            id="test-job-canonical-best",
        ),
        pytest.param(
            lambda lay: lay.canonical_key(TEST_JOB, "last"),
            "checkpoints/test-jobs/job_42/last.pt",
            id="test-job-canonical-last",
        ),
    ],
)
def test_layout_builds_the_contract_keys(build: Callable[[Layout], str], expected: str) -> None:
    assert build(LAYOUT) == expected


def test_canonical_uri_is_the_contract_example() -> None:
    assert (
        LAYOUT.canonical_uri(PROJECT_JOB, "best") == "r2://vision-platform-prod/checkpoints/projects/7/jobs/42/best.pt"
    )


@pytest.mark.parametrize(
    ("job", "name", "expected"),
    [
        (PROJECT_JOB, "last", "r2://vision-platform-prod/checkpoints/projects/7/jobs/42/last.pt"),
        (TEST_JOB, "best", "r2://vision-platform-prod/checkpoints/test-jobs/job_42/best.pt"),
        (TEST_JOB, "last", "r2://vision-platform-prod/checkpoints/test-jobs/job_42/last.pt"),
    ],
)
def test_canonical_uri_is_scheme_bucket_and_canonical_key(job: JobRef, name: str, expected: str) -> None:
    assert LAYOUT.canonical_uri(job, name) == expected  # type: ignore[arg-type]


def test_layout_defaults_are_the_contract_prefixes_and_scheme() -> None:
    assert (LAYOUT.staging_prefix, LAYOUT.canonical_prefix, LAYOUT.uri_scheme) == ("staging/", "checkpoints/", "r2")


def test_custom_prefixes_and_scheme_are_used_everywhere() -> None:
    layout = Layout(bucket="models", staging_prefix="ml/incoming/", canonical_prefix="ml/released/", uri_scheme="s3")
    assert layout.manifest_key(PROJECT_ATTEMPT) == "ml/incoming/projects/7/jobs/42/attempts/1/manifest.json"
    assert layout.staged_key(TEST_ATTEMPT, "best") == "ml/incoming/test-jobs/job_42/attempts/3/best.pt"
    assert layout.canonical_key(PROJECT_JOB, "last") == "ml/released/projects/7/jobs/42/last.pt"
    assert layout.canonical_uri(TEST_JOB, "best") == "s3://models/ml/released/test-jobs/job_42/best.pt"
    assert layout.parse_manifest_key("ml/incoming/projects/7/jobs/42/attempts/1/manifest.json") == PROJECT_ATTEMPT


def test_custom_layout_treats_the_default_staging_prefix_as_outside() -> None:
    layout = Layout(bucket="models", staging_prefix="ml/incoming/", canonical_prefix="ml/released/")
    with pytest.raises(OutsideStaging):
        layout.parse_manifest_key(MANIFEST_KEY)


# --- parsing manifest keys ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ref",
    [
        PROJECT_ATTEMPT,
        TEST_ATTEMPT,
        AttemptRef(job=JobRef(job_id=1, project_id=1), attempt=1),
        AttemptRef(job=JobRef(job_id=10, project_id=100), attempt=20),
        AttemptRef(job=JobRef(job_id=2147483647, project_id=987654321), attempt=99),
        AttemptRef(job=JobRef(job_id=900000001), attempt=2147483647),
    ],
    ids=str,
)
def test_parse_manifest_key_round_trips_manifest_key(ref: AttemptRef) -> None:
    assert LAYOUT.parse_manifest_key(LAYOUT.manifest_key(ref)) == ref


def test_parse_manifest_key_reads_the_ids() -> None:
    ref = LAYOUT.parse_manifest_key(MANIFEST_KEY)
    assert (ref.job.project_id, ref.job.job_id, ref.attempt) == (7, 42, 1)


def test_parse_manifest_key_reads_a_test_job_without_project() -> None:
    ref = LAYOUT.parse_manifest_key("staging/test-jobs/job_42/attempts/3/manifest.json")
    assert (ref.job.project_id, ref.job.job_id, ref.attempt) == (None, 42, 3)


_P = "staging/projects/"  # keeps the table below readable

NOT_MANIFESTS = {
    # leading zeros
    "leading-zero-project": f"{_P}07/jobs/42/attempts/1/manifest.json",
    "leading-zero-job": f"{_P}7/jobs/042/attempts/1/manifest.json",
    "leading-zero-attempt": f"{_P}7/jobs/42/attempts/01/manifest.json",
    "leading-zero-test-job": "staging/test-jobs/job_042/attempts/1/manifest.json",
    # zero
    "zero-project": f"{_P}0/jobs/42/attempts/1/manifest.json",
    "zero-job": f"{_P}7/jobs/0/attempts/1/manifest.json",
    "zero-attempt": f"{_P}7/jobs/42/attempts/0/manifest.json",
    "zero-test-job": "staging/test-jobs/job_0/attempts/1/manifest.json",
    # signs
    "negative-project": f"{_P}-7/jobs/42/attempts/1/manifest.json",
    "negative-job": f"{_P}7/jobs/-42/attempts/1/manifest.json",
    "negative-attempt": f"{_P}7/jobs/42/attempts/-1/manifest.json",
    "plus-sign": f"{_P}+7/jobs/42/attempts/1/manifest.json",
    # not plain decimal
    "word": f"{_P}seven/jobs/42/attempts/1/manifest.json",
    "hex": f"{_P}0x7/jobs/42/attempts/1/manifest.json",
    "float": f"{_P}7.0/jobs/42/attempts/1/manifest.json",
    "exponent": f"{_P}7/jobs/4e2/attempts/1/manifest.json",
    "underscore-digits": f"{_P}7/jobs/4_2/attempts/1/manifest.json",
    "space": f"{_P}7/jobs/ 42/attempts/1/manifest.json",
    "empty-id": f"{_P}/jobs/42/attempts/1/manifest.json",
    "empty-test-job-id": "staging/test-jobs/job_/attempts/1/manifest.json",
    "arabic-indic-digit": f"{_P}\u0667/jobs/42/attempts/1/manifest.json",
    "fullwidth-digits": f"{_P}7/jobs/\uff14\uff12/attempts/1/manifest.json",
    "devanagari-attempt": f"{_P}7/jobs/42/attempts/\u0967/manifest.json",
    "superscript-digit": f"{_P}7/jobs/42/attempts/\u00b9/manifest.json",
    # structure
    "missing-attempts-segment": f"{_P}7/jobs/42/manifest.json",
    "missing-attempt-number": f"{_P}7/jobs/42/attempts/manifest.json",
    "missing-job": f"{_P}7/attempts/1/manifest.json",
    "test-job-without-job_-prefix": "staging/test-jobs/42/attempts/1/manifest.json",
    "extra-segment-after-attempt": f"{_P}7/jobs/42/attempts/1/sub/manifest.json",
    "extra-segment-before-projects": "staging/tenant/projects/7/jobs/42/attempts/1/manifest.json",
    "double-slash": f"{_P}7/jobs/42/attempts/1//manifest.json",
    "project-and-test-job": f"{_P}7/test-jobs/job_42/attempts/1/manifest.json",
    "uppercase-segment": "staging/Projects/7/jobs/42/attempts/1/manifest.json",
    # dot segments
    "dot-dot-after-attempt": f"{_P}7/jobs/42/attempts/1/../manifest.json",
    "dot-dot-to-other-attempt": f"{_P}7/jobs/42/attempts/1/../2/manifest.json",
    "dot-dot-to-other-job": f"{_P}7/jobs/43/../42/attempts/1/manifest.json",
    "dot-dot-out-and-back": "staging/../staging/projects/7/jobs/42/attempts/1/manifest.json",
    "dot-segment": f"{_P}7/jobs/42/./attempts/1/manifest.json",
    # file name
    "best-pt": f"{_P}7/jobs/42/attempts/1/best.pt",
    "last-pt": f"{_P}7/jobs/42/attempts/1/last.pt",
    "uppercase-manifest": f"{_P}7/jobs/42/attempts/1/Manifest.json",
    "temporary-manifest": f"{_P}7/jobs/42/attempts/1/manifest.json.tmp",
    "prefixed-manifest": f"{_P}7/jobs/42/attempts/1/old-manifest.json",
    "trailing-newline": f"{_P}7/jobs/42/attempts/1/manifest.json\n",
    "folder-only": f"{_P}7/jobs/42/attempts/1/",
    "manifest-at-staging-root": "staging/manifest.json",
    "staging-prefix-itself": "staging/",
}


@pytest.mark.parametrize("key", NOT_MANIFESTS.values(), ids=NOT_MANIFESTS.keys())
def test_parse_manifest_key_rejects_staging_keys_off_the_layout_as_not_a_manifest(key: str) -> None:
    with pytest.raises(NotAManifest) as caught:
        LAYOUT.parse_manifest_key(key)
    assert repr(key) in str(caught.value)


OUTSIDE_STAGING = {
    "canonical-prefix": "checkpoints/projects/7/jobs/42/attempts/1/manifest.json",
    "canonical-best": "checkpoints/projects/7/jobs/42/best.pt",
    "other-prefix": "other/projects/7/jobs/42/attempts/1/manifest.json",
    "no-prefix": "projects/7/jobs/42/attempts/1/manifest.json",
    "leading-slash": "/staging/projects/7/jobs/42/attempts/1/manifest.json",
    "uppercase-prefix": "Staging/projects/7/jobs/42/attempts/1/manifest.json",
    "prefix-without-slash": "staging",
    "similar-prefix": "staging-old/projects/7/jobs/42/attempts/1/manifest.json",
    "dot-dot-first": "../staging/projects/7/jobs/42/attempts/1/manifest.json",
    "empty": "",
}


@pytest.mark.parametrize("key", OUTSIDE_STAGING.values(), ids=OUTSIDE_STAGING.keys())
def test_parse_manifest_key_rejects_keys_outside_staging_as_outside_staging(key: str) -> None:
    with pytest.raises(OutsideStaging) as caught:
        LAYOUT.parse_manifest_key(key)
    assert "staging/" in str(caught.value)


def test_layout_errors_are_value_errors_of_distinct_kinds() -> None:
    assert issubclass(NotAManifest, ValueError)
    assert issubclass(OutsideStaging, ValueError)
    assert not issubclass(NotAManifest, OutsideStaging)
    assert not issubclass(OutsideStaging, NotAManifest)


# --- prefixes -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("staging", "canonical"),
    [
        pytest.param("staging", "checkpoints/", id="staging-without-trailing-slash"),
        pytest.param("staging/", "checkpoints", id="canonical-without-trailing-slash"),
        pytest.param("/staging/", "checkpoints/", id="staging-with-leading-slash"),
        pytest.param("staging/", "/checkpoints/", id="canonical-with-leading-slash"),
        pytest.param("", "checkpoints/", id="empty-staging"),
        pytest.param("staging/", "", id="empty-canonical"),
        pytest.param("/", "checkpoints/", id="root-staging"),
        pytest.param("data/", "data/checkpoints/", id="canonical-inside-staging"),
        pytest.param("data/staging/", "data/", id="staging-inside-canonical"),
        pytest.param("shared/", "shared/", id="same-prefix"),
    ],
)
def test_layout_rejects_bad_prefixes(staging: str, canonical: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        Layout(bucket="vision-platform-prod", staging_prefix=staging, canonical_prefix=canonical)


@pytest.mark.parametrize(
    ("staging", "canonical"),
    [
        ("ml/staging/", "ml/checkpoints/"),
        ("staging/", "staging-promoted/"),  # a sibling, not a nested prefix
        ("incoming/v2/", "released/v2/"),
    ],
)
def test_layout_accepts_disjoint_prefixes(staging: str, canonical: str) -> None:
    layout = Layout(bucket="vision-platform-prod", staging_prefix=staging, canonical_prefix=canonical)
    assert (layout.staging_prefix, layout.canonical_prefix) == (staging, canonical)


# --- attempt folders ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("ref", [PROJECT_ATTEMPT, TEST_ATTEMPT, AttemptRef(job=PROJECT_JOB, attempt=120)], ids=str)
def test_attempts_in_reads_the_attempt_of_an_attempt_folder(ref: AttemptRef) -> None:
    assert LAYOUT.attempts_in([LAYOUT.attempt_folder(ref)]) == [ref.attempt]


@pytest.mark.parametrize(
    "suffix",
    [
        pytest.param("01/", id="leading-zero"),
        pytest.param("0/", id="zero"),
        pytest.param("-1/", id="negative"),
        pytest.param("x/", id="word"),
        pytest.param("\u0663/", id="arabic-indic-digit"),
        pytest.param("3", id="no-trailing-slash"),
        pytest.param("3/extra/", id="nested-folder"),
        pytest.param("", id="attempts-folder-itself"),
        pytest.param("2147483648/", id="beyond-32-bit"),
        pytest.param("9999999999/", id="ten-nines"),
    ],
)
def test_attempts_in_skips_other_folders(suffix: str) -> None:
    assert LAYOUT.attempts_in([LAYOUT.job_staging_folder(PROJECT_JOB) + suffix]) == []


def test_attempts_in_lists_numerically_highest_first() -> None:
    folders = [LAYOUT.attempt_folder(AttemptRef(job=PROJECT_JOB, attempt=n)) for n in (2, 10, 1)]
    assert LAYOUT.attempts_in(folders) == [10, 2, 1]


@pytest.mark.parametrize(
    "key",
    [
        "staging/projects/7/jobs/2147483648/attempts/1/manifest.json",
        "staging/projects/2147483648/jobs/42/attempts/1/manifest.json",
        "staging/projects/7/jobs/42/attempts/2147483648/manifest.json",
        "staging/test-jobs/job_99999999999/attempts/1/manifest.json",
    ],
)
def test_ids_beyond_the_platforms_integer_columns_are_not_manifest_keys(key: str) -> None:
    with pytest.raises(NotAManifest):
        LAYOUT.parse_manifest_key(key)


@pytest.mark.parametrize(
    "make",
    [
        lambda: JobRef(job_id=0),
        lambda: JobRef(job_id=2**31),
        lambda: JobRef(job_id=42, project_id=-1),
        lambda: AttemptRef(job=JobRef(job_id=42), attempt=0),
        lambda: JobRef(job_id=True),
    ],
)
def test_refs_refuse_ids_outside_the_contract(make) -> None:
    with pytest.raises(ValueError, match="must be an integer from 1 to 2147483647"):
        make()
