"""aegen-train: fit an AE or a VAE on 28×28 images and write a checkpoint (training/checkpoint.py).

    aegen-train --kind vae --latent-dim 16 --epochs 30 --out runs/vae16
    aegen-train --kind ae --latent-dim 2 --classes 1,8 --out runs/ae2-18
    aegen-train --out runs/vae16 --epochs 40 --resume        # ten more epochs, optimiser state kept
    aegen-train --arch resconv --latent-dim 8 --lr-schedule cosine --out runs/res8   # augmented by default
    aegen-train --kind ae --corrupt noise:0.3 --out runs/denoise   # a denoising AE
    aegen-train --data my-digits/ --out runs/mine                  # PNG/JPEG folder, or .npz / .npy

On the CPU a run is deterministic: the same options (and thread count) give the same weights, and a
run resumed after epoch k gives the same weights as one that never stopped, because every epoch
reseeds its shuffle, its augmentation, its corruption and its reparameterisation noise from (seed, epoch).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from protos.cli import OneLineParser, env, fail
from training import checkpoint as ckpt
from training.augment import Corruption, random_affine
from training.checkpoint import CheckpointConfig, CheckpointError, ModelConfig
from training.curves import CURVES_FILE, plot_curves
from training.data import DATASETS, DataError, Split, filter_classes, load_dataset, train_val_split
from training.latent_sampler import FlowError, FlowOptions, fit_checkpoint_flow
from training.losses import LOSSES, kl_divergence, kl_weight_at, objective, reconstruction_loss
from training.models import AutoEncoder, build_model

VAL_BATCH = 1000
AUGMENTED_BY_DEFAULT = ("digits", "mnist", "fashion-mnist")  # sets of centred 28×28 objects, like MNIST
LR_SCHEDULES = ("constant", "cosine")


class TrainError(Exception):
    """Options that cannot work together, or a run that cannot go on. The message says which."""


@dataclass
class TrainOptions:
    """One training run; the field names mirror the command-line flags."""

    kind: str = "vae"
    arch: str = "mlp"
    latent_dim: int = 16
    hidden_dim: int = 512
    dataset: str = "digits"
    data_dir: str | None = None
    classes: tuple[int, ...] | None = None
    epochs: int = 10  # the total: a resumed run trains until the checkpoint has this many
    batch_size: int = 128
    lr: float = 1e-3
    kl_weight: float = 1.0
    kl_warmup_epochs: int = 0
    loss: str = "bce"
    val_fraction: float = 0.1
    seed: int = 0
    device: str = "auto"
    limit: int | None = None
    augment: bool | None = None  # None: on for the AUGMENTED_BY_DEFAULT data sets, off for your own images
    corrupt: str | None = None  # "noise:0.3" or "mask:0.25": train a denoising model
    lr_schedule: str = "constant"
    out: str = "runs/model"
    resume: bool = False
    progress: bool = True
    threads: int | None = None  # torch intra-op threads; None: torch's default

    def model_config(self) -> ModelConfig:
        return ModelConfig(kind=self.kind, arch=self.arch, latent_dim=self.latent_dim, hidden_dim=self.hidden_dim)

    def augmented(self) -> bool:
        return self.dataset in AUGMENTED_BY_DEFAULT if self.augment is None else self.augment

    def corruption(self) -> Corruption | None:
        return None if self.corrupt is None else Corruption.parse(self.corrupt)


def check_options(options: TrainOptions) -> None:
    """Reject impossible options before any data is read or any file is written."""
    problems = [
        (options.epochs < 1, f"--epochs must be ≥ 1, got {options.epochs}"),
        (options.batch_size < 1, f"--batch-size must be ≥ 1, got {options.batch_size}"),
        (not (options.lr > 0 and math.isfinite(options.lr)), f"--lr must be a positive number, got {options.lr}"),
        (not (options.kl_weight >= 0 and math.isfinite(options.kl_weight)),
         f"--kl-weight must be ≥ 0, got {options.kl_weight}"),
        (options.kl_warmup_epochs < 0, f"--kl-warmup-epochs must be ≥ 0, got {options.kl_warmup_epochs}"),
        (options.loss not in LOSSES, f"--loss must be one of {', '.join(LOSSES)}, got {options.loss!r}"),
        (options.dataset not in DATASETS, f"--dataset must be one of {', '.join(DATASETS)}, got {options.dataset!r}"),
        (not 0.0 < options.val_fraction < 1.0, f"--val-fraction must be in (0, 1), got {options.val_fraction}"),
        (options.limit is not None and options.limit < 1, f"--limit must be ≥ 1, got {options.limit}"),
        (options.threads is not None and options.threads < 1, f"--threads must be ≥ 1, got {options.threads}"),
        (options.lr_schedule not in LR_SCHEDULES,
         f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}, got {options.lr_schedule!r}"),
        (options.dataset == "images" and not options.data_dir,
         "--dataset images needs --data (a folder of PNG/JPEG images, or an .npz/.npy file)"),
    ]
    for bad, message in problems:
        if bad:
            raise TrainError(message)
    try:
        options.corruption()
    except ValueError as exc:
        raise TrainError(f"--corrupt: {exc}") from None
    try:
        options.model_config()
    except CheckpointError as exc:
        raise TrainError(str(exc)) from None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise TrainError(f"--device must be auto, cpu or cuda[:N], got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainError("--device cuda was asked for, but this torch sees no CUDA device")
    if device.type not in ("cpu", "cuda"):
        raise TrainError(f"--device must be auto, cpu or cuda[:N], got {name!r}")
    return device


def prepare_data(options: TrainOptions) -> Split:
    """The run's data: its classes, a split fixed by the seed, and at most `limit` training images."""
    dataset = filter_classes(load_dataset(options.dataset, options.data_dir, "train"), options.classes)
    if len(dataset.labels) < 2:
        raise DataError(f"{dataset.name}: {len(dataset.labels)} images after class filtering, need at least 2")
    split = train_val_split(dataset, options.val_fraction, options.seed)
    if options.limit is not None:
        split = dataclasses.replace(split, train_images=split.train_images[: options.limit],
                                    train_labels=split.train_labels[: options.limit])
    if len(split.train_labels) == 0:
        raise DataError(f"{dataset.name}: no training images left after the validation split")
    return split


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + 1) % (2**63)


