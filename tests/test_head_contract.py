"""The head contract (tensorframe.testing.head_contract) on every registered head, with its
option variants, and proof that each of the contract's checks catches a head broken in that
one way.

A newly installed head is contract-tested automatically with its default options (an empty
config): give it options here if it needs some.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

import tensorframe as tf
from tensorframe.graph.collate import build_graph
from tensorframe.heads.base import Head
from tensorframe.heads.named import DielectricHeadConfig, ForceHeadConfig, build_dielectric_head, build_force_head
from tensorframe.ops.scatter import scatter_sum
from tensorframe.specs import HeadSpec
from tensorframe.testing.contract import (
    assert_float32_matches_float64,
    assert_outputs_nonzero,
    contract_samples,
    orthogonal_matrix,
)
from tensorframe.testing.equivariance import assert_equivariant
from tensorframe.testing.head_contract import (
    HeadContract,
    assert_gradients_reach_head,
    build_head_model,
    check_completeness,
    check_periodicity,
    check_symmetries,
)
from tensorframe.testing.invariance import (
    assert_batch_consistent,
    assert_periodic_images_consistent,
    assert_permutation_invariant,
)
from tensorframe.types import Graph, InvariantFeatures

HIDDEN = 16

# Option variants per registered head; a head not listed runs with its default options.
HEAD_OPTIONS: dict[str, list[dict[str, Any]]] = {
    "born": [{}, {"acoustic_sum_rule": True}, {"acoustic_sum_rule": True, "sum_rule_over": "fragment"}],
    "dielectric": [{}, {"positive_definite": True}],
    "scalar": [{"field": "band_gap", "level": "structure", "reduce": "mean"}, {"field": "charge", "level": "atom"}],
    "tensor": [
        {"field": "nmr_shielding"},
        {"field": "elastic"},
        {"field": "axial", "symmetry": "i", "parity": 1, "level": "atom"},
        {"field": "atom_tensor", "symmetry": "ij", "level": "atom"},
    ],
}

# Molecules only: the charge-flow terms are refused on periodic structures.
MOLECULE_HEAD_OPTIONS: dict[str, list[dict[str, Any]]] = {
    "dipole": [{"charge_flow": True}],
    "polarizability": [{"charge_flow": True}],
}

REGISTERED_HEADS = tf.get_registry().names("head")


def _configs(table: dict[str, list[dict[str, Any]]], default: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"name": name, "hidden": HIDDEN, **options} for name in REGISTERED_HEADS for options in table.get(name, default)]


def _id(config: dict[str, Any]) -> str:
    return "-".join([config["name"], *(f"{k}={v}" for k, v in config.items() if k not in ("name", "hidden"))])


class TestEveryHead(HeadContract):
    """Every registered head x its option variants."""

    @pytest.fixture(scope="class", params=_configs(HEAD_OPTIONS, [{}]), ids=_id)
    @classmethod
    def head_config(cls, request: pytest.FixtureRequest) -> dict[str, Any]:
        return request.param


class TestMoleculeHeads(HeadContract):
    """The molecules-only variants (charge flow)."""

    periodic = False

    @pytest.fixture(scope="class", params=_configs(MOLECULE_HEAD_OPTIONS, []), ids=_id)
    @classmethod
    def head_config(cls, request: pytest.FixtureRequest) -> dict[str, Any]:
        return request.param


def test_the_option_tables_name_registered_heads() -> None:
    """A head renamed or removed must not leave its variants silently untested."""
    assert set(HEAD_OPTIONS) | set(MOLECULE_HEAD_OPTIONS) <= set(REGISTERED_HEADS)
    assert {"born", "dielectric", "piezo", "force", "energy", "scalar", "tensor"} <= set(REGISTERED_HEADS)


# ---------------------------------------------------------------- heads broken in one way each


class Damaged(Head):
    """A built-in head whose output is changed by ``damage(graph, output)``."""

    def __init__(self, inner: Head, damage: Callable[[Graph, torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.inner, self.damage = inner, damage
        self.field = inner.field
        self.needs_triplets = inner.needs_triplets

    def forward(self, graph: Graph, features: InvariantFeatures) -> torch.Tensor:
        return self.damage(graph, self.inner(graph, features))


class Detached(Damaged):
    """Reads features cut off from the backbone's autograd graph."""

    def forward(self, graph: Graph, features: InvariantFeatures) -> torch.Tensor:
        detached = InvariantFeatures(*(None if f is None else f.detach() for f in (features.node, features.edge,
                                                                               features.triplet)))
        return self.inner(graph, detached)


