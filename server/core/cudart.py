"""The CUDA runtime that onnxruntime already loaded into this process, reached through ctypes.

No new dependency and no torch: after `onnxruntime.preload_dlls()` (or the first CUDA session) the CUDA
runtime library is in the process, and `dlopen(soname, RTLD_NOLOAD)` hands back that very library without
loading anything. Where it is not loaded (CPU builds, CPU fallback), `CudaRuntime.find_loaded()` returns None
and callers go without what it offers.

Functions used (CUDA runtime API, stable since CUDA 4): cudaMemGetInfo(size_t *free, size_t *total) and
cudaMemcpy(void *dst, const void *src, size_t count, cudaMemcpyKind kind); both return cudaError_t (0: ok).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Iterable
from pathlib import Path

# onnxruntime-gpu 1.2x is built for CUDA 12, 1.31 for CUDA 13; newest first (docs/benchmarks/gpu.md).
CUDART_SONAMES = ("libcudart.so.13", "libcudart.so.12")
_MEMCPY_DEVICE_TO_HOST = 2  # cudaMemcpyKind


class CudaError(RuntimeError):
    """A CUDA runtime call returned an error code."""


class CudaRuntime:
    """The two calls the server needs; the functions are injectable so the arithmetic is testable on CPU."""

    def __init__(self, mem_get_info: Callable[..., int], memcpy: Callable[..., int] | None = None,
                 name: str = "") -> None:
        self._mem_get_info = mem_get_info
        self._memcpy = memcpy
        self.name = name

    @classmethod
    def find_loaded(cls, sonames: Iterable[str] = CUDART_SONAMES) -> CudaRuntime | None:
        """The CUDA runtime already in this process, or None. Never loads a library that is not there."""
        for name in [*sonames, *_mapped_cudart_paths()]:
            try:
                library = ctypes.CDLL(name, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
            except OSError:
                continue
            mem_get_info = library.cudaMemGetInfo
            mem_get_info.argtypes = [ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)]
            mem_get_info.restype = ctypes.c_int
            memcpy = library.cudaMemcpy
            memcpy.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            memcpy.restype = ctypes.c_int
            return cls(mem_get_info, memcpy, name)
        return None

    def memory(self) -> tuple[int, int]:
        """(free, total) bytes of the current device (device 0 unless a thread chose another): the whole
        device, every process on it included. Raises CudaError."""
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        _check("cudaMemGetInfo", self._mem_get_info(ctypes.pointer(free), ctypes.pointer(total)))
        return int(free.value), int(total.value)

    def copy_to_host(self, destination: int, source: int, nbytes: int) -> None:
        """One synchronous device→host copy of nbytes from a device address into host memory. Raises CudaError."""
        if self._memcpy is None:
            raise CudaError("cudaMemcpy is not available")
        _check("cudaMemcpy", self._memcpy(destination, source, nbytes, _MEMCPY_DEVICE_TO_HOST))


def _check(call: str, code: int) -> None:
    if code != 0:
        raise CudaError(f"{call} returned cudaError {code}")


def _mapped_cudart_paths() -> list[str]:
    """Full paths of libcudart files mapped into this process (should it have been loaded under another soname)."""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    paths = {line.split(maxsplit=5)[-1] for line in lines if "/libcudart.so" in line}
    return sorted(p for p in paths if p.startswith("/"))
