"""The backbone contract: what every backbone plugin must satisfy, in the style of NequIP's
``BasicModelTestsMixin``. Point it at a backbone by subclassing :class:`BackboneContract` and
setting ``config`` (or giving a class- or wider-scoped ``backbone_config`` fixture)::

    from tensorframe.testing.contract import BackboneContract

    class TestMyBackbone(BackboneContract):
        config = {"name": "mybackbone", "hidden": 16}   # small sizes keep it fast
        distribution = "tensorframe-mybackbone"          # for an installed plugin

The backbone is built into one float64 model with EVERY built-in head (:data:`CONTRACT_HEADS`:
force, Born charges without the acoustic sum rule and with it per structure and per fragment,
dielectric with and without
``positive_definite``, piezo, scalars, polarizability, hyperpolarizability, an atom-level
``"ij"`` field and a rank-4 ``"ijkl=jikl=ijlk=klij"`` field), and the contract checks:

    features   node / edge / triplet features invariant under proper and improper rotations,
               translations, atom permutations and moving atoms to other periodic images
               (edges matched by (centre, neighbour, image), triplets by their two edges);
               a supercell copies the cell's features; a batch has each structure's own;
               node features are continuous as a neighbour crosses the cutoff; a graph padded
               to bucket sizes (amp on a CPU) gives the real rows the same features and gradients
    outputs    every field equivariant under proper and improper rotations; permutation,
               translation, periodic-image and supercell consistency; batch == one by one;
               Neumann's principle on rock salt and wurtzite
    training   gradients of a loss over all heads reach every parameter (finite; non-zero
               on each backbone parameter), in float64 and float32
    dtypes     float32 and float64 both run; float32 agrees with float64 for the same weights
    dims       ``backbone.feature_dims`` matches the widths of the features it returns
    degenerate structures without edges or triplets, and with triplet angles of exactly 0 and
               180 degrees: finite outputs and gradients (positions and parameters)
    inference  outputs under ``torch.no_grad`` / ``torch.inference_mode`` equal autograd's
    conservative  with ``conservative: true`` and an energy head: forces and stress equal the
               energy's derivatives by central differences (float64); energy, forces, stress and
               virial are equivariant, permutation- and translation-invariant, supercell- and
               periodic-image-consistent
    plugin     it builds with its default options (with ``default_feature_dims`` set: to those
               widths); an unknown option is a ConfigError naming it; with ``distribution``
               set: the entry point registers the backbone, the core works without the plugin
               and never imports it (``module``, default the distribution with ``_`` for ``-``)

The hypothesis tests take ``@given`` when they run (:func:`property_test`), so the profile a
plugin's conftest.py loads (:func:`tensorframe.testing.load_hypothesis_profile`) applies.

The functions (``build_contract_model``, ``assert_features_invariant``, ...) work on their own
too, without pytest.
"""

from __future__ import annotations

import copy
import functools
import inspect
import itertools
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from tensorframe.backbones.base import Backbone
from tensorframe.config import ConfigError
from tensorframe.graph.collate import build_graph
from tensorframe.graph.padding import pad_graph
from tensorframe.heads.base import Head
from tensorframe.heads.named import BornHeadConfig, DielectricHeadConfig, build_born_head, build_dielectric_head
from tensorframe.hookspecs import hookimpl
from tensorframe.model import TensorModel, build_model
from tensorframe.registry import Registry, build_registry
from tensorframe.specs import FeatureDims, GraphSettings, HeadSpec
from tensorframe.testing import strategies as tfst
from tensorframe.testing.derivatives import (
    assert_forces_match_finite_differences,
    assert_stress_matches_finite_differences,
)
from tensorframe.testing.equivariance import assert_equivariant, compare, model_outputs, rotate_sample, tolerances
from tensorframe.testing.invariance import (
    assert_batch_consistent,
    assert_neumann,
    assert_periodic_images_consistent,
    assert_permutation_invariant,
    assert_supercell_consistent,
    assert_translation_invariant,
    repeat_sample,
    rock_salt,
    split_outputs,
    wurtzite,
)
from tensorframe.types import Graph, InvariantFeatures, Sample

