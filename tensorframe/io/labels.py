"""Labels from a file's keys: renaming, reshaping, Voigt -> Cartesian, units, finiteness.

Every reader turns a raw label into a field's array here, so all readers flatten, convert
and complain the same way:

- a flat list is read row-major into the field's shape, (N, 3, ...) per atom or (3, ...)
  per structure (``becs`` 9 numbers per atom -> Z[a, b] = numbers[3 a + b]);
- a label in Voigt form is converted with :mod:`tensorframe.io.voigt`: always when its array
  has the Voigt shape (3, 6) of a rank-3 or (6, 6) of a rank-4 field (nothing else has those
  shapes), and for flat lists or rank-2 6-vectors only when the reader's ``voigt`` option
  names the field (6 numbers may also be a truncated 3x3); ``stress`` is the exception
  (:data:`VOIGT_SIX`): ASE stores it as a 6-vector xx yy zz yz xz xy, so 6 numbers are
  always read as Voigt;
- ``units={field: unit}`` multiplies by :func:`tensorframe.io.units.factor`.

Errors are :class:`LabelError` (a ValueError) naming the file and structure (``where``),
the field and the key it came from, and what was expected.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from tensorframe.fields import FieldSpec
from tensorframe.io import units as units_module
from tensorframe.io import voigt as voigt_module
from tensorframe.io.validation import InputError

# Keys common in public data sets whose units are fixed (e for Born charges, dimensionless
# dielectric tensors); read without a key_map unless ``default_keys=False``. Dipoles and
# (hyper)polarizabilities ("mu", "alpha", "beta") are left out on purpose: files store them
# in e·Å, Debye or atomic units, so the user maps them and states the unit.
DEFAULT_KEY_MAP: dict[str, str] = {
    "becs": "born_charges",
    "bec": "born_charges",
    "born_effective_charges": "born_charges",
    "eps": "dielectric",
    "epsilon": "dielectric",
    "dielectric_tensor": "dielectric",
}

# Voigt kind of a field when the user does not say (see tensorframe.io.voigt).
DEFAULT_VOIGT_KIND: dict[str, str] = {"piezo_strain": "strain"}

# Rank-2 fields whose 6 numbers are always a Voigt vector (xx yy zz yz xz xy): ASE's
# calculators, extended XYZ and databases store the stress so.
VOIGT_SIX: frozenset[str] = frozenset({"stress"})


class LabelError(InputError):
    """A label of the wrong size, type or value."""


def voigt_kinds(voigt: Iterable[str] | Mapping[str, str] | None) -> dict[str, str]:
    """``["piezo"]`` or ``{"piezo_strain": "strain"}`` -> {field: kind}."""
    if voigt is None:
        return {}
    if isinstance(voigt, str):
        voigt = [voigt]
    if isinstance(voigt, Mapping):
        return {str(k): str(v) for k, v in voigt.items()}
    return {name: DEFAULT_VOIGT_KIND.get(name, "stress") for name in voigt}


def check_units(units: Mapping[str, str] | None) -> dict[str, float]:
    """{field: unit} -> {field: factor}; fails before any file is read."""
    return {field: units_module.factor(field, unit) for field, unit in (units or {}).items()}


def label_array(
    value: Any,
    spec: FieldSpec,
    num_atoms: int,
    where: str,
    key: str | None = None,
    voigt_kind: str | None = None,
    scale: float = 1.0,
) -> np.ndarray:
    """One label as the field's float64 array, in tensorframe's units.

    Shapes: returns (num_atoms, 3, ...) for an atom-level field, (3, ...) per structure
    (rank 0: a scalar array of shape ()).

    Raises:
        LabelError: not numeric, wrong number of values, NaN or inf.
    """
    what = f"{where}, field {spec.name!r}" + (f" (key {key!r})" if key is not None and key != spec.name else "")
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise LabelError(f"{what}: not numeric: {error}") from None
    lead = (num_atoms,) if spec.level == "atom" else ()
    shape = lead + spec.shape
    if spec.rank in (2, 3, 4):
        voigt_shape = lead + voigt_module.voigt_shape(spec.rank)
        automatic = (spec.rank in (3, 4) and array.shape == voigt_shape) or (
            spec.name in VOIGT_SIX and array.size == int(np.prod(voigt_shape)))
        if voigt_kind is not None or automatic:
            if array.size != int(np.prod(voigt_shape)):
                raise LabelError(
                    f"{what}: expected {int(np.prod(voigt_shape))} numbers for Voigt shape {voigt_shape}, "
                    f"got shape {array.shape}"
                )
            kind = voigt_kind or DEFAULT_VOIGT_KIND.get(spec.name, "stress")
            array = voigt_module.to_cartesian(array.reshape(voigt_shape), spec.rank, kind)  # type: ignore[arg-type]
    if array.size != int(np.prod(shape)):
        if spec.name in VOIGT_SIX:
            raise LabelError(
                f"{what}: expected a 3x3 tensor, 9 numbers (row-major) or a Voigt 6-vector (xx yy zz yz xz xy), "
                f"got shape {array.shape}"
            )
        raise LabelError(f"{what}: expected {int(np.prod(shape))} numbers for shape {shape}, got shape {array.shape}")
    array = array.reshape(shape)
    if not np.all(np.isfinite(array)):
        if spec.level == "atom":
            atom = int(np.flatnonzero(~np.isfinite(array.reshape(num_atoms, -1)).all(axis=1))[0])
            raise LabelError(f"{what}: NaN or inf at atom {atom}; expected finite numbers")
        raise LabelError(f"{what}: NaN or inf; expected finite numbers")
    return array * scale if scale != 1.0 else array


def collect_labels(
    sources: Mapping[str, Any],
    fields: Mapping[str, FieldSpec],
    key_map: Mapping[str, str],
    num_atoms: int,
    where: str,
    voigt: Mapping[str, str] | None = None,
    scales: Mapping[str, float] | None = None,
) -> dict[str, np.ndarray]:
    """The labels among ``sources`` ({file key: value}) whose key, renamed by ``key_map``,
    is a registered field. Keys that are no field are ignored.

    Raises:
        LabelError: as :func:`label_array`, or two keys giving the same field.
    """
    voigt, scales = voigt or {}, scales or {}
    found: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}
    for key, value in sources.items():
        name = key_map.get(key, key)
        if name not in fields:
            continue
        if name in found:
            raise LabelError(
                f"{where}, field {name!r}: given twice, by keys {origin[name]!r} and {key!r}; "
                f"map one of them elsewhere with key_map"
            )
        found[name] = label_array(value, fields[name], num_atoms, where, key, voigt.get(name), scales.get(name, 1.0))
        origin[name] = key
    return found
