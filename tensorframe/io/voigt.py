"""Voigt <-> Cartesian tensors, at the IO boundary only (inside tensorframe every tensor is
Cartesian).

Voigt order: J = 0..5 (1..6 in print) for the index pairs xx, yy, zz, yz, xz, xy.
VASP prints its 6 columns as XX YY ZZ XY YZ ZX instead (:data:`VASP_PAIRS`); the VASP
reader converts those with pymatgen's ``PiezoTensor.from_vasp_voigt``.

Each conversion has a ``kind`` that says how a shear pair (J >= 3, 0-based) is counted:

- ``"stress"``: the Voigt entry is the tensor component. Stress, dielectric and
  polarizability tensors; the piezoelectric stress tensor ``e_ijk = e_iJ`` (C/m^2); the
  elastic stiffness ``C_ijkl = C_IJ``.
- ``"strain"``: the Voigt entry is twice the component (engineering shear strain). Strain;
  the piezoelectric strain tensor ``d_ijk = d_iJ / 2`` for J >= 3 (pC/N), since
  ``d_iJ = dS_J / dE_i`` with ``S_J = 2 S_jk``.
- ``"compliance"`` (rank 4 only): ``S_ijkl = S_IJ w_I w_J`` with ``w = 1`` for normal and
  ``1/2`` for shear pairs, so that ``strain_J = S_JK stress_K`` holds in Voigt form.

Shapes: any leading dimensions are kept; rank 2 ``(..., 6) <-> (..., 3, 3)``, rank 3
``(..., 3, 6) <-> (..., 3, 3, 3)``, rank 4 ``(..., 6, 6) <-> (..., 3, 3, 3, 3)``.
The Cartesian -> Voigt direction symmetrises first (over jk for rank 3; ij and kl for rank 4).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Kind = Literal["stress", "strain", "compliance"]

VOIGT_PAIRS: tuple[tuple[int, int], ...] = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))
VASP_PAIRS: tuple[tuple[int, int], ...] = ((0, 0), (1, 1), (2, 2), (0, 1), (1, 2), (2, 0))

# INDEX[i, j] = the Voigt position of the pair (i, j)
INDEX = np.empty((3, 3), dtype=np.int64)
for _position, (_i, _j) in enumerate(VOIGT_PAIRS):
    INDEX[_i, _j] = INDEX[_j, _i] = _position
_ROWS = np.array([p[0] for p in VOIGT_PAIRS])
_COLS = np.array([p[1] for p in VOIGT_PAIRS])
_SHEAR = np.array([1.0, 1.0, 1.0, 0.5, 0.5, 0.5])
_ONES = np.ones(6)


def _weights(kind: str, allowed: tuple[str, ...]) -> np.ndarray:
    if kind not in allowed:
        raise ValueError(f"voigt kind: expected one of {', '.join(allowed)}, got {kind!r}")
    return _ONES if kind == "stress" else _SHEAR


def _last(value: np.ndarray, shape: tuple[int, ...], what: str) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.shape[array.ndim - len(shape):] != shape:
        raise ValueError(f"{what}: expected trailing shape {shape}, got {array.shape}")
    return array


def voigt_to_rank2(value: np.ndarray, kind: Kind = "stress") -> np.ndarray:
    """(..., 6) -> symmetric (..., 3, 3)."""
    w = _weights(kind, ("stress", "strain"))
    v = _last(value, (6,), "rank-2 Voigt")
    return v[..., INDEX] * w[INDEX]


def rank2_to_voigt(value: np.ndarray, kind: Kind = "stress") -> np.ndarray:
    """(..., 3, 3) -> (..., 6), from the symmetric part."""
    w = _weights(kind, ("stress", "strain"))
    t = _last(value, (3, 3), "rank-2 tensor")
    t = (t + np.swapaxes(t, -1, -2)) / 2
    return t[..., _ROWS, _COLS] / w


def voigt_to_rank3(value: np.ndarray, kind: Kind = "stress") -> np.ndarray:
    """(..., 3, 6) -> (..., 3, 3, 3), symmetric in the last two indices."""
    w = _weights(kind, ("stress", "strain"))
    v = _last(value, (3, 6), "rank-3 Voigt")
    return v[..., INDEX] * w[INDEX]


def rank3_to_voigt(value: np.ndarray, kind: Kind = "stress") -> np.ndarray:
    """(..., 3, 3, 3) -> (..., 3, 6), from the part symmetric in the last two indices."""
    w = _weights(kind, ("stress", "strain"))
    t = _last(value, (3, 3, 3), "rank-3 tensor")
    t = (t + np.swapaxes(t, -1, -2)) / 2
    return t[..., _ROWS, _COLS] / w


def voigt_to_rank4(value: np.ndarray, kind: Kind = "stress") -> np.ndarray:
    """(..., 6, 6) -> (..., 3, 3, 3, 3); ``"stress"`` for stiffness, ``"compliance"`` for compliance."""
    w = _weights(kind, ("stress", "compliance"))
    v = _last(value, (6, 6), "rank-4 Voigt")
    first, second = INDEX[:, :, None, None], INDEX[None, None, :, :]
    return v[..., first, second] * (w[first] * w[second])


def rank4_to_voigt(value: np.ndarray, kind: Kind = "stress") -> np.ndarray:
    """(..., 3, 3, 3, 3) -> (..., 6, 6), from the part with the minor symmetries ij and kl."""
    w = _weights(kind, ("stress", "compliance"))
    t = _last(value, (3, 3, 3, 3), "rank-4 tensor")
    t = (t + t.swapaxes(-3, -4)) / 2
    t = (t + t.swapaxes(-1, -2)) / 2
    rows, cols = _ROWS, _COLS
    block = t[..., rows[:, None], cols[:, None], rows[None, :], cols[None, :]]
    return block / (w[:, None] * w[None, :])


def to_cartesian(value: np.ndarray, rank: int, kind: Kind = "stress") -> np.ndarray:
    """Voigt -> Cartesian for a tensor of ``rank`` 2, 3 or 4."""
    if rank == 2:
        return voigt_to_rank2(value, kind)
    if rank == 3:
        return voigt_to_rank3(value, kind)
    if rank == 4:
        return voigt_to_rank4(value, kind)
    raise ValueError(f"voigt: only rank 2, 3 and 4 tensors have a Voigt form, not rank {rank}")


def voigt_shape(rank: int) -> tuple[int, ...]:
    """The Voigt shape of one tensor of ``rank`` (2 -> (6,), 3 -> (3, 6), 4 -> (6, 6))."""
    shapes = {2: (6,), 3: (3, 6), 4: (6, 6)}
    if rank not in shapes:
        raise ValueError(f"voigt: only rank 2, 3 and 4 tensors have a Voigt form, not rank {rank}")
    return shapes[rank]


def vasp_to_voigt(value: np.ndarray) -> np.ndarray:
    """Reorder a last axis of 6 from VASP's XX YY ZZ XY YZ ZX to Voigt xx yy zz yz xz xy."""
    v = _last(value, (6,), "VASP 6-vector")
    order = [VASP_PAIRS.index(p) if p in VASP_PAIRS else VASP_PAIRS.index(p[::-1]) for p in VOIGT_PAIRS]
    return v[..., order]
