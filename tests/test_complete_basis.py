"""The complete word sets: out-of-plane and perpendicular components on planar and linear
molecules for every backbone (and exactly zero with ``basis: paper``, so the check can fail),
the charge-flow terms of dipole and polarizability heads, and old checkpoints.
"""

from __future__ import annotations

import ase.build
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import tensorframe as tf
from tensorframe.checkpoint import load_checkpoint, load_model, save_checkpoint
from tensorframe.registry import get_registry
from tensorframe.testing import (
    assert_batch_consistent,
    assert_equivariant,
    assert_permutation_invariant,
    assert_translation_invariant,
    model_outputs,
    rock_salt,
)
from tensorframe.testing import strategies as tfst
from tensorframe.types import Sample

BACKBONE_OPTIONS = {
    "reference": {"hidden": 16},
    "etgnn": {"hidden": 16, "triplet_dim": 16, "num_blocks": 1, "int_emb_size": 8, "out_emb_size": 16},
    "schnet": {"hidden": 16, "num_interactions": 1},
    "cgcnn": {"hidden": 16, "num_layers": 1},
}


def _principal_frame(name: str) -> tuple[Sample, np.ndarray]:
    """The molecule and its normal (planar) or axis (linear) as a unit vector."""
    atoms = ase.build.molecule(name)
    positions = atoms.positions - atoms.positions.mean(0)
    _, _, vt = np.linalg.svd(positions)
    linear = name in ("CO2", "HCN")
    direction = vt[0] if linear else vt[2]
    return Sample(atoms.numbers, atoms.positions), direction


def _backbones() -> list[str]:
    return [name for name in get_registry().names("backbone") if name in BACKBONE_OPTIONS]


def _model(backbone: str, basis: str) -> tf.TensorModel:
    options = {k: v for k, v in BACKBONE_OPTIONS[backbone].items()}
    config_cls = get_registry().get("backbone", backbone).config
    options = {k: v for k, v in options.items() if k in config_cls.model_fields}
    torch.manual_seed(0)
    return tf.build_model({
        "cutoff": 5.0,
        "triplet_cutoff": 4.0,
        "backbone": {"name": backbone, **options},
        "heads": [{"name": "born", "acoustic_sum_rule": True, "basis": basis, "hidden": 16},
                  {"name": "polarizability", "basis": basis, "hidden": 16}],
    }).double().eval()


def _normal_components(model: tf.TensorModel, name: str) -> tuple[float, float]:
    """max |n.Z*.n| over atoms and |n.alpha.n| - in the planar case n is the normal; in the
    linear case the perpendicular components u.T.u with u perpendicular to the axis."""
    sample, direction = _principal_frame(name)
    if name in ("CO2", "HCN"):
        direction = np.cross(direction, [0.3, 0.5, 0.8])
        direction = direction / np.linalg.norm(direction)
    outputs = model_outputs(model, [sample])
    n = torch.as_tensor(direction)
    born = torch.einsum("a,kab,b->k", n, outputs["born_charges"], n).abs().max()
    alpha = (n @ outputs["polarizability"][0] @ n).abs()
    return float(born), float(alpha)


@pytest.mark.parametrize("molecule", ["H2O", "C2H4", "CO2", "HCN"])
@pytest.mark.parametrize("backbone", _backbones())
def test_planar_and_linear_molecules_get_every_component(backbone: str, molecule: str) -> None:
    """Fresh models of every backbone: out-of-plane (H2O, C2H4) and perpendicular (CO2, HCN)
    Born charges and polarizability are non-zero with the default words, and exactly zero
    (to float precision) with the paper's words, which is the gap the default closes."""
    born, alpha = _normal_components(_model(backbone, "complete"), molecule)
    assert born > 1e-4 and alpha > 1e-4, (born, alpha)
    born_paper, alpha_paper = _normal_components(_model(backbone, "paper"), molecule)
    if molecule in ("CO2", "HCN"):
        # Linear: the perpendicular part of the paper words is zero on every atom.
        assert born_paper < 1e-10 and alpha_paper < 1e-10, (born_paper, alpha_paper)
    else:
        assert born_paper < 1e-10 and alpha_paper < 1e-10, (born_paper, alpha_paper)


# ---------------------------------------------------------------- charge flow

CHARGE_FLOW_HEADS = [
    {"name": "dipole", "charge_flow": True, "hidden": 8},
    {"name": "polarizability", "charge_flow": True, "hidden": 8},
]


@pytest.fixture(scope="module")
def charge_flow_model() -> tf.TensorModel:
    torch.manual_seed(1)
    return tf.build_model({
        "cutoff": 3.5, "backbone": {"name": "reference", "hidden": 8}, "heads": CHARGE_FLOW_HEADS,
    }).double().eval()


