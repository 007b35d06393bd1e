"""A learned latent sampler: a small RealNVP flow fitted to where the encoder puts the training images.

A VAE's aggregate posterior q(z) = E_x q(z | x) rarely fills N(0, I): seeds from the prior that land where no
training latent lies decode to blends of digits. Ex-post density estimation (Ghosh et al. 2020, §4) fits a
density to the training latent means instead; the Gaussian mixture (export/latent_samplers.py) is one, this
normalising flow is a more flexible one (Dinh, Sohl-Dickstein & Bengio 2017, "Density estimation using Real
NVP"): an invertible map f from latents z to noise ε with a tractable Jacobian, trained by maximum likelihood

    log p(z) = log N(f(z); 0, I) + log |det ∂f/∂z|,

and sampled by pushing ε ~ N(0, I) through f⁻¹. Each affine coupling keeps half the units (the mask m) and
moves the others: y = m⊙x + (1 − m)⊙(x·exp(s(m⊙x)) + t(m⊙x)), log |det| = Σ (1 − m)⊙s; its inverse uses
the same s and t, so sampling costs as much as scoring.

`python -m training.latent_sampler runs/x` (or `aegen-train --latent-flow`) fits it to a checkpoint's training
latent means and writes runs/x/latent_flow.safetensors, tied to the weights by their SHA-256; aegen-export
turns it into the version's latent_flow.onnx.

`LatentFlow.forward(noise)` is the sampling direction, ε (n, d) → z (n, d): that is what export turns into the
`latent_flow` graph, so the server can feed it the same seeded N(0, I) noise it draws for `standard_normal`.
Training is seeded and, on the CPU, deterministic.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from protos.atomic import atomic_write_bytes
from protos.cli import OneLineParser, env, fail


class FlowError(Exception):
    """The latents cannot support the fit (too few, not finite), or the fit diverged."""


@dataclass(frozen=True)
class FlowOptions:
    couplings: int = 8  # affine coupling layers, masks alternating between the two halves of the units
    hidden: int = 128  # width of each coupling's s/t network (two hidden layers)
    epochs: int = 150
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-5
    seed: int = 0
    threads: int | None = None


class AffineCoupling(nn.Module):
    """One RealNVP coupling; `mask` (d,) is 1 on the units that stay and condition the others."""

    def __init__(self, mask: torch.Tensor, hidden: int) -> None:
        super().__init__()
        d = len(mask)
        self.register_buffer("mask", mask.float())
        self.net = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 2 * d))
        nn.init.zeros_(self.net[-1].weight)  # start as the identity: the flow begins as N(0, I) on the
        nn.init.zeros_(self.net[-1].bias)  # standardised latents, i.e. as the fitted diagonal Gaussian
        # tanh bounds the log-scale; this learned factor lets it grow where the data needs it (Dinh et al. §4.1)
        self.scale = nn.Parameter(torch.ones(d))

    def _s_t(self, kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self.net(kept).chunk(2, dim=1)
        free = 1 - self.mask
        return self.scale * torch.tanh(s) * free, t * free

    def to_noise(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self._s_t(x * self.mask)
        return x * torch.exp(s) + t, s.sum(dim=1)

    def to_latent(self, y: torch.Tensor) -> torch.Tensor:
        s, t = self._s_t(y * self.mask)  # the kept units are unchanged, so s and t are those of the forward pass
        return (y - t) * torch.exp(-s)


class LatentFlow(nn.Module):
    """z = mean + std ⊙ g(ε), g the inverse of the couplings; `forward` is the sampling direction."""

    def __init__(self, latent_dim: int, couplings: int = 8, hidden: int = 128,
                 mean: torch.Tensor | None = None, std: torch.Tensor | None = None) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.register_buffer("mean", torch.zeros(latent_dim) if mean is None else mean.float())
        self.register_buffer("std", torch.ones(latent_dim) if std is None else std.float())
        half = torch.arange(latent_dim) % 2  # alternate units: with d = 1 every other layer moves the unit
        masks = [half if i % 2 == 0 else 1 - half for i in range(couplings)]
        if latent_dim == 1:
            masks = [torch.zeros(1) for _ in range(couplings)]  # one unit: nothing to condition on, an affine map
        self.couplings = nn.ModuleList(AffineCoupling(m, hidden) for m in masks)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) per row, in nats (the standardisation's Jacobian included)."""
        x = (z - self.mean) / self.std
        log_det = -torch.log(self.std).sum().expand(len(z))
        for coupling in self.couplings:
            x, ld = coupling.to_noise(x)
            log_det = log_det + ld
        return -0.5 * (x.pow(2).sum(dim=1) + self.latent_dim * math.log(2 * math.pi)) + log_det

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        """ε (n, d) ~ N(0, I) → latents (n, d) distributed as the fitted density."""
        y = noise
        for coupling in reversed(self.couplings):
            y = coupling.to_latent(y)
        return self.mean + self.std * y

    sample_from_noise = forward


