"""Data-loader workers in training: batches built in worker processes are the training
process's batches bit for bit (with and without the graph cache, in memory and on disk, and
across an interrupted and resumed run); a worker's error is raised in the training process
with its type and one-line message; ``num_workers: auto`` resolves as documented."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

import tensorframe.train.loader as loader
from tensorframe.fields import builtin_field
from tensorframe.graph.cache import GraphCache, GraphRecipe
from tensorframe.train.config import RESUMABLE_CHANGES, parse_train_config
from tensorframe.train.loader import BatchBuilder, BatchLoader, iterate_batches, resolved_workers
from tensorframe.train.trainer import Trainer
from tests.test_graph_cache import (
    BATCHES,
    SETTINGS,
    _train_config,
    assert_identical,
    killed_and_resumed,
    mixed_structures,
)

CPU = torch.device("cpu")


def _builder(samples, cache: GraphCache | None = None) -> BatchBuilder:
    labelled = [dataclasses.replace(s, targets={"dipole": torch.arange(3.0).numpy() + i})
                for i, s in enumerate(samples)]
    recipe = GraphRecipe(SETTINGS["cutoff"], SETTINGS["triplet_cutoff"], None, torch.float64)
    return BatchBuilder(labelled, recipe, {"dipole": builtin_field("dipole")}, ("dipole",), torch.float64, cache)


@pytest.mark.parametrize("cache", [None, "memory", "disk"])
def test_worker_batches_equal_the_training_process_batches(tmp_path: Path, cache: str | None):
    samples = mixed_structures()
    graph_cache = {None: None, "memory": GraphCache(), "disk": GraphCache(tmp_path)}[cache]
    builder = _builder(samples, graph_cache)
    if graph_cache is not None:
        graph_cache.prepare(builder.samples, list(range(len(samples))), builder.recipe)
    here = list(iterate_batches(builder, BATCHES, CPU, num_workers=0))
    there = list(iterate_batches(builder, BATCHES, CPU, num_workers=2))
    assert len(here) == len(there) == len(BATCHES)
    for (graph, labels), (graph_w, labels_w) in zip(here, there, strict=True):
        assert_identical(graph_w, graph)
        assert labels.keys() == labels_w.keys() and all(torch.equal(labels[k], labels_w[k]) for k in labels)


def test_persistent_workers_after_an_abandoned_pass_give_the_next_passes_whole():
    """Workers live across passes (epochs, validation); a pass left midway (out of time, an
    error) must not leak its prefetched batches into the next one."""
    builder = _builder(mixed_structures())
    expected = list(iterate_batches(builder, BATCHES[::-1], CPU, num_workers=0))
    with BatchLoader(builder, CPU, num_workers=2) as batches:
        abandoned = batches(BATCHES)
        next(abandoned)
        abandoned.close()
        for _ in range(2):
            got = list(batches(BATCHES[::-1]))
            assert len(got) == len(expected)
            for (graph, labels), (graph_w, labels_w) in zip(expected, got, strict=True):
                assert_identical(graph_w, graph)
                assert all(torch.equal(labels[k], labels_w[k]) for k in labels)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_worker_error_is_raised_with_its_type_and_one_line(num_workers: int):
    samples = mixed_structures()
    positions = samples[4].positions.copy()
    positions[3] = positions[2]
    samples[4] = dataclasses.replace(samples[4], positions=positions)
    batches = iter(iterate_batches(_builder(samples), BATCHES, CPU, num_workers))
    next(batches)  # the first batch is fine
    with pytest.raises(ValueError, match=r"^structure 1: positions: atoms 2 and 3 .* apart") as raised:
        next(batches)
    assert "\n" not in str(raised.value) and "Traceback" not in str(raised.value)


def test_auto_workers(monkeypatch: pytest.MonkeyPatch):
    assert resolved_workers("auto", CPU) == 0
    assert resolved_workers(3, CPU) == 3
    monkeypatch.setattr(loader.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert resolved_workers("auto", torch.device("cuda")) == loader.MAX_AUTO_WORKERS
    monkeypatch.setattr(loader.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert resolved_workers("auto", torch.device("cuda")) == 1
    monkeypatch.setattr(loader.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert resolved_workers("auto", torch.device("cuda")) == 0


def test_num_workers_parses_and_may_change_on_resume(tmp_path: Path):
    assert {"num_workers", "graph_cache_dir"} <= RESUMABLE_CHANGES
    for value in (0, 2, "auto"):
        assert parse_train_config(dict(_train_config(tmp_path, True, "x"), num_workers=value)).num_workers == value
    for bad in (-1, "many"):
        with pytest.raises(ValueError, match="num_workers"):
            parse_train_config(dict(_train_config(tmp_path, True, "x"), num_workers=bad))


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.parametrize("graph_cache", [False, "memory", "disk"])
def test_training_with_workers_is_bit_identical(tmp_path: Path, graph_cache: bool | str):
    reference = Trainer(parse_train_config(_train_config(tmp_path, False, "in-process")), tmp_path)
    reference.run()
    config = dict(_train_config(tmp_path, graph_cache, "workers"), num_workers=2)
    with_workers = Trainer(parse_train_config(config), tmp_path)
    with_workers.run()
    assert with_workers.workers == 2
    expected, got = _weights(reference), _weights(with_workers)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    logs = [(tmp_path / d / "train_log.csv").read_text().splitlines() for d in ("in-process", "workers")]
    assert [row.split(",")[:5] for row in logs[0]] == [row.split(",")[:5] for row in logs[1]]


def test_a_run_with_workers_resumes_mid_epoch_to_the_same_weights(tmp_path: Path):
    reference = Trainer(parse_train_config(_train_config(tmp_path, False, "in-process")), tmp_path)
    reference.run()
    config = dict(_train_config(tmp_path, "disk", "killed"), checkpoint_every_steps=2, num_workers=2,
                  graph_cache_dir="shared-cache")
    resumed = killed_and_resumed(config, tmp_path)
    assert resumed.graph_cache.store.folder.parent == tmp_path / "shared-cache"
    assert len(list((tmp_path / "shared-cache").iterdir())) == 1  # the resumed run reused the store
    expected, got = _weights(reference), _weights(resumed)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
