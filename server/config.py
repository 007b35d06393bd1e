"""ServerConfig: every setting of `aegen-serve`, from command-line flags and AEGEN_* environment variables.

Each flag `--some-name` has the environment variable `AEGEN_SOME_NAME`; a flag given on the command line
wins over the variable, the variable over the default. `flag_table()` lists (flag, variable, default) so
docs, deployment manifests and their tests reuse these names instead of copying them.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

DEVICES = ("auto", "cuda", "cpu")
LOG_FORMATS = ("json", "text")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
CUDNN_CONV_ALGO_SEARCHES = ("HEURISTIC", "EXHAUSTIVE", "DEFAULT")
ENV_PREFIX = "AEGEN_"

# Health service names: "" is the whole server (what Kubernetes' grpc probe asks by default).
HEALTH_SERVICES = ("", "aegen.v1.GeneratorService")

# The largest sample the message-size limit is sized for: 4096 pixels (e.g. 1x64x64 or 3x32x32) and a
# 1024-dimensional latent (the checkpoint format's bound). A model above this is refused at load.
MAX_IMAGE_ELEMENTS = 4096
MAX_LATENT_DIM = 1024
_GRPC_MAX_MESSAGE = 2**31 - 1


class ConfigError(ValueError):
    """A flag or environment variable has a value the server cannot run with."""


@dataclass(frozen=True)
class ServerConfig:
    repository: str = "/models"
    models: tuple[str, ...] = ()  # empty: every model in the repository
    host: str = "0.0.0.0"
    port: int = 50051
    metrics_port: int = 9464  # 0 disables the metrics endpoint
    device: str = "auto"
    max_batch_size: int = 8192
    max_queue_delay_us: int = 0  # like Triton: merge what queued during the last decode
    max_queue_samples: int = 262144
    max_samples_per_request: int = 65536
    max_samples_per_stream: int = 4194304
    grace_seconds: float = 20.0
    max_connection_age_seconds: float = 300.0
    repository_poll_seconds: float = 10.0  # 0 disables polling
    tls_cert: str | None = None
    tls_key: str | None = None
    log_format: str = "json"
    log_level: str = "INFO"
    intra_op_threads: int = 0  # 0: onnxruntime's default
    workers: int = 1
    cuda_graphs: bool = False
    cuda_tf32: bool = False
    cudnn_conv_algo_search: str = "HEURISTIC"
    gpu_mem_limit: int = 0  # bytes; 0: unlimited

    def __post_init__(self) -> None:
        _check_choice("--device", self.device, DEVICES)
        _check_choice("--log-format", self.log_format, LOG_FORMATS)
        _check_choice("--log-level", self.log_level, LOG_LEVELS)
        _check_choice("--cudnn-conv-algo-search", self.cudnn_conv_algo_search, CUDNN_CONV_ALGO_SEARCHES)
        for name in ("port", "metrics_port"):
            value = getattr(self, name)
            if not 0 <= value <= 65535:
                raise ConfigError(f"--{_flag(name)} must be a port in 0..65535, got {value}")
        for name in ("max_batch_size", "max_queue_samples", "max_samples_per_request",
                     "max_samples_per_stream", "workers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{_flag(name)} must be at least 1, got {getattr(self, name)}")
        for name in ("max_queue_delay_us", "intra_op_threads", "gpu_mem_limit"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{_flag(name)} must be at least 0, got {getattr(self, name)}")
        for name in ("grace_seconds", "max_connection_age_seconds", "repository_poll_seconds"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"--{_flag(name)} must be a finite number >= 0, got {value}")
        if self.max_queue_samples < self.max_samples_per_request:
            raise ConfigError(f"--max-queue-samples ({self.max_queue_samples}) must be at least "
                              f"--max-samples-per-request ({self.max_samples_per_request})")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together: give both or neither")
        if self.workers > 1 and self.port == 0:
            raise ConfigError("--workers > 1 needs a fixed --port: with 0 each worker would get its own port")
        if self.device == "cpu" and self.cuda_graphs:
            raise ConfigError("--cuda-graphs needs the CUDA execution provider; it makes no sense with --device cpu")
        if self.device == "cpu" and self.cuda_tf32:
            raise ConfigError("--cuda-tf32 needs the CUDA execution provider; it makes no sense with --device cpu")
        if self.device == "cpu" and self.gpu_mem_limit:
            raise ConfigError("--gpu-mem-limit needs the CUDA execution provider; it makes no sense with --device cpu")

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def max_message_bytes(self) -> int:
        """Fits the largest allowed answer (float32 images and latents) and the largest Encode input."""
        per_sample = 4 * (MAX_IMAGE_ELEMENTS + 2 * MAX_LATENT_DIM)
        return min(_GRPC_MAX_MESSAGE, self.max_samples_per_request * per_sample + (1 << 20))

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
                  ) -> ServerConfig:
        """Flags win over AEGEN_* variables, which win over the defaults. Raises ConfigError."""
        import os
        import sys

        environ = os.environ if environ is None else environ
        argv = sys.argv[1:] if argv is None else argv
        parser = _parser()
        try:
            args = parser.parse_args(list(argv))
        except _ParseError as e:
            raise ConfigError(str(e)) from None
        values = {}
        for f in dataclasses.fields(cls):
            raw = getattr(args, f.name)
            if raw is None:
                raw = environ.get(env_var(f.name))
            if raw is None:
                continue
            values[f.name] = _convert(f.name, f.type, raw)
        return cls(**values)


def env_var(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def flag_table() -> list[tuple[str, str, str]]:
    """(flag, environment variable, default as text) for every setting, in declaration order."""
    rows = []
    for f in dataclasses.fields(ServerConfig):
        default = f.default
        if isinstance(default, bool):
            text = "on" if default else "off"
        elif default is None or default == ():
            text = ""
        else:
            text = str(default)
        rows.append((f"--{_flag(f.name)}", env_var(f.name), text))
    return rows


_HELP = {
    "repository": "model repository directory (<repo>/<model>/<version>/manifest.json)",
    "models": "comma-separated model names to serve (default: every model in the repository)",
    "host": "address to listen on",
    "port": "gRPC port",
    "metrics_port": "Prometheus /metrics port (0 disables)",
    "device": "auto: CUDA when it loads, else CPU with a warning; cuda: fail if unavailable; cpu",
    "max_batch_size": "most samples decoded in one batch",
    "max_queue_delay_us": "longest a request waits for others to join its batch, in microseconds",
    "max_queue_samples": "most samples queued per model version before RESOURCE_EXHAUSTED",
    "max_samples_per_request": "largest num_samples of GenerateSamples, Encode and Reconstruct",
    "max_samples_per_stream": "largest num_samples of StreamSamples",
    "grace_seconds": "on SIGTERM, how long in-flight calls may take to finish",
    "max_connection_age_seconds": "close client connections after this long, so load spreads again",
    "repository_poll_seconds": "how often to look for new model versions (0 disables)",
    "tls_cert": "PEM certificate chain file; with --tls-key, serve TLS",
    "tls_key": "PEM private key file",
    "log_format": "json (one object per line) or text",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
    "intra_op_threads": "onnxruntime intra-op threads per session (0: onnxruntime's default)",
    "workers": "server processes sharing the port (SO_REUSEPORT), each with its own sessions and batcher",
    "cuda_graphs": "capture a CUDA graph per batch-size bucket (CUDA only)",
    "cuda_tf32": "let float32 matrix products use TF32 tensor cores: faster, ~1e-3 off exact (CUDA only)",
    "cudnn_conv_algo_search": "cuDNN convolution algorithm search (CUDA only)",
    "gpu_mem_limit": "CUDA memory arena limit in bytes (0: unlimited; CUDA only)",
}


class _ParseError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse would print usage and exit; let the caller decide
        raise _ParseError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="aegen-serve", description="Serve a model repository over gRPC.",
                     epilog="Every flag has an environment variable: --max-batch-size is AEGEN_MAX_BATCH_SIZE.")
    for f in dataclasses.fields(ServerConfig):
        flag = f"--{_flag(f.name)}"
        help_text = f"{_HELP[f.name]} [env {env_var(f.name)}]"
        if f.type == "bool":
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, default=None, metavar=f.name.upper(), help=help_text)
    return parser


def _convert(name: str, type_name: str, raw: object) -> object:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip()
    try:
        if type_name == "int":
            return int(text)
        if type_name == "float":
            return float(text)
        if type_name == "bool":
            return _parse_bool(text)
    except ValueError:
        raise ConfigError(f"--{_flag(name)} / {env_var(name)}: expected {type_name}, got {text!r}") from None
    if type_name == "tuple[str, ...]":
        return tuple(part.strip() for part in text.split(",") if part.strip())
    if type_name == "str | None":
        return text or None
    if name in ("log_level", "cudnn_conv_algo_search"):
        return text.upper()
    return text


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(text)


def _check_choice(flag: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{flag} must be one of {', '.join(choices)}; got {value!r}")


def _flag(field_name: str) -> str:
    return field_name.replace("_", "-")
