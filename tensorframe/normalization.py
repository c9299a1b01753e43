"""Per-field output scaling: heads learn O(1) numbers, predictions come out in physical units.

Only equivariant affine maps are allowed: a scale for every field, plus an isotropic shift
for scalars (``shift``) and rank-2 tensors (``shift * I``). Shifts are per atom for atom-level
and extensive (summed) fields, per structure for intensive (mean) fields. Extensive and
atom-level scalars (energies) also take a shift per element (reference atomic energies, the
E0s of MACE or NequIP's per-species shifts).
"""

from __future__ import annotations

import torch
from torch import nn

from tensorframe.fields import FieldSpec
from tensorframe.ops.scatter import scatter_sum
from tensorframe.types import Graph

MAX_Z = 118


class FieldScaling(nn.Module):
    """``y = scale * x + shift * (1 or I)``; with ``keep_identity`` the scale acts on
    ``x - I`` so a head's built-in identity (positive-definite dielectric) is kept exactly.

    Reference energies per element are kept in float64 (also in a float32 model), and a
    scalar that carries them comes out in float64. A ``derived`` field (conservative
    forces, stress) is never scaled, it is the energy's derivative: its ``scale`` only
    normalises its loss.

    Shapes: x (N or B, 3, ...) -> same
    """

    def __init__(self, field: FieldSpec, keep_identity: bool = False, derived: bool = False) -> None:
        super().__init__()
        self.field = field
        self.keep_identity = keep_identity
        self.derived = derived
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("shift", torch.zeros(()))
        self.register_buffer("element_shift", torch.zeros(MAX_Z + 1, dtype=torch.float64))

    def _apply(self, fn, recurse=True):  # noqa: ANN001, ANN202 - torch's signature
        """Moves and casts like any module, but keeps the reference energies in float64."""
        super()._apply(fn, recurse)
        self.element_shift = self.element_shift.to(torch.float64)
        return self

    @property
    def supports_shift(self) -> bool:
        return self.field.rank in (0, 2) and not self.keep_identity and not self.derived

    @property
    def supports_element_shift(self) -> bool:
        return self.field.accumulates_in_float64 and not self.derived

    def set_element_shift(self, shifts: dict[int, float]) -> None:
        """Reference values per element (atomic number -> value in the field's units)."""
        if shifts and not self.supports_element_shift:
            raise ValueError(f"field {self.field.name!r}: element shifts need an atom-level or summed scalar field")
        self.element_shift.zero_()
        for number, value in shifts.items():
            if not 0 < int(number) <= MAX_Z:
                raise ValueError(f"field {self.field.name!r}: atomic number {number} outside 1..{MAX_Z}")
            self.element_shift[int(number)] = float(value)

    def set(self, scale: float, shift: float = 0.0) -> None:
        if not scale > 0:
            raise ValueError(f"field {self.field.name!r}: scale must be positive, got {scale}")
        if shift and not self.supports_shift:
            raise ValueError(f"field {self.field.name!r}: a shift is only equivariant for rank 0 and rank 2 fields")
        self.scale.fill_(float(scale))
        self.shift.fill_(float(shift))

    def forward(self, x: torch.Tensor, graph: Graph) -> torch.Tensor:
        if self.derived:
            raise RuntimeError(f"field {self.field.name!r} is derived from the energy; its scale only weighs the loss")
        rank = self.field.rank
        identity = torch.eye(3, dtype=x.dtype, device=x.device) if rank == 2 else None
        if self.keep_identity and identity is not None:
            return self.scale * (x - identity) + identity
        y = self.scale * x
        if not self.supports_shift:
            return y
        if self.supports_element_shift:
            per_atom = self.element_shift.index_select(0, graph.numbers)  # float64
            y = y + (per_atom if self.field.level == "atom" else scatter_sum(per_atom, graph.batch, graph.num_structures))
        unit = identity if identity is not None else torch.ones((), dtype=x.dtype, device=x.device)
        if self.field.level == "structure" and self.field.reduce == "sum":
            count = graph.atoms_per_structure.to(x.dtype).view(-1, *([1] * rank))
            return y + self.shift * count * unit
        return y + self.shift * unit
