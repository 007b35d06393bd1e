"""The checkpoint format: the contract between training and export.

A checkpoint is a directory:

    <dir>/config.json          CheckpointConfig as JSON (schema below, `format` = "aegen-checkpoint/1")
    <dir>/model.safetensors    the model's state_dict (float32 tensors)
    <dir>/optimizer.safetensors  optional: optimizer state, flattened, for --resume

Nothing here unpickles: safetensors holds raw tensors and a JSON header, so loading a checkpoint never
executes code. Every file is written atomically (temp name, then rename).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from protos.atomic import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    from training.models import AutoEncoder

FORMAT = "aegen-checkpoint/1"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
KINDS = ("ae", "vae")
ARCHS = ("mlp", "conv", "resconv")


class CheckpointError(Exception):
    """A checkpoint is missing, malformed, or disagrees with itself. The message names the file."""


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the network from its weights."""

    kind: str = "vae"  # "ae" | "vae"
    arch: str = "mlp"  # "mlp" | "conv" | "resconv"
    latent_dim: int = 16
    hidden_dim: int = 512  # MLP width, or the conv net's fully connected width
    image_shape: tuple[int, int, int] = (1, 28, 28)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise CheckpointError(f"model kind must be one of {KINDS}, got {self.kind!r}")
        if self.arch not in ARCHS:
            raise CheckpointError(f"architecture must be one of {ARCHS}, got {self.arch!r}")
        if not (isinstance(self.latent_dim, int) and 1 <= self.latent_dim <= 1024):
            raise CheckpointError(f"latent_dim must be an integer in 1..1024, got {self.latent_dim!r}")
        if not (isinstance(self.hidden_dim, int) and 1 <= self.hidden_dim <= 65536):
            raise CheckpointError(f"hidden_dim must be an integer in 1..65536, got {self.hidden_dim!r}")
        object.__setattr__(self, "image_shape", tuple(int(d) for d in self.image_shape))


