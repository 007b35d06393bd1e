"""`aegen-report`: the chapter's experiments, reproduced and measured by one command.

    aegen-report --out docs/report          # the committed report (`make report`: one CPU thread)
    aegen-report --out /tmp/r --epochs 1 --epochs-2d 1 --limit 600 --samples 300 --recipe-epochs 1   # a smoke run

It trains, with aegen-train's `train` (checkpoints under --runs, reused when they match the options): the
seed's AE and VAE with a 2-D latent on digits 1 and 8 only, for the latent scatter plots; the seed's AE and
VAE with a 16-D latent on all ten digits (MLP); the measured recipe's VAE (docs/report/TUNING.md: resconv,
latent 8), decoded from every latent sampler the server offers (N(0, I), fitted Gaussian, mixture, a RealNVP
flow fitted here); and two denoising AEs (--corrupt noise and mask). It writes into --out:

    latent_ae2.png, latent_vae2.png     validation latents of the 2-D models, 1s blue, 8s red
    samples_*.png                       8×8 grids labelled with the classifier's verdict
    denoising_*.png                     clean, corrupted and denoised validation images
    curves_*.png                        each model's training curves
    prior_hole.png                      validity of the recipe's N(0, I) seeds by aggregate-posterior density
    metrics.json                        every number in the tables
    README.md                           the tables, the settings and what the numbers say (report_writing.py)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from protos.atomic import atomic_write_bytes, atomic_write_text
from protos.cli import OneLineParser, env, fail
from training.augment import Corruption
from training.checkpoint import CheckpointError, load_model, read_config
from training.classifier import (
    ClassifierError,
    DigitClassifier,
    load_classifier,
    predict,
    read_info,
)
from training.curves import CURVES_FILE
from training.data import DataError, to_unit_float
from training.evaluate import (
    EvalError,
    checkpoint_split,
    decode_seeds,
    denoising_metrics,
    encode_means,
    fit_latent_gaussian,
    mixture_log_density,
    normal_seeds,
    reconstruction_metrics,
    sample_metrics,
)
from training.grid import save_grid
from training.latent_sampler import FlowError, FlowOptions, train_flow
from training.models import AutoEncoder
from training.report_writing import (
    PAIR,
    all_rows,
    density_validity_figure,
    labelled_grid,
    latent_scatter,
    render_markdown,
    table,
)
from training.train import TrainError, TrainOptions, train

HOLE_QUANTILE = 0.05  # a seed is "in the hole" where the mixture density is below 95 % of training latents


class ReportError(Exception):
    """Options that cannot produce a report."""


@dataclass(frozen=True)
class ReportOptions:
    out: Path = Path("docs/report")
    runs: Path = Path("runs/report")  # checkpoints; reused when they match the options
    epochs: int = 100  # the latent-16 models
    epochs_2d: int | None = 30  # the 2-D models on 1 and 8; None: same as epochs
    limit: int | None = None  # at most this many training images per model
    samples: int = 10_000  # generated samples per table row
    arch: str = "mlp"  # conv reached the same validity at 5× the CPU time (see the README)
    hidden_dim: int = 512
    latent_dim: int = 16
    kl_weight: float = 2.0  # λ = 2 beat 1 and 4 on N(0, I) validity (see the README)
    kl_warmup_epochs: int = 0
    loss: str = "bce"
    lr: float = 1e-3
    seed: int = 0
    threads: int | None = None
    progress: bool = True
    # The measured recipe (docs/report/TUNING.md): its VAE beside the seed's, with the served latent samplers.
    recipe_arch: str = "resconv"
    recipe_latent_dim: int = 8
    recipe_epochs: int = 60
    recipe_kl_weight: float = 1.0
    recipe_lr_schedule: str = "constant"  # cosine lost validity at 20 epochs in the study (TUNING.md)
    recipe_augment: bool = False  # augmentation cost validity and FCD at latent 8 in the study (TUNING.md)
    mixture_components: int = 40  # the best of 5, 10, 20, 40 in the study
    flow_epochs: int = 150
    # Denoising AEs (MLP, latent 16), one per corruption, against the plain AE reconstructing the same inputs.
    denoise_epochs: int = 20
    corruptions: tuple[str, ...] = ("noise:0.3", "mask:0.25")

    def __post_init__(self) -> None:
        if self.epochs < 1 or (self.epochs_2d is not None and self.epochs_2d < 1):
            raise ReportError("--epochs and --epochs-2d must be ≥ 1")
        if not 2 <= self.samples <= 1_000_000:
            raise ReportError(f"--samples must be in 2..1000000, got {self.samples}")
        if self.limit is not None and self.limit < 2:
            raise ReportError(f"--limit must be ≥ 2, got {self.limit}")
        if min(self.recipe_epochs, self.denoise_epochs, self.flow_epochs, self.mixture_components) < 1:
            raise ReportError("--recipe-epochs, --denoise-epochs, --flow-epochs and --mixture-components must be ≥ 1")


def _train_options(o: ReportOptions, name: str, kind: str, latent_dim: int, classes: tuple[int, ...] | None,
                   epochs: int, arch: str, **changes: Any) -> TrainOptions:
    """The seed's experiments: no augmentation, constant learning rate, unless `changes` say otherwise."""
    values = {"kind": kind, "arch": arch, "latent_dim": latent_dim, "hidden_dim": o.hidden_dim, "classes": classes,
              "epochs": epochs, "lr": o.lr, "kl_weight": o.kl_weight, "kl_warmup_epochs": o.kl_warmup_epochs,
              "loss": o.loss, "seed": o.seed, "limit": o.limit, "out": str(o.runs / name), "progress": o.progress,
              "threads": o.threads, "augment": False, **changes}
    return TrainOptions(**values)


