"""aegen-loadtest against real servers on 127.0.0.1 (the aegen server of tests/plugins/server.py, and
bench/echo_server.py): it finishes by itself with zero errors, writes JSON, CSV and PNG that parse, reads
the server's split between queue wait and inference from /metrics, and refuses bad flags, unknown models
and unreachable targets with one line and exit code 2. No timing asserts."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from bench.common import free_port, serve_echo
from client.loadtest import (
    INFERENCE_METRIC,
    QUEUE_WAIT_METRIC,
    LoadTestConfig,
    parse_histograms,
    run_load_test,
)

ROOT = Path(__file__).resolve().parents[2]
# A guard against a hang, not a timing assert: every run here is bounded by its own flags.
HANG_GUARD_S = 120
MODEL = "digits-vae"  # served by the aegen_server fixture


def _loadtest(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "client.loadtest", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=HANG_GUARD_S, check=False)


@pytest.fixture(scope="module")
def echo_target() -> str:
    with serve_echo() as served:
        yield served.target


def test_closed_loop_sweep_reports_zero_errors_and_writes_json_csv_png(echo_target: str, tmp_path: Path) -> None:
    out = tmp_path / "results"
    result = _loadtest("--target", echo_target, "--model", "echo", "--concurrency", "1,4", "-n", "8",
                       "--duration", "1", "--warmup", "0.3", "--out", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "loadtest.json").read_text())
    assert [level["concurrency"] for level in report["levels"]] == [1, 4]
    for level in report["levels"]:
        assert level["errors"] == {}
        assert level["ok"] > 0
        assert level["samples_per_s"] == pytest.approx(8 * level["requests_per_s"])
        assert level["latency_ms"]["p50"] <= level["latency_ms"]["p99"] <= level["latency_ms"]["max"]
    rows = list(csv.DictReader((out / "loadtest.csv").open()))
    assert [int(r["concurrency"]) for r in rows] == [1, 4]
    assert all(r["errors"] == "" for r in rows)
    import matplotlib.pyplot as plt
    image = plt.imread(out / "loadtest.png")
    assert image.ndim == 3 and image.shape[0] > 100
    assert "| 1 in flight |" in result.stdout  # the Markdown table


def test_sweep_against_the_aegen_server_has_zero_errors_and_the_server_split(aegen_server, tmp_path: Path) -> None:
    target, metrics_url, _ = aegen_server
    out = tmp_path / "results"
    result = _loadtest("--target", target, "--model", MODEL, "--concurrency", "1,8", "-n", "4", "--seed", "1",
                       "--duration", "1.5", "--warmup", "0.5", "--metrics-url", metrics_url, "--out", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "loadtest.json").read_text())
    for level in report["levels"]:
        assert level["errors"] == {} and level["ok"] > 0
        server = level["server"]
        # Every measured call waited in the queue once and was decoded in some batch.
        assert server["queue_wait_count"] > 0 and server["inference_count"] > 0
        assert server["queue_wait_mean_ms"] >= 0 and server["inference_mean_ms"] > 0
        assert server["batch_mean_samples"] >= 4
    rows = list(csv.DictReader((out / "loadtest.csv").open()))
    assert all(float(r["server_inference_mean_ms"]) > 0 for r in rows)


def test_unknown_model_exits_2_with_the_servers_message(aegen_server) -> None:
    target, _, _ = aegen_server
    result = _loadtest("--target", target, "--model", "no-such-model", "--duration", "1")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "NOT_FOUND" in lines[0] and "no-such-model" in lines[0], result.stderr


def test_open_loop_stops_by_itself_after_a_request_count(echo_target: str) -> None:
    config = LoadTestConfig(target=echo_target, model="echo", rate=(200.0,), requests=50, warmup=0.2,
                            max_level_time=30.0, dtype="float32", seed=7, png=False)
    report = run_load_test(config)
    (level,) = report.levels
    assert level.mode == "open" and level.errors == {}
    assert level.requests == 50 and level.ok == 50


def test_histogram_split_sums_every_label_set_of_a_real_exposition() -> None:
    registry = CollectorRegistry()
    queue = Histogram(QUEUE_WAIT_METRIC, "queue wait", ["model"], registry=registry)
    inference = Histogram(INFERENCE_METRIC, "inference", ["model", "dtype"], registry=registry)
    for model, seconds in (("a", 0.25), ("b", 0.5), ("b", 0.25)):
        queue.labels(model).observe(seconds)
    inference.labels("a", "uint8").observe(2.0)
    totals = parse_histograms(generate_latest(registry).decode(), (QUEUE_WAIT_METRIC, INFERENCE_METRIC))
    assert totals[QUEUE_WAIT_METRIC].total == pytest.approx(1.0)
    assert totals[QUEUE_WAIT_METRIC].count == 3
    assert totals[INFERENCE_METRIC].total == pytest.approx(2.0)
    assert totals[INFERENCE_METRIC].count == 1


@pytest.mark.parametrize("flags", [
    ["--concurrency", "1,x"],
    ["--dtype", "int8"],
    ["-n", "0"],
    ["--rate", "-5"],
    ["--processes", "0"],
    ["--duration", "10", "--max-level-time", "5"],
    ["--no-such-flag"],
])
def test_bad_flags_exit_2_with_one_line(flags: list[str]) -> None:
    result = _loadtest(*flags)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aegen-loadtest: error:"), result.stderr


def test_unreachable_target_exits_2_with_a_clear_message() -> None:
    result = _loadtest("--target", f"127.0.0.1:{free_port()}", "--connect-timeout", "1")
    assert result.returncode == 2
    assert "cannot reach 127.0.0.1:" in result.stderr
    assert "Traceback" not in result.stderr


def test_without_model_the_load_goes_to_the_servers_first_vae(aegen_server, tmp_path: Path) -> None:
    out = tmp_path / "results"
    result = _loadtest("--target", aegen_server.target, "--concurrency", "2", "--sampler", "standard-normal",
                       "--duration", "0.5", "--warmup", "0.2", "--out", str(out), "--no-png")
    assert result.returncode == 0, result.stderr
    config = json.loads((out / "loadtest.json").read_text())["config"]
    assert config["model"] == MODEL and config["sampler"] == "standard_normal"
