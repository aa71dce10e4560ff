"""What a committed promotion lets go of in staging (``DELETE_STAGED_AFTER_PROMOTION``, off by default).

Pure: the promotion's shell (``ckpt.promotion.cleanup``) lists and deletes; this decides which keys, from plain
values. The reasoning, since a deletion cannot be taken back:

- Only after the commit. Before it, a failure rolls the database back and the retry needs the staged files
  again; after it, the canonical keys hold the promoted bytes and the database names them.
- The promoted attempt's ``best.pt`` and ``last.pt``, but only the versions this promotion verified and
  copied. A version changed since belongs to a re-staging of the attempt whose manifest is not promoted yet
  (it needs those files); a file the manifest did not list was never verified, so it is no one's copy.
- ``best.pt`` and ``last.pt`` of every older attempt of the job, whatever version they hold: once attempt N is
  promoted, any manifest of an attempt below N is ``superseded`` (``rules.decide``, a reprocess included) before
  any of its files is read, so no manifest can need them again.
- Nothing of a newer attempt: it may still be training, or be staged and waiting for its own promotion. A
  newer staged manifest does not hold the cleanup back either: it names only files of its own folder.
- Never ``manifest.json``: a few KiB that keep every later event about the attempt explained (a redelivery is
  ``duplicate``, a late older manifest ``superseded``, not "rejected: no manifest"), keep the sweeper from
  taking the folder for one that died without a manifest, and let ``newest_attempt`` find it. The staging
  lifecycle rule (``StagingExpirationDays``) removes them with everything else.
- Never anything outside the job's staging folder, and never a canonical key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ckpt.contract.keys import CHECKPOINT_NAMES, AttemptRef, Layout


@dataclass(frozen=True)
class StagedDeletion:
    key: str
    # Delete only while the object is still this version (the one the promotion verified); None: whatever
    # version is there.
    etag: str | None


def staged_deletions(
    layout: Layout, promoted: AttemptRef, verified: Mapping[str, str], staged_attempts: Iterable[int]
) -> list[StagedDeletion]:
    """The staged files a committed promotion of ``promoted`` lets go of, in the order to delete them.

    ``verified`` maps each staged key the promotion verified and copied to the ETag of that version;
    ``staged_attempts`` are the job's attempt folders found in staging (any order, any attempt)."""
    own_keys = [layout.staged_key(promoted, name) for name in CHECKPOINT_NAMES]
    ours = [StagedDeletion(key=key, etag=verified[key]) for key in own_keys if key in verified]
    older = [
        StagedDeletion(key=layout.staged_key(AttemptRef(job=promoted.job, attempt=attempt), name), etag=None)
        for attempt in sorted(set(staged_attempts))
        if attempt < promoted.attempt
        for name in CHECKPOINT_NAMES
    ]
    return ours + older


@dataclass(frozen=True)
class CleanupReport:
    """What the cleanup after a promotion did; it never changes the promotion's outcome."""

    deleted: tuple[str, ...] = ()
    # Changed since the promotion verified it (the attempt was re-staged): a manifest may need it, so it stays.
    kept: tuple[str, ...] = ()
    # The store failed or refused; left for the staging lifecycle rule.
    failed: tuple[str, ...] = ()