def _matches(t: TrainOptions) -> bool:
    """A finished checkpoint in t.out that was trained exactly as t asks (so a rerun can skip it)."""
    try:
        c = read_config(t.out)
    except CheckpointError:
        return False
    return (c.model == t.model_config() and c.classes == t.classes and c.epochs == t.epochs and c.loss == t.loss
            and c.kl_weight == (t.kl_weight if t.kind == "vae" else 0.0) and c.limit == t.limit
            and c.seed == t.seed and c.learning_rate == t.lr and c.kl_warmup_epochs == t.kl_warmup_epochs
            and c.augment == t.augmented() and c.lr_schedule == t.lr_schedule and c.corrupt == t.corrupt)


def _trained(t: TrainOptions) -> tuple[AutoEncoder, float]:
    """The model t describes, trained now or reused; returns it and its training seconds as logged
    per epoch in the checkpoint (so a reused checkpoint reports what training it took)."""
    if not _matches(t):
        train(t)
    model, config = load_model(t.out)
    return model, float(sum(row.get("seconds", 0.0) for row in config.history))


# --- the experiments --------------------------------------------------------------------------------

def _latent_experiment(o: ReportOptions, kind: str) -> dict[str, Any]:
    t = _train_options(o, f"{kind}2-digits-1-8", kind, 2, PAIR, o.epochs_2d or o.epochs, "mlp")
    model, seconds = _trained(t)
    split = checkpoint_split(read_config(t.out))
    z = encode_means(model, to_unit_float(split.val_images))
    name = "AE" if kind == "ae" else "VAE (encoder means M)"
    path = latent_scatter(z, split.val_labels, f"{name}, 2-D latent, digits 1 and 8: validation latents",
                          o.out / f"latent_{kind}2.png")
    return {"checkpoint": t.out, "figure": path.name, "train_seconds": seconds,
            "latent_mean": z.mean(axis=0).tolist(), "latent_std": z.std(axis=0).tolist()}


