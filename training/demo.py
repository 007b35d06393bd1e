"""`make demo`: train a VAE on the embedded digits and decode N(0, I) seeds into a sample grid.

    python -m training.demo                 # ~1–3 minutes on 2 CPU cores; reuses runs/demo-vae if it matches

Environment: AEGEN_DEMO_RUN (checkpoint directory, default runs/demo-vae), AEGEN_DEMO_OUT (output folder,
default demo-out), AEGEN_DEMO_EPOCHS, AEGEN_THREADS, AEGEN_DEVICE.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from training import checkpoint as ckpt
from training.checkpoint import CheckpointError
from training.data import DataError
from training.grid import save_grid
from training.train import TrainError, TrainOptions, train


class DemoError(Exception):
    """A demo setting that cannot work (e.g. a non-numeric environment variable)."""


@dataclass(frozen=True)
class DemoConfig:
    run_dir: str = "runs/demo-vae"
    out_dir: str = "demo-out"
    epochs: int = 30
    latent_dim: int = 16
    hidden_dim: int = 512
    samples: int = 64  # an 8×8 grid
    seed: int = 0
    # One thread by default: on a small shared machine, two threads that fight over two cores run
    # several times slower than one thread alone. AEGEN_THREADS=2 on a dedicated machine.
    threads: int = 1
    device: str = "auto"

    @classmethod
    def from_env(cls) -> DemoConfig:
        env, d = os.environ.get, cls()
        try:
            return cls(run_dir=env("AEGEN_DEMO_RUN", d.run_dir), out_dir=env("AEGEN_DEMO_OUT", d.out_dir),
                       epochs=int(env("AEGEN_DEMO_EPOCHS", d.epochs)), threads=int(env("AEGEN_THREADS", d.threads)),
                       device=env("AEGEN_DEVICE", d.device))
        except ValueError as exc:
            raise DemoError(f"AEGEN_DEMO_EPOCHS and AEGEN_THREADS must be integers ({exc})") from None

    def train_options(self) -> TrainOptions:
        return TrainOptions(kind="vae", arch="mlp", latent_dim=self.latent_dim, hidden_dim=self.hidden_dim,
                            dataset="digits", epochs=self.epochs, seed=self.seed, out=self.run_dir,
                            threads=self.threads, device=self.device)


def _reusable(directory: Path, options: TrainOptions) -> bool:
    """True if `directory` holds a finished checkpoint of exactly this training run."""
    try:
        config = ckpt.read_config(directory)
    except CheckpointError:
        return False
    wanted = dataclasses.asdict(options.model_config())
    return (dataclasses.asdict(config.model) == wanted and config.dataset == options.dataset
            and config.classes is None and config.epochs == options.epochs and config.seed == options.seed
            and config.loss == options.loss and config.kl_weight == options.kl_weight and config.limit is None)


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
        print(f"training a VAE (MLP, latent {config.latent_dim}) on the embedded digits for {config.epochs} "
              f"epochs → {run_dir}")
        train(options)
    metrics = ckpt.read_config(run_dir).metrics
    print("validation: " + "  ".join(f"{k} {v:.1f}" for k, v in metrics.items() if k.startswith("val_")))
    images = decode_seeds(run_dir, config.samples, config.seed)
    grid = save_grid(images, Path(config.out_dir) / "samples.png", nrow=8,
                     title=f"VAE (latent {config.latent_dim}) decoding {config.samples} seeds z ~ N(0, I)")
    return grid


def main() -> int:
    try:
        grid = run(DemoConfig.from_env())
    except (DemoError, TrainError, DataError, CheckpointError) as exc:
        sys.stderr.write(f"demo: error: {exc}\n")
        return 2
    print(f"samples: {grid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
