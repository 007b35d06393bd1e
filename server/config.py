"""ServerConfig: every setting of `aegen-serve`, from command-line flags and AEGEN_* environment variables.

The settings come in sections: the core's (server/core/settings.py: repository, device, batching, limits,
execution), each listener's (gRPC, metrics) and the process's (address, workers, shutdown grace, logs).
One flag/environment table covers them all: each field `some_name` is the flag `--some-name` and the
variable `AEGEN_SOME_NAME` (protos/cli.py); a flag given on the command line wins over the variable, the
variable over the default. `flag_table()` lists (flag, variable, default) so docs, deployment manifests and
their tests reuse these names instead of copying them.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from protos.cli import (
    EVENT_LOOPS,
    OneLineParser,
    SettingError,
    add_dataclass_flags,
    dataclass_values,
    default_text,
    env_var,
)
from protos.cli import flag as _flag
from server.core.settings import (
    MAX_IMAGE_ELEMENTS,
    MAX_LATENT_DIM,
    ConfigError,
    CoreSettings,
    check_at_least,
    check_choice,
    check_seconds,
)

LOG_FORMATS = ("json", "text")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

# Health service names: "" is the whole server (what Kubernetes' grpc probe asks by default).
HEALTH_SERVICES = ("", "aegen.v1.GeneratorService")

_GRPC_MAX_MESSAGE = 2**31 - 1


@dataclass(frozen=True)
class ProcessSettings:
    host: str = "0.0.0.0"  # every listener's address
    workers: int = 1
    grace_seconds: float = 20.0
    log_format: str = "json"
    log_level: str = "INFO"
    event_loop: str = "auto"  # auto: uvloop where installed, else asyncio's own
    # Admission of inference calls, per process, over every protocol (server/core/admission.py).
    max_inflight_calls: int = 1024
    max_wait_seconds: float = 10.0

    def __post_init__(self) -> None:
        check_choice("log_format", self.log_format, LOG_FORMATS)
        check_choice("log_level", self.log_level, LOG_LEVELS)
        check_choice("event_loop", self.event_loop, EVENT_LOOPS)
        if self.event_loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
            raise ConfigError("--event-loop uvloop: uvloop is not installed (pip install uvloop); use auto or asyncio")
        check_at_least(self, 1, "workers")
        check_at_least(self, 0, "max_inflight_calls")
        check_seconds(self, "grace_seconds", "max_wait_seconds")


@dataclass(frozen=True)
class GrpcSettings:
    port: int = 50051
    max_connection_age_seconds: float = 300.0
    tls_cert: str | None = None
    tls_key: str | None = None

    def __post_init__(self) -> None:
        _check_port(self, "port")
        check_seconds(self, "max_connection_age_seconds")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together: give both or neither")

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None


@dataclass(frozen=True)
class HttpSettings:
    http_port: int = 8000  # the Open Inference Protocol over HTTP/REST; 0 turns it off
    max_body_bytes: int = 268435456  # larger request bodies get 413
    max_header_bytes: int = 16384  # larger request header blocks get 431
    client_timeout_seconds: float = 60.0  # a request's head, then its body, must arrive within this: else 408
    ui: bool = True  # the latent explorer page at / (server/ui); --no-ui turns it off

    def __post_init__(self) -> None:
        _check_port(self, "http_port")
        check_at_least(self, 1, "max_body_bytes", "max_header_bytes")
        check_seconds(self, "client_timeout_seconds")


@dataclass(frozen=True)
class MetricsSettings:
    metrics_port: int = 9464  # 0 disables the metrics endpoint

    def __post_init__(self) -> None:
        _check_port(self, "metrics_port")


SECTIONS = {"core": CoreSettings, "process": ProcessSettings, "grpc": GrpcSettings, "http": HttpSettings,
            "metrics": MetricsSettings}


@dataclass(frozen=True)
class ServerConfig:
    core: CoreSettings = field(default_factory=CoreSettings)
    process: ProcessSettings = field(default_factory=ProcessSettings)
    grpc: GrpcSettings = field(default_factory=GrpcSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)

    def __post_init__(self) -> None:
        if self.process.workers > 1 and self.grpc.port == 0:
            raise ConfigError("--workers > 1 needs a fixed --port: with 0 each worker would get its own port")

    def max_message_bytes(self) -> int:
        """Fits the largest allowed answer (float32 images and latents) and the largest Encode input."""
        per_sample = 4 * (MAX_IMAGE_ELEMENTS + 2 * MAX_LATENT_DIM)
        return min(_GRPC_MAX_MESSAGE, self.core.max_samples_per_request * per_sample + (1 << 20))

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
                  ) -> ServerConfig:
        """Flags win over AEGEN_* variables, which win over the defaults. Raises ConfigError."""
        environ = os.environ if environ is None else environ
        argv = sys.argv[1:] if argv is None else argv
        try:
            args = _parser().parse_args(list(argv))
        except _ParseError as exc:
            raise ConfigError(str(exc)) from None
        try:
            sections = {name: section(**dataclass_values(section, args, environ, _UPPER))
                        for name, section in SECTIONS.items()}
        except SettingError as exc:
            raise ConfigError(str(exc)) from None
        return cls(**sections)

    @classmethod
    def of(cls, **values: object) -> ServerConfig:
        """A config from flat field names (`ServerConfig.of(port=0, device="cpu")`), for tests and tools."""
        unknown = set(values) - {f.name for section in SECTIONS.values() for f in dataclasses.fields(section)}
        if unknown:
            raise TypeError(f"no such settings: {', '.join(sorted(unknown))}")
        return cls(**{name: section(**{f.name: values[f.name] for f in dataclasses.fields(section)
                                       if f.name in values})
                      for name, section in SECTIONS.items()})


def setting_fields() -> list[dataclasses.Field]:
    """Every setting's field, section by section, in declaration order."""
    return [f for section in SECTIONS.values() for f in dataclasses.fields(section)]


