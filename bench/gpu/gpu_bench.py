"""One run on the GPU machine: in-process decoding, CUDA vs CPU parity, and the real server under load.

    python -m bench.gpu.gpu_bench --repository R --checkpoint C --out DIR [--device cuda|cpu] [--quick]

(a) in-process: onnxruntime CUDA (plain run, IO binding, output kept on device, CUDA graphs, uint8, fp16)
    against PyTorch eager with the same weights, batch 1 … 65,536 (bench/gpu/inprocess.py);
(b) the real server (`python -m server --device cuda`) under `python -m client.loadtest` on the same
    machine: samples/s and latency percentiles at N = 1, 64, 1024, 8192; with --cuda-graphs; with worker
    processes and several client processes;
(c) the largest difference between CUDA and CPU outputs.

Everything goes into DIR/gpu_results.json (written after every part, so a run cut short still reports)
and DIR/gpu_bench.md. With --device cpu the same script runs here, on the CPU, as a rehearsal.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

from bench.gpu import inprocess
from client.local import NotServing, free_port, wait_until_serving
from export.repository import load_version

HERE = Path(__file__).resolve().parents[2]


def machine_info() -> dict:
    info: dict = {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}
    try:
        import onnxruntime as ort

        info["onnxruntime"] = ort.__version__
        info["providers"] = ort.get_available_providers()
    except Exception as exc:  # noqa: BLE001
        info["onnxruntime"] = f"unavailable: {exc}"
    try:
        import torch

        info["torch"] = torch.__version__
    except Exception:  # noqa: BLE001
        info["torch"] = "absent"
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20, check=False)
        info["gpu"] = out.stdout.strip()
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu_model"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE,
                                            capture_output=True, text=True, timeout=5, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        info["git_commit"] = f"unknown ({exc})"
    return info


class Server:
    """`python -m server` in its own process group, waited on until health says SERVING."""

    def __init__(self, repository: Path, device: str, *flags: str, log_dir: Path) -> None:
        self.port, self.metrics_port = free_port(), free_port()
        self.log_path = log_dir / f"server-{self.port}.log"
        cmd = [sys.executable, "-m", "server", "--repository", str(repository), "--device", device,
               "--host", "127.0.0.1", "--port", str(self.port), "--metrics-port", str(self.metrics_port), "--http-port", "0",
               "--repository-poll-seconds", "0", "--log-level", "WARNING", *flags]
        self.cmd = cmd
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - lives as long as the server process
        self.proc = subprocess.Popen(cmd, cwd=HERE, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def wait_ready(self, timeout: float = 180.0) -> float:
        try:
            return wait_until_serving(self.target, self.proc, timeout, poll=0.2)
        except NotServing as exc:
            raise RuntimeError(f"{exc}: {self.tail()}") from None

    def metrics(self) -> str:
        import urllib.request

        with urllib.request.urlopen(self.metrics_url, timeout=5) as r:
            return r.read().decode()

    def tail(self, n: int = 3000) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_bytes()[-n:].decode(errors="replace")

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


def loadtest(server: Server, model: str, n: int, dtype: str, concurrency: str, duration: float,
             processes: int, work: Path, channels: int = 4) -> list[dict]:
    out = work / f"lt-{n}-{dtype}-{concurrency.replace(',', '_')}-{processes}"
    cmd = [sys.executable, "-m", "client.loadtest", "--target", server.target, "--model", model,
           "-n", str(n), "--dtype", dtype, "--concurrency", concurrency, "--duration", str(duration),
           "--warmup", "1", "--processes", str(processes), "--channels", str(channels),
           "--metrics-url", server.metrics_url, "--out", str(out), "--no-png",
           "--max-level-time", str(duration + 20)]
    levels = len(concurrency.split(","))
    done = subprocess.run(cmd, cwd=HERE, capture_output=True, text=True, timeout=levels * (duration + 30) + 30,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"loadtest exit {done.returncode}: {done.stderr[-1500:]}")
    report = json.loads((out / "loadtest.json").read_text())
    rows = []
    for level in report["levels"]:
        rows.append({"n": n, "dtype": dtype, "concurrency": level["concurrency"], "processes": processes,
                     "requests_per_s": level["requests_per_s"], "samples_per_s": level["samples_per_s"],
                     "mb_per_s": level["mb_per_s"], "latency_ms": level["latency_ms"],
                     "errors": level["errors"], "server": level.get("server")})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def seed_digest(target: str, model: str) -> str:
    """SHA-256 of 1,000 uint8 samples for seed 7: equal across server variants on the same device."""
    import hashlib

    from client.client import AegenClient

    with AegenClient(target, timeout=60) as client:
        return hashlib.sha256(client.generate(model, 1000, seed=7).images.tobytes()).hexdigest()


LATENCY_PLANS = [
    # N = 1 at one call in flight: the p99 target. Small buckets, CUDA graphs, one intra-op thread.
    ("latency_graphs_1thread", ["--max-batch-size", "64", "--cuda-graphs", "--intra-op-threads", "1"],
     [(1, "uint8", "1", 1)]),
    ("latency_graphs", ["--max-batch-size", "64", "--cuda-graphs"], [(1, "uint8", "1", 1)]),
    ("latency_plain_1thread", ["--max-batch-size", "64", "--intra-op-threads", "1"], [(1, "uint8", "1", 1)]),
]


def server_runs(repository: Path, model: str, device: str, quick: bool, work: Path,
                results: dict, save, only: set[str] | None = None, duration: float | None = None) -> None:
    d = duration or (1.0 if quick else 3.0)
    plans = [
        ("plain", ["--max-batch-size", "65536"], [
            (1, "uint8", "1,16,64", 1), (64, "uint8", "1,16,64", 2), (1024, "uint8", "1,8,32", 2),
            (8192, "uint8", "1,4,16", 4), (8192, "float32", "4,16", 4)]),
        ("delay_2000us", ["--max-batch-size", "65536", "--max-queue-delay-us", "2000"], [
            (1, "uint8", "1,64", 1), (8192, "uint8", "4,16", 4)]),
        ("cuda_graphs", ["--max-batch-size", "65536", "--cuda-graphs"], [
            (1, "uint8", "1,64", 1), (8192, "uint8", "4,16", 4)]),
        ("workers_4", ["--max-batch-size", "65536", "--workers", "4"], [
            (8192, "uint8", "16,32,64", 8), (1, "uint8", "64,256", 8)]),
        ("workers_8", ["--max-batch-size", "16384", "--workers", "8"], [
            (8192, "uint8", "16,32,64", 8)]),
        ("tf32", ["--max-batch-size", "65536", "--cuda-tf32"], [
            (8192, "uint8", "4,16", 4)]),
    ]
    plans += LATENCY_PLANS if only else []
    if only:
        plans = [plan for plan in plans if plan[0] in only]
    if quick:
        plans = [(name, flags, runs[:2]) for name, flags, runs in plans]
    for name, flags, runs in plans:
        if ("graphs" in name or name == "tf32") and device != "cuda":
            continue
        entry = results["server"].setdefault(name, {"flags": flags, "rows": []})
        server = Server(repository, device, *flags, log_dir=work)
        try:
            entry["ready_s"] = server.wait_ready()
            entry["seed7_sha256"] = seed_digest(server.target, model)
            for n, dtype, conc, procs in runs:
                try:
                    entry["rows"] += loadtest(server, model, n, dtype, conc, d, procs, work)
                except Exception as exc:  # noqa: BLE001 - keep the other rows
                    entry.setdefault("errors", []).append(f"N={n} {dtype} c={conc}: {exc}")
                save()
            try:
                entry["seed7_sha256_after_load"] = seed_digest(server.target, model)
                metrics = server.metrics()
                entry["metrics_excerpt"] = [line for line in metrics.splitlines()
                                            if line.startswith(("aegen_model_info", "aegen_gpu_memory"))]
            except OSError as exc:
                entry["metrics_excerpt"] = [f"unavailable: {exc}"]
        except Exception as exc:  # noqa: BLE001
            entry.setdefault("errors", []).append(f"{type(exc).__name__}: {exc}")
        finally:
            entry["exit_code"] = server.stop()
            entry["log_tail"] = server.tail(2000)
            save()


def _num(value, spec: str = ",.0f") -> str:
    return "–" if value is None else format(value, spec)


def train_on_device(device: str, work: Path) -> dict:
    """aegen-train on the device: the training path of `--device cuda`, and its images/s."""
    epochs = 3
    cmd = [sys.executable, "-m", "training.train", "--kind", "vae", "--arch", "conv", "--latent-dim", "16",
           "--epochs", str(epochs), "--device", device, "--out", str(work / "train-ckpt"), "--overwrite",
           "--no-progress"]
    start = time.monotonic()
    done = subprocess.run(cmd, cwd=HERE, capture_output=True, text=True, timeout=240, check=False)
    wall = time.monotonic() - start
    config = json.loads((work / "train-ckpt" / "config.json").read_text()) if done.returncode == 0 else {}
    return {"command": " ".join(cmd[1:]), "exit_code": done.returncode, "wall_s": round(wall, 1),
            "images_per_s_incl_startup": round(9000 * epochs / wall), "metrics": config.get("metrics"),
            "output_tail": (done.stdout + done.stderr)[-1500:]}


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [f"# GPU benchmarks ({m.get('gpu', 'no GPU')})", "",
             (f"onnxruntime {m.get('onnxruntime')}, torch {m.get('torch')}, Python {m.get('python')}, "
              f"{m.get('cpus')} CPUs ({m.get('cpu_model', '?')}), commit {m.get('git_commit', '?')}, "
              f"device {results['device']}, model {results['model']} (latent {results.get('latent_dim')})."), "",
             "## (a) In-process decoding, host to host, samples/s", ""]
    rows = [r for r in results.get("inprocess", []) if "samples_per_s" in r]
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    batches = sorted({r["batch"] for r in rows})
    if not rows:
        lines.append("(not run)")
    else:
        lines.append("| batch | " + " | ".join(variants) + " |")
        lines.append("|---:|" + "---:|" * len(variants))
    for b in batches:
        cells = {r["variant"]: r["samples_per_s"] for r in rows if r["batch"] == b}
        lines.append(f"| {b} | " + " | ".join(f"{cells[v]:,.0f}" if v in cells else "–" for v in variants) + " |")
    errors = [r for r in results.get("inprocess", []) if "error" in r]
    for r in errors:
        lines.append(f"\n- {r['variant']} at batch {r['batch']}: {r['error']}")
    lines += ["", "## (b) The server end to end (gRPC on loopback, same machine)", ""]
    for name, entry in results.get("server", {}).items():
        lines.append(f"### {name}: `{' '.join(entry['flags'])}` (ready after {_num(entry.get('ready_s'), '.1f')} s)")
        lines.append("")
        lines.append("| N | dtype | in flight | client procs | calls/s | samples/s | MB/s | p50 ms | p99 ms | errors |")
        lines.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|---|")
        for r in entry["rows"]:
            lat = r["latency_ms"] or {}
            lines.append(f"| {r['n']} | {r['dtype']} | {r['concurrency']} | {r['processes']} | "
                         f"{_num(r['requests_per_s'])} | {_num(r['samples_per_s'])} | {_num(r['mb_per_s'])} | "
                         f"{_num(lat.get('p50'), '.2f')} | {_num(lat.get('p99'), '.2f')} | {r['errors'] or 0} |")
        lines.append(f"seed 7, 1,000 uint8 samples: sha256 {entry.get('seed7_sha256', '?')[:16]}…")
        for e in entry.get("errors", []):
            lines.append(f"\n- error: {e}")
        lines.append("")
    if "train" in results:
        t = results["train"]
        lines += ["## Training on the device", "",
                  (f"`{t['command']}`: exit {t['exit_code']}, {t['wall_s']} s wall, "
                   f"≈ {t['images_per_s_incl_startup']:,} images/s including start-up; metrics {t['metrics']}"), ""]
    if "parity" in results:
        lines += ["## (c) CUDA vs CPU", "", "```", json.dumps(results["parity"], indent=2), "```"]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repository", type=Path, required=True)
    p.add_argument("--model", default="digits-vae")
    p.add_argument("--checkpoint", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--quick", action="store_true", help="a rehearsal: fewer batches, shorter levels")
    p.add_argument("--parts", default="inprocess,parity,train,server")
    p.add_argument("--plans", default="", help="only these server plans (names in the tables; also: "
                   + ", ".join(name for name, _, _ in LATENCY_PLANS) + ")")
    p.add_argument("--duration", type=float, default=None, help="seconds per load level")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="aegen-gpu-"))
    version = load_version(a.repository, a.model)
    results: dict = {"machine": machine_info(), "device": a.device, "model": a.model,
                     "latent_dim": version.manifest.latent_dim, "server": {}}
    print(json.dumps(results["machine"]), flush=True)

    def save() -> None:
        (a.out / "gpu_results.json").write_text(json.dumps(results, indent=2, default=str))
        (a.out / "gpu_bench.md").write_text(markdown(results))

    parts = a.parts.split(",")
    steps = [
        ("inprocess", lambda: results.__setitem__("inprocess", inprocess.run(
            a.repository, a.model, a.checkpoint, a.device,
            (1, 1024) if a.quick else inprocess.BATCHES, 0.05 if a.quick else 0.4))),
        ("parity", lambda: results.__setitem__("parity", inprocess.max_abs_diff_cuda_vs_cpu(
            version, np.random.default_rng(1).standard_normal((4096, version.manifest.latent_dim),
                                                              dtype=np.float32)))
         if a.device == "cuda" else None),
        ("train", lambda: results.__setitem__("train", train_on_device(a.device, work))),
        ("server", lambda: server_runs(a.repository, a.model, a.device, a.quick, work, results, save,
                                       set(filter(None, a.plans.split(","))) or None, a.duration)),
    ]
    for name, step in steps:
        if name not in parts:
            continue
        t0 = time.monotonic()
        try:
            step()
        except Exception:  # noqa: BLE001 - report and go on to the next part
            results.setdefault("failures", {})[name] = traceback.format_exc()[-3000:]
            print(results["failures"][name], file=sys.stderr, flush=True)
        results.setdefault("part_seconds", {})[name] = round(time.monotonic() - t0, 1)
        save()
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
