"""The backbone contract (tensorframe.testing.contract) on every installed backbone without a
contract suite of its own, each with every built-in head, and proof that each of the
contract's checks catches a backbone broken in that one way.

A newly installed backbone is contract-tested automatically: unknown names run with their
default options (an empty config). The plugins of this repository run the contract in their
own test suites (plugins/tensorframe-*/tests, with their distribution and module names).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import tensorframe as tf
from tensorframe.testing import assert_equivariant, assert_translation_invariant
from tensorframe.testing.contract import (
    BackboneContract,
    _match_rows,
    assert_features_batch_consistent,
    assert_features_continuous_at_cutoff,
    assert_features_invariant,
    assert_features_supercell_consistent,
    assert_features_unchanged_by_padding,
    assert_finite_outputs_and_gradients,
    assert_inference_modes_agree,
    build_contract_model,
    contract_samples,
    degenerate_samples,
    orthogonal_matrix,
)
from tensorframe.testing.reference_backbone import ReferenceBackbone, ReferenceBackboneConfig
from tensorframe.types import Graph, InvariantFeatures

# Backbones whose plugin test suite subclasses BackboneContract (run there, not twice).
OWN_SUITES = {"cgcnn": "plugins/tensorframe-cgcnn", "schnet": "plugins/tensorframe-schnet",
              "etgnn": "plugins/tensorframe-etgnn"}
# Small sizes of the other known backbones.
SMALL_CONFIGS: dict[str, dict[str, Any]] = {"reference": {"hidden": 16, "num_radial": 8}}

BACKBONES = tf.get_registry().names("backbone")


class TestEveryBackbone(BackboneContract):
    """Every registered backbone without its own contract suite x every built-in head."""

    @pytest.fixture(scope="class", params=[name for name in BACKBONES if name not in OWN_SUITES])
    @classmethod
    def backbone_config(cls, request: pytest.FixtureRequest) -> dict[str, Any]:
        return {"name": request.param, **SMALL_CONFIGS.get(request.param, {})}


def test_known_backbones_are_registered_and_their_suites_run_the_contract() -> None:
    """The built-in reference and the plugins in this repository are installed, and each
    plugin's test suite subclasses the contract."""
    assert {"reference", *OWN_SUITES} <= set(BACKBONES), tf.get_registry().problems
    root = Path(__file__).resolve().parents[1]
    for name, plugin in OWN_SUITES.items():
        suites = "".join(path.read_text() for path in (root / plugin / "tests").glob("test_*.py"))
        assert re.search(r"class Test\w+\(BackboneContract\)", suites), f"{plugin}: no BackboneContract subclass"
        assert f'"name": "{name}"' in suites, f"{plugin}: its contract suite does not configure {name!r}"
        assert f'distribution = "tensorframe-{name}"' in suites, f"{plugin}: the plugin checks are off"


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
    return orthogonal_matrix(seed, proper=True)


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


# ---------------------------------------------------------------- each newer check catches its broken backbone


class Tampered(ReferenceBackbone):
    """The reference backbone with its features changed by ``tamper(graph, features)``."""

    def __init__(self, config: ReferenceBackboneConfig, settings: tf.GraphSettings,
                 tamper: Callable[[Graph, InvariantFeatures], InvariantFeatures]) -> None:
        super().__init__(config, settings)
        self.tamper = tamper

    def forward(self, graph: Graph) -> InvariantFeatures:
        return self.tamper(graph, super().forward(graph))


def _tampered_model(tamper: Callable[[Graph, InvariantFeatures], InvariantFeatures]) -> tf.TensorModel:
    """The contract model on the reference backbone (with triplet features), tampered with."""
    options = {"hidden": 16, "num_radial": 8, "triplets": True}
    model = build_contract_model({"name": "reference", **options})
    tampered = Tampered(ReferenceBackboneConfig(**options), model.graph_settings, tamper).double()
    tampered.load_state_dict(model.backbone.state_dict())
    model.backbone = tampered
    return model


def _scaled_nodes(graph: Graph, features: InvariantFeatures, scale: torch.Tensor) -> InvariantFeatures:
    return replace(features, node=features.node * (1.0 + 0.01 * scale.unsqueeze(-1)))


TAMPERS: dict[str, Callable[[Graph, InvariantFeatures], InvariantFeatures]] = {
    # the cell volume enters: invariant under everything but a change of cell
    "cell_volume": lambda g, f: _scaled_nodes(g, f, torch.linalg.det(g.cell).abs()[g.batch]),
    # centred over the whole batch, as a batch norm would
    "batch_centred": lambda g, f: replace(f, node=f.node - f.node.mean(0)),
    # a neighbour count: jumps when a neighbour crosses the cutoff
    "neighbour_count": lambda g, f: _scaled_nodes(
        g, f, torch.zeros(g.num_nodes, dtype=f.node.dtype).index_add(0, g.idx_i, torch.ones_like(g.edge_len))),
    # sin of the angle: its derivative is infinite at 0 and 180 degrees
    "sine": lambda g, f: replace(f, triplet=f.triplet * torch.sqrt(1.0 - g.triplet_cos**2).unsqueeze(-1)),
    # shortcuts without autograd that change the result
    "grad_mode": lambda g, f: f if torch.is_grad_enabled() else replace(f, node=f.node + 1e-3),
}

CRYSTAL, MOLECULE = contract_samples()
NEWER_CHECKS: dict[str, tuple[Callable[[tf.TensorModel], Any], str, str]] = {
    "supercell": (lambda m: assert_features_supercell_consistent(m, CRYSTAL, (2, 1, 1)), "cell_volume",
                  "node features are not invariant in the 2x1x1 supercell"),
    "batch": (lambda m: assert_features_batch_consistent(m, [CRYSTAL, MOLECULE]), "batch_centred",
              "node features are not invariant in a batch"),
    "cutoff": (assert_features_continuous_at_cutoff, "neighbour_count", "jump by"),
    "degenerate_angles": (lambda m: assert_finite_outputs_and_gradients(m, [degenerate_samples()["CO2"]]), "sine",
                          "not finite"),
    "inference_modes": (lambda m: assert_inference_modes_agree(m, [CRYSTAL, MOLECULE]), "grad_mode",
                        "torch.no_grad differs from autograd"),
    "padding": (lambda m: assert_features_unchanged_by_padding(m, [CRYSTAL, MOLECULE]), "batch_centred",
                "node features change when the graph is padded"),
}


@pytest.mark.parametrize("check", NEWER_CHECKS)
def test_newer_contract_checks_catch_their_broken_backbone(check: str) -> None:
    run, tamper, message = NEWER_CHECKS[check]
    run(_tampered_model(lambda g, f: f))  # the intact backbone passes
    with pytest.raises(AssertionError, match=message):
        run(_tampered_model(TAMPERS[tamper]))


def test_feature_supercell_and_batch_checks_see_what_others_miss() -> None:
    """The cell-volume and batch-centred backbones pass every other feature check."""
    for tamper in ("cell_volume", "batch_centred"):
        model = _tampered_model(TAMPERS[tamper])
        assert_features_invariant(model, CRYSTAL, rotation=-_rotation(), shift=[1.0, 2.0, -0.5],
                                  permutation=[3, 0, 2, 1], image_shifts=np.array([[1, 0, 0], [0, -1, 2], [0, 0, 0],
                                                                                   [1, 1, 1]]))
    assert_features_batch_consistent(_tampered_model(TAMPERS["cell_volume"]), [CRYSTAL, MOLECULE])
    assert_features_supercell_consistent(_tampered_model(TAMPERS["batch_centred"]), CRYSTAL, (1, 2, 1))
