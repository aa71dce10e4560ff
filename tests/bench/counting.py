"""The deterministic costs of a promotion, counted where they are paid.

- **S3 calls**: a botocore ``before-call.s3`` hook on the client, one count per API call (an operation the
  client issues, whatever its retries; a managed ``client.copy`` counts the HeadObject and copy calls it
  makes through the same client).
- **Bytes of a checkpoint read**: the body bytes each GetObject's caller actually read (``Body.read``,
  which ``iter_chunks`` and ``iter_lines`` go through too), by key; counted on the client that read them.
- **Database round trips**: at the pg8000 connection's socket. A round trip is a receive that follows at least
  one send since the previous receive: the client sent something and now waits for the server's answer.
  Everything the driver buffers and sends in one go before it waits is one round trip, however many protocol
  messages it holds; the several reads that may take to drain one answer are still one. pg8000's
  ``execute_unnamed`` (every parameterised statement) spends 3: Parse, then Describe, then Bind + Execute, each
  followed by a Sync and a wait. A connection opened inside the window is counted as a connect, and its
  startup exchange as round trips (the TLS negotiation, done before pg8000 has a socket to hand us, is not).
- **Statements**: the Query ('Q') and Execute ('E') messages the driver sends, parsed from the same socket
  (so ``begin transaction``, ``commit``, ``rollback`` and the pool's ping count, which SQLAlchemy never
  sees), and separately the statements SQLAlchemy executes (``before_cursor_execute``), when there is an
  engine.

``CostProbe`` is used by ``make bench`` and by ``tests/integration/test_costs.py``::

    probe = CostProbe()                  # patches pg8000's socket factory, for connections made from now on
    probe.watch_promoter(promoter)       # its S3 client (and its SQLAlchemy engine, if it has one)
    with probe.count() as tally:
        handler.lambda_handler(event, context)
    tally.s3_calls, tally.round_trips, tally.bytes_read(".pt")
    probe.close()
"""

from __future__ import annotations

import io
import socket
import struct
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

# Storage operations by price class. S3 bills PUT, COPY, POST and LIST requests at one rate and GET, HEAD and
# the rest at another; R2's Class A and Class B follow the same split for these operations.
CLASS_A_OPERATIONS = frozenset(
    {
        "PutObject",
        "CopyObject",
        "CreateMultipartUpload",
        "UploadPart",
        "UploadPartCopy",
        "CompleteMultipartUpload",
        "ListObjectsV2",
        "ListObjects",
        "ListMultipartUploads",
        "ListParts",
    }
)
CLASS_B_OPERATIONS = frozenset({"GetObject", "HeadObject"})
FREE_OPERATIONS = frozenset({"AbortMultipartUpload", "DeleteObject", "DeleteObjects"})


@dataclass
class Tally:
    """What was counted inside one ``CostProbe.count()`` window."""

    s3_operations: Counter[str] = field(default_factory=Counter)
    bytes_read_by_key: Counter[str] = field(default_factory=Counter)
    round_trips: int = 0
    connects: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    messages: Counter[str] = field(default_factory=Counter)  # frontend message types sent ('Q', 'P', 'E', ...)
    # one line per round trip: the message types it carried and the SQL of any Parse or Query
    wire_trace: list[str] = field(default_factory=list)
    sql_statements: list[str] = field(default_factory=list)  # what SQLAlchemy executed, when there is an engine

    @property
    def s3_calls(self) -> int:
        return sum(self.s3_operations.values())

    @property
    def statements(self) -> int:
        """Statements the server executed: simple Query messages plus extended-protocol Executes."""
        return self.messages["Q"] + self.messages["E"]

    def bytes_read(self, suffix: str = "") -> int:
        """Body bytes read from GetObject answers, of the keys that end with ``suffix``."""
        return sum(n for key, n in self.bytes_read_by_key.items() if key.endswith(suffix))

    def s3_by_class(self) -> dict[str, int]:
        ops = self.s3_operations
        return {
            "A": sum(n for op, n in ops.items() if op in CLASS_A_OPERATIONS),
            "B": sum(n for op, n in ops.items() if op in CLASS_B_OPERATIONS),
            "other": sum(n for op, n in ops.items() if op not in CLASS_A_OPERATIONS | CLASS_B_OPERATIONS),
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "s3_calls": self.s3_calls,
            "s3_operations": dict(sorted(self.s3_operations.items())),
            "s3_by_class": self.s3_by_class(),
            "bytes_read_by_key": dict(self.bytes_read_by_key),
            "round_trips": self.round_trips,
            "connects": self.connects,
            "statements": self.statements,
            "wire_messages": dict(sorted(self.messages.items())),
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "sql_statements": list(self.sql_statements),
            "wire_trace": list(self.wire_trace),
        }


