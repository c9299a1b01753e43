"""Any structure file ase can read (extended XYZ, CIF, POSCAR, ...), labels included.

Labels are taken from ``atoms.arrays`` (atom-level) and ``atoms.info`` (structure-level)
under the names of registered fields, reshaped to the field's shape; ``key_map`` renames
file keys to field names (``{"REF_dipole": "dipole"}``). Forces and energies attached by
an ase calculator (extended XYZ ``forces=`` / ``energy=``) are read too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tensorframe.io.convert import to_sample
from tensorframe.types import Sample


def read_ase(path: str | Path, key_map: dict[str, str] | None = None, index: str = ":", format: str | None = None) -> list[Sample]:
    """Every structure in ``path``; raises ValueError naming the file, structure and field."""
    import ase.io

    from tensorframe.registry import get_registry

    fields = get_registry().items["field"]
    key_map = dict(key_map or {})
    try:
        images = ase.io.read(str(path), index=index, format=format)
    except Exception as error:  # noqa: BLE001 - ase raises many kinds
        raise ValueError(f"{path}: cannot be read as a structure file: {type(error).__name__}: {error}") from error
    images = images if isinstance(images, list) else [images]
    samples = []
    for number, atoms in enumerate(images):
        sample = to_sample(atoms, number)
        found: dict[str, np.ndarray] = {}
        sources = dict(atoms.info)
        sources.update({k: v for k, v in atoms.arrays.items() if k not in ("numbers", "positions")})
        if atoms.calc is not None:
            sources.update(getattr(atoms.calc, "results", {}))
        for key, value in sources.items():
            name = key_map.get(key, key)
            if name not in fields:
                continue
            spec = fields[name]
            shape = ((sample.num_atoms,) if spec.level == "atom" else ()) + spec.shape
            array = np.asarray(value, dtype=np.float64)
            if array.size != int(np.prod(shape)):
                raise ValueError(
                    f"{path}: structure {number}, field {name!r} (key {key!r}): expected {int(np.prod(shape))} "
                    f"numbers for shape {shape}, got shape {array.shape}"
                )
            found[name] = array.reshape(shape)
        samples.append(sample.with_targets(found))
    return samples
