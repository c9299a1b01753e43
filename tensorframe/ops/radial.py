"""Radial and angular expansions and the smooth cutoff envelope."""

from __future__ import annotations

import math

import torch
from torch import nn


def cosine_cutoff(length: torch.Tensor, cutoff: float) -> torch.Tensor:
    """Smooth envelope ``0.5 (cos(pi r / rc) + 1)`` for ``r < rc``, else 0 (value and slope vanish at rc).

    Shapes: length (...) -> (...)
    """
    inside = length < cutoff
    value = 0.5 * (torch.cos(length * (math.pi / cutoff)) + 1.0)
    return torch.where(inside, value, torch.zeros_like(value))


class BesselBasis(nn.Module):
    """``sqrt(2/rc) sin(n pi r / rc) / r`` for n = 1..num_basis (DimeNet's radial basis).

    Shapes: length (E,) -> (E, num_basis)
    """

    def __init__(self, cutoff: float, num_basis: int = 8, trainable: bool = False) -> None:
        super().__init__()
        self.cutoff = float(cutoff)
        frequencies = torch.arange(1, num_basis + 1, dtype=torch.get_default_dtype()) * math.pi / self.cutoff
        self.frequencies = nn.Parameter(frequencies, requires_grad=trainable)

    def forward(self, length: torch.Tensor) -> torch.Tensor:
        r = length.unsqueeze(-1)
        return math.sqrt(2.0 / self.cutoff) * torch.sin(self.frequencies * r) / r


class GaussianBasis(nn.Module):
    """Gaussians ``exp(-(r - mu_n)^2 / (2 width^2))`` on an even grid from 0 to the cutoff.

    Shapes: length (E,) -> (E, num_basis)
    """

    def __init__(self, cutoff: float, num_basis: int = 16) -> None:
        super().__init__()
        centers = torch.linspace(0.0, float(cutoff), num_basis, dtype=torch.get_default_dtype())
        self.register_buffer("centers", centers)
        self.width = float(cutoff) / max(num_basis - 1, 1)

    def forward(self, length: torch.Tensor) -> torch.Tensor:
        return torch.exp(-0.5 * ((length.unsqueeze(-1) - self.centers) / self.width) ** 2)


def legendre_basis(cos_angle: torch.Tensor, num_basis: int) -> torch.Tensor:
    """Legendre polynomials ``P_0..P_{L-1}(cos)`` by recurrence: finite with finite
    gradients everywhere, straight (180°) and zero angles included.

    Shapes: cos_angle (T,) -> (T, num_basis)
    """
    terms = [torch.ones_like(cos_angle)]
    if num_basis > 1:
        terms.append(cos_angle)
    for n in range(2, num_basis):
        terms.append(((2 * n - 1) * cos_angle * terms[n - 1] - (n - 1) * terms[n - 2]) / n)
    return torch.stack(terms[:num_basis], dim=-1)
