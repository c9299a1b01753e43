"""A small training loop for peer models over tensorframe Graphs, matched to tensorframe's trainer.

What is the same as ``tensorframe.train``: AdamW; the loss (:func:`tensorframe.train.loss.batch_loss`,
by default "euclidean": mean over rows of the Frobenius norm of the normalised error, with the
per-field scale fitted on the training split by :func:`tensorframe.train.data.fit_normalization`);
the batch size; the epoch order (:func:`tensorframe.train.distributed.epoch_orders` with the
seed); gradient clipping; an optional ReduceLROnPlateau; the budget (``epochs`` and
``max_time_s``, checked after every step); and the model kept is the one with the lowest
validation loss. One difference: an epoch cut short by ``max_time_s`` is still validated here
(tensorframe's trainer then keeps the best of the completed epochs). Metrics use
:func:`tensorframe.scoring.collect_pairs` through :class:`GraphPredictor`.

A peer model is any ``nn.Module`` with ``forward(graph) -> {field: tensor}`` in physical units
(atom-level fields (N, 3, ...), structure-level (B, 3, ...)) and a ``make_graph(samples)``
callable that builds its :class:`~tensorframe.types.Graph`.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

from tensorframe.fields import FieldSpec
from tensorframe.normalization import FieldScaling
from tensorframe.outputs import split_by_structure
from tensorframe.train.data import collate_targets, fit_normalization
from tensorframe.train.distributed import epoch_orders
from tensorframe.train.loss import LossKind, batch_loss, summarize
from tensorframe.train.state import seed_everything
from tensorframe.types import Graph, Sample

MakeGraph = Callable[[Sequence[Sample]], Graph]


@dataclass(frozen=True)
class TrainSettings:
    """Optimiser and budget; the defaults are tensorframe's ``TrainConfig`` defaults."""

    epochs: int = 100
    max_time_s: float | None = None
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float | None = 10.0
    loss: LossKind = "euclidean"
    seed: int = 0
    scheduler: dict[str, float] | None = None  # ReduceLROnPlateau {factor, patience, min_lr, threshold}

    @classmethod
    def from_budget(cls, budget: Mapping[str, Any], seed: int = 0, **overrides: Any) -> TrainSettings:
        """Settings from a task budget ``{epochs, max_time_s, ...}``; keys that are fields of this class win."""
        known = {k: v for k, v in budget.items() if k in cls.__dataclass_fields__}
        return cls(**{"seed": seed, **overrides, **known})


@dataclass
class TrainOutcome:
    """What training did: epochs run, why it stopped, its wall time and the validation history."""

    epochs: int
    steps: int
    stopped: str
    train_time_s: float
    best_epoch: int
    best_valid_loss: float
    structures_seen: int = 0  # training structures passed through (forward + backward)
    history: list[dict[str, float]] = field(default_factory=list)


def label_normalization(samples: Sequence[Sample], fields: Mapping[str, FieldSpec], targets: Sequence[str],
                        subtract_structure_mean: Sequence[str] = (), shift: bool = True,
                        keep_identity: Sequence[str] = (),
                        element_shifts: Mapping[str, Mapping[int, float]] | None = None) -> dict[str, tuple[float, float]]:
    """``{field: (scale, shift)}`` from the training structures, exactly as tensorframe fits them
    (:func:`tensorframe.train.data.fit_normalization`); ``keep_identity`` names the fields whose
    tensorframe head adds the identity (positive-definite dielectric: scale = RMS of eps - I);
    ``element_shifts`` are reference values per element already taken out (energies' E0s)."""
    shim = label_shim(fields, targets, subtract_structure_mean, keep_identity)
    for name, shifts in (element_shifts or {}).items():
        shim.scaling[name].set_element_shift(dict(shifts))
    return fit_normalization(shim, samples, targets, shift)  # type: ignore[arg-type]


def label_shim(fields: Mapping[str, FieldSpec], targets: Sequence[str], subtract_structure_mean: Sequence[str] = (),
               keep_identity: Sequence[str] = ()) -> SimpleNamespace:
    """The attributes of a TensorModel that tensorframe's normalisation fits read."""
    return SimpleNamespace(
        fields=dict(fields),
        scaling={name: FieldScaling(fields[name], keep_identity=name in keep_identity) for name in targets},
        heads={name: SimpleNamespace(subtract_structure_mean=name in subtract_structure_mean) for name in targets},
        conservative=False,
    )


