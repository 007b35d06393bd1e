"""The digit classifier that judges generated samples: 10 digit classes plus class 10, "not a digit".

A plain 10-class classifier calls uniform noise a confident digit about two times in three, so a
sample's validity would mean little. Class 10 is trained on synthetic negatives (uniform and sparse
noise, blobs, scribbles, near 50/50 blends of two different digits, inverted digits, flat images).
The opposite failure is a reject class that learns "real versus generated" and rejects every smooth
VAE sample; the digit classes therefore also see blurred, low-contrast and gamma-shifted digits.

    python -m training.classifier --out training/assets   # trains and ships the weights (CPU, ~minutes)

The shipped files are `classifier.safetensors` (the state_dict) and `classifier.json` (ClassifierInfo:
architecture, how it was trained, the accuracies measured on the held-out split).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn
from tqdm import tqdm

from protos.atomic import atomic_write_bytes, atomic_write_text
from protos.cli import OneLineParser, env, fail
from training.data import DataError, load_dataset, to_unit_float, train_val_split

FORMAT = "aegen-classifier/1"
WEIGHTS_FILE = "classifier.safetensors"
INFO_FILE = "classifier.json"
NOT_A_DIGIT = 10
CLASS_NAMES = tuple(str(d) for d in range(10)) + ("not a digit",)
VALID_CONFIDENCE = 0.9  # a sample is a valid digit when argmax < 10 and max softmax ≥ this


class ClassifierError(Exception):
    """The shipped classifier files are missing or malformed, or a training option is invalid."""


@dataclass(frozen=True)
class ClassifierArch:
    channels: tuple[int, int, int] = (32, 64, 128)
    feature_dim: int = 128  # the penultimate layer, whose activations FCD compares

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))


@dataclass(frozen=True)
class ClassifierOptions:
    """How the classifier is trained; filled from CLI flags."""

    out: Path = Path("training/assets")
    epochs: int = 30
    batch_size: int = 64  # digits per batch; negatives come on top
    negative_fraction: float = 0.35  # negatives per digit in a batch
    learning_rate: float = 1e-3
    seed: int = 0
    val_fraction: float = 0.1  # the same split as aegen-train: train_val_split(digits, 0.1, seed=0)
    split_seed: int = 0
    threads: int = 1

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2:
            raise ClassifierError("epochs must be ≥ 1 and batch size ≥ 2")
        if not 0.0 < self.negative_fraction <= 2.0:
            raise ClassifierError(f"negative fraction must be in (0, 2], got {self.negative_fraction}")


@dataclass(frozen=True)
class ClassifierInfo:
    """classifier.json: enough to rebuild the network, and what it reached on held-out data."""

    arch: ClassifierArch = field(default_factory=ClassifierArch)
    class_names: tuple[str, ...] = CLASS_NAMES
    valid_confidence: float = VALID_CONFIDENCE
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    format: str = FORMAT

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str) -> ClassifierInfo:
        try:
            raw = json.loads(text)
            if raw.get("format") != FORMAT:
                raise ClassifierError(f"{source}: format is {raw.get('format')!r}, expected {FORMAT!r}")
            raw["arch"] = ClassifierArch(**raw["arch"])
            raw["class_names"] = tuple(raw["class_names"])
            return cls(**raw)
        except ClassifierError:
            raise
        except (json.JSONDecodeError, AttributeError, KeyError, TypeError) as exc:
            raise ClassifierError(f"{source}: not a valid classifier description ({exc})") from None


class DigitClassifier(nn.Module):
    """Three conv blocks (28 → 14 → 7 → 3), a 128-wide feature layer, 11 logits. No batch norm: an
    image's verdict must not depend on the other images in its batch (nor on train/eval statistics)."""

    def __init__(self, arch: ClassifierArch = ClassifierArch()) -> None:
        super().__init__()
        self.arch = arch
        c1, c2, c3 = arch.channels
        blocks: list[nn.Module] = []
        for cin, cout in ((1, c1), (c1, c2), (c2, c3)):
            blocks += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        self.body = nn.Sequential(*blocks, nn.Flatten(), nn.Linear(c3 * 3 * 3, arch.feature_dim), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(arch.feature_dim, len(CLASS_NAMES)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer activations (N, feature_dim): what the FCD compares."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@dataclass(frozen=True)
class Prediction:
    probs: np.ndarray  # (N, 11) softmax
    features: np.ndarray  # (N, feature_dim) float64

    @property
    def labels(self) -> np.ndarray:
        return self.probs.argmax(axis=1)

    @property
    def valid(self) -> np.ndarray:
        """A digit (not class 10) called with confidence ≥ VALID_CONFIDENCE."""
        return (self.labels != NOT_A_DIGIT) & (self.probs.max(axis=1) >= VALID_CONFIDENCE)


@torch.no_grad()
def predict(model: DigitClassifier, images: np.ndarray | torch.Tensor, batch_size: int = 1000) -> Prediction:
    """Classify float images (N, 1, 28, 28) in [0, 1]."""
    x = torch.as_tensor(images, dtype=torch.float32)
    if x.ndim != 4 or tuple(x.shape[1:]) != (1, 28, 28):
        raise ClassifierError(f"expected images of shape (N, 1, 28, 28), got {tuple(x.shape)}")
    model.eval()
    probs, feats = [], []
    for chunk in x.split(batch_size):
        f = model.features(chunk)
        probs.append(torch.softmax(model.head(f), dim=1))
        feats.append(f)
    if not probs:
        raise ClassifierError("no images to classify")
    return Prediction(torch.cat(probs).double().numpy(), torch.cat(feats).double().numpy())


# --- augmentation: what a digit may look like -------------------------------------------------------

def _uniform(g: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def random_affine(x: torch.Tensor, g: torch.Generator, degrees: float = 12.0, scale: tuple = (0.88, 1.12),
                  shift: float = 0.12) -> torch.Tensor:
    """Small rotations, scalings and shifts (shift in units of half the image side)."""
    n = x.shape[0]
    angle = torch.deg2rad(_uniform(g, n, -degrees, degrees))
    s = 1.0 / _uniform(g, n, *scale)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = s * torch.cos(angle), -s * torch.sin(angle)
    theta[:, 1, 0], theta[:, 1, 1] = s * torch.sin(angle), s * torch.cos(angle)
    theta[:, :, 2] = _uniform(g, 2 * n, -shift, shift).view(n, 2)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, size: int = 7) -> torch.Tensor:
    """Blur each image with its own σ (one separable kernel per image, applied as a grouped conv)."""
    n = x.shape[0]
    r = torch.arange(size, dtype=torch.float32) - size // 2
    k = torch.exp(-r[None, :] ** 2 / (2 * sigma[:, None].clamp_min(0.2) ** 2))
    k = k / k.sum(dim=1, keepdim=True)
    y = x.view(1, n, 28, 28)
    y = F.conv2d(y, k.view(n, 1, 1, size), padding=(0, size // 2), groups=n)
    y = F.conv2d(y, k.view(n, 1, size, 1), padding=(size // 2, 0), groups=n)
    return y.view(n, 1, 28, 28)


def augment_digits(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Digits as a decoder may draw them: shifted and turned a little, often blurred, often faint.
    Without the blur and contrast variation the reject class learns "smooth means fake"."""
    n = x.shape[0]
    # Resampling softens edges, so some digits keep their original pixels: otherwise "pixel-exact
    # sharpness" would only ever be seen in the (negative) blends and become a reason to reject.
    moved = (torch.rand(n, generator=g) < 0.75).view(n, 1, 1, 1)
    x = torch.where(moved, random_affine(x, g), x)
    blur = (torch.rand(n, generator=g) < 0.4).view(n, 1, 1, 1)
    x = torch.where(blur, gaussian_blur(x, _uniform(g, n, 0.4, 1.4)), x)
    # About half keep their contrast: sharp, full-contrast digits must stay the clearest digits of all.
    photometric = (torch.rand(n, generator=g) < 0.5).view(n, 1, 1, 1)
    gamma = _uniform(g, n, 0.6, 1.6).view(n, 1, 1, 1)
    hi = _uniform(g, n, 0.5, 1.0).view(n, 1, 1, 1)
    lo = (_uniform(g, n, 0.0, 0.12) * (torch.rand(n, generator=g) < 0.3)).view(n, 1, 1, 1)
    x = torch.where(photometric, lo + (hi - lo) * x.clamp(0, 1) ** gamma, x)
    return x.clamp(0, 1)


# --- synthetic negatives: what is not a digit -------------------------------------------------------

_GRID = torch.stack(torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij"), -1).view(1, 784, 2)


def uniform_noise(n: int, g: torch.Generator, **_: Any) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=g) * _uniform(g, n, 0.3, 1.0).view(n, 1, 1, 1)


def sparse_noise(n: int, g: torch.Generator, **_: Any) -> torch.Tensor:
    density = _uniform(g, n, 0.02, 0.25).view(n, 1, 1, 1)
    on = torch.rand(n, 1, 28, 28, generator=g) < density
    return on * torch.rand(n, 1, 28, 28, generator=g)


def blobs(n: int, g: torch.Generator, **_: Any) -> torch.Tensor:
    """One to four Gaussian blobs of random size and place."""
    k = 4
    centres = 4 + 20 * torch.rand(n, k, 1, 2, generator=g)
    sigma = _uniform(g, n * k, 1.5, 5.0).view(n, k, 1)
    amp = torch.rand(n, k, 1, generator=g) * (torch.arange(k) < torch.randint(1, k + 1, (n, 1), generator=g))[..., None]
    d2 = ((_GRID[:, None] - centres) ** 2).sum(-1)  # (n, k, 784)
    img = (amp * torch.exp(-d2 / (2 * sigma**2))).sum(1)
    img = img / img.amax(dim=1, keepdim=True).clamp_min(1e-6) * _uniform(g, n, 0.5, 1.0)[:, None]
    return img.view(n, 1, 28, 28)


def strokes(n: int, g: torch.Generator, **_: Any) -> torch.Tensor:
    """Three to six pen strokes (quadratic Bézier curves) scattered over the image: scribbles."""
    k, steps = 6, 24
    p = 2 + 24 * torch.rand(n, k, 3, 2, generator=g)  # start, control, end point of each stroke
    t = torch.linspace(0, 1, steps).view(1, 1, steps, 1)
    pts = (1 - t) ** 2 * p[:, :, :1] + 2 * (1 - t) * t * p[:, :, 1:2] + t**2 * p[:, :, 2:]
    used = torch.arange(k) < torch.randint(3, k + 1, (n, 1), generator=g)
    pts = torch.where(used[..., None, None], pts, torch.full_like(pts, -100.0)).view(n, k * steps, 2)
    d2 = torch.cdist(_GRID.expand(n, -1, -1), pts).amin(-1) ** 2
    width = _uniform(g, n, 0.7, 1.3)[:, None]
    return torch.exp(-d2 / (2 * width**2)).view(n, 1, 28, 28)


def blends(n: int, g: torch.Generator, digits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Near 50/50 mixtures of two digits of different classes: neither is the answer."""
    a = torch.randint(0, len(labels), (n,), generator=g)
    b = torch.randint(0, len(labels), (n,), generator=g)
    same = labels[a] == labels[b]
    b = torch.where(same, torch.roll(b, 1), b)
    same = labels[a] == labels[b]
    w = _uniform(g, n, 0.4, 0.6).view(n, 1, 1, 1)
    # Both halves get the digits' augmentation, so a blend differs from a digit only by being two digits.
    out = w * augment_digits(digits[a], g) + (1 - w) * augment_digits(digits[b], g)
    # The rare pair that is still of one class becomes noise rather than a mislabelled digit.
    return torch.where(same[:, None, None, None], uniform_noise(n, g), out)


def inverted(n: int, g: torch.Generator, digits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    idx = torch.randint(0, len(labels), (n,), generator=g)
    return 1.0 - augment_digits(digits[idx], g)


def flat(n: int, g: torch.Generator, **_: Any) -> torch.Tensor:
    """Blank or uniformly grey images: nothing drawn."""
    return torch.rand(n, 1, 1, 1, generator=g).expand(n, 1, 28, 28) ** 2


NEGATIVES: dict[str, Callable[..., torch.Tensor]] = {
    "uniform_noise": uniform_noise, "sparse_noise": sparse_noise, "blobs": blobs, "strokes": strokes,
    "blends": blends, "inverted": inverted, "flat": flat,
}


def make_negatives(n: int, g: torch.Generator, digits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """n negatives, kinds drawn at random; `digits` (float, un-augmented) feed blends and inversions."""
    kinds = torch.randint(0, len(NEGATIVES), (n,), generator=g)
    parts = [fn(int((kinds == i).sum()), g, digits=digits, labels=labels)
             for i, fn in enumerate(NEGATIVES.values()) if (kinds == i).any()]
    return torch.cat(parts).clamp(0, 1)


# --- training ---------------------------------------------------------------------------------------

def _digits_split(options: ClassifierOptions) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    split = train_val_split(load_dataset("digits"), options.val_fraction, seed=options.split_seed)
    return (torch.from_numpy(to_unit_float(split.train_images)), torch.from_numpy(split.train_labels),
            torch.from_numpy(to_unit_float(split.val_images)), torch.from_numpy(split.val_labels))


def train_classifier(options: ClassifierOptions) -> tuple[DigitClassifier, dict[str, float]]:
    """Train from scratch on the digits' training split; returns the model and its held-out metrics."""
    torch.manual_seed(options.seed)
    g = torch.Generator().manual_seed(options.seed)
    train_x, train_y, val_x, val_y = _digits_split(options)
    model = DigitClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=options.learning_rate, weight_decay=1e-4)
    steps_per_epoch = math.ceil(len(train_y) / options.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, options.learning_rate, total_steps=options.epochs * steps_per_epoch,
                                                pct_start=0.15, div_factor=5.0)
    n_neg = max(1, round(options.batch_size * options.negative_fraction))
    for epoch in range(options.epochs):
        model.train()
        order = torch.randperm(len(train_y), generator=g)
        bar = tqdm(order.split(options.batch_size), desc=f"classifier epoch {epoch + 1}/{options.epochs}",
                   unit="batch", leave=False)
        for idx in bar:
            x = torch.cat([augment_digits(train_x[idx], g), make_negatives(n_neg, g, train_x, train_y)])
            y = torch.cat([train_y[idx], torch.full((n_neg,), NOT_A_DIGIT, dtype=torch.long)])
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        metrics = measure(model, val_x, val_y, train_x, train_y)
        tqdm.write(f"epoch {epoch + 1}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                                                       if not k.startswith("negative_validity_")))
    return model, metrics


def measure(model: DigitClassifier, val_x: torch.Tensor, val_y: torch.Tensor, train_x: torch.Tensor,
            train_y: torch.Tensor, seed: int = 12345, per_kind: int = 500) -> dict[str, float]:
    """Held-out accuracy and validity, plus validity on fresh negatives (a seed training never used)."""
    real = predict(model, val_x)
    y = val_y.numpy()
    g = torch.Generator().manual_seed(seed)
    blurred = predict(model, gaussian_blur(val_x, torch.full((len(val_y),), 1.0)))
    metrics = {
        "val_accuracy": float((real.labels == y).mean()),
        "val_validity_real": float(real.valid.mean()),
        "val_validity_real_blurred": float(blurred.valid.mean()),
        "val_accuracy_blurred": float((blurred.labels == y).mean()),
    }
    kinds = {}
    for name, fn in NEGATIVES.items():
        kinds[name] = float(predict(model, fn(per_kind, g, digits=val_x, labels=val_y).clamp(0, 1)).valid.mean())
    metrics["negative_validity"] = float(np.mean(list(kinds.values())))
    metrics.update({f"negative_validity_{k}": v for k, v in kinds.items()})
    return metrics


# --- the shipped files ------------------------------------------------------------------------------

def save_classifier(model: DigitClassifier, info: ClassifierInfo, out: str | Path) -> Path:
    out = Path(out)
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(out / WEIGHTS_FILE, st_save(tensors, metadata={"format": FORMAT}))
    atomic_write_text(out / INFO_FILE, info.to_json())
    return out


def read_info(directory: str | Path | None = None) -> ClassifierInfo:
    source = _asset(INFO_FILE, directory)
    try:
        return ClassifierInfo.from_json(source.read_text(encoding="utf-8"), str(source))
    except FileNotFoundError:
        raise ClassifierError(f"{source}: missing; train it with `python -m training.classifier`") from None


def load_classifier(directory: str | Path | None = None) -> DigitClassifier:
    """The shipped classifier (training/assets unless `directory`), in eval mode on the CPU."""
    info = read_info(directory)
    source = _asset(WEIGHTS_FILE, directory)
    try:
        tensors = st_load(source.read_bytes())  # raw buffers and a JSON header: no pickle runs
    except FileNotFoundError:
        raise ClassifierError(f"{source}: missing") from None
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise ClassifierError(f"{source}: not a valid safetensors file ({exc})") from None
    model = DigitClassifier(info.arch)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as exc:
        raise ClassifierError(f"{source}: weights do not fit the architecture in {INFO_FILE} ({exc})") from None
    return model.eval()


def _asset(name: str, directory: str | Path | None) -> Path:
    if directory is not None:
        return Path(directory) / name
    return Path(str(resources.files("training").joinpath("assets", name)))


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="python -m training.classifier", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ClassifierOptions.out, help="directory for the weights and JSON")
    p.add_argument("--epochs", type=int, default=ClassifierOptions.epochs)
    p.add_argument("--batch-size", type=int, default=ClassifierOptions.batch_size)
    p.add_argument("--negative-fraction", type=float, default=ClassifierOptions.negative_fraction)
    p.add_argument("--lr", type=float, default=ClassifierOptions.learning_rate)
    p.add_argument("--seed", type=int, default=ClassifierOptions.seed)
    p.add_argument("--threads", type=int, default=env("threads", "1"),
                   help="torch CPU threads, env AEGEN_THREADS (results are reproducible for a fixed count)")
    args = p.parse_args(argv)
    try:
        options = ClassifierOptions(out=args.out, epochs=args.epochs, batch_size=args.batch_size,
                                    negative_fraction=args.negative_fraction, learning_rate=args.lr,
                                    seed=args.seed, threads=args.threads)
        torch.set_num_threads(options.threads)
        model, metrics = train_classifier(options)
        training = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(options).items()
                    if k != "out"}
        training.update(dataset="digits (embedded, training split)", negatives=list(NEGATIVES))
        save_classifier(model, ClassifierInfo(training=training, metrics=metrics), options.out)
    except (ClassifierError, DataError, OSError) as exc:
        return fail("python -m training.classifier", exc)
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
