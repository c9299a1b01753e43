"""Physics of the ``cgcnn`` backbone plugin.

Its features are invariant (rotations proper and improper, translations, permutations,
periodic images, supercells) and continuous as atoms cross the cutoff; a full model on it is
O(3)-equivariant for forces, Born charges, dielectric and piezo tensors; batching changes
nothing; gradients reach every parameter; float32 agrees with float64; and the core works
without the plugin. Each invariance / equivariance check is shown to reject a backbone that
leaks a Cartesian component. All physics checks run in float64.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tensorframe_cgcnn import CGCNNConfig, build_cgcnn
from tensorframe_cgcnn.cgcnn import GatedConv
from torch import nn

import tensorframe
from tensorframe.config import ConfigError
from tensorframe.graph.collate import build_graph
from tensorframe.graph.neighbors import neighbor_list
from tensorframe.registry import build_registry

NAME = "cgcnn"
DISTRIBUTION = "tensorframe-cgcnn"
MODULE = "tensorframe_cgcnn"
OPTIONS = {"hidden": 16, "num_layers": 2, "num_gaussians": 10}
CUTOFF = 4.0
ALL_HEADS = [{"name": "born"}, {"name": "piezo"}, {"name": "dielectric"}, {"name": "force"}]
ELEMENTS = (7, 8, 13, 31)


# --- structures and transformations ---------------------------------------------------------


def random_crystal(seed: int, num_atoms: int = 4) -> tensorframe.Sample:
    """A triclinic cell of ~4 Å with atoms at least 1.4 Å apart (images included)."""
    rng = np.random.default_rng(seed)
    cell = np.diag(rng.uniform(3.4, 4.2, 3)) + rng.uniform(-0.6, 0.6, (3, 3))
    while True:
        positions = rng.uniform(0, 1, (num_atoms, 3)) @ cell
        sample = tensorframe.Sample(rng.choice(ELEMENTS, num_atoms), positions, cell, [True] * 3)
        if neighbor_list(sample, 1.4).idx_i.size == 0:
            return sample


def random_molecule(seed: int, num_atoms: int = 5) -> tensorframe.Sample:
    rng = np.random.default_rng(seed)
    while True:
        sample = tensorframe.Sample(rng.choice(ELEMENTS, num_atoms), rng.uniform(0, 3.0, (num_atoms, 3)))
        if neighbor_list(sample, 1.0).idx_i.size == 0:
            return sample


def make_structure(kind: str, seed: int) -> tensorframe.Sample:
    return random_crystal(seed) if kind == "crystal" else random_molecule(seed)


def orthogonal_matrix(quaternion: tuple[float, float, float, float], improper: bool) -> np.ndarray:
    """A rotation from a (non-normalised) quaternion, times -1 when ``improper``."""
    w, x, y, z = np.asarray(quaternion) / np.linalg.norm(quaternion)
    rotation = np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])
    return -rotation if improper else rotation


def transform(sample: tensorframe.Sample, rotation: np.ndarray, shift: np.ndarray) -> tensorframe.Sample:
    """Rotate positions and cell vectors (rows), then translate."""
    return replace(sample, positions=sample.positions @ rotation.T + shift, cell=sample.cell @ rotation.T)


quaternions = st.tuples(*[st.floats(-1, 1)] * 4).filter(lambda q: np.linalg.norm(q) > 0.1)
shifts = st.tuples(*[st.floats(-5, 5)] * 3).map(np.array)
seeds = st.integers(0, 2**16)


# --- backbone features ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def backbone() -> nn.Module:
    torch.manual_seed(0)
    return build_cgcnn(CGCNNConfig(**OPTIONS), tensorframe.GraphSettings(CUTOFF, CUTOFF)).double()


def features(backbone: nn.Module, sample: tensorframe.Sample):
    graph = build_graph([sample], CUTOFF, dtype=torch.float64)
    with torch.no_grad():
        return graph, backbone(graph)


def edge_table(graph, edge: torch.Tensor, key=None) -> dict[tuple, torch.Tensor]:
    """``{(centre, neighbour, image): edge feature}``, keys optionally mapped by ``key``."""
    key = key or (lambda i, j, shift: (i, j, shift))
    rows = zip(graph.idx_i.tolist(), graph.idx_j.tolist(), map(tuple, graph.cell_shift.tolist()), strict=True)
    return {key(i, j, shift): edge[e] for e, (i, j, shift) in enumerate(rows)}


def assert_same_edges(expected: dict, actual: dict) -> None:
    assert expected.keys() == actual.keys(), "different edge sets"
    keys = sorted(expected)
    torch.testing.assert_close(torch.stack([actual[k] for k in keys]), torch.stack([expected[k] for k in keys]),
                               rtol=1e-9, atol=1e-10)


def assert_features_invariant(backbone: nn.Module, sample, rotation: np.ndarray, shift: np.ndarray) -> None:
    graph, before = features(backbone, sample)
    moved_graph, after = features(backbone, transform(sample, rotation, shift))
    torch.testing.assert_close(after.node, before.node, rtol=1e-9, atol=1e-10)
    assert_same_edges(edge_table(graph, before.edge), edge_table(moved_graph, after.edge))


class LeakyBackbone(nn.Module):
    """A broken backbone: adds the x component of each edge vector to the edge features."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.feature_dims = inner.feature_dims

    def forward(self, graph):
        out = self.inner(graph)
        return replace(out, edge=out.edge + graph.edge_vec[:, :1])


