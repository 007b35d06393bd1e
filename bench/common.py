"""What every benchmark shares: the machine's description, servers started and always stopped, a small
trained-and-exported model when none is given, and the Markdown table written under docs/benchmarks/.

Benchmarks are not tests: they print tables and assert nothing. All traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from client.loadtest import LoadTestConfig, LoadTestReport, run_load_test
from client.local import NotServing, free_port, wait_until_serving
from protos.atomic import atomic_write_text
from protos.cli import OneLineParser

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "docs" / "benchmarks"
MODEL_CACHE = ROOT / "runs" / "bench"  # /runs/ is git-ignored
PYTHON = sys.executable
DEFAULT_MODEL = "bench-vae"


class BenchError(Exception):
    """A benchmark cannot run (a server did not start, a model could not be trained or exported)."""


def report_or_fail(name: str, job: Callable[[], object]) -> int:
    """A benchmark command's exit: print what `job` returns (its table or the path it wrote), 0; or a
    BenchError's one line on stderr, 2."""
    try:
        print(job())
    except BenchError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 2
    return 0


# ------------------------------------------------------------------------------------------ the machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10, check=False).stdout.strip()
        return commit + (" (uncommitted changes in the tree)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@contextlib.contextmanager
def checkout(commit: str, prefix: str = "aegen-commit-") -> Iterator[Path]:
    """The tree of `commit` (git archive) in a temporary folder, removed on leaving the block: an older
    version of the code to measure beside the work tree's."""
    tree = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        try:
            archive = subprocess.run(["git", "archive", commit], cwd=ROOT, capture_output=True, check=True).stdout
        except subprocess.CalledProcessError as exc:
            raise BenchError(f"git archive {commit} failed: {exc.stderr.decode(errors='replace').strip()}") from None
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
        yield tree
    finally:
        shutil.rmtree(tree, ignore_errors=True)


def machine_details() -> dict[str, str]:
    import numpy
    import onnxruntime

    load = os.getloadavg()
    return {
        "CPU": _cpu_model(),
        "cores": str(os.cpu_count()),
        "Python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "grpcio": grpc.__version__,
        "numpy": numpy.__version__,
        "git commit": _git_commit(),
        "load average at start (1/5/15 min)": f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def machine_markdown(details: dict[str, str]) -> str:
    return "\n".join(f"- {k}: {v}" for k, v in details.items()) + "\n"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_result(name: str, title: str, body: str, details: dict[str, str], out_dir: Path = RESULTS_DIR) -> Path:
    """docs/benchmarks/<name>.md: the title, the machine, then the body; printed as well."""
    text = f"# {title}\n\nMeasured with `python -m bench.{name}` on:\n\n{machine_markdown(details)}\n{body}"
    print(text)
    path = out_dir / f"{name}.md"
    atomic_write_text(path, text)
    return path


def fmt(value: float | None, digits: int = 0) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:,.{digits}f}"


# ------------------------------------------------------------------------------------------- processes


@dataclass
class Served:
    """A server process this benchmark started: where to send calls, where its metrics are, its pid."""

    process: subprocess.Popen
    target: str
    metrics_url: str | None
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid


def _stop(process: subprocess.Popen, grace: float = 10.0) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def _log_tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _wait_serving(served: Served, timeout: float) -> None:
    """Wait until the gRPC health service says SERVING (models loaded and warmed up)."""
    try:
        wait_until_serving(served.target, served.process, timeout, poll=0.2)
    except NotServing as exc:
        raise BenchError(f"{exc}:\n{_log_tail(served.log)}") from None


def _wait_listening(served: Served, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(served.target) as channel:
        while time.monotonic() < deadline:
            if served.process.poll() is not None:
                raise BenchError(f"server exited with code {served.process.returncode}:\n{_log_tail(served.log)}")
            try:
                grpc.channel_ready_future(channel).result(timeout=0.5)
                return
            except grpc.FutureTimeoutError:
                pass
    raise BenchError(f"server not listening after {timeout:g} s:\n{_log_tail(served.log)}")


@contextlib.contextmanager
def _process(argv: list[str], target: str, metrics_url: str | None, env: dict[str, str] | None,
             health: bool, timeout: float) -> Iterator[Served]:
    log_dir = Path(tempfile.mkdtemp(prefix="aegen-bench-"))
    log = log_dir / "server.log"
    with open(log, "wb") as log_file:
        process = subprocess.Popen(argv, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT,
                                   env={**os.environ, **(env or {})})
    served = Served(process, target, metrics_url, log)
    try:
        (_wait_serving if health else _wait_listening)(served, timeout)
        yield served
    finally:
        _stop(process)
        shutil.rmtree(log_dir, ignore_errors=True)


def serve_model(repository: Path, extra: Sequence[str] = (), threads: int | None = None,
                timeout: float = 120.0) -> contextlib.AbstractContextManager[Served]:
    """Start `python -m server` on 127.0.0.1 with free ports, CPU only; stopped on leaving the block."""
    port, metrics_port = free_port(), free_port()
    argv = [PYTHON, "-m", "server", "--repository", str(repository), "--host", "127.0.0.1",
            "--port", str(port), "--metrics-port", str(metrics_port), "--http-port", "0", "--device", "cpu",
            "--log-level", "WARNING", "--repository-poll-seconds", "0", *extra]
    env = {"OMP_NUM_THREADS": str(threads)} if threads else None
    return _process(argv, f"127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics", env,
                    health=True, timeout=timeout)


def serve_echo(timeout: float = 30.0) -> contextlib.AbstractContextManager[Served]:
    port = free_port()
    argv = [PYTHON, "-m", "bench.echo_server", "--port", str(port)]
    return _process(argv, f"127.0.0.1:{port}", None, None, health=False, timeout=timeout)


def serve_baseline(checkpoint: Path, timeout: float = 60.0, threads: int = 1) -> contextlib.AbstractContextManager[Served]:
    port = free_port()
    argv = [PYTHON, "-m", "bench.baseline_torch_server", str(checkpoint), "--port", str(port),
            "--threads", str(threads)]
    return _process(argv, f"127.0.0.1:{port}", None, None, health=False, timeout=timeout)


# -------------------------------------------------------------------------------------- model to serve


@dataclass(frozen=True)
class BenchModel:
    repository: Path
    name: str
    checkpoint: Path | None  # the checkpoint it was exported from, when known (the PyTorch baseline needs it)


def run_tool(argv: list[str], what: str) -> None:
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=1800, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).splitlines()[-10:])
        raise BenchError(f"{what} failed (exit {result.returncode}):\n{tail}")


