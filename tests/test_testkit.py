"""The test kit itself: each checker catches a deliberately broken head, passes a correct one,
and the strategies keep their promises."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import find, given, settings
from hypothesis import strategies as st

import tensorframe as tf
from tensorframe.fields import FieldSpec
from tensorframe.graph.collate import build_graph
from tensorframe.heads.base import Head, coefficient_mlp
from tensorframe.ops.scatter import scatter_mean, scatter_sum
from tensorframe.testing import (
    assert_batch_consistent,
    assert_equivariant,
    assert_neumann,
    assert_periodic_images_consistent,
    assert_permutation_invariant,
    assert_supercell_consistent,
    assert_translation_invariant,
    model_outputs,
    point_group_operations,
    repeat_sample,
    rock_salt,
    rotate_sample,
    wurtzite,
)
from tensorframe.testing import strategies as tfst
from tensorframe.testing.strategies import _min_pair_distance, plane_heights

DIMS = tf.FeatureDims(node=16, edge=16, triplet=16)
FORCES = FieldSpec("forces", "atom", "i", -1, "eV/Å")
DIELECTRIC = FieldSpec("dielectric", "structure", "ij=ji", 1, "", "mean")

# ---------------------------------------------------------------- fixed generic structures


def _crystal() -> tf.Sample:
    cell = np.array([[4.2, 0.0, 0.0], [1.4, 3.8, 0.0], [-0.6, 0.9, 4.5]])
    fractional = np.array([[0.02, 0.11, 0.07], [0.48, 0.55, 0.13], [0.31, 0.04, 0.61], [0.83, 0.71, 0.52]])
    return tf.Sample([8, 14, 8, 22], fractional @ cell, cell, [True, True, True])


def _molecule() -> tf.Sample:
    positions = np.array([[0.0, 0.0, 0.0], [1.1, 0.2, -0.1], [-0.4, 1.0, 0.3], [0.3, -0.5, 1.2], [1.5, 1.3, 0.9]])
    return tf.Sample([6, 8, 1, 1, 7], positions + np.array([2.0, -1.0, 0.5]))


def _base_model(*heads: Head) -> tf.TensorModel:
    """The reference backbone (with triplet features) feeding only the given heads."""
    torch.manual_seed(0)
    config = {
        "cutoff": 3.5, "triplet_cutoff": 3.0,
        "backbone": {"name": "reference", "hidden": 16, "num_radial": 8, "triplets": True},
        "heads": [{"name": "force", "hidden": 16}],
    }
    base = tf.build_model(config)
    return tf.TensorModel(base.config, base.backbone, list(heads), base.lifting).double().eval()


class UncentredGraphs(tf.TensorModel):
    """A model whose graphs keep the absolute positions (a graph builder without centring)."""

    def make_graph(self, samples, device=None, names=None):
        positions = torch.from_numpy(np.concatenate([s.positions for s in samples])).to(self._reference().dtype)
        settings = self.graph_settings
        return build_graph(samples, settings.cutoff, settings.triplet_cutoff, settings.max_neighbors,
                           dtype=positions.dtype, positions=positions)


def _uncentred_model(*heads: Head) -> tf.TensorModel:
    base = _base_model(*heads)
    return UncentredGraphs(base.config, base.backbone, list(base.heads.values()), base.lifting).double().eval()


def _correct_model() -> tf.TensorModel:
    torch.manual_seed(1)
    config = {
        "cutoff": 3.5, "triplet_cutoff": 3.0,
        "backbone": {"name": "reference", "hidden": 16, "num_radial": 8, "triplets": True},
        "heads": [{"name": n, "hidden": 16} for n in ("force", "born", "dielectric", "piezo")]
        + [{"name": "tensor", "field": "polarizability", "hidden": 16}],
    }
    return tf.build_model(config).double().eval()


# ---------------------------------------------------------------- broken heads


class EdgeVector(Head):
    """A correct force-like head: sum_k t_kj e_kj; subclasses break it in one way each."""

    def __init__(self, field: FieldSpec = FORCES) -> None:
        super().__init__()
        self.field = field
        self.mlp = coefficient_mlp(DIMS.edge, 16, 1)

    def coefficients(self, graph: tf.Graph, features: tf.InvariantFeatures) -> torch.Tensor:
        return self.mlp(features.edge) * graph.edge_envelope.unsqueeze(-1)

    def vectors(self, graph: tf.Graph) -> torch.Tensor:
        return graph.edge_dir

    def forward(self, graph: tf.Graph, features: tf.InvariantFeatures) -> torch.Tensor:
        return scatter_sum(self.coefficients(graph, features) * self.vectors(graph), graph.idx_i, graph.num_nodes)


class FixedVectorAdded(EdgeVector):
    """Adds a constant vector: not rotation-equivariant."""

    def forward(self, graph, features):
        return super().forward(graph, features) + torch.tensor([0.3, -0.2, 0.1], dtype=graph.edge_dir.dtype)


class AbsolutePositions(EdgeVector):
    """Weights by |r_j|^2 of absolute positions: rotation-equivariant about the origin,
    but not translation invariant on a graph whose positions are not centred (the graphs
    of ``make_graph`` are centred per structure, which makes it invariant: see
    :func:`_uncentred_model`)."""

    def forward(self, graph, features):
        weight = 1.0 + 0.1 * (graph.positions**2).sum(-1, keepdim=True)
        return super().forward(graph, features) * weight


class AtomIndexDependent(EdgeVector):
    """Weights by the atom's index in its structure: not permutation invariant."""

    def forward(self, graph, features):
        local = torch.arange(graph.num_nodes, device=graph.batch.device) - graph.ptr[graph.batch]
        return super().forward(graph, features) * (1.0 + 0.1 * local.unsqueeze(-1).to(graph.edge_dir.dtype))


