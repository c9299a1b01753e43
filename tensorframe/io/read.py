"""Pick a registered reader by explicit name, by what a path looks like, or by extension.

Built-in formats (``format=`` names; options in each reader's docstring and docs/data-formats.md):

    ase     extended XYZ, CIF, POSCAR, ... (anything ase reads)   .xyz .extxyz .cif .vasp POSCAR ...
    deepmd  DeePMD-kit npy systems                                a directory with type.raw
    vasp    VASP OUTCAR / vasprun.xml (LEPSILON, LCALCEPS; E, F, stress)  OUTCAR*, vasprun*.xml*
    etgnn   ETGNN layout: id_prop.csv + <ID>.vasp / <ID>.cif      a directory with id_prop.csv, .csv
    asedb   ASE databases                                         .db
"""

from __future__ import annotations

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
    name = format if format is not None else guess_format(path, registry)
    return registry.get("reader", name).read(path, fields=registry.fields, **options)


def guess_format(path: str | Path, registry: Registry | None = None) -> str:
    """The reader for ``path``: a DeePMD system or an ETGNN folder for a directory, ``vasp``
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
            return "etgnn"
        if (path / "type.raw").is_file() or next(path.rglob("type.raw"), None) is not None:
            return "deepmd"
        raise ValueError(
            f"{path}: a directory, but neither a DeePMD system (type.raw) nor an ETGNN folder (id_prop.csv); "
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
