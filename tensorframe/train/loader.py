"""Training batches, built in the training process or by data-loader worker processes.

A batch is a list of dataset indices; :class:`BatchBuilder` turns it into the batch's
:class:`~tensorframe.types.Graph` and labels, from plain data only (the structures, the
model's :class:`~tensorframe.graph.cache.GraphRecipe`, the label fields and the graph
cache), so the same builder runs in worker processes. A :class:`BatchLoader` yields the
batches of a list in order: with ``num_workers = 0`` each is built when asked for (on the
training device); otherwise ``torch.utils.data.DataLoader`` workers (started once per run,
kept across epochs) build the next batches on the CPU while the model steps, and they are
moved to the device here. Both give the same batches, in the same order (tested bit for bit
on the CPU).

A worker's error (a bad structure, a graph over the memory budget) comes back as data and
is raised here with its own type and one-line message, never as a worker traceback.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from tensorframe.fields import FieldSpec
from tensorframe.graph.cache import GraphCache, GraphRecipe
from tensorframe.train.data import collate_targets
from tensorframe.types import Graph, Sample

PREFETCH_PER_WORKER = 2
"""Batches each worker builds ahead of the training loop."""
MAX_AUTO_WORKERS = 4
"""``num_workers: auto`` on CUDA uses at most this many worker processes."""

Batch = tuple[Graph, dict[str, torch.Tensor]]


@dataclass(frozen=True)
class BatchBuilder:
    """Builds one batch (graph and labels) from dataset indices.

    Attributes:
        samples: the dataset's structures (indexed by dataset index).
        recipe: the model's graph settings.
        fields, targets: the label fields and the names of the trained ones.
        dtype: the model's floating dtype (labels other than energies).
        cache: per-structure topologies keyed by dataset index, or None.
    """

    samples: Sequence[Sample]
    recipe: GraphRecipe
    fields: dict[str, FieldSpec]
    targets: tuple[str, ...]
    dtype: torch.dtype
    cache: GraphCache | None = None

    def __call__(self, indices: Sequence[int], device: torch.device | str) -> Batch:
        """Shapes: as :func:`collate_targets`; the graph of ``len(indices)`` structures.

        Raises:
            ValueError, GraphTooLarge: as :func:`~tensorframe.graph.build_graph`.
        """
        chosen = [self.samples[i] for i in indices]
        graph = self.recipe.build(chosen, device, cache=self.cache, keys=list(indices))
        return graph, collate_targets(chosen, self.fields, self.targets, self.dtype, device)


@dataclass(frozen=True)
class _Failure:
    """An exception raised while building a batch in a worker, carried back as data."""

    kind: type[BaseException]
    message: str


class _Indices(Dataset):
    """Item ``i`` is ``i``: workers receive dataset indices and build whole batches in ``collate_fn``."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> int:
        return index


class _CurrentBatches(Sampler[list[int]]):
    """The batch sampler of a persistent loader: yields whatever batches were set last (it
    runs in the training process, so setting them before each pass reaches the workers)."""

    def __init__(self) -> None:
        self.batches: Sequence[Sequence[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return (list(batch) for batch in self.batches)

    def __len__(self) -> int:
        return len(self.batches)


@dataclass(frozen=True)
class _Packed:
    """A batch as numpy arrays, the cheap way between processes: pickled by value through the
    worker's pipe, where tensors would each take a shared-memory segment and a file
    descriptor (about ten times slower per batch, measured)."""

    graph: dict[str, np.ndarray | float]
    labels: dict[str, np.ndarray]

    @staticmethod
    def of(batch: Batch) -> _Packed:
        graph, labels = batch
        values = {f.name: getattr(graph, f.name) for f in dataclasses.fields(graph)}
        return _Packed({k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in values.items()},
                       {k: v.numpy() for k, v in labels.items()})

    def unpacked(self) -> Batch:
        graph = Graph(**{k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in self.graph.items()})
        return graph, {k: torch.from_numpy(v) for k, v in self.labels.items()}


@dataclass(frozen=True)
class _BuildOnCpu:
    """``collate_fn`` of the workers: the batch of these indices on the CPU (packed), or its failure."""

    builder: BatchBuilder

    def __call__(self, indices: list[int]) -> _Packed | _Failure:
        try:
            return _Packed.of(self.builder(indices, "cpu"))
        except Exception as error:  # noqa: BLE001 - carried back and raised by the training process
            return _Failure(type(error), str(error))


class BatchLoader:
    """Batches of dataset indices -> (graph, labels) on ``device``, in order.

    With ``num_workers > 0``, one ``DataLoader`` whose workers persist across calls (epochs
    and validation passes), so they start once per run; :meth:`close` stops them.
    """

    def __init__(self, builder: BatchBuilder, device: torch.device, num_workers: int) -> None:
        self.builder, self.device, self.num_workers = builder, device, num_workers
        self._sampler = _CurrentBatches()
        self._loader: DataLoader | None = None

    def __call__(self, batches: Sequence[Sequence[int]]) -> Iterator[Batch]:
        """Raises:
            ValueError, GraphTooLarge: as :meth:`BatchBuilder.__call__`, raised when that batch's
                turn comes, with the worker's message.
        """
        if self.num_workers == 0 or len(batches) == 0:
            for indices in batches:
                yield self.builder(indices, self.device)
            return
        if self._loader is None:
            self._loader = DataLoader(_Indices(len(self.builder.samples)), batch_sampler=self._sampler,
                                      num_workers=self.num_workers, collate_fn=_BuildOnCpu(self.builder),
                                      prefetch_factor=PREFETCH_PER_WORKER, persistent_workers=True)
        self._sampler.batches = batches
        for item in self._loader:
            if isinstance(item, _Failure):
                try:
                    error = item.kind(item.message)
                except Exception:  # noqa: BLE001 - an exception type that takes other arguments
                    error = RuntimeError(item.message)
                raise error
            graph, labels = item.unpacked()
            if self.device.type != "cpu":
                graph = graph.to(self.device)
                labels = {name: value.to(self.device, non_blocking=True) for name, value in labels.items()}
            yield graph, labels

    def close(self) -> None:
        """Stop the worker processes (if any); a later call starts them again."""
        self._loader = None  # its iterator's finaliser shuts the workers down

    def __enter__(self) -> BatchLoader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def iterate_batches(builder: BatchBuilder, batches: Sequence[Sequence[int]], device: torch.device,
                    num_workers: int) -> Iterator[Batch]:
    """The batches of ``batches``, in order, on ``device``, from a :class:`BatchLoader` that is
    closed when the iteration ends."""
    with BatchLoader(builder, device, num_workers) as loader:
        yield from loader(batches)


def resolved_workers(choice: int | str, device: torch.device) -> int:
    """``num_workers`` as a count: ``auto`` is 0 on the CPU (the training step already uses the
    cores, and with the graph cache graphs are a few per cent of a step: docs/benchmarks.md)
    and, on CUDA, one worker per CPU core this process may use beyond the first, at most
    :data:`MAX_AUTO_WORKERS`."""
    if choice != "auto":
        return int(choice)
    if device.type != "cuda":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(MAX_AUTO_WORKERS, cores - 1))


__all__ = ["MAX_AUTO_WORKERS", "PREFETCH_PER_WORKER", "BatchBuilder", "BatchLoader", "iterate_batches", "resolved_workers"]
