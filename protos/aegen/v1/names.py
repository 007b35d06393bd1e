"""The aegen.v1 enums by name: the one table of sampler and dtype names, derived from the proto itself.

`Sampler.SAMPLER_STANDARD_NORMAL` is the sampler `standard_normal`, `Dtype.DTYPE_UINT8` is `uint8`: the name
is the enum value's name less its prefix, in lower case. Every tool prints these names and accepts them with
`-` or `_` (`standard-normal` is `standard_normal`).
"""

from __future__ import annotations

from protos.aegen.v1 import generator_pb2 as pb


def _names(enum, prefix: str) -> dict[str, int]:
    return {name.removeprefix(prefix).lower(): number for name, number in enum.items()
            if not name.endswith("_UNSPECIFIED")}


SAMPLERS: dict[str, int] = _names(pb.Sampler, "SAMPLER_")  # "standard_normal" → SAMPLER_STANDARD_NORMAL
DTYPES: dict[str, int] = _names(pb.Dtype, "DTYPE_")  # "uint8" → DTYPE_UINT8
SAMPLER_NAMES: dict[int, str] = {number: name for name, number in SAMPLERS.items()}
DTYPE_NAMES: dict[int, str] = {number: name for name, number in DTYPES.items()}


def canonical(name: str) -> str:
    """`standard-normal`, `Standard_Normal` → `standard_normal`: the spelling every tool prints."""
    return name.strip().lower().replace("-", "_")
