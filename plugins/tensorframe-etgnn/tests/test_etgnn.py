"""The ETGNN backbone plugin: the backbone contract (tensorframe.testing.contract: invariant
node, edge and triplet features, equivariant outputs of every built-in head, batching,
gradients, dtypes, straight angles, inference without autograd, the entry point), plus what
is ETGNN's own: gradient checkpointing, ``gather_mul``, the Born charges of lone atoms with
the default and the paper's words, the spherical Bessel basis, and pruning of the triplet
chain when no head reads triplet features."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from scipy.special import spherical_jn
from tensorframe_etgnn.basis import SphericalBasis, spherical_bessel, spherical_bessel_orders, spherical_bessel_zeros

import tensorframe as tf
from tensorframe import FeatureDims, gather_mul
from tensorframe.ops.native import native_enabled
from tensorframe.ops.triplet_kernels import native_kernels
from tensorframe.testing.contract import BackboneContract, contract_samples, degenerate_samples

CUTOFF, TRIPLET_CUTOFF = 4.0, 3.0
SMALL = {
    "hidden": 16, "triplet_dim": 12, "num_blocks": 2, "num_radial": 6, "num_spherical": 4,
    "num_spherical_radial": 3, "int_emb_size": 8, "basis_emb_size": 4, "out_emb_size": 16,
}
NAMED_HEADS = [{"name": "born"}, {"name": "piezo"}, {"name": "dielectric"}, {"name": "force"}]


class TestETGNN(BackboneContract):
    config = {"name": "etgnn", **SMALL}
    distribution = "tensorframe-etgnn"
    default_feature_dims = FeatureDims(node=128, edge=128, triplet=64)


def small_model(heads: list[dict], dtype: torch.dtype = torch.float64, seed: int = 0) -> tf.TensorModel:
    torch.manual_seed(seed)
    config = {
        "cutoff": CUTOFF, "triplet_cutoff": TRIPLET_CUTOFF,
        "backbone": {"name": "etgnn", **SMALL},
        "heads": [dict(head, hidden=16) for head in heads],
    }
    return tf.build_model(config).to(dtype)


def test_checkpointing_gives_the_same_outputs_and_gradients():
    model = small_model(NAMED_HEADS).train()
    recomputing = copy.deepcopy(model)
    recomputing.backbone.config = recomputing.backbone.config.model_copy(update={"checkpoint": True})
    graph = model.make_graph(contract_samples())
    grads = []
    for m in (model, recomputing):
        outputs = m(graph)
        (outputs["born_charges"].square().sum() + outputs["piezo"].square().sum()).backward()
        grads.append({name: p.grad.clone() for name, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-10, atol=1e-12, msg=name)


def test_gather_mul_gradients_match_finite_differences():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    weight = torch.randn(9, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    index = torch.tensor([0, 4, 4, 1, 0, 2, 3, 3, 4])
    torch.testing.assert_close(gather_mul(x, index, weight), x[index] * weight)
    assert torch.autograd.gradcheck(lambda a, w: gather_mul(a, index, w), (x, weight))


def test_lone_atoms_get_isotropic_born_charges_from_the_default_words_only():
    """An isolated atom's site group is all of O(3), which allows an isotropic rank-2 tensor: the
    default (complete) words give one, proportional to the identity; the paper's words give
    zero. (Finite outputs without edges or triplets are the contract's.)"""
    dimer, isolated = (degenerate_samples()[name] for name in ("dimer", "isolated atoms"))
    model = small_model(NAMED_HEADS).eval()
    with torch.no_grad():
        born = model(model.make_graph([dimer, isolated]))["born_charges"]
    assert float(born[:2].abs().max()) > 0
    lone = born[2:]
    assert float(lone.abs().max()) > 0
    identity = torch.eye(3, dtype=lone.dtype)
    torch.testing.assert_close(lone, lone.diagonal(dim1=1, dim2=2).mean(-1)[:, None, None] * identity)
    paper = small_model([dict(head, basis="paper") for head in NAMED_HEADS]).eval()
    with torch.no_grad():
        assert float(paper(paper.make_graph([dimer, isolated]))["born_charges"][2:].abs().max()) == 0.0


# ------------------------------------------------------------------- spherical Bessel basis

KNOWN_ZEROS = {  # (l, n): n-th positive zero of j_l (Abramowitz & Stegun, table 10.6)
    (0, 1): math.pi, (1, 1): 4.493409457909064, (1, 2): 7.725251836937707,
    (2, 1): 5.763459196894550, (3, 1): 6.987932000500519, (6, 1): 10.51283540809400,
}


def test_spherical_bessel_zeros_are_zeros_and_increasing():
    zeros = spherical_bessel_zeros(8, 7)
    assert zeros.shape == (8, 7) and np.all(np.isfinite(zeros))
    for (order, n), value in KNOWN_ZEROS.items():
        assert zeros[order, n - 1] == pytest.approx(value, rel=1e-12)
    for order in range(8):
        assert np.all(np.abs(spherical_jn(order, zeros[order])) < 1e-12), f"j_{order} is not zero at its zeros"
        assert np.all(np.diff(zeros[order]) > 0)
        # No zero skipped: exactly one sign change between two consecutive zeros.
        grid = np.linspace(zeros[order, 0] * 0.999, zeros[order, -1] * 1.0001, 20000)
        changes = np.count_nonzero(np.diff(np.sign(spherical_jn(order, grid))))
        assert changes == zeros.shape[1]
        if order:  # interlacing with the previous order
            assert np.all(zeros[order - 1] < zeros[order])
            assert np.all(zeros[order, :-1] < zeros[order - 1, 1:])


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-12), (torch.float32, 2e-6)], ids=["float64", "float32"])
def test_spherical_bessel_matches_scipy(dtype, rtol):
    x = np.concatenate([np.geomspace(1e-3, 1.0, 50), np.linspace(1.0, 40.0, 800)])
    for order in range(8):
        expected = spherical_jn(order, x)
        actual = spherical_bessel(order, torch.tensor(x, dtype=dtype)).double().numpy()
        np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * 0.1, err_msg=f"j_{order}")


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-12), (torch.float32, 2e-6)], ids=["float64", "float32"])
def test_spherical_bessel_of_all_orders_at_once_matches_scipy(dtype, rtol):
    """The basis's vectorised form (every order in one pass, series by Horner's scheme, as
    many terms as the bound needs) is as accurate as the per-order function, on both sides
    of every branch switch ``x = l + 1`` and at tiny arguments (where the forward sum's terms
    underflow)."""
    x = np.concatenate([np.geomspace(1e-6, 1.0, 60), np.linspace(1.0, 40.0, 800), np.arange(1, 9) + 1e-9,
                        np.arange(1, 9) - 1e-9])
    actual = spherical_bessel_orders(torch.tensor(np.stack([x] * 8), dtype=dtype)).double().numpy()
    for order in range(8):
        np.testing.assert_allclose(actual[order], spherical_jn(order, x), rtol=rtol, atol=rtol * 0.1, err_msg=f"j_{order}")


