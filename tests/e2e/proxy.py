"""A TCP proxy on loopback that a test can cut and restore: a real network fault between a
process of the service and the server it calls (localstripe, say).

While cut, it still accepts connections but resets each at once (and counts it), so the
caller sees a connection error at once rather than waiting for a timeout; connections open at
the cut are reset too. Restored, it relays bytes both ways again.
"""

from __future__ import annotations

import socket
import struct
import threading
from types import TracebackType

from tests.e2e.processes import free_port


class TcpProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.refused = 0  # connections reset while cut
        self.relayed = 0  # connections relayed
        self._up = True
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.2)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True, name=f"proxy-{self.port}")

    def __enter__(self) -> TcpProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._stopping.set()
        self._thread.join(5)
        self._listener.close()
        self._reset_open()

    def cut(self) -> None:
        with self._lock:
            self._up = False
        self._reset_open()

    def restore(self) -> None:
        with self._lock:
            self._up = True

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                up = self._up
                if not up:
                    self.refused += 1
            if not up:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                self.relayed += 1
                self._open.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with self._lock:
                    self._open.discard(end)
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                end.close()

    def _reset_open(self) -> None:
        with self._lock:
            ends, self._open = list(self._open), set()
        for end in ends:
            _reset(end)


def _reset(sock: socket.socket) -> None:
    """End the connection at once with a TCP reset (SO_LINGER 0). The shutdown comes first: on
    Linux, closing a socket that a pump thread is blocked reading does not end the connection."""
    for end in (lambda: sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)),
                lambda: sock.shutdown(socket.SHUT_RDWR)):
        try:
            end()
        except OSError:
            pass
    sock.close()