def _main_models(o: ReportOptions, classifier: DigitClassifier) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    models: dict[str, Any] = {}
    real_val = None
    for kind in ("ae", "vae"):
        t = _train_options(o, f"{kind}{o.latent_dim}", kind, o.latent_dim, None, o.epochs, o.arch)
        model, seconds = _trained(t)
        config = read_config(t.out)
        split = checkpoint_split(config)
        train_x, real_val = to_unit_float(split.train_images), to_unit_float(split.val_images)
        models[kind] = {"checkpoint": t.out, "train_seconds": seconds, "epochs": config.epochs,
                        **reconstruction_metrics(model, config, split)}
        fitted = fit_latent_gaussian(model, train_x)
        models[kind].update(latent_mean_norm=float(np.linalg.norm(fitted.mean)),
                            latent_std_mean=float(np.sqrt(np.diag(fitted.cov)).mean()))
        seeds = {"N(0, I)": normal_seeds(o.samples, o.latent_dim, o.seed),
                 "fitted Gaussian": fitted.sample(o.samples, o.seed)}
        for sampler, z in seeds.items():
            images = decode_seeds(model, z)
            slug = f"samples_{kind}_{'normal' if sampler == 'N(0, I)' else 'fitted'}.png"
            title = f"{kind.upper()} (latent {o.latent_dim}) decoding {sampler} seeds"
            labelled_grid(classifier, images, title, o.out / slug)
            rows[f"{kind.upper()} · {sampler} seeds"] = {**sample_metrics(images, real_val, classifier),
                                                         "figure": slug}
    # The real row compares training images with the validation images: the floor a generator can reach.
    real_train = to_unit_float(split.train_images[: o.samples])
    labelled_grid(classifier, real_val, "Real validation images", o.out / "samples_real.png")
    rows["real training images"] = {**sample_metrics(real_train, real_val, classifier), "figure": "samples_real.png"}
    return {"rows": rows, "models": models, "validation_images": len(real_val)}


def _pair_rows(o: ReportOptions, classifier: DigitClassifier) -> dict[str, Any]:
    """The 2-D models decoding N(0, I) seeds: the chapter's point in two dimensions."""
    rows = {}
    for kind in ("ae", "vae"):
        t = _train_options(o, f"{kind}2-digits-1-8", kind, 2, PAIR, o.epochs_2d or o.epochs, "mlp")
        model, _ = load_model(t.out)
        split = checkpoint_split(read_config(t.out))
        images = decode_seeds(model, normal_seeds(o.samples, 2, o.seed))
        slug = f"samples_{kind}2_normal.png"
        labelled_grid(classifier, images, f"{kind.upper()} (2-D, digits 1 and 8) decoding N(0, I) seeds", o.out / slug)
        rows[f"{kind.upper()} 2-D · N(0, I) seeds"] = {
            **sample_metrics(images, to_unit_float(split.val_images), classifier), "figure": slug}
    return rows


def _curves(t: TrainOptions, o: ReportOptions, name: str) -> str:
    """The run's curves.png, copied into the report as curves_<name>.png."""
    atomic_write_bytes(o.out / f"curves_{name}.png", (Path(t.out) / CURVES_FILE).read_bytes())
    return f"curves_{name}.png"


def _mixture(latents: np.ndarray, k: int, n: int, seed: int) -> tuple[Any, torch.Tensor]:
    """The exporter's EM fit (export/latent_samplers.py, numpy only), so the report measures what is served,
    and n seeds drawn from it."""
    from export.latent_samplers import fit_mixture

    fit = fit_mixture(latents, components=k, seed=seed)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, fit.weights)
    parts = [rng.multivariate_normal(fit.means[j], fit.covs[j], c) for j, c in enumerate(counts) if c]
    return fit, torch.from_numpy(rng.permutation(np.concatenate(parts))).float()


def _prior_hole(o: ReportOptions, classifier: DigitClassifier, fit: Any, latents: np.ndarray, z: torch.Tensor,
                images: np.ndarray, mixture_validity: float, real_validity: float) -> dict[str, Any]:
    """Where N(0, I) seeds land under the aggregate posterior (the fitted mixture stands for it) and how often
    they decode to a valid digit there: the evidence for what limits N(0, I) validity."""
    density = mixture_log_density(fit.weights, fit.means, fit.covs, z.numpy())
    threshold = float(np.quantile(mixture_log_density(fit.weights, fit.means, fit.covs, latents), HOLE_QUANTILE))
    valid = predict(classifier, images).valid
    outside = density < threshold
    deciles = [float(valid[part].mean()) for part in np.array_split(np.argsort(density), 10)]
    figure = density_validity_figure(deciles, {f"{o.mixture_components}-component mixture seeds": mixture_validity,
                                               "real training images": real_validity}, o.out / "prior_hole.png")
    return {"quantile": HOLE_QUANTILE, "threshold": threshold, "outside_share": float(outside.mean()),
            "validity_outside": float(valid[outside].mean()) if outside.any() else float("nan"),
            "validity_inside": float(valid[~outside].mean()) if (~outside).any() else float("nan"),
            "validity_by_decile": deciles, "figure": figure.name}


