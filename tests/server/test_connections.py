"""Half-sent requests against a real `qexport serve`: 300 connections that never finish their
request head are closed after --read-timeout-s while the server keeps answering; connections
past --max-connections are closed at once; a body that stops half-way is a 408; the log stays
quiet."""

from __future__ import annotations

import socket
import time

from tests.server.conftest import httpx, qexport_serve, wait_until

HEAD = b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"


def closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1 << 16) == b""
    except BlockingIOError:
        return False
    except ConnectionError:
        return True


def test_idle_half_sent_connections_are_closed_and_server_stays_responsive(tiny_artifact, tmp_path):
    args = ("--read-timeout-s", "1", "--max-connections", "250")
    with qexport_serve(tiny_artifact, tmp_path, *args) as srv:
        socks = []
        try:
            for _ in range(300):
                s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
                s.sendall(HEAD)  # the head never ends
                s.setblocking(False)
                socks.append(s)
            opened = time.monotonic()
            # over the cap: closed as soon as accepted
            wait_until(lambda: sum(closed_by_server(s) for s in socks[250:]) == 50, 10, "cap")
            # the rest: closed after the 1 s head timeout; meanwhile /health answers promptly
            # (the cap counts them, so health waits until they go)
            wait_until(lambda: all(closed_by_server(s) for s in socks[:250]), 20, "timeouts")
            elapsed = time.monotonic() - opened
            t0 = time.monotonic()
            assert httpx.get(f"{srv.base}/health", timeout=10).status_code == 200
            health_s = time.monotonic() - t0
        finally:
            for s in socks:
                s.close()

        # a body that stops half-way: 408 after the read timeout
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
            s.sendall(HEAD + b"Content-Length: 100\r\n\r\n" + b'{"input": "hal')
            reply = b""
            while chunk := s.recv(1 << 16):  # the server closes after its answer
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 408"), reply
        assert b"request body not received within 1 s" in reply
        r = httpx.post(f"{srv.base}/v1/embeddings", json={"input": "fine"}, timeout=30)
        assert r.status_code == 200
    print(f"300 half-sent connections closed within {elapsed:.1f} s; health then {health_s * 1000:.0f} ms; "
          f"log {srv.log.stat().st_size} bytes")  # fmt: skip
    assert elapsed < 5
    assert srv.log.stat().st_size < 4096, srv.log_text()[:2000]


def test_responsive_while_half_sent_connections_are_held(tiny_artifact, tmp_path):
    with qexport_serve(tiny_artifact, tmp_path, "--read-timeout-s", "5") as srv:
        socks = []
        try:
            for _ in range(300):
                s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
                s.sendall(HEAD)
                socks.append(s)
            latencies = []
            for _ in range(10):
                t0 = time.monotonic()
                r = httpx.post(f"{srv.base}/v1/embeddings", json={"input": "hello"}, timeout=10)
                latencies.append(time.monotonic() - t0)
                assert r.status_code == 200
        finally:
            for s in socks:
                s.close()
    print(f"with 300 half-sent connections held: max latency {1000 * max(latencies):.0f} ms")
    assert max(latencies) < 2.0, latencies
