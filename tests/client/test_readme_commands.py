"""Every `aegen-sample` and `aegen-loadtest` command line the README prints, and its Python client snippet,
run exactly as printed (through the venv's console scripts) against a real server on localhost:50051,
the address the README names. The server serves the exported test models (tests/plugins/repository.py)."""

from __future__ import annotations

import errno
import json
import re
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.plugins.server import ROOT, RunningServer, copy_repository, launch_aegen_server, wait_until_serving

README = ROOT / "README.md"
PORT = 50051  # the README's `--target localhost:50051`
SCRIPTS = Path(sys.executable).parent  # the venv's bin/, where aegen-sample and aegen-loadtest are installed
TOOLS = ("aegen-sample", "aegen-loadtest")
HANG_GUARD_S = 180  # a guard against a hang, not a timing assert


def readme_commands(text: str) -> list[str]:
    """The command lines of TOOLS the README shows, inline (`...`) or in a code block, in order."""
    tools = "|".join(TOOLS)
    inline = re.findall(rf"`((?:{tools}) [^`]*)`", text)
    blocks = re.findall(rf"^((?:{tools}) .*)$", text, re.MULTILINE)
    return list(dict.fromkeys(inline + blocks))


def readme_python_snippets(text: str) -> list[str]:
    return [block for block in re.findall(r"^```python\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
            if "AegenClient" in block]


COMMANDS = readme_commands(README.read_text())
SNIPPETS = readme_python_snippets(README.read_text())


def _port_in_use(port: int) -> bool:
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:  # any other error (no IPv6) says nothing about the port
                return True
    return False


@pytest.fixture(scope="module")
def readme_server(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    if _port_in_use(PORT):
        pytest.fail(f"port {PORT} is taken, and the README's commands name localhost:{PORT}: stop what listens "
                    "there and run this test again")
    tmp = tmp_path_factory.mktemp("readme-server")
    # The flags after the fixture's own win: this server listens on the README's port.
    server = launch_aegen_server(copy_repository(model_repository, tmp / "repository"), tmp, "--port", str(PORT))
    server.target = f"127.0.0.1:{PORT}"
    wait_until_serving(server)
    yield server
    server.stop()


def _run_as_printed(command: str, cwd: Path) -> subprocess.CompletedProcess:
    tool, *args = shlex.split(command)
    return subprocess.run([str(SCRIPTS / tool), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=HANG_GUARD_S, check=False)


def test_the_readme_prints_a_sample_and_a_loadtest_command_and_a_client_snippet() -> None:
    assert {shlex.split(c)[0] for c in COMMANDS} == set(TOOLS), COMMANDS
    assert len(SNIPPETS) == 1


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_runs_as_printed_against_a_real_server(command: str, readme_server: RunningServer,
                                                              tmp_path: Path) -> None:
    result = _run_as_printed(command, tmp_path)
    assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    args = shlex.split(command)
    if args[0] == "aegen-sample":
        grid = tmp_path / args[args.index("-o") + 1]
        assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "model digits-vae" in result.stdout  # no --model: the server's first VAE
    else:
        out = tmp_path / args[args.index("--out") + 1]
        report = json.loads((out / "loadtest.json").read_text())
        assert report["config"]["model"] == "digits-vae"  # no --model: the server's first VAE
        assert all(level["errors"] == {} and level["ok"] > 0 for level in report["levels"])
        assert (out / "loadtest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("snippet", SNIPPETS)
def test_readme_python_snippet_runs_as_printed(snippet: str, readme_server: RunningServer, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True,
                            timeout=HANG_GUARD_S, check=False)
    assert result.returncode == 0, result.stderr
