"""Pick a registered reader by explicit name, by what a path looks like, or by extension.

Built-in formats (``format=`` names; options in each reader's docstring and docs/data-formats.md):

    ase     extended XYZ, CIF, POSCAR, ... (anything ase reads)   .xyz .extxyz .cif .vasp POSCAR ...
    deepmd  DeePMD-kit npy systems                                a directory with type.raw
    vasp    VASP OUTCAR / vasprun.xml (LEPSILON, LCALCEPS; E, F, stress)  OUTCAR*, vasprun*.xml*
    id_prop ETGNN's layout: id_prop.csv + <ID>.vasp / <ID>.cif   a directory with id_prop.csv, .csv
    asedb   ASE databases                                         .db

``format="etgnn"`` (the ``id_prop`` reader's old name, now only a backbone's) still works: it
reads with ``id_prop`` and warns once (:data:`RENAMED_FORMATS`).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from tensorframe.registry import Registry, get_registry
from tensorframe.types import Sample

_COMPRESSED = (".gz", ".bz2", ".xz")


def read_structures(path: str | Path, format: str | None = None, registry: Registry | None = None,
                    **options: Any) -> list[Sample]:
    """Samples from ``path`` with the reader named ``format``; without one, the reader that
    :func:`guess_format` picks. ``options`` go to the reader, with ``fields``: the field table
    of ``registry`` (default: the installed plugins, :func:`~tensorframe.registry.get_registry`)."""
    registry = registry or get_registry()
    name = current_format_name(format) if format is not None else guess_format(path, registry)
    return registry.get("reader", name).read(path, fields=registry.fields, **options)


RENAMED_FORMATS: dict[str, str] = {"etgnn": "id_prop"}
"""Old reader names still accepted by :func:`read_structures` (``{old: new}``): users' configs
say ``format: etgnn``. Each warns once per process (a FutureWarning)."""

_WARNED: set[str] = set()


def current_format_name(format: str) -> str:
    """``format``, or the new name of a renamed reader (:data:`RENAMED_FORMATS`), with a
    FutureWarning the first time an old name is used in this process."""
    new = RENAMED_FORMATS.get(format)
    if new is None:
        return format
    if format not in _WARNED:
        _WARNED.add(format)
        warnings.warn(f"format {format!r}: renamed to {new!r} ({format!r} names a backbone); "
                      f"write format={new!r} (format: {new} in a training config)", FutureWarning, stacklevel=3)
    return new


def guess_format(path: str | Path, registry: Registry | None = None) -> str:
    """The reader for ``path``: a DeePMD system or an ``id_prop`` folder for a directory, ``vasp``
    for names with OUTCAR or vasprun, else the first reader (by name) whose extensions match
    the name without a compression suffix, else ``ase``. Readers are those of ``registry``
    (default: the installed plugins).

    Raises:
        FileNotFoundError: a directory or file that does not exist.
        ValueError: a directory that is no known layout.
    """
    path = Path(path)
    if path.is_dir():
        if (path / "id_prop.csv").is_file():
            return "id_prop"
        if (path / "type.raw").is_file() or next(path.rglob("type.raw"), None) is not None:
            return "deepmd"
        raise ValueError(
            f"{path}: a directory, but neither a DeePMD system (type.raw) nor an id_prop folder (id_prop.csv); "
            f"pass format= to choose a reader"
        )
    name = path.name.lower()
    if "outcar" in name or "vasprun" in name:
        return "vasp"
    for suffix in _COMPRESSED:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    registry = registry or get_registry()
    for reader in registry.names("reader"):
        if registry.items["reader"][reader].matches(name):
            return reader
    return "ase"
