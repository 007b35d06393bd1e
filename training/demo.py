"""`make demo`: train a VAE on the embedded digits, fit its learned latent sampler, and decode N(0, I) seeds
into a sample grid.

    python -m training.demo                 # ~3 minutes on 2 CPU cores; reuses runs/demo-vae if it matches

The recipe is the one docs/report/TUNING.md measured as the best that fits the demo's budget: a convolutional
VAE with latent 8, 20 epochs at a constant learning rate, no augmentation (augmentation and a cosine schedule
both cost validity at this latent size and budget), then a RealNVP flow over its training latents (runs/demo-vae/latent_flow.safetensors) that aegen-export ships
as the `flow` sampler's graph.

Then the report's two 2-D models of the digits 1 and 8 (docs/report: an MLP AE and VAE, latent 2, hidden
512, λ 2, 30 epochs; about 15 s each on one core), beside the VAE (runs/demo-vae2-1-8, runs/demo-ae2-1-8): make demo
exports them as digits18-vae2 and digits18-ae2, whose latent plane the browser page draws (docs/explorer.md).

Environment: AEGEN_DEMO_RUN (checkpoint directory, default runs/demo-vae), AEGEN_DEMO_OUT (output folder,
default demo-out), AEGEN_DEMO_EPOCHS, AEGEN_DEMO_PLANE_EPOCHS (the 2-D models' epochs; 0 trains none),
AEGEN_THREADS, AEGEN_DEVICE.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from protos.cli import env
from training import checkpoint as ckpt
from training.checkpoint import CheckpointError
from training.data import DataError
from training.grid import save_grid
from training.latent_sampler import FLOW_FILE, FlowError, FlowOptions, fit_checkpoint_flow, load_flow
from training.train import TrainError, TrainOptions, train

PLANE_CLASSES = (1, 8)  # the digits the report's 2-D models see, as in the course's figures


class DemoError(Exception):
    """A demo setting that cannot work (e.g. a non-numeric environment variable)."""


@dataclass(frozen=True)
class DemoConfig:
    run_dir: str = "runs/demo-vae"
    out_dir: str = "demo-out"
    epochs: int = 20
    arch: str = "conv"
    latent_dim: int = 8
    hidden_dim: int = 512
    kl_weight: float = 1.0
    lr_schedule: str = "constant"  # cosine lost validity at 20 epochs (docs/report/TUNING.md)
    augment: bool = False  # at latent 8 and 20 epochs augmentation cost validity (docs/report/TUNING.md)
    flow_epochs: int = 60  # the learned sampler's fit; 0 fits none
    samples: int = 64  # an 8×8 grid
    seed: int = 0
    # One thread by default: on a small shared machine, two threads that fight over two cores run
    # several times slower than one thread alone. AEGEN_THREADS=2 on a dedicated machine.
    threads: int = 1
    device: str = "auto"
    plane_epochs: int = 30  # the report's 2-D models of digits 1 and 8 (ReportOptions.epochs_2d); 0: none

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DemoConfig:
        d = cls()

        def number(name: str, default: int) -> int:
            text = env(name, str(default), environ)
            try:
                return int(text)
            except ValueError:
                raise DemoError(f"AEGEN_{name.upper()} must be an integer, got {text!r}") from None

        return cls(run_dir=env("demo_run", d.run_dir, environ), out_dir=env("demo_out", d.out_dir, environ),
                   epochs=number("demo_epochs", d.epochs), threads=number("threads", d.threads),
                   device=env("device", d.device, environ), plane_epochs=number("demo_plane_epochs", d.plane_epochs))

    def train_options(self) -> TrainOptions:
        return TrainOptions(kind="vae", arch=self.arch, latent_dim=self.latent_dim, hidden_dim=self.hidden_dim,
                            dataset="digits", epochs=self.epochs, seed=self.seed, out=self.run_dir,
                            kl_weight=self.kl_weight, lr_schedule=self.lr_schedule, augment=self.augment,
                            threads=self.threads, device=self.device)

    def plane_options(self) -> list[TrainOptions]:
        """The report's 2-D AE and VAE of digits 1 and 8: MLP, hidden 512, λ 2, BCE, lr 1e-3, no augmentation."""
        if self.plane_epochs <= 0:
            return []
        return [TrainOptions(kind=kind, arch="mlp", latent_dim=2, hidden_dim=512, dataset="digits", classes=PLANE_CLASSES,
                             epochs=self.plane_epochs, seed=self.seed, lr=1e-3, augment=False,
                             kl_weight=2.0 if kind == "vae" else 0.0,  # an AE's checkpoint records 0
                             out=str(Path(self.run_dir).parent / f"demo-{kind}2-1-8"), threads=self.threads,
                             device=self.device) for kind in ("vae", "ae")]


