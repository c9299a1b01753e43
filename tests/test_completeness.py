"""The completeness checker (tensorframe.testing.completeness): invariant-subspace dimensions
against known point-group results and a direct Cartesian computation, and the span of heads
on degenerate environments (docs/physics.md, "Completeness on degenerate environments")."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from tensorframe.fields import BUILTIN_FIELDS
from tensorframe.heads.base import Head, coefficient_mlp
from tensorframe.heads.tensor import CartesianTensorHead
from tensorframe.ops.basis import default_triplet_words
from tensorframe.ops.symmetry import subspace_dim, symmetric_projector
from tensorframe.registry import Registry, get_registry
from tensorframe.specs import FeatureDims, HeadSpec, PluginConfig
from tensorframe.testing import (
    CHECK_DIMS,
    STANDARD_ENVIRONMENTS,
    assert_complete,
    assert_registered_heads_complete,
    completeness_report,
    invariant_subspace_dim,
)
from tensorframe.testing.completeness import (
    LINEAR_ENVIRONMENTS,
    PLANAR_ENVIRONMENTS,
    environment_symmetry,
    generate_group,
    generic_molecule,
    invariant_projector,
    point_group_name,
    water,
)
from tensorframe.testing.equivariance import rotate_sample
from tensorframe.testing.invariance import wurtzite

FIELDS = {f.name: f for f in BUILTIN_FIELDS}
ELASTIC = "ijkl=jikl=ijlk=klij"


# ---------------------------------------------------------------- groups


def _rotation_z(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


MIRROR_X = np.diag([-1.0, 1.0, 1.0])


def _group(name: str) -> np.ndarray:
    if name == "C1":
        return np.eye(3)[None]
    if name == "C6":
        return generate_group([_rotation_z(math.pi / 3)])
    if name == "C6v":
        return generate_group([_rotation_z(math.pi / 3), MIRROR_X])
    if name == "D6h_hexagonal":  # D6h about z, built by hand
        return generate_group([_rotation_z(math.pi / 3), MIRROR_X, -np.eye(3)])
    environment = {"C2v": "water", "Cs": "hof", "D∞h": "co2", "C∞v": "hcn", "D6h": "benzene", "Oh": "rock_salt"}[name]
    return environment_symmetry(STANDARD_ENVIRONMENTS[environment]()).point_group


KNOWN = [
    # (formula, parity, group, dimension)
    ("i", -1, "C1", 3), ("i", -1, "C2v", 1), ("i", -1, "D∞h", 0), ("i", -1, "C∞v", 1), ("i", 1, "C2v", 0),
    ("i", 1, "Cs", 1),
    ("ij=ji", 1, "C1", 6), ("ij=ji", 1, "C2v", 3), ("ij=ji", 1, "D∞h", 2), ("ij=ji", 1, "Oh", 1),
    ("ij=ji", 1, "D6h", 2), ("ij=ji", 1, "Cs", 4),
    ("ij", 1, "C1", 9), ("ij", 1, "C2v", 3), ("ij=-ji", 1, "C2v", 0), ("ij", 1, "Cs", 5), ("ij=-ji", 1, "Cs", 1),
    ("ij", 1, "D∞h", 2), ("ij", 1, "C∞v", 2), ("ij", 1, "Oh", 1),
    ("ijk=ikj", -1, "C1", 18), ("ijk=ikj", -1, "Oh", 0), ("ijk=ikj", -1, "C∞v", 3), ("ijk=ikj", -1, "C6v", 3),
    ("ijk=ikj", -1, "D6h", 0), ("ijk=ikj", -1, "D∞h", 0), ("ijk=ikj", -1, "C2v", 5),
    (ELASTIC, 1, "C1", 21), (ELASTIC, 1, "Oh", 3), (ELASTIC, 1, "D6h_hexagonal", 5), (ELASTIC, 1, "D∞h", 5),
    (ELASTIC, 1, "D6h", 5),
    ("", 1, "Oh", 1), ("", -1, "Oh", 0), ("", -1, "C6v", 0), ("", -1, "C6", 1),
]


@pytest.mark.parametrize(("formula", "parity", "group", "expected"), KNOWN)
def test_invariant_subspace_dim_known_values(formula, parity, group, expected):
    assert invariant_subspace_dim(formula, parity, _group(group)) == expected


@pytest.mark.parametrize(("formula", "parity", "group", "expected"), KNOWN)
def test_invariant_subspace_dim_matches_a_direct_cartesian_average(formula, parity, group, expected):
    """Average of s(R) R (x) ... (x) R restricted by the formula's projector, computed here
    independently of the module (kron products)."""
    rotations = _group(group)
    rank = len(formula.split("=")[0]) if formula else 0
    total = np.zeros((3**rank, 3**rank))
    for r in rotations:
        rep = np.ones((1, 1))
        for _ in range(rank):
            rep = np.kron(rep, r)
        total += rep * (np.linalg.det(r) if parity != (-1) ** rank else 1.0)
    average = total / len(rotations)
    if formula:
        average = average @ symmetric_projector(formula).numpy()
    assert round(float(np.trace(average))) == expected
    assert float(np.trace(invariant_projector(formula, parity, rotations).numpy())) == pytest.approx(expected, abs=1e-9)


def test_the_antisymmetric_part_of_a_born_charge_adds_up():
    """"ij" = "ij=ji" + "ij=-ji" under every group."""
    for group in ("C1", "C2v", "Cs", "D∞h", "Oh", "C6v"):
        rotations = _group(group)
        assert invariant_subspace_dim("ij", 1, rotations) == (
            invariant_subspace_dim("ij=ji", 1, rotations) + invariant_subspace_dim("ij=-ji", 1, rotations)
        )


def test_invariant_subspace_dim_rejects_non_groups():
    with pytest.raises(ValueError, match="orthogonal"):
        invariant_subspace_dim("ij", 1, np.ones((1, 3, 3)))
    with pytest.raises(ValueError, match="group"):
        invariant_subspace_dim("i", -1, _rotation_z(0.3)[None])


@pytest.mark.parametrize(
    ("environment", "group", "sites"),
    [
        ("generic", "C1", {0: "C1"}),
        ("water", "C2v", {0: "C2v", 1: "Cs"}),
        ("ethylene", "D2h", {0: "C2v", 2: "Cs"}),
        ("benzene", "D6h", {0: "C2v", 6: "C2v"}),
        ("hof", "Cs", {0: "Cs", 1: "Cs", 2: "Cs"}),
        ("co2", "D∞h", {0: "D∞h", 1: "C∞v"}),
        ("hcn", "C∞v", {0: "C∞v", 1: "C∞v", 2: "C∞v"}),
        ("rock_salt", "Oh (m-3m)", {0: "Oh", 1: "Oh"}),
        ("hbn", "D3h (-6m2)", {0: "D3h", 1: "D3h"}),
        ("bcc", "Oh (m-3m)", {0: "Oh", 1: "Oh"}),
    ],
)
def test_environment_point_groups_and_site_groups(environment, group, sites):
    symmetry = environment_symmetry(STANDARD_ENVIRONMENTS[environment]())
    assert symmetry.name == group
    for atom, name in sites.items():
        assert symmetry.site_name(atom) == name
    if environment in LINEAR_ENVIRONMENTS:  # a rotation of order >= 5 about the axis stands in for C_inf
        assert len(symmetry.point_group) >= 2 * 5


def test_point_group_names_of_generated_groups():
    assert point_group_name(_group("C6v")) == "C6v"
    assert point_group_name(_group("D6h_hexagonal")) == "D6h"
    assert point_group_name(generate_group([_rotation_z(math.pi / 2) @ np.diag([1.0, 1.0, -1.0])])) == "S4"
    assert point_group_name(generate_group([-np.eye(3)])) == "Ci"
    assert point_group_name(environment_symmetry(wurtzite()).point_group) == "C6v"


# ---------------------------------------------------------------- heads


def _tensor_head(field: str, edge_words, triplet_words, **options) -> CartesianTensorHead:
    return CartesianTensorHead(FIELDS[field], CHECK_DIMS, tuple(edge_words), tuple(triplet_words), hidden=16, **options)


PAPER_WORDS = {
    "born_charges": (("aa",), ("ab",)),
    "dielectric": (("aa",), ()),
    "piezo": (("aaa",), ("abb",)),
    "polarizability": (("aa",), ("ab",)),
}


@pytest.mark.parametrize(
    ("field", "edge_words", "triplet_words"),
    [
        ("born_charges", ("aa",), ("ab",)),
        ("polarizability", ("aa",), ("ab",)),
        ("dielectric", ("aa",), ()),
        ("piezo", ("aaa",), ("abb",)),
        ("forces", ("a",), ()),
        ("elastic", ("aaaa",), default_triplet_words(4, 1)),
    ],
)
def test_rich_words_are_complete_on_a_generic_environment(field, edge_words, triplet_words):
    report = assert_complete(_tensor_head(field, edge_words, triplet_words), generic_molecule(), environment="generic")
    full = subspace_dim(FIELDS[field].symmetry)
    assert all(site.required == full == site.span for site in report.sites)
    assert all(site.leakage < 1e-12 for site in report.sites)


class IsotropicPlusHead(Head):
    """A rank-2 head with the paper's words plus a per-atom isotropic term t_j delta: the
    smallest fix that makes rank-2 heads complete on planar and linear environments."""

    def __init__(self, field: str) -> None:
        super().__init__()
        self.inner = _tensor_head(field, ("aa",), ("ab",))
        self.field = self.inner.field
        self.isotropic = coefficient_mlp(CHECK_DIMS.node, 16, 1)

    def forward(self, graph, features):
        atomic = self.inner.atomic_tensors(graph, features).reshape(-1, 3, 3)
        atomic = atomic + self.isotropic(features.node)[:, :, None] * torch.eye(3, dtype=atomic.dtype)
        if self.field.level == "atom":
            return atomic
        return torch.zeros(graph.num_structures, 3, 3, dtype=atomic.dtype).index_add(0, graph.batch, atomic)


@pytest.mark.parametrize("environment", sorted(STANDARD_ENVIRONMENTS))
@pytest.mark.parametrize("field", ["born_charges", "polarizability"])
def test_isotropic_words_close_the_gap_on_every_environment(field, environment):
    """A positive control on the degenerate environments: the checker does not fail a head
    that can reach the out-of-plane / perpendicular components."""
    assert_complete(IsotropicPlusHead(field), STANDARD_ENVIRONMENTS[environment](), environment=environment)


# The paper's word sets on planar and linear environments: the rank-2 heads miss Z*_zz /
# alpha_zz (normal z) or the components perpendicular to the line everywhere; the piezo words
# miss the components with two normal indices where the group allows any (water, HOF, HCN),
# and are complete only where those vanish anyway (centrosymmetric ethylene, benzene, CO2;
# hBN, whose single D3h component is in-plane).
PIEZO_TRIVIALLY_COMPLETE = {"ethylene", "benzene", "co2", "hbn"}


@pytest.mark.parametrize("environment", [*PLANAR_ENVIRONMENTS, *LINEAR_ENVIRONMENTS])
@pytest.mark.parametrize("field", sorted(PAPER_WORDS))
def test_paper_words_are_incomplete_on_planar_and_linear_environments(field, environment):
    head = _tensor_head(field, *PAPER_WORDS[field])
    sample = STANDARD_ENVIRONMENTS[environment]()
    if field == "piezo" and environment in PIEZO_TRIVIALLY_COMPLETE:
        assert_complete(head, sample, environment=environment)
        return
    with pytest.raises(AssertionError, match=rf"(?s)field '{field}'.* on {environment} \(point group .*span \d+ of \d+"):
        assert_complete(head, sample, environment=environment)
    report = completeness_report(head, sample, environment=environment)
    assert all(site.leakage < 1e-12 for site in report.sites)  # the features were orbit-invariant
    assert any(site.span < site.required for site in report.sites)


def test_the_report_says_what_is_missing():
    report = completeness_report(_tensor_head("born_charges", ("aa",), ("ab",)), water(), environment="water")
    assert not report.complete
    oxygen, hydrogen = report.sites
    assert (oxygen.atom, oxygen.group, oxygen.span, oxygen.required) == (0, "C2v", 2, 3)
    assert (hydrogen.atom, hydrogen.group, hydrogen.span, hydrogen.required) == (1, "Cs", 4, 5)
    assert "span 2 of 3" in str(report) and "C2v" in str(report)
    # a clear gap between the kept and the dropped singular values
    assert oxygen.singular_values[1] > 1e-3 and oxygen.singular_values[2] < 1e-12


def test_the_check_does_not_depend_on_the_frame():
    rng = np.random.default_rng(5)
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    rotation = rotation * np.sign(np.linalg.det(rotation))
    head = _tensor_head("born_charges", ("aa",), ("ab",))
    for sample in (water(), STANDARD_ENVIRONMENTS["co2"](), STANDARD_ENVIRONMENTS["hbn"]()):
        moved = rotate_sample(sample, rotation)
        assert completeness_report(head, moved).span == completeness_report(head, sample).span


# ---------------------------------------------------------------- broken heads are caught


class NotEquivariantHead(Head):
    """Uses |e| instead of e: invariant coefficients times non-equivariant products."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = _tensor_head("born_charges", ("aa",), ("ab",))
        self.field = self.inner.field

    def forward(self, graph, features):
        return self.inner(dataclasses.replace(graph, edge_dir=graph.edge_dir.abs()), features)


