"""Hostile and careless input files: no crash, no hang, no silent reinterpretation.

Each bad file is refused with ONE line naming the file, the structure and what was expected
(``tensorframe.io.validation.InputError`` / ValueError); valid files still read as before. The
files are small and written into tmp_path; the OUTCAR test reads the shared AlN data set.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import ase
import ase.io
import numpy as np
import pytest

import tensorframe
from tensorframe.cli import main
from tensorframe.commands.predict import read_inputs
from tensorframe.io import vasp as vasp_reader
from tensorframe.io.ase_reader import read_ase
from tensorframe.io.convert import to_sample
from tensorframe.io.read import read_structures
from tensorframe.io.validation import InputError
from tensorframe.registry import get_registry
from tensorframe.space_group import crystal_symmetry

FIELDS = get_registry().fields  # the field table the readers are given (read_structures passes it)

EXAMPLES = Path(tensorframe.__file__).parent / "data" / "examples.extxyz"


def _datasets() -> Path:
    beside_repo = Path(__file__).resolve().parents[2] / "shared" / "datasets"
    return beside_repo if beside_repo.is_dir() else Path("/work/shared/datasets")


ALN_OUTCAR = _datasets() / "jarvis-vasp-lepsilon-AlN" / "OUTCAR.JVASP-39"
WATER = "O 0.0 0.0 0.0\nH 0.96 0.0 0.0\nH -0.24 0.93 0.0\n"
NACL_CIF = """data_test
_cell_length_a 5.64
_cell_length_b 5.64
_cell_length_c 5.64
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'P 1'
loop_
_symmetry_equiv_pos_as_xyz
 'x, y, z'
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_occupancy
{sites}
Cl1 Cl 0.5 0.5 0.5 1.0
"""
ORDER_IT = "tensorframe needs an ordered structure — order it first (e.g. pymatgen OrderDisorderedStructureTransformation)"


def poscar(scale: str = "1.0", c: str = "0 0 4", extra: str = "") -> str:
    return f"NaCl\n{scale}\n4 0 0\n0 4 0\n{c}\nNa Cl\n1 1\nDirect\n0 0 0\n0.5 0.5 0.5\n{extra}"


def one_line(error: pytest.ExceptionInfo, *parts: str) -> str:
    """The message, checked to be one non-empty line holding every part."""
    message = str(error.value)
    assert message and "\n" not in message, message
    for part in parts:
        assert part in message, (part, message)
    return message


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Fail (instead of hanging the suite) when the block runs longer than ``seconds``."""
    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# 1. Atom counts are checked against the lines present before ase reads (no hang).

HUGE = "1000000000\nProperties=species:S:1:pos:R:3\n" + WATER


@pytest.mark.parametrize("opener", [open, gzip.open, bz2.open, lzma.open], ids=["plain", "gz", "bz2", "xz"])
def test_a_header_claiming_a_billion_atoms_is_refused_at_once(tmp_path, opener):
    suffix = {open: "", gzip.open: ".gz", bz2.open: ".bz2", lzma.open: ".xz"}[opener]
    path = tmp_path / f"bad.xyz{suffix}"
    with opener(path, "wt") as handle:
        handle.write(HUGE)
    start = time.perf_counter()
    with deadline(10), pytest.raises(InputError) as error:
        read_structures(path)
    assert time.perf_counter() - start < 1.0
    one_line(error, f"{path}: structure 0 cannot be read: header says 1000000000 atoms but only 3 atom lines follow (line 1)")


