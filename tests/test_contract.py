"""The backbone contract (tensorframe.testing.contract) on every installed backbone, each with
every built-in head, and proof that the contract catches a backbone that is not invariant.

A newly installed backbone is contract-tested automatically: unknown names run with their
default options (an empty config).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from torch import nn

import tensorframe as tf
from tensorframe.testing import assert_equivariant, assert_translation_invariant
from tensorframe.testing.contract import (
    BackboneContract,
    _match_rows,
    assert_features_invariant,
    build_contract_model,
    contract_samples,
)
from tensorframe.testing.reference_backbone import ReferenceBackbone, ReferenceBackboneConfig
from tensorframe.types import Graph, InvariantFeatures

# Small sizes of the known backbones (option names from each plugin's config class).
SMALL_CONFIGS: dict[str, dict[str, Any]] = {
    "reference": {"hidden": 16, "num_radial": 8},
    "schnet": {"hidden": 16, "num_filters": 16, "num_interactions": 2, "num_gaussians": 16},
    "cgcnn": {"hidden": 16, "num_layers": 2, "num_gaussians": 16},
    "etgnn": {"hidden": 16, "triplet_dim": 16, "num_blocks": 2, "int_emb_size": 8, "basis_emb_size": 4,
              "out_emb_size": 16},
}

BACKBONES = tf.get_registry().names("backbone")


@pytest.fixture(scope="module", params=BACKBONES)
def backbone_config(request: pytest.FixtureRequest) -> dict[str, Any]:
    return {"name": request.param, **SMALL_CONFIGS.get(request.param, {})}


class TestEveryBackbone(BackboneContract):
    """Every registered backbone x every built-in head."""


def test_known_backbones_are_registered() -> None:
    """The built-in reference and the plugins in this repository are installed and contract-tested."""
    assert {"reference", "schnet", "cgcnn"} <= set(BACKBONES), tf.get_registry().problems


# ---------------------------------------------------------------- a broken backbone


class RawComponentBackbone(ReferenceBackbone):
    """The reference backbone plus the x component of ``edge_vec`` fed into its edge features:
    translation invariant, but not rotation invariant."""

    def __init__(self, config: ReferenceBackboneConfig, settings: tf.GraphSettings) -> None:
        super().__init__(config, settings)
        self.raw = nn.Linear(1, config.hidden)

    def forward(self, graph: Graph) -> InvariantFeatures:
        features = super().forward(graph)
        return replace(features, edge=features.edge + self.raw(graph.edge_vec[:, :1]))


class _RawComponentPlugin:
    @tf.hookimpl
    def tensorframe_register_backbones(self) -> list[tf.BackboneSpec]:
        return [tf.BackboneSpec("raw_component", ReferenceBackboneConfig, RawComponentBackbone)]


@pytest.fixture(scope="module")
def broken_model() -> tf.TensorModel:
    plugins = [("raw_component", _RawComponentPlugin())]
    return build_contract_model({"name": "raw_component", "hidden": 16, "num_radial": 8}, extra_plugins=plugins)


def _rotation(seed: int = 5) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


@pytest.mark.parametrize("index", [0, 1], ids=["crystal", "molecule"])
def test_contract_catches_a_raw_cartesian_component(broken_model, index) -> None:
    sample = contract_samples()[index]
    for rotation in (_rotation(), -_rotation(), np.diag([-1.0, 1.0, 1.0])):
        with pytest.raises(AssertionError, match="edge features are not invariant"):
            assert_features_invariant(broken_model, sample, rotation=rotation)
        with pytest.raises(AssertionError, match="not equivariant"):
            assert_equivariant(broken_model, sample, rotation)
    # Broken in one way only: translations and permutations do not reveal it.
    assert_features_invariant(broken_model, sample, shift=[1.3, -0.7, 2.1])
    assert_features_invariant(broken_model, sample, permutation=np.roll(np.arange(sample.num_atoms), 1))
    assert_translation_invariant(broken_model, sample)


def test_feature_check_matches_edges_by_image() -> None:
    """Moving atoms to other periodic images reorders nothing physical: a correct backbone
    passes; a backbone reading the stored positions (ignoring the image) fails."""
    model = build_contract_model({"name": "reference", "hidden": 16, "num_radial": 8})
    crystal = contract_samples()[0]
    shifts = np.array([[1, 0, -1], [0, 2, 0], [-1, -1, 1], [0, 0, 0]])
    assert_features_invariant(model, crystal, image_shifts=shifts)

    class StoredPositions(ReferenceBackbone):
        def forward(self, graph: Graph) -> InvariantFeatures:
            features = super().forward(graph)
            unwrapped = (graph.positions[graph.idx_i] - graph.positions[graph.idx_j]).norm(dim=-1, keepdim=True)
            return replace(features, edge=features.edge * (1.0 + 0.1 * unwrapped))

    broken = StoredPositions(ReferenceBackboneConfig(hidden=16, num_radial=8), model.graph_settings).double()
    model.backbone = broken
    assert_features_invariant(model, crystal, rotation=_rotation())  # rotation invariant
    with pytest.raises(AssertionError, match="edge features are not invariant under atoms moved by lattice"):
        assert_features_invariant(model, crystal, image_shifts=shifts)


def test_feature_check_rejects_bad_transformations() -> None:
    """Image shifts along a non-periodic direction and non-permutations are input errors; edge
    sets that differ after a transformation are reported, not silently compared in part."""
    model = build_contract_model({"name": "reference", "hidden": 16, "num_radial": 8})
    molecule = contract_samples()[1]
    with pytest.raises(ValueError, match="image_shifts"):
        assert_features_invariant(model, molecule, image_shifts=np.ones((molecule.num_atoms, 3), dtype=int))
    with pytest.raises(ValueError, match="permutation"):
        assert_features_invariant(model, molecule, permutation=[0] * molecule.num_atoms)
    keys = np.array([[0, 1, 0, 0, 0], [1, 0, 0, 0, 0], [1, 0, 1, 0, 0]])
    assert _match_rows(keys, keys[[2, 0, 1]], "edges").tolist() == [1, 2, 0]
    with pytest.raises(AssertionError, match="edges: the transformed structure does not have the same set"):
        _match_rows(keys, keys + np.array([0, 0, 0, 0, 1]), "edges")
    with pytest.raises(AssertionError, match="3 before the transformation but 2 after"):
        _match_rows(keys, keys[:2], "edges")