@pytest.mark.parametrize("improper", [False, True])
@pytest.mark.parametrize("kind", ["crystal", "molecule"])
@settings(deadline=None)
@given(seed=seeds, quaternion=quaternions, shift=shifts)
def test_features_invariant_under_rotations_reflections_translations(backbone, kind, improper, seed, quaternion, shift):
    assert_features_invariant(backbone, make_structure(kind, seed), orthogonal_matrix(quaternion, improper), shift)


def test_invariance_check_rejects_a_leaky_backbone(backbone):
    with pytest.raises(AssertionError):
        assert_features_invariant(LeakyBackbone(backbone), random_crystal(1), orthogonal_matrix((1, 2, 3, 4), False),
                                  np.zeros(3))


@settings(deadline=None)
@given(seed=seeds, data=st.data())
def test_features_follow_atom_permutations(backbone, seed, data):
    sample = random_crystal(seed)
    perm = np.array(data.draw(st.permutations(range(sample.num_atoms))))
    permuted = replace(sample, numbers=sample.numbers[perm], positions=sample.positions[perm])
    graph, before = features(backbone, sample)
    permuted_graph, after = features(backbone, permuted)
    torch.testing.assert_close(after.node, before.node[perm], rtol=1e-9, atol=1e-10)
    # Permuted atom a is original atom perm[a].
    relabel = lambda i, j, shift: (int(perm[i]), int(perm[j]), shift)  # noqa: E731
    assert_same_edges(edge_table(graph, before.edge), edge_table(permuted_graph, after.edge, relabel))


@settings(deadline=None)
@given(seed=seeds, images=st.lists(st.tuples(*[st.integers(-2, 2)] * 3), min_size=4, max_size=4))
def test_features_unchanged_by_moving_atoms_to_other_periodic_images(backbone, seed, images):
    sample = random_crystal(seed)
    images = np.array(images)
    wrapped = replace(sample, positions=sample.positions + images @ sample.cell)
    graph, before = features(backbone, sample)
    wrapped_graph, after = features(backbone, wrapped)
    torch.testing.assert_close(after.node, before.node, rtol=1e-9, atol=1e-10)
    # r'_a = r_a + n_a @ cell, so the image S of edge j -> i becomes S + n_i - n_j.
    moved = lambda i, j, shift: (i, j, tuple(np.array(shift) + images[i] - images[j]))  # noqa: E731
    assert_same_edges(edge_table(graph, before.edge, moved), edge_table(wrapped_graph, after.edge))


