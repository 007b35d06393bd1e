"""What a load test found: per-level figures (LevelResult, from the raw latencies and counters), the whole
run (LoadTestReport) as a Markdown table, JSON and CSV, and the PNG of samples/s against p99 latency."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from client.loadtest.config import LoadTestConfig
from protos.atomic import atomic_write_bytes, atomic_write_text

PERCENTILES = (50, 90, 95, 99)


@dataclass
class LevelRaw:
    """What one process measured: per-call latencies inside the window and the counters."""

    latencies: np.ndarray  # seconds, successful calls completed inside the window
    ok: int = 0
    payload_bytes: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    window_s: float = 0.0
    first_error: str = ""


def merge(raws: list[LevelRaw]) -> LevelRaw:
    """One level's measurements from several client processes as if one process had made them."""
    errors: dict[str, int] = {}
    for raw in raws:
        for code, n in raw.errors.items():
            errors[code] = errors.get(code, 0) + n
    return LevelRaw(np.concatenate([r.latencies for r in raws]) if raws else np.zeros(0),
                    sum(r.ok for r in raws), sum(r.payload_bytes for r in raws), errors,
                    max((r.window_s for r in raws), default=0.0),
                    next((r.first_error for r in raws if r.first_error), ""))


@dataclass
class LevelResult:
    """One load level's figures, as written to JSON and CSV."""

    mode: str  # "closed" | "open"
    concurrency: int | None
    rate: float | None
    duration_s: float
    requests: int  # completed calls inside the window, errors included
    ok: int
    errors: dict[str, int]
    requests_per_s: float
    samples_per_s: float
    mb_per_s: float
    latency_ms: dict[str, float]
    server: dict[str, float] | None = None
    first_error: str = ""

    def flat(self) -> dict[str, Any]:
        row: dict[str, Any] = {k: v for k, v in dataclasses.asdict(self).items()
                               if k not in ("latency_ms", "errors", "server", "first_error")}
        row.update({f"latency_{k}_ms": v for k, v in self.latency_ms.items()})
        row["errors"] = ";".join(f"{k}={v}" for k, v in sorted(self.errors.items()))
        for key in ("queue_wait_mean_ms", "inference_mean_ms", "queue_wait_share", "inference_count",
                    "requests_per_batch", "batch_mean_samples"):
            row[f"server_{key}"] = (self.server or {}).get(key, "")
        return row

    @property
    def label(self) -> str:
        return f"{self.concurrency} in flight" if self.mode == "closed" else f"{self.rate:g}/s open"

    def progress_line(self) -> str:
        level = f"{self.concurrency} in flight" if self.mode == "closed" else f"{self.rate:g} req/s"
        return (f"{level}: {self.requests_per_s:,.0f} req/s, {self.samples_per_s:,.0f} samples/s, "
                f"p50 {self.latency_ms['p50']:.2f} ms, p99 {self.latency_ms['p99']:.2f} ms, "
                f"{sum(self.errors.values())} errors")


def summarize(config: LoadTestConfig, level: float, raw: LevelRaw,
              split: dict[str, float] | None) -> LevelResult:
    window = raw.window_s if raw.window_s > 0 else float("nan")
    if raw.latencies.size:
        ms = raw.latencies * 1000.0
        latency = {f"p{p}": float(np.percentile(ms, p)) for p in PERCENTILES}
        latency.update(mean=float(ms.mean()), max=float(ms.max()))
    else:
        latency = {**{f"p{p}": float("nan") for p in PERCENTILES}, "mean": float("nan"), "max": float("nan")}
    completed = raw.ok + sum(raw.errors.values())
    return LevelResult(
        mode="open" if config.open_loop else "closed",
        concurrency=None if config.open_loop else int(level),
        rate=level if config.open_loop else None,
        duration_s=raw.window_s, requests=completed, ok=raw.ok, errors=dict(sorted(raw.errors.items())),
        requests_per_s=raw.ok / window, samples_per_s=raw.ok * config.num_samples / window,
        mb_per_s=raw.payload_bytes / 1e6 / window, latency_ms=latency, server=split,
        first_error=raw.first_error)


@dataclass
class LoadTestReport:
    config: LoadTestConfig
    levels: list[LevelResult]
    started: str = ""

    def to_json(self) -> str:
        body = {"config": dataclasses.asdict(self.config), "started": self.started,
                "levels": [dataclasses.asdict(level) for level in self.levels]}
        # NaN (no successful call, no metrics) becomes null: strict JSON readers refuse NaN.
        return json.dumps(_nan_to_none(body), indent=2, allow_nan=False) + "\n"

    def to_csv(self) -> str:
        rows = [level.flat() for level in self.levels]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["mode"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()

    def to_markdown(self) -> str:
        head = ("| level | req/s | samples/s | MB/s | p50 ms | p90 ms | p99 ms | max ms | errors "
                "| server queue ms | server infer ms |")
        lines = [head, "|" + "---|" * (head.count("|") - 1)]
        for r in self.levels:
            errors = ", ".join(f"{k} {v}" for k, v in r.errors.items()) or "0"
            server = r.server or {}
            lat = r.latency_ms
            lines.append(
                f"| {r.label} | {r.requests_per_s:,.0f} | {r.samples_per_s:,.0f} | {r.mb_per_s:,.1f} "
                f"| {lat['p50']:.2f} | {lat['p90']:.2f} | {lat['p99']:.2f} | {lat['max']:.2f} | {errors} "
                f"| {_fmt(server.get('queue_wait_mean_ms'))} | {_fmt(server.get('inference_mean_ms'))} |")
        return "\n".join(lines) + "\n"

    @property
    def total_errors(self) -> int:
        return sum(sum(level.errors.values()) for level in self.levels)


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(v) for v in value]
    return value


def _fmt(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.2f}"


def plot_throughput_latency(report: LoadTestReport, path: Path) -> bool:
    """PNG of samples/s against p99 latency, one point per level. False if matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("aegen-loadtest: matplotlib is not installed, so no PNG was written "
              "(pip install matplotlib, or pass --no-png)", file=sys.stderr)
        return False
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    xs = [r.samples_per_s for r in report.levels]
    ys = [r.latency_ms["p99"] for r in report.levels]
    ax.plot(xs, ys, "o-")
    for r, x, y in zip(report.levels, xs, ys):
        ax.annotate(f"{r.concurrency}" if r.mode == "closed" else f"{r.rate:g}/s", (x, y),
                    textcoords="offset points", xytext=(4, 4), fontsize=8)
    cfg = report.config
    ax.set_xlabel("samples/s")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_yscale("log")
    loop = "open loop, labels = requests/s" if cfg.open_loop else "closed loop, labels = calls in flight"
    ax.set_title(f"{cfg.model} N={cfg.num_samples} {cfg.dtype} ({loop})", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return True


def write_outputs(report: LoadTestReport, out: str | Path) -> dict[str, Path]:
    out = Path(out)
    paths = {"json": out / "loadtest.json", "csv": out / "loadtest.csv"}
    atomic_write_text(paths["json"], report.to_json())
    atomic_write_text(paths["csv"], report.to_csv())
    if report.config.png and plot_throughput_latency(report, out / "loadtest.png"):
        paths["png"] = out / "loadtest.png"
    return paths