class UnwrappedPositions(EdgeVector):
    """Uses r_i - r_j of the stored positions and ignores the edge's periodic image."""

    def vectors(self, graph):
        return graph.positions[graph.idx_i] - graph.positions[graph.idx_j]


class CrossProduct(Head):
    """sum over triplets of t_kji e_kj x e_ji: an axial vector. Declared with the given parity,
    so ``parity=-1`` is the classic bug (right under rotations, wrong under inversion)."""

    needs_triplets = True

    def __init__(self, parity: int) -> None:
        super().__init__()
        self.field = FieldSpec("polar" if parity == -1 else "axial", "atom", "i", parity, "")
        self.mlp = coefficient_mlp(DIMS.triplet, 16, 1)

    def forward(self, graph, features):
        coefficients = self.mlp(features.triplet) * graph.triplet_envelope.unsqueeze(-1)
        cross = torch.linalg.cross(graph.edge_dir[graph.idx_kj], graph.edge_dir[graph.idx_ji])
        return scatter_sum(coefficients * cross, graph.idx_triplet_center, graph.num_nodes)


class EdgeOuter(Head):
    """A correct dielectric-like head: reduce_j sum_k t_kj e_kj (x) e_kj + 1."""

    def __init__(self, field: FieldSpec = DIELECTRIC) -> None:
        super().__init__()
        self.field = field
        self.mlp = coefficient_mlp(DIMS.edge, 16, 1)

    def atomic(self, graph, features) -> torch.Tensor:
        t = self.mlp(features.edge) * graph.edge_envelope.unsqueeze(-1)
        outer = graph.edge_dir.unsqueeze(-1) * graph.edge_dir.unsqueeze(-2)
        return scatter_sum(t.unsqueeze(-1) * outer, graph.idx_i, graph.num_nodes)

    def forward(self, graph, features):
        return scatter_mean(self.atomic(graph, features), graph.batch, graph.num_structures) + torch.eye(3, dtype=graph.edge_dir.dtype)


class SumInsteadOfMean(EdgeOuter):
    """Declares an intensive (mean) field but sums: supercells get a multiple of the tensor."""

    def forward(self, graph, features):
        return scatter_sum(self.atomic(graph, features), graph.batch, graph.num_structures)


class BatchMean(EdgeOuter):
    """Divides each structure's sum by the atoms in the whole batch: depends on the batch."""

    def forward(self, graph, features):
        return scatter_sum(self.atomic(graph, features), graph.batch, graph.num_structures) / graph.num_nodes


class ConstantAnisotropic(EdgeOuter):
    """A fixed anisotropic dielectric diag(2, 3, 4) for every structure."""

    def forward(self, graph, features):
        eps = torch.diag(torch.tensor([2.0, 3.0, 4.0], dtype=graph.edge_dir.dtype))
        return eps.expand(graph.num_structures, 3, 3)


class Unsymmetric(EdgeOuter):
    """Declares "ij=ji" but returns non-symmetric e_kj (x) P e_kj (P a cyclic shift of x, y, z)."""

    def atomic(self, graph, features):
        t = self.mlp(features.edge) * graph.edge_envelope.unsqueeze(-1)
        outer = graph.edge_dir.unsqueeze(-1) * torch.roll(graph.edge_dir, 1, dims=-1).unsqueeze(-2)
        return scatter_sum(t.unsqueeze(-1) * outer, graph.idx_i, graph.num_nodes)