def bench_model(repository: str | None, name: str | None, checkpoint: str | None, epochs: int = 2) -> BenchModel:
    """The model a benchmark serves: the one given, or a VAE (MLP, latent 16, hidden 512, the project's
    default architecture) trained on the embedded digits and exported once into runs/bench/."""
    if repository:
        return BenchModel(Path(repository), name or DEFAULT_MODEL, Path(checkpoint) if checkpoint else None)
    ckpt = Path(checkpoint) if checkpoint else MODEL_CACHE / "checkpoint"
    repo = MODEL_CACHE / "repository"
    name = name or DEFAULT_MODEL
    if not (ckpt / "config.json").is_file():
        print(f"training a benchmark model into {ckpt} ...", file=sys.stderr, flush=True)
        run_tool([PYTHON, "-m", "training.train", "--kind", "vae", "--arch", "mlp", "--latent-dim", "16",
              "--epochs", str(epochs), "--out", str(ckpt), "--no-progress"], "aegen-train")
    if not (repo / name).is_dir():
        print(f"exporting it into {repo} ...", file=sys.stderr, flush=True)
        run_tool([PYTHON, "-m", "export.cli", str(ckpt), "--repository", str(repo), "--name", name], "aegen-export")
    return BenchModel(repo, name, ckpt)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repository", help="serve this model repository (default: train and export a small VAE)")
    parser.add_argument("--model", help=f"model name in the repository (default {DEFAULT_MODEL})")
    parser.add_argument("--checkpoint", help="the checkpoint the model was exported from (for the PyTorch baseline)")


# ----------------------------------------------------------------------------------------- load tests


def load(target: str, *, num_samples: int = 1, dtype: str = "uint8", concurrency: Sequence[int] = (1,),
         duration: float = 5.0, warmup: float = 1.0, model: str = DEFAULT_MODEL, metrics_url: str | None = None,
         processes: int = 1, channels: int = 1) -> LoadTestReport:
    """One aegen-loadtest run, closed loop; progress lines go to stderr."""
    config = LoadTestConfig(target=target, model=model, num_samples=num_samples, dtype=dtype,
                            concurrency=tuple(concurrency), duration=duration, warmup=warmup,
                            metrics_url=metrics_url, processes=processes, channels=channels,
                            max_level_time=warmup + duration + 120.0, png=False)
    tag = f"{target} N={num_samples} {dtype}"
    return run_load_test(config, progress=lambda line: print(f"  {tag}: {line}", file=sys.stderr, flush=True))


def load_parser(doc: str, *, duration: float, warmup: float, duration_help: str = "seconds measured per level",
                rounds_help: str | None = None) -> argparse.ArgumentParser:
    """The flags every load benchmark shares: the model to serve, how long to measure, where tables go."""
    p = OneLineParser(description=doc.split("\n\n")[0])
    add_model_arguments(p)
    p.add_argument("--duration", type=float, default=duration, help=duration_help)
    p.add_argument("--warmup", type=float, default=warmup)
    if rounds_help is not None:
        p.add_argument("--rounds", type=int, default=2, help=rounds_help)
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    return p
