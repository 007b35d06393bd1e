"""`aegen-eval`: how good are a checkpoint's generated samples, judged by the shipped digit classifier.

    aegen-eval runs/vae16 --samples 10000 --fitted --json runs/vae16/eval.json

Sample metrics (`sample_metrics`), on images decoded from N(0, I) seeds (and, with --fitted, from seeds
drawn from a Gaussian fitted to the training latents, "the region we guess is the latent space"):

- validity: share of samples the classifier labels a digit (not class 10, "not a digit") with max
  softmax ≥ 0.9;
- coverage: normalised entropy H(ĉ) / log 10 of the predicted-digit histogram of the samples labelled a
  digit (1.0 = every digit equally often, 0 = always the same digit);
- FCD, the Fréchet Classifier Distance: the Fréchet distance between Gaussians fitted to the classifier's
  penultimate-layer features (128-d) of the samples and of held-out real images. It is NOT the
  Inception FID (no Inception network, different features and scale): compare FCDs only with FCDs;
- IS, the classifier Inception Score exp E_x[KL(p(y|x) ‖ p(y))] over the 10 digit classes (class 10
  dropped and p(y|x) renormalised), from 1 (one class, or no information) to 10.

Checkpoint metrics on the validation split, as aegen-train computes them: reconstruction error under the
checkpoint's loss (nats per image), and for a VAE the KL and the ELBO per image, E_q[log p(x|z)] − KL with
λ = 1 whatever λ training used; plus the per-pixel MSE of reconstructions, comparable across losses.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from protos.atomic import atomic_write_text
from protos.cli import OneLineParser, env, fail
from training.augment import Corruption, psnr
from training.checkpoint import CheckpointConfig, CheckpointError, load_model
from training.classifier import (
    NOT_A_DIGIT,
    ClassifierError,
    DigitClassifier,
    Prediction,
    load_classifier,
    predict,
)
from training.data import DataError, Split, to_unit_float
from training.models import AutoEncoder
from training.train import TrainError, TrainOptions, prepare_data, validate

__all__ = [
    "EvalError",
    "EvalOptions",
    "LatentGaussian",
    "class_coverage",
    "decode_seeds",
    "evaluate_checkpoint",
    "fit_latent_gaussian",
    "frechet_distance",
    "inception_score",
    "load_classifier",
    "main",
    "normal_seeds",
    "sample_metrics",
]

DIGIT_DATASETS = ("digits", "mnist")  # the classifier knows digits; Fashion-MNIST gets no sample metrics
SAMPLE_METRICS = ("validity", "coverage", "fcd", "inception_score")


class EvalError(Exception):
    """Evaluation cannot run as asked; the message says why."""


# --- sample metrics ---------------------------------------------------------------------------------

def class_coverage(pred: Prediction) -> float:
    """Normalised entropy of the predicted-digit histogram over the samples labelled a digit."""
    digits = pred.labels[pred.labels != NOT_A_DIGIT]
    if digits.size == 0:
        return 0.0
    p = np.bincount(digits, minlength=10) / digits.size
    p = p[p > 0]
    return float(-(p * np.log(p)).sum() / np.log(10))


def inception_score(pred: Prediction) -> float:
    """exp E_x[KL(p(y|x) ‖ p(y))] over the 10 digit classes (Salimans et al. 2016, with our classifier)."""
    p_yx = pred.probs[:, :NOT_A_DIGIT]
    p_yx = p_yx / p_yx.sum(axis=1, keepdims=True).clip(min=1e-12)
    p_y = p_yx.mean(axis=0, keepdims=True)
    kl = (p_yx * (np.log(p_yx.clip(min=1e-12)) - np.log(p_y.clip(min=1e-12)))).sum(axis=1)
    return float(np.exp(kl.mean()))


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(w.clip(min=0))) @ v.T


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """‖μa − μb‖² + tr(Ca + Cb − 2 (Ca^½ Cb Ca^½)^½), the Fréchet distance of two fitted Gaussians
    (Dowson & Landau 1982; Heusel et al. 2017). tr (Ca Cb)^½ equals tr (Ca^½ Cb Ca^½)^½, and the latter is
    symmetric, so numpy's eigh suffices (no scipy)."""
    if len(feats_a) < 2 or len(feats_b) < 2:
        raise EvalError("the Fréchet distance needs at least two images on each side")
    mu_a, mu_b = feats_a.mean(axis=0), feats_b.mean(axis=0)
    cov_a, cov_b = np.cov(feats_a, rowvar=False), np.cov(feats_b, rowvar=False)
    root_a = _sqrtm_psd(cov_a)
    cross = np.sqrt(np.linalg.eigvalsh(root_a @ cov_b @ root_a).clip(min=0)).sum()
    distance = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * cross
    return float(max(distance, 0.0))  # rounding in the eigenvalues can leave −1e-5 for identical sets


