"""The disk graph cache: a store gives :func:`build_graph`'s graphs exactly, is reused by a
later cache on the same structures and settings (without building anything), is never read
for other settings or other structures, leaves nothing behind when its build is interrupted,
and travels to worker processes as its folder."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import tensorframe.graph.cache as graph_cache
from tensorframe.graph import build_graph
from tensorframe.graph.cache import GraphCache, GraphRecipe
from tensorframe.graph.store import open_or_build_store, store_fingerprint
from tests.test_graph_cache import BATCHES, SETTINGS, assert_identical, mixed_structures

KEYS = [10, 11, 12, 13, 14, 15]  # dataset indices, not positions in the list


def prepared(directory: Path, samples, **options) -> GraphCache:
    cache = GraphCache(directory)
    cache.prepare(samples, KEYS, GraphRecipe(**SETTINGS, **options))
    return cache


def refuse_building(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a topology was built")

    monkeypatch.setattr(graph_cache, "structure_topologies", refuse)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("max_neighbors", [None, 6])
def test_stored_batches_equal_built_graphs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype,
                                           max_neighbors: int | None):
    samples = mixed_structures()
    options = {"dtype": dtype, "max_neighbors": max_neighbors}
    cache = prepared(tmp_path, samples, **options)
    assert cache.store is not None and len(cache) == len(samples) and not cache.topologies
    refuse_building(monkeypatch)
    for positions in BATCHES:
        chosen = [samples[p] for p in positions]
        stored = cache.graph(chosen, [KEYS[p] for p in positions], **{**SETTINGS, **options})
        assert_identical(stored, build_graph(chosen, **{**SETTINGS, **options}))
    assert not cache.topologies  # everything came from the store


def test_a_later_cache_reuses_the_store_without_building(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    samples = mixed_structures()
    first = prepared(tmp_path, samples)
    refuse_building(monkeypatch)
    second = prepared(tmp_path, samples)
    assert second.store is not None and second.store.folder == first.store.folder
    assert [p.name for p in tmp_path.iterdir()] == [first.store.folder.name]  # one store, no partial folders
    chosen = [samples[p] for p in BATCHES[0]]
    assert_identical(second.graph(chosen, [KEYS[p] for p in BATCHES[0]], **SETTINGS), build_graph(chosen, **SETTINGS))


@pytest.mark.parametrize("change", ["cutoff", "triplet_cutoff", "max_neighbors", "dtype", "positions", "keys"])
def test_other_settings_or_structures_get_another_store(tmp_path: Path, change: str):
    samples = mixed_structures()
    first = prepared(tmp_path, samples)
    options, keys = {}, KEYS
    if change == "positions":
        moved = samples[2].positions.copy()
        moved[0, 0] += 1e-9
        samples = [*samples[:2], dataclasses.replace(samples[2], positions=moved), *samples[3:]]
    elif change == "keys":
        keys = [k + 1 for k in KEYS]
    else:
        options = {"cutoff": 5.0, "triplet_cutoff": 3.0, "max_neighbors": 4, "dtype": torch.float64}
        options = {change: options[change]}
    cache = GraphCache(tmp_path)
    cache.prepare(samples, keys, GraphRecipe(**{**SETTINGS, **options}))
    assert cache.store.folder != first.store.folder
    chosen = [samples[p] for p in BATCHES[1]]
    assert_identical(cache.graph(chosen, [keys[p] for p in BATCHES[1]], **{**SETTINGS, **options}),
                     build_graph(chosen, **{**SETTINGS, **options}))


def test_an_interrupted_build_leaves_no_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    samples = mixed_structures()
    monkeypatch.setattr(graph_cache, "CHUNK_STRUCTURES", 2)
    monkeypatch.setattr("tensorframe.graph.store.CHUNK_STRUCTURES", 2)
    calls = []
    real = graph_cache.structure_topologies

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(graph_cache, "structure_topologies", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepared(tmp_path, samples)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(graph_cache, "structure_topologies", real)
    cache = prepared(tmp_path, samples)  # built again, whole
    assert len(cache.store) == len(samples)
    assert_identical(cache.graph(samples, KEYS, **SETTINGS), build_graph(samples, **SETTINGS))


def test_a_bad_structure_is_named_and_nothing_is_stored(tmp_path: Path):
    samples = mixed_structures()
    positions = samples[3].positions.copy()
    positions[1] = positions[0]
    samples[3] = dataclasses.replace(samples[3], positions=positions)
    cache = GraphCache(tmp_path)
    with pytest.raises(ValueError, match=r"^slab\.xyz: structure 3: positions: atoms 0 and 1 .* apart"):
        cache.prepare(samples, KEYS, GraphRecipe(**SETTINGS), names=[f"slab.xyz: structure {p}" for p in range(6)])
    assert list(tmp_path.iterdir()) == []


def test_a_pickled_cache_reads_the_same_store(tmp_path: Path):
    samples = mixed_structures()
    cache = prepared(tmp_path, samples)
    cache.graph(samples[:1], KEYS[:1], **SETTINGS)  # maps the files
    copy = pickle.loads(pickle.dumps(cache))
    assert copy.store.folder == cache.store.folder and copy.store._arrays is None  # noqa: SLF001 - pickled lean
    assert_identical(copy.graph(samples, KEYS, **SETTINGS), build_graph(samples, **SETTINGS))


def test_keys_outside_the_store_are_built_and_kept_in_memory(tmp_path: Path):
    samples = mixed_structures()
    cache = GraphCache(tmp_path)
    cache.prepare(samples[:3], KEYS[:3], GraphRecipe(**SETTINGS))
    graph = cache.graph(samples, KEYS, **SETTINGS)
    assert_identical(graph, build_graph(samples, **SETTINGS))
    assert sorted(cache.topologies) == KEYS[3:] and len(cache) == 6


def test_a_memory_cache_prepares_every_structure_once(monkeypatch: pytest.MonkeyPatch):
    samples = mixed_structures()
    cache = GraphCache()
    cache.prepare(samples, KEYS, GraphRecipe(**SETTINGS))
    assert sorted(cache.topologies) == KEYS and cache.store is None
    refuse_building(monkeypatch)
    cache.prepare(samples, KEYS, GraphRecipe(**SETTINGS))
    assert_identical(cache.graph(samples, KEYS, **SETTINGS), build_graph(samples, **SETTINGS))


def test_a_repeated_key_is_refused(tmp_path: Path):
    samples = mixed_structures()
    with pytest.raises(ValueError, match="each structure key must be given once"):
        open_or_build_store(tmp_path, graph_cache.CacheKey(4.5, 3.5, None, 1e-3, torch.float32), samples[:2],
                            [1, 1], lambda chunk, positions: [])


def test_the_fingerprint_sees_every_input():
    samples = mixed_structures()
    key = graph_cache.CacheKey(4.5, 3.5, None, 1e-3, torch.float32)
    base = store_fingerprint(key, samples, KEYS)
    assert store_fingerprint(key, samples, KEYS) == base
    pbc = samples[3].pbc.copy()
    pbc[2] = not pbc[2]
    others = [
        store_fingerprint(dataclasses.replace(key, shell_tolerance=2e-3), samples, KEYS),
        store_fingerprint(key, [*samples[:3], dataclasses.replace(samples[3], pbc=pbc), *samples[4:]], KEYS),
        store_fingerprint(key, [*samples[:1], dataclasses.replace(samples[1], numbers=samples[1].numbers[::-1].copy()),
                                *samples[2:]], KEYS),
        store_fingerprint(key, [*samples[:2], dataclasses.replace(samples[2], cell=samples[2].cell * (1 + 1e-12)),
                                *samples[3:]], KEYS),
    ]
    assert len({base, *others}) == 5
    assert np.all([len(f) == 64 for f in others])
