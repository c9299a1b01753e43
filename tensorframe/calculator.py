"""An ASE calculator: forces (and energy) for dynamics and optimisers, every predicted tensor in ``results``.

    calc = TensorframeCalculator("model.pt")
    atoms.calc = calc
    atoms.get_forces()                      # (N, 3) eV/Å
    calc.results["born_charges"]            # (N, 3, 3) e
    calc.results["dielectric"]              # (3, 3)

Forces come from the model's force head when it has one. A model with an ``energy`` head
(a structure-level scalar) and no force head gets conservative forces ``F = -dE/dx`` by
autograd through the graph geometry. Energies are returned as Python floats, all other
results as float64 numpy arrays in the structure's frame (atom-level (N, 3, ...),
structure-level (3, ...)).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from ase.calculators.calculator import Calculator, all_changes

from tensorframe.graph.collate import build_graph
from tensorframe.io.convert import to_sample
from tensorframe.model import TensorModel


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
        self.forces_from_energy = self.has_energy and "forces" not in fields
        properties = list(fields)
        if self.forces_from_energy:
            properties.append("forces")
        if self.has_energy:
            properties.append("free_energy")
        self.implemented_properties = properties
        super().__init__(**kwargs)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        sample = to_sample(self.atoms)
        model = self.model
        reference = next(model.parameters())
        settings = model.graph_settings
        positions = torch.as_tensor(sample.positions, dtype=reference.dtype, device=reference.device)
        with torch.enable_grad() if self.forces_from_energy else torch.no_grad():
            if self.forces_from_energy:
                positions = positions.clone().requires_grad_(True)
            graph = build_graph([sample], settings.cutoff, settings.triplet_cutoff, settings.max_neighbors,
                                dtype=reference.dtype, device=reference.device, positions=positions,
                                shell_tolerance=settings.neighbor_shell_tolerance)
            outputs = model(graph)
            forces = None
            if self.forces_from_energy:
                (gradient,) = torch.autograd.grad(outputs["energy"].sum(), positions)
                forces = -gradient
        results: dict[str, Any] = {}
        for name, value in outputs.items():
            array = value.detach().to("cpu", torch.float64).numpy()
            results[name] = array if model.fields[name].level == "atom" else array[0]
        if forces is not None:
            results["forces"] = forces.detach().to("cpu", torch.float64).numpy()
        if self.has_energy:
            results["energy"] = float(results["energy"])
            results["free_energy"] = results["energy"]
        self.results = results


__all__ = ["TensorframeCalculator"]
