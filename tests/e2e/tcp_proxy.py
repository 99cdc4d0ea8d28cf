"""A TCP proxy on its own thread, to drop a client's connections at a chosen point."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Iterator


class TcpProxy:
    """Forwards 127.0.0.1:<port> to 127.0.0.1:<upstream>; counts the bytes sent upstream.

    `cut_after(n)`: once n more bytes went upstream, every connection is reset (RST, as a
    dropped network link or a dead NAT entry looks to both ends) and later ones are served
    again. `silence()`: the connections open now stop forwarding either way without being
    closed (a NAT entry or a partition that drops packets: no FIN, no RST); later ones pass.
    `upstream` may change (a restarted server on another port).
    """

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.sent = 0  # bytes forwarded client -> server, over every connection
        self.connections: list[int] = []  # the same, per connection, in order
        self.cuts = 0
        self._cut_at: int | None = None
        self._silenced = 0  # connections numbered below this forward nothing more
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tcp-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> TcpProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the proxy did not start")
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._close_all)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def cut_after(self, more_bytes: int) -> None:
        self._cut_at = self.sent + more_bytes

    def cut_now(self) -> None:
        self._loop.call_soon_threadsafe(self._close_all)

    def silence(self) -> int:
        """Silence every connection made so far (at once: what either end sends from now on
        is read and dropped); how many that is."""
        self._silenced = len(self.connections)
        return self._silenced

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def listen() -> None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]
            self._ready.set()

        self._loop.run_until_complete(listen())
        self._loop.run_forever()
        with contextlib.suppress(Exception):
            self._loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            _reset(writer)
            return
        self._writers |= {writer, up_writer}
        index = len(self.connections)
        self.connections.append(0)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, up: bool) -> None:
            try:
                while data := await src.read(64 * 1024):
                    if index < self._silenced:
                        continue  # dropped, and the connection is left open
                    if up and self._cut_at is not None:
                        room = self._cut_at - self.sent
                        if room <= len(data):
                            dst.write(data[: max(room, 0)])
                            self.sent += max(room, 0)
                            self.connections[index] += max(room, 0)
                            self._cut_at = None
                            self.cuts += 1
                            self._close_all()
                            return
                    dst.write(data)
                    await dst.drain()
                    if up:
                        self.sent += len(data)
                        self.connections[index] += len(data)
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                _reset(dst)

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))
        self._writers -= {writer, up_writer}

    def _close_all(self) -> None:
        for writer in list(self._writers):
            _reset(writer)
        self._writers.clear()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0): the peer sees the connection drop, not a clean end."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@contextlib.contextmanager
def proxy_to(port: int) -> Iterator[TcpProxy]:
    proxy = TcpProxy(port).start()
    try:
        yield proxy
    finally:
        proxy.stop()