@contextlib.contextmanager
def _torch_settings(device: torch.device, threads: int | None) -> Iterator[None]:
    """Deterministic kernels on the CPU and the thread count, restored afterwards (callers share torch)."""
    old_deterministic = torch.are_deterministic_algorithms_enabled()
    old_threads = torch.get_num_threads()
    try:
        if device.type == "cpu":
            torch.use_deterministic_algorithms(True)
        if threads is not None:
            torch.set_num_threads(threads)
        yield
    finally:
        torch.use_deterministic_algorithms(old_deterministic)
        torch.set_num_threads(old_threads)


def _as_batch(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 28, 28) on the device → float (B, 1, 28, 28) in [0, 1]."""
    return images.unsqueeze(1).float().div_(255.0)


def learning_rate_at(progress: float, options: TrainOptions) -> float:
    """The learning rate `progress` epochs into training: constant, or cosine from lr to 0 over all the
    epochs (Loshchilov & Hutter 2017, without restarts). It depends on the position and on --epochs only:
    resuming with a larger --epochs stretches the cosine over the new total from where training stands."""
    if options.lr_schedule == "cosine":
        return options.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress / options.epochs)))
    return options.lr


def _train_epoch(model: AutoEncoder, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                 options: TrainOptions, epoch: int, bar: tqdm) -> dict[str, float]:
    """One pass over the training images in a (seed, epoch)-determined order; returns mean loss terms."""
    torch.manual_seed(_epoch_seed(options.seed, epoch))  # the reparameterisation noise
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(_epoch_seed(options.seed, epoch)))
    # Separate streams, so that switching augmentation or corruption on changes nothing else.
    augment = torch.Generator().manual_seed(_epoch_seed(options.seed, epoch) ^ 0x5EED_A11C) if options.augmented() else None
    corruption = options.corruption()
    corrupt = torch.Generator().manual_seed(_epoch_seed(options.seed, epoch) ^ 0x5EED_C0DE)
    steps = math.ceil(len(images) / options.batch_size)
    # Running sums stay on the device: reading a CUDA scalar every step would stall the GPU.
    sums = {name: torch.zeros((), device=images.device) for name in ("loss", "reconstruction", "kl")}
    seen, start = 0, time.perf_counter()
    model.train()
    for step in range(steps):
        index = order[step * options.batch_size:(step + 1) * options.batch_size].to(images.device)
        x = _as_batch(images[index])
        if augment is not None:
            x = random_affine(x, augment)
        weight = kl_weight_at(epoch + step / steps, options.kl_weight, options.kl_warmup_epochs)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(epoch + step / steps, options)
        # A denoising model sees the corrupted image and is scored against the clean one (Vincent et al. 2008).
        logits, mean_or_z, log_var = model(x if corruption is None else corruption.apply(x, corrupt))
        terms = objective(logits, x, mean_or_z, log_var, options.loss, weight)
        optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        optimizer.step()
        n = len(x)
        for name, value in (("loss", terms.total), ("reconstruction", terms.reconstruction), ("kl", terms.kl)):
            sums[name] += value.detach() * n
        seen += n
        bar.update(n)
        if step % 10 == 0 or step == steps - 1:
            rate = seen / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(loss=f"{float(sums['loss']) / seen:.1f}",
                            rec=f"{float(sums['reconstruction']) / seen:.1f}",
                            kl=f"{float(sums['kl']) / seen:.2f}", img_s=f"{rate:.0f}", refresh=False)
    mean = {f"train_{k}": float(v) / seen for k, v in sums.items()}
    if not all(math.isfinite(v) for v in mean.values()):
        raise TrainError(f"the loss became {mean['train_loss']} in epoch {epoch + 1}; try a lower --lr")
    seconds = time.perf_counter() - start
    return {**mean, "kl_weight": weight, "lr": optimizer.param_groups[0]["lr"], "seconds": seconds,
            "images_per_s": seen / max(seconds, 1e-9)}


@torch.no_grad()
def validate(model: AutoEncoder, images: np.ndarray, loss: str, device: torch.device,
             seed: int = 0) -> dict[str, float]:
    """Validation metrics, per image: reconstruction from z = M; for a VAE also KL and the ELBO.

    ELBO = E_q[log p(x | z)] − KL(q(z | x) ‖ p(z)), estimated with one z ~ q per image from a fixed
    seed, with log p(x | z) = −L (a true log-likelihood for "cbce"; for "bce" on grey pixels the
    Bernoulli convention of Kingma & Welling; for "mse" up to a constant).
    """
    model.eval()
    is_vae = model.config.kind == "vae"
    generator = torch.Generator().manual_seed(seed)
    sums = {"val_reconstruction": 0.0, "val_kl": 0.0, "val_elbo": 0.0}
    for start in range(0, len(images), VAL_BATCH):
        x = _as_batch(torch.from_numpy(images[start:start + VAL_BATCH]).to(device))
        n = len(x)
        if not is_vae:
            sums["val_reconstruction"] += float(reconstruction_loss(model.decode_logits(model.encode(x)), x, loss)) * n
            continue
        mean, log_var = model.encode(x)
        eps = torch.randn(mean.shape, generator=generator).to(device)
        z = mean + torch.exp(0.5 * log_var) * eps
        kl = float(kl_divergence(mean, log_var))
        sums["val_reconstruction"] += float(reconstruction_loss(model.decode_logits(mean), x, loss)) * n
        sums["val_kl"] += kl * n
        sums["val_elbo"] += -(float(reconstruction_loss(model.decode_logits(z), x, loss)) + kl) * n
    keys = sums if is_vae else ["val_reconstruction"]
    return {k: sums[k] / len(images) for k in keys}


def _resume_state(options: TrainOptions, out: Path) -> tuple[CheckpointConfig, dict, dict | None]:
    """The checkpoint in `out` to continue from; it must describe the same model and data."""
    state, config = ckpt.load_checkpoint(out)
    wanted = _config(options, epochs=config.epochs, metrics={}, history=[])
    same = ("model", "dataset", "classes", "loss", "seed", "val_fraction", "limit", "augment", "corrupt",
            "lr_schedule")
    for name in same:
        if getattr(config, name) != getattr(wanted, name):
            raise TrainError(f"{out}: cannot resume, the checkpoint's {name} is {getattr(config, name)!r} "
                             f"but this run asks for {getattr(wanted, name)!r}")
    if config.epochs >= options.epochs:
        raise TrainError(f"{out}: the checkpoint already has {config.epochs} epochs; "
                         f"pass --epochs greater than {config.epochs} to train more")
    return config, state, ckpt.load_optimizer_state(out)


def _config(options: TrainOptions, epochs: int, metrics: dict[str, float],
            history: list[dict[str, float]]) -> CheckpointConfig:
    return CheckpointConfig(
        model=options.model_config(), dataset=options.dataset, classes=options.classes, loss=options.loss,
        kl_weight=options.kl_weight if options.kind == "vae" else 0.0,
        kl_warmup_epochs=options.kl_warmup_epochs, epochs=epochs, batch_size=options.batch_size,
        learning_rate=options.lr, seed=options.seed, val_fraction=options.val_fraction, limit=options.limit,
        augment=options.augmented(), corrupt=None if options.corrupt is None else str(options.corruption()),
        lr_schedule=options.lr_schedule, data_dir=options.data_dir, metrics=metrics, history=history,
    )


def train(options: TrainOptions) -> Path:
    """Train as `options` say and return the checkpoint directory (options.out).

    The checkpoint is rewritten after every epoch, so an interrupted run can be resumed. Without
    `resume`, a checkpoint already in options.out is replaced (the CLI asks for --overwrite first).
    Raises TrainError, DataError or CheckpointError with a one-line message.
    """
    check_options(options)
    if options.classes is not None:
        options = dataclasses.replace(options, classes=tuple(sorted(set(options.classes))))
    device = resolve_device(options.device)
    out = Path(options.out)
    if out.exists() and not out.is_dir():
        raise TrainError(f"--out {out}: exists and is not a directory")
    resumed = _resume_state(options, out) if options.resume else None
    split = prepare_data(options)
    with _torch_settings(device, options.threads):
        torch.manual_seed(options.seed)  # the initial weights
        model = build_model(options.model_config()).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=options.lr)
        first_epoch, history = 0, []
        if resumed is not None:
            config, state, optimizer_state = resumed
            try:
                model.load_state_dict(state)
            except RuntimeError:
                raise CheckpointError(f"{out / ckpt.WEIGHTS_FILE}: does not match its config.json") from None
            if optimizer_state is not None:
                ckpt.optimizer_from_tensors(optimizer, optimizer_state, str(out / ckpt.OPTIMIZER_FILE))
            first_epoch, history = config.epochs, list(config.history)
        images = torch.from_numpy(np.ascontiguousarray(split.train_images)).to(device)
        for epoch in range(first_epoch, options.epochs):
            with tqdm(total=len(images), desc=f"epoch {epoch + 1}/{options.epochs}", unit="img",
                      unit_scale=True, disable=not options.progress, leave=False) as bar:
                row = _train_epoch(model, optimizer, images, options, epoch, bar)
            row = {"epoch": epoch + 1, **row, **validate(model, split.val_images, options.loss, device, options.seed)}
            history.append(row)
            if options.progress:
                tqdm.write(_summary(row))
            metrics = {k: v for k, v in row.items() if k.startswith(("train_", "val_"))}
            ckpt.save_checkpoint(out, model.state_dict(), _config(options, epoch + 1, metrics, history),
                                 optimizer_state=ckpt.optimizer_to_tensors(optimizer))
            plot_curves(history, out / CURVES_FILE, title=_curves_title(options))
    return out


def _curves_title(options: TrainOptions) -> str:
    extras = [f"λ {options.kl_weight:g}"] if options.kind == "vae" else []
    extras += ["augmented"] if options.augmented() else []
    extras += [f"corrupt {options.corrupt}"] if options.corrupt else []
    extras += [f"{options.lr_schedule} lr {options.lr:g}"]
    return f"{options.kind.upper()} {options.arch}, latent {options.latent_dim}, {options.dataset}: " + ", ".join(extras)


def _summary(row: dict[str, float]) -> str:
    shown = [f"epoch {row['epoch']}"] + [f"{k} {v:.2f}" for k, v in row.items()
                                         if k.startswith(("train_", "val_"))]
    return "  ".join(shown + [f"{row['images_per_s']:.0f} img/s"])


def _classes(text: str) -> tuple[int, ...]:
    try:
        classes = tuple(int(c) for c in text.split(",") if c.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated class numbers like 1,8, got {text!r}") from None
    if not classes:
        raise argparse.ArgumentTypeError("expected at least one class number")
    return classes


def build_parser() -> argparse.ArgumentParser:
    d = TrainOptions()
    p = OneLineParser(prog="aegen-train", description="Train an AE or a VAE on 28×28 images and write a checkpoint.")
    p.add_argument("--kind", choices=ckpt.KINDS, default=d.kind)
    p.add_argument("--arch", choices=ckpt.ARCHS, default=d.arch)
    p.add_argument("--latent-dim", type=int, default=d.latent_dim)
    p.add_argument("--hidden-dim", type=int, default=d.hidden_dim)
    p.add_argument("--dataset", choices=DATASETS, default=None,
                   help="digits (default): the 10,000 embedded MNIST digits; mnist / fashion-mnist: IDX files; "
                        "images: your own, from --data")
    p.add_argument("--data-dir", default=env("AEGEN_DATA_DIR"),
                   help="directory of IDX files (env AEGEN_DATA_DIR; fashion-mnist defaults to "
                        "/usr/share/datasets/fashion-mnist)")
    p.add_argument("--data", default=None, metavar="PATH",
                   help="your own images: a folder of PNG/JPEG files (greyscale, resized to 28×28; labels from "
                        "sub-folder names) or an .npz/.npy array of (N, 28, 28) images; implies --dataset images")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random shift ±2 px, rotation ±10°, scale ±10 %% of every training image "
                        "(default: on for digits, mnist and fashion-mnist, off for --data)")
    p.add_argument("--corrupt", default=None, metavar="KIND:AMOUNT",
                   help="denoising: train on corrupted inputs, noise:SIGMA (e.g. noise:0.3) or mask:P (e.g. mask:0.25)")
    p.add_argument("--classes", type=_classes, default=None, help="train only on these classes, e.g. 1,8")
    p.add_argument("--epochs", type=int, default=d.epochs, help="total epochs (with --resume: train up to this)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=d.lr_schedule,
                   help="constant, or cosine decay to 0 over --epochs")
    p.add_argument("--kl-weight", type=float, default=d.kl_weight, help="λ in L + λ·KL (VAE only)")
    p.add_argument("--kl-warmup-epochs", type=int, default=d.kl_warmup_epochs,
                   help="raise λ linearly from 0 over this many epochs")
    p.add_argument("--loss", choices=LOSSES, default=d.loss,
                   help="bce, cbce (BCE + continuous-Bernoulli normaliser) or mse")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=env("device", d.device), help="auto, cpu or cuda (env AEGEN_DEVICE)")
    p.add_argument("--limit", type=int, default=None, help="use at most this many training images")
    p.add_argument("--out", default=d.out, help="checkpoint directory")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in --out")
    # argparse passes a string default through `type`, so a bad AEGEN_THREADS is a one-line error too
    p.add_argument("--threads", type=int, default=env("threads"),
                   help="torch CPU threads (env AEGEN_THREADS)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--latent-flow", action="store_true",
                   help="then fit the learned latent sampler (a RealNVP flow, training/latent_sampler.py) to the "
                        "training latents and save it beside the checkpoint for aegen-export")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    overwrite = args.pop("overwrite")
    latent_flow = args.pop("latent_flow")
    data = args.pop("data")
    if data is not None:
        if args["dataset"] not in (None, "images"):
            parser.error(f"--data reads your own images; it cannot be combined with --dataset {args['dataset']}")
        args["dataset"], args["data_dir"] = "images", data
    args["dataset"] = args["dataset"] or TrainOptions.dataset
    options = TrainOptions(**args)
    try:
        if not (options.resume or overwrite) and (Path(options.out) / ckpt.CONFIG_FILE).exists():
            raise TrainError(f"--out {options.out} already holds a checkpoint; pass --resume to continue it "
                             f"or --overwrite to replace it")
        out = train(options)
        config = ckpt.read_config(out)
        if latent_flow:
            fit_checkpoint_flow(out, FlowOptions(threads=options.threads))
    except (TrainError, DataError, CheckpointError, FlowError) as exc:
        return fail("aegen-train", exc)
    except KeyboardInterrupt:
        sys.stderr.write(f"aegen-train: interrupted; the last finished epoch is saved in {options.out}\n")
        return 130
    metrics = "  ".join(f"{k} {v:.2f}" for k, v in config.metrics.items() if k.startswith("val_"))
    print(f"checkpoint {out} ({config.model.kind}, {config.model.arch}, latent {config.model.latent_dim}, "
          f"{config.epochs} epochs): {metrics}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