def _checked(latents: np.ndarray) -> torch.Tensor:
    z = np.asarray(latents, dtype=np.float32)
    if z.ndim != 2 or len(z) < 16:
        raise FlowError(f"need a (n ≥ 16, d) array of training latents to fit the flow, got shape {z.shape}")
    if not np.all(np.isfinite(z)):
        raise FlowError("the training latents hold non-finite values")
    return torch.from_numpy(z)


def train_flow(latents: np.ndarray, options: FlowOptions = FlowOptions()) -> LatentFlow:
    """Fit a LatentFlow to `latents` (n, d) by maximum likelihood; returned on the CPU in eval mode.

    Deterministic on the CPU for the same latents, options and thread count."""
    z = _checked(latents)
    old_deterministic, old_threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    try:
        torch.use_deterministic_algorithms(True)
        if options.threads is not None:
            torch.set_num_threads(options.threads)
        torch.manual_seed(options.seed)
        flow = LatentFlow(z.shape[1], options.couplings, options.hidden,
                          mean=z.mean(dim=0), std=z.std(dim=0).clamp(min=1e-4))
        optimizer = torch.optim.Adam(flow.parameters(), lr=options.lr, weight_decay=options.weight_decay)
        steps = math.ceil(len(z) / options.batch_size)
        total = options.epochs * steps
        generator = torch.Generator().manual_seed(options.seed)
        flow.train()
        for epoch in range(options.epochs):
            order = torch.randperm(len(z), generator=generator)
            for step in range(steps):
                # cosine decay: the last epochs settle the density instead of jittering around it
                done = (epoch * steps + step) / total
                for group in optimizer.param_groups:
                    group["lr"] = options.lr * 0.5 * (1 + math.cos(math.pi * done))
                batch = z[order[step * options.batch_size:(step + 1) * options.batch_size]]
                loss = -flow.log_prob(batch).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(flow.parameters(), 10.0)
                optimizer.step()
            if not math.isfinite(float(loss.detach())):
                raise FlowError(f"the flow's loss became {float(loss.detach())} in epoch {epoch + 1}")
    finally:
        torch.use_deterministic_algorithms(old_deterministic)
        torch.set_num_threads(old_threads)
    return flow.eval()


@torch.no_grad()
def mean_log_likelihood(flow: LatentFlow, latents: np.ndarray) -> float:
    """Mean log p(z) of `latents` under the flow, nats per latent vector."""
    return float(flow.log_prob(_checked(latents)).mean())


# --- the flow beside its checkpoint -----------------------------------------------------------------

FLOW_FILE = "latent_flow.safetensors"
FLOW_FORMAT = "aegen-latent-flow/1"


