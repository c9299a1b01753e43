"""Numerical robustness: straight angles, zero angles, the cutoff.

Triplets at exactly 180 degrees (CO2, HCN, C2H2, rock salt, perovskite B-O-B chains) and
0-degree pairs of images of one atom are where ``atan2(|a x b|, a . b)`` and normalised
cross products give NaN gradients. The full model must give finite outputs and finite
gradients there, in float32 and float64, and its predictions must change continuously as
atoms cross the cutoff and the triplet cutoff.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tensorframe.graph import build_graph
from tensorframe.model import build_model
from tensorframe.ops.radial import cosine_cutoff, legendre_basis
from tensorframe.types import Sample

CUTOFF = 4.0
TRIPLET_CUTOFF = 3.0

HEADS = [
    {"name": "born", "hidden": 8, "acoustic_sum_rule": True},
    {"name": "piezo", "hidden": 8},
    {"name": "dielectric", "hidden": 8, "positive_definite": True},
    {"name": "force", "hidden": 8},
    {"name": "tensor", "field": "elastic", "symmetry": "ijkl=jikl=ijlk=klij", "level": "structure", "hidden": 8},
    {"name": "tensor", "field": "general4", "symmetry": "ijkl", "level": "atom", "hidden": 8},  # uses c = a x b
    {"name": "tensor", "field": "axial", "symmetry": "i", "parity": 1, "level": "atom", "hidden": 8},  # c only
]


def _line(numbers, distances, direction=(1.0, 0.0, 0.0)) -> Sample:
    """Atoms on a straight line through the origin at cumulative ``distances``."""
    unit = np.asarray(direction) / np.linalg.norm(direction)
    along = np.concatenate([[0.0], np.cumsum(distances)])
    return Sample(numbers, along[:, None] * unit + np.array([0.3, -0.2, 0.1]))


def _rock_salt() -> Sample:
    a = 5.64
    fcc = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    frac = np.concatenate([fcc, fcc + [0.5, 0, 0]]) % 1.0
    return Sample([11] * 4 + [17] * 4, frac * a, np.eye(3) * a, [True] * 3)


def _perovskite() -> Sample:
    """Cubic SrTiO3: Ti-O-Ti at 180 degrees along every axis."""
    a = 3.905
    frac = np.array([[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    return Sample([38, 22, 8, 8, 8], frac * a, np.eye(3) * a, [True] * 3)


def _rock_salt_chain() -> Sample:
    """A (compressed) Na-Cl wire with period 2.9 Å: neighbours at 1.45 Å on both sides
    (180 degrees) and images of the atom itself at 2.9 Å, inside the triplet cutoff
    (0 degrees between the 1.45 and 2.9 Å neighbours on one side)."""
    return Sample([11, 17], [[0.0, 0.0, 0.0], [1.45, 0.0, 0.0]], np.diag([2.9, 0.0, 0.0]), [True, False, False])


STRUCTURES = {
    "CO2": _line([6, 8, 8], [1.16, -2.32]),  # O=C=O with C in the middle
    "CO2-tilted": _line([8, 6, 8], [1.16, 1.16], direction=(1.0, 2.0, -0.5)),
    "HCN": _line([1, 6, 7], [1.06, 1.15], direction=(0.0, 0.0, 1.0)),
    "C2H2": _line([1, 6, 6, 1], [1.06, 1.20, 1.06], direction=(1.0, 1.0, 1.0)),
    "rock-salt": _rock_salt(),
    "rock-salt-chain": _rock_salt_chain(),
    "perovskite": _perovskite(),
}


def _model(triplets: bool, dtype: torch.dtype):
    torch.manual_seed(0)
    config = {
        "cutoff": CUTOFF,
        "triplet_cutoff": TRIPLET_CUTOFF,
        "backbone": {"name": "reference", "hidden": 8, "num_radial": 8, "triplets": triplets},
        "heads": HEADS,
    }
    return build_model(config).to(dtype)


def _weighted_sum(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    total = 0.0
    for name in sorted(outputs):
        value = outputs[name]
        weights = torch.randn(value.shape, generator=generator, dtype=torch.float64).to(value.dtype)
        total = total + (value * weights).sum()
    return total


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("triplets", [True, False], ids=["native-triplets", "lifted-triplets"])
@pytest.mark.parametrize("name", sorted(STRUCTURES))
def test_straight_angles_give_finite_outputs_and_gradients(name: str, triplets: bool, dtype: torch.dtype):
    sample = STRUCTURES[name]
    model = _model(triplets, dtype)
    positions = torch.tensor(sample.positions, dtype=dtype, requires_grad=True)
    graph = build_graph([sample], CUTOFF, TRIPLET_CUTOFF, dtype=dtype, positions=positions)
    # The structure really has straight angles (and the chain zero angles) among its triplets.
    cos = graph.triplet_cos.detach().double()
    assert ((cos + 1).abs() < 1e-6).any(), "no straight angle"
    if name == "rock-salt-chain":
        assert ((cos - 1).abs() < 1e-6).any(), "no zero angle"
    outputs = model(graph)
    assert set(outputs) == {"born_charges", "piezo", "dielectric", "forces", "elastic", "general4", "axial"}
    for field, value in outputs.items():
        assert value.dtype == dtype and torch.isfinite(value).all(), field
    _weighted_sum(outputs).backward()
    assert positions.grad is not None and torch.isfinite(positions.grad).all()
    assert positions.grad.abs().sum() > 0
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads, "no parameter received a gradient"
    for parameter, grad in grads.items():
        assert torch.isfinite(grad).all(), parameter
    # Gradients really reach the heads. Only the even ones are checked for non-zero values:
    # odd tensors (forces, piezo) vanish on the centrosymmetric sites of the crystals, and the
    # axial c = a x b vanishes on straight angles.
    for head in ("born_charges", "dielectric", "elastic", "general4"):
        assert any(n.startswith(f"heads.{head}.") and g.abs().sum() > 0 for n, g in grads.items()), head


def test_legendre_basis_at_straight_and_zero_angles():
    """P_n(1) = 1, P_n(-1) = (-1)^n, P_n'(+-1) = (+-1)^(n+1) n (n+1) / 2: finite values and slopes."""
    cos = torch.tensor([1.0, -1.0, 0.3], dtype=torch.float64, requires_grad=True)
    basis = legendre_basis(cos, 8)
    n = torch.arange(8, dtype=torch.float64)
    torch.testing.assert_close(basis[0], torch.ones(8, dtype=torch.float64))
    torch.testing.assert_close(basis[1], (-1.0) ** n)
    slopes = torch.stack([torch.autograd.grad(basis[:, k].sum(), cos, retain_graph=True)[0] for k in range(8)], 1)
    assert torch.isfinite(slopes).all()
    torch.testing.assert_close(slopes[0], n * (n + 1) / 2)
    torch.testing.assert_close(slopes[1], (-1.0) ** (n + 1) * n * (n + 1) / 2)
    # Against numpy's Legendre polynomials at an interior point.
    reference = [np.polynomial.legendre.Legendre.basis(k)(0.3) for k in range(8)]
    np.testing.assert_allclose(basis[2].detach().numpy(), reference, rtol=1e-12, atol=1e-14)


