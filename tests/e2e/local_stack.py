"""The pipeline on one machine, with nothing from the cloud: moto's standalone server (real HTTP S3 and
SQS on loopback, with the bucket notification to SQS), a database URL, and a Lambda-style SQS poller
that hands batches to the real handler the way the Lambda service does.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from sqlalchemy import Engine

from ckpt.adapters.storage import make_client
from tests.support import LambdaContext

REPO_ROOT = Path(__file__).resolve().parents[2]
REGION = "us-east-1"
QUEUE = "promote-checkpoints"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local", "AWS_DEFAULT_REGION": REGION}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def moto_server() -> Iterator[str]:
    """Start moto's server on a free loopback port; yields its endpoint URL and stops it afterwards. Its request
    log (a line on stderr per request) goes to a file: a pipe nobody reads fills after some 64 KiB, and moto
    then blocks on the write."""
    port = _free_port()
    with tempfile.TemporaryFile() as log:
        # moto's server, with the copy conditions S3 documents enforced (tests/moto_conformance.py)
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.moto_conformance", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=log,
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])},
        )
        endpoint = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                if process.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"moto_server exited: {log.read()[-2000:].decode(errors='replace')}")
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("moto_server did not start within 30 s") from None
                    time.sleep(0.1)
            yield endpoint
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


@dataclass
class Pipeline:
    """A bucket whose manifest uploads notify an SQS queue, as template.yaml deploys it."""

    endpoint: str
    bucket: str
    staging_prefix: str = "staging/"
    s3: Any = field(init=False)
    sqs: Any = field(init=False)
    queue_url: str = field(init=False)
    queue_arn: str = field(init=False)

    def __post_init__(self) -> None:
        os.environ.update(CREDENTIALS)
        self.s3 = make_client(self.endpoint, REGION)
        self.sqs = boto3.client("sqs", endpoint_url=self.endpoint, region_name=REGION)

    def create(self) -> Pipeline:
        self.s3.create_bucket(Bucket=self.bucket)
        self.queue_url = self.sqs.create_queue(QueueName=f"{QUEUE}-{self.bucket}")["QueueUrl"]
        self.queue_arn = self.sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        self.s3.put_bucket_notification_configuration(
            Bucket=self.bucket,
            NotificationConfiguration={
                "QueueConfigurations": [
                    {
                        "Id": "promote-checkpoints-manifests",
                        "QueueArn": self.queue_arn,
                        "Events": ["s3:ObjectCreated:*"],
                        "Filter": {
                            "Key": {
                                "FilterRules": [
                                    {"Name": "prefix", "Value": self.staging_prefix},
                                    {"Name": "suffix", "Value": "manifest.json"},
                                ]
                            }
                        },
                    }
                ]
            },
        )
        return self

    def receive(self, wait_seconds: float = 10.0, expect: int = 1) -> list[dict[str, Any]]:
        """Poll the queue until ``expect`` messages arrived or ``wait_seconds`` passed."""
        messages: list[dict[str, Any]] = []
        deadline = time.monotonic() + wait_seconds
        while len(messages) < expect and time.monotonic() < deadline:
            answer = self.sqs.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=1,
                AttributeNames=["All"],
                VisibilityTimeout=30,
            )
            messages.extend(answer.get("Messages", []))
        return messages

    def lambda_event(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        """The event the Lambda SQS poller builds from received messages."""
        return {
            "Records": [
                {
                    "messageId": m["MessageId"],
                    "receiptHandle": m["ReceiptHandle"],
                    "body": m["Body"],
                    "attributes": m.get("Attributes", {}),
                    "messageAttributes": {},
                    "md5OfBody": m.get("MD5OfBody") or hashlib.md5(m["Body"].encode()).hexdigest(),
                    "eventSource": "aws:sqs",
                    "eventSourceARN": self.queue_arn,
                    "awsRegion": REGION,
                }
                for m in messages
            ]
        }

    def deliver(self, handler: Any, messages: list[dict[str, Any]]) -> dict[str, Any]:
        """Invoke the handler with a batch and delete what succeeded, as Lambda does with partial failures."""
        answer: dict[str, Any] = handler.lambda_handler(self.lambda_event(messages), LambdaContext())
        failed = {item["itemIdentifier"] for item in answer.get("batchItemFailures", [])}
        for message in messages:
            if message["MessageId"] not in failed:
                self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
        return answer

    def function_environment(self, database_url: str) -> Mapping[str, str]:
        """The function's environment, as template.yaml sets it, pointed at the local stack."""
        return {
            **CREDENTIALS,
            "CHECKPOINT_BUCKET": self.bucket,
            "AWS_S3_ENDPOINT_URL": self.endpoint,
            "DATABASE_URL": database_url,
            "STAGING_PREFIX": self.staging_prefix,
            "POWERTOOLS_TRACE_DISABLED": "1",
            "POWERTOOLS_METRICS_NAMESPACE": "CheckpointPipeline",
        }


class FlakyProxy:
    """An HTTP proxy in front of the store that answers the first ``failures`` PUT requests with ``status`` and
    error ``code`` (503 SlowDown, by default) and forwards everything else: a store that fails, then recovers."""

    def __init__(self, upstream: str, failures: int, status: int = 503, code: str = "SlowDown") -> None:
        import http.client
        import http.server
        import threading
        from urllib.parse import urlsplit

        target = urlsplit(upstream)
        proxy = self
        self.failures_left = failures
        self.failed = 0
        self.lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy.lock:
                    fail = self.command == "PUT" and proxy.failures_left > 0
                    if fail:
                        proxy.failures_left -= 1
                        proxy.failed += 1
                if fail:
                    payload = f"<Error><Code>{code}</Code><Message>injected</Message></Error>".encode()
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                connection = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                connection.request(self.command, self.path, body=body, headers=dict(self.headers))
                response = connection.getresponse()
                data = response.read()
                self.send_response(response.status)
                for name, value in response.getheaders():
                    if name.lower() not in {"transfer-encoding", "connection", "content-length"}:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                connection.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FlakyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def function_stack(endpoint: str, bucket: str, database_url: str) -> tuple[Pipeline, Engine, Any]:
    """A bucket with its notification queue, the function's environment pointed at it, an empty database with
    the platform's table and the service's, and the handler module (built on first use, as in Lambda)."""
    from ckpt.adapters.db.engine import make_engine
    from tests.support import reset_database

    pipeline = Pipeline(endpoint, bucket).create()
    os.environ.update(pipeline.function_environment(database_url))
    engine = make_engine(database_url)
    reset_database(engine)
    from promote_checkpoints import handler

    return pipeline, engine, handler
