"""The ZBL screened nuclear repulsion (Ziegler, Biersack, Littmark 1985) as a pair energy prior.

    V(r) = 14.3996 eV Å Z_i Z_j / r * phi(r / a),   a = 0.46850 Å / (Z_i^0.23 + Z_j^0.23)
    phi(x) = 0.18175 e^{-3.19980 x} + 0.50986 e^{-0.94229 x} + 0.28022 e^{-0.40290 x} + 0.02817 e^{-0.20162 x}

taken smoothly to zero at ``r_max = min(R_cov(Z_i) + R_cov(Z_j), cutoff)`` (ase's covalent
radii) by the polynomial envelope of order 6 (Klicpera et al., DimeNet), as MACE's
``pair_repulsion``. It acts only at close contact, where training data has no structures and a
learned energy may turn attractive (two water oxygens pulled together in MD).
"""

from __future__ import annotations

import torch
from ase.data import covalent_radii

COULOMB = 14.399645  # eV Å / e^2
SCREENING_LENGTH = 0.46850  # Å, 0.8854 a_0
PHI_COEFFICIENTS = (0.18175, 0.50986, 0.28022, 0.02817)
PHI_EXPONENTS = (3.19980, 0.94229, 0.40290, 0.20162)
ENVELOPE_ORDER = 6


def polynomial_envelope(x: torch.Tensor, p: int = ENVELOPE_ORDER) -> torch.Tensor:
    """1 at x = 0, 0 with zero first and second derivatives at x = 1, 0 beyond.

    Shapes: x (E,) -> (E,)
    """
    value = (1.0 - (p + 1) * (p + 2) / 2 * x**p + p * (p + 2) * x ** (p + 1) - p * (p + 1) / 2 * x ** (p + 2))
    return torch.where(x < 1.0, value, torch.zeros_like(x))


def zbl_edge_energy(edge_len: torch.Tensor, z_i: torch.Tensor, z_j: torch.Tensor, cutoff: float) -> torch.Tensor:
    """Half the ZBL energy of each directed edge (each pair appears twice), in eV.

    Shapes: edge_len (E,), z_i, z_j (E,) atomic numbers -> (E,)
    """
    zi, zj = z_i.to(edge_len.dtype), z_j.to(edge_len.dtype)
    a = SCREENING_LENGTH / (zi**0.23 + zj**0.23)
    x = edge_len / a
    phi = sum(c * torch.exp(-e * x) for c, e in zip(PHI_COEFFICIENTS, PHI_EXPONENTS, strict=True))
    radii = torch.as_tensor(covalent_radii, dtype=edge_len.dtype, device=edge_len.device)
    r_max = (radii.index_select(0, z_i) + radii.index_select(0, z_j)).clamp(max=cutoff)
    return 0.5 * COULOMB * zi * zj / edge_len * phi * polynomial_envelope(edge_len / r_max)


__all__ = ["polynomial_envelope", "zbl_edge_energy"]