def test_triplet_cos_gradient_is_finite_at_straight_and_zero_angles():
    sample = _rock_salt_chain()
    positions = torch.tensor(sample.positions, dtype=torch.float64, requires_grad=True)
    graph = build_graph([sample], CUTOFF, CUTOFF, dtype=torch.float64, positions=positions)
    assert ((graph.triplet_cos + 1).abs() < 1e-12).any() and ((graph.triplet_cos - 1).abs() < 1e-12).any()
    (grad,) = torch.autograd.grad(legendre_basis(graph.triplet_cos, 6).sum(), positions)
    assert torch.isfinite(grad).all()


def test_cosine_cutoff_vanishes_smoothly_at_the_cutoff():
    rc = 3.0
    r = torch.tensor([0.0, 1.5, rc - 1e-4, rc, rc + 1e-4, 10.0], dtype=torch.float64, requires_grad=True)
    value = cosine_cutoff(r, rc)
    (slope,) = torch.autograd.grad(value.sum(), r)
    assert value[0].item() == 1.0 and value[1].item() == pytest.approx(0.5, abs=1e-15)
    assert value[3].item() == 0.0 and value[4].item() == 0.0 and value[5].item() == 0.0
    # Just inside: value ~ (pi d / 2 rc)^2, slope ~ pi^2 d / (2 rc^2): both vanish with d.
    d = 1e-4
    assert value[2].item() == pytest.approx((math.pi * d / (2 * rc)) ** 2, rel=1e-6)
    assert slope[2].item() == pytest.approx(-(math.pi**2) * d / (2 * rc**2), rel=1e-6)
    assert torch.isfinite(slope).all() and slope[3:].abs().max().item() < 1e-15
    grid = torch.linspace(0, 2 * rc, 2001, dtype=torch.float64)
    values = cosine_cutoff(grid, rc)
    assert (values.diff() <= 0).all() and values.diff().abs().max() < 2 * math.pi / (2 * rc) * grid[1]