class _Windows:
    """The tallies currently counting (windows can nest: each one counts everything inside it)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open: list[Tally] = []

    def each(self) -> list[Tally]:
        with self.lock:
            return list(self.open)


# --- pg8000, at its socket -----------------------------------------------------------------------------------


class _FrontendParser:
    """Splits what the client sends into PostgreSQL frontend messages: the startup message first (no type
    byte), then ``type, Int32 length (itself included), body``."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.started = False

    def feed(self, data: bytes) -> list[tuple[str, bytes]]:
        self.buffer.extend(data)
        messages: list[tuple[str, bytes]] = []
        while True:
            if not self.started:
                if len(self.buffer) < 4:
                    break
                (length,) = struct.unpack("!i", self.buffer[:4])
                if len(self.buffer) < length:
                    break
                del self.buffer[:length]
                self.started = True
                messages.append(("startup", b""))
                continue
            if len(self.buffer) < 5:
                break
            kind = chr(self.buffer[0])
            (length,) = struct.unpack("!i", self.buffer[1:5])
            if len(self.buffer) < 1 + length:
                break
            body = bytes(self.buffer[5 : 1 + length])
            del self.buffer[: 1 + length]
            messages.append((kind, body))
        return messages


def _one_line(text: bytes) -> str:
    return " ".join(text.decode("utf-8", "replace").split())


class _CountingSocket:
    """Stands in for a pg8000 connection's socket: pg8000 reads and writes through the buffered file this
    makes, so every send and receive of the connection passes here."""

    def __init__(self, sock: socket.socket, windows: _Windows) -> None:
        self._sock = sock
        self._windows = windows
        self._waiting = False  # sent something since the last receive
        self._parser = _FrontendParser()
        self._flight: list[str] = []  # what was sent since the last receive, for the trace
        self._prepared: dict[bytes, str] = {}  # prepared statement name -> its SQL

    def makefile(self, mode: str = "rwb", buffering: int | None = None, **_: Any) -> io.BufferedRWPair:
        raw = socket.SocketIO(self, "rwb")  # type: ignore[arg-type]
        self._sock._io_refs += 1  # type: ignore[attr-defined]  # as socket.makefile does
        return io.BufferedRWPair(raw, raw, buffering or io.DEFAULT_BUFFER_SIZE)

    def _sent(self, data: bytes | bytearray | memoryview) -> None:
        chunk = bytes(data)
        self._waiting = True
        for kind, body in self._parser.feed(chunk):
            self._flight.append(self._describe(kind, body))
            for tally in self._windows.each():
                tally.messages[kind] += 1
        for tally in self._windows.each():
            tally.bytes_sent += len(chunk)

    def _describe(self, kind: str, body: bytes) -> str:
        """A message for the trace: its type, with the SQL of a Query, a Parse, or the Bind of a prepared one."""
        sql = None
        if kind == "Q":
            sql = _one_line(body.split(b"\0", 1)[0])
        elif kind == "P":
            name, _, rest = body.partition(b"\0")
            sql = _one_line(rest.split(b"\0", 1)[0])
            if name:
                self._prepared[name] = sql
        elif kind == "B":
            statement = body.split(b"\0", 2)[1] if body.count(b"\0") >= 2 else b""
            sql = self._prepared.get(statement)
        return kind if sql is None else f"{kind}[{sql[:120]}]"

    def _received(self, n: int) -> None:
        tallies = self._windows.each()
        if self._waiting:
            self._waiting = False
            line = " ".join(self._flight)
            self._flight = []
            for tally in tallies:
                tally.round_trips += 1
                tally.wire_trace.append(line)
        for tally in tallies:
            tally.bytes_received += n

    def send(self, data: Any, *args: Any) -> int:
        n = self._sock.send(data, *args)
        self._sent(memoryview(data)[:n])
        return n

    def sendall(self, data: Any, *args: Any) -> None:
        self._sock.sendall(data, *args)
        self._sent(data)

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        n = self._sock.recv_into(buffer, nbytes, flags)
        self._received(n)
        return n

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = self._sock.recv(bufsize, flags)
        self._received(len(data))
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


# --- S3, on the client -----------------------------------------------------------------------------------------


def _botocore_client_of(obj: Any) -> Any:
    """The botocore client an adapter holds (whatever the attribute is called)."""
    if hasattr(getattr(obj, "meta", None), "events"):
        return obj
    for value in vars(obj).values():
        if hasattr(getattr(value, "meta", None), "events") and hasattr(value, "_make_api_call"):
            return value
    raise LookupError(f"{type(obj).__name__} holds no botocore client")


