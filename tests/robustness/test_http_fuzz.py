"""Fuzzing the OIP HTTP/REST side (bench/fuzz/http_fuzz.py): a bounded, seeded run; `make fuzz` runs the long
one. And the limits it relies on: header blocks (431) and slow clients (408) cut off, not held."""

from __future__ import annotations

import socket
import time
import urllib.parse

from bench.fuzz import http_fuzz
from bench.fuzz.checks import compare, server_state
from tests.robustness.conftest import BODY_LIMIT, HEADER_LIMIT, RSS_BOUND

INPUTS = 3000


def _address(server) -> tuple[str, int]:
    url = urllib.parse.urlsplit(server.http_url)
    return url.hostname, url.port


def test_fuzzed_requests_never_get_a_5xx_and_leave_the_server_as_it_was(fuzz_server):
    pid = fuzz_server.process.pid
    before = server_state(fuzz_server.target, fuzz_server.http_url, pid)
    report = http_fuzz.run(fuzz_server.http_url, INPUTS, seed=14, header_limit=HEADER_LIMIT, body_limit=BODY_LIMIT)
    after = server_state(fuzz_server.target, fuzz_server.http_url, pid)
    print(f"\n{report.total} HTTP requests: {dict(report.statuses)}; bodies {dict(report.kinds)}")
    assert report.total == INPUTS
    assert report.violation_count == 0, "\n".join(report.violations)
    assert {"200", "400", "404", "431"} <= set(report.statuses)  # valid calls, refusals, the header limit
    assert compare(before, after, RSS_BOUND) == []


def _trickle(server, head: bytes, pieces: list[bytes], pause: float = 0.5) -> tuple[bytes, int]:
    """Send `head`, then one piece every `pause` seconds until the server answers; (answer, pieces sent)."""
    with socket.create_connection(_address(server), timeout=30) as sock:
        sock.sendall(head)
        sock.settimeout(pause)
        sent = 0
        for piece in pieces:
            try:
                answer = sock.recv(65536)
                break
            except TimeoutError:
                sock.sendall(piece)
                sent += 1
        else:
            sock.settimeout(30)
            answer = sock.recv(65536)
        rest = b""
        sock.settimeout(30)
        while chunk := sock.recv(65536):  # the server closes the connection after its answer
            rest += chunk
        return answer + rest, sent


def test_a_body_trickled_a_byte_at_a_time_is_cut_off_with_408(fuzz_server):
    head = (b"POST /v2/models/digits-vae/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n")
    answer, sent = _trickle(fuzz_server, head, [b" "] * 1000)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"--client-timeout-seconds" in answer
    assert sent < 1000  # cut off long before the body could have arrived


def test_headers_trickled_a_line_at_a_time_are_cut_off_with_408(fuzz_server):
    answer, sent = _trickle(fuzz_server, b"GET /v2 HTTP/1.1\r\n", [b"X-Slow: y\r\n"] * 1000)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert sent < 1000


def test_a_connection_that_sends_nothing_is_closed(fuzz_server):
    with socket.create_connection(_address(fuzz_server), timeout=30) as sock:
        started = time.monotonic()
        answer = sock.recv(65536)
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408 ") and time.monotonic() - started < 30


def test_a_header_block_over_the_limit_is_431_whole_or_in_pieces(fuzz_server):
    big = b"X-Big: " + b"b" * (HEADER_LIMIT + 10) + b"\r\n"
    status, answer = http_fuzz.send(*_address(fuzz_server), b"GET /v2 HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n")
    assert status == "431", answer[:300]
    assert b"--max-header-bytes" in answer
    pieces = [big[i:i + 1000] for i in range(0, len(big), 1000)]
    answer, _ = _trickle(fuzz_server, b"GET /v2 HTTP/1.1\r\nHost: x\r\n", pieces, pause=0.05)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