def _crossing_samples(move: str, offsets: np.ndarray) -> list[Sample]:
    """Three atoms; atom 2 slides along a line so that its distance to atom 0 passes through
    ``CUTOFF`` (move="cutoff") or ``TRIPLET_CUTOFF`` (move="triplet") at offset 0, while its
    distances to atom 1 stay well inside both cutoffs."""
    crossing = CUTOFF if move == "cutoff" else TRIPLET_CUTOFF
    base = np.array([[0.0, 0.0, 0.0], [1.4, 0.9, 0.0], [0.0, 0.0, 0.0]])
    direction = np.array([0.8, 0.6, 0.0])
    out = []
    for offset in offsets:
        positions = base.copy()
        positions[2] = (crossing + offset) * direction + np.array([0.0, 0.0, 0.0])
        out.append(Sample([8, 22, 8], positions))
    distances = [np.linalg.norm(s.positions[2] - s.positions[1]) for s in out]
    assert max(distances) < TRIPLET_CUTOFF - 0.2 and min(distances) > 0.5
    return out


def _predict_along(model, samples, hard_envelope: bool = False) -> np.ndarray:
    rows = []
    for sample in samples:
        graph = build_graph([sample], CUTOFF, TRIPLET_CUTOFF, dtype=torch.float64)
        if hard_envelope:  # a deliberately broken graph: a step instead of a smooth envelope
            graph.edge_envelope = (graph.edge_len < CUTOFF).double()
            graph.triplet_envelope = torch.ones_like(graph.triplet_envelope)
        with torch.no_grad():
            outputs = model(graph)
        rows.append(np.concatenate([outputs[k].reshape(-1).numpy() for k in sorted(outputs)]))
    return np.stack(rows)


@pytest.mark.parametrize("triplets", [True, False], ids=["native-triplets", "lifted-triplets"])
@pytest.mark.parametrize("move", ["cutoff", "triplet"])
def test_predictions_are_continuous_across_the_cutoffs(move: str, triplets: bool):
    """Steps of 1e-6 Å either side of the cutoff: the step across it changes the outputs no
    more than the steps beside it (no jump when an edge or triplet appears), while a hard
    step envelope makes a jump many orders of magnitude larger."""
    model = _model(triplets, torch.float64)
    step = 1e-6
    offsets = step * np.arange(-4, 4) + step / 2  # the crossing lies between the middle two
    samples = _crossing_samples(move, offsets)
    graphs = [build_graph([s], CUTOFF, TRIPLET_CUTOFF, dtype=torch.float64) for s in samples]
    edges = [g.num_edges for g in graphs]
    triplet_counts = [g.num_triplets for g in graphs]
    changed = edges if move == "cutoff" else triplet_counts
    assert changed[3] != changed[4] and len(set(changed[:4])) == 1 and len(set(changed[4:])) == 1

    values = _predict_along(model, samples)
    steps = np.abs(np.diff(values, axis=0)).max(axis=1)
    across, beside = steps[3], np.delete(steps, 3).max()
    assert np.isfinite(values).all()
    assert across <= 2 * beside + 1e-12, (across, beside)
    assert beside < 1e-4  # outputs are O(1): Lipschitz steps of 1e-6 Å

    if move == "cutoff":
        broken = _predict_along(model, samples, hard_envelope=True)
        jump = np.abs(np.diff(broken, axis=0)).max(axis=1)[3]
        assert jump > 1e3 * max(beside, 1e-9)