class DropsAComponentHead(Head):
    """Sets Z*_zz to zero."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = _tensor_head("born_charges", ("aa",), ("ab",))
        self.field = self.inner.field

    def forward(self, graph, features):
        out = self.inner(graph, features).clone()
        out[:, 2, 2] = 0.0
        return out


def test_a_non_equivariant_head_is_caught():
    with pytest.raises(AssertionError, match="(?s)leave the invariant subspace.*not equivariant"):
        assert_complete(NotEquivariantHead(), water(), environment="water")


def test_a_head_that_drops_a_component_is_caught():
    assert_complete(_tensor_head("born_charges", ("aa",), ("ab",)), generic_molecule())
    with pytest.raises(AssertionError, match=r"span 8 of 9"):
        assert_complete(DropsAComponentHead(), generic_molecule(), environment="generic")


def test_a_builder_and_other_feature_widths_work():
    dims = FeatureDims(node=5, edge=7, triplet=3)
    field = FIELDS["polarizability"]
    report = completeness_report(lambda d: CartesianTensorHead(field, d, ("aa",), ("ab",), hidden=8),
                                 generic_molecule(), dims=dims)
    assert report.complete


def test_one_atom_can_be_chosen_and_inexact_geometries_are_refused():
    head = _tensor_head("born_charges", ("aa",), ("ab",))
    (site,) = completeness_report(head, water(), atom=2).sites
    assert (site.atom, site.group, site.required) == (2, "Cs", 5)
    noisy = water()
    noisy = dataclasses.replace(noisy, positions=noisy.positions + [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1e-3, 0.0, 0.0]])
    with pytest.raises(ValueError, match="not exactly symmetric"):
        completeness_report(head, noisy)


def test_partly_periodic_samples_are_refused():
    sample = dataclasses.replace(water(), cell=np.eye(3) * 10.0, pbc=np.array([True, True, False]))
    with pytest.raises(ValueError, match="vacuum gap"):
        completeness_report(_tensor_head("dielectric", ("aa",), ()), sample)


# ---------------------------------------------------------------- registered heads

TENSOR_FIELDS = ("dipole", "polarizability", "hyperpolarizability", "born_charges", "nmr_shielding", "elastic")


def _registered_heads() -> list[tuple[str, dict]]:
    """Every registered head that builds with its default options, and the tensor head on
    the fields of TENSOR_FIELDS."""
    registry = get_registry()
    heads = []
    for name in registry.names("head"):
        try:
            registry.get("head", name).config.model_validate({})
        except ValidationError:
            continue
        heads.append((name, {}))
    return heads + [("tensor", {"field": f}) for f in TENSOR_FIELDS if "tensor" in registry.names("head")]


REGISTERED_HEADS = _registered_heads()


def _build(name: str, options: dict):
    spec = get_registry().get("head", name)
    return spec.build(spec.config.model_validate(options), CHECK_DIMS, get_registry().fields)


def _id(item) -> str:
    name, options = item
    return name + "".join(f"-{v}" for v in options.values())


@pytest.mark.parametrize("environment", sorted(STANDARD_ENVIRONMENTS))
@pytest.mark.parametrize("head", REGISTERED_HEADS, ids=_id)
def test_every_builtin_head_is_complete_with_its_default_options(head, environment):
    name, options = head
    assert_complete(_build(name, options), STANDARD_ENVIRONMENTS[environment](), environment=environment)


MOLECULES = sorted(set(STANDARD_ENVIRONMENTS) - {"rock_salt", "hbn", "bcc"})
OPTION_VARIANTS = [("born", {"acoustic_sum_rule": True}), ("dielectric", {"positive_definite": True}),
                   ("dipole", {"charge_flow": True}), ("polarizability", {"charge_flow": True})]


@pytest.mark.parametrize("environment", MOLECULES)
@pytest.mark.parametrize("head", OPTION_VARIANTS, ids=_id)
def test_physics_options_keep_the_heads_complete(head, environment):
    """The acoustic sum rule, a positive-definite dielectric (non-negative coefficients: a cone,
    still spanning) and the charge-flow terms keep every allowed component reachable."""
    name, options = head
    assert_complete(_build(name, options), STANDARD_ENVIRONMENTS[environment](), environment=environment)


def _rank(item: tuple[str, dict]) -> int:
    try:
        return _build(*item).field.rank
    except Exception:  # a head that does not build is reported by the default-options test
        return -1


RANK2_PLUS = [item for item in REGISTERED_HEADS if _rank(item) >= 2]


@pytest.mark.parametrize("environment", [*PLANAR_ENVIRONMENTS, *LINEAR_ENVIRONMENTS])
@pytest.mark.parametrize("head", RANK2_PLUS, ids=_id)
def test_the_paper_basis_is_incomplete_on_planar_and_linear_environments(head, environment):
    name, options = head
    built = _build(name, {**options, "basis": "paper"})
    rank3 = built.field.rank == 3
    sample = STANDARD_ENVIRONMENTS[environment]()
    if rank3 and environment in PIEZO_TRIVIALLY_COMPLETE:
        assert_complete(built, sample, environment=environment)
    else:
        with pytest.raises(AssertionError, match="span"):
            assert_complete(built, sample, environment=environment)


class _NeedsAField(PluginConfig):
    field: str


def test_assert_registered_heads_complete_lists_failures_and_skips():
    def paper_born(options, dims, fields):
        return CartesianTensorHead(FIELDS["born_charges"], dims, ("aa",), ("ab",), hidden=8)

    def force(options, dims, fields):
        return CartesianTensorHead(FIELDS["forces"], dims, ("a",), (), hidden=8)

    registry = Registry()
    registry.items["head"].update({
        "paper_born": HeadSpec("paper_born", PluginConfig, paper_born),
        "needs_field": HeadSpec("needs_field", _NeedsAField, force),
        "force": HeadSpec("force", PluginConfig, force),
    })
    environments = {"generic": generic_molecule, "water": water}
    with pytest.raises(AssertionError, match=r"(?s)head paper_born: field 'born_charges'.* on water .*span 2 of 3"):
        assert_registered_heads_complete(registry, environments)
    result = assert_registered_heads_complete(registry, environments, raise_on_failure=False)
    assert set(result.failures) == {("paper_born", "water")}
    assert ("force", "water") in result.reports and ("paper_born", "generic") in result.reports
    assert result.skipped == {"needs_field": "needs options: field"}
    assert "paper_born" in result.table()
    with_field = assert_registered_heads_complete(registry, environments, heads=["needs_field"],
                                                  options={"needs_field": [{"field": "forces"}]})
    assert set(with_field.reports) == {("needs_field[field=forces]", "generic"), ("needs_field[field=forces]", "water")}