__all__ = [
    "CONTRACT_HEADS",
    "BackboneContract",
    "ContractHeadsPlugin",
    "assert_feature_dims",
    "assert_features_batch_consistent",
    "assert_features_continuous_at_cutoff",
    "assert_features_invariant",
    "assert_features_unchanged_by_padding",
    "assert_features_supercell_consistent",
    "assert_finite_outputs_and_gradients",
    "assert_float32_matches_float64",
    "assert_gradients_reach_parameters",
    "assert_inference_modes_agree",
    "assert_outputs_nonzero",
    "build_contract_model",
    "check_gradient",
    "contract_registry",
    "contract_samples",
    "default_backbone",
    "degenerate_samples",
    "orthogonal_matrix",
    "property_test",
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


def _renamed(build: Callable[..., Head], field: str) -> Callable[..., Head]:
    """``build`` with the head's field renamed to ``field``; passes the builder's arguments
    through unchanged (``options, dims[, fields]``), whatever the builder signature."""

    def build_renamed(*arguments: Any) -> Head:
        head = build(*arguments)
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
    registry = contract_registry(extra_plugins)
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


def contract_registry(extra_plugins: Sequence[tuple[str, object]] = ()) -> Registry:
    """The installed plugins, ``extra_plugins`` and :class:`ContractHeadsPlugin`."""
    return build_registry(extra_plugins=[*extra_plugins, ("tensorframe-contract", ContractHeadsPlugin())])


def default_backbone(name: str, extra_plugins: Sequence[tuple[str, object]] = (), cutoff: float = 6.0) -> Backbone:
    """The backbone ``name`` built from its config class's defaults (an empty config), at
    ``cutoff`` (Å, also the triplet cutoff), in float32 as ``build_model`` leaves it."""
    spec = contract_registry(extra_plugins).get("backbone", name)
    return spec.build(spec.config(), GraphSettings(cutoff, cutoff))


def orthogonal_matrix(seed: int = 0, proper: bool = True) -> np.ndarray:
    """A fixed Haar-random 3x3 orthogonal matrix (float64, det +1 or -1 by ``proper``), for
    checks outside hypothesis; the construction of
    :func:`tensorframe.testing.strategies.orthogonal_matrices`.

    Shapes: -> (3, 3)
    """
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q if proper else -q


def contract_samples() -> list[Sample]:
    """Two fixed generic structures (a skewed 4-atom crystal and a 5-atom molecule) with
    edges and triplets at a 3.5 Å / 3.0 Å cutoff."""
    cell = np.array([[4.2, 0.0, 0.0], [1.4, 3.8, 0.0], [-0.6, 0.9, 4.5]])
    fractional = np.array([[0.02, 0.11, 0.07], [0.48, 0.55, 0.13], [0.31, 0.04, 0.61], [0.83, 0.71, 0.52]])
    crystal = Sample([8, 14, 8, 22], fractional @ cell, cell, [True, True, True])
    positions = np.array([[0.0, 0.0, 0.0], [1.1, 0.2, -0.1], [-0.4, 1.0, 0.3], [0.3, -0.5, 1.2], [1.5, 1.3, 0.9]])
    molecule = Sample([6, 8, 1, 1, 7], positions + np.array([2.0, -1.0, 0.5]))
    return [crystal, molecule]


def degenerate_samples() -> dict[str, Sample]:
    """Structures where features are easy to get wrong: a dimer (edges, no triplets), two
    atoms 10 Å apart (no edges), linear CO2 (triplet angles of exactly 0 and 180 degrees) and
    rock salt (straight Na-Cl-Na chains, 180 degrees)."""
    return {
        "dimer": Sample([1, 1], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.74]]),
        "isolated atoms": Sample([8, 1], [[0.0, 0.0, 0.0], [0.0, 0.0, 10.0]]),
        "CO2": Sample([8, 6, 8], [[0.0, 0.0, -1.16], [0.0, 0.0, 0.0], [0.0, 0.0, 1.16]]),
        "rock salt": rock_salt(),
    }


# ---------------------------------------------------------------- feature invariance


def _features(model: TensorModel, *samples: Sample) -> tuple[Graph, InvariantFeatures]:
    """The graph of ``samples`` (one batch) and the backbone's features on it."""
    with torch.no_grad():
        graph = model.make_graph(list(samples))
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
    _assert_features_match(feats_a, new_index, keys_a, _triplet_edges(graph_a), graph_b, feats_b, transform, atol, rtol)


def _edge_keys(graph: Graph) -> np.ndarray:
    """(centre, neighbour, image) of every edge. Shapes: -> (E, 5) int"""
    return np.column_stack([graph.idx_i.cpu().numpy(), graph.idx_j.cpu().numpy(), graph.cell_shift.cpu().numpy()])


def _triplet_edges(graph: Graph) -> np.ndarray:
    """The two edges (k->j, j->i) of every triplet. Shapes: -> (T, 2) int"""
    return np.column_stack([graph.idx_kj.cpu().numpy(), graph.idx_ji.cpu().numpy()])


