"""Autoencoders for 28×28 images: a vanilla AE and a VAE, each with an MLP, a convolutional or a residual
convolutional body (`resconv`: the conv body with a residual block after each down- and before each
up-sampling step, He et al. 2016).

Method names follow the maths: `encode` (x → z for an AE, x → (M, log V) for a VAE), `reparameterize`
(Z = M + exp(½ log V) · ε, ε ~ N(0, I); Kingma & Welling 2014, section 2.4), `decode` (z → x̂ in [0, 1]).
The decoder ends in logits so that the loss can use the numerically stable BCE-with-logits;
`decode` applies the sigmoid, and is what export turns into the decoder graph.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from training.checkpoint import ModelConfig


def _mlp_encoder(cfg: ModelConfig, out_dim: int) -> nn.Module:
    pixels = math.prod(cfg.image_shape)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(pixels, cfg.hidden_dim), nn.ReLU(),
        nn.Linear(cfg.hidden_dim, cfg.hidden_dim), nn.ReLU(),
        nn.Linear(cfg.hidden_dim, out_dim),
    )


def _mlp_decoder(cfg: ModelConfig) -> nn.Module:
    pixels = math.prod(cfg.image_shape)
    return nn.Sequential(
        nn.Linear(cfg.latent_dim, cfg.hidden_dim), nn.ReLU(),
        nn.Linear(cfg.hidden_dim, cfg.hidden_dim), nn.ReLU(),
        nn.Linear(cfg.hidden_dim, pixels),
        nn.Unflatten(1, cfg.image_shape),
    )


def _conv_encoder(cfg: ModelConfig, out_dim: int) -> nn.Module:
    c, h, w = cfg.image_shape
    return nn.Sequential(
        nn.Conv2d(c, 32, 4, stride=2, padding=1), nn.ReLU(),  # 28 → 14
        nn.Conv2d(32, 64, 4, stride=2, padding=1), nn.ReLU(),  # 14 → 7
        nn.Flatten(),
        nn.Linear(64 * (h // 4) * (w // 4), cfg.hidden_dim), nn.ReLU(),
        nn.Linear(cfg.hidden_dim, out_dim),
    )


def _conv_decoder(cfg: ModelConfig) -> nn.Module:
    c, h, w = cfg.image_shape
    return nn.Sequential(
        nn.Linear(cfg.latent_dim, cfg.hidden_dim), nn.ReLU(),
        nn.Linear(cfg.hidden_dim, 64 * (h // 4) * (w // 4)), nn.ReLU(),
        nn.Unflatten(1, (64, h // 4, w // 4)),
        nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1), nn.ReLU(),  # 7 → 14
        nn.ConvTranspose2d(32, c, 4, stride=2, padding=1),  # 14 → 28
    )


class ResidualBlock(nn.Module):
    """x + conv(relu(conv(relu(x)))), 3×3, same width: a pre-activation residual block (He et al. 2016, §3)
    without normalisation, so that the exported graph is the training graph."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1),
                                  nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _resconv_encoder(cfg: ModelConfig, out_dim: int) -> nn.Module:
    c, h, w = cfg.image_shape
    return nn.Sequential(
        nn.Conv2d(c, 32, 4, stride=2, padding=1), ResidualBlock(32),  # 28 → 14
        nn.ReLU(), nn.Conv2d(32, 64, 4, stride=2, padding=1), ResidualBlock(64), nn.ReLU(),  # 14 → 7
        nn.Flatten(),
        nn.Linear(64 * (h // 4) * (w // 4), cfg.hidden_dim), nn.ReLU(),
        nn.Linear(cfg.hidden_dim, out_dim),
    )


def _resconv_decoder(cfg: ModelConfig) -> nn.Module:
    c, h, w = cfg.image_shape
    return nn.Sequential(
        nn.Linear(cfg.latent_dim, cfg.hidden_dim), nn.ReLU(),
        nn.Linear(cfg.hidden_dim, 64 * (h // 4) * (w // 4)),
        nn.Unflatten(1, (64, h // 4, w // 4)),
        ResidualBlock(64), nn.ReLU(), nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1),  # 7 → 14
        ResidualBlock(32), nn.ReLU(), nn.ConvTranspose2d(32, c, 4, stride=2, padding=1),  # 14 → 28
    )


BODIES = {"mlp": (_mlp_encoder, _mlp_decoder), "conv": (_conv_encoder, _conv_decoder),
          "resconv": (_resconv_encoder, _resconv_decoder)}


class AutoEncoder(nn.Module):
    """Vanilla AE: x → z → x̂. Its latent space is whatever the reconstruction loss made it."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.image_shape[1] % 4 or config.image_shape[2] % 4:
            raise ValueError(f"image sides must be multiples of 4, got {config.image_shape}")
        self.config = config
        encoder, decoder = BODIES[config.arch]
        self.encoder = encoder(config, self._encoder_outputs())
        self.decoder = decoder(config)

    def _encoder_outputs(self) -> int:
        return self.config.latent_dim

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(z))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Returns (reconstruction logits, z, None): the same triple as the VAE, log-variance absent."""
        z = self.encode(x)
        return self.decode_logits(z), z, None


class VAE(AutoEncoder):
    """VAE: the encoder returns the mean M and log-variance log V of q(z | x) = N(M, V)."""

    def _encoder_outputs(self) -> int:
        return 2 * self.config.latent_dim

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        mean, log_var = self.encoder(x).chunk(2, dim=1)
        return mean, log_var

    @staticmethod
    def reparameterize(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
        # Z = M + σ·ε keeps the sample differentiable in M and log V (Kingma & Welling 2014, §2.4).
        return mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # type: ignore[override]
        """Returns (reconstruction logits of a sampled z, M, log V); in eval mode z = M."""
        mean, log_var = self.encode(x)
        z = self.reparameterize(mean, log_var) if self.training else mean
        return self.decode_logits(z), mean, log_var


def build_model(config: ModelConfig) -> AutoEncoder:
    return VAE(config) if config.kind == "vae" else AutoEncoder(config)