class CostProbe:
    """Counts S3 calls and bytes on the clients it watches and database round trips and statements on every
    pg8000 connection opened while it is installed. ``count()`` opens a window; windows can nest."""

    def __init__(self) -> None:
        self._windows = _Windows()
        self._clients: list[Any] = []
        self._engines: list[Any] = []
        self._original_make_socket: Any = None
        self._install_pg8000()

    # pg8000 opens its socket in core._make_socket (after the TLS negotiation), then reads and writes through
    # socket.makefile(); every connection made while the probe is installed gets a counting stand-in.
    def _install_pg8000(self) -> None:
        import pg8000.core

        original = getattr(pg8000.core, "_make_socket", None)
        if original is None:
            raise RuntimeError("pg8000.core._make_socket is gone: update tests/bench/counting.py to this pg8000")
        windows = self._windows

        def make_socket(*args: Any, **kwargs: Any) -> Any:
            sock = original(*args, **kwargs)
            for tally in windows.each():
                tally.connects += 1
            return _CountingSocket(sock, windows)

        self._original_make_socket = original
        pg8000.core._make_socket = make_socket

    def watch_client(self, client: Any) -> None:
        """Count the S3 calls made through ``client`` (a boto3 client, or an adapter holding one)."""
        client = _botocore_client_of(client)
        if any(client is known for known in self._clients):
            return
        windows = self._windows
        events = client.meta.events

        def before_call(model: Any = None, **_: Any) -> None:
            for tally in windows.each():
                with windows.lock:
                    tally.s3_operations[model.name] += 1

        def remember_key(params: Any = None, context: Any = None, **_: Any) -> None:
            if context is not None and params:
                context["bench_key"] = params.get("Key", "")

        def count_body(parsed: Any = None, context: Any = None, **_: Any) -> None:
            body = (parsed or {}).get("Body")
            if body is None or not hasattr(body, "read"):
                return
            key = (context or {}).get("bench_key", "")
            read = body.read

            def counted_read(*args: Any, **kwargs: Any) -> bytes:
                data: bytes = read(*args, **kwargs)
                for tally in windows.each():
                    with windows.lock:
                        tally.bytes_read_by_key[key] += len(data)
                return data

            body.read = counted_read  # iter_chunks and iter_lines read through it too

        events.register("before-call.s3", before_call, unique_id="bench-s3-calls")
        events.register("before-parameter-build.s3.GetObject", remember_key, unique_id="bench-s3-key")
        events.register("after-call.s3.GetObject", count_body, unique_id="bench-s3-bytes")
        self._clients.append(client)

    def watch_engine(self, engine: Any) -> None:
        """Also list the statements a SQLAlchemy engine executes."""
        from sqlalchemy import event

        if any(engine is known for known in self._engines):
            return
        windows = self._windows

        def before_cursor_execute(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            line = " ".join(statement.split())
            for tally in windows.each():
                tally.sql_statements.append(line)

        event.listen(engine, "before_cursor_execute", before_cursor_execute)
        self._engines.append((engine, before_cursor_execute))

    def watch_promoter(self, promoter: Any) -> None:
        """The promoter's S3 client, and its store's SQLAlchemy engine when it has one. Connections its engine
        already holds were opened before the probe: they are closed, so the next ones are counted."""
        self.watch_client(promoter.storage)
        engine = getattr(promoter.store, "engine", None)
        if engine is not None and hasattr(engine, "dispose"):
            engine.dispose()
            with suppress(Exception):  # not a SQLAlchemy engine: the wire counts still hold
                self.watch_engine(engine)

    @contextmanager
    def count(self) -> Iterator[Tally]:
        tally = Tally()
        with self._windows.lock:
            self._windows.open.append(tally)
        try:
            yield tally
        finally:
            with self._windows.lock:
                self._windows.open.remove(tally)

    def close(self) -> None:
        """Put pg8000 back and take the hooks off (connections opened meanwhile keep counting, into nothing)."""
        import pg8000.core

        if self._original_make_socket is not None:
            pg8000.core._make_socket = self._original_make_socket
            self._original_make_socket = None
        for client in self._clients:
            for event_name, unique_id in (
                ("before-call.s3", "bench-s3-calls"),
                ("before-parameter-build.s3.GetObject", "bench-s3-key"),
                ("after-call.s3.GetObject", "bench-s3-bytes"),
            ):
                client.meta.events.unregister(event_name, unique_id=unique_id)
        self._clients.clear()
        from sqlalchemy import event

        for engine, listener in self._engines:
            event.remove(engine, "before_cursor_execute", listener)
        self._engines.clear()

    def __enter__(self) -> CostProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- events ------------------------------------------------------------------------------------------------------


def s3_notification_body(bucket: str, key: str, size: int = 0, etag: str = "") -> str:
    """The body S3 puts on the queue for an object created at ``key`` (the key URL-encoded, as S3 does)."""
    import json
    from urllib.parse import quote_plus

    record = {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "us-east-1",
        "eventTime": "2025-11-05T14:30:02.418Z",
        "eventName": "ObjectCreated:Put",
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "promote-checkpoints-manifests",
            "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
            "object": {"key": quote_plus(key, safe="/"), "size": size, "eTag": etag},
        },
    }
    return json.dumps({"Records": [record]})


def sqs_event(bodies: list[str], receive_count: int = 1) -> dict[str, Any]:
    """The event Lambda's SQS poller hands the function for a batch of message bodies."""
    import hashlib
    import uuid

    return {
        "Records": [
            {
                "messageId": str(uuid.uuid4()),
                "receiptHandle": f"bench-{uuid.uuid4().hex}",
                "body": body,
                "attributes": {"ApproximateReceiveCount": str(receive_count)},
                "messageAttributes": {},
                "md5OfBody": hashlib.md5(body.encode()).hexdigest(),
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:promote-checkpoints",
                "awsRegion": "us-east-1",
            }
            for body in bodies
        ]
    }
