"""The NVE stability protocol of ``benchmarks/bench_md.py``, shared by every model's side.

Imports only numpy and ase, so the peer runners (``mace_runner.py``, ``painn_runner.py``) run
the very same code in their own venvs, as they import ``runner_common``; tensorframe's side
imports it as ``benchmarks.peers.md_protocol``.

The protocol (:class:`MDProtocol`, defaults):

- velocities: Maxwell-Boltzmann at ``temperature_K`` (300 K) drawn with
  ``numpy.random.default_rng(seed)`` (seed 0), then zero total momentum (``Stationary``);
- NVE velocity Verlet (``ase.md.verlet.VelocityVerlet``), ``timestep_fs`` (0.5 fs) for
  ``steps`` (4000: 2 ps);
- every ``record_every`` (10) steps: potential, kinetic and total energy, temperature and the
  geometry check; every step: finite forces (and energy);
- potential energy: the model's, or for a model without one (direct forces) minus the work of
  the forces along the trajectory, trapezoid rule per step,
  ``dW = sum_i 0.5 (F_i(t) + F_i(t+dt)) . (x_i(t+dt) - x_i(t))`` (minimum-image displacement);
  for a conservative model, ``-W`` tracks ``E_pot(t) - E_pot(0)`` up to the integrator's error;
- breakdown: at t = 0 each H is paired with its nearest O (minimum image); the run stops at the
  first recorded step where such an O-H distance leaves [``oh_min``, ``oh_max``] (0.7, 1.5 Å),
  two atoms are closer than ``min_distance`` (0.6 Å), or a force or energy is not finite;
- drift: slope of the least-squares line of E_tot / atom against time over the recorded rows
  before any breakdown (meV/atom/ps), and max |E_tot(t) - E_tot(0)| / atom (meV/atom);
- heating: slope of the temperature against time over the same rows (K/ps);
- curl of the forces at the start structure (:func:`force_asymmetry`): the relative asymmetry
  of the force Jacobian -dF_a/dx_b by central differences over the coordinates of the atoms
  within ``curl_radius`` (3 Å) of the first O, step ``curl_delta`` (0.01 Å); 0 for forces that
  are a gradient (up to round-off), the direct measure of a non-conservative force field.

What the work-based energy can and cannot show: velocity Verlet conserves ``KE - W`` for *any*
force field, since per step ``dKE - dW = sum_i dt^2 / (8 m_i) (|F_i(t+dt)|^2 - |F_i(t)|^2)``,
which telescopes: ``KE(t) - KE(0) - W(t) = sum_i dt^2 / (8 m_i) (|F_i(t)|^2 - |F_i(0)|^2)``
(exactly, in exact arithmetic). So the work-based total energy of a direct-force model stays
flat whether or not its forces are conservative; its "drift" only follows the growth of the
forces. A non-conservative force field shows up instead as heating and as force-Jacobian
asymmetry, which are therefore recorded for every model.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import ase
import numpy as np
from ase import units
from ase.geometry import find_mic
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
from ase.md.verlet import VelocityVerlet
from ase.neighborlist import neighbor_list

SERIES_KEYS = ("time_ps", "potential_eV", "work_potential_eV", "kinetic_eV", "total_eV", "temperature_K",
               "oh_max_A", "oh_min_A", "min_distance_A")


@dataclass(frozen=True)
class MDProtocol:
    """Every parameter of the NVE stability run (see the module docstring)."""

    temperature_K: float = 300.0
    timestep_fs: float = 0.5
    steps: int = 4000
    record_every: int = 10
    seed: int = 0
    oh_max: float = 1.5
    oh_min: float = 0.7
    min_distance: float = 0.6
    curl_radius: float = 3.0
    curl_delta: float = 0.01

    @property
    def length_ps(self) -> float:
        return self.steps * self.timestep_fs / 1000.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MDProtocol:
        """The protocol from :meth:`to_dict`'s keys (unknown keys are an error, missing ones default).

        Raises:
            ValueError: naming the unknown keys.
        """
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown MD protocol keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**values)


# ----------------------------------------------------------------- geometry
def minimum_image(vectors: np.ndarray, atoms: ase.Atoms) -> np.ndarray:
    """``vectors`` (M, 3) reduced to their shortest periodic images in ``atoms``' cell (as they
    are where the cell is not periodic)."""
    vectors = np.asarray(vectors, dtype=np.float64).reshape(-1, 3)
    if not atoms.pbc.any():
        return vectors
    return find_mic(vectors, atoms.cell, atoms.pbc)[0]


def oh_pairs(atoms: ase.Atoms) -> np.ndarray:
    """(n_H, 2) rows ``(h, o)``: each hydrogen with its nearest oxygen (minimum image); (0, 2)
    when the structure has no H or no O."""
    numbers = atoms.get_atomic_numbers()
    hydrogens, oxygens = np.flatnonzero(numbers == 1), np.flatnonzero(numbers == 8)
    if len(hydrogens) == 0 or len(oxygens) == 0:
        return np.zeros((0, 2), dtype=int)
    positions = atoms.get_positions()
    vectors = positions[oxygens][None, :, :] - positions[hydrogens][:, None, :]  # (n_H, n_O, 3)
    lengths = np.linalg.norm(minimum_image(vectors.reshape(-1, 3), atoms), axis=1).reshape(vectors.shape[:2])
    return np.stack([hydrogens, oxygens[lengths.argmin(axis=1)]], axis=1)


def pair_distances(atoms: ase.Atoms, pairs: np.ndarray) -> np.ndarray:
    """Minimum-image distances (P,) of the index pairs (P, 2)."""
    if len(pairs) == 0:
        return np.zeros(0)
    positions = atoms.get_positions()
    return np.linalg.norm(minimum_image(positions[pairs[:, 1]] - positions[pairs[:, 0]], atoms), axis=1)


def closest_distance(atoms: ase.Atoms, probe: float) -> float:
    """The smallest interatomic distance if it is below ``probe`` (Å), else ``inf``."""
    distances = neighbor_list("d", atoms, probe)
    return float(distances.min()) if len(distances) else float("inf")


def geometry_check(atoms: ase.Atoms, pairs: np.ndarray, protocol: MDProtocol) -> tuple[str | None, dict[str, float]]:
    """(why the geometry broke down, or None; {"oh_max_A", "oh_min_A", "min_distance_A"}).

    ``pairs``: the (h, o) pairs of :func:`oh_pairs` at t = 0. ``min_distance_A`` is inf when no
    two atoms are within ``2 * protocol.min_distance``; the O-H entries are nan without pairs.
    """
    oh = pair_distances(atoms, pairs)
    closest = closest_distance(atoms, 2.0 * protocol.min_distance)
    values = {"oh_max_A": float(oh.max()) if len(oh) else float("nan"),
              "oh_min_A": float(oh.min()) if len(oh) else float("nan"), "min_distance_A": closest}
    if len(oh) and values["oh_max_A"] > protocol.oh_max:
        h, o = pairs[int(oh.argmax())]
        return f"O-H bond {o}-{h} stretched to {values['oh_max_A']:.3f} Å (> {protocol.oh_max} Å)", values
    if len(oh) and values["oh_min_A"] < protocol.oh_min:
        h, o = pairs[int(oh.argmin())]
        return f"O-H bond {o}-{h} compressed to {values['oh_min_A']:.3f} Å (< {protocol.oh_min} Å)", values
    if closest < protocol.min_distance:
        return f"two atoms {closest:.3f} Å apart (< {protocol.min_distance} Å)", values
    return None, values


# ----------------------------------------------------------------- curl of the forces
def force_asymmetry(atoms: ase.Atoms, radius: float, delta: float, center: int | None = None) -> dict[str, Any]:
    """How far the forces are from a gradient near one atom: with J_ab = -dF_a/dx_b by central
    differences (step ``delta`` Å) over the Cartesian coordinates a, b of the atoms within
    ``radius`` Å of ``center`` (default: the first O, else atom 0), ``relative_asymmetry`` =
    ||J - J^T|| / ||J + J^T|| (Frobenius). A gradient has a symmetric J (the Hessian), so 0 up to
    round-off and the O(delta^2) difference error; a curl makes J asymmetric.

    ``atoms`` carries the calculator; its positions are restored. Also returns
    ``num_coordinates``, ``delta_A``, ``radius_A``, ``center_atom`` and ``hessian_scale_eV_per_A2``
    (RMS entry of the symmetric part).
    """
    numbers = atoms.get_atomic_numbers()
    if center is None:
        oxygens = np.flatnonzero(numbers == 8)
        center = int(oxygens[0]) if len(oxygens) else 0
    positions = atoms.get_positions()
    offsets = minimum_image(positions - positions[center], atoms)
    chosen = np.flatnonzero(np.linalg.norm(offsets, axis=1) <= radius)
    coords = [(int(i), k) for i in chosen for k in range(3)]
    columns = []
    try:
        for i, k in coords:
            forces = []
            for sign in (1.0, -1.0):
                moved = positions.copy()
                moved[i, k] += sign * delta
                atoms.set_positions(moved)
                forces.append(np.asarray(atoms.get_forces(), dtype=np.float64)[chosen].reshape(-1))
            columns.append(-(forces[0] - forces[1]) / (2.0 * delta))
    finally:
        atoms.set_positions(positions)
    jacobian = np.stack(columns, axis=1)  # (rows a, columns b)
    symmetric, antisymmetric = jacobian + jacobian.T, jacobian - jacobian.T
    return {"relative_asymmetry": float(np.linalg.norm(antisymmetric) / max(np.linalg.norm(symmetric), 1e-300)),
            "num_coordinates": len(coords), "delta_A": float(delta), "radius_A": float(radius),
            "center_atom": int(center), "hessian_scale_eV_per_A2": float(np.sqrt(np.mean((symmetric / 2) ** 2)))}


def shadow_term(forces: np.ndarray, masses: np.ndarray, dt: float) -> float:
    """sum_i dt^2 / (8 m_i) |F_i|^2 (ASE units): velocity Verlet keeps KE - W - this constant."""
    return float(np.sum(dt**2 / (8.0 * np.asarray(masses)[:, None]) * np.asarray(forces) ** 2))


# ----------------------------------------------------------------- energies
def step_work(forces_old: np.ndarray, forces_new: np.ndarray, displacement: np.ndarray) -> float:
    """Work (eV) of the forces over one step, trapezoid rule: sum 0.5 (F_old + F_new) . dx.

    Shapes: forces (N, 3) eV/Å, displacement (N, 3) Å (minimum image).
    """
    return float(0.5 * np.sum((forces_old + forces_new) * displacement))


def energy_drift(time_ps: np.ndarray, total_per_atom_eV: np.ndarray) -> dict[str, float | None]:
    """``drift_meV_per_atom_per_ps``: slope of the least-squares line of the total energy per
    atom against time; ``max_deviation_meV_per_atom``: max |E(t) - E(0)|; both None from
    fewer than two finite rows."""
    time_ps, energy = np.asarray(time_ps, dtype=np.float64), np.asarray(total_per_atom_eV, dtype=np.float64)
    finite = np.isfinite(energy)
    if finite.sum() < 2 or not finite[0]:
        return {"drift_meV_per_atom_per_ps": None, "max_deviation_meV_per_atom": None}
    slope = np.polyfit(time_ps[finite], energy[finite], 1)[0]
    return {"drift_meV_per_atom_per_ps": float(1e3 * slope),
            "max_deviation_meV_per_atom": float(1e3 * np.abs(energy[finite] - energy[0]).max())}


def start_velocities(atoms: ase.Atoms, protocol: MDProtocol) -> None:
    """Maxwell-Boltzmann momenta at ``protocol.temperature_K`` from ``default_rng(protocol.seed)``,
    total momentum removed; in place. (ase 3.29 deprecates the name for ``thermalize_momenta``,
    which it calls with the same arguments; the old name also runs on older ase.)"""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        MaxwellBoltzmannDistribution(atoms, temperature_K=protocol.temperature_K,
                                     rng=np.random.default_rng(protocol.seed))
    Stationary(atoms)


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


# ----------------------------------------------------------------- the run
def run_md(atoms: ase.Atoms, protocol: MDProtocol, has_energy: bool,
           log: Callable[[str], None] | None = None, log_every: int = 500) -> dict[str, Any]:
    """Run the protocol on ``atoms`` (with its calculator attached; changed in place).

    ``has_energy``: whether the calculator's potential energy is the one its forces derive
    from; without it the potential is minus the work of the forces (module docstring).
    ``log(message)`` every ``log_every`` steps, when given.

    Returns ``energy_source``, ``steps_run``, ``time_ps_run``, ``stable``, ``breakdown_time_ps``
    and ``breakdown_reason`` (None when stable), ``drift_meV_per_atom_per_ps`` and
    ``max_deviation_meV_per_atom`` (over the rows before any breakdown; ``drift_rows``),
    ``work_drift_meV_per_atom_per_ps`` (the same fit with the work-based potential, for every
    model), ``work_vs_energy_max_meV_per_atom`` (max |-W(t) - (E_pot(t) - E_pot(0))| / atom over
    those rows, None without a model energy: small when the forces are the energy's gradient,
    the integrator's error only), ``temperature_slope_K_per_ps`` and ``mean_temperature_K``
    (same rows), ``force_asymmetry`` (:func:`force_asymmetry` at the start), ``wall_time_s``, ``s_per_step``, ``num_atoms`` and ``series`` ({key of
    :data:`SERIES_KEYS`: list, one value per recorded row; non-finite values as None}).
    """
    asymmetry = force_asymmetry(atoms, protocol.curl_radius, protocol.curl_delta)
    start_velocities(atoms, protocol)
    pairs = oh_pairs(atoms)
    dyn = VelocityVerlet(atoms, timestep=protocol.timestep_fs * units.fs)
    num_atoms = len(atoms)
    series: dict[str, list[float | None]] = {key: [] for key in SERIES_KEYS}
    work, breakdown, step = 0.0, None, 0

    def potential() -> float:
        return float(atoms.get_potential_energy()) if has_energy else float("nan")

    def check(step: int, finite: bool) -> str | None:
        """Record a row (energies, temperature, geometry) at ``step``; why the run broke down, or None."""
        epot, ekin = potential(), float(atoms.get_kinetic_energy())
        reason, geometry = geometry_check(atoms, pairs, protocol)
        row = {"time_ps": step * protocol.timestep_fs / 1000.0, "potential_eV": epot, "work_potential_eV": -work,
               "kinetic_eV": ekin, "total_eV": (epot if has_energy else -work) + ekin,
               "temperature_K": float(atoms.get_temperature()), **geometry}
        for key in SERIES_KEYS:
            series[key].append(_finite_or_none(row[key]))
        return "non-finite forces or energy" if not finite or (has_energy and not np.isfinite(epot)) else reason

    started = time.perf_counter()
    forces = np.asarray(atoms.get_forces(), dtype=np.float64)
    breakdown = check(0, np.isfinite(forces).all())
    while breakdown is None and step < protocol.steps:
        positions = atoms.get_positions()
        new_forces = dyn.step(forces)
        new_forces = np.asarray(atoms.get_forces() if new_forces is None else new_forces, dtype=np.float64)
        step += 1
        work += step_work(forces, new_forces, minimum_image(atoms.get_positions() - positions, atoms))
        forces = new_forces
        finite = np.isfinite(forces).all()
        if step % protocol.record_every == 0 or not finite or step == protocol.steps:
            breakdown = check(step, finite)
        if log is not None and step % log_every == 0:
            log(f"step {step}/{protocol.steps}  T {series['temperature_K'][-1]} K  E_tot {series['total_eV'][-1]} eV")
    wall = time.perf_counter() - started

    times = np.array(series["time_ps"], dtype=np.float64)
    keep = len(times) - (1 if breakdown is not None else 0)  # the rows before the breakdown row

    def per_atom(key: str) -> np.ndarray:
        return np.array([np.nan if v is None else v for v in series[key][:keep]], dtype=np.float64) / num_atoms

    kinetic, work_potential = per_atom("kinetic_eV"), per_atom("work_potential_eV")
    drift = energy_drift(times[:keep], per_atom("total_eV"))
    work_drift = energy_drift(times[:keep], work_potential + kinetic)
    potential_change = per_atom("potential_eV") - per_atom("potential_eV")[:1]
    mismatch = np.abs(work_potential - potential_change)
    work_mismatch = float(1e3 * mismatch.max()) if has_energy and keep and np.isfinite(mismatch).all() else None
    temperature = per_atom("temperature_K") * num_atoms
    heating = float(np.polyfit(times[:keep], temperature, 1)[0]) if keep >= 2 else None
    return {
        "energy_source": "model energy" if has_energy else "minus the work of the forces (trapezoid rule)",
        "steps_run": step,
        "time_ps_run": step * protocol.timestep_fs / 1000.0,
        "stable": breakdown is None,
        "breakdown_time_ps": None if breakdown is None else step * protocol.timestep_fs / 1000.0,
        "breakdown_reason": breakdown,
        **drift,
        "drift_rows": keep,
        "work_drift_meV_per_atom_per_ps": work_drift["drift_meV_per_atom_per_ps"],
        "work_vs_energy_max_meV_per_atom": work_mismatch,
        "temperature_slope_K_per_ps": heating,
        "mean_temperature_K": float(temperature.mean()) if keep else None,
        "force_asymmetry": asymmetry,
        "wall_time_s": wall,
        "s_per_step": wall / max(step, 1),
        "num_atoms": num_atoms,
        "series": series,
    }

