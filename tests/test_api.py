"""The public API end to end: build_model from a config, predict on ase and pymatgen inputs.

Besides the shapes a user relies on, every prediction is checked against the physics the
API promises: outputs of a rotated (proper or improper) structure are the rotated outputs,
the same structure given as ase or pymatgen gives the same numbers, batching changes
nothing, and each config mistake is reported with its field path and the valid choices.
"""

from __future__ import annotations

import ase
import ase.build
import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Molecule, Structure
from pymatgen.io.ase import AseAtomsAdaptor

import tensorframe
from tensorframe import ConfigError, ModelConfig, build_model

HEADS = [
    {"name": "force"},
    {"name": "born", "acoustic_sum_rule": True},
    {"name": "dielectric", "positive_definite": True},
    {"name": "piezo"},
    {"name": "scalar", "field": "energy"},
    {"name": "tensor", "field": "polarizability"},
    {"name": "tensor", "field": "efg", "symmetry": "ij=ji", "level": "atom", "hidden": 16},
]
CONFIG = {"cutoff": 4.0, "triplet_cutoff": 3.0, "backbone": {"name": "reference", "hidden": 16}, "heads": HEADS}
# field -> shape of one prediction, given the number of atoms n
SHAPES = {
    "forces": lambda n: (n, 3),
    "born_charges": lambda n: (n, 3, 3),
    "dielectric": lambda n: (3, 3),
    "piezo": lambda n: (3, 3, 3),
    "energy": lambda n: (),
    "polarizability": lambda n: (3, 3),
    "efg": lambda n: (n, 3, 3),
}


@pytest.fixture(scope="module")
def model() -> tensorframe.TensorModel:
    torch.manual_seed(0)
    return build_model(CONFIG).double()


def wurtzite() -> ase.Atoms:
    return ase.build.bulk("AlN", "wurtzite", a=3.11, c=4.98)


def perturbed_rocksalt() -> ase.Atoms:
    """A 2-atom NaCl cell with one atom displaced: no symmetry forces any component to zero."""
    atoms = ase.build.bulk("NaCl", "rocksalt", a=5.0)
    atoms.positions[1] += [0.13, -0.07, 0.21]
    return atoms


def water() -> ase.Atoms:
    return ase.build.molecule("H2O")


def methanol() -> ase.Atoms:
    return ase.build.molecule("CH3OH")


def random_orthogonal(seed: int, improper: bool) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return -q if improper else q


def rotated(atoms: ase.Atoms, rotation: np.ndarray) -> ase.Atoms:
    out = atoms.copy()
    out.positions = atoms.positions @ rotation.T
    if atoms.pbc.any():
        out.set_cell(atoms.cell.array @ rotation.T, scale_atoms=False)
    return out


def rotate_tensor(value: np.ndarray, rotation: np.ndarray, rank: int) -> np.ndarray:
    """R acting on every Cartesian index of a polar tensor; leading (atom) axes untouched."""
    letters = "abcd"[:rank]
    out = value
    for axis, letter in enumerate(letters):
        spec = "".join("X" if i == axis else other for i, other in enumerate(letters))
        out = np.einsum(f"{letter}X,...{spec}->...{letters}", rotation, out)
    return out


RANKS = {"forces": 1, "born_charges": 2, "dielectric": 2, "piezo": 3, "energy": 0, "polarizability": 2, "efg": 2}


def test_build_model_from_dict_and_from_model_config_give_the_same_model():
    torch.manual_seed(1)
    from_dict = build_model(CONFIG)
    torch.manual_seed(1)
    from_config = build_model(ModelConfig.model_validate(CONFIG))
    assert list(from_dict.heads) == list(from_config.heads) == list(SHAPES)
    atoms = perturbed_rocksalt()
    a, b = from_dict.predict([atoms])[0], from_config.predict([atoms])[0]
    for name in SHAPES:
        np.testing.assert_array_equal(a[name], b[name])


