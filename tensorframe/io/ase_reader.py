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

Before ase reads, :func:`prescan` checks the layout ase trusts: the frame headers of an
(extended) XYZ file against the lines present (a header claiming 10^9 atoms would hang ase),
the scale factor of a POSCAR. Nothing is reinterpreted: a zero lattice vector in a periodic
direction, a partially occupied CIF site and an unknown element symbol are errors. The one
convention kept: an extended XYZ frame whose ``Lattice`` is all zero and that has no ``pbc=``
key (ase reads it as periodic) is a molecule; with ``pbc="T T T"`` it is refused.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tensorframe.io.convert import to_sample
from tensorframe.io.labels import DEFAULT_KEY_MAP, LabelError, check_units, collect_labels, voigt_kinds
from tensorframe.io.prescan import XyzFrame, check_poscar_scale, open_binary, scan_xyz
from tensorframe.io.stress import check_stress_cell
from tensorframe.io.validation import (
    MIN_DISTANCE,
    InputError,
    check_ase_ordered,
    check_same_labels,
    describe_exception,
    not_found,
    structure_sample,
)
from tensorframe.specs import FieldTable
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
    *,
    fields: FieldTable,
) -> list[Sample]:
    """Every structure in ``path`` (``index`` selects frames the way ``ase.io.read`` does).

    Args:
        fields: the field table (:attr:`Registry.fields <tensorframe.registry.Registry.fields>`):
            file keys are read as the fields named there.
        key_map: file key -> field name; wins over the default keys for the fields it names.
        default_keys: also map the common keys of :data:`DEFAULT_KEY_MAP`.
        units: {field: unit of the file}, converted to tensorframe's units.
        voigt: fields stored as flat Voigt lists (or {field: kind}).
        min_distance: atoms closer than this (Å) are an error; 0 turns the check off.

    Shapes: each Sample's targets hold atom-level fields as (N, 3, ...) and structure-level
    fields as (3, ...), reshaped from the file's flat rows (row-major).

    Raises:
        FileNotFoundError: no such file.
        ValueError: one line naming the file, the structure (its frame number in the file)
            and, for a bad label, the field and the key it came from (wrong size, NaN,
            missing in some structures, a stress on a structure not periodic in 3D); a
            frame header that disagrees with the file, a zero or dependent lattice vector
            (``field 'cell'``), a partially occupied site, unknown elements, overlapping
            atoms and whatever ase complains about likewise.
    """
    import ase.io  # lazy: heavy, kept out of `import tensorframe`

    key_map = merged_key_map(key_map, default_keys)
    scales = check_units(units)
    kinds = voigt_kinds(voigt)
    if not Path(path).exists():
        raise not_found(path)
    ase_format = format or guess_ase_format(path)
    frames = prescan(path, ase_format)
    frame_of = _frame_numbers(index, len(frames) if frames is not None else None)
    samples: list[Sample] = []
    wheres: list[str] = []
    try:
        for number, atoms in enumerate(ase.io.iread(str(path), index=index, format=format)):
            where = f"{path}: structure {frame_of(number)}"
            if frames is not None and isinstance(frame_of(number), int):
                _molecule_convention(atoms, frames[frame_of(number)])
            _check_ordered(atoms, path, ase_format, frame_of(number), where)
            sample = structure_sample(lambda atoms=atoms: to_sample(atoms), where, min_distance)
            samples.append(sample.with_targets(_labels(atoms, sample, fields, key_map, where, kinds, scales)))
            wheres.append(where)
    except (FileNotFoundError, InputError):
        raise
    except Exception as error:  # noqa: BLE001 - ase raises many kinds for a malformed file
        raise _read_error(error, path, frame_of(len(samples)), frames, ase_format) from error
    if not samples:
        raise ValueError(f"{path}: no structures found for index {index!r}")
    check_same_labels(samples, wheres)
    return samples


def guess_ase_format(path: str | Path) -> str | None:
    """ase's name for the format of ``path`` (from its name and first bytes), or None."""
    from ase.io.formats import filetype  # lazy: heavy, kept out of `import tensorframe`

    try:
        return filetype(str(path))
    except Exception:  # noqa: BLE001 - unknown or unreadable: ase itself will say so
        return None


def prescan(path: str | Path, ase_format: str | None) -> list[XyzFrame] | None:
    """Check the layout of ``path`` before ase reads it: the frame headers of an (extended)
    XYZ file (returned), the scale factor of a POSCAR.

    Raises:
        InputError: naming the file, the structure and what is wrong.
    """
    if ase_format in ("extxyz", "xyz"):
        return scan_xyz(path)
    if ase_format == "vasp":
        check_poscar_scale(path)
    return None


