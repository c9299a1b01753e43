"""DeePMD-kit "npy" systems (``deepmd/npy``, see DeePMD-kit doc/data/system.md).

Layout of one system (a directory)::

    type.raw          one integer type per atom (the atom order of every frame)
    type_map.raw      element symbol of each type, one per line (or the reader's ``type_map``)
    nopbc             optional empty file: the frames are not periodic (box.npy is ignored)
    set.000/ ...      frames, in chunks read in name order
        coord.npy     (frames, 3 N) Å
        box.npy       (frames, 9) Å, the three cell vectors as rows (needed unless nopbc)
        energy.npy    (frames,) eV                    -> energy
        force.npy     (frames, 3 N) eV/Å              -> forces
        virial.npy    (frames, 9) eV                  -> virial
        dipole.npy    (frames, 3)                     -> dipole (global)
        polarizability.npy (frames, 9)                -> polarizability (global)
        atomic_dipole.npy  (frames, 3 N) or (frames, 3 N_sel)          -> atomic_dipole
        atomic_polarizability.npy (frames, 9 N) or (frames, 9 N_sel)   -> atomic_polarizability

``path`` is a system, or a directory searched recursively for systems (each directory with
a ``type.raw``), read in sorted order.

Atomic tensors ("atomic_dipole", "atomic_polarizability"): DeePMD labels them only on the
atoms of selected types (``sel_type``, e.g. the O of water, whose Wannier centroid
displacement is the DPLR "atomic dipole"). tensorframe stores them as a per-atom field on
every atom, zero on the atoms of other types. That is DeePMD's own "reformat" layout (its
H rows are exactly zero), keeps ``sum_k atomic_dipole_k`` the structure's total, and lets
any per-atom head train on it. Files in the older layout, with rows for the selected atoms
only (frames, 3 N_sel), are expanded: the selected types come from ``sel_type`` (element
symbols) or, when not given, are the unique set of types with N_sel atoms in all.

Older DeePMD data name per-selected-atom labels ``dipole.npy`` / ``polarizability.npy``;
a ``dipole.npy`` with more than 3 (or ``polarizability.npy`` with more than 9) columns is
read as atomic.

Stress: DeePMD stores the virial ``W = -V sigma`` (eV). ``stress=True`` also gives each frame
the ``stress`` ``sigma = -W / V`` (eV/Å^3, ASE's sign: positive under tension), V the volume of
its box; ``key_map={"virial": "stress"}`` gives the stress instead of the virial. Either needs
a periodic system: a ``nopbc`` system (or ``pbc=False``) with a stress asked for is an error,
never a stress from a zero volume. ``units={"virial": ...}`` converts virial.npy before the
division (see :mod:`tensorframe.io.stress`).

Units: DeePMD stores Å, eV and eV/Å, as tensorframe does: no conversion. Dipoles and
polarizabilities are stored as given (DeePMD does not fix their units; pass ``units=`` to
convert). Other label files are ignored unless ``key_map`` maps their stem to a field.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tensorframe.fields import FieldSpec
from tensorframe.io.labels import check_units, label_array
from tensorframe.io.stress import not_periodic, virial_to_stress
from tensorframe.io.validation import MIN_DISTANCE, check_same_labels, describe_exception, not_found, structure_sample
from tensorframe.specs import FieldTable
from tensorframe.types import Sample

# file stem -> field; global and atomic variants told apart by width (see module docstring)
DEFAULT_FILES: dict[str, str] = {
    "energy": "energy",
    "force": "forces",
    "virial": "virial",
    "dipole": "dipole",
    "polarizability": "polarizability",
    "atomic_dipole": "atomic_dipole",
    "atomic_polarizability": "atomic_polarizability",
}
_ATOMIC_OF = {"dipole": "atomic_dipole", "polarizability": "atomic_polarizability"}
SELECTED_TYPE_FIELDS = frozenset(_ATOMIC_OF.values())
"""Fields that DeePMD may label on the atoms of selected types only (expanded with zeros)."""


def find_systems(path: Path) -> list[Path]:
    """``path`` if it is a system, else every system below it (sorted)."""
    if (path / "type.raw").is_file():
        return [path]
    return sorted(p.parent for p in path.rglob("type.raw"))


def read_deepmd(
    path: str | Path,
    type_map: Sequence[str] | None = None,
    sel_type: Sequence[str] | None = None,
    key_map: dict[str, str] | None = None,
    pbc: bool | None = None,
    units: dict[str, str] | None = None,
    min_distance: float = MIN_DISTANCE,
    stress: bool = False,
    *,
    fields: FieldTable,
) -> list[Sample]:
    """Every frame of every system under ``path``.

    Args:
        fields: the field table (:attr:`Registry.fields <tensorframe.registry.Registry.fields>`):
            label files are read as the fields named there.
        type_map: element symbol per type, for systems without ``type_map.raw``.
        sel_type: elements that carry the atomic labels (old layout only; else inferred).
        key_map: extra {file stem: field} for other label files.
        pbc: None follows the ``nopbc`` marker; True forces periodic (box.npy needed),
            False forces open boundaries.
        units: {field: unit of the files}, converted to tensorframe's units.
        min_distance: atoms closer than this (Å) are an error; 0 turns the check off.
        stress: also give ``stress = -virial / V`` (3, 3) in eV/Å^3 per frame (periodic
            systems only); ``key_map={"virial": "stress"}`` gives it instead of the virial.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: naming the file, the structure (frame) and the field: no system found,
            unreadable or wrongly shaped arrays, unknown elements, NaN labels, overlapping atoms,
            a stress asked for on a non-periodic system or a set without virial.npy.
    """
    root = Path(path)
    if not root.exists():
        raise not_found(root)
    systems = find_systems(root) if root.is_dir() else []
    if not systems:
        raise ValueError(f"{root}: no DeePMD system found (a directory with type.raw and set.*/coord.npy)")
    files = {**DEFAULT_FILES, **(key_map or {})}
    unknown = sorted(set(files.values()) - set(fields))
    if unknown:
        raise ValueError(f"key_map: unknown field(s) {unknown}; valid choices: {', '.join(sorted(fields))}")
    scales = check_units(units)
    from_virial = stress or files.get("virial") == "stress"
    if files.get("virial") == "stress":
        del files["virial"]  # virial.npy becomes the stress, not a label of its own
    if from_virial and "stress" in files.values():
        stem = next(k for k, v in files.items() if v == "stress")
        raise ValueError(f"key_map: {stem!r} -> 'stress', but the stress is derived from virial.npy; map one of them")
    if from_virial and "stress" in scales:
        raise ValueError("units: 'stress' is derived from virial.npy (stress = -virial / V); "
                         "give the unit of virial.npy as units={'virial': ...}")
    samples: list[Sample] = []
    wheres: list[str] = []
    for system in systems:
        _read_system(system, type_map, sel_type, files, fields, pbc, scales, min_distance, from_virial, samples, wheres)
    check_same_labels(samples, wheres)
    return samples


def _read_system(
    system: Path, type_map: Sequence[str] | None, sel_type: Sequence[str] | None, files: dict[str, str],
    fields: dict[str, FieldSpec], pbc: bool | None, scales: dict[str, float], min_distance: float,
    from_virial: bool, samples: list[Sample], wheres: list[str],
) -> None:
    """Append the frames of one system (every set) to ``samples`` / ``wheres``; with
    ``from_virial``, each frame's ``stress`` is derived from virial.npy."""
    numbers = _atomic_numbers(system, type_map)
    types = _load_raw(system / "type.raw", int)
    num_atoms = len(numbers)
    periodic = not (system / "nopbc").exists() if pbc is None else bool(pbc)
    sets = sorted(p for p in system.glob("set.*") if p.is_dir())
    if not sets:
        raise ValueError(f"{system}: no set.* directories")
    for set_dir in sets:
        coord = _load(set_dir / "coord.npy", (3 * num_atoms,))
        frames = coord.shape[0]
        box = _load(set_dir / "box.npy", (9,), frames) if periodic else None
        labels = {}
        for stem, field in files.items():
            file = set_dir / f"{stem}.npy"
            if not file.exists():
                continue
            array = _load(file, None, frames)
            if stem in _ATOMIC_OF and array.shape[1] > int(np.prod(fields[field].shape)):
                field = _ATOMIC_OF[stem]  # the older layout: per selected atom
            spec = fields[field]
            if field in SELECTED_TYPE_FIELDS:
                array = _expand_selected(array, numbers, types, sel_type, spec, file)
            labels[field] = (file, array, scales.get(field, 1.0))
        if from_virial:
            labels["stress"] = _stress_from_virial(set_dir, box, periodic, scales.get("virial", 1.0), frames,
                                                   f"structure {len(samples)} (frame 0 of this set)")
        for frame in range(frames):
            where = f"{set_dir}: structure {len(samples)} (frame {frame} of this set)"
            cell = box[frame].reshape(3, 3) if box is not None else np.zeros((3, 3))
            positions = coord[frame].reshape(num_atoms, 3)
            sample = structure_sample(lambda p=positions, c=cell: Sample(numbers, p, c, np.full(3, periodic)),
                                      where, min_distance)
            targets = {
                field: label_array(array[frame], fields[field], num_atoms,
                                   f"{file}: structure {len(samples)} (frame {frame} of this set)",
                                   scale=scale)
                for field, (file, array, scale) in labels.items()
            }
            samples.append(sample.with_targets(targets))
            wheres.append(where)


