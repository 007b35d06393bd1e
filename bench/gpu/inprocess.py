"""In-process decoding throughput: onnxruntime (plain run, IO binding, CUDA graphs, uint8, fp16) against
PyTorch eager with the same weights, host to host (numpy seeds in, numpy images out).

Runs on CUDA where it is available and on the CPU otherwise, so the script is tested here before it
spends GPU time. Imported by bench/gpu/gpu_bench.py; runnable alone:

    python -m bench.gpu.inprocess --repository R --model digits-vae --checkpoint C [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.repository import ModelVersion, load_version

BATCHES = (1, 64, 256, 1024, 4096, 8192, 16384, 65536)


@dataclass
class Cell:
    variant: str
    batch: int
    samples_per_s: float
    ms_per_batch: float
    repeats: int


def _time(fn: Callable[[], object], batch: int, min_seconds: float) -> Cell:
    for _ in range(3):  # warm-up: allocator, cuDNN/cuBLAS heuristics, CUDA graph capture
        fn()
    repeats, start = 0, time.perf_counter()
    while True:
        fn()
        repeats += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds and repeats >= 5:
            break
    per = elapsed / repeats
    return Cell("", batch, batch / per, per * 1e3, repeats)


def _providers(device: str, **cuda_options: str) -> list:
    if device == "cuda":
        opts = {"device_id": "0", "cudnn_conv_algo_search": "HEURISTIC", "use_tf32": "0", **cuda_options}
        return [("CUDAExecutionProvider", opts), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _session(path: Path, device: str, **cuda_options: str):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=_providers(device, **cuda_options))
    want = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
    if sess.get_providers()[0] != want:
        raise RuntimeError(f"{path.name}: asked for {want}, got {sess.get_providers()}")
    return sess


def ort_variants(version: ModelVersion, device: str, batch: int, seeds: np.ndarray) -> dict[str, Callable]:
    """Each variant takes host seeds and leaves host images, as a serving process must."""
    import onnxruntime as ort

    dec = version.manifest.graphs["decoder"]
    in_name, _out_name = next(iter(dec.inputs)), next(iter(dec.outputs))
    shape = [batch, *version.manifest.image_shape]
    variants: dict[str, Callable] = {}

    fp32 = _session(version.graph_path("decoder"), device)
    variants["ort_run_fp32"] = lambda: fp32.run(None, {in_name: seeds})[0]
    u8 = _session(version.graph_path("decoder_uint8"), device)
    u8_out = next(iter(version.manifest.graphs["decoder_uint8"].outputs))
    variants["ort_run_uint8"] = lambda: u8.run(None, {in_name: seeds})[0]
    if "decoder_fp16" in version.manifest.graphs:
        fp16 = _session(version.graph_path("decoder_fp16"), device)
        fp16_in = next(iter(version.manifest.graphs["decoder_fp16"].inputs))
        # fp16 inside, float32 in and out (docs/export.md), so it takes the same seeds.
        variants["ort_run_fp16"] = lambda: fp16.run(None, {fp16_in: seeds})[0]

    if device != "cuda":
        return variants

    # TF32 tensor cores for the float32 matrix products (the server's --cuda-tf32).
    u8_tf32 = _session(version.graph_path("decoder_uint8"), device, use_tf32="1")
    variants["ort_run_uint8_tf32"] = lambda: u8_tf32.run(None, {in_name: seeds})[0]

    # IO binding: seeds copied once to the device, images copied once into a preallocated host buffer.
    host_u8 = np.empty(shape, dtype=np.uint8)
    io = u8.io_binding()
    io.bind_cpu_input(in_name, seeds)
    io.bind_output(u8_out, "cpu", 0, np.uint8, shape, host_u8.ctypes.data)

    def iobind_uint8() -> np.ndarray:
        io.bind_cpu_input(in_name, seeds)
        u8.run_with_iobinding(io)
        return host_u8

    variants["ort_iobinding_uint8"] = iobind_uint8

    # Output kept on the device (the ceiling without the device-to-host copy).
    dev_in = ort.OrtValue.ortvalue_from_numpy(seeds, "cuda", 0)
    dev_out = ort.OrtValue.ortvalue_from_shape_and_type(shape, np.uint8, "cuda", 0)
    io_dev = u8.io_binding()
    io_dev.bind_ortvalue_input(in_name, dev_in)
    io_dev.bind_ortvalue_output(u8_out, dev_out)

    def on_device_uint8() -> None:
        dev_in.update_inplace(seeds)
        u8.run_with_iobinding(io_dev)

    variants["ort_uint8_output_on_device"] = on_device_uint8

    # CUDA graphs need fixed device addresses: one session per batch size, bound once.
    graph_sess = _session(version.graph_path("decoder_uint8"), device, enable_cuda_graph="1")
    g_in = ort.OrtValue.ortvalue_from_numpy(seeds, "cuda", 0)
    g_out = ort.OrtValue.ortvalue_from_shape_and_type(shape, np.uint8, "cuda", 0)
    io_g = graph_sess.io_binding()
    io_g.bind_ortvalue_input(in_name, g_in)
    io_g.bind_ortvalue_output(u8_out, g_out)

    def cuda_graph_uint8() -> np.ndarray:
        g_in.update_inplace(seeds)
        graph_sess.run_with_iobinding(io_g)
        return g_out.numpy()

    variants["ort_cuda_graph_uint8"] = cuda_graph_uint8
    return variants


def torch_variant(checkpoint: Path, device: str, seeds: np.ndarray) -> Callable:
    import torch

    from training.checkpoint import load_model

    model, _ = load_model(checkpoint)
    model = model.to(device).eval()

    def run() -> np.ndarray:
        with torch.inference_mode():
            z = torch.from_numpy(seeds).to(device, non_blocking=False)
            return model.decode(z).cpu().numpy()

    return run


def max_abs_diff_cuda_vs_cpu(version: ModelVersion, seeds: np.ndarray) -> dict[str, float]:
    dec = version.manifest.graphs["decoder"]
    in_name = next(iter(dec.inputs))
    cpu = _session(version.graph_path("decoder"), "cpu").run(None, {in_name: seeds})[0]
    gpu = _session(version.graph_path("decoder"), "cuda").run(None, {in_name: seeds})[0]
    cpu8 = _session(version.graph_path("decoder_uint8"), "cpu").run(None, {in_name: seeds})[0]
    gpu8 = _session(version.graph_path("decoder_uint8"), "cuda").run(None, {in_name: seeds})[0]
    tf32 = _session(version.graph_path("decoder"), "cuda", use_tf32="1").run(None, {in_name: seeds})[0]
    return {
        "fp32_max_abs_diff": float(np.abs(cpu - gpu).max()),
        "fp32_max_abs_diff_with_tf32": float(np.abs(cpu - tf32).max()),
        "uint8_max_abs_diff": int(np.abs(cpu8.astype(np.int16) - gpu8.astype(np.int16)).max()),
        "uint8_share_differing": float((cpu8 != gpu8).mean()),
        "samples": len(seeds),
    }


def run(repository: Path, model: str, checkpoint: Path | None, device: str, batches=BATCHES,
        min_seconds: float = 0.3) -> list[dict]:
    version = load_version(repository, model)
    rng = np.random.default_rng(0)
    rows = []
    for batch in batches:
        seeds = rng.standard_normal((batch, version.manifest.latent_dim), dtype=np.float32)
        variants = ort_variants(version, device, batch, seeds)
        if checkpoint is not None:
            variants["torch_eager_fp32"] = torch_variant(checkpoint, device, seeds)
        for name, fn in variants.items():
            try:
                cell = _time(fn, batch, min_seconds)
                rows.append({**cell.__dict__, "variant": name})
            except Exception as exc:  # noqa: BLE001 - one failing variant must not lose the others' numbers
                rows.append({"variant": name, "batch": batch, "error": f"{type(exc).__name__}: {exc}"})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repository", type=Path, required=True)
    p.add_argument("--model", default="digits-vae")
    p.add_argument("--checkpoint", type=Path)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--batches", default=",".join(map(str, BATCHES)))
    p.add_argument("--min-seconds", type=float, default=0.3)
    a = p.parse_args()
    run(a.repository, a.model, a.checkpoint, a.device, tuple(int(b) for b in a.batches.split(",")), a.min_seconds)


if __name__ == "__main__":
    main()