def _assert_features_match(
    expected: InvariantFeatures,
    node_index: np.ndarray,
    edge_keys: np.ndarray,
    triplet_edges: np.ndarray,
    graph: Graph,
    actual: InvariantFeatures,
    transform: str,
    atol: float | None,
    rtol: float | None,
) -> None:
    """``expected`` features against ``actual`` ones of ``graph``, matched physically: expected
    node ``a`` is node ``node_index[a]`` of ``graph``; expected edge ``e`` is the edge whose
    (centre, neighbour, image) in ``graph`` is ``edge_keys[e]``; expected triplet ``t`` is the
    one joining the edges matched to expected edges ``triplet_edges[t]``.

    Shapes: node_index (N,), edge_keys (E, 5), triplet_edges (T, 2)
    """
    __tracebackhide__ = True
    edge_match = _match_rows(edge_keys, _edge_keys(graph), f"edges {transform}")
    _compare_features("node", actual.node[torch.as_tensor(node_index)], expected.node, transform, atol, rtol)
    _compare_features("edge", actual.edge[torch.as_tensor(edge_match)], expected.edge, transform, atol, rtol)
    if (expected.triplet is None) != (actual.triplet is None):
        raise AssertionError(f"backbone triplet features are given for one structure but not the other {transform}")
    if expected.triplet is not None:
        triplet_match = _match_rows(edge_match[triplet_edges], _triplet_edges(graph), f"triplets {transform}")
        _compare_features("triplet", actual.triplet[torch.as_tensor(triplet_match)], expected.triplet, transform,
                          atol, rtol)


def _tiled(features: InvariantFeatures, copies: int) -> InvariantFeatures:
    def tile(value: torch.Tensor | None) -> torch.Tensor | None:
        return None if value is None else value.repeat(copies, *([1] * (value.dim() - 1)))

    return InvariantFeatures(node=tile(features.node), edge=tile(features.edge), triplet=tile(features.triplet))


def assert_features_supercell_consistent(
    model: TensorModel,
    sample: Sample,
    repeats: Sequence[int] = (2, 1, 1),
    atol: float | None = None,
    rtol: float | None = None,
) -> None:
    """The ``n1 x n2 x n3`` supercell (:func:`~tensorframe.testing.invariance.repeat_sample`, atom
    ``a`` of image ``m`` is atom ``m N + a``) has the features of the cell, copied: every node,
    edge and triplet of each image equals the cell's. Edge ``(i, j, S)`` seen from image ``c``
    reaches image ``(c + S) mod n`` of ``j`` across supercell image ``floor((c + S) / n)``.

    Raises:
        AssertionError: naming the features (node | edge | triplet) and the supercell.
        ValueError: for a repeat along a non-periodic direction.
    """
    __tracebackhide__ = True
    reps = np.asarray(repeats, dtype=np.int64)
    supercell = repeat_sample(sample, reps)
    graph_a, feats_a = _features(model, sample)
    graph_b, feats_b = _features(model, supercell)
    images = np.array(list(itertools.product(*(range(int(n)) for n in reps))), dtype=np.int64)  # (M, 3)
    n, num_edges = sample.num_atoms, graph_a.num_edges
    keys = _edge_keys(graph_a)
    reached = images[:, None, :] + keys[None, :, 2:]  # (M, E, 3): image of the neighbour, in cells
    copy_j = np.ravel_multi_index(tuple(np.moveaxis(np.mod(reached, reps), -1, 0)), tuple(reps))  # (M, E)
    copy_i = np.arange(len(images))[:, None]
    edge_keys = np.column_stack([
        (copy_i * n + keys[None, :, 0]).ravel(), (copy_j * n + keys[None, :, 1]).ravel(),
        np.floor_divide(reached, reps).reshape(-1, 3),
    ])
    # Triplet k -> j -> i: its edge j -> i in image m reaches j in image copy_j[m, ji], where
    # the edge k -> j (centred on j) then lies.
    kj, ji = _triplet_edges(graph_a).T
    triplet_edges = np.column_stack([(copy_j[:, ji] * num_edges + kj).ravel(), (copy_i * num_edges + ji).ravel()])
    transform = f"in the {'x'.join(str(int(r)) for r in reps)} supercell"
    _assert_features_match(_tiled(feats_a, len(images)), np.arange(supercell.num_atoms), edge_keys, triplet_edges,
                           graph_b, feats_b, transform, atol, rtol)