def _as_images(images: np.ndarray | torch.Tensor, what: str) -> torch.Tensor:
    x = torch.as_tensor(images, dtype=torch.float32)
    if x.ndim != 4 or tuple(x.shape[1:]) != (1, 28, 28):
        raise EvalError(f"{what}: expected images of shape (N, 1, 28, 28), got {tuple(x.shape)}")
    if len(x) == 0 or not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise EvalError(f"{what}: expected a non-empty batch of finite pixels in [0, 1]")
    return x


def sample_metrics(images: np.ndarray | torch.Tensor, real_val_images: np.ndarray | torch.Tensor,
                   classifier: DigitClassifier | None = None) -> dict[str, float]:
    """validity, coverage, FCD (against `real_val_images`) and IS of float images (N, 1, 28, 28) in [0, 1].
    Pass `classifier` to reuse a loaded one; by default the shipped classifier is loaded."""
    model = classifier if classifier is not None else load_classifier()
    gen = predict(model, _as_images(images, "generated images"))
    real = predict(model, _as_images(real_val_images, "real images"))
    return {
        "validity": float(gen.valid.mean()),
        "coverage": class_coverage(gen),
        "fcd": frechet_distance(gen.features, real.features),
        "inception_score": inception_score(gen),
    }


# --- samplers ---------------------------------------------------------------------------------------

def normal_seeds(n: int, latent_dim: int, seed: int = 0) -> torch.Tensor:
    """n latent seeds from N(0, I), reproducible from `seed`."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, latent_dim, generator=g)


@dataclass(frozen=True)
class LatentGaussian:
    """N(mean, cov) fitted to a model's training latents (for a VAE, the encoder means)."""

    mean: np.ndarray  # (latent_dim,)
    cov: np.ndarray  # (latent_dim, latent_dim)

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        # A small ridge keeps the Cholesky factor defined when some latent direction is unused.
        chol = np.linalg.cholesky(self.cov + 1e-6 * np.eye(len(self.mean)))
        eps = normal_seeds(n, len(self.mean), seed).double().numpy()
        return torch.from_numpy(self.mean + eps @ chol.T).float()


def mixture_log_density(weights: np.ndarray, means: np.ndarray, covs: np.ndarray, z: np.ndarray) -> np.ndarray:
    """log Σ_j w_j N(z; μ_j, Σ_j) per row of z (N, d), for a full-covariance Gaussian mixture (k, d, d)."""
    z = np.asarray(z, dtype=np.float64)
    log_prob = np.empty((len(z), len(weights)))
    for j, (mean, cov) in enumerate(zip(means, covs, strict=True)):
        chol = np.linalg.cholesky(cov)
        solved = np.linalg.solve(chol, (z - mean).T)  # L⁻¹(z − μ): its squared norm is the Mahalanobis distance
        log_prob[:, j] = -0.5 * (z.shape[1] * np.log(2 * np.pi) + 2 * np.log(np.diag(chol)).sum()
                                 + (solved**2).sum(axis=0))
    weighted = log_prob + np.log(np.maximum(weights, np.finfo(np.float64).tiny))
    top = weighted.max(axis=1, keepdims=True)
    return top[:, 0] + np.log(np.exp(weighted - top).sum(axis=1))


@torch.no_grad()
def encode_means(model: AutoEncoder, images: np.ndarray | torch.Tensor, batch_size: int = 1000) -> np.ndarray:
    """Latent codes of float images: z for an AE, the mean M of q(z|x) for a VAE."""
    model.eval()
    out = []
    for chunk in torch.as_tensor(images, dtype=torch.float32).split(batch_size):
        z = model.encode(chunk)
        out.append(z[0] if isinstance(z, tuple) else z)
    return torch.cat(out).double().numpy()


