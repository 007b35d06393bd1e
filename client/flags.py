"""The flags every client command line shares, spelled and defaulted once.

`--target` (where the server is), `--model` (absent: ask the server, see client.client.default_model_name),
`--tls` and `--ca` (how to reach it) and `--sampler` (either spelling in, the underscore one out). Each tool
passes its own environment lookup: aegen-sample reads AEGEN_<FLAG>, aegen-loadtest AEGEN_LOADTEST_<FLAG>.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from protos.aegen.v1.names import SAMPLERS, canonical

DEFAULT_TARGET = "localhost:50051"
MODEL_HELP = "model name (default: the first VAE the server lists, else its first model)"

# env(flag_name, default) → the value from the tool's environment variable, else `default`.
EnvLookup = Callable[[str, object], object]


def is_on(value: object) -> bool:
    """An environment switch: 1, true, yes, on (any case) turn it on."""
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def add_server_flags(parser: argparse.ArgumentParser, env: EnvLookup) -> None:
    """--target, --model, --tls, --ca."""
    parser.add_argument("--target", default=env("target", DEFAULT_TARGET),
                        help=f"server address HOST:PORT (default {DEFAULT_TARGET})")
    parser.add_argument("--model", default=env("model", None), help=MODEL_HELP)
    parser.add_argument("--tls", action="store_true", default=is_on(env("tls", "")),
                        help="connect with TLS (system root certificates unless --ca)")
    parser.add_argument("--ca", default=env("ca", None), help="PEM root certificate file (implies --tls)")


def add_sampler_flag(parser: argparse.ArgumentParser, env: EnvLookup) -> None:
    """--sampler NAME, with `-` or `_` (`standard-normal` is `standard_normal`)."""
    parser.add_argument("--sampler", type=canonical, choices=list(SAMPLERS),
                        default=env("sampler", "standard_normal"),
                        help="latent sampler (default standard_normal)")