def _rotation(seed: int = 5) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


# ---------------------------------------------------------------- equivariance


@pytest.mark.parametrize("sample", [_crystal(), _molecule()], ids=["crystal", "molecule"])
def test_equivariance_passes_correct_models(sample) -> None:
    for model in (_correct_model(), _base_model(EdgeVector(), CrossProduct(parity=1), EdgeOuter())):
        errors_proper = assert_equivariant(model, sample, _rotation())
        errors_improper = assert_equivariant(model, sample, -_rotation())
        assert set(errors_proper) == set(model.heads) and max(errors_improper.values()) < 1e-12


@pytest.mark.parametrize("sample", [_crystal(), _molecule()], ids=["crystal", "molecule"])
def test_equivariance_catches_fixed_vector(sample) -> None:
    model = _base_model(FixedVectorAdded())
    with pytest.raises(AssertionError, match=r"'forces'.*proper rotation.*max error"):
        assert_equivariant(model, sample, _rotation())


@pytest.mark.parametrize("sample", [_crystal(), _molecule()], ids=["crystal", "molecule"])
def test_equivariance_cross_product_as_polar_vector(sample) -> None:
    """Passes every proper rotation, fails improper ones (inversion and rotoinversions)."""
    model = _base_model(CrossProduct(parity=-1))
    assert model_outputs(model, [sample])["polar"].abs().max() > 1e-6
    assert_equivariant(model, sample, _rotation())
    assert_equivariant(model, sample, _rotation(seed=11))
    for improper in (-_rotation(), -np.eye(3), np.diag([1.0, 1.0, -1.0])):
        with pytest.raises(AssertionError, match=r"'polar'.*improper rotation"):
            assert_equivariant(model, sample, improper)
    with pytest.raises(AssertionError, match="improper"):
        assert_equivariant(model, sample)  # the default rotation is improper


@given(rotation=tfst.orthogonal_matrices(proper=True))
def test_equivariance_catches_broken_heads_for_any_rotation(rotation) -> None:
    sample = _crystal()
    with pytest.raises(AssertionError):
        assert_equivariant(_base_model(FixedVectorAdded()), sample, rotation)
    with pytest.raises(AssertionError):
        assert_equivariant(_base_model(CrossProduct(parity=-1)), sample, -rotation)
    assert_equivariant(_base_model(CrossProduct(parity=-1)), sample, rotation)


def test_equivariance_catches_a_field_outside_its_symmetry_subspace() -> None:
    with pytest.raises(AssertionError, match="not in the subspace"):
        assert_equivariant(_base_model(Unsymmetric()), _crystal(), _rotation())


def test_equivariance_accepts_callables_and_float32() -> None:
    charges = np.array([0.4, -0.7, 0.1, 0.5, -0.3])
    dipole = FieldSpec("dipole", "structure", "i", -1, "e·Å")

    def point_charge_dipole(samples):
        return {"dipole": torch.stack([torch.as_tensor(charges[: s.num_atoms] @ s.positions) for s in samples])}

    def dipole_cross(samples):  # r_0 x r_1: an axial vector claimed to be polar
        return {"dipole": torch.stack([torch.as_tensor(np.cross(s.positions[0], s.positions[1])) for s in samples])}

    sample = _molecule()
    assert_equivariant(point_charge_dipole, sample, -_rotation(), fields={"dipole": dipole})
    assert_equivariant(dipole_cross, sample, _rotation(), fields={"dipole": dipole})
    with pytest.raises(AssertionError, match="improper"):
        assert_equivariant(dipole_cross, sample, -_rotation(), fields={"dipole": dipole})
    model32 = _correct_model().float()
    assert_equivariant(model32, _crystal(), -_rotation())
    with pytest.raises(ValueError, match="FieldSpec"):
        assert_equivariant(point_charge_dipole, sample, _rotation(), fields={})


# ---------------------------------------------------------------- invariance and consistency checks

CHECKS = {
    "permutation": (assert_permutation_invariant, AtomIndexDependent),
    "translation": (assert_translation_invariant, AbsolutePositions),
    "periodic_images": (assert_periodic_images_consistent, UnwrappedPositions),
    "supercell": (assert_supercell_consistent, SumInsteadOfMean),
}


@pytest.mark.parametrize("check", CHECKS)
def test_check_passes_correct_models(check) -> None:
    checker, _ = CHECKS[check]
    for model in (_correct_model(), _base_model(EdgeVector(), EdgeOuter(), CrossProduct(parity=1))):
        checker(model, _crystal())