@given(sample=tfst.molecules(), rotation=tfst.orthogonal_matrices(), data=st.data())
def test_charge_flow_is_equivariant_and_translation_invariant(charge_flow_model, sample, rotation, data) -> None:
    assert_equivariant(charge_flow_model, sample, rotation)
    shift = np.array(data.draw(st.lists(st.floats(-20, 20), min_size=3, max_size=3)))
    assert_translation_invariant(charge_flow_model, sample, shift)
    permutation = data.draw(st.permutations(range(sample.num_atoms)))
    assert_permutation_invariant(charge_flow_model, sample, permutation)


@given(samples=st.lists(tfst.molecules(max_atoms=5), min_size=2, max_size=3))
def test_charge_flow_batch_equals_one_by_one(charge_flow_model, samples) -> None:
    assert_batch_consistent(charge_flow_model, samples)


@torch.no_grad()
def test_charge_flow_moves_with_a_charged_fragment(charge_flow_model) -> None:
    """The term is not vacuous: two fragments beyond the cutoff carry opposite net charges
    (the per-atom charges sum to zero over the structure), and moving one fragment by d adds
    exactly q_fragment * d to the dipole."""
    head = charge_flow_model.heads["dipole"]
    fragment = np.arange(7)[:, None] >= 3
    near = Sample([8, 1, 1, 7, 1, 1, 1], np.array([
        [0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0], [10.0, 0, 0], [11.0, 0, 0], [9.7, 0.95, 0], [9.7, -0.5, 0.8]]))
    far = Sample(near.numbers, near.positions + np.where(fragment, [27.0, 0, 0], 0.0))

    def flow_and_charges(sample):
        graph = charge_flow_model.make_graph([sample])
        features = charge_flow_model.features(graph)
        charges = head.charge_flow.charges(features.node)[:, 0]
        return head.charge_flow(graph, features)[0], charges - charges.mean()

    flow_near, charges = flow_and_charges(near)
    flow_far, _ = flow_and_charges(far)
    fragment_charge = float(charges[3:].sum())
    assert abs(fragment_charge) > 1e-3
    torch.testing.assert_close(flow_far - flow_near, torch.tensor([27.0 * fragment_charge, 0.0, 0.0], dtype=torch.float64))


def test_charge_flow_is_refused_on_periodic_structures(charge_flow_model) -> None:
    with pytest.raises(ValueError, match=r"charge_flow is defined for molecules only; structure 1 of the batch is periodic"):
        model_outputs(charge_flow_model, [Sample([8, 1], [[0, 0, 0], [0.9, 0, 0]]), rock_salt()])


def test_charge_flow_needs_a_summed_structure_field() -> None:
    with pytest.raises(tf.ConfigError, match="charge_flow needs a summed structure-level dipole"):
        tf.build_model({"backbone": {"name": "reference"},
                        "heads": [{"name": "tensor", "field": "dielectric", "charge_flow": True}]})


# ---------------------------------------------------------------- checkpoints