@pytest.mark.parametrize("make", [wurtzite, perturbed_rocksalt, water, methanol])
def test_predict_gives_one_dict_per_structure_with_field_shapes(model, make):
    atoms = make()
    predictions = model.predict([atoms, atoms])
    assert len(predictions) == 2
    for prediction in predictions:
        assert set(prediction) == set(SHAPES)
        for name, value in prediction.items():
            assert isinstance(value, np.ndarray)
            assert value.shape == SHAPES[name](len(atoms)), name
            assert np.all(np.isfinite(value)), name


@pytest.mark.parametrize("improper", [False, True], ids=["proper", "improper"])
@pytest.mark.parametrize("make", [perturbed_rocksalt, methanol])
def test_predictions_rotate_with_the_structure(model, make, improper):
    """O(3) equivariance through the public API: every field of a rotated input is the
    rotated field (all built-in fields are polar tensors; the energy is invariant)."""
    atoms = make()
    rotation = random_orthogonal(7, improper)
    before = model.predict([atoms])[0]
    after = model.predict([rotated(atoms, rotation)])[0]
    for name, rank in RANKS.items():
        assert np.abs(before[name]).max() > 1e-6, f"{name} is zero: the check would prove nothing"
        np.testing.assert_allclose(after[name], rotate_tensor(before[name], rotation, rank), atol=1e-10, err_msg=name)


def test_predicted_tensors_have_their_declared_index_symmetry_and_physics(model):
    prediction = model.predict([perturbed_rocksalt()])[0]
    np.testing.assert_allclose(prediction["dielectric"], prediction["dielectric"].T, atol=1e-12)
    assert np.linalg.eigvalsh(prediction["dielectric"]).min() >= 1.0 - 1e-12  # positive_definite: eps >= 1
    np.testing.assert_allclose(prediction["piezo"], prediction["piezo"].transpose(0, 2, 1), atol=1e-12)
    np.testing.assert_allclose(prediction["efg"], prediction["efg"].transpose(0, 2, 1), atol=1e-12)
    np.testing.assert_allclose(prediction["born_charges"].sum(0), 0.0, atol=1e-12)  # acoustic sum rule
    # Born charges are not symmetric: a low-symmetry molecule keeps their antisymmetric part.
    # A head that symmetrised them would leave float64 round-off (~1e-16 relative); at random
    # initialisation the isotropic per-atom part dominates the symmetric part, so the
    # antisymmetric part is small but far above round-off.
    born = model.predict([methanol()])[0]["born_charges"]
    assert np.abs(born - born.transpose(0, 2, 1)).max() > 1e-6 * np.abs(born).max()


@pytest.mark.parametrize("make", [wurtzite, perturbed_rocksalt])
def test_ase_atoms_and_pymatgen_structure_give_the_same_prediction(model, make):
    atoms = make()
    structure = AseAtomsAdaptor.get_structure(atoms)
    assert isinstance(structure, Structure)
    from_ase, from_pymatgen = model.predict([atoms, structure])
    for name in SHAPES:
        np.testing.assert_allclose(from_pymatgen[name], from_ase[name], atol=1e-10, err_msg=name)


def test_ase_atoms_and_pymatgen_molecule_give_the_same_prediction(model):
    atoms = methanol()
    molecule = Molecule([a.symbol for a in atoms], atoms.positions)
    from_ase, from_pymatgen = model.predict([atoms, molecule])
    for name in SHAPES:
        np.testing.assert_allclose(from_pymatgen[name], from_ase[name], atol=1e-10, err_msg=name)


