"""TCP forwarders: how a Lambda container reaches services on the host's loopback.

``sam local invoke`` puts the container on Docker's default bridge (SAM ignores ``--docker-network host`` when it
creates it), where the host's 127.0.0.1 is out of reach. The container resolves ``host.docker.internal`` to the
bridge's gateway (``--add-host``); a forwarder listening on that address hands each connection to the service on
loopback. Nothing listens beyond the bridge: the gateway address exists only on this machine.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType


class Forwarder:
    """Accepts on ``listen`` and pipes each connection to ``target``, both ways, until either side closes."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.listen = listen
        self.target = target
        try:
            self._server = socket.create_server(listen)
        except OSError as exc:
            raise OSError(
                f"cannot listen on {listen[0]}:{listen[1]} to forward to {target[0]}:{target[1]}: {exc} "
                "(is another make invoke or make test-invoke running?)"
            ) from exc
        self._server.settimeout(0.2)
        self._closed = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, name=f"forward-{listen[1]}", daemon=True)

    def __enter__(self) -> Forwarder:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=5)
        self._server.close()
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()  # the service is down: the container sees a closed connection, as it would
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets.update((client, upstream))
            pair = _Pair(self, client, upstream)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=pair.pump, args=(source, sink), daemon=True).start()

    def _release(self, *sockets: socket.socket) -> None:
        with self._lock:
            for sock in sockets:
                self._sockets.discard(sock)
                sock.close()


class _Pair:
    """One forwarded connection: two pumps; the second to finish closes both sockets."""

    def __init__(self, forwarder: Forwarder, client: socket.socket, upstream: socket.socket) -> None:
        self._forwarder = forwarder
        self._sockets = (client, upstream)
        self._running = 2
        self._lock = threading.Lock()

    def pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:  # reset or closed: end the other direction too, so its pump does not wait for ever
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        with self._lock:
            self._running -= 1
            last = self._running == 0
        if last:
            self._forwarder._release(*self._sockets)
