"""The contract's storage layout: staging and canonical keys, and the URIs recorded in the database.

Every key the product reads or writes is built or parsed here, so the layout changes in one place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from ckpt.text import shown

CheckpointName = Literal["best", "last"]
CHECKPOINT_NAMES: tuple[CheckpointName, ...] = ("best", "last")
MANIFEST_FILE = "manifest.json"

# Plain decimal, no sign, no leading zero: "7" is an id, "07", "+7" and "0" are not.
_ID = r"[1-9][0-9]{0,9}"
# Ids, attempts and epochs land in the platform's 32-bit integer columns; larger ones are refused up front
# rather than failing inside the promotion's transaction.
MAX_ID = 2**31 - 1


def check_id(name: str, value: int | None, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if type(value) is not int or not 0 < value <= MAX_ID:
        raise ValueError(f"{name} must be an integer from 1 to {MAX_ID}, got {shown(value, 40)}")


def parse_id(text: str) -> int | None:
    """An id, attempt or epoch written as the contract writes them (plain decimal, no sign, no leading zero, at
    most MAX_ID), or None."""
    if not re.fullmatch(_ID, text) or int(text) > MAX_ID:
        return None
    return int(text)


_STAGED_FOLDER = re.compile(
    rf"^(?:projects/(?P<project_id>{_ID})/jobs/(?P<job_id>{_ID})"
    rf"|test-jobs/job_(?P<test_job_id>{_ID}))"
    rf"/attempts/(?P<attempt>{_ID})/$"
)


@dataclass(frozen=True, order=True)
class JobRef:
    """A training job; ``project_id`` is None for test jobs."""

    job_id: int
    project_id: int | None = None

    def __post_init__(self) -> None:
        check_id("job_id", self.job_id)
        check_id("project_id", self.project_id, optional=True)

    def folder(self) -> str:
        if self.project_id is None:
            return f"test-jobs/job_{self.job_id}/"
        return f"projects/{self.project_id}/jobs/{self.job_id}/"

    def __str__(self) -> str:
        return f"job {self.job_id}" + ("" if self.project_id is None else f" of project {self.project_id}")


@dataclass(frozen=True, order=True)
class AttemptRef:
    """One attempt (run) of a job: the unit that stages files and writes a manifest."""

    job: JobRef
    attempt: int

    def __post_init__(self) -> None:
        check_id("attempt", self.attempt)


@dataclass(frozen=True)
class Layout:
    """Where things live in the bucket. The prefixes come from configuration."""

    bucket: str
    staging_prefix: str = "staging/"
    canonical_prefix: str = "checkpoints/"
    uri_scheme: str = "r2"

    def __post_init__(self) -> None:
        for name in ("staging_prefix", "canonical_prefix"):
            value = getattr(self, name)
            if not value.endswith("/") or value.startswith("/"):
                raise ValueError(f"{name} must end with '/' and not start with one, got {value!r}")
        if self.staging_prefix.startswith(self.canonical_prefix) or self.canonical_prefix.startswith(
            self.staging_prefix
        ):
            # The notification filter relies on the function's writes never landing under staging/.
            raise ValueError("staging_prefix and canonical_prefix must not contain one another")

    # --- staging -------------------------------------------------------------------------------------

    def attempt_folder(self, ref: AttemptRef) -> str:
        return f"{self.staging_prefix}{ref.job.folder()}attempts/{ref.attempt}/"

    def staged_key(self, ref: AttemptRef, name: CheckpointName) -> str:
        return f"{self.attempt_folder(ref)}{name}.pt"

    def manifest_key(self, ref: AttemptRef) -> str:
        return f"{self.attempt_folder(ref)}{MANIFEST_FILE}"

    def job_staging_folder(self, job: JobRef) -> str:
        return f"{self.staging_prefix}{job.folder()}attempts/"

    def parse_manifest_key(self, key: str) -> AttemptRef:
        """The attempt a manifest key belongs to.

        Raises ``OutsideStaging`` for keys outside the staging prefix (never the function's business)
        and ``NotAManifest`` for staging keys that do not follow the layout (ignored by contract).
        """
        if not key.startswith(self.staging_prefix):
            raise OutsideStaging(f"key {shown(key)} is outside the staging prefix {self.staging_prefix!r}")
        rest = key[len(self.staging_prefix) :]
        folder, _, filename = rest.rpartition("/")
        if filename != MANIFEST_FILE:
            raise NotAManifest(f"key {shown(key)} does not end in /{MANIFEST_FILE}")
        match = _STAGED_FOLDER.match(folder + "/")
        if match is None:
            raise NotAManifest(
                f"key {shown(key)} does not match {self.staging_prefix}projects/{{project_id}}/jobs/{{job_id}}"
                f"/attempts/{{attempt}}/{MANIFEST_FILE} or {self.staging_prefix}test-jobs/job_{{job_id}}"
                f"/attempts/{{attempt}}/{MANIFEST_FILE} with positive decimal ids"
            )
        try:
            if match["test_job_id"] is not None:
                job = JobRef(job_id=int(match["test_job_id"]))
            else:
                job = JobRef(job_id=int(match["job_id"]), project_id=int(match["project_id"]))
            return AttemptRef(job=job, attempt=int(match["attempt"]))
        except ValueError as exc:
            raise NotAManifest(f"key {shown(key)}: {exc}") from None

    def attempts_in(self, folders: list[str]) -> list[int]:
        """The attempt numbers among folders listed under ``job_staging_folder``, highest first."""
        numbers = (re.fullmatch(rf".*/attempts/({_ID})/", folder) for folder in folders)
        # A folder beyond MAX_ID is no attempt of the contract's (a stray upload): never read as one.
        return sorted((n for match in numbers if match and (n := int(match[1])) <= MAX_ID), reverse=True)

    # --- canonical -----------------------------------------------------------------------------------

    def canonical_key(self, job: JobRef, name: CheckpointName) -> str:
        return f"{self.canonical_prefix}{job.folder()}{name}.pt"

    def uri(self, key: str) -> str:
        return f"{self.uri_scheme}://{self.bucket}/{key}"

    def canonical_uri(self, job: JobRef, name: CheckpointName) -> str:
        return self.uri(self.canonical_key(job, name))

    def canonical_uris(self, job: JobRef) -> dict[CheckpointName, str]:
        return {name: self.canonical_uri(job, name) for name in CHECKPOINT_NAMES}


class LayoutError(ValueError):
    """A key that is not where the contract puts it."""


class OutsideStaging(LayoutError):
    """The key is not under the staging prefix."""


class NotAManifest(LayoutError):
    """The key is under the staging prefix but is not a manifest of the layout."""
