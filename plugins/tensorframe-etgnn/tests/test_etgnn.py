"""Physics checks of the ETGNN backbone: invariance of its features, equivariance of a full
model built on it, batching, gradients, straight angles, and the spherical Bessel basis."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from scipy.special import spherical_jn
from tensorframe_etgnn import ETGNN, ETGNNConfig
from tensorframe_etgnn.basis import SphericalBasis, spherical_bessel, spherical_bessel_zeros
from tensorframe_etgnn.ops import gather_mul

import tensorframe as tf
from tensorframe import GraphSettings, InvariantFeatures, Sample
from tensorframe.graph.collate import build_graph

CUTOFF, TRIPLET_CUTOFF = 4.0, 3.0
SMALL = {
    "hidden": 16, "triplet_dim": 12, "num_blocks": 2, "num_radial": 6, "num_spherical": 4,
    "num_spherical_radial": 3, "int_emb_size": 8, "basis_emb_size": 4, "out_emb_size": 16,
}
SETTINGS = GraphSettings(CUTOFF, TRIPLET_CUTOFF)


# ----------------------------------------------------------------------------- structures


def triclinic_crystal(seed: int = 0) -> Sample:
    """Four atoms in a skewed cell at random positions (no symmetry), atoms >= 1.2 Å apart."""
    rng = np.random.default_rng(seed)
    cell = np.array([[3.2, 0.1, 0.2], [0.3, 3.4, -0.1], [0.2, -0.2, 3.6]])
    while True:
        positions = rng.uniform(0, 1, (4, 3)) @ cell
        sample = Sample([8, 22, 8, 56], positions, cell, [True, True, True])
        graph = build_graph([sample], CUTOFF)
        if float(graph.edge_len.min()) > 1.2:
            return sample


def molecule() -> Sample:
    """A distorted, non-planar five-atom molecule."""
    positions = [[0.0, 0.0, 0.0], [1.1, 0.1, -0.2], [-0.3, 1.05, 0.15], [-0.4, -0.5, 0.9], [-0.2, -0.6, -1.0]]
    return Sample([6, 1, 1, 8, 1], positions)


def co2() -> Sample:
    """Linear O=C=O: angles of exactly 180° at C and exactly 0° at each O."""
    return Sample([8, 6, 8], [[0.0, 0.0, -1.16], [0.0, 0.0, 0.0], [0.0, 0.0, 1.16]])


def rock_salt() -> Sample:
    """Ideal NaCl conventional cell: straight Cl-Na-Cl and Na-Cl-Na chains."""
    a = 5.64
    base = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    positions = np.concatenate([base, base + [0.5, 0, 0]]) * a
    return Sample([11] * 4 + [17] * 4, positions, np.eye(3) * a, [True, True, True])


def transformed(sample: Sample, rotation: np.ndarray | None = None, shift: np.ndarray | None = None,
                order: np.ndarray | None = None, images: np.ndarray | None = None) -> Sample:
    """``sample`` rotated (positions and cell rows), translated, with atoms reordered
    (new atom a = old atom order[a]) and atoms moved by integer lattice vectors ``images``."""
    positions, cell = sample.positions.copy(), sample.cell.copy()
    numbers = sample.numbers.copy()
    if images is not None:
        positions = positions + images @ cell
    if order is not None:
        positions, numbers = positions[order], numbers[order]
    if shift is not None:
        positions = positions + shift
    if rotation is not None:
        positions, cell = positions @ rotation.T, cell @ rotation.T
    return Sample(numbers, positions, cell, sample.pbc)


def random_rotation(seed: int, proper: bool) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q if proper else -q


# ------------------------------------------------------------------ features keyed by identity


def feature_tables(graph: tf.Graph, features: InvariantFeatures, atom_ids: np.ndarray | None = None,
                   offsets: np.ndarray | None = None) -> dict[str, dict]:
    """Node, edge and triplet features keyed by what they are physically, not by their order.

    An atom is keyed by ``atom_ids`` (default: its index); an edge by (centre, neighbour,
    image) with the image corrected for atoms that were moved by the integer lattice vectors
    ``offsets``; a triplet by its two edges.
    """
    n = graph.num_nodes
    ids = np.arange(n) if atom_ids is None else np.asarray(atom_ids)
    off = np.zeros((n, 3), dtype=np.int64) if offsets is None else np.asarray(offsets)
    i, j = graph.idx_i.numpy(), graph.idx_j.numpy()
    shift = graph.cell_shift.numpy() - off[i] + off[j]
    edge_keys = [(int(ids[a]), int(ids[b]), *map(int, s)) for a, b, s in zip(i, j, shift, strict=True)]
    triplet_keys = [(edge_keys[kj], edge_keys[ji]) for kj, ji in zip(graph.idx_kj.tolist(), graph.idx_ji.tolist(), strict=True)]
    tables = {
        "node": dict(zip(ids.tolist(), features.node.detach().numpy(), strict=True)),
        "edge": dict(zip(edge_keys, features.edge.detach().numpy(), strict=True)),
        "triplet": dict(zip(triplet_keys, features.triplet.detach().numpy(), strict=True)),
    }
    for name, keys in (("edge", edge_keys), ("triplet", triplet_keys)):
        assert len(tables[name]) == len(keys), f"{name} keys are not unique"
    return tables


def assert_tables_close(actual: dict, expected: dict, rtol: float = 1e-9, atol: float = 1e-9) -> None:
    for name in ("node", "edge", "triplet"):
        assert actual[name].keys() == expected[name].keys(), f"{name}: different {name}s in the two graphs"
        keys = sorted(expected[name])
        assert keys, f"{name}: nothing to compare"
        np.testing.assert_allclose(
            np.stack([actual[name][k] for k in keys]), np.stack([expected[name][k] for k in keys]),
            rtol=rtol, atol=atol, err_msg=f"{name} features differ",
        )


@pytest.fixture(scope="module")
def backbone() -> ETGNN:
    torch.manual_seed(0)
    return ETGNN(ETGNNConfig(**SMALL), SETTINGS).double().eval()


def features_of(backbone: torch.nn.Module, samples: list[Sample]) -> tuple[tf.Graph, InvariantFeatures]:
    graph = build_graph(samples, CUTOFF, TRIPLET_CUTOFF, dtype=torch.float64)
    with torch.no_grad():
        return graph, backbone(graph)


def tables_of(backbone: torch.nn.Module, sample: Sample, **keys) -> dict:
    graph, features = features_of(backbone, [sample])
    return feature_tables(graph, features, **keys)


# ------------------------------------------------------------------------------- invariance

STRUCTURES = {"crystal": triclinic_crystal, "molecule": molecule}


@pytest.mark.parametrize("proper", [True, False], ids=["proper", "improper"])
@pytest.mark.parametrize("structure", STRUCTURES)
def test_features_invariant_under_rotation_and_translation(backbone, structure, proper):
    sample = STRUCTURES[structure]()
    expected = tables_of(backbone, sample)
    for seed in range(2):
        rotation = random_rotation(seed, proper)
        shift = np.random.default_rng(10 + seed).normal(0, 3, 3)
        assert_tables_close(tables_of(backbone, transformed(sample, rotation, shift)), expected)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_features_permute_with_atoms(backbone, structure):
    sample = STRUCTURES[structure]()
    order = np.random.default_rng(3).permutation(sample.num_atoms)
    assert not np.array_equal(order, np.arange(sample.num_atoms))
    actual = tables_of(backbone, transformed(sample, order=order), atom_ids=order)
    assert_tables_close(actual, tables_of(backbone, sample))


def test_features_unchanged_when_atoms_move_to_other_periodic_images(backbone):
    sample = triclinic_crystal()
    images = np.random.default_rng(4).integers(-2, 3, (sample.num_atoms, 3))
    actual = tables_of(backbone, transformed(sample, images=images), offsets=images)
    assert_tables_close(actual, tables_of(backbone, sample))


def test_supercell_node_features_repeat_the_cell(backbone):
    sample = triclinic_crystal()
    cell = sample.cell.copy()
    supercell = Sample(
        np.tile(sample.numbers, 2), np.concatenate([sample.positions, sample.positions + cell[0]]),
        np.stack([2 * cell[0], cell[1], cell[2]]), sample.pbc,
    )
    _, small = features_of(backbone, [sample])
    _, large = features_of(backbone, [supercell])
    np.testing.assert_allclose(large.node.numpy(), np.tile(small.node.numpy(), (2, 1)), rtol=1e-9, atol=1e-9)


class DirectionLeakingETGNN(ETGNN):
    """Deliberately broken: its edge features see the x component of the edge direction."""

    def forward(self, graph: tf.Graph) -> InvariantFeatures:
        features = super().forward(graph)
        return InvariantFeatures(features.node, features.edge + graph.edge_dir[:, :1], features.triplet)


def test_invariance_check_catches_a_direction_dependent_backbone(backbone):
    broken = DirectionLeakingETGNN(ETGNNConfig(**SMALL), SETTINGS).double().eval()
    broken.load_state_dict(backbone.state_dict())
    sample = triclinic_crystal()
    rotated = transformed(sample, random_rotation(0, True))
    assert_tables_close(tables_of(backbone, rotated), tables_of(backbone, sample))
    with pytest.raises(AssertionError, match="edge features differ"):
        assert_tables_close(tables_of(broken, rotated), tables_of(broken, sample))


def test_batch_equals_one_by_one(backbone):
    samples = [triclinic_crystal(0), molecule(), triclinic_crystal(1)]
    graph, features = features_of(backbone, samples)
    batched = feature_tables(graph, features)
    expected: dict[str, dict] = {"node": {}, "edge": {}, "triplet": {}}
    offset = 0
    for sample in samples:
        g, f = features_of(backbone, [sample])
        for name, table in feature_tables(g, f, atom_ids=np.arange(g.num_nodes) + offset).items():
            expected[name].update(table)
        offset += sample.num_atoms
    assert_tables_close(batched, expected)


# ----------------------------------------------------------------------- full model physics


def small_model(heads: list[dict], dtype: torch.dtype = torch.float64, seed: int = 0) -> tf.TensorModel:
    torch.manual_seed(seed)
    config = {
        "cutoff": CUTOFF, "triplet_cutoff": TRIPLET_CUTOFF,
        "backbone": {"name": "etgnn", **SMALL},
        "heads": [dict(head, hidden=16) for head in heads],
    }
    return tf.build_model(config).to(dtype)


NAMED_HEADS = [{"name": "born"}, {"name": "piezo"}, {"name": "dielectric"}, {"name": "force"}]


def rotate_outputs(outputs: dict[str, torch.Tensor], rotation: torch.Tensor) -> dict[str, torch.Tensor]:
    r = rotation
    return {
        "born_charges": torch.einsum("ia,jb,nab->nij", r, r, outputs["born_charges"]),
        "piezo": torch.einsum("ia,jb,kc,nabc->nijk", r, r, r, outputs["piezo"]),
        "dielectric": torch.einsum("ia,jb,nab->nij", r, r, outputs["dielectric"]),
        "forces": torch.einsum("ia,na->ni", r, outputs["forces"]),
    }


@pytest.mark.parametrize("proper", [True, False], ids=["proper", "improper"])
def test_full_model_is_equivariant(proper):
    model = small_model(NAMED_HEADS).eval()
    samples = [triclinic_crystal(), molecule()]
    with torch.no_grad():
        outputs = model(model.make_graph(samples))
        for seed in range(2):
            rotation = random_rotation(seed, proper)
            rotated = model(model.make_graph([transformed(s, rotation) for s in samples]))
            expected = rotate_outputs(outputs, torch.from_numpy(rotation))
            for name, value in expected.items():
                scale = float(value.abs().max())
                assert scale > 1e-6, f"{name}: output is zero, the check would prove nothing"
                # Guard: the field really depends on the orientation (so an invariant bug would be caught).
                assert not torch.allclose(rotated[name], outputs[name], atol=1e-6 * scale), name
                torch.testing.assert_close(rotated[name], value, rtol=1e-9, atol=1e-10 * scale, msg=name)


def test_gradients_reach_every_parameter():
    model = small_model([*NAMED_HEADS[:2], {"name": "scalar", "field": "energy"}]).train()
    graph = model.make_graph([triclinic_crystal(), molecule()])
    outputs = model(graph)
    tensor_loss = outputs["born_charges"].square().mean() + outputs["piezo"].square().mean()
    tensor_loss.backward(retain_graph=True)
    # Born + piezo read edge and triplet features: every backbone parameter but the node
    # output block (read only by node-level heads) gets a non-zero gradient. (Head parameters
    # are only required to get one: a constant coefficient on the odd e(x)e(x)e edge term sums
    # to exactly zero over the two directions of every edge, so its bias has zero gradient.)
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad or name.startswith(("backbone.output.", "heads.energy.")):
            continue
        assert parameter.grad is not None, f"{name}: no gradient from a Born + piezo loss"
        if name.startswith("backbone."):
            assert bool(parameter.grad.abs().gt(0).any()), f"{name}: zero gradient from a Born + piezo loss"
    outputs["energy"].square().mean().backward()
    for name, parameter in model.backbone.output.named_parameters():
        assert parameter.grad is not None and bool(parameter.grad.abs().gt(0).any()), f"output.{name}: zero gradient"


def test_float32_matches_float64():
    model64 = small_model(NAMED_HEADS).eval()
    model32 = copy.deepcopy(model64).float()
    samples = [triclinic_crystal(), molecule()]
    with torch.no_grad():
        out64 = model64(model64.make_graph(samples))
        out32 = model32(model32.make_graph(samples))
    for name, value in out64.items():
        assert out32[name].dtype == torch.float32
        scale = float(value.abs().max())
        torch.testing.assert_close(out32[name].double(), value, rtol=1e-4, atol=1e-4 * scale, msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("structure", [co2, rock_salt], ids=["CO2", "rock-salt"])
def test_straight_and_zero_angles_give_finite_values_and_gradients(structure, dtype):
    model = small_model(NAMED_HEADS, dtype).train()
    sample = structure()
    positions = torch.tensor(sample.positions, dtype=dtype, requires_grad=True)
    graph = build_graph([sample], CUTOFF, TRIPLET_CUTOFF, dtype=dtype, positions=positions)
    cos = graph.triplet_cos.detach()
    assert bool((cos == -1).any()), "the structure has no 180° triplet"
    if structure is co2:
        assert bool((cos == 1).any()), "CO2 should have 0° triplets (C and the far O seen from one O)"
    outputs = model(graph)
    loss = sum(value.square().sum() for value in outputs.values())
    loss.backward()
    for name, value in outputs.items():
        assert bool(torch.isfinite(value).all()), f"{name}: non-finite output"
    assert bool(torch.isfinite(positions.grad).all()), "non-finite gradient with respect to positions"
    for name, parameter in model.named_parameters():
        if parameter.grad is not None:
            assert bool(torch.isfinite(parameter.grad).all()), f"{name}: non-finite gradient"


def test_rock_salt_is_isotropic_and_not_piezoelectric():
    """Neumann's principle through the backbone: cubic, centrosymmetric rock salt."""
    model = small_model(NAMED_HEADS).eval()
    with torch.no_grad():
        out = model(model.make_graph([rock_salt()]))
    eps, piezo = out["dielectric"][0], out["piezo"][0]
    scale = float(eps.abs().max())
    assert scale > 1e-6
    torch.testing.assert_close(eps, eps[0, 0] * torch.eye(3, dtype=eps.dtype), rtol=0, atol=1e-10 * scale)
    assert float(piezo.abs().max()) < 1e-10 * scale


