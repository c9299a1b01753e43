"""The training loop: seeded, resumable mid-epoch, single-process or DistributedDataParallel.

A run directory (``output_dir``) holds::

    config.yaml      the validated config, paths made absolute
    split.json       the train / valid / test indices used (a valid ``split.file``)
    train_log.csv    one row per epoch: losses, per-field validation MAE, learning rate, time
    best.pt          the model with the lowest validation loss (its averaged weights with ema_decay)
    last.pt          the latest model with its ``training_state`` (for ``--resume``)
    metrics.json     at the end: the best model's validation and test metrics
    parity/          at the end: parity plots of the best model on the test split (validation
                     without one), one PNG per target field (``parity_plots: false``: none)
    tensorboard/     with ``tensorboard: true`` and the package installed

Checkpoints are written atomically by :func:`tensorframe.checkpoint.save_checkpoint`;
``last.pt`` is written at the end of each epoch and every ``checkpoint_every_steps``
optimizer steps, so a killed run loses at most the steps since then.

Within an epoch, rank 0 shows the running mean training loss: a bar on a terminal, a plain
line on stderr every ``progress_interval_s`` seconds otherwise (``progress: false``: nothing).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from contextlib import closing, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import ValidationError

from tensorframe.checkpoint import LEGACY_FORMATS, load_checkpoint, save_checkpoint, with_paper_basis
from tensorframe.compilation import compile_model
from tensorframe.config import ConfigError, ModelConfig
from tensorframe.graph.cache import DEFAULT_CACHE_BUDGET_GB, GraphCache, estimated_cache_bytes
from tensorframe.model import TensorModel, build_model
from tensorframe.train.config import RESUMABLE_CHANGES, TrainConfig, resolve_path
from tensorframe.train.data import (
    Dataset,
    check_targets_predicted,
    fit_normalization,
    load_dataset,
    reference_energies,
    split_indices,
    validate_samples,
)
from tensorframe.train.distributed import (
    DistributedContext,
    all_reduce_sum,
    any_process,
    epoch_orders,
    setup_distributed,
    shard,
    teardown_distributed,
    wrap_model,
)
from tensorframe.train.ema import WeightAverage
from tensorframe.train.loader import BatchBuilder, BatchLoader, resolved_workers
from tensorframe.train.loss import batch_loss, summarize
from tensorframe.train.run_log import CsvLog, EpochProgress, TensorBoardLog
from tensorframe.train.state import capture_rng_states, restore_rng_states, seed_everything
from tensorframe.types import Graph

StepCallback = Callable[["Trainer", int], None]


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, an existing run without ``--resume``, ...)."""


@dataclass
class Progress:
    """Where training stands; all of it goes into ``last.pt`` as the ``training_state``."""

    epoch: int = 0  # epochs completed before the current one
    step: int = 0  # optimizer steps done in the current epoch
    global_step: int = 0
    best_valid_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0  # epochs since the validation loss last beat the early-stopping threshold
    early_best: float = math.inf
    train_loss_sum: float = 0.0  # this process's batch losses in the current epoch
    train_batches: int = 0
    data_order: list[list[int]] = field(default_factory=list)  # per process, positions in the train split


@dataclass
class TrainResult:
    output_dir: Path
    metrics: dict[str, Any]
    stopped: str
    parity_dir: Path | None = None  # the best model's parity plots (rank 0; None when none were written)


