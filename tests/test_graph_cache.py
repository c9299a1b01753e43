"""The training graph cache: batches joined from cached per-structure topologies are
:func:`build_graph`'s graphs exactly, stale settings are never read, the memory budget still
applies, and training is bit-identical with and without the cache."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import ase
import ase.build
import numpy as np
import pytest
import torch

import tensorframe.graph.cache as graph_cache
import tensorframe.graph.collate as collate
import tensorframe.train.trainer as trainer_module
from tensorframe.graph import build_graph
from tensorframe.graph.cache import GraphCache, estimated_cache_bytes
from tensorframe.graph.limits import GraphTooLarge
from tensorframe.io.convert import to_sample
from tensorframe.train.config import RESUMABLE_CHANGES, parse_train_config
from tensorframe.train.trainer import Trainer
from tensorframe.types import Graph, Sample


def _rattled(atoms: ase.Atoms, seed: int) -> Sample:
    atoms = atoms.copy()
    atoms.rattle(0.05, seed=seed)
    return to_sample(atoms)


def mixed_structures() -> list[Sample]:
    """Crystals (one skewed, one supercell), a slab (pbc in 2 directions) and molecules."""
    rocksalt = ase.build.bulk("NaCl", "rocksalt", a=5.6)
    skewed = ase.Atoms("SiO", cell=[[3.0, 0, 0], [1.4, 2.9, 0], [0.6, 0.8, 3.3]],
                       scaled_positions=[[0, 0, 0], [0.4, 0.45, 0.5]], pbc=True)
    slab = ase.build.fcc111("Al", size=(2, 2, 3), vacuum=5.0)
    water = ase.build.molecule("H2O")
    methane = ase.build.molecule("CH4")
    return [_rattled(a, seed) for seed, a in enumerate(
        [rocksalt, water, skewed, slab, rocksalt.repeat((2, 1, 1)), methane])]


def assert_identical(cached: Graph, built: Graph) -> None:
    for field in dataclasses.fields(Graph):
        a, b = getattr(cached, field.name), getattr(built, field.name)
        if isinstance(b, torch.Tensor):
            assert a.dtype == b.dtype and torch.equal(a, b), field.name
        else:
            assert a == b, field.name


SETTINGS = {"cutoff": 4.5, "triplet_cutoff": 3.5}
BATCHES = [[0, 1, 2], [3, 4, 5], [5, 0, 3], [2], [4, 1]]  # structures reappear in other batches


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("max_neighbors", [None, 6])
def test_cached_batches_equal_built_graphs(dtype: torch.dtype, max_neighbors: int | None):
    samples = mixed_structures()
    cache = GraphCache()
    for keys in BATCHES + BATCHES:  # the second pass reads only from the cache
        chosen = [samples[k] for k in keys]
        built = build_graph(chosen, max_neighbors=max_neighbors, dtype=dtype, **SETTINGS)
        cached = cache.graph(chosen, keys, max_neighbors=max_neighbors, dtype=dtype, **SETTINGS)
        assert_identical(cached, built)
    assert len(cache) == len(samples)
    assert built.idx_kj.numel() > 0 and cache.nbytes > 0


def test_cached_triplets_are_used_not_rebuilt(monkeypatch: pytest.MonkeyPatch):
    samples = mixed_structures()
    cache = GraphCache()
    for keys in BATCHES:
        cache.graph([samples[k] for k in keys], keys, **SETTINGS)

    def refuse(*args, **kwargs):
        raise AssertionError("triplets rebuilt for a cached batch")

    monkeypatch.setattr(collate, "build_triplets", refuse)
    monkeypatch.setattr(graph_cache, "neighbor_list", refuse)
    for keys in BATCHES:
        cache.graph([samples[k] for k in keys], keys, **SETTINGS)


def test_a_batch_whose_triplet_mask_differs_from_the_cached_one_rebuilds_its_triplets():
    """The safety net for an edge length that rounds across the triplet cutoff differently in a
    batch than alone: the batch's own mask decides, as in :func:`build_graph`."""
    samples = mixed_structures()
    cache = GraphCache()
    cache.graph(samples, range(len(samples)), **SETTINGS)
    stale = cache.topologies[0]
    cache.topologies[0] = dataclasses.replace(stale, in_triplets=~stale.in_triplets,
                                              idx_kj=stale.idx_kj[:0], idx_ji=stale.idx_ji[:0])
    assert_identical(cache.graph(samples, range(len(samples)), **SETTINGS), build_graph(samples, **SETTINGS))


def test_other_graph_settings_never_read_a_stale_cache():
    samples = mixed_structures()
    cache = GraphCache()
    cache.graph(samples, range(len(samples)), **SETTINGS)
    for changed in ({"cutoff": 5.0}, {"triplet_cutoff": 3.0}, {"max_neighbors": 4}, {"shell_tolerance": 0.3},
                    {"dtype": torch.float64}):
        options = {**SETTINGS, **changed}
        assert_identical(cache.graph(samples, range(len(samples)), **options), build_graph(samples, **options))


def test_cached_batches_are_held_to_the_memory_budget():
    samples = mixed_structures()
    cache = GraphCache()
    cache.graph(samples, range(len(samples)), **SETTINGS)  # filled under the default budget
    with pytest.raises(GraphTooLarge, match=r"^batch of 6 structures: .* over the 1e-05 GiB graph budget"):
        cache.graph(samples, range(len(samples)), memory_budget_gb=1e-5, **SETTINGS)


def test_cache_estimate_is_the_right_size():
    samples = mixed_structures()
    cache = GraphCache()
    cache.graph(samples, range(len(samples)), **SETTINGS)
    estimate = estimated_cache_bytes(samples, SETTINGS["cutoff"], SETTINGS["triplet_cutoff"], None)
    assert 0.25 < estimate / cache.nbytes < 4


