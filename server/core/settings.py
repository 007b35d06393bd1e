"""CoreSettings: what the serving core needs to know, whatever protocol it is reached through.

The model repository and which models to serve, the execution device and onnxruntime options, batching,
and the request limits. Listener settings (ports, TLS, connection age) live with their listeners in
server/config.py, which builds the one flag/environment table over all of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from server.core.errors import ServerError

DEVICES = ("auto", "cuda", "cpu")
DECODER_PRECISIONS = ("fp32", "int8")
CUDNN_CONV_ALGO_SEARCHES = ("HEURISTIC", "EXHAUSTIVE", "DEFAULT")

# The largest sample the message-size limits are sized for: 4096 pixels (e.g. 1x64x64 or 3x32x32) and a
# 1024-dimensional latent (the checkpoint format's bound). A model above this is refused at load.
MAX_IMAGE_ELEMENTS = 4096
MAX_LATENT_DIM = 1024


class ConfigError(ServerError, ValueError):
    """A setting has a value the server cannot run with; the message names the flag."""


@dataclass(frozen=True)
class ExecutionConfig:
    """Where and how onnxruntime runs (runner.py)."""

    device: str = "auto"  # "auto" | "cuda" | "cpu"
    intra_op_threads: int = 0
    cuda_graphs: bool = False
    cuda_tf32: bool = False
    cudnn_conv_algo_search: str = "HEURISTIC"
    gpu_mem_limit: int = 0
    small_batch_samples: int = 32  # CPU: batches up to this many samples run on a single-threaded session
    spin_batch_samples: int = 64  # CPU: a lone request this large runs on a pool whose threads spin; 0: never


@dataclass(frozen=True)
class BatcherConfig:
    """How requests merge into batches (batcher.py)."""

    max_batch_size: int = 8192
    max_queue_delay_us: int = 0  # > 0: a fixed delay (the adaptive one is then off)
    max_queue_samples: int = 262144
    adaptive_queue_delay_us: int = 2000  # 0: off
    inline_batch_samples: int = 32  # a lone call this small is decoded on the event loop; 0: never


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions of a model to serve (registry.py): the newest `count`, all, or `versions`."""

    kind: str  # "latest" | "all" | "specific"
    count: int = 1
    versions: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        kind, _, arguments = text.strip().partition(":")
        try:
            if kind == "latest":
                policy = cls("latest", count=int(arguments or "1"))
                if policy.count >= 1:
                    return policy
            elif kind == "all" and not arguments:
                return cls("all")
            elif kind == "specific":
                versions = tuple(sorted({int(v) for v in arguments.split(",") if v.strip()}))
                if versions and min(versions) >= 1:
                    return cls("specific", versions=versions)
        except ValueError:
            pass
        raise ConfigError(f"--version-policy must be latest:N (N >= 1), all or specific:V1,V2,...; got {text!r}")


@dataclass(frozen=True)
class CoreSettings:
    repository: str = "/models"
    models: tuple[str, ...] = ()  # empty: every model in the repository
    version_policy: str = "latest:1"
    device: str = "auto"
    max_batch_size: int = 8192
    max_queue_delay_us: int = 0  # > 0: a fixed delay, like Triton's; 0: the adaptive delay below decides
    adaptive_queue_delay_us: int = 2000  # wait for company only while calls keep arriving, at most this long
    inline_batch_samples: int = 32  # a lone call of up to this many samples is decoded on the event loop; 0: off
    max_queue_samples: int = 262144
    max_samples_per_request: int = 65536
    max_samples_per_stream: int = 4194304
    repository_poll_seconds: float = 10.0  # 0 disables polling
    intra_op_threads: int = 0  # 0: onnxruntime's default
    small_batch_samples: int = 32  # CPU: up to this many samples per batch on a single-threaded session; 0: off
    spin_batch_samples: int = 64  # CPU: a lone request this large runs on a spinning thread pool; 0: never
    decoder_precision: str = "fp32"  # int8: the version's int8 decoders (aegen-export --int8) where it has them
    cuda_graphs: bool = False
    cuda_tf32: bool = False
    cudnn_conv_algo_search: str = "HEURISTIC"
    gpu_mem_limit: int = 0  # bytes; 0: unlimited

    def __post_init__(self) -> None:
        check_choice("device", self.device, DEVICES)
        check_choice("decoder_precision", self.decoder_precision, DECODER_PRECISIONS)
        VersionPolicy.parse(self.version_policy)
        check_choice("cudnn_conv_algo_search", self.cudnn_conv_algo_search, CUDNN_CONV_ALGO_SEARCHES)
        check_at_least(self, 1, "max_batch_size", "max_queue_samples", "max_samples_per_request",
                       "max_samples_per_stream")
        check_at_least(self, 0, "max_queue_delay_us", "adaptive_queue_delay_us", "inline_batch_samples",
                       "intra_op_threads", "small_batch_samples", "spin_batch_samples", "gpu_mem_limit")
        check_seconds(self, "repository_poll_seconds")
        if self.max_queue_samples < self.max_samples_per_request:
            raise ConfigError(f"--max-queue-samples ({self.max_queue_samples}) must be at least "
                              f"--max-samples-per-request ({self.max_samples_per_request})")
        for name in ("cuda_graphs", "cuda_tf32", "gpu_mem_limit"):
            if self.device == "cpu" and getattr(self, name):
                raise ConfigError(f"--{_flag(name)} needs the CUDA execution provider; "
                                  "it makes no sense with --device cpu")

    @property
    def policy(self) -> VersionPolicy:
        return VersionPolicy.parse(self.version_policy)

    @property
    def execution(self) -> ExecutionConfig:
        return ExecutionConfig(self.device, self.intra_op_threads, self.cuda_graphs, self.cuda_tf32,
                               self.cudnn_conv_algo_search, self.gpu_mem_limit, self.small_batch_samples,
                               self.spin_batch_samples)

    @property
    def batching(self) -> BatcherConfig:
        return BatcherConfig(self.max_batch_size, self.max_queue_delay_us, self.max_queue_samples,
                             self.adaptive_queue_delay_us, self.inline_batch_samples)


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"--{_flag(name)} must be one of {', '.join(choices)}; got {value!r}")


def check_at_least(settings: object, minimum: int, *names: str) -> None:
    for name in names:
        value = getattr(settings, name)
        if value < minimum:
            raise ConfigError(f"--{_flag(name)} must be at least {minimum}, got {value}")


def check_seconds(settings: object, *names: str) -> None:
    for name in names:
        value = getattr(settings, name)
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"--{_flag(name)} must be a finite number >= 0, got {value}")


def _flag(name: str) -> str:
    return name.replace("_", "-")
