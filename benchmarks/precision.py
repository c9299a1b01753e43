"""The numeric precision of a timed run: ``float32``, ``tf32`` (CUDA) or ``bf16`` (autocast).

- ``float32``: every product in float32; TF32 switched off (PyTorch's default for matmuls).
- ``tf32``: float32 tensors, with CUDA's TensorFloat-32 products (matmuls and cuDNN); CUDA only.
- ``bf16``: bfloat16 autocast. A tensorframe model takes it as a user does (``amp``:
  :meth:`tensorframe.TensorModel.backbone_precision`: the backbone's products in bfloat16, the
  heads in float32; on a CPU on a graph padded to bucket sizes); a peer module runs whole under
  ``torch.autocast``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch

PRECISIONS = ("float32", "tf32", "bf16")


def check_precision(precision: str, device: torch.device) -> None:
    """ValueError for an unknown precision, or ``tf32`` off CUDA."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "tf32" and device.type != "cuda":
        raise ValueError(f"precision tf32: TensorFloat-32 is a CUDA product mode; on {device.type} use float32 or bf16")


@contextmanager
def matmul_precision(precision: str, device: torch.device) -> Iterator[None]:
    """TF32 on for ``tf32``, off otherwise, within the block (restored after)."""
    check_precision(precision, device)
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def tensorframe_call(model: Any, call: Callable[[], Any], precision: str) -> Callable[[], Any]:
    """``call`` under ``precision`` for a tensorframe model (bf16: its ``backbone_precision``)."""
    def run() -> Any:
        with model.backbone_precision(torch.bfloat16) if precision == "bf16" else nullcontext():
            return call()
    return run


def peer_call(device: torch.device, call: Callable[[], Any], precision: str) -> Callable[[], Any]:
    """``call`` under ``precision`` for a peer module (bf16: ``torch.autocast`` around all of it)."""
    def run() -> Any:
        with torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext():
            return call()
    return run