def test_supercell_repeats_the_features_of_the_cell(backbone):
    sample = random_crystal(7)
    n = sample.num_atoms
    a1 = sample.cell[0]
    supercell = tensorframe.Sample(
        np.tile(sample.numbers, 2), np.concatenate([sample.positions, sample.positions + a1]),
        np.stack([2 * a1, sample.cell[1], sample.cell[2]]), [True] * 3,
    )
    graph, before = features(backbone, sample)
    super_graph, after = features(backbone, supercell)
    torch.testing.assert_close(after.node, before.node.repeat(2, 1), rtol=1e-9, atol=1e-10)
    # Edge (i, j, S) seen from copy c of i reaches copy (c + S0) mod 2 of j in supercell image (c + S0) // 2.
    expected = {}
    for (i, j, shift), value in edge_table(graph, before.edge).items():
        for c in range(2):
            along = c + shift[0]
            expected[i + c * n, j + (along % 2) * n, (along // 2, shift[1], shift[2])] = value
    assert_same_edges(expected, edge_table(super_graph, after.edge))


def test_features_continuous_as_a_neighbour_crosses_the_cutoff(backbone):
    def nodes(distance: float) -> torch.Tensor:
        return features(backbone, tensorframe.Sample([13, 7], [[0, 0, 0], [0, 0, distance]]))[1].node

    apart = nodes(CUTOFF + 0.1)
    torch.testing.assert_close(nodes(CUTOFF - 1e-4), apart, rtol=0, atol=1e-7)
    assert (nodes(CUTOFF - 0.5) - apart).abs().max() > 1e-3  # the neighbour does matter inside


@pytest.mark.parametrize("norm", ["layer", "none"])
def test_gated_conv_matches_a_loop_over_edges(norm):
    """z = [v_i, v_j, u_ji] with the centre i first; messages sum into the centre (edge j -> i)."""
    torch.manual_seed(0)
    conv = GatedConv(hidden=5, num_gaussians=3, norm=norm).double()
    if norm == "layer":  # move the affine part away from its identity initialisation
        nn.init.normal_(conv.norm.weight)
        nn.init.normal_(conv.norm.bias)
    v = torch.randn(4, 5, dtype=torch.float64)
    u = torch.rand(6, 3, dtype=torch.float64)
    envelope = torch.rand(6, dtype=torch.float64)
    idx_i = torch.tensor([0, 0, 1, 2, 3, 3])
    idx_j = torch.tensor([1, 2, 0, 3, 1, 1])
    linear = conv.linear
    weight = torch.cat([linear.center.weight, linear.neighbor.weight, linear.edge.weight], dim=1)  # W of z
    expected = torch.zeros(4, 5, dtype=torch.float64)
    for e in range(6):
        z = torch.cat([v[idx_i[e]], v[idx_j[e]], u[e]])
        pre = weight @ z + linear.center.bias
        if norm == "layer":
            pre = (pre - pre.mean()) / torch.sqrt(pre.var(unbiased=False) + conv.norm.eps)
            pre = pre * conv.norm.weight + conv.norm.bias
        expected[idx_i[e]] += torch.sigmoid(pre[:5]) * nn.functional.softplus(pre[5:]) * envelope[e]
    torch.testing.assert_close(conv(v, u, envelope, idx_i, idx_j), expected, rtol=1e-12, atol=1e-12)


# --- a full model on the backbone ----------------------------------------------------------------


def build(heads=ALL_HEADS, registry=None, seed: int = 0, options=None) -> tensorframe.TensorModel:
    torch.manual_seed(seed)
    backbone = {"name": NAME, **OPTIONS, **(options or {})}
    return tensorframe.build_model({"cutoff": CUTOFF, "backbone": backbone, "heads": heads}, registry=registry)


@pytest.fixture(scope="module")
def model64() -> tensorframe.TensorModel:
    return build().double()


def predict(model, samples) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return model(model.make_graph(samples))


def rotate_outputs(out: dict[str, torch.Tensor], rotation: np.ndarray) -> dict[str, torch.Tensor]:
    r = torch.as_tensor(rotation, dtype=torch.float64)
    return {
        "forces": torch.einsum("ab,nb->na", r, out["forces"]),
        "born_charges": torch.einsum("ab,nbc,dc->nad", r, out["born_charges"], r),
        "dielectric": torch.einsum("ab,nbc,dc->nad", r, out["dielectric"], r),
        "piezo": torch.einsum("ia,jb,kc,nabc->nijk", r, r, r, out["piezo"]),
    }


def assert_model_equivariant(model, sample, rotation: np.ndarray, shift: np.ndarray) -> None:
    expected = rotate_outputs(predict(model, [sample]), rotation)
    actual = predict(model, [transform(sample, rotation, shift)])
    for name, value in expected.items():
        torch.testing.assert_close(actual[name], value, rtol=1e-9, atol=1e-10, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("improper", [False, True])
@pytest.mark.parametrize("kind", ["crystal", "molecule"])
@settings(deadline=None)
@given(seed=seeds, quaternion=quaternions, shift=shifts)
def test_model_is_o3_equivariant(model64, kind, improper, seed, quaternion, shift):
    sample = make_structure(kind, seed)
    out = predict(model64, [sample])
    for name, value in out.items():  # a vanishing output would make the check empty
        assert value.abs().max() > 1e-6, f"{name} is zero for a low-symmetry structure"
    assert_model_equivariant(model64, sample, orthogonal_matrix(quaternion, improper), shift)


def test_equivariance_check_rejects_a_leaky_backbone(model64):
    broken = copy.deepcopy(model64)
    broken.backbone = LeakyBackbone(broken.backbone)
    with pytest.raises(AssertionError):
        assert_model_equivariant(broken, random_crystal(3), orthogonal_matrix((1, 2, 3, 4), True), np.zeros(3))


@pytest.mark.parametrize("norm", ["layer", "none"])
def test_batch_equals_one_by_one(norm):
    model64 = build(options={"norm": norm}).double()
    samples = [random_crystal(11), random_molecule(12), random_crystal(13, num_atoms=3)]
    together = predict(model64, samples)
    alone = [predict(model64, [s]) for s in samples]
    ptr = np.cumsum([0] + [s.num_atoms for s in samples])
    for name, value in together.items():
        level = model64.heads[name].field.level
        parts = [value[ptr[b] : ptr[b + 1]] if level == "atom" else value[b : b + 1] for b in range(len(samples))]
        for b, part in enumerate(parts):
            torch.testing.assert_close(part, alone[b][name], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("norm", ["layer", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_reach_every_parameter(dtype, norm):
    model = build([{"name": "born"}, {"name": "piezo"}], options={"norm": norm}).to(dtype)
    out = model(model.make_graph([random_crystal(5), random_molecule(6)]))
    assert out["born_charges"].dtype == dtype
    (out["born_charges"].square().sum() + out["piezo"].square().sum()).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, f"{name} gets no gradient"
        assert torch.isfinite(parameter.grad).all(), f"{name} has a non-finite gradient"
        # Head biases on odd edge words cancel exactly (each edge has its reverse); the
        # backbone has no such excuse.
        if name.startswith("backbone."):
            assert parameter.grad.abs().max() > 0, f"{name} has an all-zero gradient"


def test_float32_agrees_with_float64():
    model32 = build()
    model64 = copy.deepcopy(model32).double()
    samples = [random_crystal(21), random_molecule(22)]
    out32, out64 = predict(model32, samples), predict(model64, samples)
    for name, value in out64.items():
        assert out32[name].dtype == torch.float32
        scale = float(value.abs().max())
        torch.testing.assert_close(out32[name].double(), value, rtol=1e-4, atol=1e-5 * scale)


# --- plugin registration ------------------------------------------------------------------------


def test_entry_point_registers_the_backbone_with_paper_defaults():
    registry = build_registry()
    assert registry.info["backbone"][NAME].distribution == DISTRIBUTION
    spec = registry.get("backbone", NAME)
    assert spec.config is CGCNNConfig
    backbone = spec.build(spec.config(), tensorframe.GraphSettings(6.0, 6.0))
    assert backbone.feature_dims == tensorframe.FeatureDims(node=64, edge=64, triplet=None)
    assert (len(backbone.convs), backbone.expansion.centers.numel()) == (3, 40)
    assert all(isinstance(conv.norm, nn.LayerNorm) for conv in backbone.convs)  # never batch norm
    with pytest.raises(ConfigError, match=r"backbone\.hiden"):
        tensorframe.build_model({"backbone": {"name": NAME, "hiden": 8}, "heads": [{"name": "force"}]},
                                registry=registry)


def test_core_works_without_the_plugin():
    registry = build_registry(load_entry_points=False)
    assert NAME not in registry.names("backbone")
    with pytest.raises(ConfigError, match=f"{NAME}.*valid choices: reference"):
        build(registry=registry)
    torch.manual_seed(0)
    model = tensorframe.build_model({"cutoff": CUTOFF, "backbone": {"name": "reference"}, "heads": ALL_HEADS},
                                    registry=registry)
    out = predict(model, [random_crystal(0)])
    assert set(out) == {"forces", "born_charges", "dielectric", "piezo"}


def test_core_never_imports_the_plugin():
    code = (
        "import sys, tensorframe, tensorframe.model, tensorframe.cli\n"
        "from tensorframe.registry import build_registry\n"
        "build_registry(load_entry_points=False)\n"
        f"assert {MODULE!r} not in sys.modules, sorted(m for m in sys.modules if m.startswith('tensorframe'))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