def _recipe_rows(o: ReportOptions, classifier: DigitClassifier) -> dict[str, Any]:
    """The measured recipe's VAE decoding seeds from every served latent sampler, and where its N(0, I) seeds
    fall short."""
    t = _train_options(o, f"vae{o.recipe_latent_dim}-{o.recipe_arch}-recipe", "vae", o.recipe_latent_dim, None,
                       o.recipe_epochs, o.recipe_arch, augment=o.recipe_augment, kl_weight=o.recipe_kl_weight,
                       kl_warmup_epochs=0, lr_schedule=o.recipe_lr_schedule)
    model, seconds = _trained(t)
    config = read_config(t.out)
    split = checkpoint_split(config)
    train_x, real_val = to_unit_float(split.train_images), to_unit_float(split.val_images)
    latents = encode_means(model, train_x)
    started = time.process_time()
    try:
        flow = train_flow(latents.astype(np.float32), FlowOptions(epochs=o.flow_epochs, seed=o.seed,
                                                                  threads=o.threads))
    except FlowError as exc:
        raise ReportError(f"the latent flow: {exc}") from None
    flow_seconds = time.process_time() - started
    d, k = o.recipe_latent_dim, o.mixture_components
    fit, mixture_z = _mixture(latents, k, o.samples, o.seed)
    with torch.no_grad():
        seeds = {"N(0, I)": normal_seeds(o.samples, d, o.seed),
                 "fitted Gaussian": fit_latent_gaussian(model, train_x).sample(o.samples, o.seed),
                 f"{k}-component mixture": mixture_z, "flow (RealNVP)": flow(normal_seeds(o.samples, d, o.seed))}
    rows, decoded = {}, {}
    for (sampler, z), short in zip(seeds.items(), ("normal", "fitted", "mixture", "flow"), strict=True):
        images = decoded[sampler] = decode_seeds(model, z)
        slug = f"samples_recipe_{short}.png"
        labelled_grid(classifier, images, f"VAE {o.recipe_arch} latent {d}: {sampler} seeds", o.out / slug)
        rows[f"VAE {o.recipe_arch} {d} · {sampler} seeds"] = {**sample_metrics(images, real_val, classifier),
                                                              "figure": slug}
    model_row = {"checkpoint": t.out, "train_seconds": seconds, "epochs": config.epochs, "flow_seconds": flow_seconds,
                 "curves": _curves(t, o, "recipe"), **reconstruction_metrics(model, config, split),
                 "val_elbo_by_epoch": {row["epoch"]: row["val_elbo"] for row in config.history
                                       if row["epoch"] % 10 == 0 or row["epoch"] == config.epochs}}
    real_validity = sample_metrics(to_unit_float(split.train_images[: o.samples]), real_val, classifier)["validity"]
    hole = _prior_hole(o, classifier, fit, latents, seeds["N(0, I)"], decoded["N(0, I)"],
                       rows[f"VAE {o.recipe_arch} {d} · {k}-component mixture seeds"]["validity"], real_validity)
    return {"rows": rows, "model": model_row, "prior_hole": hole}


def _denoising(o: ReportOptions, plain_ae: str) -> dict[str, Any]:
    """Denoising AEs, one per corruption: PSNR of the corrupted and the reconstructed validation images."""
    rows = {}
    for spec in o.corruptions:
        corruption = Corruption.parse(spec)
        t = _train_options(o, f"ae{o.latent_dim}-{corruption.kind}", "ae", o.latent_dim, None, o.denoise_epochs,
                           "mlp", corrupt=str(corruption))
        model, seconds = _trained(t)
        split = checkpoint_split(read_config(t.out))
        val = to_unit_float(split.val_images)
        result = denoising_metrics(model, val, corruption, o.seed)
        plain = denoising_metrics(load_model(plain_ae)[0], val, corruption, o.seed)
        ex = result["examples"]
        grid = np.concatenate([ex["clean"][:8], ex["corrupted"][:8], ex["reconstructed"][:8]])
        slug = f"denoising_{corruption.kind}.png"
        save_grid(grid, o.out / slug, nrow=8, title=f"{spec}: clean (top), corrupted, denoised by the AE")
        rows[str(corruption)] = {"psnr_corrupted": result["psnr_corrupted"],
                                 "psnr_reconstructed": result["psnr_reconstructed"],
                                 "psnr_plain_ae": plain["psnr_reconstructed"], "train_seconds": seconds,
                                 "figure": slug, "curves": _curves(t, o, f"denoise_{corruption.kind}")}
    return rows


