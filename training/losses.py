"""The training objective: R = L(X̂, X) + λ·KL(N(M, V) ‖ N(0, I)).

Every term is summed over its dimensions (pixels, latent units) and averaged over the batch, so the
numbers are nats per image and do not change with the batch size. The decoder outputs logits η; the
pixel means are σ(η).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

LOSSES = ("bce", "cbce", "mse")
_LOG_2 = math.log(2.0)


class LossError(ValueError):
    """An unknown loss name or inputs of mismatched shapes."""


@dataclass(frozen=True)
class LossTerms:
    """One batch's objective: `total` is what the optimiser minimises; the others are for display."""

    total: torch.Tensor
    reconstruction: torch.Tensor
    kl: torch.Tensor  # zero for an AE


def _per_image_sum(per_pixel: torch.Tensor) -> torch.Tensor:
    return per_pixel.flatten(1).sum(dim=1).mean()


def continuous_bernoulli_log_norm(logits: torch.Tensor) -> torch.Tensor:
    """log C(λ) of the continuous Bernoulli, λ = σ(η).

    Loaiza-Ganem & Cunningham 2019, "The continuous Bernoulli: fixing a pervasive error in
    variational autoencoders" (NeurIPS): p(x | λ) = C(λ)·λ^x·(1 − λ)^(1 − x) on x ∈ [0, 1].

    C(λ) = 2·artanh(1 − 2λ) / (1 − 2λ) for λ ≠ ½, and 2 at λ = ½. With λ = σ(η), 1 − 2λ = −tanh(η/2)
    and artanh(1 − 2λ) = −η/2, so C = η / tanh(η/2): no division of two small numbers near λ = ½
    except at η = 0 itself, where the Taylor series log C ≈ log 2 + η²/12 takes over.
    """
    near_half = logits.abs() < 1e-3
    # The unselected branch of torch.where still gets a gradient (zero times its derivative), so it
    # must stay finite: feed it a harmless value where the Taylor branch is used.
    safe = torch.where(near_half, torch.ones_like(logits), logits)
    exact = torch.log(safe / torch.tanh(safe / 2))
    taylor = _LOG_2 + logits.pow(2) / 12
    return torch.where(near_half, taylor, exact)


def reconstruction_loss(logits: torch.Tensor, target: torch.Tensor, loss: str = "bce") -> torch.Tensor:
    """L(X̂, X), in nats (or squared units for MSE) per image.

    bce:  −Σ [x·log σ(η) + (1 − x)·log(1 − σ(η))], the Bernoulli negative log-likelihood, used as
          is on grey pixels in [0, 1] as in Kingma & Welling 2014 and pytorch/examples' vae.
    cbce: bce − Σ log C(σ(η)): the continuous Bernoulli NLL, a proper density on [0, 1]
          (Loaiza-Ganem & Cunningham 2019), so the ELBO is a real bound for grey pixels.
    mse:  Σ (σ(η) − x)².
    """
    if logits.shape != target.shape:
        raise LossError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape")
    if loss == "bce" or loss == "cbce":
        per_pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        if loss == "cbce":
            per_pixel = per_pixel - continuous_bernoulli_log_norm(logits)
        return _per_image_sum(per_pixel)
    if loss == "mse":
        return _per_image_sum((torch.sigmoid(logits) - target).pow(2))
    raise LossError(f"unknown loss {loss!r}; expected one of {', '.join(LOSSES)}")


def kl_divergence(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(M, V) ‖ N(0, I)) in closed form (Kingma & Welling 2014, appendix B):

        KL = −½ Σ_j (1 + log V_j − M_j² − V_j), summed over latent units, averaged over the batch.
    """
    return (-0.5 * (1 + log_var - mean.pow(2) - log_var.exp())).sum(dim=1).mean()


def kl_weight_at(progress: float, kl_weight: float, warmup_epochs: int) -> float:
    """λ at `progress` epochs into training: linear from 0 to λ over the first `warmup_epochs`.

    Warm-up lets the decoder learn to use z before the KL term pulls q(z | x) onto the prior,
    which reduces posterior collapse (Bowman et al. 2016, "KL cost annealing").
    """
    if warmup_epochs <= 0:
        return kl_weight
    return kl_weight * min(1.0, max(0.0, progress) / warmup_epochs)


def objective(
    logits: torch.Tensor,
    target: torch.Tensor,
    mean_or_z: torch.Tensor,
    log_var: torch.Tensor | None,
    loss: str = "bce",
    kl_weight: float = 1.0,
) -> LossTerms:
    """R = L + λ·KL for a VAE (log_var given); R = L for an AE (log_var None)."""
    reconstruction = reconstruction_loss(logits, target, loss)
    if log_var is None:
        return LossTerms(reconstruction, reconstruction, torch.zeros((), device=logits.device))
    kl = kl_divergence(mean_or_z, log_var)
    return LossTerms(reconstruction + kl_weight * kl, reconstruction, kl)
