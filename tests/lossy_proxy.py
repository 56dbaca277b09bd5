"""A TCP proxy in front of Redis that can lose an answer: the command reaches Redis and is carried out, and the
connection dies before its answer comes back, as it does when a network drops or Redis' host fails over at the
worst moment. redis-py then sends the command again on a new connection (service/connections.py): a test sees what
that repeat does. It can also cut every connection for a while, as a Redis restart or a partition does."""

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

CARRIED_OUT_WITHIN = 0.2
"""Seconds the proxy waits, once an answer starts, before it cuts the connection: every command sent with it (a
pipeline's last one included) has been carried out by then."""


class LossyProxy:
    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lose_next = threading.Event()
        self._cut_until = 0.0
        self._open: set[socket.socket] = set()
        self.lost = 0
        """Answers lost so far."""
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def lose_next_answer(self) -> None:
        """The next answer Redis sends, on any connection, never reaches the client: its connection is cut."""
        self._lose_next.set()

    def cut_for(self, seconds: float) -> None:
        """Cut every connection now, and refuse new ones for `seconds`: Redis is away (restarting, partitioned)."""
        self._cut_until = time.monotonic() + seconds
        for sock in list(self._open):
            _shut(sock)

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if time.monotonic() < self._cut_until:
                client.close()
                continue
            server = socket.create_connection(("127.0.0.1", self._target_port))
            self._open |= {client, server}
            threading.Thread(target=self._pipe, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, True), daemon=True).start()

    def _pipe(self, source: socket.socket, destination: socket.socket, answers: bool) -> None:
        try:
            with source, destination:
                while (data := _receive(source)) and time.monotonic() >= self._cut_until:
                    if answers and self._lose_next.is_set():
                        self._lose_next.clear()
                        time.sleep(CARRIED_OUT_WITHIN)
                        self.lost += 1
                        return
                    destination.sendall(data)
        except OSError:
            return
        finally:
            self._open.difference_update({source, destination})


def _shut(sock: socket.socket) -> None:
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _receive(sock: socket.socket) -> bytes:
    try:
        return sock.recv(1 << 16)
    except OSError:
        return b""


@contextmanager
def lossy_proxy(target_port: int = 6379) -> Iterator[LossyProxy]:
    proxy = LossyProxy(target_port)
    try:
        yield proxy
    finally:
        proxy.close()