def _stress_from_virial(set_dir: Path, box: np.ndarray | None, periodic: bool, scale: float, frames: int,
                        structure: str) -> tuple[Path, np.ndarray, float]:
    """(virial.npy, stress (frames, 9) in eV/Å^3, 1.0): ``sigma = -W / V`` per frame, W in eV after ``scale``."""
    file = set_dir / "virial.npy"
    where = f"{file}: {structure}"
    if box is None or not periodic:
        raise not_periodic(np.zeros(3, dtype=bool), where, "virial",
                           "; this system is not periodic (nopbc marker or pbc=False): read virial.npy as a virial")
    if not file.exists():
        raise ValueError(f"{set_dir}: {structure}, field 'stress': derived from virial.npy, which this set lacks")
    virial = _load(file, (9,), frames) * scale
    with np.errstate(divide="ignore", invalid="ignore"):  # a flat box fails the structure check of its frame
        stress = virial_to_stress(virial.reshape(frames, 3, 3), box.reshape(frames, 3, 3))
    return file, stress.reshape(frames, 9), 1.0


def _atomic_numbers(system: Path, type_map: Sequence[str] | None) -> np.ndarray:
    from ase.data import atomic_numbers

    types = _load_raw(system / "type.raw", int)
    names_file = system / "type_map.raw"
    if type_map is not None:
        names, source = list(type_map), "type_map option"
    elif names_file.exists():
        names, source = _load_raw(names_file, str).tolist(), str(names_file)
    else:
        raise ValueError(f"{system}: no type_map.raw; pass type_map=[element of type 0, type 1, ...]")
    if types.size == 0:
        raise ValueError(f"{system / 'type.raw'}: no atoms")
    if types.min() < 0 or types.max() >= len(names):
        raise ValueError(
            f"{system / 'type.raw'}: types {types.min()}..{types.max()} but {source} names {len(names)} types {names}"
        )
    for name in names:
        if name not in atomic_numbers or atomic_numbers[name] == 0:
            raise ValueError(f"{source}: unknown element {name!r}; expected element symbols such as 'O' or 'H'")
    return np.array([atomic_numbers[names[t]] for t in types], dtype=np.int64)


