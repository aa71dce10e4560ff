"""The floor: what a promotion cannot do without, issued directly with boto3 and pg8000 (no SQLAlchemy, no
ckpt), so the handler's figures have something honest to be compared with.

Per manifest (an SQS event's S3 notification):

1. GetObject of the manifest; its SHA-256; json.loads.
2. One transaction, on one connection kept open between invocations (as a warm Lambda keeps it), its three
   statements prepared once per connection (pg8000's PreparedStatement: Bind + Execute + Sync, one round trip
   each): ``BEGIN``; ``pg_advisory_xact_lock`` on the product's key; the job's ``ckpt_job_state`` row, read in
   the next statement (a statement that took the lock in its own snapshot could read a state older than the
   lock); the decision (the same manifest: duplicate).
3. For a new manifest, still under the lock: HeadObject (``ChecksumMode=ENABLED``) of each listed file: the
   size, and the store's SHA-256 (single-request upload) or its full-object CRC-64/NVME against the
   manifest's (multipart upload), nothing else accepted; CopyObject of each file with ``CopySourceIfMatch``
   on the verified ETag, asking the store for the copy's SHA-256 and checking it.
4. ONE statement that writes the rows (the best and last epochs' ``checkpoint_path``, every other row of
   the job NULL), the ``ckpt_promotions`` record (the product's details JSON, missing rows included) and the
   ``ckpt_job_state`` row; ``COMMIT``. Five round trips in all.

A duplicate is steps 1, 2 and 4: the record, and the promoted paths re-applied; no HEAD, no copy.

Out of its scope, where the product does more: manifests with a null epoch (resolved from the rows), files
without a store checksum (hashed by streaming), superseded attempts, rejections and their records, retries,
logging, metrics. The bench's manifests need none of it. The product also reads the manifest under the lock
(what keeps a version read before a re-stage from overwriting the newer one): the same calls, in another order.

    python -m tests.bench.floor --endpoint http://127.0.0.1:5000 --bucket B \
        --database postgresql://postgres@127.0.0.1:5432/db KEY...
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import ssl
from typing import Any
from urllib.parse import unquote, unquote_plus, urlsplit

import boto3
import pg8000.native
from botocore.config import Config

LOCK_KEY = "ckpt:job:{job_id}"  # the product's advisory lock key (ckpt.adapters.db.store)
TRIGGER = "sqs:s3"

LOCK = "SELECT pg_advisory_xact_lock(hashtextextended(CAST(:key AS text), 0))"
STATE = "SELECT attempt, manifest_sha256, best_epoch, last_epoch FROM ckpt_job_state WHERE job_id = :job_id"

# The rows, the record and the state in one statement. The record's missing_rows are the target epochs the
# UPDATE did not find a row for.
WRITE = """
WITH rows AS (
    UPDATE validation_results
       SET checkpoint_path = CASE epoch WHEN :best_epoch THEN CAST(:best_uri AS varchar)
                                        WHEN :last_epoch THEN CAST(:last_uri AS varchar) END
     WHERE job_id = :job_id AND (checkpoint_path IS NOT NULL OR epoch = :best_epoch OR epoch = :last_epoch)
    RETURNING epoch, checkpoint_path
), record AS (
    INSERT INTO ckpt_promotions (created_at, outcome, reason, trigger, bucket, manifest_key, manifest_sha256,
                                 project_id, job_id, attempt, best_epoch, last_epoch, details)
    SELECT now(), CAST(:outcome AS varchar), CAST(:reason AS text), CAST(:trigger AS varchar),
           CAST(:bucket AS varchar), CAST(:manifest_key AS varchar), CAST(:sha AS varchar), :project_id, :job_id,
           :attempt, :best_epoch, :last_epoch,
           json_build_object(
               'files', CAST(:files AS json),
               'row_paths', CAST(:row_paths AS json),
               'missing_rows', COALESCE(
                   (SELECT json_agg(e ORDER BY e) FROM unnest(CAST(:targets AS int[])) AS e
                     WHERE e NOT IN (SELECT epoch FROM rows WHERE checkpoint_path IS NOT NULL)),
                   CAST('[]' AS json)))
    RETURNING id
)
INSERT INTO ckpt_job_state AS s (job_id, project_id, attempt, manifest_sha256, best_epoch, last_epoch,
                                 promotion_id, updated_at)
