"""Per-structure topologies, and their store on disk: the graph cache for sets that do not
fit in memory.

A :class:`TopologyStore` holds the neighbour lists and local triplets of a fixed list of
structures (keyed by their dataset index) for one :class:`~tensorframe.graph.cache.CacheKey`,
as flat binary files read through ``numpy.memmap``: a batch reads only its structures' rows,
the operating system's page cache keeps what is used, and several data-loader worker
processes share one copy.

A store lives in ``<directory>/<fingerprint>/``, where the fingerprint is a SHA-256 of the
format version, the cache key (cutoffs, ``max_neighbors``, shell tolerance, dtype) and every
structure's key, atomic numbers, positions, cell and pbc: changing a cutoff or a structure
gives another folder, so a stale store is never read. It is written to a temporary folder
and renamed into place when complete, so an interrupted build leaves nothing that is
mistaken for a store (the next run builds it again).

Layout: ``meta.json`` (format, key, counts) and one raw little-endian file per array:
``keys``, ``edge_offsets``, ``triplet_offsets``, ``candidates`` (per structure), ``idx_i``,
``idx_j``, ``cell_shift`` (E, 3), ``in_triplets`` (per edge) and ``idx_kj``, ``idx_ji`` (per
triplet, local to their structure).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tensorframe.types import Sample

STORE_FORMAT = 1
"""Bumped whenever the layout or the meaning of a stored array changes."""
CHUNK_STRUCTURES = 256
"""Structures whose topologies are built (and held in memory) at once while writing a store."""

_EDGE_ARRAYS = {"idx_i": (np.int64, ()), "idx_j": (np.int64, ()), "cell_shift": (np.int64, (3,)),
                "in_triplets": (np.bool_, ())}
_TRIPLET_ARRAYS = {"idx_kj": (np.int64, ()), "idx_ji": (np.int64, ())}
_STRUCTURE_ARRAYS = {"keys": (np.int64, ()), "edge_offsets": (np.int64, ()), "triplet_offsets": (np.int64, ()),
                     "candidates": (np.int64, ())}


def store_fingerprint(key: CacheKey, samples: Sequence[Sample], keys: Sequence[int]) -> str:
    """Hex SHA-256 of everything a store's contents depend on (see the module docstring)."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"format": STORE_FORMAT, **_key_record(key)}, sort_keys=True).encode())
    digest.update(np.asarray(keys, dtype=np.int64).tobytes())
    for sample in samples:
        for array, dtype in ((sample.numbers, np.int64), (sample.positions, np.float64),
                             (sample.cell, np.float64), (sample.pbc, np.bool_)):
            part = np.ascontiguousarray(array, dtype=dtype)
            digest.update(str(part.shape).encode())
            digest.update(part.tobytes())
    return digest.hexdigest()


def _key_record(key: CacheKey) -> dict:
    return {"cutoff": key.cutoff, "triplet_cutoff": key.triplet_cutoff, "max_neighbors": key.max_neighbors,
            "shell_tolerance": key.shell_tolerance, "dtype": str(key.dtype)}


@dataclass(frozen=True)
class CacheKey:
    """Everything a structure's topology depends on besides the structure itself."""

    cutoff: float
    triplet_cutoff: float
    max_neighbors: int | None
    shell_tolerance: float
    dtype: torch.dtype  # the triplet mask is ``edge_len < triplet_cutoff`` in this dtype


@dataclass(frozen=True)
class Topology:
    """One structure's edges and triplets (indices local to the structure).

    Shapes: idx_i, idx_j (E,) int64; cell_shift (E, 3) int64; in_triplets (E,) bool;
    idx_kj, idx_ji (T,) int64 (edge indices); candidates: the triplet count of
    :func:`~tensorframe.graph.limits.count_triplets` used by the memory budget.
    """

    idx_i: np.ndarray
    idx_j: np.ndarray
    cell_shift: np.ndarray
    in_triplets: np.ndarray
    idx_kj: np.ndarray
    idx_ji: np.ndarray
    candidates: int

    @property
    def nbytes(self) -> int:
        arrays = (self.idx_i, self.idx_j, self.cell_shift, self.in_triplets, self.idx_kj, self.idx_ji)
        return sum(a.nbytes for a in arrays)