def test_spherical_basis_vanishes_at_triplet_cutoff_and_has_finite_gradients():
    basis = SphericalBasis(7, 6, TRIPLET_CUTOFF).double()
    length = torch.tensor([0.5, 1.5, TRIPLET_CUTOFF], dtype=torch.float64, requires_grad=True)
    radial = basis.radial(length)
    assert float(radial[-1].detach().abs().max()) < 1e-10
    cos = torch.tensor([-1.0, 1.0, 0.3], dtype=torch.float64, requires_grad=True)
    sbf = basis(length, cos, torch.arange(3), torch.ones(3, dtype=torch.float64))
    sbf.square().sum().backward()
    assert bool(torch.isfinite(length.grad).all()) and bool(torch.isfinite(cos.grad).all())


@pytest.mark.parametrize("compiled", [False, True], ids=["pytorch-kernels", "compiled-kernels"])
def test_triplet_messages_are_skipped_exactly_when_no_head_reads_them(compiled):
    """A model whose heads read no triplet features prunes ETGNN's triplet chain: the outputs
    (and gradients) are those of the full backbone, and no triplet features are made. With
    the pure-PyTorch kernels bit for bit; with the compiled ones the pruned model sums its
    triplets in one fused pass (another order of additions), so to float32 rounding."""
    if compiled and not native_enabled():
        pytest.skip("the compiled triplet kernels are not built (tests/test_triplet_kernels.py says why)")
    tolerance = 2e-6 if compiled else 0.0
    edge_only = [{"name": "force"}, {"name": "scalar", "field": "energy"}]
    pruned = small_model(edge_only).train()
    assert pruned.backbone.triplet_output is False
    full = copy.deepcopy(pruned)
    full.backbone.triplet_output = True
    graph = pruned.make_graph(contract_samples())
    assert pruned.features(graph).triplet is None
    assert full.features(graph).triplet.shape == (graph.num_triplets, SMALL["triplet_dim"])
    grads = []
    with native_kernels(compiled):
        for m in (pruned, full):
            outputs = m(graph)
            (outputs["forces"].square().sum() + outputs["energy"].square().sum()).backward()
            grads.append({name: p.grad for name, p in m.named_parameters() if p.grad is not None})
            if m is pruned:
                pruned_outputs = outputs
    for name, value in outputs.items():
        scale = tolerance * float(value.abs().max())
        torch.testing.assert_close(pruned_outputs[name], value, rtol=tolerance, atol=scale, msg=name)
    # The full backbone's triplet chain gets no gradient from these heads; everything else matches.
    assert grads[0].keys() <= grads[1].keys()
    for name, grad in grads[0].items():
        scale = tolerance * float(grads[1][name].abs().max())
        torch.testing.assert_close(grad, grads[1][name], rtol=tolerance, atol=scale, msg=name)
    assert small_model(NAMED_HEADS).backbone.triplet_output is True
