"""Inference in blocks of rows that stay in cache.

A chain of row-wise operations on triplet-sized tensors (a gather, a matmul, an activation,
another matmul) run one whole tensor at a time streams every intermediate through main
memory; run on blocks of rows (:data:`BLOCK_VALUES` values of the widest one), each block's intermediates stay in the
core's cache between operations. Only without autograd (inference) and outside
``torch.compile`` (:func:`blocked_inference`): under autograd the whole-tensor form keeps what
the backward pass needs. Rows are independent, so the values are those of the whole-tensor
form (up to the rounding of a differently blocked matmul).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

BLOCK_VALUES = 65536
"""Values per row block of the widest intermediate: 256 KiB of float32, well within a core's L2
cache (1024 rows of 64 values; narrower rows make taller blocks, so that each operation still
has enough work to outweigh its call). Measured against whole tensors by
``python -m benchmarks.bench_kernels`` (docs/benchmarks.md)."""


def blocked_inference() -> bool:
    """Whether to run on blocks: no autograd graph is being recorded, ``torch.compile`` is
    not tracing (it fuses the whole-tensor form itself; a loop whose length follows the number
    of triplets would be unrolled and recompiled for every batch), and no autocast is active
    (the blocks write into preallocated outputs with ``out=``, which autocast does not cast)."""
    return (not torch.is_grad_enabled() and not torch.compiler.is_compiling()
            and not torch.is_autocast_enabled("cpu") and not torch.is_autocast_enabled("cuda"))


def row_blocks(rows: int, width: int) -> Iterator[slice]:
    """Consecutive slices covering ``range(rows)``, each of at most ``BLOCK_VALUES // width``
    rows (at least one), ``width`` being the widest intermediate's number of columns."""
    block = max(1, BLOCK_VALUES // max(1, width))
    for start in range(0, rows, block):
        yield slice(start, min(start + block, rows))
