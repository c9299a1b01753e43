"""Label the embedded default data set with PySCF at RHF/6-31G*.

Small neutral closed-shell molecules (H, C, N, O, F; at most 7 atoms) from the ase g2 set,
each in several randomly rotated (uniform SO(3)) and rattled conformations, labelled with

    energy               eV                  total RHF energy
    forces               eV/Å                analytic, minus the gradient
    dipole               e·Å                 from the SCF density plus the nuclei
    polarizability       a.u. (bohr^3)       alpha_ij = d mu_i / d E_j            (finite fields)
    hyperpolarizability  a.u.                beta_ijk = d^2 mu_i / dE_j dE_k      (finite fields)
    born_charges         e                   Z_{k,ab} = d mu_a / d R_{k,b} = d F_{k,b} / d E_a
                                             (finite fields of analytic forces; checked against
                                             finite displacements of the dipole)

Usage (needs the ``data`` extra, ``pip install 'tensorframe[data]'``)::

    OMP_NUM_THREADS=1 python scripts/make_default_data.py --cache /tmp/tensorframe-default-data-cache \
        --out tensorframe/data/molecules.npz

Each structure is cached in its own file under ``--cache``, so an interrupted run continues
where it stopped. See tensorframe/data/README-molecules.md for the method in full.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from ase.build import molecule
from ase.units import Bohr, Hartree

# The ase g2 molecules made of H, C, N, O, F with at most 7 atoms, neutral, closed shell
# (even electron count, no initial magnetic moment), in g2's order. Left out: O3 and singlet
# CH2 (near-degenerate, a single RHF determinant describes them badly) and H2 (6-31G* has no
# p functions on H, so its polarizability perpendicular to the bond is zero).
MOLECULES: tuple[str, ...] = (
    "CH3CHO", "OCHCHO", "CH3COF", "HCOOH", "C2H2", "CO", "H3CNH2", "CH3CN", "CH3ONO",
    "CO2", "CH2OCH2", "H2CCHCN", "H2CO", "HCF3", "N2H4", "H2O", "CH3NO2", "CH3OH", "H2CCHF",
    "C2H4", "NCCN", "C3H4_D2d", "COF2", "N2O", "F2O", "CF3CN", "HCN", "HF", "C2F4", "NF3",
    "NH3", "CF4", "H2CF2", "C3H4_C3v", "F2", "CH4", "H2CCO", "N2", "H2O2", "C3H4_C2v",
)

BASIS = "6-31g*"
CARTESIAN = True          # six Cartesian d functions, as 6-31G* was defined (Gaussian's default)
FIELD = 0.004             # a.u., finite electric field
STEP = 0.002              # Å, finite displacement of the dipole (the APT check)
RATTLE = 0.05             # Å, standard deviation of the Gaussian rattle
CONV_TOL = 1e-12          # Hartree
CONV_TOL_GRAD = 1e-8
FIELDS = ("energy", "forces", "dipole", "polarizability", "born_charges", "hyperpolarizability")
ATOM_FIELDS = ("forces", "born_charges")


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A rotation matrix drawn uniformly from SO(3) (normalised Gaussian quaternion)."""
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def make_structure(name: str, conformation: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Numbers (N,) and positions (N, 3) in Å: the g2 geometry about its centre of mass,
    rotated uniformly at random and rattled; reproducible from (seed, molecule, conformation)."""
    atoms = molecule(name)
    index = MOLECULES.index(name)
    rng = np.random.default_rng([seed, index, conformation])
    positions = atoms.positions - atoms.get_center_of_mass()
    positions = positions @ random_rotation(rng).T + rng.normal(scale=RATTLE, size=positions.shape)
    return atoms.numbers.copy(), positions


# ----------------------------------------------------------------------------------------
# PySCF labels. Everything inside works in atomic units; conversion happens in `label`.


def _mol(numbers: np.ndarray, positions_bohr: np.ndarray):
    from pyscf import gto

    return gto.M(
        atom=[(int(z), tuple(r)) for z, r in zip(numbers, positions_bohr, strict=True)], unit="Bohr",
        basis=BASIS, cart=CARTESIAN, charge=0, spin=0, verbose=0,
    )


def _scf(mol, field: np.ndarray | None = None, dm0: np.ndarray | None = None, eri=None):
    """A converged RHF in a uniform field ``field`` (a.u.), or raise.

    An electron (charge -1) at r in the field E has the potential energy +E·r, so the
    field adds E·<mu|r|nu> (origin 0) to the core Hamiltonian; the nuclei add the constant
    -sum_k Z_k E·R_k, which changes no density and is left out. With this sign the dipole
    grows along the field and alpha is positive definite (checked in `label`).
    """
    from pyscf import scf

    mf = scf.RHF(mol)
    mf.conv_tol = CONV_TOL
    mf.conv_tol_grad = CONV_TOL_GRAD
    mf.max_cycle = 200
    if eri is not None:
        mf._eri = eri
    if field is not None and np.any(field):
        hcore = mf.get_hcore() + np.einsum("x,xij->ij", field, mol.intor("int1e_r", comp=3))
        mf.get_hcore = lambda *args: hcore
    mf.kernel(dm0=dm0)
    if not mf.converged:
        raise RuntimeError(f"SCF not converged (field={field})")
    return mf


def _dipole(mf) -> np.ndarray:
    """Dipole (3,) in e·bohr: nuclei minus electrons, origin 0 (origin independent when neutral)."""
    mol = mf.mol
    dm = mf.make_rdm1()
    electrons = np.einsum("xij,ji->x", mol.intor("int1e_r", comp=3), dm).real
    nuclei = mol.atom_charges() @ mol.atom_coords()
    return nuclei - electrons


def _field_scfs(mol, ref) -> list:
    """Converged RHF in the six fields +-F e_x, +-F e_y, +-F e_z (in that order)."""
    eye = np.eye(3)
    dm0, eri = ref.make_rdm1(), ref._eri
    return [_scf(mol, sign * FIELD * eye[j], dm0, eri) for j in range(3) for sign in (1, -1)]


def _response(mol, ref, field_scfs: list) -> tuple[np.ndarray, np.ndarray]:
    """alpha (3, 3) = d mu_i / d E_j and beta (3, 3, 3) = d^2 mu_i / dE_j dE_k (a.u.) by central
    finite fields; the mixed derivatives from the four fields (+-F e_j +-F e_k)."""
    dm0, eri = ref.make_rdm1(), ref._eri
    mu0 = _dipole(ref)
    eye = np.eye(3)

    def mu(field: np.ndarray) -> np.ndarray:
        return _dipole(_scf(mol, field, dm0, eri))

    plus = np.stack([_dipole(mf) for mf in field_scfs[0::2]])    # (j, i)
    minus = np.stack([_dipole(mf) for mf in field_scfs[1::2]])
    alpha = ((plus - minus) / (2 * FIELD)).T                       # (i, j)
    beta = np.zeros((3, 3, 3))
    for j in range(3):
        beta[:, j, j] = (plus[j] - 2 * mu0 + minus[j]) / FIELD**2
        for k in range(j + 1, 3):
            pp, pm, mp, mm = (mu(FIELD * (sj * eye[j] + sk * eye[k])) for sj, sk in ((1, 1), (1, -1), (-1, 1), (-1, -1)))
            beta[:, j, k] = beta[:, k, j] = (pp - pm - mp + mm) / (4 * FIELD**2)
    return alpha, beta


def _electronic_gradients(mol, scfs: list, fields: np.ndarray) -> np.ndarray:
    """Analytic electronic energy gradients (S, N, 3) in Hartree/bohr of RHF solutions ``scfs``
    of ``mol`` in uniform fields ``fields`` (S, 3), without the nuclear terms.

    The same terms as ``pyscf.grad.rhf.grad_elec`` plus the derivative of the field term
    E_a <u|r_a|v>, whose basis functions move with their atom; the two-electron part of all
    S densities comes from one pass over the integral derivatives.
    """
    from pyscf.grad import rhf as rhf_grad

    grad = rhf_grad.Gradients(scfs[0])
    dms = np.array([mf.make_rdm1() for mf in scfs])
    dmes = np.array([grad.make_rdm1e(mf.mo_energy, mf.mo_coeff, mf.mo_occ) for mf in scfs])
    vhf = grad.get_veff(mol, dms)                                   # (S, 3, nao, nao)
    s1 = grad.get_ovlp(mol)
    hcore_deriv = grad.hcore_generator(mol)
    nao = mol.nao
    # int1e_irp[a, x, u, v] = <u| r_a d_x |v>, so <d_x u| r_a |v> is its transpose in (u, v)
    ip_r = mol.intor("int1e_irp", comp=9).reshape(3, 3, nao, nao).transpose(0, 1, 3, 2)
    out = np.zeros((len(scfs), mol.natm, 3))
    for k, (_, _, p0, p1) in enumerate(mol.aoslice_by_atom()):
        h1 = hcore_deriv(k)
        for n, field in enumerate(fields):
            hf = np.zeros((3, nao, nao))
            hf[:, p0:p1] = -np.einsum("a,axmn->xmn", field, ip_r[:, :, p0:p1])
            out[n, k] = (np.einsum("xij,ij->x", h1 + hf + hf.transpose(0, 2, 1), dms[n])
                         + 2 * np.einsum("xij,ij->x", vhf[n][:, p0:p1], dms[n][p0:p1])
                         - 2 * np.einsum("xij,ij->x", s1[:, p0:p1], dmes[n][p0:p1]))
    return out


def _forces_and_apt(mol, ref, field_scfs: list) -> tuple[np.ndarray, np.ndarray]:
    """Forces (N, 3) in Hartree/bohr and atomic polar tensors (N, 3, 3) in e.

    Z[k, a, b] = d mu_a / d R_{k,b} = d F_{k,b} / d E_a (both are -d^2 W / dE_a dR_{k,b}), by
    central differences of the analytic forces in the fields +-F e_a. The nuclei in the field
    (energy -Z_k E.R_k) add Z_k delta_ab.
    """
    eye = np.eye(3)
    fields = np.array([np.zeros(3)] + [sign * FIELD * eye[a] for a in range(3) for sign in (1, -1)])
    grads = _electronic_gradients(mol, [ref, *field_scfs], fields)
    forces = -(grads[0] + ref.nuc_grad_method().grad_nuc())
    field_forces = -grads[1:].reshape(3, 2, mol.natm, 3)            # (a, sign, k, b)
    apt = ((field_forces[:, 0] - field_forces[:, 1]) / (2 * FIELD)).transpose(1, 0, 2)
    return forces, apt + mol.atom_charges()[:, None, None] * eye


def apt_by_displacements(numbers: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Atomic polar tensors (N, 3, 3) in e, Z[k, a, b] = d mu_a / d R_{k,b}, by central finite
    displacements of the dipole (positions in Å): the definition, used to check the fields' route."""
    positions_bohr = positions / Bohr
    dm0 = _scf(_mol(numbers, positions_bohr)).make_rdm1()
    h = STEP / Bohr
    apt = np.zeros((len(numbers), 3, 3))
    for k in range(len(numbers)):
        for b in range(3):
            mus = []
            for sign in (1, -1):
                displaced = positions_bohr.copy()
                displaced[k, b] += sign * h
                mus.append(_dipole(_scf(_mol(numbers, displaced), dm0=dm0)))
            apt[k, :, b] = (mus[0] - mus[1]) / (2 * h)
    return apt


def energy(numbers: np.ndarray, positions: np.ndarray) -> float:
    """RHF energy in eV at ``positions`` (Å)."""
    return float(_scf(_mol(numbers, positions / Bohr)).e_tot * Hartree)


def label(numbers: np.ndarray, positions: np.ndarray) -> dict[str, np.ndarray]:
    """All labels of one structure (positions in Å) in the units stored (see module docstring)."""
    mol = _mol(numbers, positions / Bohr)
    ref = _scf(mol)
    field_scfs = _field_scfs(mol, ref)
    alpha, beta = _response(mol, ref, field_scfs)
    forces, apt = _forces_and_apt(mol, ref, field_scfs)
    eigenvalues = np.linalg.eigvalsh(0.5 * (alpha + alpha.T))
    if eigenvalues.min() <= 0:
        raise RuntimeError(f"polarizability not positive definite: eigenvalues {eigenvalues}")
    return {
        "energy": np.array(ref.e_tot * Hartree),
        "forces": forces * Hartree / Bohr,
        "dipole": _dipole(ref) * Bohr,
        "polarizability": alpha,
        "born_charges": apt,
        "hyperpolarizability": beta,
    }


# ----------------------------------------------------------------------------------------
# Checks stored beside the data: the same structure in a rotated (or improper) frame, and
# energies displaced along a random direction to check the forces.

ROTATION_CHECKS: tuple[tuple[str, int, bool], ...] = (("CH3COF", 0, False), ("HCOOH", 0, False), ("NH3", 0, True))
ENERGY_CHECKS: tuple[tuple[str, int], ...] = (("CH3CHO", 0), ("NF3", 1))
ENERGY_STEP = 0.0002  # Å along a unit direction in the 3N-dimensional configuration space


def _cached(path: Path, compute: Callable[..., dict[str, np.ndarray]], *args: np.ndarray) -> dict[str, np.ndarray]:
    """``compute(*args)``, stored in ``path`` (written atomically) and read from there next time."""
    if path.exists():
        with np.load(path) as data:
            return dict(data)
    result = compute(*args)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **result)
    tmp.replace(path)
    return result


