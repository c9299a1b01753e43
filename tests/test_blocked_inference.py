"""Inference-only fast paths give what the autograd path gives: the tensor heads' coefficient
MLP evaluated in blocks of rows with a transposed output (``coefficient_columns``), and the
dense triplet basis gathered as whole rows and scaled in place (``TripletBasis.dense``).
Tolerances: 1e-6 in float32 and 1e-12 in float64, relative to the largest value."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import tensorframe.ops.blocking as blocking
from tensorframe import build_model
from tensorframe.heads.base import coefficient_columns, coefficient_mlp
from tensorframe.ops.triplet_kernels import TripletBasis
from tensorframe.testing.contract import contract_samples

TOLERANCE = {torch.float32: 1e-6, torch.float64: 1e-12}
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])


def assert_close_to(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    scale = max(float(expected.abs().max()) if expected.numel() else 0.0, 1.0)
    torch.testing.assert_close(actual, expected, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype] * scale)


@DTYPES
@settings(deadline=None, max_examples=25)
@given(rows=st.integers(0, 40), block=st.integers(1, 9), widths=st.tuples(st.integers(1, 12), st.integers(1, 12),
                                                                          st.integers(1, 5)),
       seed=st.integers(0, 2**31 - 1))
def test_coefficient_columns_match_the_plain_mlp(dtype, rows, block, widths, seed):
    """Any number of rows, one block or many (a last block shorter than the others included)."""
    torch.manual_seed(seed)
    mlp = coefficient_mlp(*widths).to(dtype)
    x = torch.randn(rows, widths[0], dtype=dtype)
    expected = mlp(x).detach().t()
    with torch.no_grad(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(blocking, "BLOCK_VALUES", block * widths[1])  # blocks of `block` rows
        actual = coefficient_columns(mlp, x)
    assert actual.shape == (widths[2], rows) and actual.is_contiguous()
    assert_close_to(actual, expected, dtype)


def test_coefficient_columns_keep_autograd_and_other_modules_on_the_plain_path():
    torch.manual_seed(0)
    mlp = coefficient_mlp(6, 8, 2).double()
    x = torch.randn(30, 6, dtype=torch.float64, requires_grad=True)
    columns = coefficient_columns(mlp, x)
    (gradient,) = torch.autograd.grad(columns.square().sum(), x)
    (expected,) = torch.autograd.grad(mlp(x).square().sum(), x)
    torch.testing.assert_close(gradient, expected, rtol=1e-12, atol=1e-12)
    other = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    with torch.no_grad():
        torch.testing.assert_close(coefficient_columns(other, x), other(x).t(), rtol=0, atol=0)


@DTYPES
def test_tensor_heads_in_inference_match_the_autograd_path(dtype):
    """Heads with triplet words (Born charges, polarizability, a rank-3 tensor) on the contract
    structures, their triplet coefficients in blocks of one row (56 values, 64 wide): predictions under
    ``torch.no_grad`` equal those of the autograd path."""
    torch.manual_seed(0)
    model = build_model({
        "cutoff": 4.0, "triplet_cutoff": 3.0,
        "backbone": {"name": "etgnn", "hidden": 16, "triplet_dim": 8, "int_emb_size": 8, "out_emb_size": 16,
                     "num_blocks": 2},
        "heads": [{"name": "born"}, {"name": "polarizability"}, {"name": "tensor", "field": "hyperpolarizability"}],
    }).to(dtype).eval()
    graph = model.make_graph(contract_samples())
    assert graph.num_triplets > 7
    expected = model(graph)
    with torch.no_grad(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(blocking, "BLOCK_VALUES", 56)
        actual = model(graph)
    for name in expected:
        assert_close_to(actual[name], expected[name].detach(), dtype)


@DTYPES
@pytest.mark.parametrize("grad", [False, True], ids=["inference", "autograd"])
def test_dense_basis_of_a_strided_radial_part(dtype, grad):
    """A radial part laid out (L, N, S) and permuted to (S, L, N), as a basis computed orders
    first gives it: the dense basis is exactly angular[t, l] * radial[kj[t], l, n], with the
    reference's gradients."""
    generator = torch.Generator().manual_seed(3)
    radial = torch.randn(4, 3, 11, generator=generator, dtype=dtype).permute(2, 0, 1).requires_grad_(grad)
    angular = torch.randn(25, 4, generator=generator, dtype=dtype, requires_grad=grad)
    kj = torch.randint(0, 11, (25,), generator=generator)
    assert not radial.is_contiguous()
    expected = torch.stack([angular[t, :, None] * radial[kj[t]] for t in range(25)]).flatten(1)
    with torch.set_grad_enabled(grad):
        dense = TripletBasis(angular, radial, kj).dense()
    assert torch.equal(dense, expected)
    if grad:
        weights = torch.randn(dense.shape, generator=generator, dtype=dtype)
        actual = torch.autograd.grad((dense * weights).sum(), [angular, radial])
        reference = torch.autograd.grad((expected * weights).sum(), [angular, radial])
        for a, b in zip(actual, reference, strict=True):
            assert_close_to(a, b, dtype)


@DTYPES
@pytest.mark.parametrize("activation", ["silu", "gelu"], ids=["in-place", "copied"])
def test_etgnn_triplet_blocks_in_inference_match_the_autograd_path(dtype, activation):
    """ETGNN's triplet embedding and updates in blocks of 7 triplets (56 values, 8 wide) (with a residual layer;
    SiLU works in place, GELU is copied back): node, edge and triplet features under
    ``torch.no_grad`` equal those of the autograd path."""
    torch.manual_seed(0)
    model = build_model({
        "cutoff": 4.0, "triplet_cutoff": 3.0, "heads": [{"name": "born"}],
        "backbone": {"name": "etgnn", "hidden": 16, "triplet_dim": 8, "int_emb_size": 8, "out_emb_size": 16,
                     "num_blocks": 2, "num_triplet_residual": 1, "activation": activation},
    }).to(dtype).eval()
    graph = model.make_graph(contract_samples())
    assert graph.num_triplets > 7
    expected = model.features(graph)
    with torch.no_grad(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(blocking, "BLOCK_VALUES", 56)
        actual = model.features(graph)
    for name in ("node", "edge", "triplet"):
        assert_close_to(getattr(actual, name), getattr(expected, name).detach(), dtype)


def test_no_blocks_under_autocast():
    """The blocks write with ``out=``, which autocast does not cast: under autocast the
    whole-tensor form runs (ETGNN's triplet blocks once failed with mixed dtypes there)."""
    with torch.no_grad():
        assert blocking.blocked_inference()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not blocking.blocked_inference()