def test_pymatgen_structure_built_by_hand_is_periodic(model):
    """A Structure that ase never saw: its periodic images must matter (a lone 1-atom cell
    has neighbours only through periodicity, and a molecule of one atom has none)."""
    structure = Structure(Lattice.cubic(3.0), ["Cu"], [[0, 0, 0]])
    single = Molecule(["Cu"], [[0, 0, 0]])
    crystal, atom = model.predict([structure, single])
    assert abs(crystal["energy"] - atom["energy"]) > 1e-6
    np.testing.assert_allclose(crystal["dielectric"], crystal["dielectric"][0, 0] * np.eye(3), atol=1e-10)  # cubic


def test_batch_size_does_not_change_predictions(model):
    structures = [wurtzite(), water(), perturbed_rocksalt(), methanol(), AseAtomsAdaptor.get_structure(wurtzite())]
    one = model.predict(structures, batch_size=1)
    four = model.predict(structures, batch_size=4)
    assert len(one) == len(four) == len(structures)
    for index, (a, b) in enumerate(zip(one, four, strict=True)):
        for name in SHAPES:
            np.testing.assert_allclose(b[name], a[name], atol=1e-10, err_msg=f"structure {index}, {name}")


@pytest.mark.parametrize("training", [True, False])
def test_predict_keeps_the_training_flag(model, training):
    model.train(training)
    try:
        model.predict([water()])
        assert model.training is training
        assert all(m.training is training for m in model.modules())
    finally:
        model.eval()


