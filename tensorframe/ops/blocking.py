"""Inference in blocks of rows that stay in cache.

A chain of row-wise operations on triplet-sized tensors (a gather, a matmul, an activation,
another matmul) run one whole tensor at a time streams every intermediate through main
memory; run on blocks of :data:`ROW_BLOCK` rows, each block's intermediates stay in the
core's cache between operations. Only without autograd (inference) and outside
``torch.compile`` (:func:`blocked_inference`): under autograd the whole-tensor form keeps what
the backward pass needs. Rows are independent, so the values are those of the whole-tensor
form (up to the rounding of a differently blocked matmul).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

ROW_BLOCK = 1024
"""Rows per block: 1024 rows of 64 float32 values are 256 KiB, well within a core's L2 cache.
Measured against whole tensors by ``python -m benchmarks.bench_kernels`` (docs/benchmarks.md)."""


def blocked_inference() -> bool:
    """Whether to run on blocks: no autograd graph is being recorded and ``torch.compile`` is
    not tracing (it fuses the whole-tensor form itself; a loop whose length follows the number
    of triplets would be unrolled and recompiled for every batch)."""
    return not torch.is_grad_enabled() and not torch.compiler.is_compiling()


def row_blocks(rows: int) -> Iterator[slice]:
    """Consecutive slices of at most :data:`ROW_BLOCK` rows covering ``range(rows)``."""
    block = ROW_BLOCK
    for start in range(0, rows, block):
        yield slice(start, min(start + block, rows))