def run_report(o: ReportOptions) -> dict[str, Any]:
    o.out.mkdir(parents=True, exist_ok=True)
    if o.threads is not None:
        torch.set_num_threads(o.threads)
    classifier = load_classifier()
    started = time.perf_counter()
    latents = {kind: _latent_experiment(o, kind) for kind in ("ae", "vae")}
    pair = _pair_rows(o, classifier)
    main_part = _main_models(o, classifier)
    for kind in ("ae", "vae"):
        main_part["models"][kind]["curves"] = _curves(
            _train_options(o, f"{kind}{o.latent_dim}", kind, o.latent_dim, None, o.epochs, o.arch), o, f"{kind}{o.latent_dim}")
    recipe = _recipe_rows(o, classifier)
    denoising = _denoising(o, main_part["models"]["ae"]["checkpoint"])
    result = {"options": {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(o).items()},
              "classifier": read_info().metrics, "latent_2d": latents, "pair_rows": pair, **main_part,
              "recipe": recipe, "denoising": denoising, "seconds": time.perf_counter() - started}
    atomic_write_text(o.out / "metrics.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(o.out / "README.md", render_markdown(o, result))
    return result


# --- the command ------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    d = ReportOptions()
    p = OneLineParser(prog="aegen-report", description="Reproduce the AE-vs-VAE experiments and write a report.")
    p.add_argument("--out", type=Path, default=d.out, help="report folder (README.md, PNGs, metrics.json)")
    p.add_argument("--runs", type=Path, default=d.runs, help="checkpoint folder; matching checkpoints are reused")
    p.add_argument("--epochs", type=int, default=d.epochs, help="epochs of the latent-16 models")
    p.add_argument("--epochs-2d", type=int, default=d.epochs_2d, help="epochs of the 2-D models")
    p.add_argument("--limit", type=int, default=None, help="at most this many training images per model")
    p.add_argument("--samples", type=int, default=d.samples, help="generated samples per row")
    p.add_argument("--arch", choices=("mlp", "conv"), default=d.arch, help="architecture of the latent-16 models")
    p.add_argument("--hidden-dim", type=int, default=d.hidden_dim)
    p.add_argument("--latent-dim", type=int, default=d.latent_dim)
    p.add_argument("--kl-weight", type=float, default=d.kl_weight)
    p.add_argument("--kl-warmup-epochs", type=int, default=d.kl_warmup_epochs)
    p.add_argument("--loss", default=d.loss)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=env("threads"), help="torch CPU threads (env AEGEN_THREADS)")
    p.add_argument("--recipe-arch", choices=("mlp", "conv", "resconv"), default=d.recipe_arch,
                   help="body of the measured recipe's VAE")
    p.add_argument("--recipe-latent-dim", type=int, default=d.recipe_latent_dim)
    p.add_argument("--recipe-epochs", type=int, default=d.recipe_epochs)
    p.add_argument("--recipe-kl-weight", type=float, default=d.recipe_kl_weight)
    p.add_argument("--recipe-lr-schedule", choices=("constant", "cosine"), default=d.recipe_lr_schedule)
    p.add_argument("--recipe-augment", action=argparse.BooleanOptionalAction, default=d.recipe_augment,
                   help="augment the recipe's training images (random shift, rotation, scale)")
    p.add_argument("--mixture-components", type=int, default=d.mixture_components)
    p.add_argument("--flow-epochs", type=int, default=d.flow_epochs, help="epochs of the RealNVP latent sampler")
    p.add_argument("--denoise-epochs", type=int, default=d.denoise_epochs, help="epochs of the denoising AEs")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    try:
        result = run_report(ReportOptions(**vars(args)))
    except (ReportError, TrainError, DataError, CheckpointError, ClassifierError, EvalError, OSError) as exc:
        return fail("aegen-report", exc)
    print(f"wrote {args.out}/README.md ({result['seconds']:.0f} s)")
    for line in table(all_rows(result)):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