def test_checkpointing_gives_the_same_outputs_and_gradients():
    model = small_model(NAMED_HEADS).train()
    recomputing = copy.deepcopy(model)
    recomputing.backbone.config = recomputing.backbone.config.model_copy(update={"checkpoint": True})
    graph = model.make_graph([triclinic_crystal(), molecule()])
    grads = []
    for m in (model, recomputing):
        outputs = m(graph)
        (outputs["born_charges"].square().sum() + outputs["piezo"].square().sum()).backward()
        grads.append({name: p.grad.clone() for name, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-10, atol=1e-12, msg=name)


def test_gather_mul_gradients_match_finite_differences():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    weight = torch.randn(9, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    index = torch.tensor([0, 4, 4, 1, 0, 2, 3, 3, 4])
    torch.testing.assert_close(gather_mul(x, index, weight), x[index] * weight)
    assert torch.autograd.gradcheck(lambda a, w: gather_mul(a, index, w), (x, weight))


def test_structures_without_triplets_or_edges():
    """A diatomic molecule has edges but no triplets; isolated atoms have neither. An isolated
    atom's site group is all of O(3), which allows an isotropic rank-2 tensor: the default
    (complete) words give one, proportional to the identity; the paper's words give zero."""
    model = small_model(NAMED_HEADS).eval()
    diatomic, isolated = Sample([1, 1], [[0, 0, 0], [0, 0, 0.74]]), Sample([8, 1], [[0, 0, 0], [0, 0, 10.0]])
    with torch.no_grad():
        graph = model.make_graph([diatomic, isolated])
        assert graph.num_triplets == 0 and graph.num_edges == 2
        out = model(graph)
    for name, value in out.items():
        assert bool(torch.isfinite(value).all()), name
    assert float(out["born_charges"][:2].abs().max()) > 0
    lone = out["born_charges"][2:]
    assert float(lone.abs().max()) > 0
    identity = torch.eye(3, dtype=lone.dtype)
    torch.testing.assert_close(lone, lone.diagonal(dim1=1, dim2=2).mean(-1)[:, None, None] * identity)
    paper = small_model([dict(head, basis="paper") for head in NAMED_HEADS]).eval()
    with torch.no_grad():
        assert float(paper(paper.make_graph([diatomic, isolated]))["born_charges"][2:].abs().max()) == 0.0


def test_unknown_option_is_a_config_error():
    with pytest.raises(tf.ConfigError, match="backbone.hiden"):
        tf.build_model({"backbone": {"name": "etgnn", "hiden": 8}, "heads": [{"name": "force"}]})


# ------------------------------------------------------------------- spherical Bessel basis

KNOWN_ZEROS = {  # (l, n): n-th positive zero of j_l (Abramowitz & Stegun, table 10.6)
    (0, 1): math.pi, (1, 1): 4.493409457909064, (1, 2): 7.725251836937707,
    (2, 1): 5.763459196894550, (3, 1): 6.987932000500519, (6, 1): 10.51283540809400,
}


def test_spherical_bessel_zeros_are_zeros_and_increasing():
    zeros = spherical_bessel_zeros(8, 7)
    assert zeros.shape == (8, 7) and np.all(np.isfinite(zeros))
    for (order, n), value in KNOWN_ZEROS.items():
        assert zeros[order, n - 1] == pytest.approx(value, rel=1e-12)
    for order in range(8):
        assert np.all(np.abs(spherical_jn(order, zeros[order])) < 1e-12), f"j_{order} is not zero at its zeros"
        assert np.all(np.diff(zeros[order]) > 0)
        # No zero skipped: exactly one sign change between two consecutive zeros.
        grid = np.linspace(zeros[order, 0] * 0.999, zeros[order, -1] * 1.0001, 20000)
        changes = np.count_nonzero(np.diff(np.sign(spherical_jn(order, grid))))
        assert changes == zeros.shape[1]
        if order:  # interlacing with the previous order
            assert np.all(zeros[order - 1] < zeros[order])
            assert np.all(zeros[order, :-1] < zeros[order - 1, 1:])


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-12), (torch.float32, 2e-6)], ids=["float64", "float32"])
def test_spherical_bessel_matches_scipy(dtype, rtol):
    x = np.concatenate([np.geomspace(1e-3, 1.0, 50), np.linspace(1.0, 40.0, 800)])
    for order in range(8):
        expected = spherical_jn(order, x)
        actual = spherical_bessel(order, torch.tensor(x, dtype=dtype)).double().numpy()
        np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * 0.1, err_msg=f"j_{order}")