def _broken_model(check: str, head: Head) -> tf.TensorModel:
    """The broken head in a model; for translation, one whose graphs are not centred."""
    return _uncentred_model(head) if check == "translation" else _base_model(head)


@pytest.mark.parametrize("check", CHECKS)
def test_check_catches_its_broken_head(check) -> None:
    checker, broken = CHECKS[check]
    model = _broken_model(check, broken())
    with pytest.raises(AssertionError, match=f"field '{broken().field.name}'"):
        checker(model, _crystal())


@pytest.mark.parametrize("check", ["permutation", "translation"])
def test_molecule_checks_catch_broken_heads(check) -> None:
    checker, broken = CHECKS[check]
    checker(_correct_model(), _molecule())
    with pytest.raises(AssertionError):
        checker(_broken_model(check, broken()), _molecule())


def test_centred_graphs_make_absolute_positions_translation_invariant() -> None:
    """``make_graph`` centres each structure, so even a head reading absolute positions
    passes; the same head on uncentred graphs (above) is caught."""
    assert_translation_invariant(_base_model(AbsolutePositions()), _crystal())
    assert_translation_invariant(_base_model(AbsolutePositions()), _molecule())


def test_broken_heads_are_broken_in_one_way_only() -> None:
    """Each broken head passes the other checks (so each check is what catches it)."""
    sample = _crystal()
    assert_equivariant(_base_model(AbsolutePositions()), sample, _rotation())
    assert_permutation_invariant(_base_model(AbsolutePositions()), sample)
    assert_translation_invariant(_base_model(AtomIndexDependent()), sample)
    assert_periodic_images_consistent(_base_model(AtomIndexDependent()), sample)
    for check in ("permutation", "translation"):
        CHECKS[check][0](_base_model(UnwrappedPositions()), sample)
    assert_equivariant(_base_model(UnwrappedPositions()), sample, -_rotation())
    for check in ("permutation", "translation", "periodic_images"):
        CHECKS[check][0](_base_model(SumInsteadOfMean()), sample)
        CHECKS[check][0](_base_model(BatchMean()), sample)
    assert_supercell_consistent(_base_model(BatchMean()), sample)
    assert_batch_consistent(_base_model(SumInsteadOfMean()), [sample, _molecule()])
    assert_translation_invariant(_base_model(FixedVectorAdded()), sample)


def test_periodic_images_check_catches_unwrapped_positions_in_a_slab() -> None:
    slab = tf.Sample(_crystal().numbers, _crystal().positions, _crystal().cell, [True, True, False])
    assert_periodic_images_consistent(_base_model(EdgeVector()), slab)
    with pytest.raises(AssertionError):
        assert_periodic_images_consistent(_base_model(UnwrappedPositions()), slab)
    with pytest.raises(ValueError, match="periodic"):
        assert_periodic_images_consistent(_base_model(EdgeVector()), _molecule())


def test_supercell_extensive_fields_scale() -> None:
    """A sum field (polarizability) doubles in a 2x1x1 supercell; declared as mean it fails."""
    model = _correct_model()
    assert_supercell_consistent(model, _crystal())
    extensive = FieldSpec("dielectric", "structure", "ij=ji", 1, "", "sum")
    with pytest.raises(AssertionError, match="supercell"):
        assert_supercell_consistent(_base_model(EdgeOuter(extensive)), _crystal())
    assert_supercell_consistent(_base_model(SumInsteadOfMean(extensive)), _crystal())


def test_batch_check() -> None:
    samples = [_crystal(), _molecule(), rock_salt(), wurtzite()]
    assert_batch_consistent(_correct_model(), samples)
    assert_batch_consistent(_base_model(EdgeOuter(), CrossProduct(parity=1)), samples)
    with pytest.raises(AssertionError, match="batch"):
        assert_batch_consistent(_base_model(BatchMean()), samples)


def test_neumann_check() -> None:
    model = _correct_model()
    assert assert_neumann(model, rock_salt()) == 48
    assert assert_neumann(model, wurtzite()) == 12
    with pytest.raises(AssertionError, match="Neumann"):
        assert_neumann(_base_model(ConstantAnisotropic()), rock_salt())
    with pytest.raises(AssertionError, match="Neumann"):
        assert_neumann(_base_model(FixedVectorAdded()), wurtzite())  # atom level: in-plane vector
    # A rotated constant tensor is caught in the rotated frame too.
    with pytest.raises(AssertionError):
        assert_neumann(_base_model(ConstantAnisotropic()), rotate_sample(wurtzite(), _rotation()))


