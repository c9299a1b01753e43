"""The matten 29Si NMR data set (``si_nmr_data.json``, Venetos et al., J. Phys. Chem. A 2023).

The file is a JSON dict of columns, each keyed by structure ("0", "1", ...): ``structure``
(a pymatgen Structure dict), ``species``, ``nmr_tensor`` (M 3x3 tensors, one per selected
atom, in atom order), ``atom_selector`` (per-atom booleans), ``sigma_iso``, ``Qn``.

The source labels one Si per symmetry orbit. With ``fill_equivalent=True`` (the default) each
unlabelled atom equivalent to a labelled one gets its tensor by the space-group operation g
that maps them: ``sigma_{p_g(i)} = R_g sigma_i R_g^T`` (R_g the Cartesian rotation; exact for
a rank-2 parity-even tensor). Atoms with no label (O, and Si not reached at ``symprec``) get
zeros, so errors should be counted on the labelled element only. Labels go to the per-atom
field ``nmr_shielding`` (N, 3, 3), unsymmetrised, in the file's units (probably ppm).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tensorframe.io.validation import not_found
from tensorframe.space_group import crystal_symmetry
from tensorframe.specs import FieldTable
from tensorframe.types import Sample


def read_matten_nmr(
    path: str | Path, limit: int | None = None, fill_equivalent: bool = True, symprec: float = 1e-3,
    drop_unfilled: bool = True, *, fields: FieldTable | None = None,
) -> list[Sample]:
    """Structures of the matten NMR JSON with ``nmr_shielding`` labels.

    Args:
        limit: read at most this many structures (in key order).
        fill_equivalent: give symmetry-equivalent atoms their tensors (module docstring).
        drop_unfilled: skip structures where an atom of a labelled element stays unlabelled.
        fields: the field table the reader contract passes; not consulted (the labels are
            always the built-in ``nmr_shielding``).

    Shapes: each Sample's targets["nmr_shielding"] is (N, 3, 3).

    Raises:
        FileNotFoundError: no such file. ValueError: a structure whose tensors do not match its selector.
    """
    from pymatgen.core import Structure  # lazy: heavy, kept out of `import tensorframe`

    path = Path(path)
    if not path.is_file():
        raise not_found(path)
    data = json.loads(path.read_text())
    keys = sorted(data["structure"], key=int)
    if limit is not None:
        keys = keys[:limit]
    samples: list[Sample] = []
    for key in keys:
        structure = Structure.from_dict(data["structure"][key])
        selector = np.asarray(data["atom_selector"][key], dtype=bool)
        tensors = np.asarray(data["nmr_tensor"][key], dtype=np.float64).reshape(-1, 3, 3)
        where = f"{path}: structure {key}"
        if selector.shape != (len(structure),) or tensors.shape[0] != selector.sum():
            raise ValueError(f"{where}: {tensors.shape[0]} nmr_tensor entries for {selector.sum()} selected atoms "
                             f"of {len(structure)}")
        sample = Sample(np.asarray(structure.atomic_numbers, dtype=np.int64), structure.cart_coords.copy(),
                        structure.lattice.matrix.copy(), np.ones(3, dtype=bool))
        labels = np.zeros((len(structure), 3, 3))
        labels[selector] = tensors
        labelled = selector.copy()
        if fill_equivalent and not labelled.all():
            rotations, permutations, _, _ = crystal_symmetry(sample, symprec=symprec)
            for i in np.flatnonzero(selector):
                targets = permutations[:, i]  # (G,) where each operation sends atom i
                new = ~labelled[targets]
                if new.any():
                    g = np.flatnonzero(new)
                    # first operation reaching each new atom
                    atoms, first = np.unique(targets[g], return_index=True)
                    r = rotations[g[first]]
                    labels[atoms] = np.einsum("gab,bc,gdc->gad", r, labels[i], r)
                    labelled[atoms] = True
        elements = np.unique(sample.numbers[selector])
        if drop_unfilled and not labelled[np.isin(sample.numbers, elements)].all():
            continue
        samples.append(sample.with_targets({"nmr_shielding": labels}))
    return samples


__all__ = ["read_matten_nmr"]