class GraphPredictor:
    """``fields`` and ``predict(samples, batch_size)`` like :class:`tensorframe.TensorModel`, for a
    peer module, so :func:`tensorframe.scoring.score` scores it the same way."""

    def __init__(self, module: nn.Module, fields: Mapping[str, FieldSpec], make_graph: MakeGraph) -> None:
        self.module = module
        self.fields = dict(fields)
        self.make_graph = make_graph

    @torch.no_grad()
    def predict(self, samples: Sequence[Sample], batch_size: int = 16) -> list[dict[str, np.ndarray]]:
        was_training = self.module.training
        self.module.eval()
        results: list[dict[str, np.ndarray]] = []
        try:
            for start in range(0, len(samples), batch_size):
                chunk = list(samples[start : start + batch_size])
                graph = self.make_graph(chunk)
                for row in split_by_structure(self.module(graph), self.fields, graph.ptr):
                    results.append({name: value.cpu().numpy() for name, value in row.items()})
        finally:
            self.module.train(was_training)
        return results


def _evaluate_loss(module: nn.Module, samples: Sequence[Sample], make_graph: MakeGraph, fields: Mapping[str, FieldSpec],
                   weights: Mapping[str, float], scales: Mapping[str, float], settings: TrainSettings,
                   dtype: torch.dtype, device: torch.device) -> dict[str, float]:
    module.eval()
    stats = torch.zeros((len(weights), 5), dtype=torch.float64, device=device)
    with torch.no_grad():
        for start in range(0, len(samples), settings.batch_size):
            chunk = list(samples[start : start + settings.batch_size])
            graph = make_graph(chunk)
            labels = collate_targets(chunk, dict(fields), weights, dtype, device)
            _, batch_stats = batch_loss(module(graph), labels, fields, weights, scales, graph.atoms_per_structure,
                                        settings.loss)
            stats += batch_stats.double()
    return summarize(stats, weights)


def train_peer(module: nn.Module, samples: Sequence[Sample], split: Mapping[str, Sequence[int]],
               fields: Mapping[str, FieldSpec], weights: Mapping[str, float], scales: Mapping[str, float],
               make_graph: MakeGraph, settings: TrainSettings, log: Callable[[str], None] | None = print) -> TrainOutcome:
    """Train ``module`` on ``split["train"]``, keep (load into ``module``) the weights of the epoch
    with the lowest loss on ``split["valid"]``.

    Raises:
        RuntimeError: for a non-finite loss, naming the epoch and step.
    """
    reference = next(module.parameters())
    dtype, device = reference.dtype, reference.device
    seed_everything(settings.seed)
    train = [samples[i] for i in split["train"]]
    valid = [samples[i] for i in split["valid"]]
    optimizer = torch.optim.AdamW(module.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = None
    if settings.scheduler is not None:
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, **settings.scheduler)
    best_state, best_loss, best_epoch = None, math.inf, 0
    history: list[dict[str, float]] = []
    started = time.monotonic()
    stopped, steps, epoch, seen = "epochs", 0, 0, 0
    while epoch < settings.epochs:
        order = epoch_orders(len(train), epoch, settings.seed, 1)[0]
        module.train()
        losses, out_of_time = [], False
        for start in range(0, len(order), settings.batch_size):
            chunk = [train[k] for k in order[start : start + settings.batch_size]]
            graph = make_graph(chunk)
            labels = collate_targets(chunk, dict(fields), weights, dtype, device)
            optimizer.zero_grad(set_to_none=True)
            loss, _ = batch_loss(module(graph), labels, fields, weights, scales, graph.atoms_per_structure, settings.loss)
            if not bool(torch.isfinite(loss)):
                raise RuntimeError(f"epoch {epoch + 1}, step {start // settings.batch_size + 1}: the loss is not finite")
            loss.backward()
            if settings.grad_clip is not None:
                nn.utils.clip_grad_norm_(module.parameters(), settings.grad_clip)
            optimizer.step()
            losses.append(float(loss.detach()))
            steps += 1
            seen += len(chunk)
            if settings.max_time_s is not None and time.monotonic() - started > settings.max_time_s:
                out_of_time = True
                break
        epoch += 1
        metrics = _evaluate_loss(module, valid, make_graph, fields, weights, scales, settings, dtype, device)
        if scheduler is not None:
            scheduler.step(metrics["loss"])
        row = {"epoch": epoch, "train_loss": statistics.fmean(losses), **{f"valid_{k}": v for k, v in metrics.items()}}
        history.append(row)
        improved = metrics["loss"] < best_loss
        if improved:
            best_loss, best_epoch = metrics["loss"], epoch
            best_state = copy.deepcopy(module.state_dict())
        if log is not None:
            log(f"epoch {epoch}  train {row['train_loss']:.4g}  valid {metrics['loss']:.4g}{'  *' if improved else ''}")
        if out_of_time:
            stopped = "max_time_s"
            break
    train_time = time.monotonic() - started
    if best_state is not None:
        module.load_state_dict(best_state)
    module.eval()
    return TrainOutcome(epoch, steps, stopped, train_time, best_epoch, best_loss, seen, history)