def assert_features_batch_consistent(
    model: TensorModel, samples: Sequence[Sample], atol: float | None = None, rtol: float | None = None
) -> None:
    """A batch has the features of its structures alone: nodes, edges (matched by centre,
    neighbour and image, atoms offset by the structures before) and triplets.

    Raises:
        AssertionError: naming the features (node | edge | triplet) that depend on the batch.
    """
    __tracebackhide__ = True
    samples = list(samples)
    alone = [_features(model, sample) for sample in samples]
    atoms = np.cumsum([0] + [s.num_atoms for s in samples])[:-1]
    edges = np.cumsum([0] + [g.num_edges for g, _ in alone])[:-1]
    edge_keys = np.concatenate([_edge_keys(g) + [a, a, 0, 0, 0] for (g, _), a in zip(alone, atoms, strict=True)])
    triplet_edges = np.concatenate([_triplet_edges(g) + e for (g, _), e in zip(alone, edges, strict=True)])
    expected = InvariantFeatures(*(
        None if parts[0] is None else torch.cat(parts)
        for parts in zip(*((f.node, f.edge, f.triplet) for _, f in alone), strict=True)
    ))
    graph, actual = _features(model, *samples)
    _assert_features_match(expected, np.arange(graph.num_nodes), edge_keys, triplet_edges, graph, actual,
                           f"in a batch of {len(samples)} structures (vs alone)", atol, rtol)


def assert_features_continuous_at_cutoff(
    model: TensorModel, numbers: tuple[int, int] = (13, 7), step: float = 1e-4, atol: float = 1e-7
) -> None:
    """Node features are continuous as a neighbour leaves the cutoff: a dimer ``step`` Å inside
    the cutoff has the node features of one 0.1 Å outside (within ``atol``), while 0.5 Å inside
    the neighbour changes them (by more than ``100 atol``, so the check is not vacuous).

    Raises:
        AssertionError: with the jump of the node features at the cutoff.
    """
    __tracebackhide__ = True
    cutoff = model.graph_settings.cutoff

    def nodes(distance: float) -> torch.Tensor:
        return _features(model, Sample(list(numbers), [[0.0, 0.0, 0.0], [0.0, 0.0, distance]]))[1].node

    apart = nodes(cutoff + 0.1)
    jump = float((nodes(cutoff - step) - apart).abs().max())
    if jump > atol:
        raise AssertionError(
            f"node features jump by {jump:.3e} > {atol:.1e} as a neighbour crosses the cutoff ({cutoff} Å): "
            "messages must vanish smoothly there (an envelope on every term)"
        )
    inside = float((nodes(cutoff - 0.5) - apart).abs().max())
    if not inside > 100 * atol:
        raise AssertionError(
            f"a neighbour 0.5 Å inside the cutoff changes the node features by only {inside:.3e} (<= 100 atol): "
            "the check would prove nothing"
        )


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


def check_gradient(name: str, parameter: torch.Tensor, loss: str) -> None:
    """Raise an AssertionError naming ``parameter`` when ``loss`` gave it no gradient or a
    non-finite one."""
    __tracebackhide__ = True
    if parameter.grad is None:
        raise AssertionError(f"parameter {name!r} gets no gradient from {loss}")
    if not torch.isfinite(parameter.grad).all():
        raise AssertionError(f"parameter {name!r} has a non-finite gradient from {loss}")


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
            check_gradient(name, parameter, "a loss over every head")
            if id(parameter) in backbone and not parameter.grad.abs().max() > 0:
                raise AssertionError(f"backbone parameter {name!r} has an all-zero gradient")
    finally:
        model.zero_grad(set_to_none=True)


def assert_features_unchanged_by_padding(model: TensorModel, samples: Sequence[Sample], seed: int = 0,
                                         atol: float | None = None, rtol: float | None = None) -> None:
    """On a graph padded to bucket sizes (:func:`~tensorframe.graph.padding.pad_graph`, what
    ``amp`` training on a CPU runs the backbone on), the real atoms, edges and triplets keep
    their features, and a loss on them gives every backbone parameter and every edge vector
    the same gradient: the padding structure must not leak into the real ones, forward or
    backward (e.g. through a sum over all atoms, or a normalisation over all edges).

    Raises:
        AssertionError: naming the features or the gradient that the padding changed.
    """
    __tracebackhide__ = True
    graph = model.make_graph(list(samples))
    parameters = [(name, p) for name, p in model.backbone.named_parameters() if p.requires_grad]

    def run(padded: bool) -> tuple[InvariantFeatures, list[torch.Tensor]]:
        edge_vec = graph.edge_vec.detach().clone().requires_grad_(True)
        real = replace(graph, edge_vec=edge_vec)
        if padded:
            padding = pad_graph(real)
            features = padding.unpad(model.backbone(padding.graph))
        else:
            features = model.backbone(real)
        weights = torch.Generator().manual_seed(seed)
        loss = sum((value * torch.randn(value.shape, generator=weights, dtype=value.dtype)).sum()
                   for value in (features.node, features.edge, features.triplet) if value is not None)
        inputs = [edge_vec, *(p for _, p in parameters)]
        grads = torch.autograd.grad(loss, inputs, allow_unused=True)
        return features, [g if g is not None else torch.zeros_like(x) for g, x in zip(grads, inputs, strict=True)]

    expected, expected_grads = run(False)
    actual, actual_grads = run(True)
    for name in ("node", "edge", "triplet"):
        want, got = getattr(expected, name), getattr(actual, name)
        if (want is None) != (got is None):
            raise AssertionError(f"{name} features: present on one graph only (padded: {got is not None})")
        if want is None:
            continue
        a_tol, r_tol = tolerances(want.dtype, atol, rtol)
        ok, error, tolerance = compare(got.detach(), want.detach(), a_tol, r_tol)
        if not ok:
            raise AssertionError(f"{name} features change when the graph is padded: max error {error:.3e} > "
                                 f"tolerance {tolerance:.3e}")
    names = ["edge_vec", *(name for name, _ in parameters)]
    for name, got, want in zip(names, actual_grads, expected_grads, strict=True):
        a_tol, r_tol = tolerances(want.dtype, atol, rtol)
        ok, error, tolerance = compare(got, want, a_tol, r_tol)
        if not ok:
            raise AssertionError(f"the gradient of {name!r} changes when the graph is padded: max error {error:.3e} > "
                                 f"tolerance {tolerance:.3e}")