SELECT :job_id, :project_id, :attempt, CAST(:sha AS varchar), :best_epoch, :last_epoch, id, now() FROM record
 WHERE :write_state
ON CONFLICT (job_id) DO UPDATE SET
    project_id = EXCLUDED.project_id, attempt = EXCLUDED.attempt, manifest_sha256 = EXCLUDED.manifest_sha256,
    best_epoch = EXCLUDED.best_epoch, last_epoch = EXCLUDED.last_epoch, promotion_id = EXCLUDED.promotion_id,
    updated_at = EXCLUDED.updated_at
"""


class Floor:
    def __init__(self, endpoint: str | None, bucket: str, database_url: str, region: str = "us-east-1") -> None:
        self.bucket = bucket
        self.s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name=region,
            config=Config(
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                retries={"mode": "standard", "total_max_attempts": 5},
            ),
        )
        url = urlsplit(database_url)
        host = url.hostname or "127.0.0.1"
        self.db = pg8000.native.Connection(
            user=unquote(url.username or "postgres"),
            password=unquote(url.password) if url.password else None,
            host=host,
            port=url.port or 5432,
            database=url.path.lstrip("/") or None,
            application_name="ckpt-bench-floor",
            startup_params={"lock_timeout": "30s", "idle_in_transaction_session_timeout": "900s"},
            # as the product connects: plaintext to this machine's own server, TLS (verified) elsewhere
            ssl_context=False if host in ("127.0.0.1", "localhost", "::1") else ssl.create_default_context(),
        )
        self._statements: dict[str, Any] = {}

    def close(self) -> None:
        self.db.close()

    def _prepared(self, sql: str) -> Any:
        """``sql`` prepared on this connection (one round trip, the first time only)."""
        statement = self._statements.get(sql)
        if statement is None:
            statement = self._statements[sql] = self.db.prepare(sql)
        return statement

    def handle(self, event: dict[str, Any]) -> list[str]:
        """An SQS event, as the handler gets it: each record's S3 notifications, promoted in turn."""
        outcomes = []
        for record in event["Records"]:
            for notification in json.loads(record["body"]).get("Records", []):
                outcomes.append(self.promote(unquote_plus(notification["s3"]["object"]["key"])))
        return outcomes

    def promote(self, key: str) -> str:
        raw = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        sha = hashlib.sha256(raw).hexdigest()
        manifest = json.loads(raw)
        job_id, project_id, attempt = manifest["job_id"], manifest["project_id"], manifest["attempt"]
        folder = key.rsplit("/", 1)[0]
        canonical = (
            f"checkpoints/projects/{project_id}/jobs/{job_id}" if project_id else f"checkpoints/test-jobs/job_{job_id}"
        )
        listed = {name: entry for name, entry in (manifest.get("checkpoints") or {}).items() if entry}
        uris = {name: f"r2://{self.bucket}/{canonical}/{name}.pt" for name in ("best", "last")}

        self.db.run("BEGIN")
        try:
            self._prepared(LOCK).run(key=LOCK_KEY.format(job_id=job_id))
            state = self._prepared(STATE).run(job_id=job_id)
            files: dict[str, Any] = {}
            if state and state[0][1] == sha:
                outcome, reason = "duplicate", "this manifest was already promoted"
                epochs = {"best": state[0][2], "last": state[0][3]}
            elif state and state[0][0] > attempt:
                raise NotImplementedError("superseded attempts are out of the floor's scope")
            else:
                outcome = "promoted"
                epochs = {name: listed[name]["epoch"] for name in ("best", "last") if name in listed}
                verified = {name: self._verify(f"{folder}/{name}.pt", entry) for name, entry in listed.items()}
                for name, (staged_key, head) in verified.items():
                    self._copy(staged_key, head, f"{canonical}/{name}.pt", listed[name], attempt, sha)
                    files[name] = {
                        "size": listed[name]["size"],
                        "sha256": listed[name]["sha256"],
                        "checksum_source": head["source"],
                        "staged_key": staged_key,
                        "canonical_uri": uris[name],
                        "epoch": listed[name]["epoch"],
                        "copy_verified_by": ["sha256"],
                        "canonical_version_id": None,
                    }
                promoted = ", ".join(f"{name}.pt (epoch {epochs[name]})" for name in files) or "no checkpoints"
                reason = f"attempt {attempt} ({manifest['status']}): promoted {promoted}"
            row_paths = {epochs[name]: uris[name] for name in ("last", "best") if epochs.get(name) is not None}
            self._prepared(WRITE).run(
                best_epoch=epochs.get("best"),
                last_epoch=epochs.get("last"),
                best_uri=uris["best"],
                last_uri=uris["last"],
                job_id=job_id,
                project_id=project_id,
                attempt=attempt,
                outcome=outcome,
                reason=reason,
                trigger=TRIGGER,
                bucket=self.bucket,
                manifest_key=key,
                sha=sha,
                files=json.dumps(files),
                row_paths=json.dumps({str(epoch): uri for epoch, uri in sorted(row_paths.items())}),
                targets=sorted(row_paths),
                write_state=outcome == "promoted",
            )
            self.db.run("COMMIT")
        except BaseException:
            self.db.run("ROLLBACK")
            raise
        return outcome

    def _verify(self, staged_key: str, entry: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        head = self.s3.head_object(Bucket=self.bucket, Key=staged_key, ChecksumMode="ENABLED")
        if head["ContentLength"] != entry["size"]:
            raise ValueError(f"{staged_key}: {head['ContentLength']} bytes, the manifest says {entry['size']}")
        multipart = "-" in head["ETag"]
        if not multipart and head.get("ChecksumSHA256") and head.get("ChecksumType") != "COMPOSITE":
            if base64.b64decode(head["ChecksumSHA256"]).hex() != entry["sha256"]:
                raise ValueError(f"{staged_key}: SHA-256 differs from the manifest's")
            source = "store"
        elif head.get("ChecksumCRC64NVME") and entry.get("crc64nvme"):
            if head["ChecksumCRC64NVME"] != entry["crc64nvme"]:
                raise ValueError(f"{staged_key}: CRC-64/NVME differs from the manifest's")
            source = "crc64nvme"
        else:
            raise NotImplementedError(f"{staged_key} has no store checksum: hashing by streaming is out of scope")
        return staged_key, {"etag": head["ETag"], "source": source}

    def _copy(
        self, staged_key: str, head: dict[str, Any], dest_key: str, entry: dict[str, Any], attempt: int, sha: str
    ) -> None:
        result = self.s3.copy_object(
            CopySource={"Bucket": self.bucket, "Key": staged_key},
            Bucket=self.bucket,
            Key=dest_key,
            CopySourceIfMatch=head["etag"],
            Metadata={"sha256": entry["sha256"], "attempt": str(attempt), "manifest-sha256": sha},
            MetadataDirective="REPLACE",
            ChecksumAlgorithm="SHA256",
        )["CopyObjectResult"]
        if base64.b64decode(result.get("ChecksumSHA256", "")).hex() != entry["sha256"]:
            raise ValueError(f"copy of {staged_key} to {dest_key}: the store's SHA-256 of the copy differs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint", default=None)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--database", required=True, help="postgresql://USER[:PASSWORD]@HOST:PORT/DB")
    parser.add_argument("keys", nargs="+", help="manifest keys")
    args = parser.parse_args()
    floor = Floor(args.endpoint, args.bucket, args.database)
    try:
        for key in args.keys:
            print(key, floor.promote(key))
    finally:
        floor.close()


if __name__ == "__main__":
    main()
