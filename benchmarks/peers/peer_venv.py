"""A benchmark peer that lives in its own virtual environment, spoken to through files.

Shared by ``mace_peer`` and ``painn_peer``; each peer's runner script (``mace_runner.py``,
``painn_runner.py``) runs in the peer's venv and never imports tensorframe (what the runners
share is ``runner_common.py``). Everything here runs in tensorframe's venv; one runner process
per peer model, each with its file-name ``prefix`` in ``out_dir``:

    task splits -> {prefix}_{train,valid,test}.xyz (labels under REF_* keys, tensorframe's units)
    -> {prefix}_run.json -> ``<venv>/bin/python <runner>.py {prefix}_run.json`` -> {prefix}_log.txt
    -> {prefix}_result.json (timings, sizes, versions) + {prefix}_predictions.npz (train mode)
    -> MAE/RMSE with tensorframe.scoring.metrics; times and parameters summed over the models

``{prefix}_run.json``, what every runner reads::

    {"mode": "train" | "time" | "md", "group": str (only where the peer has several model kinds),
     "fields": {field: loss weight}, "files": {"train" | "valid" | "test": extxyz path},
     "model": {peer's size settings}, "train": {see runner_train_config},
     "predictions": npz path, "result": json path,
     "md": {"protocol": md_protocol.MDProtocol.to_dict(), "start": extxyz path,
            "start_index": int, "model_file": path}}          # md mode only (train_and_md)

``{prefix}_result.json``, the keys read here: ``inference_times_s`` (list of seconds, one per
timed pass), ``num_parameters``, ``torch_threads``, ``inference_batch_size``,
``inference_timing`` (how it was timed, in words), ``versions`` ({package: version}) and, in
train mode, ``train_time_s`` and ``peak_memory_mib``; the peer's ``describe`` may read more.
``{prefix}_predictions.npz``: one array per field, rows as the test split's (atoms or
structures), tensorframe's units. In ``md`` mode the result json also has ``md``:
``md_protocol.run_md``'s record (see :meth:`VenvPeer.train_and_md`).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.peers.runner_common import ATOM_FIELDS, LABEL_KEYS
from tensorframe.types import Sample

SPLIT_PARTS = ("train", "valid", "test")


@dataclass(frozen=True)
class RunnerModel:
    """One peer model, trained or timed by one runner process: its files' ``prefix``, {field: loss
    weight}, run.json's ``model`` block (``spec``) and ``group`` (left out of run.json when None)."""

    prefix: str
    fields: Mapping[str, float]
    spec: Mapping[str, Any]
    group: str | None = None


@dataclass(frozen=True)
class ModelDescription:
    """How a task's peer models are named in its record: ``model`` (one line), ``notes``
    (list of sentences), ``inference_timing`` (how the inference times were taken)."""

    model: str
    notes: list[str]
    inference_timing: str


def unsupported_reason(unsupported: Mapping[str, str]) -> str:
    """``{field: reason}`` as one line, ``"field: reason; field: reason"``."""
    return "; ".join(f"{f}: {r}" for f, r in unsupported.items())


def runner_train_config(task: Any, budget: Mapping[str, Any], *, default_lr: float,
                        num_models: int) -> dict[str, Any]:
    """run.json's ``train`` block: the budget's settings, its time budget shared by the models."""
    max_time = budget.get("max_time_s")
    return {
        "epochs": int(budget["epochs"]), "batch_size": int(budget.get("batch_size", 8)),
        "eval_batch_size": int(budget.get("eval_batch_size", 16)), "lr": float(budget.get("lr", default_lr)),
        "seed": int(budget.get("seed", task.split.get("seed", 0))),
        "max_time_s": None if max_time is None else float(max_time) / num_models,
        "dtype": str(budget.get("dtype", "float32")),
    }


def predictions_path(out_dir: Path, prefix: str) -> Path:
    """Where the runner writes one model's test predictions (train mode)."""
    return out_dir / f"{prefix}_predictions.npz"


def inference_record(results: Sequence[Mapping[str, Any]], test: Sequence[Sample],
                     description: ModelDescription) -> dict[str, Any]:
    """Inference speed and size of a task's peer models (result jsons) together, times and parameters summed."""
    inference_s = sum(float(np.median(r["inference_times_s"])) for r in results)
    test_atoms = sum(len(s.numbers) for s in test)
    return {
        "inference_structures_per_s": len(test) / inference_s,
        "inference_atoms_per_s": test_atoms / inference_s,
        "inference_time_s": inference_s,
        "test_structures": len(test),
        "test_atoms": test_atoms,
        "num_parameters": sum(r["num_parameters"] for r in results),
        "model": description.model,
        "device": "cpu",
        "torch_threads": results[0]["torch_threads"],
        "inference_batch_size": results[0]["inference_batch_size"],
        "inference_timing": description.inference_timing,
        "versions": results[0]["versions"],
        "notes": list(description.notes),
        "models": list(results),
    }


