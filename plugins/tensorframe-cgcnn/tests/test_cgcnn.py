"""The ``cgcnn`` backbone plugin: the backbone contract (tensorframe.testing.contract: invariant
features, equivariant outputs of every built-in head, batching, gradients, dtypes, the
entry point, a core that works without the plugin), plus what is CGCNN's own: the gated
convolution against a loop over edges, the paper's defaults, and the ``norm: none`` option.
"""

from __future__ import annotations

import copy

import pytest
import torch
from tensorframe_cgcnn import CGCNNConfig
from tensorframe_cgcnn.cgcnn import GatedConv
from torch import nn

from tensorframe import FeatureDims, build_registry
from tensorframe.testing import assert_batch_consistent
from tensorframe.testing.contract import (
    BackboneContract,
    assert_gradients_reach_parameters,
    build_contract_model,
    contract_samples,
    default_backbone,
)

OPTIONS = {"name": "cgcnn", "hidden": 16, "num_layers": 2, "num_gaussians": 10}


class TestCGCNN(BackboneContract):
    config = OPTIONS
    distribution = "tensorframe-cgcnn"
    default_feature_dims = FeatureDims(node=64, edge=64, triplet=None)


@pytest.mark.parametrize("norm", ["layer", "none"])
def test_gated_conv_matches_a_loop_over_edges(norm):
    """z = [v_i, v_j, u_ji] with the centre i first; messages sum into the centre (edge j -> i)."""
    torch.manual_seed(0)
    conv = GatedConv(hidden=5, num_gaussians=3, norm=norm).double()
    if norm == "layer":  # move the affine part away from its identity initialisation
        nn.init.normal_(conv.norm.weight)
        nn.init.normal_(conv.norm.bias)
    v = torch.randn(4, 5, dtype=torch.float64)
    u = torch.rand(6, 3, dtype=torch.float64)
    envelope = torch.rand(6, dtype=torch.float64)
    idx_i = torch.tensor([0, 0, 1, 2, 3, 3])
    idx_j = torch.tensor([1, 2, 0, 3, 1, 1])
    linear = conv.linear
    weight = torch.cat([linear.center.weight, linear.neighbor.weight, linear.edge.weight], dim=1)  # W of z
    expected = torch.zeros(4, 5, dtype=torch.float64)
    for e in range(6):
        z = torch.cat([v[idx_i[e]], v[idx_j[e]], u[e]])
        pre = weight @ z + linear.center.bias
        if norm == "layer":
            pre = (pre - pre.mean()) / torch.sqrt(pre.var(unbiased=False) + conv.norm.eps)
            pre = pre * conv.norm.weight + conv.norm.bias
        expected[idx_i[e]] += torch.sigmoid(pre[:5]) * nn.functional.softplus(pre[5:]) * envelope[e]
    torch.testing.assert_close(conv(v, u, envelope, idx_i, idx_j), expected, rtol=1e-12, atol=1e-12)


def test_without_layer_norm_batches_and_trains():
    """``norm: none`` (the contract runs the default, layer norm): batching changes nothing and
    gradients reach every parameter, in float64 and float32."""
    model = build_contract_model({**OPTIONS, "norm": "none"})
    assert_batch_consistent(model, contract_samples())
    for dtype in (torch.float64, torch.float32):
        assert_gradients_reach_parameters(copy.deepcopy(model).to(dtype), contract_samples())


def test_paper_defaults():
    """Three gated convolutions on 40 Gaussians, with layer norm (never batch norm)."""
    assert build_registry().get("backbone", "cgcnn").config is CGCNNConfig
    backbone = default_backbone("cgcnn")
    assert (len(backbone.convs), backbone.expansion.centers.numel()) == (3, 40)
    assert all(isinstance(conv.norm, nn.LayerNorm) for conv in backbone.convs)