def flag_table() -> list[tuple[str, str, str]]:
    """(flag, environment variable, default as text) for every setting, in declaration order."""
    return [(_flag(f.name), env_var(f.name), default_text(f.default)) for f in setting_fields()]


_UPPER = ("log_level", "cudnn_conv_algo_search")

_HELP = {
    "repository": "model repository directory (<repo>/<model>/<version>/manifest.json)",
    "models": "comma-separated model names to serve (default: every model in the repository)",
    "version_policy": "versions of each model to serve: latest:N (the N newest that load), all, or specific:1,3",
    "host": "address to listen on",
    "port": "gRPC port",
    "metrics_port": "Prometheus /metrics port (0 disables)",
    "http_port": "Open Inference Protocol HTTP/REST port (0 disables)",
    "max_body_bytes": "largest HTTP request body accepted (413 above it)",
    "max_header_bytes": "largest HTTP request header block accepted, request line included (431 above it)",
    "client_timeout_seconds": "an HTTP request's head, and then its body, must arrive within this (408 after; 0: "
                              "no limit)",
    "max_inflight_calls": "inference calls in flight per process, all protocols; more are refused at once "
                          "(RESOURCE_EXHAUSTED / 429; 0: no limit)",
    "max_wait_seconds": "refuse a call at once when the calls ahead would take longer than this, or than its "
                        "deadline (0: no limit)",
    "ui": "serve the latent explorer, a browser page, at / on the HTTP port (--no-ui: the API alone)",
    "device": "auto: CUDA when it loads, else CPU with a warning; cuda: fail if unavailable; cpu",
    "max_batch_size": "most samples decoded in one batch",
    "max_queue_delay_us": "fixed wait for others to join a batch, in microseconds (0: the adaptive delay decides)",
    "adaptive_queue_delay_us": "longest a batch waits for company while calls keep arriving, in microseconds "
                               "(never at one call in flight; 0: off)",
    "inline_batch_samples": "a lone call of up to this many samples (the inference thread idle, the previous "
                            "batch one request) is decoded on the event loop, without two thread hand-offs "
                            "(0: never; off with a fixed --max-queue-delay-us)",
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
    "event_loop": "auto (uvloop where installed, else asyncio), uvloop, or asyncio",
    "intra_op_threads": "onnxruntime intra-op threads per session (0: onnxruntime's default)",
    "small_batch_samples": "on CPU, batches of up to this many samples run on a single-threaded session (0: off)",
    "spin_batch_samples": "on CPU, a request of at least this many samples batched alone runs on an onnxruntime "
                          "pool whose threads spin between runs: lower latency at a light load (0: never)",
    "decoder_precision": "fp32, or int8: decode with the version's int8 decoders (aegen-export --int8) where "
                         "it has them",
    "workers": "server processes sharing the port (SO_REUSEPORT), each with its own sessions and batcher",
    "cuda_graphs": "capture a CUDA graph per batch-size bucket (CUDA only)",
    "cuda_tf32": "let float32 matrix products use TF32 tensor cores: faster, ~1e-3 off exact (CUDA only)",
    "cudnn_conv_algo_search": "cuDNN convolution algorithm search (CUDA only)",
    "gpu_mem_limit": "CUDA memory arena limit in bytes (0: unlimited; CUDA only)",
}


class _ParseError(Exception):
    pass


class _Parser(OneLineParser):
    def error(self, message: str) -> None:  # type: ignore[override] - ConfigError, and the caller prints it
        raise _ParseError(message)


def _parser() -> _Parser:
    parser = _Parser(prog="aegen-serve", description="Serve a model repository over gRPC.",
                     epilog="Every flag has an environment variable: --max-batch-size is AEGEN_MAX_BATCH_SIZE.")
    for section in SECTIONS.values():
        add_dataclass_flags(parser, section, _HELP)
    return parser


def _check_port(settings: object, name: str) -> None:
    value = getattr(settings, name)
    if not 0 <= value <= 65535:
        raise ConfigError(f"--{name.replace('_', '-')} must be a port in 0..65535, got {value}")


__all__ = ["HEALTH_SERVICES", "MAX_IMAGE_ELEMENTS", "ConfigError", "CoreSettings", "GrpcSettings", "HttpSettings",
           "MetricsSettings", "ProcessSettings", "ServerConfig", "env_var", "flag_table"]
