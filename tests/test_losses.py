"""The objective's terms against independent computations: Monte Carlo, explicit formulas, integrals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from training.losses import (
    LossError,
    continuous_bernoulli_log_norm,
    kl_divergence,
    kl_weight_at,
    objective,
    reconstruction_loss,
)


def test_kl_closed_form_agrees_with_a_monte_carlo_estimate() -> None:
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(3, 4, generator=g, dtype=torch.float64) * 1.5
    log_var = torch.randn(3, 4, generator=g, dtype=torch.float64)
    # KL = E_{z~q}[log q(z) − log p(z)], estimated with 200,000 draws per image.
    std = torch.exp(0.5 * log_var)
    eps = torch.randn(200_000, 3, 4, generator=g, dtype=torch.float64)
    z = mean + std * eps
    log_q = (-0.5 * eps.pow(2) - torch.log(std) - 0.5 * math.log(2 * math.pi)).sum(-1)
    log_p = (-0.5 * z.pow(2) - 0.5 * math.log(2 * math.pi)).sum(-1)
    per_image = (log_q - log_p).mean(0)  # (3,)
    stderr = ((log_q - log_p).std(0) / math.sqrt(len(eps))).mean()
    closed = kl_divergence(mean, log_var)
    assert closed.item() > 1.0  # a case where the KL is far from zero
    assert abs(closed.item() - per_image.mean().item()) < 5 * stderr.item() + 1e-3


def test_kl_is_zero_exactly_at_the_prior_and_positive_elsewhere() -> None:
    assert kl_divergence(torch.zeros(5, 16), torch.zeros(5, 16)).item() == 0.0
    assert kl_divergence(torch.full((5, 16), 0.1), torch.zeros(5, 16)).item() == pytest.approx(16 * 0.005)
    assert kl_divergence(torch.zeros(5, 16), torch.full((5, 16), -1.0)).item() > 0


def test_bce_is_summed_over_pixels_and_averaged_over_the_batch() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 1, 28, 28, generator=g, dtype=torch.float64)
    x = torch.rand(4, 1, 28, 28, generator=g, dtype=torch.float64)
    p = torch.sigmoid(logits)
    explicit = -(x * torch.log(p) + (1 - x) * torch.log(1 - p)).sum(dim=(1, 2, 3)).mean()
    assert reconstruction_loss(logits, x, "bce").item() == pytest.approx(explicit.item(), rel=1e-9)
    # Doubling the batch with the same images does not change a per-image average.
    doubled = reconstruction_loss(torch.cat([logits, logits]), torch.cat([x, x]), "bce")
    assert doubled.item() == pytest.approx(explicit.item(), rel=1e-9)


def test_mse_is_the_squared_error_of_the_sigmoid_means() -> None:
    logits = torch.tensor([[0.0, 2.0]])
    x = torch.tensor([[1.0, 0.0]])
    expected = (0.5 - 1.0) ** 2 + (torch.sigmoid(torch.tensor(2.0)).item() - 0.0) ** 2
    assert reconstruction_loss(logits, x, "mse").item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("eta", [-8.0, -1.0, -1e-5, 0.0, 3e-4, 0.7, 5.0])
def test_continuous_bernoulli_nll_is_a_density_on_the_unit_interval(eta: float) -> None:
    # ∫₀¹ exp(−NLL(x; η)) dx = 1 when the normaliser is right; plain BCE would integrate to 1/C(λ) < 1.
    xs = np.linspace(0.0, 1.0, 2001)
    logits = torch.full((1, 1), eta, dtype=torch.float64)
    density = [math.exp(-reconstruction_loss(logits, torch.full((1, 1), x, dtype=torch.float64), "cbce").item())
               for x in xs]
    assert np.trapezoid(density, xs) == pytest.approx(1.0, abs=1e-4)
    plain = [math.exp(-reconstruction_loss(logits, torch.full((1, 1), x, dtype=torch.float64), "bce").item())
             for x in xs]
    assert np.trapezoid(plain, xs) < 0.51  # ≤ ½ for every λ, so the normaliser really is doing the work


def test_continuous_bernoulli_normaliser_has_finite_gradients_at_one_half() -> None:
    logits = torch.tensor([0.0, 1e-6, -1e-4, 1e-3, 40.0, -40.0], requires_grad=True)
    continuous_bernoulli_log_norm(logits).sum().backward()
    assert torch.isfinite(logits.grad).all()
    assert continuous_bernoulli_log_norm(torch.zeros(1)).item() == pytest.approx(math.log(2))


def test_kl_warmup_rises_linearly_then_holds() -> None:
    assert kl_weight_at(0.0, 2.0, 4) == 0.0
    assert kl_weight_at(1.0, 2.0, 4) == pytest.approx(0.5)
    assert kl_weight_at(2.5, 2.0, 4) == pytest.approx(1.25)
    assert kl_weight_at(4.0, 2.0, 4) == 2.0
    assert kl_weight_at(9.0, 2.0, 4) == 2.0
    assert kl_weight_at(0.0, 2.0, 0) == 2.0


def test_objective_adds_weighted_kl_for_a_vae_and_none_for_an_ae() -> None:
    g = torch.Generator().manual_seed(2)
    logits, x = torch.randn(2, 1, 28, 28, generator=g), torch.rand(2, 1, 28, 28, generator=g)
    mean, log_var = torch.randn(2, 8, generator=g), torch.randn(2, 8, generator=g)
    vae = objective(logits, x, mean, log_var, "bce", kl_weight=0.25)
    assert vae.total.item() == pytest.approx(vae.reconstruction.item() + 0.25 * vae.kl.item(), rel=1e-6)
    assert vae.kl.item() > 0
    ae = objective(logits, x, mean, None, "bce", kl_weight=0.25)
    assert ae.kl.item() == 0.0 and ae.total.item() == ae.reconstruction.item()


def test_unknown_loss_and_mismatched_shapes_are_refused() -> None:
    with pytest.raises(LossError, match="unknown loss 'l1'"):
        reconstruction_loss(torch.zeros(1, 4), torch.zeros(1, 4), "l1")
    with pytest.raises(LossError, match="differ in shape"):
        reconstruction_loss(torch.zeros(1, 4), torch.zeros(1, 5), "bce")