def fit_latent_gaussian(model: AutoEncoder, images: np.ndarray | torch.Tensor) -> LatentGaussian:
    z = encode_means(model, images)
    return LatentGaussian(z.mean(axis=0), np.atleast_2d(np.cov(z, rowvar=False)))


@torch.no_grad()
def decode_seeds(model: AutoEncoder, seeds: torch.Tensor, batch_size: int = 1000) -> np.ndarray:
    """Decode latent seeds (N, latent_dim) into float images (N, 1, 28, 28) in [0, 1]."""
    model.eval()
    return torch.cat([model.decode(chunk) for chunk in seeds.split(batch_size)]).numpy()


# --- checkpoint metrics -----------------------------------------------------------------------------

def reconstruction_metrics(model: AutoEncoder, config: CheckpointConfig, split: Split) -> dict[str, float]:
    """The validation split's reconstruction error under the checkpoint's own loss and, for a VAE, KL and
    ELBO (aegen-train's `validate`, so the numbers match the training log), plus the per-pixel MSE of
    the reconstructions from z = M, which compares models trained with different losses."""
    metrics = validate(model, split.val_images, config.loss, torch.device("cpu"), config.seed)
    x = torch.from_numpy(to_unit_float(split.val_images))
    with torch.no_grad():
        z = encode_means(model, x)
        mse = float(((decode_seeds(model, torch.from_numpy(z).float()) - x.numpy()) ** 2).mean())
    return {**metrics, "val_mse_per_pixel": mse}


@torch.no_grad()
def denoising_metrics(model: AutoEncoder, clean: np.ndarray, corruption: Corruption, seed: int = 0,
                      batch_size: int = 1000) -> dict[str, Any]:
    """PSNR against the clean images of the corrupted images and of their reconstructions (z = M).

    Also returns the first images of each, for grids: `clean`, `corrupted`, `reconstructed` (float, N×1×28×28)."""
    model.eval()
    x = torch.as_tensor(clean, dtype=torch.float32)
    noisy = corruption.apply(x, torch.Generator().manual_seed(seed))
    restored = []
    for chunk in noisy.split(batch_size):
        z = model.encode(chunk)
        restored.append(model.decode(z[0] if isinstance(z, tuple) else z))
    restored = torch.cat(restored)
    return {"corruption": str(corruption), "images": len(x), "psnr_corrupted": psnr(x, noisy),
            "psnr_reconstructed": psnr(x, restored),
            "examples": {"clean": x[:16].numpy(), "corrupted": noisy[:16].numpy(), "reconstructed": restored[:16].numpy()}}


# --- the command ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EvalOptions:
    checkpoint: Path
    samples: int = 10_000
    fitted: bool = False  # also sample from a Gaussian fitted to the training latents
    corrupt: str | None = None  # also measure denoising: PSNR of corrupted and reconstructed validation images
    seed: int = 0
    json_path: Path | None = None
    data_dir: Path | None = None  # IDX directory for mnist / fashion-mnist checkpoints
    threads: int = 1

    def __post_init__(self) -> None:
        if not 2 <= self.samples <= 1_000_000:
            raise EvalError(f"--samples must be in 2..1000000, got {self.samples}")
        if self.corrupt is not None:
            try:
                Corruption.parse(self.corrupt)
            except ValueError as exc:
                raise EvalError(f"--corrupt: {exc}") from None


def checkpoint_split(config: CheckpointConfig, data_dir: str | Path | None = None) -> Split:
    """The data a checkpoint was trained on, split (and limited) exactly as aegen-train did."""
    return prepare_data(TrainOptions(dataset=config.dataset, data_dir=None if data_dir is None else str(data_dir),
                                     classes=config.classes, val_fraction=config.val_fraction, seed=config.seed,
                                     limit=config.limit))


