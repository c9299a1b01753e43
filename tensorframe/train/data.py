"""Training data: reading, splitting, checking every structure before the first step,
per-field normalisation from the training split, and batching labels.

Every error names where the structure came from (``file: structure i``) and the field.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tensorframe.config import ConfigError
from tensorframe.fields import DERIVED_FIELDS, FieldSpec
from tensorframe.graph.neighbors import neighbor_list
from tensorframe.model import TensorModel, embedding_limit, unembedded_element
from tensorframe.registry import PluginError
from tensorframe.train.config import DataConfig, SplitConfig, resolve_path
from tensorframe.types import Sample

SPLITS = ("train", "valid", "test")
PERIODIC_ONLY = ("stress",)  # labels that need a volume


class DataError(ValueError):
    """Bad training data; the message names the file, the structure and the field."""


@dataclass(frozen=True)
class Dataset:
    """Structures with, for each, where it came from (``"data.xyz: structure 12"``)."""

    samples: list[Sample]
    origins: list[str]

    def __len__(self) -> int:
        return len(self.samples)


def load_dataset(config: DataConfig, base: Path) -> Dataset:
    """All structures named by the data section, files in the order given."""
    if config.default:
        try:
            from tensorframe.datasets import load_default_dataset
        except ImportError as error:
            raise DataError(f"data: default: the embedded data set is not available ({error})") from None
        samples = list(load_default_dataset())
        return Dataset(samples, [f"default data set: structure {i}" for i in range(len(samples))])
    from tensorframe.io.read import read_structures

    samples: list[Sample] = []
    origins: list[str] = []
    options = dict(config.options)
    if config.key_map is not None:
        options["key_map"] = dict(config.key_map)
    for value in config.paths:
        path = resolve_path(base, value)
        if not path.exists():
            raise DataError(f"data.path: {path}: no such file or folder")
        try:
            read = read_structures(path, format=config.format, **options)
        except TypeError as error:  # an option this reader does not take
            raise DataError(f"data.options / data.key_map: {path}: {error}") from None
        except PluginError as error:
            raise DataError(f"data.format: {error}") from None
        samples.extend(read)
        origins.extend(f"{path}: structure {i}" for i in range(len(read)))
    if not samples:
        raise DataError("data: no structures were read")
    return Dataset(samples, origins)


def split_indices(num_structures: int, config: SplitConfig, base: Path) -> dict[str, list[int]]:
    """Indices of the train, valid and test structures (seeded shuffle, or from a JSON file).

    Raises:
        ConfigError: for a split that leaves train or valid empty, or a bad split file.
    """
    if config.file is not None:
        split = _read_split_file(resolve_path(base, config.file), num_structures)
    else:
        order = np.random.default_rng(config.seed).permutation(num_structures).tolist()
        n_valid = int(round(config.valid * num_structures))
        n_test = int(round(config.test * num_structures))
        n_train = num_structures - n_valid - n_test
        split = {"train": order[:n_train], "valid": order[n_train : n_train + n_valid], "test": order[n_train + n_valid :]}
    for name in ("train", "valid"):
        if not split[name]:
            raise ConfigError(f"split: the {name} split of {num_structures} structures is empty; give it a larger fraction")
    return split


def _read_split_file(path: Path, num_structures: int) -> dict[str, list[int]]:
    try:
        raw = json.loads(path.read_text())
    except OSError as error:
        raise ConfigError(f"split.file: {path}: cannot read: {error.strerror or error}") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"split.file: {path}: invalid JSON: {error}") from None
    if not isinstance(raw, dict) or set(raw) - set(SPLITS) or not {"train", "valid"} <= set(raw):
        raise ConfigError(f"split.file: {path}: expected an object with lists 'train', 'valid' and optionally 'test'")
    split: dict[str, list[int]] = {}
    seen: dict[int, str] = {}
    for name in SPLITS:
        values = raw.get(name, [])
        if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise ConfigError(f"split.file: {path}: {name!r} must be a list of integer indices")
        for v in values:
            if not 0 <= v < num_structures:
                raise ConfigError(f"split.file: {path}: {name!r} holds index {v}, outside 0..{num_structures - 1}")
            if v in seen:
                raise ConfigError(f"split.file: {path}: index {v} is in both {seen[v]!r} and {name!r}")
            seen[v] = name
        split[name] = list(values)
    return split


def check_targets_predicted(model: TensorModel, targets: Iterable[str]) -> None:
    """Every target field has a head.

    Raises:
        ConfigError: naming the field and the fields the heads predict.
    """
    for name in targets:
        if name not in model.fields:
            hint = (" (or, for forces and stress as derivatives of an energy head, set model.conservative: true)"
                    if name in DERIVED_FIELDS and not model.conservative else "")
            raise ConfigError(
                f"targets.{name}: no head predicts this field (the model predicts: {', '.join(model.fields)}); "
                f"add a head for it under model.heads or remove it from targets{hint}"
            )


def validate_samples(model: TensorModel, dataset: Dataset, indices: Iterable[int], targets: Sequence[str]) -> None:
    """Check, before any training step, every structure that a split uses.

    Checks: atomic numbers the backbone embeds; each target label present, of the field's
    shape and finite, and within reach of its head (``Head.label_out_of_reach``: e.g. eps
    with an eigenvalue below 1 for a ``positive_definite`` dielectric head); no two atoms on
    top of each other; every atom has a neighbour inside the cutoff (a lone atom would get
    zero tensors whatever its label).

    Raises:
        DataError: naming the file, structure index, and field or atom.
    """
    fields = model.fields
    max_z = embedding_limit(model.backbone)
    settings = model.graph_settings
    for index in sorted(set(indices)):
        sample, where = dataset.samples[index], dataset.origins[index]
        if sample.num_atoms == 0:
            raise DataError(f"{where}: the structure has no atoms")
        problem = unembedded_element(sample.numbers, max_z)
        if problem is not None:
            raise DataError(f"{where}: {problem}; raise the backbone's max_z or remove the structure")
        for name in targets:
            _check_label(sample, fields[name], where)
            head = model.heads[name] if name in model.heads else None
            problem = head.label_out_of_reach(np.asarray(sample.targets[name])) if head is not None else None
            if problem is not None:
                raise DataError(f"{where}: field {name!r}: the label {problem}")
            if name in PERIODIC_ONLY and not sample.pbc.all():
                raise DataError(
                    f"{where}: field {name!r}: needs a cell periodic in all three directions (pbc is "
                    f"{sample.pbc.tolist()}); remove {name} from targets or these structures from the data"
                )
        try:
            nl = neighbor_list(sample, settings.cutoff, settings.max_neighbors, settings.neighbor_shell_tolerance)
        except ValueError as error:
            raise DataError(f"{where}: {error}") from None
        lonely = np.flatnonzero(np.bincount(nl.idx_i, minlength=sample.num_atoms) == 0)
        if lonely.size:
            raise DataError(
                f"{where}: atom {int(lonely[0])} (Z={int(sample.numbers[lonely[0]])}) has no neighbour within the "
                f"cutoff of {settings.cutoff} Å, so every tensor head would give it zero; raise model.cutoff or "
                f"remove the structure"
            )


def _check_label(sample: Sample, field: FieldSpec, where: str) -> None:
    if field.name not in sample.targets:
        present = ", ".join(sorted(sample.targets)) or "none"
        raise DataError(f"{where}: field {field.name!r}: missing label (labels present: {present}; check data.key_map)")
    value = np.asarray(sample.targets[field.name])
    expected = ((sample.num_atoms,) if field.level == "atom" else ()) + field.shape
    if value.shape != expected:
        raise DataError(f"{where}: field {field.name!r}: label of shape {value.shape}, expected {expected}")
    if not np.issubdtype(value.dtype, np.number) or not np.all(np.isfinite(value)):
        raise DataError(f"{where}: field {field.name!r}: label holds NaN, inf or non-numbers")


def reference_energies(model: TensorModel, samples: Sequence[Sample], targets: Iterable[str],
                       e0s: str | dict[str, float] = "fit") -> dict[str, dict[int, float]]:
    """Per-element reference values ``{field: {Z: value}}`` (``normalize.E0s``).

    ``"fit"`` / ``"average"``: least squares of the labels on the element counts (MACE calls
    this fit ``average``) for every extensive or atom-level scalar target; ``"none"``: zero;
    ``{symbol: eV}``: the given reference energies for the ``energy`` field (every element of
    ``samples`` needs one), the fit for other such targets.

    Raises:
        ConfigError: for an unknown element symbol or an element of the data without a value.
    """
    if e0s == "none":
        return {}
    targets = list(targets)
    result = fit_element_shifts(model, samples, [t for t in targets if not (isinstance(e0s, dict) and t == "energy")])
    if isinstance(e0s, dict):
        if "energy" not in model.heads:
            raise ConfigError("normalize.E0s: reference energies are for an energy head, and the model has none")
        from ase.data import atomic_numbers, chemical_symbols

        given = {}
        for symbol, value in e0s.items():
            if symbol not in atomic_numbers or symbol == "X":
                raise ConfigError(f"normalize.E0s: {symbol!r} is not an element symbol")
            given[atomic_numbers[symbol]] = float(value)
        present = sorted({int(z) for s in samples for z in s.numbers})
        missing = [chemical_symbols[z] for z in present if z not in given]
        if missing:
            raise ConfigError(f"normalize.E0s: no reference energy for {', '.join(missing)} (elements of the "
                              f"training structures: {', '.join(chemical_symbols[z] for z in present)})")
        result["energy"] = given
    return result


def fit_element_shifts(model: TensorModel, samples: Sequence[Sample], targets: Iterable[str]) -> dict[str, dict[int, float]]:
    """Per-element reference values of extensive or atom-level scalar targets (energies) by
    least squares of the labels on the element counts, ``{field: {Z: value}}``."""
    result: dict[str, dict[int, float]] = {}
    for name in targets:
        if not model.scaling[name].supports_element_shift:
            continue
        elements = sorted({int(z) for s in samples for z in s.numbers})
        column = {z: c for c, z in enumerate(elements)}
        if model.fields[name].level == "atom":
            rows = np.concatenate([s.numbers for s in samples])
            design = np.zeros((rows.shape[0], len(elements)))
            design[np.arange(rows.shape[0]), [column[int(z)] for z in rows]] = 1.0
            labels = np.concatenate([np.asarray(s.targets[name], dtype=np.float64).reshape(-1) for s in samples])
        else:
            design = np.zeros((len(samples), len(elements)))
            for row, sample in enumerate(samples):  # one row per structure: element counts
                np.add.at(design[row], [column[int(z)] for z in sample.numbers], 1.0)
            labels = np.array([float(s.targets[name]) for s in samples])
        solution, *_ = np.linalg.lstsq(design, labels, rcond=None)
        result[name] = {z: float(v) for z, v in zip(elements, solution, strict=True)}
    return result


def fit_normalization(model: TensorModel, samples: Sequence[Sample], targets: Iterable[str], shift: bool = True) -> dict[str, tuple[float, float]]:
    """``{field: (scale, shift)}`` from the training structures, so that the heads learn O(1) numbers.

    A conservative model's energy takes the forces' scale (when forces are a target), so that
    its derivatives come out O(1) too; derived fields get a scale (their loss's) and no shift.

    The shift is the mean isotropic part (mean for rank 0, mean trace / 3 for rank 2), per
    atom for atom-level and extensive fields, only where :class:`FieldScaling` allows it and
    the head does not fix a structure mean (acoustic sum rule). The scale is the RMS of
    the residual components (per atom for extensive structure fields); for a
    positive-definite dielectric it is the RMS of ``eps - I``.
    """
    result = {}
    for name in targets:
        field, scaling = model.fields[name], model.scaling[name]
        head = model.heads[name] if name in model.heads else None
        atom_counts = np.array([s.num_atoms for s in samples], dtype=np.float64)
        values = np.concatenate if field.level == "atom" else np.stack
        labels = values([np.asarray(s.targets[name], dtype=np.float64) for s in samples])
        if scaling.supports_element_shift:  # subtract the reference values already set per element
            reference = scaling.element_shift.detach().cpu().double().numpy()
            per_atom = [reference[s.numbers] for s in samples]
            labels = labels - (np.concatenate(per_atom) if field.level == "atom" else np.array([p.sum() for p in per_atom]))
        flat = labels.reshape(labels.shape[0], -1)
        unit = np.eye(3).reshape(-1) if field.rank == 2 else np.ones(1)
        extensive = field.level == "structure" and field.reduce == "sum"
        per_row = atom_counts if extensive else np.ones(flat.shape[0])
        if scaling.keep_identity:
            residual, offset = flat - unit, 0.0
        else:
            residual, offset = flat, 0.0
            if shift and scaling.supports_shift and not (head is not None and head.subtract_structure_mean):
                isotropic = (flat @ unit) / unit.sum()  # the value for rank 0, trace / 3 for rank 2
                offset = float(isotropic.sum() / per_row.sum())
                residual = flat - offset * per_row[:, None] * unit
        residual = residual / per_row[:, None]
        scale = float(np.sqrt(np.mean(residual**2)))
        result[name] = (scale if scale > 1e-12 else 1.0, offset)
    if model.conservative and "forces" in result:
        # The energy's scale sets the forces' (F = -dE/dr): the RMS force component in eV
        # per Å of motion, as MACE's rms_forces_scaling; its shift stays the energy's.
        result["energy"] = (result["forces"][0], result.get("energy", (1.0, 0.0))[1])
    return result


def collate_targets(samples: Sequence[Sample], fields: dict[str, FieldSpec], names: Iterable[str],
                    dtype: torch.dtype, device: torch.device | str) -> dict[str, torch.Tensor]:
    """Labels of a batch, atom-level fields concatenated and structure-level fields stacked;
    energies (:attr:`FieldSpec.accumulates_in_float64`) in float64, the others in ``dtype``.

    Shapes: atom-level (sum N, 3, ...); structure-level (B, 3, ...)
    """
    out = {}
    for name in names:
        join = np.concatenate if fields[name].level == "atom" else np.stack
        out[name] = torch.from_numpy(join([np.asarray(s.targets[name], dtype=np.float64) for s in samples])).to(
            device=device, dtype=torch.float64 if fields[name].accumulates_in_float64 else dtype
        )
    return out
