"""The shared benchmark tasks: data, targets, heads, graph cutoffs, split, budgets.

Every backbone and every peer sees the same structures, the same split and the same budget.
A task reads files from ``../shared/datasets/<dataset>`` (env ``TENSORFRAME_DATASETS``
overrides the root; every folder has a PROVENANCE.md) or, for ``default-molecules``, the
embedded molecule set. Splits are seeded fractions of the structures a task keeps; in reduced
mode (CI) only the first ``max_structures_reduced`` structures of the seeded order are kept.

    load_task(TASKS["becs-eps"], reduced=False) -> (samples, {"train": [...], "valid": [...], "test": [...]})
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from tensorframe.types import Sample

DATASETS_ROOT = Path(os.environ.get("TENSORFRAME_DATASETS", Path(__file__).resolve().parents[2] / "shared" / "datasets"))
FULL_BUDGET_S = 90.0  # wall-clock training budget per task x model in full mode (the machine has 2 cores)
EMBEDDED = "embedded"  # Task.dataset of the embedded molecule set


@dataclass(frozen=True)
class Task:
    """One benchmark task.

    Attributes:
        name: key in :data:`TASKS`.
        description / caveats: text for docs/benchmarks.md (from the dataset's PROVENANCE.md).
        dataset: folder under the datasets root, or ``"embedded"``.
        reader: ``{"format": reader name, "paths": [paths inside the folder], "options": {...}}``
            (``tensorframe.read_structures`` options), plus optional ``"transform"``: the name
            of a function in this module applied to the samples (e.g. the ABO3 piezo sign fix).
        targets: {field: loss weight}.
        heads: tensorframe head configs (``{"name": ..., **options}``), one per target.
        cutoff / triplet_cutoff: graph radii in Å.
        split: {"train", "valid", "test": fractions, "seed": int}.
        budget_full / budget_reduced: {"epochs": int, "max_time_s": float} per backbone.
        max_structures_reduced / max_structures_full: structures kept (a seeded subset) in
            reduced / full mode; None keeps all.
        metric_elements: {field: [atomic numbers]}: atom-level errors of that field are counted
            on these elements only (the others carry placeholder zeros, not labels).
    """

    name: str
    description: str
    caveats: str
    dataset: str
    reader: dict[str, Any]
    targets: dict[str, float]
    heads: list[dict[str, Any]]
    cutoff: float
    triplet_cutoff: float
    split: dict[str, Any] = field(default_factory=lambda: {"train": 0.8, "valid": 0.1, "test": 0.1, "seed": 0})
    budget_full: dict[str, Any] = field(default_factory=lambda: {"epochs": 100, "max_time_s": FULL_BUDGET_S})
    budget_reduced: dict[str, Any] = field(default_factory=lambda: {"epochs": 1, "max_time_s": 5.0})
    max_structures_reduced: int = 24
    max_structures_full: int | None = None
    metric_elements: dict[str, list[int]] = field(default_factory=dict)

    @property
    def folder(self) -> Path | None:
        return None if self.dataset == EMBEDDED else DATASETS_ROOT / self.dataset

    def available(self) -> tuple[bool, str]:
        """Whether the data is here, and if not, why."""
        if self.folder is None:
            return True, ""
        missing = [p for p in self.reader["paths"] if not (self.folder / p).exists()]
        if missing:
            return False, f"dataset files not found: {', '.join(str(self.folder / p) for p in missing)}"
        return True, ""


def _water_bulk_reader(paths: list[str]) -> dict[str, Any]:
    return {"format": "deepmd", "paths": paths, "options": {}}


TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        Task(
            name="becs-eps",
            description="Born effective charges (per atom, 3x3) and electronic dielectric tensors (per crystal) "
            "of 1520 inorganic crystals (2-40 atoms) from the e3nn-models repository (S. Fang et al.).",
            caveats="The DFT source is not stated in the repository. BECs satisfy the acoustic sum rule exactly, "
            "so the born head enforces it; eps eigenvalues reach 824 (a few extreme crystals dominate RMSE).",
            dataset="e3nn-crystal-becs-eps",
            reader={"format": "ase", "paths": ["phonon_becs_epsilon.xyz"], "options": {}},
            targets={"born_charges": 1.0, "dielectric": 1.0},
            heads=[{"name": "born", "acoustic_sum_rule": True}, {"name": "dielectric", "positive_definite": True}],
            cutoff=5.0,
            triplet_cutoff=4.0,
        ),
        Task(
            name="abo3-piezo",
            description="Piezoelectric stress tensors (C/m^2), electronic dielectric tensors and Born charges of "
            "176 tetragonal P4mm ABO3 perovskites (Jia et al., arXiv:2310.16591), PBEsol DFPT.",
            caveats="The source flips the sign of a whole piezo tensor whenever |min| > |max| (e33 > 0 in 175/176 "
            "rows), so the sign is not tied to the stored positions. The suite re-ties it: the polar sign of each "
            "crystal is the z displacement of its B cations from the centroid of their six nearest O, and the "
            "label is multiplied by that sign (e33 > 0 along the polarization). Dielectric: the electronic "
            "(clamped-ion) tensor; the total one has soft-mode values up to 2125. No licence in the source repo.",
            dataset="abo3-p4mm-piezo",
            reader={
                "format": "asedb",
                "paths": ["ABO3_P4mm_piezo.db"],
                "options": {"key_map": {
                    "Born Effective Charge Tensor": "born_charges",
                    "Static Dielectric Tensor": "dielectric",
                    "Piezoelectric Stress Tensor eij": "piezo",
                }},
                "transform": "fix_abo3_piezo_sign",
            },
            targets={"piezo": 1.0, "dielectric": 1.0, "born_charges": 1.0},
            heads=[{"name": "piezo"}, {"name": "dielectric", "positive_definite": True},
                   {"name": "born", "acoustic_sum_rule": True}],
            cutoff=6.0,
            triplet_cutoff=4.0,
            budget_full={"epochs": 200, "max_time_s": FULL_BUDGET_S},
        ),
        Task(
            name="deepmd-water-polar",
            description="Global polarizability (3x3) of 64-molecule liquid-water frames (192 atoms), "
            "DeePMD-kit water_tensor example, training + validation global_system (160 frames).",
            caveats="Units are not documented by DeePMD (size suggests Å^3 per molecule); stored as given. "
            "The DFT level is not stated; DeePMD calls the data too small for a production model.",
            dataset="deepmd-water-tensor",
            reader=_water_bulk_reader(["polar/training_data_reformat/global_system",
                                       "polar/validation_data_reformat/global_system"]),
            targets={"polarizability": 1.0},
            heads=[{"name": "tensor", "field": "polarizability"}],
            cutoff=4.5,
            triplet_cutoff=3.0,
            max_structures_reduced=8,
        ),
        Task(
            name="deepmd-water-dipole",
            description="Atomic dipoles (Wannier-centroid displacement of each O, zero on H) of 64-molecule "
            "liquid-water frames, DeePMD-kit water_tensor example, atomic_system (160 frames).",
            caveats="The dipole folders carry DeePMD's nopbc marker, so frames are read as non-periodic with "
            "unwrapped molecules (as DeePMD trains on them). H rows are exact zeros and count in the MAE; "
            "units not documented (probably Å).",
            dataset="deepmd-water-tensor",
            reader=_water_bulk_reader(["dipole/training_data_reformat/atomic_system",
                                       "dipole/validation_data_reformat/atomic_system"]),
            targets={"atomic_dipole": 1.0},
            heads=[{"name": "tensor", "field": "atomic_dipole"}],
            cutoff=4.5,
            triplet_cutoff=3.0,
            max_structures_reduced=8,
            metric_elements={"atomic_dipole": [8]},
        ),
        Task(
            name="tensoap-clusters",
            description="Dipole (3), polarizability (3x3) and first hyperpolarizability (3x3x3) of water monomer, "
            "dimer and Zundel cation (1000 configurations each), TENSOAP / Grisafi et al. PRL 120, 036002 (2018).",
            caveats="Units are atomic units (not stated per field; the monomer values match a.u.): the dipole is "
            "read as e·bohr and converted to e·Å; polarizability and hyperpolarizability stay in a.u.",
            dataset="tensoap-water-response",
            reader={
                "format": "ase",
                "paths": ["water_monomer_coords_1000.xyz", "water_dimer_coords_1000.xyz",
                          "water_zundel_coords_1000.xyz"],
                "options": {"key_map": {"mu": "dipole", "alpha": "polarizability", "beta": "hyperpolarizability"},
                            "units": {"dipole": "e*bohr"}},
            },
            targets={"dipole": 1.0, "polarizability": 1.0, "hyperpolarizability": 1.0},
            heads=[{"name": "tensor", "field": "dipole"}, {"name": "tensor", "field": "polarizability"},
                   {"name": "tensor", "field": "hyperpolarizability"}],
            cutoff=5.0,
            triplet_cutoff=4.0,
        ),
        Task(
            name="tensoap-bulk-dielectric",
            description="Electronic dielectric tensor of 1000 periodic bulk-water frames (32 H2O, cubic "
            "9.7-10.4 Å boxes), TENSOAP.",
            caveats="Units a.u./dimensionless (mean trace/3 = 1.82); level of theory not stated in the repo.",
            dataset="tensoap-water-response",
            reader={"format": "ase", "paths": ["water_bulk_coords_1000.xyz"],
                    "options": {"key_map": {"epsilon": "dielectric"}, "default_keys": False}},
            targets={"dielectric": 1.0},
            heads=[{"name": "dielectric", "positive_definite": True}],
            cutoff=4.5,
            triplet_cutoff=3.0,
            max_structures_reduced=12,
            max_structures_full=300,
        ),
        Task(
            name="water-forces",
            description="Forces of 64-molecule liquid water (192 atoms, 400 frames), DeePMD-kit water example.",
            caveats="DFT level and paper not stated in the repo (tutorial example).",
            dataset="deepmd-water-forces",
            reader={"format": "deepmd", "paths": ["data_0", "data_1", "data_2", "data_3"], "options": {}},
            targets={"forces": 1.0},
            heads=[{"name": "force"}],
            cutoff=4.5,
            triplet_cutoff=3.0,
            max_structures_reduced=8,
            max_structures_full=160,
        ),
        Task(
            name="combustion-forces",
            description="Forces of small reactive C/H/O molecules (7-10 atoms, 2062 frames), DeePMD-kit nopbc "
            "example from Zeng et al., Nat. Commun. 11, 5713 (2020).",
            caveats="Reactive, high-force configurations (max |F| about 148 eV/Å); the README calls the data "
            "too small for production.",
            dataset="deepmd-nopbc-combustion",
            reader={"format": "deepmd", "paths": ["C1H4O2", "C3H3O4", "C4H3O1"], "options": {}},
            targets={"forces": 1.0},
            heads=[{"name": "force"}],
            cutoff=5.0,
            triplet_cutoff=4.0,
        ),
        Task(
            name="si-nmr",
            description="Full (non-symmetric) 29Si NMR shielding tensors of 421 silicon oxides (6-192 atoms), "
            "Venetos et al., J. Phys. Chem. A (2023), via the matten repository.",
            caveats="The source labels one Si per symmetry orbit; the reader gives every Si its tensor by the "
            "space-group operations (sigma_j = R sigma_i R^T), and other atoms placeholder zeros: errors are "
            "counted on Si only. Units probably ppm (not stated). No licence in the source repo.",
            dataset="matten-si-nmr",
            reader={"format": "matten-nmr", "paths": ["si_nmr_data.json"], "options": {}},
            targets={"nmr_shielding": 1.0},
            heads=[{"name": "tensor", "field": "nmr_shielding"}],
            cutoff=5.0,
            triplet_cutoff=3.5,
            max_structures_reduced=12,
            max_structures_full=200,
            metric_elements={"nmr_shielding": [14]},
        ),
        Task(
            name="default-molecules",
            description="The embedded molecule set: 40 small molecules x 8 rattled conformations (320), "
            "RHF/6-31G* (PySCF): forces, dipole, polarizability, Born charges (APTs), hyperpolarizability.",
            caveats="Made by scripts/make_default_data.py; a small set meant for smoke tests and examples.",
            dataset=EMBEDDED,
            reader={"format": "default", "paths": [], "options": {}},
            targets={"forces": 1.0, "dipole": 1.0, "polarizability": 1.0, "born_charges": 1.0,
                     "hyperpolarizability": 1.0},
            heads=[{"name": "force"}, {"name": "tensor", "field": "dipole"},
                   {"name": "tensor", "field": "polarizability"}, {"name": "born"},
                   {"name": "tensor", "field": "hyperpolarizability"}],
            cutoff=5.0,
            triplet_cutoff=5.0,
        ),
    ]
}


def budget(task: Task, reduced: bool) -> dict[str, Any]:
    """The task's budget for one backbone or peer."""
    return dict(task.budget_reduced if reduced else task.budget_full)


def _read(task: Task, limit: int | None) -> list[Sample]:
    """The task's structures, files in the order given (at most ``limit`` per file)."""
    if task.folder is None:
        from tensorframe.datasets import load_default_dataset

        return list(load_default_dataset())
    from tensorframe.io.read import read_structures

    options = dict(task.reader.get("options", {}))
    fmt = task.reader["format"]
    samples: list[Sample] = []
    for path in task.reader["paths"]:
        extra: dict[str, Any] = {}
        if limit is not None and fmt == "ase":
            extra["index"] = f":{limit}"
        elif limit is not None and fmt in ("asedb", "matten-nmr"):
            extra["limit"] = limit
        samples.extend(read_structures(task.folder / path, format=fmt, **options, **extra))
    transform = task.reader.get("transform")
    if transform is not None:
        samples = globals()[transform](samples)
    return samples


def load_task(task: Task, reduced: bool) -> tuple[list[Sample], dict[str, list[int]]]:
    """The task's samples and split indices into them (seeded fractions).

    Reduced mode keeps ``max_structures_reduced`` structures (drawn evenly across the task's
    files); the split of the kept structures uses the same fractions and seed.

    Raises:
        FileNotFoundError: when the dataset is absent (see :meth:`Task.available`).
    """
    ok, reason = task.available()
    if not ok:
        raise FileNotFoundError(reason)
    keep = task.max_structures_reduced if reduced else task.max_structures_full
    per_file = None
    if keep is not None and task.folder is not None:
        per_file = max(2, -(-keep // max(1, len(task.reader["paths"]))) * 4)  # read a few more than needed
    samples = _read(task, per_file)
    if keep is not None and len(samples) > keep:
        order = np.random.default_rng(task.split.get("seed", 0)).permutation(len(samples))[:keep]
        samples = [samples[i] for i in sorted(order.tolist())]
    return samples, split_indices(len(samples), task.split)


def split_indices(num_structures: int, split: dict[str, Any]) -> dict[str, list[int]]:
    """Seeded shuffle of ``range(num_structures)`` cut into train / valid / test (as the trainer does)."""
    order = np.random.default_rng(split.get("seed", 0)).permutation(num_structures).tolist()
    n_valid = max(1, int(round(split["valid"] * num_structures)))
    n_test = max(1, int(round(split["test"] * num_structures)))
    n_train = num_structures - n_valid - n_test
    if n_train < 1:
        raise ValueError(f"{num_structures} structures are too few for a train/valid/test split")
    return {"train": order[:n_train], "valid": order[n_train:n_train + n_valid], "test": order[n_train + n_valid:]}


# ----------------------------------------------------------------- transforms
def polar_sign(sample: Sample, axis: int = 2) -> float:
    """Sign of the polarization of a perovskite along ``axis``: the summed displacement of its
    B cations (the cations whose six nearest O are closest) from the centroid of those six O.

    Returns 0.0 when the displacement is below 1e-3 Å (no polar distortion to tie a sign to).
    """
    numbers, positions, cell = sample.numbers, sample.positions, sample.cell
    oxygen = np.flatnonzero(numbers == 8)
    cations = np.flatnonzero(numbers != 8)
    # minimum-image vectors cation -> O over the 27 neighbouring cells
    shifts = np.array([[a, b, c] for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)], dtype=float) @ cell
    vectors = positions[oxygen][None, :, None, :] + shifts[None, None] - positions[cations][:, None, None, :]
    vectors = vectors.reshape(len(cations), -1, 3)
    distances = np.linalg.norm(vectors, axis=-1)
    nearest = np.argsort(distances, axis=1)[:, :6]
    six = np.take_along_axis(vectors, nearest[..., None], axis=1)  # (C, 6, 3)
    mean_distance = np.take_along_axis(distances, nearest, axis=1).mean(axis=1)
    b_sites = mean_distance < mean_distance.min() + 0.25
    displacement = -six[b_sites].mean(axis=1)[:, axis].sum()
    return 0.0 if abs(displacement) < 1e-3 else float(np.sign(displacement))


def fix_abo3_piezo_sign(samples: list[Sample]) -> list[Sample]:
    """Multiply each ABO3 piezo label by the crystal's polar sign along z (see the task's caveats)."""
    fixed = []
    for sample in samples:
        sign = polar_sign(sample)
        if sign < 0 and "piezo" in sample.targets:
            targets = dict(sample.targets)
            targets["piezo"] = -np.asarray(targets["piezo"])
            sample = replace(sample, targets=targets)
        fixed.append(sample)
    return fixed