# ------------------------------------------------------------------ training
def _train_config(folder: Path, graph_cache: bool | str, output_dir: str) -> dict:
    frames = []
    structures = mixed_structures()
    for seed, sample in enumerate(structures + structures[:2]):
        atoms = ase.Atoms(numbers=sample.numbers, positions=sample.positions, cell=sample.cell, pbc=sample.pbc)
        atoms.rattle(0.1, seed=seed)
        atoms.info["eps"] = np.eye(3) * (2.0 + 0.1 * seed)
        atoms.arrays["bec"] = np.random.default_rng(seed).normal(size=(len(atoms), 9))
        frames.append(atoms)
    if not (folder / "data.xyz").exists():
        ase.io.write(folder / "data.xyz", frames, format="extxyz")
    return {
        "model": {"backbone": {"name": "reference", "hidden": 8, "num_radial": 8},
                  "heads": [{"name": "born", "hidden": 8}, {"name": "dielectric", "hidden": 8}],
                  "lifting": {"hidden": 8, "out_dim": 8},
                  "cutoff": 4.0, "triplet_cutoff": 3.5},
        "data": {"path": "data.xyz", "key_map": {"eps": "dielectric", "bec": "born_charges"}},
        "split": {"train": 0.75, "valid": 0.25, "test": 0.0, "seed": 0},
        "targets": {"born_charges": 1.0, "dielectric": 1.0},
        "epochs": 2, "batch_size": 2, "dtype": "float64", "output_dir": output_dir,
        "progress": False, "parity_plots": False, "graph_cache": graph_cache,
    }


def _trained(folder: Path, graph_cache: bool | str, output_dir: str) -> tuple[Trainer, dict[str, torch.Tensor]]:
    trainer = Trainer(parse_train_config(_train_config(folder, graph_cache, output_dir)), folder)
    trainer.run()
    return trainer, {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_training_is_bit_identical_with_and_without_the_cache(tmp_path: Path):
    with_cache, weights = _trained(tmp_path, True, "cached")
    without, reference = _trained(tmp_path, False, "built")
    assert with_cache.graph_cache is not None and len(with_cache.graph_cache) == 8  # train + valid, filled
    assert without.graph_cache is None
    assert all(torch.equal(weights[k], reference[k]) for k in reference)
    logs = [(tmp_path / d / "train_log.csv").read_text().splitlines() for d in ("cached", "built")]
    assert [row.split(",")[:3] for row in logs[0]] == [row.split(",")[:3] for row in logs[1]]


def test_graph_cache_option_parses_and_may_change_on_resume(tmp_path: Path):
    assert "graph_cache" in RESUMABLE_CHANGES
    for value in (True, False, "auto", "memory", "disk"):
        assert parse_train_config(_train_config(tmp_path, value, "x")).graph_cache == value
    with pytest.raises(ValueError, match="graph_cache"):
        parse_train_config(_train_config(tmp_path, "sometimes", "x"))


class Killed(Exception):
    """Stands in for SIGKILL mid-epoch."""


def killed_and_resumed(config: dict, folder: Path) -> Trainer:
    """A run of ``config`` killed at step 5 (epoch 2, after the step-4 checkpoint; needs
    ``checkpoint_every_steps: 2``), then resumed to the end."""

    def kill_at_step_5(trainer: Trainer, step: int) -> None:
        if step == 5:
            raise Killed

    with pytest.raises(Killed):
        Trainer(parse_train_config(config), folder, on_step=kill_at_step_5).run()
    resumed = Trainer(parse_train_config(config), folder, resume=True)
    resumed.run()
    return resumed


def test_a_resumed_cached_run_refills_its_cache_and_matches_an_uncached_run(tmp_path: Path):
    _, reference = _trained(tmp_path, False, "built")
    resumed = killed_and_resumed(dict(_train_config(tmp_path, True, "killed"), checkpoint_every_steps=2), tmp_path)
    # refilled lazily: the 4 structures of epoch 2's last two steps and the 2 validation ones
    assert resumed.graph_cache is not None and len(resumed.graph_cache) == 6
    weights = resumed.model.state_dict()
    assert all(torch.equal(weights[k], reference[k]) for k in reference)


def test_auto_moves_the_cache_to_disk_over_the_memory_budget_and_off_without_room(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    config = dict(_train_config(tmp_path, "auto", "on"), epochs=1)
    on = Trainer(parse_train_config(config), tmp_path)
    on.run()
    assert on.graph_cache is not None and on.graph_cache.store is None
    assert "graph_cache" not in capsys.readouterr().out
    monkeypatch.setattr(trainer_module, "DEFAULT_CACHE_BUDGET_GB", 1e-6)
    disk = Trainer(parse_train_config(dict(config, output_dir="disk")), tmp_path)
    disk.run()
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("graph_cache")]
    assert disk.graph_cache is not None and disk.graph_cache.store is not None
    assert disk.graph_cache.store.folder.parent == tmp_path / "disk" / "graph_cache"
    assert len(notes) == 2 and "on disk" in notes[0] and "exceeds 1e-06 GiB of memory" in notes[0]
    assert notes[1].startswith("graph_cache: 8 structures' neighbour lists and triplets ready in")

    class Full:
        free = 10

    monkeypatch.setattr(trainer_module.shutil, "disk_usage", lambda path: Full())
    off = Trainer(parse_train_config(dict(config, output_dir="off")), tmp_path)
    off.run()
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("graph_cache")]
    assert off.graph_cache is None
    assert len(notes) == 1 and "exceeds the free space" in notes[0] and "graph_cache: disk" in notes[0]
