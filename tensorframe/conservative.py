"""Forces, virial and stress as derivatives of one energy (``ModelConfig.conservative``).

The energy is evaluated on the batch under a homogeneous strain ``eps`` (zero, but an
autograd leaf) applied to positions and cells (:func:`tensorframe.graph.collate.deform_graph`):

    forces  F_i = -dE/dr_i                        (N, 3)   eV/Å
    virial  W   = -dE/d eps                       (B, 3, 3) eV       (DeePMD's sign)
    stress  sigma = (1/V) dE/d eps = -W / V       (B, 3, 3) eV/Å^3   (ASE's sign: tension > 0)

one backward pass gives all three. The energy is invariant under rotations, so ``W`` is
symmetric; the strain is symmetrised before it acts, so the result is symmetric to round-off
as well. ``stress`` is NaN for a structure that is not periodic in all three directions
(no volume); its virial is still defined.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from tensorframe.config import ConfigError
from tensorframe.fields import DERIVED_FIELDS
from tensorframe.graph.collate import deform_graph
from tensorframe.types import Graph


def check_conservative_heads(heads: Mapping[str, torch.nn.Module]) -> None:
    """A conservative model needs an ``energy`` head (a summed structure-level scalar) and no
    head of its own for the fields it derives.

    Raises:
        ConfigError: naming what is missing or in the way.
    """
    energy = heads["energy"] if "energy" in heads else None
    if energy is None:
        raise ConfigError(
            f"conservative: derives forces and stress from the energy, but no head predicts 'energy' (the heads "
            f"predict: {', '.join(heads)}); add {{name: energy}} to model.heads"
        )
    field = energy.field
    if field.rank != 0 or field.level != "structure" or field.reduce != "sum":
        raise ConfigError("conservative: the 'energy' head must give a summed structure-level scalar "
                          f"(got level {field.level!r}, reduce {field.reduce!r}, rank {field.rank})")
    clash = [name for name in DERIVED_FIELDS if name in heads]
    if clash:
        raise ConfigError(
            f"conservative: {', '.join(clash)} come from the energy's derivatives; remove the head(s) predicting "
            f"{', '.join(repr(c) for c in clash)} or set conservative: false to keep direct ones"
        )


def cell_volumes(graph: Graph) -> torch.Tensor:
    """|det cell| of each structure, NaN where it is not periodic in all three directions.

    Shapes: -> (B,)
    """
    volume = torch.linalg.det(graph.cell).abs()
    periodic = graph.pbc.all(dim=-1) & (volume > 0)
    return torch.where(periodic, volume, torch.full_like(volume, float("nan")))


def energy_derivatives(
    evaluate_heads: Callable[[Graph], dict[str, torch.Tensor]], graph: Graph, stress: bool = True
) -> dict[str, torch.Tensor]:
    """The heads' outputs on ``graph`` plus ``forces`` and (with ``stress``) ``virial`` and ``stress``.

    ``evaluate_heads(graph)`` must return a dict holding ``"energy"`` (B,). With gradients
    enabled the derivatives keep their autograd graph (for a loss on them); under
    ``torch.no_grad`` they are computed all the same and every output is detached.
    """
    keep_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        positions = graph.positions.detach().requires_grad_(True)
        strain = torch.zeros((graph.num_structures, 3, 3), dtype=positions.dtype, device=positions.device,
                             requires_grad=True)
        deformed = deform_graph(graph, positions, strain)
        outputs = evaluate_heads(deformed)
        energy = outputs["energy"]
        inputs = [positions, strain] if stress else [positions]
        gradients = torch.autograd.grad(energy.sum(), inputs, create_graph=keep_graph)
    outputs["forces"] = -gradients[0]
    if stress:
        virial = -gradients[1]
        outputs["virial"] = virial
        outputs["stress"] = -virial / cell_volumes(graph).to(virial.dtype).view(-1, 1, 1)
    if not keep_graph:
        outputs = {name: value.detach() for name, value in outputs.items()}
    return outputs


__all__ = ["cell_volumes", "check_conservative_heads", "energy_derivatives"]
