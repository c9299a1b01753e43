"""The backbone contract: what every backbone plugin must satisfy, in the style of NequIP's
``BasicModelTestsMixin``. Point it at a backbone by subclassing :class:`BackboneContract` and
giving a class- (or wider-) scoped ``backbone_config`` fixture::

    import pytest
    from tensorframe.testing.contract import BackboneContract

    class TestMyBackbone(BackboneContract):
        @pytest.fixture(scope="class")
        def backbone_config(self):
            return {"name": "mybackbone", "hidden": 16}   # small sizes keep it fast

The backbone is built into one float64 model with EVERY built-in head (:data:`CONTRACT_HEADS`:
force, Born charges without the acoustic sum rule and with it per structure and per fragment,
dielectric with and without
``positive_definite``, piezo, scalars, polarizability, hyperpolarizability, an atom-level
``"ij"`` field and a rank-4 ``"ijkl=jikl=ijlk=klij"`` field), and the contract checks:

    features   node / edge / triplet features invariant under proper and improper rotations,
               translations, atom permutations and moving atoms to other periodic images
               (edges matched by (centre, neighbour, image), triplets by their two edges)
    outputs    every field equivariant under proper and improper rotations; permutation,
               translation, periodic-image and supercell consistency; batch == one by one
    training   gradients of a loss over all heads reach every parameter (finite; non-zero
               on each backbone parameter)
    dtypes     float32 and float64 both run; float32 agrees with float64 for the same weights
    dims       ``backbone.feature_dims`` matches the widths of the features it returns
    conservative  with ``conservative: true`` and an energy head: forces and stress equal the
               energy's derivatives by central differences (float64); energy, forces, stress and
               virial are equivariant, permutation- and translation-invariant, supercell- and
               periodic-image-consistent

The functions (``build_contract_model``, ``assert_features_invariant``, ...) work on their own
too, without pytest.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from tensorframe.heads.base import Head
from tensorframe.heads.named import BornHeadConfig, DielectricHeadConfig, build_born_head, build_dielectric_head
from tensorframe.hookspecs import hookimpl
from tensorframe.model import TensorModel, build_model
from tensorframe.registry import build_registry
from tensorframe.specs import FeatureDims, HeadSpec
from tensorframe.testing import strategies as tfst
from tensorframe.testing.checks import (
    assert_batch_consistent,
    assert_periodic_images_consistent,
    assert_permutation_invariant,
    assert_supercell_consistent,
    assert_translation_invariant,
    split_outputs,
)
from tensorframe.testing.derivatives import (
    assert_forces_match_finite_differences,
    assert_stress_matches_finite_differences,
)
from tensorframe.testing.equivariance import assert_equivariant, compare, evaluate, rotate_sample, tolerances
from tensorframe.types import Graph, InvariantFeatures, Sample

__all__ = [
    "CONTRACT_HEADS",
    "BackboneContract",
    "ContractHeadsPlugin",
    "assert_feature_dims",
    "assert_features_invariant",
    "assert_float32_matches_float64",
    "assert_gradients_reach_parameters",
    "build_contract_model",
    "contract_samples",
]

CONSERVATIVE_HEADS: tuple[dict[str, Any], ...] = ({"name": "energy"}, {"name": "born"})
CONTRACT_HEADS: tuple[dict[str, Any], ...] = (
    {"name": "force"},
    {"name": "born"},
    {"name": "contract_born_asr", "acoustic_sum_rule": True},
    {"name": "contract_born_fragment_asr", "acoustic_sum_rule": True, "sum_rule_over": "fragment"},
    {"name": "dielectric"},
    {"name": "contract_dielectric_positive_definite", "positive_definite": True},
    {"name": "piezo"},
    {"name": "scalar", "field": "energy", "level": "structure", "reduce": "sum"},
    {"name": "scalar", "field": "charge", "level": "atom"},
    {"name": "tensor", "field": "polarizability"},
    {"name": "tensor", "field": "hyperpolarizability"},
    {"name": "tensor", "field": "atom_tensor", "symmetry": "ij", "level": "atom"},
    {"name": "tensor", "field": "elastic", "symmetry": "ijkl=jikl=ijlk=klij", "level": "structure", "reduce": "mean"},
)
"""Every built-in head, as head configs. A model predicts each field once, so the Born head
with the acoustic sum rule and the positive-definite dielectric head are registered again
(by :class:`ContractHeadsPlugin`) as ``contract_*`` heads predicting renamed fields."""


def _renamed(build: Callable[[Any, FeatureDims], Head], field: str) -> Callable[[Any, FeatureDims], Head]:
    def build_renamed(options: Any, dims: FeatureDims) -> Head:
        head = build(options, dims)
        head.field = replace(head.field, name=field)
        return head

    return build_renamed


class ContractHeadsPlugin:
    """Registers ``contract_born_asr`` (field ``born_charges_asr``), ``contract_born_fragment_asr``
    (field ``born_charges_fragment_asr``, the sum rule per fragment) and
    ``contract_dielectric_positive_definite`` (field ``dielectric_positive_definite``): the
    built-in born and dielectric heads under other field names, so both variants of each fit
    in one model."""

    @hookimpl
    def tensorframe_register_heads(self) -> list[HeadSpec]:
        return [
            HeadSpec("contract_born_asr", BornHeadConfig, _renamed(build_born_head, "born_charges_asr")),
            HeadSpec("contract_born_fragment_asr", BornHeadConfig,
                     _renamed(build_born_head, "born_charges_fragment_asr")),
            HeadSpec("contract_dielectric_positive_definite", DielectricHeadConfig,
                     _renamed(build_dielectric_head, "dielectric_positive_definite")),
        ]


# ---------------------------------------------------------------- the model under contract


def build_contract_model(
    backbone: Mapping[str, Any],
    cutoff: float = 3.5,
    triplet_cutoff: float = 3.0,
    hidden: int = 16,
    seed: int = 0,
    extra_plugins: Sequence[tuple[str, object]] = (),
    conservative: bool = False,
) -> TensorModel:
    """A float64 model in eval mode: the backbone ``{"name": ..., **options}`` with every head
    of :data:`CONTRACT_HEADS` (``hidden`` wide; triplet lifting ``hidden`` wide too).

    Args:
        extra_plugins: ``(name, plugin)`` pairs registered besides the installed ones (e.g.
            a backbone defined inside a test).
        conservative: instead, ``conservative: true`` with the heads of
            :data:`CONSERVATIVE_HEADS` (energy, whose derivatives are forces, stress and
            virial, beside Born charges); the energy's scale is raised to give O(1) forces.

    Raises:
        ConfigError: for a backbone name or option that the registry does not accept.
    """
    plugins = [*extra_plugins, ("tensorframe-contract", ContractHeadsPlugin())]
    registry = build_registry(extra_plugins=plugins)
    config = {
        "cutoff": cutoff,
        "triplet_cutoff": triplet_cutoff,
        "conservative": conservative,
        "backbone": dict(backbone),
        "heads": [dict(head, hidden=hidden) for head in (CONSERVATIVE_HEADS if conservative else CONTRACT_HEADS)],
        "lifting": {"hidden": hidden, "out_dim": hidden},
    }
    torch.manual_seed(seed)
    model = build_model(config, registry=registry).double().eval()
    if conservative:
        model.scaling["energy"].set(3.0)
    return model


def contract_samples() -> list[Sample]:
    """Two fixed generic structures (a skewed 4-atom crystal and a 5-atom molecule) with
    edges and triplets at a 3.5 Å / 3.0 Å cutoff."""
    cell = np.array([[4.2, 0.0, 0.0], [1.4, 3.8, 0.0], [-0.6, 0.9, 4.5]])
    fractional = np.array([[0.02, 0.11, 0.07], [0.48, 0.55, 0.13], [0.31, 0.04, 0.61], [0.83, 0.71, 0.52]])
    crystal = Sample([8, 14, 8, 22], fractional @ cell, cell, [True, True, True])
    positions = np.array([[0.0, 0.0, 0.0], [1.1, 0.2, -0.1], [-0.4, 1.0, 0.3], [0.3, -0.5, 1.2], [1.5, 1.3, 0.9]])
    molecule = Sample([6, 8, 1, 1, 7], positions + np.array([2.0, -1.0, 0.5]))
    return [crystal, molecule]


# ---------------------------------------------------------------- feature invariance


def _features(model: TensorModel, sample: Sample) -> tuple[Graph, InvariantFeatures]:
    with torch.no_grad():
        graph = model.make_graph([sample])
        return graph, model.backbone(graph)


def _match_rows(keys_a: np.ndarray, keys_b: np.ndarray, what: str) -> np.ndarray:
    """``match[a] = b`` with ``keys_b[b] == keys_a[a]``; the two key sets must be equal.

    Shapes: keys_a (M, K), keys_b (M', K) int -> (M,)
    """
    if keys_a.shape != keys_b.shape:
        raise AssertionError(f"{what}: {keys_a.shape[0]} before the transformation but {keys_b.shape[0]} after")
    order_a = np.lexsort(keys_a.T[::-1])
    order_b = np.lexsort(keys_b.T[::-1])
    if not np.array_equal(keys_a[order_a], keys_b[order_b]):
        raise AssertionError(f"{what}: the transformed structure does not have the same set")
    match = np.empty(keys_a.shape[0], dtype=np.int64)
    match[order_a] = order_b
    return match


def _compare_features(name: str, actual: torch.Tensor, expected: torch.Tensor, transform: str,
                      atol: float | None, rtol: float | None) -> None:
    __tracebackhide__ = True
    a_tol, r_tol = tolerances(expected.dtype, atol, rtol)
    ok, error, tolerance = compare(actual, expected, a_tol, r_tol)
    if not ok:
        raise AssertionError(
            f"backbone {name} features are not invariant {transform}: max error {error:.3e} > tolerance {tolerance:.3e}"
        )


def assert_features_invariant(
    model: TensorModel,
    sample: Sample,
    rotation: np.ndarray | None = None,
    shift: Sequence[float] | None = None,
    permutation: Sequence[int] | None = None,
    image_shifts: np.ndarray | None = None,
    atol: float | None = None,
    rtol: float | None = None,
) -> None:
    """The backbone's node, edge and (when given) triplet features do not change when the
    structure is transformed: atoms moved to other periodic images (``image_shifts``, (N, 3)
    integers), reordered (``permutation``: new atom ``a`` is old ``permutation[a]``), turned
    by ``rotation`` (orthogonal, proper or improper) and translated by ``shift`` (Å), in that
    order. Node features are compared atom by atom, edge features edge by edge after matching
    edges by (centre, neighbour, image), triplet features after matching their two edges.

    Raises:
        AssertionError: naming the features (node | edge | triplet) and the transformation.
        ValueError: for image shifts along a non-periodic direction.
    """
    __tracebackhide__ = True
    n = sample.num_atoms
    images = np.zeros((n, 3), dtype=np.int64) if image_shifts is None else np.asarray(image_shifts, dtype=np.int64)
    if images.shape != (n, 3) or np.any(images[:, ~sample.pbc]):
        raise ValueError(f"image_shifts: expected ({n}, 3) integers, zero along non-periodic directions")
    perm = np.arange(n) if permutation is None else np.asarray(permutation, dtype=np.int64)
    if sorted(perm.tolist()) != list(range(n)):
        raise ValueError(f"permutation: expected a permutation of 0..{n - 1}, got {perm.tolist()}")
    rot = np.eye(3) if rotation is None else np.asarray(rotation, dtype=np.float64)
    vector = np.zeros(3) if shift is None else np.asarray(shift, dtype=np.float64)
    moved = Sample(sample.numbers, sample.positions + images @ sample.cell, sample.cell, sample.pbc)
    moved = Sample(moved.numbers[perm], moved.positions[perm], moved.cell, moved.pbc)
    moved = rotate_sample(moved, rot)
    moved = Sample(moved.numbers, moved.positions + vector, moved.cell, moved.pbc)
    parts = [f"atoms moved by lattice vectors {images.tolist()}"] if images.any() else []
    parts += [f"atoms permuted by {perm.tolist()}"] if permutation is not None else []
    parts += [f"a {'proper' if np.linalg.det(rot) > 0 else 'improper'} rotation"] if rotation is not None else []
    parts += [f"a translation by {vector.tolist()}"] if shift is not None else []
    transform = "under " + (", then ".join(parts) or "the identity")

    graph_a, feats_a = _features(model, sample)
    graph_b, feats_b = _features(model, moved)
    new_index = np.argsort(perm)  # old atom a is new atom new_index[a]
    i_a, j_a = graph_a.idx_i.cpu().numpy(), graph_a.idx_j.cpu().numpy()
    # Edge (i, j, S) before is (pi(i), pi(j), S + n_i - n_j) after, n the lattice moves.
    keys_a = np.column_stack([new_index[i_a], new_index[j_a], graph_a.cell_shift.cpu().numpy() + images[i_a] - images[j_a]])
    keys_b = np.column_stack([graph_b.idx_i.cpu().numpy(), graph_b.idx_j.cpu().numpy(), graph_b.cell_shift.cpu().numpy()])
    edge_match = torch.as_tensor(_match_rows(keys_a, keys_b, f"edges {transform}"))
    _compare_features("node", feats_b.node[torch.as_tensor(new_index)], feats_a.node, transform, atol, rtol)
    _compare_features("edge", feats_b.edge[edge_match], feats_a.edge, transform, atol, rtol)
    if (feats_a.triplet is None) != (feats_b.triplet is None):
        raise AssertionError(f"backbone triplet features are given for one structure but not the other {transform}")
    if feats_a.triplet is not None:
        triplets_a = np.column_stack([edge_match[graph_a.idx_kj].numpy(), edge_match[graph_a.idx_ji].numpy()])
        triplets_b = np.column_stack([graph_b.idx_kj.cpu().numpy(), graph_b.idx_ji.cpu().numpy()])
        triplet_match = torch.as_tensor(_match_rows(triplets_a, triplets_b, f"triplets {transform}"))
        _compare_features("triplet", feats_b.triplet[triplet_match], feats_a.triplet, transform, atol, rtol)


# ---------------------------------------------------------------- dims, gradients, dtypes


def assert_feature_dims(model: TensorModel, samples: Sequence[Sample]) -> None:
    """``backbone.feature_dims`` matches the features it returns (shape, dtype; triplets
    None exactly when ``feature_dims.triplet`` is None), and the features are finite."""
    __tracebackhide__ = True
    dims = model.backbone.feature_dims
    graph = model.make_graph(list(samples))
    features = model.backbone(graph)
    dtype = graph.edge_dir.dtype
    expected = {"node": (graph.num_nodes, dims.node), "edge": (graph.num_edges, dims.edge)}
    if dims.triplet is None:
        if features.triplet is not None:
            raise AssertionError("feature_dims.triplet is None but the backbone returns triplet features")
    else:
        expected["triplet"] = (graph.num_triplets, dims.triplet)
    for name, shape in expected.items():
        value = getattr(features, name)
        if value is None or tuple(value.shape) != shape:
            got = None if value is None else tuple(value.shape)
            raise AssertionError(f"{name} features: feature_dims says shape {shape}, the backbone returns {got}")
        if value.dtype != dtype:
            raise AssertionError(f"{name} features: dtype {value.dtype}, expected the graph's {dtype}")
        if not torch.isfinite(value).all():
            raise AssertionError(f"{name} features: not finite")


def assert_gradients_reach_parameters(model: TensorModel, samples: Sequence[Sample], seed: int = 0) -> None:
    """A loss over every head (each output dotted with fixed random weights) gives every
    trainable parameter a finite gradient, and every trainable backbone parameter a non-zero
    one. Parameters with ``requires_grad=False`` (fixed bases) are skipped."""
    __tracebackhide__ = True
    model.zero_grad(set_to_none=True)
    outputs = model(model.make_graph(list(samples)))
    generator = torch.Generator().manual_seed(seed)
    loss = sum(
        (value * torch.randn(value.shape, generator=generator, dtype=value.dtype)).sum() for value in outputs.values()
    )
    loss.backward()
    backbone = {id(p) for p in model.backbone.parameters()}
    try:
        for name, parameter in model.named_parameters():
            if not parameter.requires_grad:
                continue
            if parameter.grad is None:
                raise AssertionError(f"parameter {name!r} gets no gradient from a loss over every head")
            if not torch.isfinite(parameter.grad).all():
                raise AssertionError(f"parameter {name!r} has a non-finite gradient")
            if id(parameter) in backbone and not parameter.grad.abs().max() > 0:
                raise AssertionError(f"backbone parameter {name!r} has an all-zero gradient")
    finally:
        model.zero_grad(set_to_none=True)


def assert_float32_matches_float64(model: TensorModel, samples: Sequence[Sample], rtol: float = 1e-5) -> None:
    """The same weights in float32 and float64 give the same outputs:
    ``max|y32 - y64| <= rtol * max(1, max|y64|)`` for every field; both finite (NaN only where
    a field is undefined in both, e.g. stress without a volume). Energies come out in float64
    from both."""
    __tracebackhide__ = True
    samples = list(samples)
    model64 = copy.deepcopy(model).double()
    model32 = copy.deepcopy(model).float()
    out64, out32 = evaluate(model64, samples), evaluate(model32, samples)
    fields = model.fields
    for name, expected in out64.items():
        actual = out32[name]
        # energies are summed in float64 by every model (FieldSpec.accumulates_in_float64)
        low = torch.float64 if name in fields and fields[name].accumulates_in_float64 else torch.float32
        if actual.dtype != low or expected.dtype != torch.float64:
            raise AssertionError(f"field {name!r}: dtypes {actual.dtype} and {expected.dtype}, expected {low} / float64")
        defined = ~expected.isnan() if name == "stress" else torch.ones_like(expected, dtype=torch.bool)  # no volume: NaN
        if not (torch.isfinite(actual[defined]).all() and torch.isfinite(expected[defined]).all()):
            raise AssertionError(f"field {name!r}: non-finite output in float32 or float64")
        scale = max(1.0, float(expected.abs().max()))
        ok, error, tolerance = compare(actual, expected, rtol * scale, 0.0)
        if not ok:
            raise AssertionError(f"field {name!r}: float32 differs from float64 by {error:.3e} > {tolerance:.3e}")


def _outputs_per_structure(model: TensorModel, samples: Sequence[Sample]) -> list[dict[str, torch.Tensor]]:
    specs = dict(model.fields)
    return split_outputs(evaluate(model, samples), specs, [s.num_atoms for s in samples])


# ---------------------------------------------------------------- the pytest mixin

_KINDS = {"crystal": tfst.crystals(), "molecule": tfst.molecules(), "slab": tfst.slabs()}
_PERIODIC = {"crystal": tfst.crystals(), "slab": tfst.slabs()}
_SUPERCELL = {"crystal": (tfst.crystals(max_atoms=4), (2, 1, 1), (1, 2, 2)),
              "slab": (tfst.slabs(max_atoms=4), (2, 1, 1), (1, 2, 1))}


def _draw_image_shifts(data: st.DataObject, sample: Sample) -> np.ndarray:
    shifts = np.array(data.draw(st.lists(
        st.lists(st.integers(-2, 2), min_size=3, max_size=3), min_size=sample.num_atoms, max_size=sample.num_atoms,
    ), label="image shifts"))
    shifts[:, ~sample.pbc] = 0
    assume(shifts.any())
    return shifts


class BackboneContract:
    """Contract tests for a backbone: subclass it and provide a ``backbone_config`` fixture
    (scope ``"class"`` or wider) returning ``{"name": <backbone>, **small options}``.

    Override ``cutoff`` / ``triplet_cutoff`` / ``hidden`` as class attributes if needed.
    Structures come from :mod:`tensorframe.testing.strategies` (2..8 atoms); the number of
    examples follows the loaded hypothesis profile.
    """

    cutoff: float = 3.5
    triplet_cutoff: float = 3.0
    hidden: int = 16

    @pytest.fixture(scope="class")
    @classmethod
    def contract_model(cls, backbone_config: Mapping[str, Any]) -> TensorModel:
        return build_contract_model(backbone_config, cls.cutoff, cls.triplet_cutoff, cls.hidden)

    # -------------------------------------------------------- features

    def test_feature_dims_float64_and_float32(self, contract_model: TensorModel) -> None:
        assert_feature_dims(contract_model, contract_samples())
        assert_feature_dims(copy.deepcopy(contract_model).float(), contract_samples())

    @pytest.mark.parametrize("kind", list(_KINDS))
    @given(data=st.data(), rotation=tfst.orthogonal_matrices(proper=True),
           shift=st.lists(st.floats(-10.0, 10.0), min_size=3, max_size=3))
    def test_features_invariant(self, contract_model: TensorModel, kind: str, data: st.DataObject,
                                rotation: np.ndarray, shift: list[float]) -> None:
        """Proper and improper rotations, translations and permutations."""
        sample = data.draw(_KINDS[kind], label=kind)
        permutation = data.draw(st.permutations(range(sample.num_atoms)), label="permutation")
        assert_features_invariant(contract_model, sample, rotation=rotation)
        assert_features_invariant(contract_model, sample, rotation=-rotation)
        assert_features_invariant(contract_model, sample, shift=shift)
        assert_features_invariant(contract_model, sample, permutation=permutation)

    @pytest.mark.parametrize("kind", list(_PERIODIC))
    @given(data=st.data())
    def test_features_periodic_images(self, contract_model: TensorModel, kind: str, data: st.DataObject) -> None:
        sample = data.draw(_PERIODIC[kind], label=kind)
        assert_features_invariant(contract_model, sample, image_shifts=_draw_image_shifts(data, sample))

    # -------------------------------------------------------- outputs

    def test_every_output_is_nonzero(self, contract_model: TensorModel) -> None:
        """Guards the checks from being vacuous: every head gives a non-trivial tensor."""
        for b, row in enumerate(_outputs_per_structure(contract_model, contract_samples())):
            for name, value in row.items():
                assert value.abs().max() > 1e-8, f"field {name!r} is zero on contract structure {b}"

    @pytest.mark.parametrize("kind", list(_KINDS))
    @given(data=st.data(), rotation=tfst.orthogonal_matrices(proper=True))
    def test_outputs_equivariant(self, contract_model: TensorModel, kind: str, data: st.DataObject,
                                 rotation: np.ndarray) -> None:
        sample = data.draw(_KINDS[kind], label=kind)
        assert_equivariant(contract_model, sample, rotation)
        assert_equivariant(contract_model, sample, -rotation)

    @pytest.mark.parametrize("kind", list(_KINDS))
    @given(data=st.data(), shift=st.lists(st.floats(-10.0, 10.0), min_size=3, max_size=3))
    def test_outputs_permutation_and_translation(self, contract_model: TensorModel, kind: str,
                                                 data: st.DataObject, shift: list[float]) -> None:
        sample = data.draw(_KINDS[kind], label=kind)
        permutation = data.draw(st.permutations(range(sample.num_atoms)), label="permutation")
        assert_permutation_invariant(contract_model, sample, permutation)
        assert_translation_invariant(contract_model, sample, shift)

    @pytest.mark.parametrize("kind", list(_PERIODIC))
    @given(data=st.data())
    def test_outputs_periodic_images(self, contract_model: TensorModel, kind: str, data: st.DataObject) -> None:
        sample = data.draw(_PERIODIC[kind], label=kind)
        assert_periodic_images_consistent(contract_model, sample, _draw_image_shifts(data, sample))

    @pytest.mark.parametrize("kind", list(_SUPERCELL))
    @given(data=st.data())
    def test_outputs_supercell(self, contract_model: TensorModel, kind: str, data: st.DataObject) -> None:
        strategy, small_repeat, both_repeat = _SUPERCELL[kind]
        sample = data.draw(strategy, label=kind)
        repeats = [small_repeat] + ([both_repeat] if sample.num_atoms <= 2 else [])  # supercells <= 8 atoms
        assert_supercell_consistent(contract_model, sample, repeats)

    @given(samples=st.lists(st.one_of(*_KINDS.values()), min_size=2, max_size=3))
    def test_batch_equals_one_by_one(self, contract_model: TensorModel, samples: list[Sample]) -> None:
        assert_batch_consistent(contract_model, samples)

    # -------------------------------------------------------- training and dtypes

    def test_gradients_reach_every_parameter(self, contract_model: TensorModel) -> None:
        assert_gradients_reach_parameters(contract_model, contract_samples())

    def test_float32_matches_float64(self, contract_model: TensorModel) -> None:
        assert_float32_matches_float64(contract_model, contract_samples())

    # -------------------------------------------------------- conservative forces and stress

    @pytest.fixture(scope="class")
    @classmethod
    def conservative_model(cls, backbone_config: Mapping[str, Any]) -> TensorModel:
        return build_contract_model(backbone_config, cls.cutoff, cls.triplet_cutoff, cls.hidden, conservative=True)

    @given(crystal=tfst.crystals(max_atoms=4), molecule=tfst.molecules(max_atoms=4))
    def test_conservative_forces_and_stress_are_energy_derivatives(
            self, conservative_model: TensorModel, crystal: Sample, molecule: Sample) -> None:
        """F = -dE/dr and sigma = (1/V) dE/d(strain) against central differences, in float64."""
        assert_forces_match_finite_differences(conservative_model, molecule)
        assert_forces_match_finite_differences(conservative_model, crystal)
        assert_stress_matches_finite_differences(conservative_model, crystal)

    @pytest.mark.parametrize("kind", list(_KINDS))
    @given(data=st.data(), rotation=tfst.orthogonal_matrices(proper=True),
           shift=st.lists(st.floats(-10.0, 10.0), min_size=3, max_size=3))
    def test_conservative_outputs_symmetric(self, conservative_model: TensorModel, kind: str, data: st.DataObject,
                                            rotation: np.ndarray, shift: list[float]) -> None:
        """Energy, forces, stress, virial: proper and improper rotations, permutations, translations."""
        sample = data.draw(_KINDS[kind], label=kind)
        permutation = data.draw(st.permutations(range(sample.num_atoms)), label="permutation")
        assert_equivariant(conservative_model, sample, rotation)
        assert_equivariant(conservative_model, sample, -rotation)
        assert_permutation_invariant(conservative_model, sample, permutation)
        assert_translation_invariant(conservative_model, sample, shift)

    @given(data=st.data())
    def test_conservative_supercell_and_images(self, conservative_model: TensorModel, data: st.DataObject) -> None:
        """A supercell keeps the stress and multiplies energy and virial; periodic images change nothing."""
        sample = data.draw(tfst.crystals(max_atoms=4), label="crystal")
        assert_supercell_consistent(conservative_model, sample, [(2, 1, 1)])
        assert_periodic_images_consistent(conservative_model, sample, _draw_image_shifts(data, sample))