def evaluate_checkpoint(options: EvalOptions) -> dict[str, Any]:
    model, config = load_model(options.checkpoint)
    split = checkpoint_split(config, options.data_dir)
    train_x, val_x = to_unit_float(split.train_images), to_unit_float(split.val_images)
    result: dict[str, Any] = {"checkpoint": str(options.checkpoint), "kind": config.model.kind,
                              "arch": config.model.arch, "latent_dim": config.model.latent_dim,
                              "dataset": config.dataset, "classes": config.classes, "samples": options.samples,
                              "seed": options.seed, "validation_images": len(val_x)}
    steps = ["reconstruction"] + (["N(0,1)", "fitted"] if options.fitted else ["N(0,1)"])
    digits = config.dataset in DIGIT_DATASETS
    if not digits:
        result["note"] = f"no sample metrics: the digit classifier does not judge {config.dataset} images"
    classifier = load_classifier() if digits else None
    for step in tqdm(steps, desc="aegen-eval", unit="step"):
        if step == "reconstruction":
            result["reconstruction"] = reconstruction_metrics(model, config, split)
            if options.corrupt is not None:
                denoising = denoising_metrics(model, val_x, Corruption.parse(options.corrupt), options.seed)
                result["denoising"] = {k: v for k, v in denoising.items() if k != "examples"}
            continue
        if classifier is None:
            continue
        if step == "fitted":
            seeds = fit_latent_gaussian(model, train_x).sample(options.samples, options.seed)
        else:
            seeds = normal_seeds(options.samples, config.model.latent_dim, options.seed)
        result.setdefault("sampling", {})[step] = sample_metrics(decode_seeds(model, seeds), val_x, classifier)
    if classifier is not None:
        # Real training images against the validation images: the floor a generator can reach here.
        real = sample_metrics(train_x[: options.samples], val_x, classifier)
        result.setdefault("sampling", {})["real (training)"] = real
    return result


def format_table(result: dict[str, Any]) -> str:
    lines = [(f"checkpoint {result['checkpoint']}: {result['kind']} {result['arch']}, latent {result['latent_dim']}, "
             f"data {result['dataset']} classes {result['classes'] or 'all'}, {result['samples']} samples")]
    if "sampling" in result:
        lines += ["", f"{'seeds':<20} {'validity':>9} {'coverage':>9} {'FCD':>9} {'IS':>7}"]
        for name, m in result["sampling"].items():
            lines.append(f"{name:<20} {m['validity']:>9.3f} {m['coverage']:>9.3f} {m['fcd']:>9.2f} "
                         f"{m['inception_score']:>7.2f}")
        lines.append("(FCD: Fréchet distance of digit-classifier features, not Inception FID; "
                     "the real row scores training images against the validation images)")
    if "note" in result:
        lines.append(result["note"])
    lines += ["", "validation split: " + ", ".join(f"{k} {v:.4g}" for k, v in result["reconstruction"].items())]
    if "denoising" in result:
        d = result["denoising"]
        lines.append(f"denoising ({d['corruption']}, {d['images']} validation images): PSNR corrupted "
                     f"{d['psnr_corrupted']:.2f} dB → reconstructed {d['psnr_reconstructed']:.2f} dB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="aegen-eval", description="Judge a checkpoint's samples with the shipped digit classifier.")
    p.add_argument("checkpoint", type=Path, help="checkpoint directory (config.json + model.safetensors)")
    p.add_argument("--samples", type=int, default=EvalOptions.samples, help="generated samples per sampler")
    p.add_argument("--fitted", action="store_true", help="also decode seeds from a Gaussian fitted to training latents")
    p.add_argument("--corrupt", default=None, metavar="KIND:AMOUNT",
                   help="also measure denoising: PSNR of validation images corrupted so (noise:0.3, mask:0.25) "
                        "and of their reconstructions, against the clean images")
    p.add_argument("--seed", type=int, default=0, help="seed of the latent seeds")
    p.add_argument("--json", dest="json_path", type=Path, help="write the results as JSON here")
    p.add_argument("--data-dir", type=Path, default=env("data_dir"),
                   help="IDX directory of the checkpoint's data set (env AEGEN_DATA_DIR)")
    # argparse passes a string default through `type` too, so a bad AEGEN_THREADS is a one-line error
    p.add_argument("--threads", type=int, default=env("threads", "1"), help="torch CPU threads (env AEGEN_THREADS)")
    args = p.parse_args(argv)
    try:
        options = EvalOptions(**vars(args))
        torch.set_num_threads(max(1, options.threads))
        result = evaluate_checkpoint(options)
        if options.json_path is not None:
            atomic_write_text(options.json_path, json.dumps(result, indent=2) + "\n")
    except (EvalError, CheckpointError, ClassifierError, DataError, TrainError, OSError) as exc:
        return fail("aegen-eval", exc)
    print(format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