def test_predict_on_a_billion_atom_header_exits_2_with_one_line(tmp_path, capsys):
    model = tensorframe.build_model({
        "cutoff": 3.0, "triplet_cutoff": 2.5, "backbone": {"name": "reference", "hidden": 4, "num_radial": 4},
        "heads": [{"name": "scalar", "field": "energy", "hidden": 4}], "lifting": {"hidden": 4, "out_dim": 4},
    })
    checkpoint = tmp_path / "model.pt"
    tensorframe.save_checkpoint(checkpoint, model)
    bad = tmp_path / "bad.xyz"
    bad.write_text(HUGE)
    with deadline(30):
        code = main(["predict", str(checkpoint), str(bad), "-o", str(tmp_path / "out.xyz")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [
        f"tensorframe predict: error: {bad}: structure 0 cannot be read: header says 1000000000 atoms but only 3 atom lines follow "
        f"(line 1); truncated file?"
    ]
    assert not (tmp_path / "out.xyz").exists()


@pytest.mark.parametrize(("text", "parts"), [
    ("3\n\n" + WATER + "5\n\n" + WATER, ["structure 1 cannot be read: header says 5 atoms but only 3 atom lines follow (line 6)"]),
    ("three\n\n" + WATER, ["structure 0 cannot be read: line 1: expected the number of atoms of a frame, got 'three'"]),
    ("-3\n\n" + WATER, ["structure 0 cannot be read: line 1: expected a non-negative number of atoms, got -3"]),
    ("3\n\n" + WATER + "\n3\n\n" + WATER, ["structure 1 cannot be read: line 6 is blank but more text follows at line 7",
                                           "frames after it would be dropped"]),
    ("3\n", ["structure 0 cannot be read: header says 3 atoms but only 0 atom lines follow (line 1) and no comment line"]),
], ids=["truncated", "not-a-number", "negative", "blank-line", "no-comment"])
def test_frame_headers_that_disagree_with_the_file_are_one_line_errors(tmp_path, text, parts):
    path = tmp_path / "frames.xyz"
    path.write_text(text)
    with deadline(10), pytest.raises(ValueError) as error:
        read_inputs([str(path)])  # what predict and evaluate call
    one_line(error, str(path), *parts)


def test_valid_extxyz_files_read_as_ase_reads_them(tmp_path):
    samples = read_structures(EXAMPLES)
    reference = ase.io.read(EXAMPLES, index=":")
    assert len(samples) == len(reference) == 3
    for sample, atoms in zip(samples, reference, strict=True):
        np.testing.assert_array_equal(sample.numbers, atoms.numbers)
        np.testing.assert_array_equal(sample.positions, atoms.positions)
        np.testing.assert_array_equal(sample.pbc, atoms.pbc)
        np.testing.assert_array_equal(sample.cell, atoms.cell.array if atoms.pbc.any() else np.zeros((3, 3)))
    # trailing blank lines, a compressed copy and a selection read the same frames
    padded = tmp_path / "padded.extxyz.gz"
    with gzip.open(padded, "wt") as handle:
        handle.write(EXAMPLES.read_text() + "\n\n")
    again = read_structures(padded)
    assert [s.num_atoms for s in again] == [s.num_atoms for s in samples]
    last = read_ase(padded, fields=FIELDS, index="-1")
    np.testing.assert_array_equal(last[0].positions, samples[-1].positions)


# 2. Partial occupancies are refused, never read as a full atom.

@pytest.mark.parametrize(("sites", "occupancy"), [
    ("Na1 Na 0.0 0.0 0.0 0.5\nK1 K 0.0 0.0 0.0 0.5", "(Na 0.5, K 0.5)"),  # ase silently keeps only K
    ("Na1 Na 0.0 0.0 0.0 0.9", "(Na 0.9)"),  # a vacancy, read by ase as a full Na
])
def test_a_partially_occupied_cif_site_is_refused_by_name(tmp_path, sites, occupancy):
    path = tmp_path / "x.cif"
    path.write_text(NACL_CIF.format(sites=sites))
    with pytest.raises(InputError) as error:
        read_structures(path)
    one_line(error, f"{path}: structure 0: site 'Na1' has partial occupancy {occupancy}; {ORDER_IT}")
    with pytest.raises(ValueError, match=r"structure 4: site 0 \(counted in the file's order from 0\) has partial"):
        to_sample(ase.io.read(path), index=4)  # Atoms from ase, passed in Python


def test_an_ordered_cif_reads_as_ase_reads_it(tmp_path):
    path = tmp_path / "nacl.cif"
    path.write_text(NACL_CIF.format(sites="Na1 Na 0.0 0.0 0.0 1.0"))
    (sample,) = read_structures(path)
    atoms = ase.io.read(path)
    assert sample.numbers.tolist() == [11, 17]
    np.testing.assert_allclose(sample.positions, atoms.positions)
    np.testing.assert_allclose(sample.cell, np.diag([5.64] * 3))


def test_a_disordered_pymatgen_structure_is_refused_by_site():
    from pymatgen.core import Lattice, Structure

    structure = Structure(Lattice.cubic(5.64), [{"Na": 0.5, "K": 0.5}, "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(ValueError) as error:
        to_sample(structure, index=2)
    one_line(error, "structure 2: site 0", "has partial occupancy (Na 0.5, K 0.5)", ORDER_IT)
    vacancy = Structure(Lattice.cubic(5.64), [{"Na": 0.9}, "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(ValueError, match=r"site 0 \('Na:0.9'\) has partial occupancy \(Na 0.9\)"):
        to_sample(vacancy)
    ordered = Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert to_sample(ordered).pbc.all()


# 3. A zero lattice vector never turns a crystal into a molecule.

ZERO_CELL = "field 'cell': lattice vector"
INDEPENDENT = "expected three linearly independent vectors for a periodic structure"


@pytest.mark.parametrize(("lattice", "which"), [
    ('Lattice="5 0 0 0 5 0 0 0 0" pbc="T T T"', "lattice vector 2 is zero"),
    ('Lattice="0 0 0 0 0 0 0 0 0" pbc="T T T"', "lattice vectors [0, 1, 2] are zero"),
    ('Lattice="5 0 0 0 5 0 0 0 0"', "lattice vector 2 is zero"),  # a lattice without pbc= is periodic in ase
])
def test_a_zero_lattice_vector_in_extxyz_is_refused(tmp_path, lattice, which):
    path = tmp_path / "zero.xyz"
    path.write_text(f"3\n{lattice}\n{WATER}")
    with pytest.raises(InputError) as error:
        read_structures(path)
    one_line(error, f"{path}: structure 0, field 'cell': {which}", INDEPENDENT, 'pbc="F F F"')


def test_declared_molecules_stay_molecules(tmp_path):
    path = tmp_path / "molecules.xyz"  # the molecule convention: an all-zero Lattice and no pbc= key
    path.write_text(f'3\nLattice="0 0 0 0 0 0 0 0 0"\n{WATER}3\npbc="F F F"\n{WATER}3\n\n{WATER}')
    samples = read_structures(path)
    assert [s.pbc.any() for s in samples] == [False, False, False]
    slab = tmp_path / "slab.xyz"  # a zero vector in a non-periodic direction is fine
    slab.write_text(f'3\nLattice="5 0 0 0 5 0 0 0 0" pbc="T T F"\n{WATER}')
    (sample,) = read_structures(slab)
    assert sample.pbc.tolist() == [True, True, False]


@pytest.mark.parametrize(("name", "text", "parts"), [
    ("POSCAR", poscar(scale="0"), ["structure 0, field 'cell': the scale factor (line 2) is 0", INDEPENDENT]),
    ("POSCAR", poscar(scale="0", extra="").replace("Direct", "Cartesian"), ["the scale factor (line 2) is 0"]),
    ("POSCAR", poscar(c="0 0 0"), [f"structure 0, {ZERO_CELL} 2 is zero", INDEPENDENT]),
])
def test_a_zero_poscar_lattice_is_refused(tmp_path, name, text, parts):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InputError) as error:
        read_structures(path)
    one_line(error, str(path), *parts)


def test_a_negative_poscar_scale_is_the_cell_volume(tmp_path):
    (tmp_path / "scaled").mkdir()
    volume, plain = tmp_path / "POSCAR", tmp_path / "scaled" / "POSCAR"
    volume.write_text(poscar(scale="-512"))  # 512 Å^3: the 4 Å cube doubled
    plain.write_text(poscar(scale="2.0"))
    (by_volume,), (by_factor,) = read_structures(volume), read_structures(plain)
    np.testing.assert_allclose(by_volume.cell, np.diag([8.0] * 3), atol=1e-12)
    np.testing.assert_allclose(by_volume.positions, by_factor.positions, atol=1e-12)
    assert by_volume.pbc.all()


def test_ase_atoms_with_pbc_and_no_cell_are_refused_in_python():
    atoms = ase.Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]], pbc=True)
    with pytest.raises(ValueError) as error:
        to_sample(atoms, index=3)
    one_line(error, "structure 3, field 'cell': lattice vectors [0, 1, 2] are zero", INDEPENDENT)
    atoms.pbc = False
    assert not to_sample(atoms).pbc.any()


# 4. ase's own complaints become one line naming the file, the structure and what is wrong.

def test_an_unknown_element_is_named_with_its_atom(tmp_path):
    path = tmp_path / "x.xyz"
    path.write_text("3\n\nO 0 0 0\nH 0.96 0 0\nQq 0 0.96 0\n")
    with pytest.raises(ValueError) as error:
        read_structures(path)
    one_line(error, f"{path}: structure 0: atom 2 (line 5) has unknown element symbol 'Qq'")
    assert "KeyError" not in str(error.value)


@pytest.mark.parametrize(("text", "parts"), [
    # ase: `assert len(words) == 3` with no message
    (poscar(extra="\n1 2 3\nx\n"), ["AssertionError raised at ase/io/vasp.py", "assert len(words) == 3"]),
    (poscar().replace("1 1\n", "1 x\n"), ["invalid literal for int()"]),
    (poscar().replace("0.5 0.5 0.5\n", ""), ["could not broadcast"]),
    ("NaCl\n1.0 2.0\n4 0 0\n", ["scaling factors must be 1 or 3"]),
], ids=["assert", "count", "truncated", "scale"])
def test_a_malformed_poscar_is_one_line_naming_the_file(tmp_path, text, parts):
    path = tmp_path / "POSCAR"
    path.write_text(text)
    with pytest.raises(ValueError) as error:
        read_structures(path)
    message = one_line(error, f"{path}: structure 0 cannot be read (truncated or malformed file?): ase's 'vasp' reader: ", *parts)
    assert not message.rstrip().endswith(":"), message


# 5. OUTCAR positions at full precision.

def test_outcar_positions_keep_the_wurtzite_symmetry():
    if not ALN_OUTCAR.exists():
        pytest.skip(f"{ALN_OUTCAR} is absent")
    (sample,) = vasp_reader.read_vasp(ALN_OUTCAR, fields=FIELDS)
    assert crystal_symmetry(sample, symprec=1e-5)[3] == "P6_3mc"
    step = ase.io.read(ALN_OUTCAR, index=0, format="vasp-out")  # ase: the 5-decimal POSITION block
    rounded = to_sample(step)
    assert crystal_symmetry(rounded, symprec=1e-5)[3] == "Cmc2_1"  # what the reader gave before
    assert 0 < np.abs(sample.positions - rounded.positions).max() < 1e-5
    np.testing.assert_array_equal(sample.targets["forces"], step.get_forces())
    np.testing.assert_array_equal(sample.targets["energy"], step.get_potential_energy())
    from ase.stress import voigt_6_to_full_3x3_stress

    np.testing.assert_array_equal(sample.targets["stress"], voigt_6_to_full_3x3_stress(step.get_stress()))


def test_outcar_header_positions_are_used_only_where_they_match_the_first_step():
    header = ("      direct lattice vectors                 reciprocal lattice vectors\n"
              "     4.000000000  0.000000000  0.000000000     0.25 0 0\n"
              "     0.000000000  4.000000000  0.000000000     0 0.25 0\n"
              "     0.000000000  0.000000000  4.000000000     0 0 0.25\n\n"
              " position of ions in cartesian coordinates  (Angst):\n"
              "   0.00000000  0.00000000  0.00000000\n"
              "   1.33333333  2.00000000  2.00000000\n")
    step = ase.Atoms("NaCl", positions=[[0, 0, 0], [1.33333, 2, 2]], cell=np.eye(3) * 4, pbc=True)
    vasp_reader._use_full_precision(step, header)
    np.testing.assert_array_equal(step.positions[1], [1.33333333, 2, 2])
    moved = ase.Atoms("NaCl", positions=[[0, 0, 0], [1.5, 2, 2]], cell=np.eye(3) * 4, pbc=True)  # a later step
    vasp_reader._use_full_precision(moved, header)
    np.testing.assert_array_equal(moved.positions[1], [1.5, 2, 2])