def _molecule_convention(atoms: Any, frame: XyzFrame) -> None:
    """Extended XYZ files of molecules often carry ``Lattice="0 0 0 0 0 0 0 0 0"`` and no
    ``pbc=``, which ase reads as periodic; a frame that does not declare ``pbc`` and whose
    whole lattice is zero is a molecule. A frame that declares ``pbc="T ..."``, or whose
    lattice is zero only in part, keeps its pbc and is refused by the cell check."""
    if not frame.declares_pbc and atoms.pbc.any() and not np.any(atoms.cell.array):
        atoms.pbc = False


def _check_ordered(atoms: Any, path: str | Path, ase_format: str | None, frame: int | str, where: str) -> None:
    """Refuse a partially occupied site, named by its CIF label where the file has one."""
    try:
        check_ase_ordered(atoms)
    except ValueError:
        labels = _cif_site_labels(path, frame) if ase_format == "cif" else None
        try:
            check_ase_ordered(atoms, labels)
        except ValueError as error:
            raise InputError(f"{where}: {error}") from None


def _cif_site_labels(path: str | Path, frame: int | str) -> list[str] | None:
    """The ``_atom_site_label`` column of the ``frame``-th data block with atoms, if any."""
    from ase.io.cif import parse_cif  # lazy: heavy, kept out of `import tensorframe`

    try:
        blocks = [block for block in parse_cif(str(path)) if block.has_structure()]
        labels = blocks[int(frame)].get("_atom_site_label")
    except Exception:  # noqa: BLE001 - the labels only name the site; without them it is numbered
        return None
    return [str(label) for label in labels] if labels is not None else None


def _read_error(
    error: Exception, path: str | Path, frame: int | str, frames: list[XyzFrame] | None, ase_format: str | None
) -> ValueError:
    """One line naming the file, the structure and what ase complained about."""
    where = f"{path}: structure {frame}"
    special = _SPECIAL_3X3.search(str(error))
    if special:  # ase's extended XYZ reader takes `stress` and `virial` as 9 numbers only
        return ValueError(
            f"{where}, key {special.group(1)!r}: extended XYZ needs 9 numbers "
            f"(a 3x3 matrix) for this key; store a 6-value Voigt stress under another key (key_map it to 'stress')"
        )
    message = describe_exception(error)
    if message.startswith("unknown element symbol") and frames is not None and isinstance(frame, int):
        atom = _atom_with_symbol(path, frames[frame], error.args[0])
        if atom is not None:
            return ValueError(f"{where}: atom {atom[0]} (line {atom[1]}) has {message}")
    reader = f"ase's {ase_format!r} reader" if ase_format else "ase"
    return ValueError(f"{where} cannot be read (truncated or malformed file?): {reader}: {message}")


def _atom_with_symbol(path: str | Path, frame: XyzFrame, symbol: str) -> tuple[int, int] | None:
    """(atom index, line number) of the first atom line of ``frame`` whose first column is
    ``symbol`` (an error path: reads the file up to that frame)."""
    first = frame.line + 2  # the count line, then the comment line
    with open_binary(path) as handle:
        for number, line in enumerate(handle, start=1):
            if number >= first + frame.num_atoms:
                break
            words = line.split()
            if number >= first and words and words[0].decode(errors="replace") == symbol:
                return number - first, number
    return None


def merged_key_map(key_map: dict[str, str] | None, default_keys: bool = True) -> dict[str, str]:
    """The user's key_map over the default keys (a default is dropped when the user maps
    another key to its field)."""
    user = dict(key_map or {})
    merged = {k: v for k, v in DEFAULT_KEY_MAP.items() if v not in user.values()} if default_keys else {}
    merged.update(user)
    return merged


def _frame_numbers(index: str, num_frames: int | None = None) -> Callable[[int], int | str]:
    """Position in the selection -> frame number in the file, where the index (or the
    number of frames in the file, when known) tells it."""
    from ase.io.formats import string2index  # lazy: heavy, kept out of `import tensorframe`

    selection = string2index(index) if isinstance(index, str) else index
    if num_frames is not None:
        try:
            chosen = range(num_frames)[selection]
        except IndexError:  # ase says so when it reads
            return lambda n: selection
        chosen = [chosen] if isinstance(chosen, int) else list(chosen)
        return lambda n: chosen[n] if n < len(chosen) else f"#{n} of selection {index!r}"
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


__all__ = ["LabelError", "guess_ase_format", "merged_key_map", "prescan", "read_ase"]