@dataclass(frozen=True)
class CheckpointConfig:
    """config.json: the model, how it was trained, and what it reached."""

    model: ModelConfig
    dataset: str = "digits"  # "digits" (embedded) | "mnist" | "fashion-mnist" | "images" (a folder or array file)
    classes: tuple[int, ...] | None = None  # None: all classes
    loss: str = "bce"  # "bce" | "cbce" (continuous Bernoulli) | "mse"
    kl_weight: float = 1.0  # λ in R = L(X̂, X) + λ·KL(N(M, V) ‖ N(0, I)); unused for an AE
    kl_warmup_epochs: int = 0
    epochs: int = 0  # epochs completed
    batch_size: int = 128
    learning_rate: float = 1e-3
    seed: int = 0
    val_fraction: float = 0.1
    limit: int | None = None  # at most this many training images were used (quick runs); None: all
    # Added after format 1 shipped; the defaults are what a checkpoint without them was trained with.
    augment: bool = False  # random shift / rotation / scale of every training image (training/augment.py)
    corrupt: str | None = None  # "noise:σ" or "mask:p": a denoising AE/VAE; None: trained on clean inputs
    lr_schedule: str = "constant"  # "constant" | "cosine" (to 0 over `epochs`)
    data_dir: str | None = None  # where the data came from: IDX directory, image folder or .npz/.npy file
    metrics: dict[str, float] = field(default_factory=dict)  # final validation metrics
    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch
    format: str = FORMAT

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, raw: Any, source: str = CONFIG_FILE) -> CheckpointConfig:
        if not isinstance(raw, dict):
            raise CheckpointError(f"{source}: expected a JSON object")
        if raw.get("format") != FORMAT:
            raise CheckpointError(f"{source}: format is {raw.get('format')!r}, expected {FORMAT!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise CheckpointError(f"{source}: unknown keys {sorted(unknown)}")
        model_raw = raw.get("model")
        if not isinstance(model_raw, dict):
            raise CheckpointError(f"{source}: 'model' must be an object")
        model_known = {f.name for f in dataclasses.fields(ModelConfig)}
        if set(model_raw) - model_known:
            raise CheckpointError(f"{source}: unknown model keys {sorted(set(model_raw) - model_known)}")
        try:
            model = ModelConfig(**model_raw)
            values = {k: v for k, v in raw.items() if k != "model"}
            if values.get("classes") is not None:
                values["classes"] = tuple(int(c) for c in values["classes"])
            return cls(model=model, **values)
        except CheckpointError as exc:
            raise CheckpointError(f"{source}: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{source}: {exc}") from None


def save_checkpoint(
    directory: str | Path,
    state_dict: dict[str, torch.Tensor],
    config: CheckpointConfig,
    optimizer_state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write weights first, config last: a directory with a config.json is a complete checkpoint."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"{directory}: exists and is not a directory")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    atomic_write_bytes(directory / WEIGHTS_FILE, st_save(tensors, metadata={"format": FORMAT}))
    if optimizer_state is not None:
        opt = {k: v.detach().to("cpu").contiguous() for k, v in optimizer_state.items()}
        atomic_write_bytes(directory / OPTIMIZER_FILE, st_save(opt, metadata={"format": FORMAT}))
    atomic_write_text(directory / CONFIG_FILE, config.to_json())
    return directory


def read_config(directory: str | Path) -> CheckpointConfig:
    path = Path(directory) / CONFIG_FILE
    if not Path(directory).is_dir():
        raise CheckpointError(f"{directory}: no such checkpoint directory")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (not a checkpoint directory?)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    return CheckpointConfig.from_dict(raw, source=str(path))


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    try:
        # safetensors parses a JSON header and copies raw buffers: no pickle, no code runs.
        return st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a valid safetensors file ({exc})") from None


def load_checkpoint(directory: str | Path) -> tuple[dict[str, torch.Tensor], CheckpointConfig]:
    """Read config.json and model.safetensors. Raises CheckpointError, never unpickles."""
    config = read_config(directory)
    return _load_tensors(Path(directory) / WEIGHTS_FILE), config


def load_optimizer_state(directory: str | Path) -> dict[str, torch.Tensor] | None:
    path = Path(directory) / OPTIMIZER_FILE
    return _load_tensors(path) if path.exists() else None


def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Flatten an optimiser's per-parameter state to `state.<param index>.<name>` tensors.

    The hyper-parameters (param_groups) are not stored: they come from the run's options, so a
    resumed run can change the learning rate. Non-tensor state (a plain int step) becomes a 0-d tensor.
    """
    tensors: dict[str, torch.Tensor] = {}
    for index, state in optimizer.state_dict()["state"].items():
        for name, value in state.items():
            tensors[f"state.{index}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return tensors


def optimizer_from_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                           source: str = OPTIMIZER_FILE) -> None:
    """Load what `optimizer_to_tensors` wrote into `optimizer`, checking it fits its parameters."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        parts = key.split(".", 2)
        if len(parts) != 3 or parts[0] != "state" or not parts[1].isdigit() or int(parts[1]) >= len(params):
            raise CheckpointError(f"{source}: unexpected tensor {key!r} for an optimiser of {len(params)} parameters")
        state.setdefault(int(parts[1]), {})[parts[2]] = value
    for index, entry in state.items():
        for name, value in entry.items():
            if value.dim() > 0 and value.shape != params[index].shape:
                raise CheckpointError(f"{source}: state.{index}.{name} has shape {tuple(value.shape)}, "
                                      f"expected {tuple(params[index].shape)}")
    current = optimizer.state_dict()
    try:
        optimizer.load_state_dict({"state": state, "param_groups": current["param_groups"]})
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{source}: does not fit the optimiser ({exc})") from None


def weights_sha256(directory: str | Path) -> str:
    """SHA-256 of model.safetensors: the manifest records it to tie an export to its checkpoint."""
    h = hashlib.sha256()
    with open(Path(directory) / WEIGHTS_FILE, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_model(directory: str | Path) -> tuple[AutoEncoder, CheckpointConfig]:
    """Rebuild the trained network from a checkpoint directory: on the CPU, in eval mode.

    Weights whose names or shapes disagree with config.json are a CheckpointError, not a half-loaded model.
    """
    from training.models import build_model  # models imports this module for ModelConfig

    state, config = load_checkpoint(directory)
    model = build_model(config.model)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise CheckpointError(f"{Path(directory) / WEIGHTS_FILE}: does not match config.json ({detail})") from None
    return model.eval(), config
