"""A server for hostile inputs: small limits so that a fuzzer's valid inputs stay cheap (at most 64 samples
a request, 256 a stream, 1 MiB bodies, 8 KiB header blocks), and a 2 s HTTP client timeout."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.plugins.server import RunningServer, copy_repository, start_aegen_server

BODY_LIMIT, HEADER_LIMIT, CLIENT_TIMEOUT = 1 << 20, 8192, 2
FUZZ_FLAGS = ("--max-samples-per-request", "64", "--max-samples-per-stream", "256", "--max-batch-size", "64",
              "--max-body-bytes", str(BODY_LIMIT), "--max-header-bytes", str(HEADER_LIMIT),
              "--client-timeout-seconds", str(CLIENT_TIMEOUT))
RSS_BOUND = 200 << 20  # a fuzz run may grow the server's resident memory by at most this


@pytest.fixture(scope="package")
def fuzz_server(model_repository, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("fuzz-server")
    server = start_aegen_server(copy_repository(model_repository, tmp / "repository"), tmp, *FUZZ_FLAGS)
    yield server
    server.stop()
