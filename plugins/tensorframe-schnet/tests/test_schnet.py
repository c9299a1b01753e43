"""The ``schnet`` backbone plugin: the backbone contract (tensorframe.testing.contract: invariant
features, equivariant outputs of every built-in head, batching, gradients, dtypes, the
entry point, a core that works without the plugin), plus what is SchNet's own: the
interaction block (cfconv filters) against a loop over edges, and the paper's defaults.
"""

from __future__ import annotations

import torch
from tensorframe_schnet import SchNetConfig
from tensorframe_schnet.schnet import InteractionBlock, ShiftedSoftplus

from tensorframe import FeatureDims, build_registry
from tensorframe.testing.contract import BackboneContract, default_backbone


class TestSchNet(BackboneContract):
    config = {"name": "schnet", "hidden": 16, "num_filters": 12, "num_interactions": 2, "num_gaussians": 10}
    distribution = "tensorframe-schnet"
    default_feature_dims = FeatureDims(node=128, edge=128, triplet=None)


def test_interaction_block_matches_a_loop_over_edges():
    """cfconv gathers the neighbour j and sums into the centre i (edge j -> i)."""
    torch.manual_seed(0)
    block = InteractionBlock(hidden=5, num_filters=4, num_gaussians=3).double()
    x = torch.randn(4, 5, dtype=torch.float64)
    rbf = torch.rand(6, 3, dtype=torch.float64)
    envelope = torch.rand(6, dtype=torch.float64)
    idx_i = torch.tensor([0, 0, 1, 2, 3, 3])
    idx_j = torch.tensor([1, 2, 0, 3, 1, 1])
    expected = torch.zeros(4, 4, dtype=torch.float64)
    for e in range(6):
        w = block.filter_net(rbf[e]) * envelope[e]
        expected[idx_i[e]] += (block.to_filters.weight @ x[idx_j[e]]) * w
    ssp = ShiftedSoftplus()
    expected = block.atomwise(ssp(block.from_filters(expected)))
    torch.testing.assert_close(block(x, rbf, envelope, idx_i, idx_j), expected, rtol=1e-12, atol=1e-12)


def test_paper_defaults():
    """Three interaction blocks on 50 Gaussians."""
    assert build_registry().get("backbone", "schnet").config is SchNetConfig
    backbone = default_backbone("schnet")
    assert (len(backbone.interactions), backbone.rbf.centers.numel()) == (3, 50)