class TargetHeads(torch.nn.Module):
    """The model's backbone and only the heads of the target fields: no work for other heads,
    and under DDP their parameters are found unused rather than waited for.

    Shapes: forward(graph) -> {target field: (N or B, 3, ...)} in physical units
    """

    def __init__(self, model: TensorModel, names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.names = list(names)

    def forward(self, graph) -> dict[str, torch.Tensor]:
        return self.model(graph, fields=self.names)


class Trainer:
    """Trains the model of a :class:`TrainConfig`.

    Args:
        config: the validated config.
        base_dir: folder that relative paths in the config are taken from.
        resume: continue from ``output_dir/last.pt``.
        device: overrides ``config.device``.
        output_dir: overrides ``config.output_dir`` (relative to the current folder).
        on_step: called after every optimizer step (and checkpoint) with the global step.
    """

    def __init__(self, config: TrainConfig, base_dir: str | Path = ".", resume: bool = False, device: str | None = None,
                 output_dir: str | Path | None = None, on_step: StepCallback | None = None) -> None:
        self.config = config
        self.base_dir = Path(base_dir)
        self.resume = resume
        self.device_request = device or config.device
        self.output_dir = Path(output_dir) if output_dir is not None else resolve_path(self.base_dir, config.output_dir)
        self.on_step = on_step
        self.targets = dict(config.targets)
        self.dtype = getattr(torch, config.dtype)

    # ----------------------------------------------------------------- set-up
    def _build(self) -> None:
        config = self.config
        seed_everything(config.seed)
        try:
            self.model: TensorModel = build_model(config.model)
        except ConfigError as error:
            raise ConfigError(f"model.{error}") from None
        self.model = self.model.to(device=self.context.device, dtype=self.dtype)
        check_targets_predicted(self.model, self.targets)
        self.fields = {name: self.model.fields[name] for name in self.targets}
        self.dataset: Dataset = load_dataset(config.data, self.base_dir)
        self.split = split_indices(len(self.dataset), config.split, self.base_dir)
        validate_samples(self.model, self.dataset, [i for part in self.split.values() for i in part], list(self.targets))
        self.workers = resolved_workers(config.num_workers, self.context.device)
        self.graph_cache = self._choose_graph_cache()
        builder = BatchBuilder(self.dataset.samples, self.model.graph_recipe(), self.fields, tuple(self.targets),
                               self.dtype, self.graph_cache)
        self.batch_loader = BatchLoader(builder, self.context.device, self.workers)
        if config.compile:
            compile_model(self.model, training=True)
        # The fused kernel (one pass over all parameters; CPU and CUDA) instead of a loop of
        # per-tensor ops: about 4x faster steps of the optimizer, same update up to rounding.
        fused = self.context.device.type in ("cpu", "cuda") or None
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.optimizer.lr,
                                           weight_decay=config.optimizer.weight_decay, fused=fused)
        self.scheduler = None
        if config.scheduler is not None:
            s = config.scheduler
            self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer, factor=s.factor, patience=s.patience, min_lr=s.min_lr, threshold=s.threshold)
        self.progress = Progress()
        self.ema = WeightAverage(self.model, config.ema_decay) if config.ema_decay is not None else None
        self.best_state: dict[str, torch.Tensor] | None = None
        last = self.output_dir / "last.pt"
        if self.resume:
            self._load_last(last)
        else:
            if last.exists():
                raise TrainingError(f"{self.output_dir}: holds a run already (last.pt); use --resume to continue it, "
                                    f"or choose another output_dir")
            if config.normalize.enabled:
                train_samples = [self.dataset.samples[i] for i in self.split["train"]]
                e0s = config.normalize.E0s if config.normalize.shift or isinstance(config.normalize.E0s, dict) else "none"
                for name, shifts in reference_energies(self.model, train_samples, self.targets, e0s).items():
                    self.model.scaling[name].set_element_shift(shifts)
                for name, (scale, shift) in fit_normalization(self.model, train_samples, self.targets,
                                                              config.normalize.shift).items():
                    self.model.scaling[name].set(scale, shift)
        self.scales = {name: float(self.model.scaling[name].scale) for name in self.targets}
        self.network = wrap_model(TargetHeads(self.model, list(self.targets)), self.context)

    def _choose_graph_cache(self) -> GraphCache | None:
        """The graph cache of ``graph_cache``: in memory (``true`` / ``memory``), on disk, or
        None (``false``); ``auto`` is memory unless the estimated cache of the split structures
        exceeds :data:`DEFAULT_CACHE_BUDGET_GB`, then disk (a one-line note), and nothing when
        the disk lacks the room (another note). A disk cache, and a memory cache read by
        data-loader workers, hold every split structure before the first step (``prepare``);
        a memory cache without workers fills on first use, so a resumed run refills it."""
        choice = self.config.graph_cache
        if choice is False:
            return None
        settings = self.model.graph_settings
        seen = [i for part in self.split.values() for i in part]
        where = "memory" if choice in (True, "memory") else "disk"
        estimate = None
        if choice == "auto":
            estimate = estimated_cache_bytes([self.dataset.samples[i] for i in seen], settings.cutoff,
                                             settings.triplet_cutoff, settings.max_neighbors)
            where = "memory" if estimate <= DEFAULT_CACHE_BUDGET_GB * 2**30 else "disk"
        directory = None
        if where == "disk":
            directory = self.graph_cache_dir
            if estimate is not None:
                directory.mkdir(parents=True, exist_ok=True)
                free = shutil.disk_usage(directory).free
                if estimate > free:
                    self._note(f"graph_cache: auto: off, the estimated cache (~{estimate / 2**30:.1f} GiB) exceeds "
                               f"the free space under {directory} ({free / 2**30:.1f} GiB); graphs are rebuilt "
                               f"every batch (set graph_cache_dir elsewhere, or graph_cache: disk to try anyway)")
                    return None
                self._note(f"graph_cache: auto: on disk, the estimated cache of the dataset's structures "
                           f"(~{estimate / 2**30:.1f} GiB) exceeds {DEFAULT_CACHE_BUDGET_GB:g} GiB of memory: "
                           f"{directory}")
        cache = GraphCache(directory)
        if directory is not None or self.workers > 0:
            started = time.monotonic()
            names = [self.dataset.origins[i] for i in seen]
            cache.prepare([self.dataset.samples[i] for i in seen], seen, self.model.graph_recipe(), names)
            self._note(f"graph_cache: {len(cache)} structures' neighbour lists and triplets ready in "
                       f"{time.monotonic() - started:.1f} s ({where}, {cache.nbytes / 2**20:.1f} MiB)")
        return cache

    @property
    def graph_cache_dir(self) -> Path:
        if self.config.graph_cache_dir is not None:
            return resolve_path(self.base_dir, self.config.graph_cache_dir)
        return self.output_dir / "graph_cache"

    def _note(self, line: str) -> None:
        if self.context.is_main:
            print(line, flush=True)

    def _load_last(self, path: Path) -> None:
        if not path.exists():
            raise TrainingError(f"--resume: {path}: no such checkpoint; start without --resume")
        payload = load_checkpoint(path)
        state = payload.get("training_state")
        if not isinstance(state, dict):
            raise TrainingError(f"--resume: {path}: holds no training_state")
        saved = dict(state["train_config"])
        legacy = payload.get("format") in LEGACY_FORMATS
        if legacy:  # written before the complete word sets: its heads used the paper's words
            saved["model"] = with_paper_basis(saved["model"])
        try:  # model options added since the run was saved (e.g. neighbor_shell_tolerance) take their defaults
            saved["model"] = ModelConfig.model_validate(saved["model"]).model_dump(mode="json")
        except (KeyError, TypeError, ValidationError):
            pass
        current = self.config.model_dump(mode="json")
        changed = sorted(k for k in set(saved) | set(current) if k not in RESUMABLE_CHANGES and saved.get(k) != current.get(k))
        if changed:
            hint = (" (this run was saved before the complete word sets; add `basis: paper` to its heads to resume "
                    "it)" if legacy and "model" in changed else "")
            raise ConfigError(
                f"--resume: the config differs from the run in {path} in: {', '.join(changed)} (only "
                f"{', '.join(sorted(RESUMABLE_CHANGES))} may change when resuming){hint}"
            )
        if state["step"] and state["world_size"] != self.context.world_size:
            raise TrainingError(
                f"--resume: {path} was saved mid-epoch by {state['world_size']} processes; resume it with "
                f"the same number (this run has {self.context.world_size})"
            )
        self.model.load_state_dict(payload["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.progress = Progress(**{k: state[k] for k in Progress.__dataclass_fields__})
        self.rng_states = state["rng"]
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        best = self.output_dir / "best.pt"
        if best.exists():
            self.best_state = {k: v.to(self.context.device) for k, v in load_checkpoint(best)["state_dict"].items()}

    def _averaged(self):
        """The averaged weights in the model (``ema_decay``), else nothing changes."""
        return self.ema.averaged() if self.ema is not None else nullcontext()

    # ------------------------------------------------------------ checkpoints
    def _training_state(self) -> dict[str, Any]:
        p = self.progress
        return {
            **{k: getattr(p, k) for k in Progress.__dataclass_fields__},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "rng": capture_rng_states(self.context.device),
            "world_size": self.context.world_size,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "train_config": self.config.model_dump(mode="json"),
        }

    def _save_last(self) -> None:
        if self.context.is_main:
            save_checkpoint(self.output_dir / "last.pt", self.model, training_state=self._training_state())

    # -------------------------------------------------------------- batches
    def _batches(self, batches: list[list[int]]):
        """(graph, labels) of each batch of dataset indices, in order (built by the data-loader
        workers when there are any)."""
        return self.batch_loader(batches)

    def _autocast(self):
        """``amp``: the backbone's matrix products in bfloat16 (CPU and CUDA) for training steps;
        validation and test metrics are computed in the model's dtype, as predictions are."""
        return self.model.backbone_precision(torch.bfloat16 if self.config.amp else None,
                                             padding=self.config.amp_padding)

    @torch.no_grad()
    def split_metrics(self, indices: list[int]) -> dict[str, float]:
        """Loss and per-field MAE / RMSE (physical units) over ``indices``, summed over processes."""
        self.model.eval()
        stats = torch.zeros((len(self.targets), 5), dtype=torch.float64, device=self.context.device)
        mine = shard(indices, self.context)
        size = self.config.effective_eval_batch_size
        for graph, labels in self._batches([mine[start : start + size] for start in range(0, len(mine), size)]):
            predictions = self.network.module(graph) if self.context.enabled else self.network(graph)
            _, batch_stats = batch_loss(predictions, labels, self.fields, self.targets, self.scales,
                                        graph.atoms_per_structure, self.config.loss)
            stats += batch_stats.double()
        return summarize(all_reduce_sum(stats, self.context), self.targets)

    def _train_step(self, graph: Graph, labels: dict[str, torch.Tensor], indices: list[int]) -> float:
        self.network.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            predictions = self.network(graph)
        loss, _ = batch_loss(predictions, labels, self.fields, self.targets, self.scales,
                             graph.atoms_per_structure, self.config.loss)
        if any_process(not bool(torch.isfinite(loss)), self.context):
            where = ", ".join(self.dataset.origins[i] for i in indices)
            raise TrainingError(f"epoch {self.progress.epoch + 1}, step {self.progress.step + 1}: the loss is not "
                                f"finite (batch: {where}); lower optimizer.lr or check these labels")
        loss.backward()
        if self.config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update()
        return float(loss.detach())

    # ----------------------------------------------------------------- loop
    def run(self) -> TrainResult:
        self.context: DistributedContext = setup_distributed(self.device_request)
        try:
            return self._run()
        finally:
            teardown_distributed(self.context)

    def _run(self) -> TrainResult:
        self.rng_states = None
        self._build()
        config, p, main = self.config, self.progress, self.context.is_main
        tensorboard = None
        if main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self._write_run_files()
            self.csv = CsvLog(self.output_dir / "train_log.csv", completed_epochs=p.epoch)
            if config.tensorboard:
                tensorboard = TensorBoardLog(self.output_dir / "tensorboard")
        if self.rng_states is not None:
            restore_rng_states(self.rng_states, self.context.device)
        started = time.monotonic()
        stopped = "epochs"
        train = self.split["train"]
        patience = config.early_stopping.patience if config.early_stopping is not None else None
        try:
            while p.epoch < config.epochs:
                if patience is not None and p.bad_epochs >= patience:
                    stopped = "early_stopping"
                    break
                if p.step == 0:
                    p.data_order = epoch_orders(len(train), p.epoch, config.seed, self.context.world_size)
                    p.train_loss_sum, p.train_batches = 0.0, 0
                mine = p.data_order[self.context.rank]
                batches = [mine[s : s + config.batch_size] for s in range(0, len(mine), config.batch_size)]
                epoch_started = time.monotonic()
                shown = EpochProgress(config.progress and main, p.epoch + 1, config.epochs, p.step, len(batches),
                                      config.progress_interval_s)
                out_of_time = False
                chosen = [[train[k] for k in batch] for batch in batches]
                with closing(self._batches(chosen[p.step :])) as loaded:  # ends the pass on a break
                    for step, (graph, labels) in enumerate(loaded, start=p.step):
                        p.train_loss_sum += self._train_step(graph, labels, chosen[step])
                        p.train_batches += 1
                        shown.update(step + 1, p.train_loss_sum / p.train_batches)
                        p.step, p.global_step = step + 1, p.global_step + 1
                        every = config.checkpoint_every_steps
                        if every and p.global_step % every == 0 and p.step < len(batches):
                            self._save_last()
                        if self.on_step is not None:
                            self.on_step(self, p.global_step)
                        limit = config.max_time_s
                        out_of_time = any_process(limit is not None and time.monotonic() - started > limit, self.context)
                        if out_of_time:
                            break
                shown.close()
                if p.step < len(batches):  # out of time mid-epoch: keep the position for --resume
                    self._save_last()
                    stopped = "max_time_s"
                    break
                self._end_epoch(time.monotonic() - epoch_started, tensorboard)
                if out_of_time:
                    stopped = "max_time_s"
                    break
            if stopped == "epochs" and patience is not None and p.bad_epochs >= patience:
                stopped = "early_stopping"
            metrics, parity_dir = self._final_metrics(stopped, time.monotonic() - started)
        finally:
            self.batch_loader.close()
            if tensorboard is not None:
                tensorboard.close()
        return TrainResult(self.output_dir, metrics, stopped, parity_dir)

    def _end_epoch(self, seconds: float, tensorboard: TensorBoardLog | None) -> None:
        config, p = self.config, self.progress
        sums = all_reduce_sum(torch.tensor([p.train_loss_sum, float(p.train_batches)], dtype=torch.float64,
                                           device=self.context.device), self.context)
        train_loss = float(sums[0] / sums[1])
        with self._averaged():
            valid = self.split_metrics(self.split["valid"])
            weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        lr = self.optimizer.param_groups[0]["lr"]
        if self.scheduler is not None:
            self.scheduler.step(valid["loss"])
        p.epoch, p.step = p.epoch + 1, 0
        improved = valid["loss"] < p.best_valid_loss
        if improved:
            p.best_valid_loss, p.best_epoch = valid["loss"], p.epoch
            self.best_state = weights
        min_delta = config.early_stopping.min_delta if config.early_stopping is not None else 0.0
        if valid["loss"] < p.early_best - min_delta:
            p.early_best, p.bad_epochs = valid["loss"], 0
        else:
            p.bad_epochs += 1
        if self.context.is_main:
            row: dict[str, Any] = {"epoch": p.epoch, "step": p.global_step, "lr": lr, "train_loss": train_loss,
                                   "valid_loss": valid["loss"]}
            row.update({f"valid_{k}": v for k, v in valid.items() if k != "loss"})
            row["epoch_time_s"] = seconds
            self.csv.write(row)
            if tensorboard is not None:
                tensorboard.write(row, p.global_step)
            if improved:
                with self._averaged():
                    save_checkpoint(self.output_dir / "best.pt", self.model, best_epoch=p.epoch, valid_loss=valid["loss"])
            maes = "  ".join(f"mae_{n} {valid[f'mae_{n}']:.4g}" for n in self.targets)
            print(f"epoch {p.epoch}/{config.epochs}  train {train_loss:.4g}  valid {valid['loss']:.4g}  {maes}  "
                  f"lr {lr:.2e}  {seconds:.1f} s{'  *' if improved else ''}", flush=True)
        self._save_last()

    def _final_metrics(self, stopped: str, seconds: float) -> tuple[dict[str, Any], Path | None]:
        """metrics.json, and the parity plots of the best model (rank 0): (metrics, their folder)."""
        p = self.progress
        metrics: dict[str, Any] = {"stopped": stopped, "epochs": p.epoch, "steps": p.global_step,
                                   "best_epoch": p.best_epoch, "train_time_s": seconds}
        parity_dir = None
        if self.best_state is not None:
            current = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.model.load_state_dict(self.best_state)
            metrics["valid"] = self.split_metrics(self.split["valid"])
            if self.split["test"]:
                metrics["test"] = self.split_metrics(self.split["test"])
            if self.context.is_main and self.config.parity_plots:
                parity_dir = self._parity_plots()
            self.model.load_state_dict(current)
        if self.context.is_main:
            tmp = self.output_dir / ".metrics.json.tmp"
            tmp.write_text(json.dumps(metrics, indent=2) + "\n")
            os.replace(tmp, self.output_dir / "metrics.json")
        return metrics, parity_dir

    def _parity_plots(self) -> Path:
        """``parity/parity_<field>.png`` per target field, for the model as it is (the best one)
        on the test split, else the validation split; says so in one printed line."""
        from tensorframe.scoring import collect_pairs, parity_plot

        split = "test" if self.split["test"] else "valid"
        samples = [self.dataset.samples[i] for i in self.split[split]]
        folder = self.output_dir / "parity"
        folder.mkdir(exist_ok=True)
        pairs = collect_pairs(self.model, samples, self.config.effective_eval_batch_size)
        for name in self.targets:
            if name in pairs:
                parity_plot(pairs[name], folder / f"parity_{name}.png", self.fields[name].symmetry)
        print(f"parity plots of the best model (epoch {self.progress.best_epoch}) on the {split} split "
              f"({len(samples)} structures): {folder}", flush=True)
        return folder

    def _write_run_files(self) -> None:
        dump = self.config.model_dump(mode="json")
        data = dump["data"]
        if data.get("path") is not None:
            paths = [str(resolve_path(self.base_dir, v).resolve()) for v in self.config.data.paths]
            data["path"] = paths[0] if isinstance(self.config.data.path, str) else paths
        if dump["split"].get("file"):
            dump["split"]["file"] = str(resolve_path(self.base_dir, dump["split"]["file"]).resolve())
        dump["output_dir"] = str(self.output_dir.resolve())
        (self.output_dir / "config.yaml").write_text(yaml.safe_dump(dump, sort_keys=False))
        (self.output_dir / "split.json").write_text(json.dumps(self.split) + "\n")


def train(config: TrainConfig, base_dir: str | Path = ".", **options: Any) -> TrainResult:
    """Train the model of ``config``; see :class:`Trainer` for the options."""
    return Trainer(config, base_dir, **options).run()
