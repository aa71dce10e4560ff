"""Storage profiles: what each supported store documents about the calls the product makes.

One profile is chosen per deployment (``STORAGE_PROFILE``, else from the endpoint) and read by the storage
adapter and the trainer's uploader alike, so a store's quirk is written down here once instead of as
branches through the code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

ProfileName = Literal["s3", "r2"]
MiB = 1024 * 1024
GiB = 1024 * MiB


@dataclass(frozen=True)
class StorageProfile:
    name: ProfileName
    # The checksum algorithm CopyObject is asked to compute over the copied bytes, so the post-copy check
    # rests on a checksum the store made for this object rather than one copied from the source. S3 computes
    # it when x-amz-checksum-algorithm is sent; R2 answers that header with 501 NotImplemented.
    copy_checksum_algorithm: Literal["SHA256"] | None
    # The largest object one CopyObject request may copy; larger ones are copied in parts.
    max_copy_object_bytes: int
    # Whether UploadPartCopy honours x-amz-copy-source-if-match. R2 ignores it, so a multipart copy there is
    # checked by the source's ETag after the copy instead.
    part_copy_conditions: bool
    # Multipart uploads: at most this many parts, each at most this large (all but the last the same size).
    max_part_bytes: int
    max_parts: int = 10_000


S3 = StorageProfile(
    name="s3",
    copy_checksum_algorithm="SHA256",
    max_copy_object_bytes=5 * GiB,
    part_copy_conditions=True,
    max_part_bytes=5 * GiB,
)
R2 = StorageProfile(
    name="r2",
    copy_checksum_algorithm=None,
    max_copy_object_bytes=5 * GiB - 5 * MiB,
    part_copy_conditions=False,
    max_part_bytes=5 * GiB - 5 * MiB,
)
PROFILES: dict[str, StorageProfile] = {profile.name: profile for profile in (S3, R2)}


def profile_for(name: str | None, endpoint_url: str | None) -> StorageProfile:
    """The named profile, or the endpoint's: R2's endpoints are ``<account>.r2.cloudflarestorage.com``
    (also ``.eu.`` and ``.fedramp.`` jurisdictions); anything else, AWS S3 included, is S3."""
    if name:
        try:
            return PROFILES[name.strip().lower()]
        except KeyError:
            raise ValueError(f"STORAGE_PROFILE must be one of {', '.join(PROFILES)}, got {name!r}") from None
    host = (urlsplit(endpoint_url).hostname or "") if endpoint_url else ""
    return R2 if host.endswith(".r2.cloudflarestorage.com") else S3