def assert_float32_matches_float64(model: TensorModel, samples: Sequence[Sample], rtol: float = 1e-5) -> None:
    """The same weights in float32 and float64 give the same outputs:
    ``max|y32 - y64| <= rtol * max(1, max|y64|)`` for every field; both finite (NaN only where
    a field is undefined in both, e.g. stress without a volume). Energies come out in float64
    from both."""
    __tracebackhide__ = True
    samples = list(samples)
    model64 = copy.deepcopy(model).double()
    model32 = copy.deepcopy(model).float()
    out64, out32 = model_outputs(model64, samples), model_outputs(model32, samples)
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


def assert_finite_outputs_and_gradients(model: TensorModel, samples: Sequence[Sample]) -> None:
    """Outputs, and gradients of a loss over every output with respect to the positions and
    every parameter, are finite (in the model's dtype), e.g. on :func:`degenerate_samples`:
    no edges, no triplets, triplet angles of exactly 0 or 180 degrees."""
    __tracebackhide__ = True
    samples = list(samples)
    dtype = next(model.parameters()).dtype
    positions = torch.tensor(np.concatenate([s.positions for s in samples]), dtype=dtype, requires_grad=True)
    settings = model.graph_settings
    graph = build_graph(samples, settings.cutoff, settings.triplet_cutoff, settings.max_neighbors, dtype=dtype,
                        positions=positions)
    model.zero_grad(set_to_none=True)
    try:
        outputs = model(graph)
        for name, value in outputs.items():
            if not torch.isfinite(value).all():
                raise AssertionError(f"field {name!r}: non-finite output ({dtype})")
        sum(value.square().sum() for value in outputs.values()).backward()
        if positions.grad is None or not torch.isfinite(positions.grad).all():
            raise AssertionError(f"the gradient with respect to the positions is missing or not finite ({dtype})")
        for name, parameter in model.named_parameters():
            if parameter.grad is not None and not torch.isfinite(parameter.grad).all():
                raise AssertionError(f"parameter {name!r} has a non-finite gradient ({dtype})")
    finally:
        model.zero_grad(set_to_none=True)


def assert_inference_modes_agree(model: TensorModel, samples: Sequence[Sample], tolerance: float = 1e-12) -> None:
    """Outputs under ``torch.no_grad`` and ``torch.inference_mode`` equal those with autograd
    on (a backbone may take shortcuts without autograd, e.g. in-place operations, but must not
    change the result): ``max|y - y_autograd| <= tolerance * max(1, max|y_autograd|)``."""
    __tracebackhide__ = True
    graph = model.make_graph(list(samples))
    with torch.enable_grad():
        expected = {name: value.detach() for name, value in model(graph).items()}
    with torch.no_grad():
        without_grad = model(graph)
    with torch.inference_mode():
        inference = model(graph)
    for mode, outputs in (("torch.no_grad", without_grad), ("torch.inference_mode", inference)):
        for name, value in expected.items():
            scale = max(1.0, float(value.abs().max()))
            ok, error, bound = compare(outputs[name], value, tolerance * scale, 0.0)
            if not ok:
                raise AssertionError(f"field {name!r} under {mode} differs from autograd by {error:.3e} > {bound:.3e}")


def _outputs_per_structure(model: TensorModel, samples: Sequence[Sample]) -> list[dict[str, torch.Tensor]]:
    specs = dict(model.fields)
    return split_outputs(model_outputs(model, samples), specs, [s.num_atoms for s in samples])