class UnusedParameter(Damaged):
    """Owns a parameter that never enters the output."""

    def __init__(self, inner: Head, damage: Callable[[Graph, torch.Tensor], torch.Tensor]) -> None:
        super().__init__(inner, damage)
        self.unused = torch.nn.Parameter(torch.ones(3))


def _edge_sum(graph: Graph, vectors: torch.Tensor) -> torch.Tensor:
    """Per atom: the sum of ``vectors`` over its edges. Shapes: (E, 3) -> (N, 3)"""
    return scatter_sum(vectors, graph.idx_i, graph.num_nodes)


def _atoms_per_structure(graph: Graph) -> torch.Tensor:
    return torch.bincount(graph.batch, minlength=graph.num_structures).to(graph.edge_dir.dtype)


def _local_index(graph: Graph) -> torch.Tensor:
    return (torch.arange(graph.num_nodes, device=graph.batch.device) - graph.ptr[graph.batch]).to(graph.edge_dir.dtype)


FORCE_DAMAGES: dict[str, Callable[[Graph, torch.Tensor], torch.Tensor]] = {
    # a constant vector: not rotation equivariant
    "fixed_vector": lambda g, y: y + torch.tensor([0.3, -0.2, 0.1], dtype=y.dtype),
    # F x (sum_j r_ij^2 e_ij): an axial vector declared polar; right under rotations, wrong under inversion
    "axial": lambda g, y: y + torch.linalg.cross(y, _edge_sum(g, g.edge_len.unsqueeze(-1) ** 2 * g.edge_dir)),
    "atom_index": lambda g, y: y * (1.0 + 0.1 * _local_index(g)).unsqueeze(-1),
    # stored positions r_i - r_j, blind to the edge's periodic image
    "unwrapped": lambda g, y: y + 0.1 * _edge_sum(g, g.positions[g.idx_i] - g.positions[g.idx_j]),
    # absolute positions (translation invariant only because make_graph centres them)
    "absolute": lambda g, y: y * (1.0 + 0.1 * (g.positions**2).sum(-1, keepdim=True)),
    "float32_only": lambda g, y: y * (1.001 if y.dtype == torch.float32 else 1.0),
    "zero": lambda g, y: 0.0 * y,
}
DIELECTRIC_DAMAGES: dict[str, Callable[[Graph, torch.Tensor], torch.Tensor]] = {
    # declared intensive (mean), scaled by the atom count: supercells multiply it
    "extensive": lambda g, y: y * _atoms_per_structure(g)[:, None, None],
    # depends on the number of structures in the batch
    "batch_size": lambda g, y: y * (1.0 + 0.1 * g.num_structures),
}


def _register(name: str, config: type, build: Callable[..., Head], head: type[Damaged],
              damage: Callable[[Graph, torch.Tensor], torch.Tensor]) -> HeadSpec:
    """A head ``name`` built as ``head(build(...), damage)``; the builder's arguments (options,
    dims and whatever else the registry passes) go through unchanged."""
    return HeadSpec(name, config, lambda *arguments: head(build(*arguments), damage))


class BrokenHeadsPlugin:
    @tf.hookimpl
    def tensorframe_register_heads(self) -> list[HeadSpec]:
        specs = [_register(f"broken_{key}", ForceHeadConfig, build_force_head, Damaged, damage)
                 for key, damage in FORCE_DAMAGES.items()]
        specs += [_register(f"broken_{key}", DielectricHeadConfig, build_dielectric_head, Damaged, damage)
                  for key, damage in DIELECTRIC_DAMAGES.items()]
        specs.append(_register("broken_detached", ForceHeadConfig, build_force_head, Detached, lambda g, y: y))
        specs.append(_register("broken_unused", ForceHeadConfig, build_force_head, UnusedParameter, lambda g, y: y))
        return specs


def _model(name: str, **options: Any) -> tf.TensorModel:
    return build_head_model({"name": name, "hidden": HIDDEN, **options},
                            extra_plugins=[("broken-heads", BrokenHeadsPlugin())])


class UncentredGraphs(tf.TensorModel):
    """Graphs that keep the absolute positions (a graph builder without centring)."""

    def make_graph(self, samples, device=None, names=None) -> Graph:
        positions = torch.from_numpy(np.concatenate([s.positions for s in samples]))
        settings = self.graph_settings
        return build_graph(samples, settings.cutoff, settings.triplet_cutoff, dtype=torch.float64, positions=positions)


