"""Options of the ETGNN backbone (``backbone: {name: etgnn, ...}`` in a model config)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt

from tensorframe import PluginConfig


class ETGNNConfig(PluginConfig):
    """ETGNN sizes. The cutoffs are not here: they come from the model's graph settings
    (``cutoff`` for edges, ``triplet_cutoff`` for triplets); the authors used 6 Å and 4 Å.

    Outputs: node (N, hidden), edge (E, hidden) = the final message m_ji, triplet
    (T, triplet_dim) = the final triplet message m_kji.

    ``triplet_dim`` defaults to 64, half of ``hidden``: triplets outnumber edges about five to
    one, so this halves the triplet-sized matmuls and stored activations (set 128 for the
    former default, where triplet and edge messages had equal width).
    """

    hidden: PositiveInt = Field(128, description="width of the edge messages m_ji and of the node features")
    triplet_dim: PositiveInt = Field(
        64,
        description="width of the triplet messages m_kji; smaller than the edge width by default "
        "(there are ~5x more triplets than edges): halves the triplet-sized matmuls and stored activations",
    )
    num_blocks: PositiveInt = Field(4, description="edge + triplet update blocks")
    num_radial: PositiveInt = Field(8, description="Bessel functions of the edge length")
    num_spherical: PositiveInt = Field(7, description="orders l of the triplet basis (angular resolution)")
    num_spherical_radial: PositiveInt = Field(6, description="zeros per order of the triplet basis (radial resolution)")
    int_emb_size: PositiveInt = Field(64, description="width of all per-triplet work (down-projection)")
    basis_emb_size: PositiveInt = Field(8, description="bottleneck of the basis projections")
    out_emb_size: PositiveInt = Field(128, description="width of the node output block")
    num_before_skip: int = Field(1, ge=0, description="residual layers before the skip of an edge update")
    num_after_skip: int = Field(2, ge=0, description="residual layers after the skip of an edge update")
    num_triplet_residual: int = Field(1, ge=0, description="residual layers (int_emb_size wide) in a triplet update")
    num_output_layers: int = Field(2, ge=0, description="dense layers of the node output block")
    max_z: PositiveInt = Field(100, description="largest atomic number embedded")
    activation: Literal["silu", "gelu", "tanh", "softplus"] = "silu"
    checkpoint: bool = Field(
        False,
        description="recompute each block in the backward pass instead of storing its activations "
        "(activation checkpointing): much less memory in training for about one more forward pass",
    )
