"""Any structure file ase can read (extended XYZ, CIF, POSCAR, ...), labels included.

Labels are taken from ``atoms.arrays`` (atom-level) and ``atoms.info`` (structure-level)
under the names of registered fields, reshaped row-major to the field's shape; ``key_map``
renames file keys to field names (``{"REF_dipole": "dipole"}``). Forces and energies attached
by an ase calculator (extended XYZ ``forces=`` / ``energy=``) are read too. Common keys with
fixed units are mapped without a key_map (:data:`tensorframe.io.labels.DEFAULT_KEY_MAP`:
``becs`` -> born_charges, ``eps``/``epsilon`` -> dielectric, ...); ``default_keys=False``
turns that off. ``units={field: unit}`` converts (e.g. ``{"energy": "Ha", "dipole": "e*bohr"}``);
``voigt=[field, ...]`` reads flat Voigt lists (see :mod:`tensorframe.io.labels`).

Stress and virial (:mod:`tensorframe.io.stress`): ``stress`` comes from ``atoms.info`` or the
calculator's results (extended XYZ ``stress="..."`` 9 numbers, which ase keeps as a Voigt
6-vector xx yy zz yz xz xy in a SinglePointCalculator), as a 3x3, 9 or 6 (Voigt) numbers, in
ASE's sign (positive under tension), stored as (3, 3) eV/Å^3 (``units={"stress": "GPa"}``
converts); only on structures periodic in all three directions. ``virial`` (3x3 or 9 numbers,
eV, ``W = -V sigma``) comes from ``atoms.info``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tensorframe.io.checks import MIN_DISTANCE, InputError, check_same_labels, structure_sample
from tensorframe.io.convert import to_sample
from tensorframe.io.labels import DEFAULT_KEY_MAP, LabelError, check_units, collect_labels, voigt_kinds
from tensorframe.io.stress import check_stress_cell
from tensorframe.types import Sample

# ase's message for a `stress=` / `virial=` / `Lattice=` value that is not 9 numbers
_SPECIAL_3X3 = re.compile(r"info item (\w+), expecting special 3x3 matrix")


def read_ase(
    path: str | Path,
    key_map: dict[str, str] | None = None,
    index: str = ":",
    format: str | None = None,
    default_keys: bool = True,
    units: dict[str, str] | None = None,
    voigt: list[str] | dict[str, str] | None = None,
    min_distance: float = MIN_DISTANCE,
) -> list[Sample]:
    """Every structure in ``path`` (``index`` selects frames the way ``ase.io.read`` does).

    Args:
        key_map: file key -> field name; wins over the default keys for the fields it names.
        default_keys: also map the common keys of :data:`DEFAULT_KEY_MAP`.
        units: {field: unit of the file}, converted to tensorframe's units.
        voigt: fields stored as flat Voigt lists (or {field: kind}).
        min_distance: atoms closer than this (Å) are an error; 0 turns the check off.

    Shapes: each Sample's targets hold atom-level fields as (N, 3, ...) and structure-level
    fields as (3, ...), reshaped from the file's flat rows (row-major).

    Raises:
        ValueError: naming the file, the structure (its frame number in the file) and,
            for a bad label, the field and the key it came from (wrong size, NaN, missing
            in some structures, a stress on a structure not periodic in 3D); unknown
            elements and overlapping atoms likewise.
    """
    import ase.io

    from tensorframe.registry import get_registry

    fields = get_registry().items["field"]
    key_map = merged_key_map(key_map, default_keys)
    scales = check_units(units)
    kinds = voigt_kinds(voigt)
    frame_of = _frame_numbers(index)
    samples: list[Sample] = []
    wheres: list[str] = []
    try:
        for number, atoms in enumerate(ase.io.iread(str(path), index=index, format=format)):
            where = f"{path}: structure {frame_of(number)}"
            sample = structure_sample(lambda atoms=atoms: to_sample(atoms), where, min_distance)
            samples.append(sample.with_targets(_labels(atoms, sample, fields, key_map, where, kinds, scales)))
            wheres.append(where)
    except (FileNotFoundError, InputError):
        raise
    except Exception as error:  # noqa: BLE001 - ase raises many kinds for a malformed file
        special = _SPECIAL_3X3.search(str(error))
        if special:  # ase's extended XYZ reader takes `stress` and `virial` as 9 numbers only
            raise ValueError(
                f"{path}: structure {frame_of(len(samples))}, key {special.group(1)!r}: extended XYZ needs 9 numbers "
                f"(a 3x3 matrix) for this key; store a 6-value Voigt stress under another key (key_map it to 'stress')"
            ) from error
        raise ValueError(
            f"{path}: structure {frame_of(len(samples))} cannot be read (truncated or malformed file?): {type(error).__name__}: {error}"
        ) from error
    if not samples:
        raise ValueError(f"{path}: no structures found for index {index!r}")
    check_same_labels(samples, wheres)
    return samples


def merged_key_map(key_map: dict[str, str] | None, default_keys: bool = True) -> dict[str, str]:
    """The user's key_map over the default keys (a default is dropped when the user maps
    another key to its field)."""
    user = dict(key_map or {})
    merged = {k: v for k, v in DEFAULT_KEY_MAP.items() if v not in user.values()} if default_keys else {}
    merged.update(user)
    return merged


def _frame_numbers(index: str) -> Callable[[int], int | str]:
    """Position in the selection -> frame number in the file, where the index tells it."""
    from ase.io.formats import string2index

    selection = string2index(index) if isinstance(index, str) else index
    if isinstance(selection, int):
        return lambda n: selection
    start, step = selection.start or 0, selection.step or 1
    if start >= 0 and step > 0:
        return lambda n: start + n * step
    return lambda n: f"#{n} of selection {index!r}"


def _labels(
    atoms: Any, sample: Sample, fields: dict[str, Any], key_map: dict[str, str], where: str,
    kinds: dict[str, str], scales: dict[str, float],
) -> dict[str, np.ndarray]:
    sources = dict(atoms.info)
    sources.update({k: v for k, v in atoms.arrays.items() if k not in ("numbers", "positions")})
    if atoms.calc is not None:
        sources.update(getattr(atoms.calc, "results", {}))
    labels = collect_labels(sources, fields, key_map, sample.num_atoms, where, kinds, scales)
    check_stress_cell(labels, sample.pbc, where, sources, key_map)
    return labels


__all__ = ["LabelError", "merged_key_map", "read_ase"]
