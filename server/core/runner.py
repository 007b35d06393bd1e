"""onnxruntime sessions: which device they run on, and the decoder's batch hot path.

One session per loaded graph. `select_device` decides once per process between the CUDA and the CPU
execution provider; every session then checks which provider it actually got (onnxruntime falls back to
CPU silently when the CUDA libraries do not load), and that provider is what we report.

Everything CUDA-specific (provider options, CUDA graphs, device-side buffers) lives in this module, so the
rest of the server only sees `GraphRunner.run` and `DecoderRunner.decode_into`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from server.core.cudart import CudaRuntime
from server.core.errors import DeviceError, ModelLoadError
from server.core.settings import ExecutionConfig

log = logging.getLogger("aegen.server.runner")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


@dataclass(frozen=True)
class Device:
    """Where sessions run: "cuda" or "cpu", and the options every session of this process gets."""

    name: str
    execution: ExecutionConfig

    @property
    def cuda_graphs(self) -> bool:
        return self.name == "cuda" and self.execution.cuda_graphs

    def providers(self, *, cuda_graph: bool = False) -> list:
        if self.name == "cpu":
            return [CPU]
        options = {
            "device_id": 0,
            # EXHAUSTIVE re-benchmarks every new input shape, which is every new batch size.
            "cudnn_conv_algo_search": self.execution.cudnn_conv_algo_search,
            "do_copy_in_default_stream": "1",
            # onnxruntime enables TF32 by default; on an H200 that put CUDA 1.8e-3 away from the CPU's
            # float32 (bench/gpu, decoder MLP), enough to flip uint8 pixels. Exact unless asked.
            "use_tf32": "1" if self.execution.cuda_tf32 else "0",
        }
        if self.execution.gpu_mem_limit:
            options["gpu_mem_limit"] = str(self.execution.gpu_mem_limit)
        if cuda_graph:
            options["enable_cuda_graph"] = "1"
        return [(CUDA, options), CPU]


def select_device(execution: ExecutionConfig) -> Device:
    """--device auto: CUDA when its provider is there, else CPU with one warning; cuda: CUDA or DeviceError."""
    if execution.device == "cpu":
        return Device("cpu", execution)
    _preload_cuda_libraries()
    if CUDA in ort.get_available_providers():
        return Device("cuda", execution)
    if execution.device == "cuda":
        raise DeviceError("--device cuda: onnxruntime has no CUDAExecutionProvider here "
                          f"(available: {', '.join(ort.get_available_providers())}); install onnxruntime-gpu "
                          "and the CUDA libraries, or use --device cpu")
    log.warning("no CUDA execution provider; decoding on CPU",
                extra={"available_providers": ort.get_available_providers()})
    if execution.cuda_graphs or execution.gpu_mem_limit or execution.cuda_tf32:
        log.warning("--cuda-graphs, --cuda-tf32 and --gpu-mem-limit are ignored on CPU")
    return Device("cpu", execution)


def _preload_cuda_libraries() -> None:
    # onnxruntime-gpu >= 1.21 can load the CUDA/cuDNN libraries of the pip wheels; without this the CUDA
    # provider may fail to load and the session silently runs on CPU.
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    try:
        preload()
    except Exception as exc:  # noqa: BLE001 - a missing library means "no CUDA", which select_device reports
        log.debug("onnxruntime.preload_dlls failed: %s", exc)


class GraphRunner:
    """One onnxruntime session over one graph file. `run` is thread-safe (onnxruntime sessions are)."""

    def __init__(self, path: Path, device: Device, *, cuda_graph: bool = False, threads: int | None = None,
                 spinning: bool = False) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = device.execution.intra_op_threads if threads is None else threads
        options.inter_op_num_threads = 1
        if not spinning:
            # Idle pool threads otherwise spin for a while after each run, on the cores the event loop needs.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # onnxruntime's own warnings go to stderr unstructured; keep errors
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options,
                                                providers=device.providers(cuda_graph=cuda_graph))
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises several types for an unloadable graph
            raise ModelLoadError(f"{path}: onnxruntime cannot load it ({exc})") from None
        self.path = path
        self.execution_provider = self.session.get_providers()[0]
        self.device = "cuda" if self.execution_provider == CUDA else "cpu"
        if device.name == "cuda" and self.device != "cuda":
            if device.execution.device == "cuda":
                raise DeviceError(f"{path}: the session got {self.execution_provider}, not {CUDA} "
                                  "(CUDA libraries missing?); refusing to serve on CPU with --device cuda")
            log.warning("session fell back to CPU", extra={"graph": str(path)})
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(self.output_names, feeds)))


def batch_buckets(max_batch_size: int) -> tuple[int, ...]:
    """Powers of two up to the maximum, and the maximum: the shapes warmed up (and CUDA-graphed)."""
    sizes = [1 << i for i in range(max_batch_size.bit_length()) if (1 << i) <= max_batch_size]
    return tuple(sorted(set(sizes) | {max_batch_size}))


class DecoderRunner:
    """latent (B, d) float32 → images (B, *image_shape) written into a caller-owned buffer.

    IO binding writes the output straight into the caller's array (no allocation per batch; on CUDA the
    images stay on the device until that one copy). With CUDA graphs each bucket gets fixed device buffers
    and its own captured graph, and a batch is padded up to its bucket; its n rows then go to the caller's
    array in one cudaMemcpy (server/core/cudart.py), checked once at warm-up against onnxruntime's own copy, else
    through onnxruntime's copy to a new array and a second, host-side copy.

    On CPU the session is chosen per batch, from up to three over the same graph (the same kernels give the
    same bytes):
    - up to `small_batch_samples`: single-threaded. Waking a thread pool for a few rows costs more than it
      saves, and its threads take the cores the event loop and the client need.
    - one request of at least `spin_batch_samples`: a pool whose threads spin for a while after each run
      instead of sleeping, so the next large request finds them awake (N = 64 at one call in flight:
      +13 to +31 % samples/s). A batch merged from several requests means calls are queuing: there spinning
      threads take the core the event loop needs (-18 % for one-sample calls at 64 in flight), so
    - any other batch: a pool that does not spin."""

    def __init__(self, path: Path, device: Device, latent_dim: int, image_shape: tuple[int, ...],
                 dtype: np.dtype, max_batch_size: int) -> None:
        execution = device.execution
        pooled = device.name == "cpu" and execution.intra_op_threads != 1  # CPU with a thread pool
        small = min(execution.small_batch_samples, max_batch_size) if pooled else 0
        spin = max(execution.spin_batch_samples, small + 1) if pooled and execution.spin_batch_samples else 0
        # Three sessions over the same graph (docstring): the weights are held once per session.
        self.graph = GraphRunner(path, device, cuda_graph=device.cuda_graphs)
        self.latent_dim = latent_dim
        self.image_shape = tuple(image_shape)
        self.dtype = np.dtype(dtype)
        self.buckets = batch_buckets(max_batch_size)
        self.input_name = self.graph.input_names[0]
        self.output_name = self.graph.output_names[0]
        self._cuda_graphs = device.cuda_graphs and self.graph.device == "cuda"
        self._graph_buffers: dict[int, tuple[ort.OrtValue, ort.OrtValue, ort.RunOptions]] = {}
        self._cudart: CudaRuntime | None = None  # set by warm_up when its single copy checks out
        self.small_graph: GraphRunner | None = None
        self.spin_graph: GraphRunner | None = None
        self.small_batch_samples = 0
        self.spin_batch_samples = 0
        if self.graph.device == "cpu":  # (a CUDA session that fell back to CPU keeps its one session)
            if small > 0:
                self.small_graph = GraphRunner(path, device, threads=1)
                self.small_batch_samples = small
            if 0 < spin <= max_batch_size:
                self.spin_graph = GraphRunner(path, device, spinning=True)
                self.spin_batch_samples = spin

    @property
    def device(self) -> str:
        return self.graph.device

    @property
    def execution_provider(self) -> str:
        return self.graph.execution_provider

    def bucket(self, n: int) -> int:
        for size in self.buckets:
            if size >= n:
                return size
        raise ValueError(f"batch of {n} exceeds the largest bucket {self.buckets[-1]}")

    def warm_up(self) -> None:
        """Run every bucket once, so the first real request of each size pays no allocation or capture."""
        # onnxruntime captures a CUDA graph on the run after a regular one: two runs per bucket.
        sizes = sorted({*self.buckets, self.small_batch_samples + 1}) if self.small_graph else self.buckets
        for _ in range(2 if self._cuda_graphs else 1):
            for size in (s for s in sizes if s <= self.buckets[-1]):
                latents = np.zeros((size, self.latent_dim), np.float32)
                # one request, and several: the two CPU pools (spinning or not) of large batches
                for requests in (1, 2) if self.spin_graph is not None and size >= self.spin_batch_samples else (1,):
                    self.decode_into(latents, np.empty((size, *self.image_shape), self.dtype), requests)
        if self._cuda_graphs:
            self._cudart = self._checked_single_copy()

    def _checked_single_copy(self) -> CudaRuntime | None:
        """The CUDA runtime, if copying a graph's output with it gives onnxruntime's bytes; else None (logged)."""
        runtime = CudaRuntime.find_loaded()
        if runtime is None:
            log.warning("CUDA graphs: no CUDA runtime found for the single device-to-host copy; copying twice")
            return None
        # New latents (not warm-up zeros) at a partial batch: a stale or short copy would show.
        size = self.buckets[-1]
        n = max(1, size - 1)
        latents = np.random.default_rng(0).standard_normal((n, self.latent_dim)).astype(np.float32)
        device_out = self._run_cuda_graph(latents)
        expected = device_out.numpy()[:n]
        out = np.full((n, *self.image_shape), 7, self.dtype)
        try:
            runtime.copy_to_host(out.ctypes.data, device_out.data_ptr(), out.nbytes)
        except Exception as exc:  # noqa: BLE001 - any failure here only means "keep the two copies"
            log.warning("CUDA graphs: single device-to-host copy failed; copying twice", extra={"error": str(exc)})
            return None
        if not np.array_equal(out, expected):
            log.warning("CUDA graphs: single device-to-host copy differs from onnxruntime's; copying twice")
            return None
        return runtime

    def decode_into(self, latents: np.ndarray, out: np.ndarray, requests: int = 1) -> None:
        """Decode `latents` (C-contiguous float32), the rows of `requests` requests, into `out` (C-contiguous,
        this runner's dtype)."""
        if self._cuda_graphs:
            self._decode_with_cuda_graph(latents, out)
            return
        graph = self.session_for(latents.shape[0], requests)
        if graph is self.small_graph:
            # A few rows: onnxruntime's own output and a copy of it cost ~12 µs less than an IO binding (CPU,
            # 1 … 32 rows); large batches bind `out` and save the copy.
            out[...] = graph.run({self.input_name: latents})[self.output_name]
            return
        session = graph.session
        binding = session.io_binding()
        binding.bind_cpu_input(self.input_name, latents)
        binding.bind_output(self.output_name, "cpu", 0, self.dtype, out.shape, out.ctypes.data)
        session.run_with_iobinding(binding)

    def session_for(self, n: int, requests: int = 1) -> GraphRunner:
        """The session a batch of n samples from `requests` requests runs on (CPU: single-threaded, pool, or
        spinning pool)."""
        if n <= self.small_batch_samples:
            return self.small_graph
        if self.spin_graph is not None and n >= self.spin_batch_samples and requests == 1:
            return self.spin_graph
        return self.graph

    def _decode_with_cuda_graph(self, latents: np.ndarray, out: np.ndarray) -> None:
        device_out = self._run_cuda_graph(latents)
        if self._cudart is not None:
            # The captured graph owns its output address, so it cannot write into `out`; one copy of the
            # first n rows (row-major: the first out.nbytes bytes) from there. onnxruntime synchronised the
            # stream at the end of the run.
            self._cudart.copy_to_host(out.ctypes.data, device_out.data_ptr(), out.nbytes)
        else:
            out[...] = device_out.numpy()[:latents.shape[0]]

    def _run_cuda_graph(self, latents: np.ndarray) -> ort.OrtValue:
        """Run the bucket's graph on latents padded to the bucket; returns the bucket's device output."""
        n = latents.shape[0]
        size = self.bucket(n)
        device_in, device_out, run_options = self._cuda_graph_buffers(size)
        padded = latents if n == size else np.concatenate(
            [latents, np.zeros((size - n, self.latent_dim), np.float32)])
        device_in.update_inplace(padded)
        binding = self.graph.session.io_binding()
        binding.bind_ortvalue_input(self.input_name, device_in)
        binding.bind_ortvalue_output(self.output_name, device_out)
        self.graph.session.run_with_iobinding(binding, run_options)
        return device_out

    def _cuda_graph_buffers(self, size: int) -> tuple[ort.OrtValue, ort.OrtValue, ort.RunOptions]:
        # A captured graph replays fixed device addresses: one input/output pair and graph id per bucket.
        if size not in self._graph_buffers:
            device_in = ort.OrtValue.ortvalue_from_shape_and_type((size, self.latent_dim), np.float32, "cuda", 0)
            device_out = ort.OrtValue.ortvalue_from_shape_and_type((size, *self.image_shape), self.dtype, "cuda", 0)
            run_options = ort.RunOptions()
            run_options.add_run_config_entry("gpu_graph_id", str(self.buckets.index(size) + 1))
            self._graph_buffers[size] = (device_in, device_out, run_options)
        return self._graph_buffers[size]
