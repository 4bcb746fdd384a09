"""The fault proxy itself, in front of a one-line echo server: it forwards, pauses, resumes, drops and slows."""

from __future__ import annotations

import socket
import socketserver
import threading
import time

import pytest
from tcp_proxy import FaultProxy


class _Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture
def proxy():
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with FaultProxy("127.0.0.1", server.server_address[1]) as fault_proxy:
        yield fault_proxy
    server.shutdown()
    server.server_close()


def _connect(proxy: FaultProxy, timeout: float = 2.0) -> socket.socket:
    return socket.create_connection((proxy.host, proxy.port), timeout=timeout)


def _echo(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def test_forwards_pauses_and_resumes(proxy):
    with _connect(proxy) as sock:
        assert _echo(sock, b"hello") == b"hello"
        proxy.pause()
        sock.settimeout(0.5)
        sock.sendall(b"held")
        with pytest.raises(TimeoutError):
            sock.recv(10)
        proxy.resume()
        sock.settimeout(2)
        assert sock.recv(10) == b"held"
    assert proxy.stats.stalled >= 1


def test_pause_for_ends_by_itself(proxy):
    with _connect(proxy) as sock:
        proxy.pause_for(0.6)
        start = time.monotonic()
        assert _echo(sock, b"later") == b"later"
        assert 0.4 < time.monotonic() - start < 3


def test_pause_on_next_request_holds_that_request(proxy):
    with _connect(proxy) as sock:
        proxy.pause_on_next_request(0.6)
        time.sleep(0.3)  # nothing is held until a request comes
        start = time.monotonic()
        assert _echo(sock, b"req") == b"req"
        assert 0.4 < time.monotonic() - start < 3
        start = time.monotonic()
        assert _echo(sock, b"next") == b"next"  # once only
        assert time.monotonic() - start < 0.4


def test_drop_resets_open_and_next_connections(proxy):
    with _connect(proxy) as sock:
        assert _echo(sock, b"x") == b"x"
        assert proxy.drop() == 1
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            _echo(sock, b"y")
            _echo(sock, b"y")  # a reset can surface on the next call
    proxy.drop_next(1)
    with _connect(proxy) as sock, pytest.raises((ConnectionResetError, BrokenPipeError)):
        sock.sendall(b"z")
        if not sock.recv(10):  # some kernels report the reset as an orderly end
            raise ConnectionResetError
    with _connect(proxy) as sock:  # only the next one
        assert _echo(sock, b"ok") == b"ok"
    assert proxy.stats.dropped == 2


def test_slow_limits_the_rate(proxy):
    proxy.slow(delay_s=0.05, chunk=1024)
    with _connect(proxy, timeout=10) as sock:
        start = time.monotonic()
        assert _echo(sock, b"a" * 10_240) == b"a" * 10_240
        assert time.monotonic() - start >= 0.4  # 10 chunks × 50 ms, at least one way
    proxy.normal()
    with _connect(proxy) as sock:
        start = time.monotonic()
        assert _echo(sock, b"b" * 10_240) == b"b" * 10_240
        assert time.monotonic() - start < 0.4
