"""The embedded default data set: small molecules labelled with PySCF at RHF/6-31G*.

Made by ``scripts/make_default_data.py``; how, and with which conventions, is written in
``tensorframe/data/README-molecules.md``. Each structure carries the targets

    energy (), forces (N, 3), dipole (3,), polarizability (3, 3), born_charges (N, 3, 3),
    hyperpolarizability (3, 3, 3)

in the units of the field registry (eV, eV/Å, e·Å, a.u., e, a.u.).

File layout (one ``.npz``, concatenated arrays plus offsets): ``numbers`` (A,),
``positions`` (A, 3) in Å, ``offsets`` (S+1,) so that structure ``s`` holds atoms
``offsets[s]:offsets[s+1]``, structure-level fields (S, ...), atom-level fields (A, ...),
``names`` (S,) molecule names, ``meta`` (a JSON string). Keys with a dot (``rotated.*``,
``apt_check.*``, ``energy_check.*``) hold the checks that tests/test_default_data.py runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from tensorframe.types import Sample

DEFAULT_DATASET_FILE = Path(__file__).parent / "data" / "molecules.npz"
ATOM_FIELDS: tuple[str, ...] = ("forces", "born_charges")
STRUCTURE_FIELDS: tuple[str, ...] = ("energy", "dipole", "polarizability", "hyperpolarizability")
DEFAULT_FIELDS: tuple[str, ...] = ("energy", "forces", "dipole", "polarizability", "born_charges", "hyperpolarizability")


def default_dataset_path() -> Path:
    """Where the embedded data set lives inside the installed package."""
    return DEFAULT_DATASET_FILE


def _require(data: Any, key: str, path: Path) -> np.ndarray:
    if key not in data:
        raise ValueError(f"{path}: missing array {key!r} (found {sorted(data.keys())})")
    return np.asarray(data[key])


def samples_from_arrays(arrays: dict[str, np.ndarray], path: Path, prefix: str = "") -> list[Sample]:
    """Samples from the concatenated layout; ``prefix`` picks a group (``""`` or ``"rotated."``).

    Shapes:
        arrays[prefix + "numbers"] (A,), ["positions"] (A, 3), ["offsets"] (S+1,),
        atom-level fields (A, ...), structure-level fields (S, ...)
    """
    numbers = _require(arrays, prefix + "numbers", path)
    positions = _require(arrays, prefix + "positions", path)
    offsets = _require(arrays, prefix + "offsets", path).astype(np.int64)
    num_structures = offsets.shape[0] - 1
    if offsets.ndim != 1 or num_structures < 0 or offsets[0] != 0 or offsets[-1] != numbers.shape[0] or np.any(np.diff(offsets) <= 0):
        raise ValueError(f"{path}: {prefix}offsets must rise from 0 to the number of atoms {numbers.shape[0]}")
    labels = {f: _require(arrays, prefix + f, path) for f in DEFAULT_FIELDS}
    for f, value in labels.items():
        expected = numbers.shape[0] if f in ATOM_FIELDS else num_structures
        if value.shape[0] != expected:
            raise ValueError(f"{path}: field {prefix}{f!r} has {value.shape[0]} rows, expected {expected}")
    samples = []
    for s in range(num_structures):
        a, b = offsets[s], offsets[s + 1]
        targets = {f: np.asarray(labels[f][a:b] if f in ATOM_FIELDS else labels[f][s], dtype=np.float64) for f in DEFAULT_FIELDS}
        samples.append(Sample(numbers[a:b], positions[a:b], targets=targets))
    return samples


def load_default_arrays(path: str | Path | None = None) -> dict[str, np.ndarray]:
    """Every array of the embedded file (or ``path``), checks included, by key."""
    path = Path(path) if path is not None else DEFAULT_DATASET_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: default data set not found (make it with scripts/make_default_data.py)")
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def default_dataset_metadata(path: str | Path | None = None) -> dict[str, Any]:
    """How the data were made: method, basis, code version, finite-difference steps, units."""
    arrays = load_default_arrays(path)
    return json.loads(str(_require(arrays, "meta", Path(path or DEFAULT_DATASET_FILE))))


def load_default_dataset(path: str | Path | None = None) -> list[Sample]:
    """The embedded molecules as Samples (cell zeros, pbc False) with the six default targets.

    Shapes (per Sample):
        numbers (N,), positions (N, 3) in Å; targets energy (), forces (N, 3), dipole (3,),
        polarizability (3, 3), born_charges (N, 3, 3), hyperpolarizability (3, 3, 3)
    """
    path = Path(path) if path is not None else DEFAULT_DATASET_FILE
    return samples_from_arrays(load_default_arrays(path), path)