def test_predict_needs_no_gradient_and_keeps_parameters(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.predict([water()])
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_unsupported_object_in_predict_names_its_index_and_type(model):
    with pytest.raises(TypeError, match=r"structure 2: .*builtins\.str"):
        model.predict([water(), methanol(), "H2O"])
    with pytest.raises(TypeError, match=r"structure 0: .*numpy\.ndarray"):
        model.predict([np.zeros((3, 3))])


# ---- configuration errors: the field path and the valid choices ----

BACKBONE = {"name": "reference"}


def config_error(config: dict) -> str:
    with pytest.raises(ConfigError) as info:
        build_model(config)
    return str(info.value)


def test_typo_in_a_top_level_key_names_it_and_suggests_the_right_one():
    message = config_error({"cutof": 4.0, "backbone": BACKBONE, "heads": [{"name": "force"}]})
    assert message.startswith("cutof: unknown option")
    assert "did you mean 'cutoff'" in message
    for key in ("backbone", "cutoff", "heads", "lifting", "triplet_cutoff"):
        assert key in message


def test_unknown_head_option_names_its_path_and_the_heads_options():
    message = config_error(
        {"backbone": BACKBONE, "heads": [{"name": "force"}, {"name": "born", "acoustic_sum_rul": True}]}
    )
    assert message.startswith("heads[1].acoustic_sum_rul: unknown option")
    assert "did you mean 'acoustic_sum_rule'" in message
    assert "valid options: acoustic_sum_rule, basis, hidden" in message


def test_unknown_backbone_and_lifting_options_name_their_paths():
    message = config_error({"backbone": {"name": "reference", "hiden": 8}, "heads": [{"name": "force"}]})
    assert message.startswith("backbone.hiden: unknown option") and "'hidden'" in message
    message = config_error({"backbone": BACKBONE, "heads": [{"name": "force"}], "lifting": {"out": 8}})
    assert message.startswith("lifting.out: unknown option") and "out_dim" in message


@pytest.mark.parametrize(
    ("config", "path", "words"),
    [
        ({"cutoff": "five"}, "cutoff", "valid number"),
        ({"cutoff": -1.0}, "cutoff", "greater than 0"),
        ({"heads": [{"name": "born", "acoustic_sum_rule": "maybe"}]}, "heads[0].acoustic_sum_rule", "boolean"),
        ({"heads": [{"name": "scalar", "level": "edge"}]}, "heads[0].level", "'atom' or 'structure'"),
        ({"heads": "force"}, "heads", "valid list"),
    ],
)
def test_wrong_types_name_the_field_path(config, path, words):
    message = config_error({"backbone": BACKBONE, "heads": [{"name": "force"}], **config})
    assert message.startswith(f"{path}: ")
    assert words in message


def test_triplet_cutoff_larger_than_cutoff_is_an_error_on_triplet_cutoff():
    message = config_error({"cutoff": 4.0, "triplet_cutoff": 5.0, "backbone": BACKBONE, "heads": [{"name": "born"}]})
    assert message == "triplet_cutoff: triplet_cutoff (5.0) must not exceed cutoff (4.0)"
    assert build_model({"cutoff": 4.0, "triplet_cutoff": 4.0, "backbone": BACKBONE, "heads": [{"name": "born"}]})


def test_two_heads_predicting_one_field_are_an_error_naming_both():
    message = config_error(
        {"backbone": BACKBONE, "heads": [{"name": "born"}, {"name": "force"}, {"name": "tensor", "field": "born_charges"}]}
    )
    assert "heads[0], heads[2]" in message and "'born_charges'" in message


def test_tensor_head_for_an_unknown_field_without_symmetry_lists_the_known_fields():
    message = config_error({"backbone": BACKBONE, "heads": [{"name": "tensor", "field": "quadrupole"}]})
    assert message.startswith("heads[0]: field 'quadrupole' is not a registered field; give symmetry and level")
    for name in ("born_charges", "dielectric", "piezo", "polarizability"):
        assert name in message
    # With symmetry and level given, the same unknown field is fine.
    assert build_model(
        {"backbone": BACKBONE, "heads": [{"name": "tensor", "field": "quadrupole", "symmetry": "ij=ji", "level": "structure"}]}
    )


@pytest.mark.parametrize(
    ("options", "words"),
    [
        # A symmetric pseudo-tensor has a pseudo-scalar trace, which no product of two edge
        # directions can make: the head cannot span the space and must refuse.
        ({"symmetry": "ij=ji", "parity": -1}, "span only 5 of the 6 dimensions of 'ij=ji' with parity -1"),
        # An antisymmetric proper tensor from edge words alone: e(x)e is symmetric.
        ({"symmetry": "ij=-ji", "parity": 1, "use_triplets": False}, "span only 0 of the 3 dimensions"),
        ({"symmetry": "ij", "parity": 1, "edge_words": ["aaa"]}, "basis word 'aaa' does not give a rank-2 tensor"),
    ],
)
def test_unsupported_parity_and_formula_combinations_are_config_errors(options, words):
    head = {"name": "tensor", "field": "odd", "level": "structure", **options}
    message = config_error({"backbone": BACKBONE, "heads": [{"name": "force"}, head]})
    assert message.startswith("heads[1]: field 'odd'")
    assert words in message


def test_unknown_backbone_and_head_names_list_the_valid_choices():
    message = config_error({"backbone": {"name": "schnett"}, "heads": [{"name": "force"}]})
    assert message.startswith("backbone.name: unknown backbone 'schnett'; valid choices:") and "reference" in message
    message = config_error({"backbone": BACKBONE, "heads": [{"name": "force"}, {"name": "borm"}]})
    assert message.startswith("heads[1].name: unknown head 'borm'; valid choices:")
    for name in ("born", "dielectric", "force", "piezo", "scalar", "tensor"):
        assert name in message


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_model_runs_on_cuda_and_matches_cpu():
    torch.manual_seed(0)
    cpu = build_model(CONFIG).double()
    gpu = build_model(CONFIG).double()
    gpu.load_state_dict(cpu.state_dict())
    gpu = gpu.to("cuda")
    structures = [perturbed_rocksalt(), water()]
    graph = gpu.make_graph([tensorframe.io.to_sample(s) for s in structures])
    assert graph.edge_dir.device.type == "cuda"
    for a, b in zip(cpu.predict(structures), gpu.predict(structures), strict=True):
        for name in SHAPES:
            np.testing.assert_allclose(b[name], a[name], atol=1e-9, err_msg=name)