ROTATION = orthogonal_matrix(5, proper=True)
CRYSTAL, MOLECULE = contract_samples()
SHIFTS = np.array([[1, 0, -1], [0, 2, 0], [-1, -1, 1], [0, 0, 0]])


def _symmetries(model: tf.TensorModel, sample: tf.Sample = CRYSTAL) -> None:
    check_symmetries(model, sample, ROTATION, np.roll(np.arange(sample.num_atoms), 1), [1.3, -0.7, 2.1])


def _periodicity(model: tf.TensorModel) -> None:
    check_periodicity(model, CRYSTAL, SHIFTS, (2, 1, 1))


def _pair(check: Callable[[tf.TensorModel], Any]) -> Callable[[tf.TensorModel], Any]:
    """``check`` on the contract's generic crystal and molecule together."""
    return lambda model: check(model, [CRYSTAL, MOLECULE])


# check -> (contract check, intact head, the same head broken, what the failure names)
CAUGHT: dict[str, tuple[Callable[[tf.TensorModel], Any], str, str, str]] = {
    "rotation": (_symmetries, "force", "broken_fixed_vector", r"'forces'.* proper rotation"),
    "improper_rotation": (_symmetries, "force", "broken_axial", r"'forces'.* improper rotation"),
    "permutation": (_symmetries, "force", "broken_atom_index", r"'forces'.* permuted"),
    "periodic_images": (_periodicity, "force", "broken_unwrapped", r"'forces'.* periodic images"),
    "supercell": (_periodicity, "dielectric", "broken_extensive", r"'dielectric'.* supercell"),
    "batch": (_pair(assert_batch_consistent), "dielectric", "broken_batch_size", r"'dielectric'.* batch"),
    "detached_features": (_pair(assert_gradients_reach_head), "force", "broken_detached", "detaches its features"),
    "unused_parameter": (_pair(assert_gradients_reach_head), "force", "broken_unused",
                         "'heads.forces.unused' gets no gradient"),
    "float32": (_pair(assert_float32_matches_float64), "force", "broken_float32_only", "float32 differs from float64"),
    "nonzero": (_pair(assert_outputs_nonzero), "force", "broken_zero", "'forces' is zero"),
}


@pytest.mark.parametrize("check", CAUGHT)
def test_each_contract_check_catches_its_broken_head(check: str) -> None:
    run, intact, broken, message = CAUGHT[check]
    run(_model(intact))
    with pytest.raises(AssertionError, match=message):
        run(_model(broken))


def test_the_broken_heads_are_broken_in_one_way_only() -> None:
    """Each broken head passes the checks it is not meant to fail, so the failing check is what
    catches it (and not, say, a shape error)."""
    _symmetries(_model("broken_unwrapped"))
    _symmetries(_model("broken_extensive"))
    _symmetries(_model("broken_batch_size"))
    axial = _model("broken_axial")
    assert_equivariant(axial, CRYSTAL, ROTATION)
    assert_permutation_invariant(axial, CRYSTAL)
    assert_periodic_images_consistent(_model("broken_atom_index"), CRYSTAL, SHIFTS)  # supercells renumber atoms
    _periodicity(_model("broken_batch_size"))
    _pair(assert_batch_consistent)(_model("broken_extensive"))
    _pair(assert_gradients_reach_head)(_model("broken_fixed_vector"))


def test_translation_is_caught_on_graphs_that_are_not_centred() -> None:
    """``make_graph`` centres every structure, so a head reading absolute positions passes the
    translation check in a model; on graphs that keep the absolute positions it is caught."""
    model = _model("broken_absolute")
    _symmetries(model)
    uncentred = UncentredGraphs(model.config, model.backbone, list(model.heads.values()), model.lifting).double()
    with pytest.raises(AssertionError, match=r"'forces'.* translated"):
        _symmetries(uncentred)


def test_completeness_check_catches_the_paper_basis() -> None:
    """The paper's Born-charge words miss Z*_zz of planar water's oxygen (span 2 of 3)."""
    check_completeness(_model("born"), ["water", "co2"])
    with pytest.raises(AssertionError, match=r"(?s)'born_charges'.*water.*span 2 of 3"):
        check_completeness(_model("born", basis="paper"), ["water"])
