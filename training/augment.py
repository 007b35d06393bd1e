"""Training-time image transforms: random affine augmentation, and the corruptions a denoising AE learns to undo.

Augmentation (`random_affine`) moves each training digit by a random shift (±2 px), rotation (±10°) and
scale (±10 %), the small deformations handwriting has anyway (Simard, Steinkraus & Platt 2003 trained on
elastic and affine distortions of MNIST). It multiplies what 9,000 images teach the decoder, and a VAE whose
decoder has seen more digits leaves fewer latent regions that decode to blends.

Corruption (`corrupt`) is what a denoising autoencoder sees instead of its input (Vincent et al. 2008):
`noise:σ` adds N(0, σ²) to every pixel and clips to [0, 1]; `mask:p` sets each pixel to 0 with probability p.
The loss still compares the reconstruction with the clean image.

Both draw from an explicit torch.Generator, so a run is reproducible from its seed, and both use only
torch (affine_grid / grid_sample), which are deterministic on the CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

CORRUPTIONS = ("noise", "mask")


@dataclass(frozen=True)
class Augmentation:
    """Ranges of the random affine transform: shift in pixels, rotation in degrees, relative scale."""

    shift_px: float = 2.0
    degrees: float = 10.0
    scale: float = 0.10


DEFAULT_AUGMENTATION = Augmentation()


def random_affine(x: torch.Tensor, generator: torch.Generator,
                  spec: Augmentation = DEFAULT_AUGMENTATION) -> torch.Tensor:
    """Each image of x (B, C, H, W) shifted, rotated and scaled by its own uniform draw; zeros flow in.

    The draws come from `generator` on the CPU, whatever device x is on, so the same generator state gives
    the same transforms on every device.
    """
    n, _, h, w = x.shape
    u = torch.rand(n, 4, generator=generator, dtype=torch.float32) * 2 - 1  # U(−1, 1)
    angle = u[:, 0] * math.radians(spec.degrees)
    scale = 1 + u[:, 1] * spec.scale
    # affine_grid maps output to input coordinates in [−1, 1], so a shift of s pixels is 2s / side, and
    # a digit drawn `scale` times larger needs the inverse scale on the sampling grid.
    tx, ty = u[:, 2] * spec.shift_px * 2 / w, u[:, 3] * spec.shift_px * 2 / h
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1).to(x.device)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@dataclass(frozen=True)
class Corruption:
    """`noise:σ` (additive Gaussian, clipped) or `mask:p` (pixels dropped to 0)."""

    kind: str
    amount: float

    @classmethod
    def parse(cls, text: str) -> Corruption:
        """`noise:0.3` or `mask:0.25`; ValueError with a one-line message otherwise."""
        kind, sep, amount = text.partition(":")
        if kind not in CORRUPTIONS or not sep:
            raise ValueError(f"expected noise:SIGMA or mask:P (e.g. noise:0.3, mask:0.25), got {text!r}")
        try:
            value = float(amount)
        except ValueError:
            raise ValueError(f"expected a number after {kind}:, got {amount!r}") from None
        if kind == "noise" and not (0 < value <= 10 and math.isfinite(value)):
            raise ValueError(f"noise σ must be in (0, 10], got {amount}")
        if kind == "mask" and not 0 < value < 1:
            raise ValueError(f"mask probability must be in (0, 1), got {amount}")
        return cls(kind, value)

    def __str__(self) -> str:
        return f"{self.kind}:{self.amount:g}"

    def apply(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """x (B, C, H, W) in [0, 1], corrupted; the draws come from `generator` on the CPU."""
        if self.kind == "noise":
            noise = torch.randn(x.shape, generator=generator).to(x.device)
            return (x + self.amount * noise).clamp_(0.0, 1.0)
        keep = (torch.rand(x.shape, generator=generator) >= self.amount).to(x.device)
        return x * keep


def psnr(clean: torch.Tensor, restored: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB for images in [0, 1]: 10·log10(1 / MSE), over the whole batch."""
    mse = float(((clean - restored) ** 2).mean())
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)