class TopologyStore(Mapping[int, Topology]):
    """A complete store, opened read-only: ``store[key]`` is that structure's :class:`Topology`
    (its arrays are views of the memory-mapped files). Pickles as its folder (for data-loader
    workers), and maps the files again on first use after unpickling."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        meta = json.loads((self.folder / "meta.json").read_text())
        if meta.get("format") != STORE_FORMAT:
            raise ValueError(f"{self.folder}: graph cache format {meta.get('format')}, expected {STORE_FORMAT}")
        self.meta = meta
        self._arrays: dict[str, np.ndarray] | None = None
        self._rows: dict[int, int] | None = None

    def __getstate__(self) -> dict:
        return {"folder": self.folder, "meta": self.meta, "_arrays": None, "_rows": None}

    def _open(self) -> tuple[dict[str, np.ndarray], dict[int, int]]:
        if self._arrays is None or self._rows is None:
            counts = {"structures": self.meta["structures"], "edges": self.meta["edges"],
                      "triplets": self.meta["triplets"]}
            arrays = {}
            for group, specs in (("structures", _STRUCTURE_ARRAYS), ("edges", _EDGE_ARRAYS),
                                 ("triplets", _TRIPLET_ARRAYS)):
                for name, (dtype, tail) in specs.items():
                    rows = counts[group] + (1 if name.endswith("_offsets") else 0)
                    if rows * int(np.prod(tail, dtype=np.int64)) == 0:
                        arrays[name] = np.zeros((rows, *tail), dtype=dtype)
                    else:
                        arrays[name] = np.memmap(self.folder / name, dtype=dtype, mode="r", shape=(rows, *tail))
            self._arrays = arrays
            self._rows = {int(k): row for row, k in enumerate(arrays["keys"])}
        return self._arrays, self._rows

    def __getitem__(self, key: int) -> Topology:
        arrays, rows = self._open()
        row = rows[key]
        e0, e1 = int(arrays["edge_offsets"][row]), int(arrays["edge_offsets"][row + 1])
        t0, t1 = int(arrays["triplet_offsets"][row]), int(arrays["triplet_offsets"][row + 1])
        return Topology(arrays["idx_i"][e0:e1], arrays["idx_j"][e0:e1], arrays["cell_shift"][e0:e1],
                        arrays["in_triplets"][e0:e1], arrays["idx_kj"][t0:t1], arrays["idx_ji"][t0:t1],
                        int(arrays["candidates"][row]))

    def __contains__(self, key: object) -> bool:
        return key in self._open()[1]

    def __iter__(self) -> Iterator[int]:
        return iter(self._open()[1])

    def __len__(self) -> int:
        return int(self.meta["structures"])

    @property
    def nbytes(self) -> int:
        """Bytes of the store's files on disk."""
        return sum(path.stat().st_size for path in self.folder.iterdir())


def open_or_build_store(
    directory: Path,
    key: CacheKey,
    samples: Sequence[Sample],
    keys: Sequence[int],
    build: Callable[[Sequence[Sample], Sequence[int]], list[Topology]],
) -> TopologyStore:
    """The store of ``samples`` (with their ``keys``) under ``directory``: opened if a complete
    one exists, else built with ``build(samples, positions_in_list)`` in chunks of
    :data:`CHUNK_STRUCTURES` and renamed into place when complete.

    Raises:
        ValueError: a key given twice; whatever ``build`` raises (the temporary folder is removed).
        OSError: the directory cannot be written.
    """
    if len(set(keys)) != len(keys):
        raise ValueError("graph cache: each structure key must be given once")
    directory = Path(directory)
    folder = directory / store_fingerprint(key, samples, keys)
    if (folder / "meta.json").exists():
        return TopologyStore(folder)
    directory.mkdir(parents=True, exist_ok=True)
    partial = directory / f".partial-{folder.name[:16]}-{uuid.uuid4().hex[:8]}"
    partial.mkdir()
    try:
        _write_store(partial, key, samples, keys, build)
        try:
            os.rename(partial, folder)
        except OSError:  # another process finished the same store first: use it
            if not (folder / "meta.json").exists():
                raise
            shutil.rmtree(partial, ignore_errors=True)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return TopologyStore(folder)


def _write_store(folder: Path, key: CacheKey, samples: Sequence[Sample], keys: Sequence[int],
                 build: Callable[[Sequence[Sample], Sequence[int]], list[Topology]]) -> None:
    names = [*_EDGE_ARRAYS, *_TRIPLET_ARRAYS]
    files = {name: open(folder / name, "wb") for name in names}  # noqa: SIM115 - closed below
    edge_offsets, triplet_offsets, candidates = [0], [0], []
    try:
        for start in range(0, len(samples), CHUNK_STRUCTURES):
            positions = list(range(start, min(start + CHUNK_STRUCTURES, len(samples))))
            for topology in build([samples[p] for p in positions], positions):
                for name in names:
                    array = getattr(topology, name)
                    dtype = (_EDGE_ARRAYS | _TRIPLET_ARRAYS)[name][0]
                    files[name].write(np.ascontiguousarray(array, dtype=dtype).tobytes())
                edge_offsets.append(edge_offsets[-1] + topology.idx_i.shape[0])
                triplet_offsets.append(triplet_offsets[-1] + topology.idx_kj.shape[0])
                candidates.append(topology.candidates)
    finally:
        for handle in files.values():
            handle.close()
    for name, values in (("keys", keys), ("edge_offsets", edge_offsets), ("triplet_offsets", triplet_offsets),
                         ("candidates", candidates)):
        np.asarray(values, dtype=np.int64).tofile(folder / name)
    meta = {"format": STORE_FORMAT, **_key_record(key), "structures": len(samples), "edges": edge_offsets[-1],
            "triplets": triplet_offsets[-1]}
    (folder / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")


__all__ = ["CHUNK_STRUCTURES", "STORE_FORMAT", "CacheKey", "Topology", "TopologyStore", "open_or_build_store", "store_fingerprint"]