def _labelled(numbers: np.ndarray, positions: np.ndarray) -> dict[str, np.ndarray]:
    return {"numbers": numbers, "positions": positions, **label(numbers, positions)}


def _energy_pair(numbers: np.ndarray, positions: np.ndarray, direction: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "plus": np.array(energy(numbers, positions + ENERGY_STEP * direction)),
        "minus": np.array(energy(numbers, positions - ENERGY_STEP * direction)),
    }


def _concat(records: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    out = {
        "numbers": np.concatenate([r["numbers"] for r in records]).astype(np.int8),
        "positions": np.concatenate([r["positions"] for r in records]),
        "offsets": np.cumsum([0] + [len(r["numbers"]) for r in records]).astype(np.int64),
    }
    for f in FIELDS:
        join = np.concatenate if f in ATOM_FIELDS else np.stack
        out[f] = join([r[f] for r in records])
    return out


def main(argv: list[str] | None = None) -> int:
    import pyscf

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("tensorframe/data/molecules.npz"))
    parser.add_argument("--cache", type=Path, default=Path("/tmp/tensorframe-default-data-cache"))
    parser.add_argument("--conformations", type=int, default=8, help="structures per molecule")
    parser.add_argument("--seed", type=int, default=20240611)
    parser.add_argument("--molecules", nargs="*", default=list(MOLECULES), help="a subset, for timing")
    args = parser.parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    records, names, conformations = [], [], []
    jobs = [(name, c) for c in range(args.conformations) for name in args.molecules]
    start = time.perf_counter()
    for n, (name, c) in enumerate(jobs):
        numbers, positions = make_structure(name, c, args.seed)
        t0 = time.perf_counter()
        rec = _cached(args.cache / f"{name}_{c}.npz", _labelled, numbers, positions)
        if not np.allclose(rec["positions"], positions, atol=1e-12):
            raise RuntimeError(f"cache {name}_{c}: positions differ from the seeded structure (stale cache?)")
        records.append(rec)
        names.append(name)
        conformations.append(c)
        log(f"{n + 1}/{len(jobs)} {name} conf {c} ({len(numbers)} atoms): {time.perf_counter() - t0:.1f} s, "
            f"total {time.perf_counter() - start:.0f} s")

    # Rotation checks: structure `index` again, with positions R @ r about the origin.
    rotated, rot_index, rot_matrix = [], [], []
    for i, (name, c, improper) in enumerate(ROTATION_CHECKS):
        index = next(s for s, (m, k) in enumerate(zip(names, conformations, strict=True)) if (m, k) == (name, c))
        rotation = random_rotation(np.random.default_rng([args.seed, 1000 + i])) * (-1 if improper else 1)
        numbers, positions = records[index]["numbers"], records[index]["positions"] @ rotation.T
        rec = _cached(args.cache / f"rotated_{name}_{c}_{int(improper)}.npz",
                      _labelled, numbers, positions)
        rotated.append(rec)
        rot_index.append(index)
        rot_matrix.append(rotation)
        log(f"rotation check {name} conf {c} improper={improper} done")

    # APT checks: the same tensors by finite displacements of the dipole.
    apt_displaced = []
    for index in rot_index:
        name, c = names[index], conformations[index]
        numbers, positions = records[index]["numbers"], records[index]["positions"]
        rec = _cached(args.cache / f"apt_{name}_{c}.npz", lambda z, r: {"apt": apt_by_displacements(z, r)}, numbers, positions)
        apt_displaced.append(rec["apt"])
        log(f"APT check {name}: max |fields - displacements| {np.abs(rec['apt'] - records[index]['born_charges']).max():.2e} e")

    # Energy checks: E(r +- h d) for a random unit direction d in configuration space.
    energy_index, directions, e_plus, e_minus = [], [], [], []
    for i, (name, c) in enumerate(ENERGY_CHECKS):
        index = next(s for s, (m, k) in enumerate(zip(names, conformations, strict=True)) if (m, k) == (name, c))
        numbers, positions = records[index]["numbers"], records[index]["positions"]
        d = np.random.default_rng([args.seed, 2000 + i]).normal(size=positions.shape)
        d /= np.linalg.norm(d)
        rec = _cached(args.cache / f"energy_{name}_{c}.npz", _energy_pair, numbers, positions, d)
        energy_index.append(index)
        directions.append(d)
        e_plus.append(rec["plus"])
        e_minus.append(rec["minus"])
        slope = (rec["plus"] - rec["minus"]) / (2 * ENERGY_STEP)
        log(f"energy check {name}: -dE/dh {-slope:.6f} vs F.d {np.sum(records[index]['forces'] * d):.6f} eV/Å")

    meta = {
        "method": "RHF", "basis": BASIS, "cartesian_d": CARTESIAN, "code": f"PySCF {pyscf.__version__}",
        "field_au": FIELD, "step_angstrom": STEP, "rattle_angstrom": RATTLE, "seed": args.seed,
        "conv_tol": CONV_TOL, "conv_tol_grad": CONV_TOL_GRAD, "conformations": args.conformations,
        "units": {"energy": "eV", "forces": "eV/Å", "dipole": "e·Å", "polarizability": "a.u.",
                  "born_charges": "e", "hyperpolarizability": "a.u."},
        "energy_check_step_angstrom": ENERGY_STEP,
    }
    out = _concat(records)
    out["names"] = np.array(names)
    out["conformation"] = np.array(conformations, dtype=np.int16)
    out |= {f"rotated.{k}": v for k, v in _concat(rotated).items()}
    out["rotated.index"] = np.array(rot_index, dtype=np.int64)
    out["rotated.rotation"] = np.array(rot_matrix)
    out["apt_check.index"] = np.array(rot_index, dtype=np.int64)
    out["apt_check.born_charges"] = np.concatenate(apt_displaced)
    out["energy_check.index"] = np.array(energy_index, dtype=np.int64)
    out["energy_check.direction"] = np.concatenate(directions)
    out["energy_check.energy_plus"] = np.array(e_plus)
    out["energy_check.energy_minus"] = np.array(e_minus)
    out["meta"] = np.array(json.dumps(meta, ensure_ascii=False))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **out)
    log(f"wrote {args.out}: {len(records)} structures, {out['offsets'][-1]} atoms, "
        f"{args.out.stat().st_size / 1e6:.2f} MB, {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