def save_flow(flow: LatentFlow, path: str | Path, checkpoint_sha256: str, details: dict[str, float | int]) -> Path:
    """Weights and what they were fitted to (the checkpoint's weights SHA-256), atomically, no pickle."""
    metadata = {"format": FLOW_FORMAT, "latent_dim": str(flow.latent_dim), "couplings": str(len(flow.couplings)),
                "hidden": str(flow.couplings[0].net[0].out_features), "checkpoint_sha256": checkpoint_sha256,
                **{k: str(v) for k, v in details.items()}}
    tensors = {k: v.detach().contiguous() for k, v in flow.state_dict().items()}
    atomic_write_bytes(path, st_save(tensors, metadata=metadata))
    return Path(path)


def load_flow(path: str | Path) -> tuple[LatentFlow, dict[str, str]]:
    """A saved flow in eval mode and its metadata; FlowError if the file is not one."""
    path = Path(path)
    try:
        data = path.read_bytes()
        metadata = safe_open_metadata(data)
        state = st_load(data)
    except FileNotFoundError:
        raise FlowError(f"{path}: missing") from None
    except (SafetensorError, ValueError, RuntimeError, OSError) as exc:
        raise FlowError(f"{path}: not a valid safetensors file ({exc})") from None
    if metadata.get("format") != FLOW_FORMAT:
        raise FlowError(f"{path}: format is {metadata.get('format')!r}, expected {FLOW_FORMAT!r}")
    try:
        flow = LatentFlow(int(metadata["latent_dim"]), int(metadata["couplings"]), int(metadata["hidden"]))
        flow.load_state_dict(state, strict=True)
    except (KeyError, ValueError, RuntimeError) as exc:
        raise FlowError(f"{path}: does not describe a latent flow ({str(exc).splitlines()[0][:200]})") from None
    return flow.eval(), metadata


def safe_open_metadata(data: bytes) -> dict[str, str]:
    """The JSON header's __metadata__ of a safetensors blob (u64 length, then JSON)."""
    length = int.from_bytes(data[:8], "little")
    if len(data) < 8 or length > len(data) - 8:
        raise ValueError("truncated header")
    return dict(json.loads(data[8:8 + length]).get("__metadata__") or {})


def fit_checkpoint_flow(directory: str | Path, options: FlowOptions = FlowOptions()) -> Path:
    """Fit the flow to a checkpoint's training latent means (its own split) and save it beside the weights."""
    from training.checkpoint import load_model, weights_sha256
    from training.data import to_unit_float
    from training.evaluate import checkpoint_split, encode_means

    model, config = load_model(directory)
    split = checkpoint_split(config)
    latents = encode_means(model, to_unit_float(split.train_images)).astype(np.float32)
    val = encode_means(model, to_unit_float(split.val_images)).astype(np.float32)
    flow = train_flow(latents, options)
    details = {"epochs": options.epochs, "seed": options.seed, "fitted_on": len(latents),
               "train_mean_log_likelihood": round(mean_log_likelihood(flow, latents), 6),
               "val_mean_log_likelihood": round(mean_log_likelihood(flow, val), 6) if len(val) >= 16 else "nan"}
    return save_flow(flow, Path(directory) / FLOW_FILE, weights_sha256(directory), details)


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="aegen-fit-flow", description="Fit the RealNVP latent sampler to a checkpoint's "
                      f"training latents and write {FLOW_FILE} beside it (aegen-export exports it).")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--epochs", type=int, default=FlowOptions.epochs)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=env("threads", "1"), help="torch CPU threads (env AEGEN_THREADS)")
    args = p.parse_args(argv)
    if args.epochs < 1:
        p.error(f"--epochs must be ≥ 1, got {args.epochs}")
    from training.checkpoint import CheckpointError
    from training.data import DataError
    try:
        path = fit_checkpoint_flow(args.checkpoint, FlowOptions(epochs=args.epochs, seed=args.seed,
                                                                threads=args.threads))
    except (FlowError, CheckpointError, DataError, OSError) as exc:
        return fail("aegen-fit-flow", exc)
    _, metadata = load_flow(path)
    print(f"wrote {path}: {metadata['couplings']} couplings, mean log-likelihood "
          f"{metadata['train_mean_log_likelihood']} (training latents), {metadata['val_mean_log_likelihood']} "
          f"(validation)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
