"""Losses on normalised errors, several fields at once, and metrics in physical units.

For each target field the error of a row (an atom for atom-level fields, a structure
otherwise) is ``(prediction - label) / scale``, divided by the number of atoms for
extensive structure-level fields (energy, dipole, polarizability): fields in different
units can then be weighted against each other. The loss of a field is

    euclidean  mean over rows of the Frobenius norm of the error tensor   (the paper's Eq. A.6/A.7;
               the authors' code flattens each tensor to a row and averages the row norms)
    mse        mean over all components of the squared error
    mae        mean over all components of the absolute error

and the total is ``sum_f weight_f * loss_f``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch

from tensorframe.fields import FieldSpec
from tensorframe.scoring import mae_rmse

LossKind = Literal["euclidean", "mse", "mae"]
# Columns of the statistics gathered per field: summed loss, number of loss terms, summed
# absolute error, summed squared error (both physical units), number of components.
STAT_COLUMNS = ("loss_sum", "loss_count", "abs_sum", "sq_sum", "count")


def normalized_error(prediction: torch.Tensor, target: torch.Tensor, field: FieldSpec, scale: float | torch.Tensor,
                     atoms_per_structure: torch.Tensor) -> torch.Tensor:
    """Row-wise error in units of the field's scale.

    Shapes: prediction, target (R, 3, ...) -> (R, 3**rank); atoms_per_structure (B,)
    """
    error = ((prediction - target) / scale).reshape(prediction.shape[0], -1)
    if field.level == "structure" and field.reduce == "sum":
        error = error / atoms_per_structure.to(error.dtype).unsqueeze(-1)
    return error


def loss_sum(error: torch.Tensor, kind: LossKind) -> tuple[torch.Tensor, int]:
    """The summed loss terms of ``error`` and their number (rows or components).

    Shapes: error (R, C) -> scalar
    """
    if kind == "euclidean":
        # vector_norm has a zero (not NaN) gradient at a zero error.
        return torch.linalg.vector_norm(error, dim=-1).sum(), error.shape[0]
    if kind == "mse":
        return error.square().sum(), error.numel()
    if kind == "mae":
        return error.abs().sum(), error.numel()
    raise ValueError(f"loss: unknown kind {kind!r}; valid: euclidean, mse, mae")


def batch_loss(predictions: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor],
               fields: Mapping[str, FieldSpec], weights: Mapping[str, float], scales: Mapping[str, float],
               atoms_per_structure: torch.Tensor, kind: LossKind) -> tuple[torch.Tensor, torch.Tensor]:
    """The weighted loss of one batch and its statistics per field (detached).

    Shapes: -> loss (), stats (F, 5) with the columns of ``STAT_COLUMNS``, fields in ``weights`` order
    """
    total = None
    rows = []
    for name, weight in weights.items():
        prediction = predictions[name].to(targets[name].dtype)
        error = normalized_error(prediction, targets[name], fields[name], scales[name], atoms_per_structure)
        value, count = loss_sum(error, kind)
        term = weight * value / count
        total = term if total is None else total + term
        with torch.no_grad():
            physical = (prediction - targets[name]).reshape(-1)
            rows.append(torch.stack([
                value.detach(), torch.tensor(float(count), dtype=value.dtype, device=value.device),
                physical.abs().sum(), physical.square().sum(),
                torch.tensor(float(physical.numel()), dtype=value.dtype, device=value.device),
            ]))
    return total, torch.stack(rows)


def summarize(stats: torch.Tensor, weights: Mapping[str, float]) -> dict[str, float]:
    """``loss`` (weighted, over the whole set) and per field ``loss_<f>``, ``mae_<f>``, ``rmse_<f>``.

    Shapes: stats (F, 5) summed over batches (and processes)
    """
    out = {"loss": 0.0}
    for row, (name, weight) in zip(stats.tolist(), weights.items(), strict=True):
        loss_sum_, loss_count, abs_sum, sq_sum, count = row
        field_loss = loss_sum_ / max(loss_count, 1.0)
        out["loss"] += weight * field_loss
        out[f"loss_{name}"] = field_loss
        out[f"mae_{name}"], out[f"rmse_{name}"] = mae_rmse(abs_sum, sq_sum, count)
    return out