def test_format_one_checkpoints_load_with_the_paper_words(tmp_path) -> None:
    """A checkpoint written before the complete words (format 1, no ``basis`` key) is rebuilt
    with ``basis: paper`` and predicts exactly what it did."""
    torch.manual_seed(3)
    config = {"cutoff": 4.0, "backbone": {"name": "reference", "hidden": 8},
              "heads": [{"name": "born", "basis": "paper", "hidden": 8}, {"name": "tensor", "field": "polarizability",
                                                                           "basis": "paper", "hidden": 8}]}
    model = tf.build_model(config)
    path = tmp_path / "model.pt"
    save_checkpoint(path, model)
    payload = load_checkpoint(path)
    payload["format"] = "tensorframe-checkpoint/1"
    for head in payload["model_config"]["heads"]:
        del head["basis"]
    torch.save(payload, path)
    loaded = load_model(path)
    sample = Sample([8, 1, 1], [[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    expected, actual = model.eval().predict([sample])[0], loaded.predict([sample])[0]
    for name in expected:
        np.testing.assert_array_equal(actual[name], expected[name])
    assert all(head.atom_words == () for head in loaded.heads.values())


# ---------------------------------------------------------------- the head's evaluation


def _naive_atomic_tensors(head, graph, features) -> torch.Tensor:
    """sum over edges / triplets of coefficient x word_product, one word at a time, plus the
    isotropic atom words: the definition, without the head's per-edge factoring."""
    from tensorframe.ops.basis import word_product
    from tensorframe.ops.symmetry import symmetric_projector

    out = torch.zeros(graph.num_nodes, 3**head.rank, dtype=torch.float64)
    num_edge_words = len(head.edge_words)
    if head.edge_coefficients is not None:
        raw = head.edge_coefficients(features.edge)
        coefficients = head._coefficients(raw[:, :num_edge_words], graph.edge_envelope)
        if not head.nonnegative:
            raw = raw * graph.edge_envelope.unsqueeze(-1)
        for w, word in enumerate(head.edge_words):
            out = out.index_add(0, graph.idx_i, coefficients[:, w : w + 1] * word_product(word, graph.edge_dir))
    if head.atom_words:
        edge_terms = raw[:, num_edge_words:] * (graph.edge_envelope.unsqueeze(-1) if head.nonnegative else 1.0)
        isotropic = head.node_coefficients(features.node).index_add(0, graph.idx_i, edge_terms)
        if head.nonnegative:
            isotropic = torch.nn.functional.softplus(isotropic)
        for w, word in enumerate(head.atom_words):
            out = out + isotropic[:, w : w + 1] * word_product(word, graph.edge_dir[:1]).expand(graph.num_nodes, -1)
    if head.triplet_words:
        coefficients = head._coefficients(head.triplet_coefficients(features.triplet), graph.triplet_envelope)
        a, b = graph.edge_dir[graph.idx_kj], graph.edge_dir[graph.idx_ji]
        for w, word in enumerate(head.triplet_words):
            out = out.index_add(0, graph.idx_triplet_center, coefficients[:, w : w + 1] * word_product(word, a, b))
    if "=" in head.field.symmetry:
        out = out @ symmetric_projector(head.field.symmetry)
    return out


WORD_CASES = [
    ("ij", 1, {}),
    ("ij=ji", 1, {"nonnegative": True}),
    ("ijk=ikj", -1, {}),
    ("ijk=jik", -1, {}),
    ("ijkl", 1, {}),
    ("ijkl=jikl=ijlk=klij", 1, {}),
    ("ij=-ji", -1, {}),  # axial rank 2: words with c, some factored by b
    ("ijk", 1, {"extra_triplet": ("IIc", "cII")}),  # axial rank 3 with isotropic triplet words
    ("i", -1, {"extra_triplet": ("a", "b")}),  # rank 1 words on triplets: empty rests
]


@pytest.mark.parametrize("formula, parity, options", WORD_CASES, ids=[f"{f}{p:+d}" for f, p, _ in WORD_CASES])
def test_head_equals_the_naive_sum_of_words(formula: str, parity: int, options: dict) -> None:
    """The head's factored evaluation (edge words and a/b-holding triplet words summed per edge
    first, identities placed per atom) equals coefficient x word summed item by item."""
    from tensorframe.fields import FieldSpec
    from tensorframe.heads.tensor import CartesianTensorHead
    from tensorframe.ops.basis import complete_words
    from tensorframe.specs import FeatureDims

    words = complete_words(formula, parity)
    torch.manual_seed(7)
    head = CartesianTensorHead(
        FieldSpec("t", "atom", formula, parity, ""), FeatureDims(node=5, edge=6, triplet=7),
        words.edge, words.triplet + options.get("extra_triplet", ()), hidden=8, atom_words=words.atom,
        nonnegative=options.get("nonnegative", False),
    ).double()
    for parameter in head.parameters():  # zero-initialised rows would hide a wrong column
        torch.nn.init.normal_(parameter)
    sample = Sample([8, 14, 14, 8, 1], np.array([[0, 0, 0], [1.5, 0.2, 0.1], [0.3, 1.7, -0.4], [1.9, 1.6, 0.8],
                                                 [-1.1, 0.6, 1.2]]), np.diag([4.0, 4.2, 4.4]), [True, True, True])
    graph = tf.build_model({"cutoff": 3.0, "backbone": {"name": "reference"}, "heads": [{"name": "force"}]}).double() \
        .make_graph([sample])
    generator = torch.Generator().manual_seed(3)
    features = tf.InvariantFeatures(
        node=torch.randn(graph.num_nodes, 5, generator=generator, dtype=torch.float64),
        edge=torch.randn(graph.num_edges, 6, generator=generator, dtype=torch.float64),
        triplet=torch.randn(graph.num_triplets, 7, generator=generator, dtype=torch.float64),
    )
    assert graph.num_triplets > graph.num_edges > 0
    torch.testing.assert_close(head.atomic_tensors(graph, features), _naive_atomic_tensors(head, graph, features),
                               rtol=1e-11, atol=1e-11)
