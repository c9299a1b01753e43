"""Checks every reader runs on what it read: elements, positions, overlapping atoms, and
labels present in every structure.

Each error is a ValueError whose message starts with ``where`` (the file and the structure
index, e.g. ``"data.xyz: structure 3"``) and says what was expected.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tensorframe.types import Sample

MIN_DISTANCE = 0.3
"""Å. Two atoms closer than this are "overlapping" (a duplicated atom, a CIF with partial
occupancies, a unit mix-up). The shortest distance in the reactive DeePMD combustion data
is 0.52 Å; no chemical bond is shorter than 0.7 Å. Readers take ``min_distance`` (0 turns
the check off)."""

MAX_ATOMIC_NUMBER = 118

OCCUPANCY_TOLERANCE = 1e-3
"""A site whose occupancies sum to less than 1 - this, or that holds two species, is
partially occupied (disordered): refused, tensorframe needs an ordered structure."""


class InputError(ValueError):
    """Bad input found by a check (raised as is by readers, never re-wrapped)."""


def structure_sample(build: Callable[[], Sample], where: str, min_distance: float = MIN_DISTANCE) -> Sample:
    """``build()`` (a Sample without labels), its errors prefixed with ``where``, then checked."""
    try:
        sample = build()
    except InputError:
        raise
    except (ValueError, TypeError, KeyError) as error:
        raise InputError(located(where, describe_exception(error))) from None
    check_structure(sample, where, min_distance)
    return sample


def located(where: str, message: str) -> str:
    """``message`` after ``where``: ``"<where>, field 'x': ..."`` for a message about a field
    (the error convention), else ``"<where>: ..."``."""
    return f"{where}, {message}" if message.startswith("field ") else f"{where}: {message}"


def describe_exception(error: BaseException) -> str:
    """One line saying what went wrong, for an exception raised by a library reader (ase,
    pymatgen): its message with newlines folded; a KeyError as the element symbol or key it
    names; an empty message as the exception type and the line of code that raised it. The
    exception type is named only where the message alone would not say what happened."""
    text = " ".join(str(error).split())
    if isinstance(error, KeyError) and len(error.args) == 1:
        key = error.args[0]
        if isinstance(key, str) and re.fullmatch(r"[A-Z][a-z]{0,2}", key):
            from ase.data import atomic_numbers

            if key not in atomic_numbers:
                return f"unknown element symbol {key!r}"
        return f"missing key {key!r}"
    if text:
        return text
    return f"{type(error).__name__} raised at {_raise_site(error)}"


def _raise_site(error: BaseException) -> str:
    """``"ase/io/vasp.py line 311 (assert len(words) == 3)"``: where ``error`` was raised."""
    import traceback

    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return "an unknown place"
    frame = frames[-1]
    parts = Path(frame.filename).parts
    short = "/".join(parts[parts.index("site-packages") + 1 :] if "site-packages" in parts else parts[-2:])
    code = f" ({frame.line.strip()})" if frame.line else ""
    return f"{short} line {frame.lineno}{code}"


def check_periodic_cell(cell: np.ndarray, pbc: np.ndarray) -> None:
    """The lattice vectors (rows of ``cell`` (3, 3), Å) of the periodic directions (``pbc``
    (3,) bool) are finite, non-zero and linearly independent. A zero vector is never taken to
    mean "not periodic": only a structure declared non-periodic may lack a lattice.

    Raises:
        ValueError: ``"field 'cell': lattice vector 2 is zero; expected ..."``.
    """
    pbc = np.asarray(pbc, dtype=bool)
    if not pbc.any():
        return
    cell = np.asarray(cell, dtype=np.float64)
    directions = np.flatnonzero(pbc).tolist()
    expected = ("expected three linearly independent vectors for a periodic structure" if pbc.all() else
                f"expected linearly independent vectors for the periodic directions {directions} (pbc={pbc.tolist()})")
    hint = "; a molecule must be declared non-periodic (pbc=False; extended XYZ pbc=\"F F F\")"
    if not np.all(np.isfinite(cell[pbc])):
        raise ValueError(f"field 'cell': lattice vectors {cell.tolist()} contain NaN or inf; {expected}")
    zero = [i for i in directions if not np.any(cell[i])]
    if zero:
        vectors = f"lattice vector {zero[0]} is" if len(zero) == 1 else f"lattice vectors {zero} are"
        raise ValueError(f"field 'cell': {vectors} zero; {expected}{hint}")
    periodic = cell[pbc]
    if np.linalg.matrix_rank(periodic, tol=1e-8) < periodic.shape[0]:
        raise ValueError(f"field 'cell': lattice vectors {periodic.tolist()} are linearly dependent; {expected}")


def check_structure(sample: Sample, where: str, min_distance: float = MIN_DISTANCE) -> None:
    """Known elements, a usable cell, no two atoms (or periodic images) closer than ``min_distance``.

    Raises:
        ValueError: naming ``where``, the atom(s) and what was expected.
    """
    numbers = sample.numbers
    bad = np.flatnonzero((numbers < 1) | (numbers > MAX_ATOMIC_NUMBER))
    if bad.size:
        raise InputError(
            f"{where}: atom {int(bad[0])} has unknown element (atomic number {int(numbers[bad[0]])}); "
            f"expected 1-{MAX_ATOMIC_NUMBER}"
        )
    if sample.num_atoms == 0:
        raise InputError(f"{where}: no atoms")
    try:
        check_periodic_cell(sample.cell, sample.pbc)
    except ValueError as error:
        raise InputError(located(where, str(error))) from None
    if min_distance > 0:
        _check_overlap(sample, where, min_distance)


def _check_overlap(sample: Sample, where: str, min_distance: float) -> None:
    from tensorframe.graph.neighbors import find_pairs

    box = sample.cell if sample.pbc.any() else np.zeros((3, 3))
    # vesin's cell list is slow for a tiny cutoff (many cells); search 2 Å and filter.
    search = max(float(min_distance), 2.0)
    i, j, shift, dist = find_pairs(sample.positions, box, sample.pbc, search, full_list=False)
    close = dist < min_distance
    if close.any():
        k = int(np.argmin(np.where(close, dist, np.inf)))
        image = "" if not shift[k].any() else f" (periodic image {shift[k].astype(int).tolist()})"
        raise InputError(
            f"{where}: atoms {int(i[k])} and {int(j[k])}{image} overlap, {dist[k]:.3f} Å apart; "
            f"expected at least min_distance={min_distance} Å"
        )


def check_same_labels(samples: Sequence[Sample], wheres: Sequence[str]) -> None:
    """Every structure carries the same fields (a label missing from one structure is an error).

    Raises:
        ValueError: naming the first structure that lacks a field, and one that has it.
    """
    everything: dict[str, int] = {}
    for index, sample in enumerate(samples):
        for name in sample.targets:
            everything.setdefault(name, index)
    for index, sample in enumerate(samples):
        missing = [name for name in everything if name not in sample.targets]
        if missing:
            name = missing[0]
            raise InputError(
                f"{wheres[index]}, field {name!r}: missing, but given for {wheres[everything[name]]}; "
                f"every structure needs the same labels"
            )


def not_found(path: Any) -> FileNotFoundError:
    return FileNotFoundError(f"{path}: no such file or directory")


ORDER_IT = ("tensorframe needs an ordered structure — order it first "
            "(e.g. pymatgen OrderDisorderedStructureTransformation)")


def check_ase_ordered(atoms: Any, site_labels: Sequence[str] | None = None) -> None:
    """No partially occupied site in an ``ase.Atoms``: ase's CIF reader keeps each site's
    occupancies in ``atoms.info["occupancy"]`` ({site: {symbol: occupancy}}, sites counted in
    the file's order, ``atoms.arrays["spacegroup_kinds"]`` the site of each atom) but gives a
    mixed site one species and a vacancy a full atom.

    Args:
        site_labels: the file's site labels (CIF ``_atom_site_label``), to name a site by.

    Raises:
        ValueError: ``"site 'Na1' has partial occupancy (Na 0.5, K 0.5); ..."``.
    """
    occupancy = getattr(atoms, "info", {}).get("occupancy")
    if not isinstance(occupancy, dict):
        return
    kinds = atoms.arrays.get("spacegroup_kinds")
    sites = np.unique(kinds).tolist() if kinds is not None else sorted(occupancy, key=str)
    for site in sites:
        species = {str(k): float(v) for k, v in dict(occupancy.get(str(site), {})).items()}
        if _partial(species):
            name = (repr(site_labels[int(site)]) if site_labels is not None and int(site) < len(site_labels)
                    else f"{site} (counted in the file's order from 0)")
            raise ValueError(f"site {name} has partial occupancy ({_occupancies(species)}); {ORDER_IT}")


def check_pymatgen_ordered(structure: Any) -> None:
    """No partially occupied site in a pymatgen ``Structure``/``Molecule``.

    Raises:
        ValueError: ``"site 0 ('Na1') has partial occupancy (Na 0.5, K 0.5); ..."``.
    """
    if getattr(structure, "is_ordered", True) and all(
        sum(site.species.values()) >= 1 - OCCUPANCY_TOLERANCE for site in structure
    ):
        return
    for index, site in enumerate(structure):
        species = {str(element): float(value) for element, value in site.species.items()}
        if _partial(species):
            label = getattr(site, "label", None)
            name = f"{index} ({label!r})" if label else str(index)
            raise ValueError(f"site {name} has partial occupancy ({_occupancies(species)}); {ORDER_IT}")


def _partial(species: dict[str, float]) -> bool:
    present = [value for value in species.values() if value > OCCUPANCY_TOLERANCE]
    return len(present) > 1 or sum(species.values()) < 1 - OCCUPANCY_TOLERANCE


def _occupancies(species: dict[str, float]) -> str:
    return ", ".join(f"{symbol} {value:g}" for symbol, value in species.items())