@dataclass(frozen=True)
class VenvPeer:
    """A peer whose runner script runs in its own venv.

    ``name``: the peer in messages and records ("MACE"); ``venv_name``: whose venv it is
    ("SchNetPack"); ``runner``: the runner script; ``default_venv``: the venv unless
    ``venv_env_var`` names another; ``setup_script``: what makes the venv (repo-relative);
    ``default_lr``: the learning rate unless the budget sets one; ``describe``: the runners'
    result jsons -> how the models are named in the record; ``plan``: a task -> (its models,
    {unsupported field: reason}); ``md_model``: the planned models -> the one an MD run trains
    (None: the task has no forces); ``md_model_file``: the file in ``out_dir`` where the runner
    saves that model for its calculator (run.json's ``md.model_file``), if it needs one.
    """

    name: str
    venv_name: str
    runner: Path
    default_venv: Path
    venv_env_var: str
    setup_script: str
    default_lr: float
    describe: Callable[[Sequence[Mapping[str, Any]]], ModelDescription]
    plan: Callable[[Any], tuple[list[RunnerModel], dict[str, str]]]
    md_model: Callable[[Sequence[RunnerModel]], RunnerModel | None]
    md_model_file: str | None = None

    def python(self, venv: Path | None = None) -> Path:
        """The venv's python (which may not exist)."""
        venv = venv or Path(os.environ.get(self.venv_env_var, self.default_venv))
        return venv / "bin" / "python"

    def available(self, venv: Path | None = None) -> tuple[bool, str]:
        """Whether the venv is there, and if not, why (and how to make it)."""
        python = self.python(venv)
        if not python.exists():
            return False, f"{self.venv_name} venv not found ({python}); run {self.setup_script}"
        return True, ""

    def write_extxyz(self, samples: Sequence[Sample], fields: Sequence[str], path: Path) -> None:
        """Samples as extxyz, with each field's label under its REF_* key (tensorframe's units).

        Per-atom fields (forces, atomic_dipole) as (atoms, 3) arrays, energy as a float, other
        fields flattened row-major (polarizability: 9 values).

        Raises:
            ValueError: naming the structure and field when a label is missing.
        """
        import ase
        import ase.io

        frames = []
        for index, sample in enumerate(samples):
            atoms = ase.Atoms(numbers=sample.numbers, positions=sample.positions, cell=sample.cell, pbc=sample.pbc)
            for name in fields:
                if name not in sample.targets:
                    raise ValueError(f"structure {index}: no label for field {name!r} ({self.name} needs every label)")
                value = np.asarray(sample.targets[name], dtype=np.float64)
                if name in ATOM_FIELDS:
                    atoms.arrays[LABEL_KEYS[name]] = value.reshape(len(sample.numbers), 3)
                elif name == "energy":
                    atoms.info[LABEL_KEYS[name]] = float(value)
                else:
                    atoms.info[LABEL_KEYS[name]] = value.reshape(-1)  # polarizability: 9, row-major
            frames.append(atoms)
        ase.io.write(path, frames, format="extxyz")

    def field_metrics(self, name: str, predicted: np.ndarray, samples: Sequence[Sample],
                      elements: Sequence[int] | None = None) -> dict[str, Any]:
        """tensorframe's metrics for one field.

        ``predicted``: (rows, 3**rank) or anything that reshapes to it, rows the atoms or the
        structures of ``samples`` in order; ``elements`` keeps only those atoms' rows.

        Raises:
            ValueError: when the row counts of prediction and test set differ.
        """
        from tensorframe.registry import get_registry
        from tensorframe.scoring import FieldPairs, metrics

        spec = get_registry().items["field"][name]
        per_row = 3 ** spec.rank
        target = np.concatenate([np.asarray(s.targets[name], dtype=np.float64).reshape(-1, per_row)
                                 for s in samples])
        predicted = np.asarray(predicted, dtype=np.float64).reshape(-1, per_row)
        if predicted.shape != target.shape:
            raise ValueError(f"field {name!r}: {self.name} returned {predicted.shape[0]} rows, "
                             f"the test set has {target.shape[0]}")
        if spec.level == "atom" and elements:
            keep = np.isin(np.concatenate([s.numbers for s in samples]), list(elements))
            predicted, target = predicted[keep], target[keep]
        return metrics(FieldPairs(name, spec.level, spec.units, spec.rank, predicted, target, len(samples)))

    def _test_metrics(self, task: Any, model: RunnerModel, out_dir: Path, test: Sequence[Sample]) -> dict[str, Any]:
        """{field: metrics} of one model's test predictions (``task.metric_elements`` applied)."""
        with np.load(predictions_path(out_dir, model.prefix)) as predictions:
            return {name: self.field_metrics(name, predictions[name], test,
                                             getattr(task, "metric_elements", {}).get(name))
                    for name in model.fields}

    def _start(self, models: Sequence[RunnerModel], unsupported: Mapping[str, str], venv: Path | None,
               samples: Sequence[Sample], split: Mapping[str, Sequence[int]], out_dir: Path
               ) -> tuple[dict[str, Any] | None, Path, dict[str, list[Sample]]]:
        """(the record of a task the peer cannot run: no supported field or no venv, else None;
        ``out_dir``, created when it can; {"train" | "valid" | "test": the split's samples})."""
        ok, reason = self.available(venv)
        if not models or not ok:
            return ({"supported": False, "reason": reason} if models else
                    {"supported": False, "reason": unsupported_reason(unsupported),
                     "unsupported_fields": dict(unsupported)}), Path(out_dir), {}
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        return None, Path(out_dir), {name: [samples[i] for i in split[name]] for name in SPLIT_PARTS}

    def run_model(self, task: Any, mode: str, model: RunnerModel, parts: Mapping[str, Sequence[Sample]],
                  train_cfg: Mapping[str, Any], out_dir: Path, timeout: float, venv: Path | None,
                  extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Write one model's extxyz files and run.json (plus ``extra``'s keys), run the runner; its result json.

        Raises:
            RuntimeError: with the log's tail when the runner fails.
        """
        files = {}
        for part, part_samples in parts.items():
            files[part] = str(out_dir / f"{model.prefix}_{part}.xyz")
            self.write_extxyz(part_samples, list(model.fields), Path(files[part]))
        run = {"mode": mode, **({} if model.group is None else {"group": model.group}),
               "fields": dict(model.fields), "files": files, "model": dict(model.spec), "train": dict(train_cfg),
               "predictions": str(predictions_path(out_dir, model.prefix)),
               "result": str(out_dir / f"{model.prefix}_result.json"), **dict(extra or {})}
        Path(run["result"]).unlink(missing_ok=True)  # no stale result from an earlier run
        config_path = out_dir / f"{model.prefix}_run.json"
        config_path.write_text(json.dumps(run, indent=2))
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
        proc = subprocess.run([str(self.python(venv)), str(self.runner), str(config_path)], env=env,
                              capture_output=True, text=True, timeout=timeout)
        log_path = out_dir / f"{model.prefix}_log.txt"
        log_path.write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
            which = "" if model.group is None else f", model {model.group!r}"
            raise RuntimeError(f"{self.name} runner failed for task {task.name!r}{which} "
                               f"(rc {proc.returncode}); see {log_path}: " + " | ".join(tail))
        return json.loads(Path(run["result"]).read_text())

    def run_peer(self, task: Any, samples: Sequence[Sample], split: Mapping[str, Sequence[int]],
                 budget: Mapping[str, Any], out_dir: Path, venv: Path | None = None) -> dict[str, Any]:
        """Train and test the task's models (``plan``) on its splits, each with an equal share of the
        budget's time.

        ``budget``: ``epochs``, ``max_time_s`` and optional ``batch_size`` (8, as the suite),
        ``eval_batch_size`` (16, the suite's inference batch), ``lr`` (``default_lr``), ``seed``
        (the split's seed), ``timeout_s`` (per model), ``dtype`` ("float32"; "float64" for exact
        checks). Each model's test predictions stay in ``out_dir/<prefix>_predictions.npz``.
        """
        models, unsupported = self.plan(task)
        blocked, out_dir, parts = self._start(models, unsupported, venv, samples, split, out_dir)
        if blocked is not None:
            return blocked
        train_cfg = runner_train_config(task, budget, default_lr=self.default_lr, num_models=len(models))
        timeout = budget.get("timeout_s") or 3 * (train_cfg["max_time_s"] or 600) + 300
        results, field_results = [], {}
        for model in models:
            results.append(self.run_model(task, "train", model, parts, train_cfg, out_dir, timeout, venv))
            field_results.update(self._test_metrics(task, model, out_dir, parts["test"]))
        summary = inference_record(results, parts["test"], self.describe(results))
        if len(results) > 1:
            summary["notes"].append(f"{len(results)} {self.name} models, each with 1/{len(results)} of the time "
                                    "budget; train time, parameters and inference time are their sums")
        return {
            "supported": True,
            "reason": unsupported_reason(unsupported),
            "unsupported_fields": unsupported,
            "fields": field_results,
            "train_time_s": sum(r["train_time_s"] for r in results),
            "peak_memory_mib": max(r["peak_memory_mib"] for r in results),
            "peak_memory_method": f"ru_maxrss of the {self.name} runner process (whole process, not a delta)",
            **summary,
        }

    def time_peer(self, task: Any, samples: Sequence[Sample], split: Mapping[str, Sequence[int]], out_dir: Path,
                  venv: Path | None = None, *, eval_batch_size: int = 16, dtype: str = "float32",
                  timeout_s: float = 900.0) -> dict[str, Any]:
        """Time the inference of the models :meth:`run_peer` would train (same sizes, data-derived
        settings and seed, hence the same initial weights), untrained, on the test split (runner
        ``time`` mode). Inference as in :meth:`run_peer`: batches of ``eval_batch_size``, graphs
        built in every pass, median of 3 passes after 1 warm-up, one torch thread; models whose
        forces are -dE/dx run with autograd. ``timeout_s`` bounds each runner process.
        """
        models, unsupported = self.plan(task)
        blocked, out_dir, parts = self._start(models, unsupported, venv, samples, split, out_dir)
        if blocked is not None:
            return blocked
        train_cfg = runner_train_config(task, {"epochs": 0, "eval_batch_size": eval_batch_size, "dtype": dtype},
                                        default_lr=self.default_lr, num_models=len(models))
        results = [self.run_model(task, "time", model, parts, train_cfg, out_dir, timeout_s, venv)
                   for model in models]
        summary = inference_record(results, parts["test"], self.describe(results))
        summary["notes"].append(f"untrained {self.name} (seed {train_cfg['seed']}): inference speed does not depend "
                                "on the weights")
        if len(results) > 1:
            summary["notes"].append(f"{len(results)} {self.name} models; parameters and inference time are their sums")
        return {"supported": True, "reason": unsupported_reason(unsupported),
                "fields": [name for model in models for name in model.fields],
                "unsupported_fields": unsupported, **summary}

    def md_peer(self, task: Any, samples: Sequence[Sample], split: Mapping[str, Sequence[int]],
                budget: Mapping[str, Any], out_dir: Path, md: Mapping[str, Any], timeout_s: float,
                venv: Path | None = None) -> dict[str, Any]:
        """Train the task's ``md_model`` as :meth:`run_peer` does (the whole time budget), then run the
        MD protocol ``md`` (run.json's ``md`` block, see ``benchmarks/bench_md.py``) with it in the
        runner (``md`` mode, the runner's own ASE calculator); ``timeout_s`` bounds both. When the MD
        run fails after training, ``md`` is ``{"error": ...}`` and the training's keys come from the
        result json the runner wrote before the MD run.
        """
        model = self.md_model(self.plan(task)[0])
        unsupported = {} if model is not None else {"forces": "the task has no forces for an MD run"}
        blocked, out_dir, parts = self._start([model] if model is not None else [], unsupported, venv, samples,
                                              split, out_dir)
        if blocked is not None:
            return blocked
        if self.md_model_file is not None:
            md = {**md, "model_file": str(out_dir / self.md_model_file)}
        train_cfg = runner_train_config(task, budget, default_lr=self.default_lr, num_models=1)
        result_path = out_dir / f"{model.prefix}_result.json"
        try:
            result = self.run_model(task, "md", model, parts, train_cfg, out_dir, timeout_s, venv, {"md": dict(md)})
        except (RuntimeError, subprocess.TimeoutExpired) as error:
            if not result_path.exists():
                raise
            result = {**json.loads(result_path.read_text()), "md": {"error": f"{type(error).__name__}: {error}"}}
        description = self.describe([result])
        return {"supported": True, "reason": unsupported_reason(unsupported),
                "fields": self._test_metrics(task, model, out_dir, parts["test"]),
                **{key: result.get(key) for key in ("train_time_s", "epochs_done", "stopped_by", "num_parameters",
                                                    "torch_threads", "dtype", "versions")},
                "model": description.model, "notes": description.notes, "md": result["md"]}
