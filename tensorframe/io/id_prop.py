"""The ``id_prop`` reader: structure files plus a CSV of labels (``id_prop.csv``), the layout of
the authors' released ETGNN code (github.com/Yuxing0926/ETGNN, ``GraphData/data_parsing.py``),
so its users can move over. (The reader was called ``etgnn`` before; that name is now only
the backbone's, and ``format="etgnn"`` is a deprecated alias, see :mod:`tensorframe.io.read`.)

Layout::

    my_data/
      id_prop.csv        one row per structure: ID, v1, v2, ...   (no header row)
      BaTiO3-1.vasp      the structure of row "BaTiO3-1": <ID>.vasp (POSCAR) or <ID>.cif
      BaTiO3-2.vasp
      ...

- The CSV has no header (ETGNN reads every row as data); a first row whose second cell is
  not a number is taken as a header and skipped. Blank rows are skipped.
- The values of a row are one label, ``field``, flattened row-major: for an atom-level
  field (``born_charges``), 3^rank numbers per atom, atoms in the order of the structure
  file (N x 9 for Born charges: Z_xx Z_xy Z_xz Z_yx ... of atom 0, then atom 1, ...); for a
  structure-level field, 3^rank numbers (9 for ``dielectric``, 27 for ``piezo`` as the full
  Cartesian e_ijk, 1 for a scalar such as ``energy``). This is ETGNN's ``rank_tensor``
  reshape ``(-1, 3**rank)``. Pass ``voigt=[field]`` for labels in Voigt form instead.
- Structures are read with pymatgen's ``Structure.from_file``, as ETGNN does, so the atom
  order (which the per-atom labels follow) is the one ETGNN users labelled against.
  ``file_type`` is ETGNN's option: ``"poscar"`` (files ``<ID>.vasp``) or ``"cif"``
  (``<ID>.cif``); by default the reader takes whichever exists.
- ``path`` is the CSV itself or the folder holding ``id_prop.csv``; ``structures`` is the
  folder of structure files (ETGNN's ``crystal_path``), by default the CSV's folder.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from tensorframe.io.convert import to_sample
from tensorframe.io.labels import check_units, label_array, voigt_kinds
from tensorframe.io.validation import MIN_DISTANCE, describe_exception, not_found, structure_sample
from tensorframe.specs import FieldTable
from tensorframe.types import Sample

EXTENSIONS = {"poscar": (".vasp",), "cif": (".cif",), None: (".vasp", ".cif")}


def read_id_prop(
    path: str | Path,
    field: str | None = None,
    structures: str | Path | None = None,
    file_type: str | None = None,
    units: dict[str, str] | None = None,
    voigt: list[str] | dict[str, str] | None = None,
    min_distance: float = MIN_DISTANCE,
    *,
    fields: FieldTable,
) -> list[Sample]:
    """One Sample per CSV row, labelled with ``field``.

    Args:
        fields: the field table (:attr:`Registry.fields <tensorframe.registry.Registry.fields>`)
            ``field`` is looked up in.
        field: the registered field the CSV values are (``"born_charges"``, ``"dielectric"``, ...).
        structures: folder of ``<ID>.vasp`` / ``<ID>.cif`` files (default: the CSV's folder).
        file_type: ``"poscar"`` or ``"cif"`` (ETGNN's option), or None for either.
        units: {field: unit of the CSV}; voigt: fields given in Voigt form.
        min_distance: atoms closer than this (Å) are an error; 0 turns the check off.

    Raises:
        FileNotFoundError: no CSV, or no structure file for a row's ID (naming both).
        ValueError: naming the CSV, the row (structure index) and ID, and the field:
            non-numeric values, a wrong count for the structure's atoms, NaN, bad structures.
    """
    table = Path(path)
    if table.is_dir():
        table = table / "id_prop.csv"
    if not table.is_file():
        raise not_found(table)
    folder = Path(structures) if structures is not None else table.parent
    if file_type not in EXTENSIONS:
        raise ValueError(f"file_type: expected 'poscar' or 'cif', got {file_type!r}")
    if field is None:
        raise ValueError(
            f"{table}: the id_prop reader needs field= (the field the CSV values are, e.g. 'born_charges' with "
            f"9 numbers per atom, or 'dielectric' with 9 per structure)"
        )
    if field not in fields:
        raise ValueError(f"field: unknown field {field!r}; valid choices: {', '.join(sorted(fields))}")
    spec = fields[field]
    scale = check_units(units).get(field, 1.0)
    kind = voigt_kinds(voigt).get(field)
    samples: list[Sample] = []
    for row_number, row in _rows(table):
        index = len(samples)
        where = f"{table}: structure {index} (row {row_number}, ID {row[0]!r})"
        structure_file = _structure_file(folder, row[0], file_type, where)
        sample = structure_sample(lambda f=structure_file: to_sample(_read_structure(f)), where, min_distance)
        values = _numbers(row[1:], where, field)
        label = label_array(values, spec, sample.num_atoms, where, voigt_kind=kind, scale=scale)
        samples.append(sample.with_targets({field: label}))
    if not samples:
        raise ValueError(f"{table}: no rows")
    return samples


def _rows(table: Path) -> list[tuple[int, list[str]]]:
    try:
        with open(table, newline="") as handle:
            rows = [(n + 1, [cell.strip() for cell in row]) for n, row in enumerate(csv.reader(handle))]
    except (UnicodeDecodeError, csv.Error) as error:
        raise ValueError(f"{table}: cannot be read as CSV: {error}") from None
    rows = [(n, row) for n, row in rows if any(row)]
    if rows and len(rows[0][1]) > 1 and not _is_number(rows[0][1][1]):
        rows = rows[1:]  # a header row
    for n, row in rows:
        if len(row) < 2 or not row[0]:
            raise ValueError(f"{table}: row {n}: expected an ID and at least one value, got {row!r}")
    return rows


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _numbers(cells: list[str], where: str, field: str) -> np.ndarray:
    try:
        return np.array([float(cell) for cell in cells], dtype=np.float64)
    except ValueError:
        bad = next(cell for cell in cells if not _is_number(cell))
        raise ValueError(f"{where}, field {field!r}: value {bad!r} is not a number") from None


def _structure_file(folder: Path, identifier: str, file_type: str | None, where: str) -> Path:
    candidates = [folder / f"{identifier}{ext}" for ext in EXTENSIONS[file_type]]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{where}: no structure file; expected {' or '.join(str(c) for c in candidates)}")


def _read_structure(file: Path):
    from pymatgen.core import Structure  # lazy: heavy, kept out of `import tensorframe`

    try:
        return Structure.from_file(str(file))
    except Exception as error:  # noqa: BLE001 - pymatgen raises many kinds for a broken file
        raise ValueError(f"{file} cannot be read (truncated or malformed?): pymatgen: {describe_exception(error)}") from None