def test_neumann_operations_are_in_the_frame_of_the_sample() -> None:
    """Operations of the crystal in one frame do not hold for it in another: the frame matters."""
    model = _correct_model()
    turned = rotate_sample(wurtzite(), _rotation())
    eps = model_outputs(model, [turned])["dielectric"][0]
    own, _ = point_group_operations(turned)
    other, _ = point_group_operations(wurtzite())
    changes = [float((torch.as_tensor(r) @ eps @ torch.as_tensor(r).T - eps).abs().max()) for r in other]
    assert max(changes) > 1e-6
    assert max(float((torch.as_tensor(r) @ eps @ torch.as_tensor(r).T - eps).abs().max()) for r in own) < 1e-12


def test_neumann_atom_level_catches_atom_index_dependence() -> None:
    """Symmetry-equivalent atoms must carry symmetry-related tensors."""
    assert_neumann(_base_model(EdgeVector()), wurtzite())
    with pytest.raises(AssertionError, match="atom level"):
        assert_neumann(_base_model(AtomIndexDependent()), wurtzite())
    assert_neumann(_base_model(AtomIndexDependent()), wurtzite(), atoms=False)


# ---------------------------------------------------------------- the strategies


@given(sample=tfst.structures())
def test_structures_keep_atoms_apart_and_cells_thick(sample) -> None:
    assert _min_pair_distance(sample.positions, sample.cell, sample.pbc, 0.8) >= 0.8 * (1 - 1e-9)
    assert 2 <= sample.num_atoms <= 8
    if sample.pbc.any():
        assert plane_heights(sample.cell).min() >= 2.0 * (1 - 1e-9)
        assert abs(np.linalg.det(sample.cell)) / sample.num_atoms >= 10.0 * (1 - 1e-9)
    else:
        assert not sample.cell.any()


@given(sample=tfst.slabs())
def test_slabs_are_periodic_in_plane(sample) -> None:
    assert sample.pbc.tolist() == [True, True, False]


@given(matrix=tfst.orthogonal_matrices(), proper=tfst.orthogonal_matrices(proper=True),
       improper=tfst.orthogonal_matrices(proper=False))
def test_orthogonal_matrices(matrix, proper, improper) -> None:
    for m in (matrix, proper, improper):
        assert m.dtype == np.float64
        assert np.abs(m @ m.T - np.eye(3)).max() < 1e-14
    assert abs(np.linalg.det(proper) - 1) < 1e-12 and abs(np.linalg.det(improper) + 1) < 1e-12


def _min_angle(cell: np.ndarray) -> float:
    unit = cell / np.linalg.norm(cell, axis=1, keepdims=True)
    cosines = np.abs([unit[0] @ unit[1], unit[0] @ unit[2], unit[1] @ unit[2]])
    return float(np.degrees(np.arccos(cosines.max())))


def test_skewed_lattices_occur() -> None:
    """Strongly skewed cells (an angle below 50 degrees) are among the drawn lattices."""
    cell = find(tfst.lattices(), lambda c: _min_angle(c) < 50.0, settings=settings(max_examples=500, derandomize=True))
    assert plane_heights(cell).min() >= 2.0 * (1 - 1e-9)


@given(cell=tfst.lattices(max_skew=2.0, min_height=2.5))
def test_lattices_keep_their_plane_spacing(cell) -> None:
    assert plane_heights(cell).min() >= 2.5 * (1 - 1e-9)
    assert abs(np.linalg.det(cell)) >= 20.0 * (1 - 1e-9)


def test_repeat_sample_order() -> None:
    sample = _crystal()
    supercell = repeat_sample(sample, (1, 2, 1))
    assert supercell.num_atoms == 2 * sample.num_atoms
    np.testing.assert_allclose(supercell.positions[sample.num_atoms :], sample.positions + sample.cell[1])
    with pytest.raises(ValueError, match="non-periodic"):
        repeat_sample(tf.Sample(sample.numbers, sample.positions, sample.cell, [True, True, False]), (1, 1, 2))


@given(data=st.data())
def test_permutation_check_catches_index_dependence_for_any_permutation(data) -> None:
    sample = _crystal()
    permutation = data.draw(st.permutations(range(sample.num_atoms)).filter(lambda p: list(p) != sorted(p)))
    with pytest.raises(AssertionError):
        assert_permutation_invariant(_base_model(AtomIndexDependent()), sample, permutation)
