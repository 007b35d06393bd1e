"""aegen-loadtest's configuration: the LoadTestConfig dataclass, its command-line flags and its
AEGEN_LOADTEST_<FLAG> environment variables (a flag wins over its variable, the variable over the default).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from client.flags import DEFAULT_TARGET, add_sampler_flag, add_server_flags
from protos.aegen.v1.names import DTYPES, SAMPLERS, canonical
from protos.cli import OneLineParser, env

ENV_PREFIX = "AEGEN_LOADTEST_"
# Large enough for 8192 float32 28×28 images (25.7 MB) with room to spare.
MAX_MESSAGE_BYTES = 256 * 1024 * 1024


class LoadTestError(Exception):
    """The load test cannot run: bad configuration, unreachable target, or a target that refuses the
    request outright. The message says which."""


@dataclass(frozen=True)
class LoadTestConfig:
    """One run: where to send what, at which load levels, for how long, and where to write results."""

    target: str = DEFAULT_TARGET
    model: str | None = None  # None: ask the server (client.client.default_model_name), once before the run
    num_samples: int = 1
    dtype: str = "uint8"
    sampler: str = "standard_normal"  # `standard-normal` is accepted and stored as `standard_normal`
    seed: int | None = None  # request i gets seed + i; None lets the server draw
    concurrency: tuple[int, ...] = (1, 4, 16, 64, 256)
    rate: tuple[float, ...] = ()  # non-empty: open loop at these request rates
    duration: float = 10.0  # seconds measured per level (unless requests is set)
    requests: int | None = None  # measured calls per level instead of a duration
    warmup: float = 2.0  # seconds per level before measuring
    max_level_time: float = 300.0  # hard cap per level, warm-up included
    call_timeout: float = 30.0  # deadline of each call
    connect_timeout: float = 5.0
    max_in_flight: int = 10000  # open loop: arrivals beyond this are counted as CLIENT_OVERLOADED
    channels: int = 1
    processes: int = 1
    tls: bool = False
    ca: str | None = None
    metrics_url: str | None = None
    out: str | None = None
    png: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "sampler", canonical(self.sampler))
        object.__setattr__(self, "dtype", canonical(self.dtype))
        problems = [
            (self.num_samples >= 1, f"--num-samples must be >= 1, got {self.num_samples}"),
            (self.dtype in DTYPES, f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}"),
            (self.sampler in SAMPLERS, f"--sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}"),
            (bool(self.concurrency) or bool(self.rate), "give --concurrency levels or --rate levels"),
            (all(c >= 1 for c in self.concurrency), f"--concurrency levels must be >= 1, got {self.concurrency}"),
            (all(r > 0 and math.isfinite(r) for r in self.rate), f"--rate levels must be > 0, got {self.rate}"),
            (self.duration > 0 and math.isfinite(self.duration), f"--duration must be > 0, got {self.duration}"),
            (self.requests is None or self.requests >= 1, f"--requests must be >= 1, got {self.requests}"),
            (self.warmup >= 0, f"--warmup must be >= 0, got {self.warmup}"),
            (self.max_level_time > self.warmup + (self.duration if self.requests is None else 0),
             f"--max-level-time ({self.max_level_time:g} s) must exceed --warmup plus --duration"),
            (self.call_timeout > 0, f"--call-timeout must be > 0, got {self.call_timeout}"),
            (self.connect_timeout > 0, f"--connect-timeout must be > 0, got {self.connect_timeout}"),
            (self.max_in_flight >= 1, f"--max-in-flight must be >= 1, got {self.max_in_flight}"),
            (self.channels >= 1, f"--channels must be >= 1, got {self.channels}"),
            (1 <= self.processes <= 64, f"--processes must be in 1..64, got {self.processes}"),
            (self.seed is None or 0 <= self.seed < 2**64, f"--seed must be in 0..2^64-1, got {self.seed}"),
            (self.ca is None or Path(self.ca).is_file(), f"--ca {self.ca}: no such file"),
        ]
        for ok, message in problems:
            if not ok:
                raise LoadTestError(message)

    @property
    def open_loop(self) -> bool:
        return bool(self.rate)

    @property
    def levels(self) -> tuple[float, ...]:
        return tuple(self.rate) if self.open_loop else tuple(float(c) for c in self.concurrency)


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _float_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _env(name: str, default: object) -> object:
    """AEGEN_LOADTEST_<NAME>, else `default`."""
    return env(ENV_PREFIX + name.upper(), default)


def build_parser(description: str = "") -> argparse.ArgumentParser:
    d = LoadTestConfig()
    p = OneLineParser(prog="aegen-loadtest", description=description,
                      epilog=f"Every flag can also be set as an environment variable {ENV_PREFIX}<FLAG> "
                             "(e.g. AEGEN_LOADTEST_TARGET).")
    add_server_flags(p, _env)
    p.add_argument("-n", "--num-samples", type=int, default=_env("num_samples", d.num_samples))
    p.add_argument("--dtype", type=canonical, choices=list(DTYPES), default=_env("dtype", d.dtype))
    add_sampler_flag(p, _env)
    p.add_argument("--seed", type=int, default=_env("seed", None),
                   help="request i gets seed + i (default: the server draws seeds)")
    p.add_argument("--concurrency", type=_int_list, default=_env("concurrency", "1,4,16,64,256"),
                   help="closed loop: calls in flight, comma-separated levels (default 1,4,16,64,256)")
    p.add_argument("--rate", type=_float_list, default=_env("rate", ""),
                   help="open loop: Poisson arrivals at these requests/s (replaces --concurrency)")
    p.add_argument("--duration", type=float, default=_env("duration", d.duration), help="seconds measured per level")
    p.add_argument("--requests", type=int, default=_env("requests", None),
                   help="measure this many calls per level instead of a duration")
    p.add_argument("--warmup", type=float, default=_env("warmup", d.warmup), help="unmeasured seconds per level")
    p.add_argument("--max-level-time", type=float, default=_env("max_level_time", d.max_level_time),
                   help="hard cap on one level's wall time, warm-up included")
    p.add_argument("--call-timeout", type=float, default=_env("call_timeout", d.call_timeout))
    p.add_argument("--connect-timeout", type=float, default=_env("connect_timeout", d.connect_timeout))
    p.add_argument("--max-in-flight", type=int, default=_env("max_in_flight", d.max_in_flight))
    p.add_argument("--channels", type=int, default=_env("channels", d.channels),
                   help="HTTP/2 connections per client process")
    p.add_argument("--processes", type=int, default=_env("processes", d.processes),
                   help="client processes sharing the load (one Python client saturates about one core)")
    p.add_argument("--metrics-url", default=_env("metrics_url", None),
                   help="the server's Prometheus endpoint, e.g. http://127.0.0.1:9100/metrics")
    p.add_argument("--out", default=_env("out", None), help="directory for loadtest.json, .csv and .png")
    p.add_argument("--no-png", dest="png", action="store_false")
    return p


def config_from_args(argv: Sequence[str] | None = None, description: str = "") -> LoadTestConfig:
    parser = build_parser(description)
    args = parser.parse_args(argv)
    # Environment defaults arrive as strings and skip argparse's type conversion for lists.
    for name, convert in (("concurrency", _int_list), ("rate", _float_list)):
        if isinstance(getattr(args, name), str):
            try:
                setattr(args, name, convert(getattr(args, name)))
            except argparse.ArgumentTypeError as exc:
                parser.error(f"{ENV_PREFIX}{name.upper()}: {exc}")
    try:
        values = vars(args)
        for name, kind in (("num_samples", int), ("seed", int), ("requests", int), ("duration", float),
                           ("warmup", float), ("max_level_time", float), ("call_timeout", float),
                           ("connect_timeout", float), ("max_in_flight", int), ("channels", int),
                           ("processes", int)):
            if values[name] is not None:
                values[name] = kind(values[name])
        return LoadTestConfig(**values)
    except ValueError as exc:
        parser.error(f"bad value in the environment: {exc}")
    except LoadTestError as exc:
        parser.error(str(exc))
    raise AssertionError("unreachable")