def _load_raw(file: Path, dtype: type) -> np.ndarray:
    if not file.exists():
        raise not_found(file)
    try:
        return np.atleast_1d(np.loadtxt(file, dtype=dtype, ndmin=1))
    except ValueError as error:
        raise ValueError(f"{file}: cannot be read: {error}") from None


def _load(file: Path, width: tuple[int, ...] | None, frames: int | None = None) -> np.ndarray:
    """A 2-D float64 (frames, width) array; errors name the file and the expected shape."""
    if not file.exists():
        raise not_found(file)
    try:
        array = np.load(file, allow_pickle=False)
    except Exception as error:  # noqa: BLE001 - numpy raises ValueError/EOFError/OSError for a broken file
        raise ValueError(f"{file}: cannot be read (truncated or not a .npy file?): {describe_exception(error)}") from None
    array = np.asarray(array, dtype=np.float64)
    array = array.reshape(array.shape[0], -1) if array.ndim >= 1 else array.reshape(1, 1)
    expected_frames = frames if frames is not None else array.shape[0]
    if array.shape[0] != expected_frames or (width is not None and array.shape[1:] != width):
        expected = (expected_frames, *(width or ("...",)))
        raise ValueError(f"{file}: expected shape {expected} (frames, values), got {array.shape}")
    return array


def _expand_selected(array: np.ndarray, numbers: np.ndarray, types: np.ndarray, sel_type: Sequence[str] | None,
                     spec: FieldSpec, file: Path) -> np.ndarray:
    """(frames, k N) as is; (frames, k N_sel) -> (frames, k N) with zeros on unselected atoms."""
    size = int(np.prod(spec.shape))
    num_atoms = len(types)
    if array.shape[1] == size * num_atoms:
        return array
    if array.shape[1] % size:
        raise ValueError(f"{file}: expected {size} numbers per atom, got {array.shape[1]} per frame")
    count = array.shape[1] // size
    selected = _selected_atoms(numbers, types, sel_type, count, file)
    full = np.zeros((array.shape[0], num_atoms, size))
    full[:, selected] = array.reshape(array.shape[0], count, size)
    return full.reshape(array.shape[0], -1)


def _selected_atoms(numbers: np.ndarray, types: np.ndarray, sel_type: Sequence[str] | None, count: int,
                    file: Path) -> np.ndarray:
    from ase.data import chemical_symbols

    if sel_type is not None:
        chosen = {chemical_symbols[z] for z in numbers} & set(sel_type)
        mask = np.isin([chemical_symbols[z] for z in numbers], list(chosen))
        if mask.sum() != count:
            raise ValueError(f"{file}: {count} labelled atoms per frame, but sel_type {list(sel_type)} selects {mask.sum()}")
        return np.flatnonzero(mask)
    unique = np.unique(types)
    counts = {t: int((types == t).sum()) for t in unique}
    matches = [
        subset for r in range(1, len(unique) + 1) for subset in _subsets(unique.tolist(), r)
        if sum(counts[t] for t in subset) == count
    ]
    if len(matches) != 1:
        raise ValueError(
            f"{file}: {count} labelled atoms per frame of {len(types)}; "
            f"{'no' if not matches else 'more than one'} set of types has that many atoms; pass sel_type=[elements]"
        )
    return np.flatnonzero(np.isin(types, matches[0]))


def _subsets(items: list[int], r: int) -> list[tuple[int, ...]]:
    from itertools import combinations

    return list(combinations(items, r))