def _reusable(directory: Path, options: TrainOptions) -> bool:
    """True if `directory` holds a finished checkpoint of exactly this training run."""
    try:
        config = ckpt.read_config(directory)
    except CheckpointError:
        return False
    wanted = dataclasses.asdict(options.model_config())
    return (dataclasses.asdict(config.model) == wanted and config.dataset == options.dataset
            and config.classes == options.classes and config.epochs == options.epochs and config.seed == options.seed
            and config.loss == options.loss and config.kl_weight == options.kl_weight and config.limit is None
            and config.augment == options.augmented() and config.lr_schedule == options.lr_schedule
            and config.corrupt is None and config.kl_warmup_epochs == options.kl_warmup_epochs)


def _flow_reusable(directory: Path, epochs: int) -> bool:
    """True if `directory` holds a flow fitted to its current weights with this many epochs."""
    try:
        _, metadata = load_flow(directory / FLOW_FILE)
    except FlowError:
        return False
    return metadata.get("checkpoint_sha256") == ckpt.weights_sha256(directory) and metadata.get("epochs") == str(epochs)


def decode_seeds(directory: Path, count: int, seed: int) -> np.ndarray:
    """Decode `count` seeds z ~ N(0, I) drawn with numpy from `seed`: float images (count, 1, 28, 28)."""
    model, config = ckpt.load_model(directory)
    seeds = np.random.default_rng(seed).standard_normal((count, config.model.latent_dim)).astype(np.float32)
    with torch.no_grad():
        return model.decode(torch.from_numpy(seeds)).numpy()


def run(config: DemoConfig) -> Path:
    options = config.train_options()
    run_dir = Path(config.run_dir)
    if _reusable(run_dir, options):
        print(f"reusing the trained VAE in {run_dir} (delete it to train again)")
    else:
        print(f"training a VAE ({config.arch}, latent {config.latent_dim}"
              + (", augmented" if config.augment else "") + f") on the embedded digits for {config.epochs} epochs "
              f"→ {run_dir}")
        train(options)
    if config.flow_epochs > 0 and not _flow_reusable(run_dir, config.flow_epochs):
        print(f"fitting the learned latent sampler (RealNVP, {config.flow_epochs} epochs) → {run_dir / FLOW_FILE}")
        fit_checkpoint_flow(run_dir, FlowOptions(epochs=config.flow_epochs, seed=config.seed, threads=config.threads))
    for plane in config.plane_options():
        if _reusable(Path(plane.out), plane):
            print(f"reusing the 2-D {plane.kind.upper()} of digits 1 and 8 in {plane.out}")
        else:
            print(f"training the report's 2-D {plane.kind.upper()} (MLP, latent 2) on the digits 1 and 8 for "
                  f"{plane.epochs} epochs → {plane.out}")
            train(plane)
    metrics = ckpt.read_config(run_dir).metrics
    print("validation: " + "  ".join(f"{k} {v:.1f}" for k, v in metrics.items() if k.startswith("val_")))
    images = decode_seeds(run_dir, config.samples, config.seed)
    grid = save_grid(images, Path(config.out_dir) / "samples.png", nrow=8,
                     title=f"VAE (latent {config.latent_dim}) decoding {config.samples} seeds z ~ N(0, I)")
    return grid


def main() -> int:
    try:
        grid = run(DemoConfig.from_env())
    except (DemoError, TrainError, DataError, CheckpointError, FlowError) as exc:
        sys.stderr.write(f"demo: error: {exc}\n")
        return 2
    print(f"samples: {grid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