def assert_outputs_nonzero(model: TensorModel, samples: Sequence[Sample], floor: float = 1e-8) -> None:
    """Every field is non-zero (``max|y| > floor``) on every structure, e.g. the generic
    :func:`contract_samples`: guards the symmetry checks from passing vacuously."""
    __tracebackhide__ = True
    for b, row in enumerate(_outputs_per_structure(model, list(samples))):
        for name, value in row.items():
            if not value.abs().max() > floor:
                raise AssertionError(f"field {name!r} is zero on structure {b}: the symmetry checks would prove nothing")


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


def property_test(**strategies: st.SearchStrategy[Any]) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Like hypothesis's ``@given(**strategies)`` on a test method, but applied when the test
    runs rather than at import: the hypothesis profile loaded by then (``HYPOTHESIS_PROFILE``)
    applies even when a plugin's suite imports the contract first, and every class using a
    contract runs its own hypothesis test (one ``@given`` shared by several classes fails
    ``HealthCheck.differing_executors``). The other arguments (``self``, fixtures, parameters)
    pass through.
    """

    def decorate(body: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(body)
        def test(self: Any, *args: Any, **kwargs: Any) -> None:
            def run(**drawn: Any) -> None:
                body(self, *args, **kwargs, **drawn)

            run.__qualname__ = f"{type(self).__qualname__}.{body.__name__}"
            given(**strategies)(run)()

        signature = inspect.signature(body)
        test.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[p for name, p in signature.parameters.items() if name not in strategies]
        )
        del test.__wrapped__  # pytest reads the signature above, not the body's
        return test

    return decorate


class BackboneContract:
    """Contract tests for a backbone: subclass it and set ``config`` to ``{"name": <backbone>,
    **small options}`` (or provide a ``backbone_config`` fixture, scope ``"class"`` or wider,
    returning it, e.g. parametrized over several backbones).

    Class attributes to override:
        config: the backbone's config, read by the default ``backbone_config`` fixture.
        cutoff / triplet_cutoff / hidden: graph cutoffs (Å) and head widths.
        extra_plugins: ``(name, plugin)`` pairs registering a backbone that is not installed.
        default_feature_dims: the feature widths the backbone has with its default options
            (checked when set; it must build with them in any case).
        distribution / module: for an installed plugin, its distribution name (e.g.
            ``"tensorframe-schnet"``) and import name (default: the distribution name with
            ``_`` for ``-``, ``"tensorframe_schnet"``): then the contract also checks that its
            entry point registers the backbone, that the core works without the plugin and
            never imports it.

    Structures come from :mod:`tensorframe.testing.strategies` (2..8 atoms); the number of
    examples follows the loaded hypothesis profile.
    """

    cutoff: float = 3.5
    triplet_cutoff: float = 3.0
    hidden: int = 16
    config: Mapping[str, Any] | None = None
    extra_plugins: Sequence[tuple[str, object]] = ()
    default_feature_dims: FeatureDims | None = None
    distribution: str | None = None
    module: str | None = None

    @pytest.fixture(scope="class")
    @classmethod
    def backbone_config(cls) -> Mapping[str, Any]:
        if cls.config is None:
            raise TypeError(f"{cls.__name__}: set `config` or define a `backbone_config` fixture")
        return cls.config

    @pytest.fixture(scope="class")
    @classmethod
    def contract_model(cls, backbone_config: Mapping[str, Any]) -> TensorModel:
        return build_contract_model(backbone_config, cls.cutoff, cls.triplet_cutoff, cls.hidden, extra_plugins=cls.extra_plugins)

    # -------------------------------------------------------- features

    def test_feature_dims_float64_and_float32(self, contract_model: TensorModel) -> None:
        assert_feature_dims(contract_model, contract_samples())
        assert_feature_dims(copy.deepcopy(contract_model).float(), contract_samples())

    @pytest.mark.parametrize("kind", list(_KINDS))
    @property_test(data=st.data(), rotation=tfst.orthogonal_matrices(proper=True),
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
    @property_test(data=st.data())
    def test_features_periodic_images(self, contract_model: TensorModel, kind: str, data: st.DataObject) -> None:
        sample = data.draw(_PERIODIC[kind], label=kind)
        assert_features_invariant(contract_model, sample, image_shifts=_draw_image_shifts(data, sample))

    @pytest.mark.parametrize("kind", list(_SUPERCELL))
    @property_test(data=st.data())
    def test_features_supercell(self, contract_model: TensorModel, kind: str, data: st.DataObject) -> None:
        strategy, small_repeat, _ = _SUPERCELL[kind]
        assert_features_supercell_consistent(contract_model, data.draw(strategy, label=kind), small_repeat)

    @property_test(samples=st.lists(st.one_of(*_KINDS.values()), min_size=2, max_size=3))
    def test_features_batch_equals_one_by_one(self, contract_model: TensorModel, samples: list[Sample]) -> None:
        assert_features_batch_consistent(contract_model, samples)

    @property_test(samples=st.lists(st.one_of(*_KINDS.values()), min_size=1, max_size=3))
    def test_features_unchanged_by_padding(self, contract_model: TensorModel, samples: list[Sample]) -> None:
        """``amp`` on a CPU pads each batch graph to bucket sizes: the real features and the
        gradients of a loss on them (parameters, edge vectors) must not change."""
        assert_features_unchanged_by_padding(contract_model, samples)

    def test_degenerate_structures_unchanged_by_padding(self, contract_model: TensorModel) -> None:
        for name, sample in degenerate_samples().items():
            try:
                assert_features_unchanged_by_padding(contract_model, [sample])
            except AssertionError as error:
                raise AssertionError(f"{name}: {error}") from None

    def test_features_continuous_at_the_cutoff(self, contract_model: TensorModel) -> None:
        assert_features_continuous_at_cutoff(contract_model)

    # -------------------------------------------------------- outputs

    def test_every_output_is_nonzero(self, contract_model: TensorModel) -> None:
        """Guards the checks from being vacuous: every head gives a non-trivial tensor."""
        assert_outputs_nonzero(contract_model, contract_samples())

    @pytest.mark.parametrize("kind", list(_KINDS))
    @property_test(data=st.data(), rotation=tfst.orthogonal_matrices(proper=True))
    def test_outputs_equivariant(self, contract_model: TensorModel, kind: str, data: st.DataObject,
                                 rotation: np.ndarray) -> None:
        sample = data.draw(_KINDS[kind], label=kind)
        assert_equivariant(contract_model, sample, rotation)
        assert_equivariant(contract_model, sample, -rotation)

    @pytest.mark.parametrize("kind", list(_KINDS))
    @property_test(data=st.data(), shift=st.lists(st.floats(-10.0, 10.0), min_size=3, max_size=3))
    def test_outputs_permutation_and_translation(self, contract_model: TensorModel, kind: str,
                                                 data: st.DataObject, shift: list[float]) -> None:
        sample = data.draw(_KINDS[kind], label=kind)
        permutation = data.draw(st.permutations(range(sample.num_atoms)), label="permutation")
        assert_permutation_invariant(contract_model, sample, permutation)
        assert_translation_invariant(contract_model, sample, shift)

    @pytest.mark.parametrize("kind", list(_PERIODIC))
    @property_test(data=st.data())
    def test_outputs_periodic_images(self, contract_model: TensorModel, kind: str, data: st.DataObject) -> None:
        sample = data.draw(_PERIODIC[kind], label=kind)
        assert_periodic_images_consistent(contract_model, sample, _draw_image_shifts(data, sample))

    @pytest.mark.parametrize("kind", list(_SUPERCELL))
    @property_test(data=st.data())
    def test_outputs_supercell(self, contract_model: TensorModel, kind: str, data: st.DataObject) -> None:
        strategy, small_repeat, both_repeat = _SUPERCELL[kind]
        sample = data.draw(strategy, label=kind)
        repeats = [small_repeat] + ([both_repeat] if sample.num_atoms <= 2 else [])  # supercells <= 8 atoms
        assert_supercell_consistent(contract_model, sample, repeats)

    @property_test(samples=st.lists(st.one_of(*_KINDS.values()), min_size=2, max_size=3))
    def test_batch_equals_one_by_one(self, contract_model: TensorModel, samples: list[Sample]) -> None:
        assert_batch_consistent(contract_model, samples)

    # -------------------------------------------------------- training and dtypes

    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
    def test_gradients_reach_every_parameter(self, contract_model: TensorModel, dtype: torch.dtype) -> None:
        assert_gradients_reach_parameters(copy.deepcopy(contract_model).to(dtype), contract_samples())

    def test_float32_matches_float64(self, contract_model: TensorModel) -> None:
        assert_float32_matches_float64(contract_model, contract_samples())

    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
    def test_degenerate_structures_give_finite_outputs_and_gradients(self, contract_model: TensorModel,
                                                                    dtype: torch.dtype) -> None:
        """No edges, no triplets, triplet angles of exactly 0 and 180 degrees."""
        model = copy.deepcopy(contract_model).to(dtype)
        for name, sample in degenerate_samples().items():
            try:
                assert_finite_outputs_and_gradients(model, [sample])
            except AssertionError as error:
                raise AssertionError(f"{name}: {error}") from None
        graphs = {name: model.make_graph([sample]) for name, sample in degenerate_samples().items()}
        assert graphs["dimer"].num_edges > 0 and graphs["dimer"].num_triplets == 0
        assert graphs["isolated atoms"].num_edges == 0
        for name, angles in (("CO2", (-1.0, 1.0)), ("rock salt", (-1.0,))):  # the degenerate angles occur
            cos = graphs[name].triplet_cos.double()
            assert all(bool(((cos - value).abs() < 1e-6).any()) for value in angles), name

    def test_inference_modes_agree_with_autograd(self, contract_model: TensorModel) -> None:
        assert_inference_modes_agree(contract_model, [*contract_samples(), rock_salt()])

    @pytest.mark.parametrize("crystal", [rock_salt, wurtzite], ids=["rock_salt", "wurtzite"])
    def test_neumann_on_reference_crystals(self, contract_model: TensorModel, crystal: Callable[[], Sample]) -> None:
        """Every field keeps the crystal's point-group symmetry (e.g. rock salt: isotropic
        dielectric, no piezo), and symmetry-equivalent atoms carry related tensors."""
        assert_neumann(contract_model, crystal())

    # -------------------------------------------------------- the plugin

    def test_an_unknown_option_is_a_config_error(self, backbone_config: Mapping[str, Any]) -> None:
        config = {"backbone": {**backbone_config, "hiden": 8}, "heads": [{"name": "force"}]}
        with pytest.raises(ConfigError, match=r"backbone\.hiden"):
            build_model(config, registry=contract_registry(self.extra_plugins))

    def test_builds_with_its_default_options(self, backbone_config: Mapping[str, Any]) -> None:
        backbone = default_backbone(backbone_config["name"], self.extra_plugins)
        if self.default_feature_dims is not None:
            assert backbone.feature_dims == self.default_feature_dims

    def test_entry_point_registers_the_backbone(self, backbone_config: Mapping[str, Any]) -> None:
        if self.distribution is None:
            pytest.skip("not an installed plugin (set `distribution`)")
        info = build_registry().info["backbone"][backbone_config["name"]]
        assert info.distribution == self.distribution

    def test_core_works_without_the_plugin(self, backbone_config: Mapping[str, Any]) -> None:
        if self.distribution is None:
            pytest.skip("not an installed plugin (set `distribution`)")
        core = build_registry(load_entry_points=False)
        name = backbone_config["name"]
        assert name not in core.names("backbone")
        heads = [{"name": head, "hidden": self.hidden} for head in ("force", "born", "dielectric", "piezo")]
        with pytest.raises(ConfigError, match=f"{name}.*valid choices: reference"):
            build_model({"backbone": dict(backbone_config), "heads": heads}, registry=core)
        model = build_model({"cutoff": self.cutoff, "backbone": {"name": "reference"}, "heads": heads}, registry=core)
        with torch.no_grad():
            outputs = model(model.make_graph(contract_samples()))
        assert set(outputs) == {"forces", "born_charges", "dielectric", "piezo"}

    def test_core_never_imports_the_plugin(self) -> None:
        module = self.module or (self.distribution and self.distribution.replace("-", "_"))
        if not module:
            pytest.skip("not an installed plugin (set `distribution`)")
        code = (
            "import sys, tensorframe, tensorframe.model, tensorframe.cli\n"
            "from tensorframe.registry import build_registry\n"
            "build_registry(load_entry_points=False)\n"
            f"assert {module!r} not in sys.modules, sorted(m for m in sys.modules if m.startswith('tensorframe'))\n"
        )
        subprocess.run([sys.executable, "-c", code], check=True)

    # -------------------------------------------------------- conservative forces and stress

    @pytest.fixture(scope="class")
    @classmethod
    def conservative_model(cls, backbone_config: Mapping[str, Any]) -> TensorModel:
        return build_contract_model(backbone_config, cls.cutoff, cls.triplet_cutoff, cls.hidden,
                                    extra_plugins=cls.extra_plugins, conservative=True)

    @property_test(crystal=tfst.crystals(max_atoms=4), molecule=tfst.molecules(max_atoms=4))
    def test_conservative_forces_and_stress_are_energy_derivatives(
            self, conservative_model: TensorModel, crystal: Sample, molecule: Sample) -> None:
        """F = -dE/dr and sigma = (1/V) dE/d(strain) against central differences, in float64."""
        assert_forces_match_finite_differences(conservative_model, molecule)
        assert_forces_match_finite_differences(conservative_model, crystal)
        assert_stress_matches_finite_differences(conservative_model, crystal)

    @pytest.mark.parametrize("kind", list(_KINDS))
    @property_test(data=st.data(), rotation=tfst.orthogonal_matrices(proper=True),
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

    @property_test(data=st.data())
    def test_conservative_supercell_and_images(self, conservative_model: TensorModel, data: st.DataObject) -> None:
        """A supercell keeps the stress and multiplies energy and virial; periodic images change nothing."""
        sample = data.draw(tfst.crystals(max_atoms=4), label="crystal")
        assert_supercell_consistent(conservative_model, sample, [(2, 1, 1)])
        assert_periodic_images_consistent(conservative_model, sample, _draw_image_shifts(data, sample))