def test_spherical_basis_vanishes_at_triplet_cutoff_and_has_finite_gradients():
    basis = SphericalBasis(7, 6, TRIPLET_CUTOFF).double()
    length = torch.tensor([0.5, 1.5, TRIPLET_CUTOFF], dtype=torch.float64, requires_grad=True)
    radial = basis.radial(length)
    assert float(radial[-1].detach().abs().max()) < 1e-10
    cos = torch.tensor([-1.0, 1.0, 0.3], dtype=torch.float64, requires_grad=True)
    sbf = basis(length, cos, torch.arange(3), torch.ones(3, dtype=torch.float64))
    sbf.square().sum().backward()
    assert bool(torch.isfinite(length.grad).all()) and bool(torch.isfinite(cos.grad).all())


def test_triplet_messages_are_skipped_exactly_when_no_head_reads_them():
    """A model whose heads read no triplet features prunes ETGNN's triplet chain: the outputs
    (and gradients) are those of the full backbone, and no triplet features are made."""
    edge_only = [{"name": "force"}, {"name": "scalar", "field": "energy"}]
    pruned = small_model(edge_only).train()
    assert pruned.backbone.triplet_output is False
    full = copy.deepcopy(pruned)
    full.backbone.triplet_output = True
    graph = pruned.make_graph([triclinic_crystal(), molecule()])
    assert pruned.features(graph).triplet is None
    assert full.features(graph).triplet.shape == (graph.num_triplets, SMALL["triplet_dim"])
    grads = []
    for m in (pruned, full):
        outputs = m(graph)
        (outputs["forces"].square().sum() + outputs["energy"].square().sum()).backward()
        grads.append({name: p.grad for name, p in m.named_parameters() if p.grad is not None})
        if m is pruned:
            pruned_outputs = outputs
    for name, value in outputs.items():
        torch.testing.assert_close(pruned_outputs[name], value, rtol=0, atol=0, msg=name)
    # The full backbone's triplet chain gets no gradient from these heads; everything else matches.
    assert grads[0].keys() <= grads[1].keys()
    for name, grad in grads[0].items():
        torch.testing.assert_close(grad, grads[1][name], rtol=0, atol=0, msg=name)
    assert small_model(NAMED_HEADS).backbone.triplet_output is True


def test_inference_without_autograd_matches_the_autograd_path():
    """Without autograd ETGNN applies activations and residual additions in place; the outputs
    must be those of the autograd path (which the gradient tests cover)."""
    model = small_model(NAMED_HEADS).eval()
    graph = model.make_graph([triclinic_crystal(), molecule(), rock_salt()])
    with torch.enable_grad():
        expected = model(graph)
    with torch.no_grad():
        actual = model(graph)
    with torch.inference_mode():
        in_inference_mode = model(graph)
    for name, value in expected.items():
        torch.testing.assert_close(actual[name], value.detach(), rtol=1e-13, atol=1e-13, msg=name)
        torch.testing.assert_close(in_inference_mode[name], value.detach(), rtol=1e-13, atol=1e-13, msg=name)
