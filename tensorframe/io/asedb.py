"""ASE databases (``.db``, SQLite or JSON): structures plus labels from each row.

Labels come from the row's ``data`` (arrays), its key-value pairs (numbers) and the
calculator columns (``energy``, ``forces``, ``stress``, ``dipole``), under the names of
registered fields, renamed by ``key_map`` (data keys may contain spaces). ASE stores the
``stress`` column as a Voigt 6-vector xx yy zz yz xz xy in ASE's sign (positive under
tension), read as a (3, 3) tensor in eV/Å^3, on rows periodic in all three directions only;
a ``virial`` (eV, ``W = -V sigma``) comes from ``data`` (see :mod:`tensorframe.io.stress`).
Labels with the Voigt shape (3, 6) of a rank-3 field or (6, 6) of a rank-4 field are
converted to Cartesian tensors (:mod:`tensorframe.io.voigt`): e_ijk = e_iJ for ``piezo``,
d_ijk = d_iJ / 2 for shear J for ``piezo_strain``, C_ijkl = C_IJ for ``elastic``;
``voigt={field: kind}`` overrides the kind.

Example, the ABO3 P4mm set (see its PROVENANCE.md; the source flips the sign of whole piezo
tensors by a heuristic, so their sign is not tied to the stored positions)::

    read_structures("ABO3_P4mm_piezo.db", key_map={
        "Born Effective Charge Tensor": "born_charges",
        "Static Dielectric Tensor": "dielectric",            # electronic eps_inf
        "Piezoelectric Stress Tensor eij": "piezo",          # total, C/m^2, Voigt 3x6
        "Piezoelectric Strain Tensor dij": "piezo_strain",   # pC/N, Voigt 3x6
        "Elastic Stiffness Tensor Cij": "elastic",           # GPa, Voigt 6x6
    })
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tensorframe.io.convert import to_sample
from tensorframe.io.labels import check_units, collect_labels, voigt_kinds
from tensorframe.io.stress import check_stress_cell
from tensorframe.io.validation import MIN_DISTANCE, check_same_labels, describe_exception, not_found, structure_sample
from tensorframe.specs import FieldTable
from tensorframe.types import Sample


def read_asedb(
    path: str | Path,
    key_map: dict[str, str] | None = None,
    selection: str | None = None,
    limit: int | None = None,
    units: dict[str, str] | None = None,
    voigt: list[str] | dict[str, str] | None = None,
    min_distance: float = MIN_DISTANCE,
    *,
    fields: FieldTable,
) -> list[Sample]:
    """The rows of an ASE database, in id order.

    Args:
        fields: the field table (:attr:`Registry.fields <tensorframe.registry.Registry.fields>`):
            data keys are read as the fields named there.
        key_map: {data or key-value key: field}.
        selection: an ``ase.db`` query (``"id<=10"``, ``"natoms=5"``, ``"Gap>1"``); None: all rows.
        limit: read at most this many rows.
        units: {field: unit of the database}; voigt: fields in Voigt form (or {field: kind}).
        min_distance: atoms closer than this (Å) are an error; 0 turns the check off.

    Shapes: atom-level labels (N, 3, ...), structure-level (3, ...).

    Raises:
        FileNotFoundError: no such file.
        ValueError: naming the file, the structure (row id) and the field: not a database,
            bad labels (wrong size, NaN, missing in some rows, a stress on a row not periodic
            in 3D), unknown elements, overlaps.
    """
    import ase.db  # lazy: heavy, kept out of `import tensorframe`

    path = Path(path)
    if not path.exists():
        raise not_found(path)
    key_map = dict(key_map or {})
    scales = check_units(units)
    kinds = voigt_kinds(voigt)
    samples: list[Sample] = []
    wheres: list[str] = []
    try:
        database = ase.db.connect(str(path))
        rows = list(database.select(selection, limit=limit, sort="id"))
    except Exception as error:  # noqa: BLE001 - sqlite3 / json / ase raise many kinds
        raise ValueError(f"{path}: cannot be read as an ASE database: {describe_exception(error)}") from None
    for row in rows:
        where = f"{path}: structure {len(samples)} (row id {row.id})"
        sample = structure_sample(lambda row=row: to_sample(row.toatoms()), where, min_distance)
        sources = _sources(row)
        labels = collect_labels(sources, fields, key_map, sample.num_atoms, where, kinds, scales)
        check_stress_cell(labels, sample.pbc, where, sources, key_map)
        samples.append(sample.with_targets(labels))
        wheres.append(where)
    if not samples:
        raise ValueError(f"{path}: no rows" + (f" match selection {selection!r}" if selection else ""))
    check_same_labels(samples, wheres)
    return samples


def _sources(row: Any) -> dict[str, Any]:
    sources: dict[str, Any] = {}
    for column in ("energy", "forces", "stress", "dipole"):
        value = row.get(column)
        if value is not None:
            sources[column] = value
    sources.update(row.key_value_pairs)
    sources.update(row.data)
    return sources
