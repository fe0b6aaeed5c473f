"""Accepting connections without spinning when the process runs out of file descriptors.

Tornado's own accept handler raises on ``EMFILE``; the listening socket stays
readable, so the loop calls it again at once, and the process burns a core
writing tracebacks while it serves nobody. :class:`Acceptor` instead stops
watching the listening sockets, logs once, and tries again after a pause
that doubles up to a second, while connections already open go on being
served (and, as they close, free descriptors).

Its streams also give Tornado's own answer to a malformed HTTP message (a
bare ``400 Bad Request`` with no body) the API's JSON error body, and read
nothing more once closed. Tornado closes a connection whose request was
answered before its body was read (a 401 in ``prepare``, say) but then goes
on parsing requests out of what it had already buffered: requests pipelined
behind the refused one would be run, and charged, with nowhere to send their
answers.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Awaitable

import structlog
from tornado.concurrent import Future
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream, StreamClosedError
from tornado.tcpserver import TCPServer

log = structlog.get_logger(__name__)

# Out of descriptors or kernel memory: waiting is the only cure.
_RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
ACCEPTS_PER_WAKE_UP = 128
_BARE_400 = b"HTTP/1.1 400 Bad Request\r\n\r\n"
_JSON_400_BODY = b'{"error": {"code": "bad_request", "message": "malformed HTTP request"}}'
_JSON_400 = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json; charset=utf-8\r\n"
    b"Content-Length: " + str(len(_JSON_400_BODY)).encode() + b"\r\nConnection: close\r\n\r\n" + _JSON_400_BODY
)


class _Stream(IOStream):
    """An IOStream that sends Tornado's bodiless 400 (written by its HTTP/1.1 parser,
    which has no hook for it) with a JSON body, and from which no request is read once
    it is closed."""

    def write(self, data: bytes | memoryview) -> Future[None]:
        return super().write(_JSON_400 if data == _BARE_400 else data)

    def read_until_regex(self, regex: bytes, max_bytes: int | None = None) -> Awaitable[bytes]:
        if self.closed():  # the bytes still buffered belong to nobody's request now
            raise StreamClosedError(real_error=self.error)
        return super().read_until_regex(regex, max_bytes)
FIRST_PAUSE = 0.05
LONGEST_PAUSE = 1.0


class Acceptor:
    """Accepts connections on ``sockets`` and hands each, as an IOStream, to ``server``."""

    def __init__(self, sockets: list[socket.socket], server: TCPServer) -> None:
        self.sockets = sockets
        self.server = server
        self.loop = IOLoop.current()
        self.pause = FIRST_PAUSE
        self.paused = False

    def start(self) -> None:
        for sock in self.sockets:
            sock.setblocking(False)
            self.loop.add_handler(sock, self._accept, IOLoop.READ)

    def stop(self) -> None:
        """Stop accepting and close the listening sockets."""
        if not self.paused:
            for sock in self.sockets:
                self.loop.remove_handler(sock)
        self.paused = True
        for sock in self.sockets:
            sock.close()

    def _accept(self, sock: socket.socket, _events: int) -> None:
        for _ in range(ACCEPTS_PER_WAKE_UP):
            try:
                connection, address = sock.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:
                continue
            except OSError as error:
                if error.errno not in _RESOURCE_ERRORS:
                    raise
                self._pause(error)
                return
            if self.pause != FIRST_PAUSE:
                log.info("accepting_again")
                self.pause = FIRST_PAUSE
            stream = _Stream(
                connection, max_buffer_size=self.server.max_buffer_size, read_chunk_size=self.server.read_chunk_size
            )
            self.server.handle_stream(stream, address)

    def _pause(self, error: OSError) -> None:
        if self.pause == FIRST_PAUSE:
            log.error("accept_paused", reason=error.strerror, errno=error.errno)
        for sock in self.sockets:
            self.loop.remove_handler(sock)
        self.paused = True
        self.loop.call_later(self.pause, self._resume)
        self.pause = min(self.pause * 2, LONGEST_PAUSE)

    def _resume(self) -> None:
        if self.paused and all(sock.fileno() != -1 for sock in self.sockets):
            self.paused = False
            self.start()
