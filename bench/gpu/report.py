"""Turn gpu_results.json from bench/gpu/gpu_bench.py into docs/benchmarks/gpu.md and PNG curves.

    python -m bench.gpu.report RESULTS.json [RESULTS2.json ...] --out docs/benchmarks

Several result files (runs on the same machine kind) are kept side by side, each under its own heading.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.gpu.gpu_bench import markdown


def plot_inprocess(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results.get("inprocess", []) if "samples_per_s" in r]
    fig, ax = plt.subplots(figsize=(8, 5))
    for variant in dict.fromkeys(r["variant"] for r in rows):
        pts = sorted((r["batch"], r["samples_per_s"]) for r in rows if r["variant"] == variant)
        ax.plot([b for b, _ in pts], [s for _, s in pts], marker="o", label=variant)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size (samples)")
    ax.set_ylabel("samples/s, host to host")
    ax.set_title(f"In-process decoding on {results['machine'].get('gpu', '?').split(',')[0]}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_server(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, entry in results.get("server", {}).items():
        for n in sorted({r["n"] for r in entry["rows"]}):
            pts = [(r["latency_ms"]["p99"], r["samples_per_s"]) for r in entry["rows"]
                   if r["n"] == n and r["dtype"] == "uint8" and r["latency_ms"].get("p99") is not None]
            if pts:
                ax.plot([p for p, _ in pts], [s for _, s in pts], marker="o", label=f"{name}, N={n}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("p99 latency (ms)")
    ax.set_ylabel("samples/s (uint8)")
    ax.set_title("The server end to end: throughput against p99 latency")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path, nargs="+")
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    p.add_argument("--preface", type=Path, default=Path(__file__).with_name("preface.md"),
                   help="Markdown to put first: the reading of the figures (default bench/gpu/preface.md)")
    a = p.parse_args()
    parts = [a.preface.read_text()] if a.preface else []
    for i, path in enumerate(a.results, 1):
        results = json.loads(path.read_text())
        suffix = "" if len(a.results) == 1 else f"_run{i}"
        body = markdown(results).replace("# GPU benchmarks", f"## Run {i}: GPU benchmarks", 1)
        body = body.replace("\n## ", "\n### ").replace("\n### Run", "\n## Run")
        if any("samples_per_s" in r for r in results.get("inprocess", [])):
            plot_inprocess(results, a.out / f"gpu_inprocess{suffix}.png")
            body += f"\n![in-process](gpu_inprocess{suffix}.png)\n"
        if len(results.get("server", {})) > 3:  # a curve needs several servers' levels
            plot_server(results, a.out / f"gpu_server{suffix}.png")
            body += f"![server](gpu_server{suffix}.png)\n"
        parts.append(body)
    (a.out / "gpu.md").write_text("\n".join(parts))
    print(f"wrote {a.out / 'gpu.md'}")


if __name__ == "__main__":
    main()
