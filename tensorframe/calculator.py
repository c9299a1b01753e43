"""An ASE calculator: energy, forces and stress for dynamics and optimisers, every predicted
tensor in ``results``.

    calc = TensorframeCalculator("model.pt")
    atoms.calc = calc
    atoms.get_forces()                           # (N, 3) eV/Å
    atoms.get_stress()                           # (6,) eV/Å^3, Voigt xx yy zz yz xz xy (3D-periodic cells)
    calc.get_property("born_charges", atoms)     # (N, 3, 3) e
    calc.results["dielectric"]                   # (3, 3)

One forward (and, for derived quantities, one backward) pass gives every result:

- a conservative model (``model.conservative``) gives energy, forces = -dE/dr, and for cells
  periodic in all three directions stress (ASE's sign: (1/V) dE/d strain); and the virial;
- a model with an ``energy`` head but neither conservative nor a force head gets the same
  derivatives of that energy (which was not trained against forces);
- a force head's forces are used as they are (the paper's direct forces);
- a model without energy or forces (tensor heads only) serves its tensors through
  ``calc.get_property(name, atoms)`` and ``calc.results``; ``get_potential_energy``,
  ``get_forces`` and ``get_stress`` then raise ASE's ``PropertyNotImplementedError``.

``implemented_properties`` lists what a given model serves; docs/prediction.md has a
runnable example.

Energies are Python floats (summed in float64), ``stress`` ASE's Voigt 6-vector, all other
results float64 numpy arrays in the structure's frame (atom-level (N, 3, ...),
structure-level (3, ...)).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from tensorframe.conservative import energy_derivatives
from tensorframe.fields import DERIVED_FIELDS, builtin_field
from tensorframe.io.convert import to_sample
from tensorframe.model import TensorModel
from tensorframe.outputs import split_by_structure


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class TensorframeCalculator(Calculator):
    """ASE calculator for a :class:`TensorModel` or a checkpoint path.

    Args:
        model: a model, or the path of a tensorframe checkpoint (loaded with ``weights_only``).
        device: torch device; default: the model's device for a model, CUDA when available
            (else CPU) for a checkpoint.
    """

    def __init__(self, model: TensorModel | str | Path, device: str | torch.device | None = None, **kwargs: Any) -> None:
        if isinstance(model, (str, Path)):
            from tensorframe.checkpoint import load_model

            model = load_model(model, map_location=device or _default_device())
        elif device is not None:
            model = model.to(device)
        if not isinstance(model, TensorModel):
            raise TypeError(f"model: expected a TensorModel or a checkpoint path, got {type(model).__name__}")
        self.model = model.eval()
        fields = model.fields
        energy = fields.get("energy")
        self.has_energy = energy is not None and energy.level == "structure" and energy.rank == 0
        # A non-conservative model with an energy head and no force head: derivatives of that energy.
        self.derive_from_energy = self.has_energy and not model.conservative and "forces" not in fields
        properties = list(fields)
        if self.derive_from_energy:
            properties += ["forces", "stress", "virial"]
        if self.has_energy:
            properties.append("free_energy")
        self.implemented_properties = properties
        super().__init__(**kwargs)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        sample = to_sample(self.atoms)
        model = self.model
        periodic = bool(sample.pbc.all())
        graph = model.make_graph([sample])
        with torch.no_grad():
            if self.derive_from_energy:
                outputs = energy_derivatives(partial(model.head_outputs, names=None), graph, stress=periodic)
            else:
                outputs = model(graph)
        fields = {**{name: builtin_field(name) for name in DERIVED_FIELDS}, **model.fields}
        (row,) = split_by_structure(outputs, fields, graph.ptr)
        if not periodic:
            row.pop("stress", None)  # no volume: ASE raises PropertyNotImplementedError for get_stress
        results: dict[str, Any] = {name: value.detach().to("cpu", torch.float64).numpy() for name, value in row.items()}
        if "stress" in results:
            results["stress"] = full_3x3_to_voigt_6_stress(results["stress"])
        if self.has_energy:
            results["energy"] = float(results["energy"])
            results["free_energy"] = results["energy"]
        self.results = results


__all__ = ["TensorframeCalculator"]
