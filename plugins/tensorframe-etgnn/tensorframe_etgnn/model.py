"""ETGNN: the invariant backbone of Zhong, Yu, Gong, Xiang, "Edge-based tensor prediction via
graph neural networks" (J. Phys. Chem. Lett. 14, 6339, 2023), a DimeNet++ whose triplets
carry messages of their own.

    rbf_ji   = Bessel(|r_ji|) * envelope                         edge distance basis
    sbf_kji  = j_l(z_ln |r_kj| / rc_t) Y_l0(angle kji) * envelope triplet basis (basis.py)
    m_ji     = EdgeEmbedding(Z_i, Z_j, rbf_ji)
    m_kji    = TripletEmbedding(Z_k, Z_j, Z_i, rbf_ji, sbf_kji)
    repeat num_blocks times:
        m_ji  <- EdgeUpdate(m_ji, sum_k m_kj (x) sbf_kji)         DimeNet++ interaction
        m_kji <- TripletUpdate(m_kji, m_kj, m_ji, rbf_ji, sbf_kji)
    h_i      = NodeOutput(sum_j rbf_ji * m_ji)

Only invariants enter: element numbers, edge lengths, the triplet angle cosines and the
smooth envelopes, so every output is invariant under rotations, reflections, translations
and periodic images, and permutes with the atoms.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from tensorframe import Backbone, BesselBasis, FeatureDims, Graph, GraphSettings, InvariantFeatures
from tensorframe_etgnn.basis import SphericalBasis
from tensorframe_etgnn.blocks import EdgeEmbedding, InteractionBlock, NodeOutput, TripletEmbedding
from tensorframe_etgnn.config import ETGNNConfig
from tensorframe_etgnn.ops import triplet_edges


class ETGNN(Backbone):
    """Edge messages m_ji and triplet messages m_kji updated in ``num_blocks`` rounds.

    The edge Bessel basis uses ``settings.cutoff``; the spherical basis of triplets uses
    ``settings.triplet_cutoff`` (only edges shorter than it enter triplets).

    Shapes:
        forward(graph) -> InvariantFeatures(node (N, hidden), edge (E, hidden),
                                            triplet (T, triplet_dim), or None after
                                            ``prune_outputs(triplet=False)``)
    """

    def __init__(self, config: ETGNNConfig, settings: GraphSettings) -> None:
        super().__init__()
        self.config = config
        self.max_z = config.max_z
        c = config
        num_sbf = c.num_spherical * c.num_spherical_radial
        self.rbf = BesselBasis(settings.cutoff, c.num_radial)
        self.sbf = SphericalBasis(c.num_spherical, c.num_spherical_radial, settings.triplet_cutoff)
        self.edge_embedding = EdgeEmbedding(c.num_radial, c.hidden, c.max_z, c.activation)
        self.triplet_embedding = TripletEmbedding(c.hidden, num_sbf, c.triplet_dim, c.activation)
        self.blocks = nn.ModuleList(
            InteractionBlock(
                c.hidden, c.triplet_dim, c.int_emb_size, c.basis_emb_size, c.num_radial, num_sbf,
                c.num_before_skip, c.num_after_skip, c.num_triplet_residual, c.activation,
            )
            for _ in range(c.num_blocks)
        )
        self.output = NodeOutput(c.num_radial, c.hidden, c.out_emb_size, c.num_output_layers, c.activation)
        self.feature_dims = FeatureDims(node=c.hidden, edge=c.hidden, triplet=c.triplet_dim)
        self.triplet_output = True

    def prune_outputs(self, *, triplet: bool) -> None:
        """Without a head that reads triplet features, skip the triplet messages altogether:
        edge messages never read them (they are a side chain of the edge updates), so the
        node and edge features are unchanged and ``triplet`` is None."""
        self.triplet_output = bool(triplet)

    def forward(self, graph: Graph) -> InvariantFeatures:
        if graph.numbers.numel() and not torch.compiler.is_compiling() and int(graph.numbers.max()) > self.max_z:
            raise ValueError(
                f"numbers: atomic number {int(graph.numbers.max())} exceeds backbone.max_z = {self.max_z}, "
                f"the largest element this backbone embeds; raise max_z in its config"
            )
        rbf = self.rbf(graph.edge_len) * graph.edge_envelope.unsqueeze(-1)
        edges, kj, ji = triplet_edges(graph.idx_kj, graph.idx_ji, graph.edge_len.shape[0])
        # The radial part of the triplet basis only on the edges inside triplets (kj indexes them).
        sbf = self.sbf.factors(graph.edge_len.index_select(0, edges), graph.triplet_cos, kj, graph.triplet_envelope)
        if self.triplet_output or not sbf.fused:
            sbf.dense()  # formed once here, outside any recomputed (checkpointed) block
        messages, atoms, radial = self.edge_embedding(graph.numbers, rbf, graph.idx_i, graph.idx_j)
        triplets = None
        if self.triplet_output:
            triplets = self.triplet_embedding(atoms, radial, sbf, graph.idx_i, graph.idx_j, edges, kj, ji)
        recompute = self.config.checkpoint and torch.is_grad_enabled()
        for block in self.blocks:
            if recompute:
                messages, triplets = checkpoint(block, messages, triplets, rbf, sbf, edges, kj, ji, use_reentrant=False)
            else:
                messages, triplets = block(messages, triplets, rbf, sbf, edges, kj, ji)
        node = self.output(messages, rbf, graph.idx_i, graph.num_nodes)
        return InvariantFeatures(node=node, edge=messages, triplet=triplets)


def build_etgnn(config: ETGNNConfig, settings: GraphSettings) -> ETGNN:
    return ETGNN(config, settings)
