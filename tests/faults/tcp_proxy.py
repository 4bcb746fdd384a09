"""A TCP proxy on 127.0.0.1 that pauses, drops or slows connections on command (for S3 fault tests).

    with FaultProxy("127.0.0.1", moto_port) as proxy:
        env["AWS_ENDPOINT_URL"] = proxy.url      # clients talk to the proxy, the proxy to moto
        proxy.pause()                            # stall: bytes stop flowing both ways, new connections wait
        proxy.resume()
        proxy.pause_for(3.0)                     # a short stall that ends by itself
        proxy.pause_on_next_request(3.0)         # the same, from the moment the next request arrives (None: for good)
        proxy.drop()                             # reset every open connection now (RST, like a dead peer)
        proxy.drop_next(3)                       # reset the next 3 connections as their first bytes arrive
        proxy.slow(delay_s=0.05, chunk=4096)     # forward at most `chunk` bytes per `delay_s`, both ways
        proxy.normal()                           # no faults

It runs an asyncio loop in a daemon thread; the control methods are thread-safe. `stats` counts
connections, bytes and the faults it injected, so a test can check that a fault really happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass


@dataclass
class ProxyStats:
    connections: int = 0
    bytes_up: int = 0  # client → server
    bytes_down: int = 0  # server → client
    dropped: int = 0  # connections reset by drop() / drop_next()
    stalled: int = 0  # chunks and new connections held back while paused


class FaultProxy:
    def __init__(self, target_host: str, target_port: int, host: str = "127.0.0.1", port: int = 0):
        self.target = (target_host, int(target_port))
        self.host = host
        self.port = port
        self.stats = ProxyStats()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._running: asyncio.Event | None = None  # set: bytes flow; clear: paused
        self._conns: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter | None]] = set()
        self._drop_next = 0
        self._pause_armed: list[float | None] = []  # pause_on_next_request: its length (None: for good)
        self._delay = 0.0
        self._chunk = 65536
        self._started = threading.Event()

    # ------------------------------------------------------------------ life cycle

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("fault proxy did not start")
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        self._call(self._running.set)
        fut = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        with contextlib.suppress(Exception):
            fut.result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self._running = asyncio.Event()
        self._running.set()
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, self.host, self.port))
        self.port = self._server.sockets[0].getsockname()[1]
        self._started.set()
        self._loop.run_forever()
        self._loop.close()

    async def _shutdown(self) -> None:
        self._server.close()
        for client, upstream in list(self._conns):
            for writer in (client, upstream):
                if writer is not None:
                    writer.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _call(self, fn, *args) -> None:
        """Run `fn(*args)` on the proxy's loop and wait for it."""
        done = threading.Event()

        def run():
            try:
                fn(*args)
            finally:
                done.set()

        self._loop.call_soon_threadsafe(run)
        done.wait(10)

    # ------------------------------------------------------------------ faults (thread-safe)

    def pause(self) -> None:
        """Stop forwarding: data already sent waits in the proxy, new connections are accepted but not served."""
        self._call(self._running.clear)

    def resume(self) -> None:
        self._call(self._running.set)

    def pause_for(self, seconds: float) -> None:
        """Pause now and resume by itself after `seconds` (returns at once)."""
        self.pause()
        self._loop.call_soon_threadsafe(self._loop.call_later, seconds, self._running.set)

    def pause_on_next_request(self, seconds: float | None = None) -> None:
        """Pause as soon as the next request bytes arrive (so the stall surely hits a live request), for
        `seconds`, or until resume() when None."""

        def arm():
            self._pause_armed[:] = [seconds]

        self._call(arm)

    def drop(self) -> int:
        """Reset every open connection (both sides); returns how many."""
        result = []
        self._call(lambda: result.append(self._reset_all()))
        return result[0]

    def drop_next(self, n: int) -> None:
        """Reset the next `n` connections as soon as the client has sent something."""

        def set_():
            self._drop_next = n

        self._call(set_)

    def slow(self, delay_s: float = 0.05, chunk: int = 4096) -> None:
        """Forward at most `chunk` bytes, then wait `delay_s`, in each direction of each connection."""

        def set_():
            self._delay, self._chunk = delay_s, chunk

        self._call(set_)

    def normal(self) -> None:
        def set_():
            self._delay, self._chunk, self._drop_next = 0.0, 65536, 0
            self._pause_armed.clear()
            self._running.set()

        self._call(set_)

    # ------------------------------------------------------------------ forwarding

    def _reset_all(self) -> int:
        count = 0
        for client, upstream in list(self._conns):
            for writer in (client, upstream):
                if writer is not None:
                    _reset(writer)
            count += 1
        self.stats.dropped += count
        self._conns.clear()
        return count

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        entry: list = [client_writer, None]
        key = (client_writer, None)
        self._conns.add(key)
        try:
            if not self._running.is_set():
                self.stats.stalled += 1
                await self._running.wait()  # a paused proxy accepts but does not connect upstream
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            self._conns.discard(key)
            key = (client_writer, up_writer)
            entry[1] = up_writer
            self._conns.add(key)
            if self._drop_next > 0:
                self._drop_next -= 1
                first = await client_reader.read(1)  # the request has started: reset mid-request
                if first:
                    self._conns.discard(key)
                    self.stats.dropped += 1
                    _reset(client_writer)
                    _reset(up_writer)
                    return
                up_writer.write(first)
            await asyncio.gather(
                self._pump(client_reader, up_writer, "bytes_up", requests=True),
                self._pump(up_reader, client_writer, "bytes_down"),
            )
        except (ConnectionError, OSError, asyncio.CancelledError):  # cancelled: the proxy stops
            pass
        finally:
            self._conns.discard(key)
            for writer in entry:
                if writer is not None:
                    writer.close()

    async def _pump(self, reader, writer, counter: str, requests: bool = False) -> None:
        try:
            while True:
                data = await reader.read(self._chunk)
                if not data:
                    break
                if requests and self._pause_armed:
                    seconds = self._pause_armed.pop()
                    self._running.clear()
                    if seconds is not None:
                        asyncio.get_running_loop().call_later(seconds, self._running.set)
                if not self._running.is_set():
                    self.stats.stalled += 1
                    await self._running.wait()
                if writer.is_closing():
                    break
                writer.write(data)
                await writer.drain()
                setattr(self.stats, counter, getattr(self.stats, counter) + len(data))
                if self._delay:
                    await asyncio.sleep(self._delay)
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                if writer.can_write_eof():
                    writer.write_eof()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST (SO_LINGER 0), as a crashed peer or a middlebox dropping the flow does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def wait_until(predicate, timeout: float, interval: float = 0.1) -> bool:
    """Poll `predicate` until it is true or `timeout` passes; returns its last value."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
