"""What the peer runners (``mace_runner.py``, ``painn_runner.py``) share; runs in the peers' venvs.

The runners run as scripts with a peer's own python (``<venv>/bin/python <runner>.py run.json``,
see ``peer_venv.py``), so this module imports only the standard library, numpy, torch and ase,
never tensorframe or a peer's package. A runner finds it by putting its own folder on
``sys.path`` before ``import runner_common``.

Shared here: reading labels from the extxyz files (``REF_*`` keys), dtype / seed / thread
setup, the loss (sum_f w_f * MSE_f / Var_train(f)), the training loop (fixed epochs or a
wall-time budget checked after each batch, keeping the best validation loss's weights), the
inference timing (median of :data:`INFERENCE_REPEATS` passes after one warm-up), the result
json's common keys, atomic writes of the result json and predictions npz, and ``main``
(:func:`run_main`: read run.json, train and predict in ``train`` and ``md`` mode, time in every
mode, and in ``md`` mode run ``benchmarks/bench_md.py``'s NVE protocol, ``md_protocol.py``, with
the trained model's ASE calculator: :func:`run_md_block`). ``time`` mode builds the model as
``train`` does (same seed, hence the same initial weights), skips training and writes only the
inference timing (speed does not depend on the weights): it reads only ``seed``, ``batch_size``,
``eval_batch_size`` and ``dtype`` from ``train`` and writes no predictions. Every inference pass
goes over the test structures in batches of ``eval_batch_size`` on one torch thread.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import ase
import ase.io
import numpy as np
import torch

LABEL_KEYS = {"energy": "REF_energy", "forces": "REF_forces", "dipole": "REF_dipole",
              "polarizability": "REF_polarizability", "atomic_dipole": "REF_atomic_dipole"}
ATOM_FIELDS = ("forces", "atomic_dipole")
MODES = ("train", "time", "md")
INFERENCE_REPEATS = 3  # timed passes (after one warm-up); the median is reported

Batch = TypeVar("Batch")
Run = TypeVar("Run")


def read_labelled(path: str, fields: Sequence[str]) -> list[tuple[ase.Atoms, dict[str, np.ndarray]]]:
    """The structures of one extxyz file, each with {field: label as stored (``REF_*`` key), float64}.

    Raises:
        ValueError: naming the structure, key and field when a label is missing.
    """
    out = []
    for index, atoms in enumerate(ase.io.read(path, index=":", format="extxyz")):
        labels = {}
        for name in fields:
            key = LABEL_KEYS[name]
            source = atoms.arrays if name in ATOM_FIELDS else atoms.info
            if key not in source:
                raise ValueError(f"{path}: structure {index} has no {key!r} for field {name!r}")
            labels[name] = np.asarray(source[key], dtype=np.float64)
        out.append((atoms, labels))
    return out


def setup_torch(train_cfg: Mapping[str, Any]) -> None:
    """Default dtype ``train_cfg["dtype"]`` (float32 when absent), numpy's and torch's global
    seeds ``train_cfg["seed"]``, one torch thread."""
    torch.set_default_dtype(getattr(torch, train_cfg.get("dtype", "float32")))
    seed = int(train_cfg["seed"])
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(1)


def field_variances(labels: Mapping[str, Sequence[torch.Tensor]]) -> dict[str, float]:
    """Variance of each field's training labels ({field: tensors of any shape}), floored at 1e-12."""
    out = {}
    for name, values in labels.items():
        flat = torch.cat([v.reshape(-1) for v in values])
        out[name] = max(float(flat.var()) if flat.numel() > 1 else 1.0, 1e-12)
    return out


def weighted_loss(error: Callable[[str], torch.Tensor], weights: Mapping[str, float],
                  variances: Mapping[str, float]) -> torch.Tensor:
    """sum_f w_f * mean(error(f)**2) / variances[f] over the fields of non-zero weight (error: prediction - label)."""
    total = torch.zeros((), dtype=torch.get_default_dtype())
    for name, weight in weights.items():
        if weight == 0:
            continue
        total = total + weight * error(name).square().mean() / variances[name]
    return total


def mean_loss(model: torch.nn.Module, batches: Iterable[Batch], loss_of: Callable[[Batch], torch.Tensor],
              size_of: Callable[[Batch], int], grad: bool) -> float:
    """Loss per structure over ``batches`` (``loss_of`` each batch's mean, ``size_of`` its
    structures), the model in eval mode, autograd on when ``grad`` (forces = -dE/dx)."""
    model.eval()
    total, count = 0.0, 0
    for batch in batches:
        with torch.set_grad_enabled(grad):
            loss = loss_of(batch)
        total += float(loss.detach()) * size_of(batch)
        count += size_of(batch)
    return total / max(count, 1)


def train_best_on_valid(model: torch.nn.Module, optimizer: torch.optim.Optimizer, train_cfg: Mapping[str, Any],
                        epoch_batches: Callable[[], Iterable[Batch]], loss_of: Callable[[Batch], torch.Tensor],
                        valid_loss: Callable[[], float],
                        scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None) -> dict[str, Any]:
    """Train ``model`` in place, ending with the weights of the best validation loss; what happened.

    ``train_cfg["epochs"]`` epochs, or fewer when ``train_cfg["max_time_s"]`` (if set) runs out;
    the clock is checked after each batch, and the epoch it runs out in is still validated.
    ``epoch_batches()``: one epoch's batches (called at each epoch's start); ``loss_of(batch)``:
    the training loss; ``valid_loss()``: the validation loss after each epoch, which also steps
    ``scheduler`` when given.

    Returns ``train_time_s``, ``epochs_done``, ``stopped_by`` ("epochs" | "max_time_s") and
    ``best_valid_loss``.
    """
    max_time = float(train_cfg["max_time_s"]) if train_cfg.get("max_time_s") else float("inf")
    best_loss, best_state, epochs_done, stopped_by = float("inf"), None, 0, "epochs"
    start = time.perf_counter()
    for _ in range(int(train_cfg["epochs"])):
        model.train()
        for batch in epoch_batches():
            optimizer.zero_grad(set_to_none=True)
            loss = loss_of(batch)
            loss.backward()
            optimizer.step()
            if time.perf_counter() - start > max_time:
                stopped_by = "max_time_s"
                break
        epochs_done += 1
        loss = valid_loss()
        if scheduler is not None:
            scheduler.step(loss)
        if loss < best_loss:
            best_loss = loss
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if stopped_by == "max_time_s":
            break
    train_time = time.perf_counter() - start
    if best_state is not None:
        model.load_state_dict(best_state)
    return {"train_time_s": train_time, "epochs_done": epochs_done, "stopped_by": stopped_by,
            "best_valid_loss": best_loss}


def time_passes(one_pass: Callable[[], None], repeats: int = INFERENCE_REPEATS) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``one_pass`` after one untimed warm-up call."""
    times = []
    for rep in range(repeats + 1):
        start = time.perf_counter()
        one_pass()
        if rep > 0:
            times.append(time.perf_counter() - start)
    return times


def predict_fields(model: torch.nn.Module, batches: Iterable[Batch], forward: Callable[[Batch], Mapping[str, Any]],
                   fields: Sequence[str], grad: bool) -> dict[str, np.ndarray]:
    """{field: ``forward(batch)[field]`` of every batch, concatenated, float64}, the model in eval
    mode, autograd on when ``grad`` (forces = -dE/dx)."""
    model.eval()
    out: dict[str, list[np.ndarray]] = {name: [] for name in fields}
    for batch in batches:
        with torch.set_grad_enabled(grad):
            pred = forward(batch)
        for name in fields:
            out[name].append(pred[name].detach().numpy().astype(np.float64))
    return {name: np.concatenate(values) for name, values in out.items()}


def timing_record(times: Sequence[float], *, structures: int, atoms: int, grad: bool, batch_size: int,
                  each_pass: str) -> dict[str, Any]:
    """The result json's inference keys, from the timed passes over ``structures`` / ``atoms``.

    ``each_pass``: what one pass does, in words ("builds the neighbour lists, ... and runs the
    forward"). Also records threads, dtype, device and the process's peak memory so far.
    """
    median = statistics.median(times)
    return {
        "inference_times_s": list(times),
        "inference_structures_per_s": structures / median,
        "inference_atoms_per_s": atoms / median,
        "inference_grad": grad,
        "inference_batch_size": batch_size,
        "inference_timing": f"median of {len(times)} passes after 1 warm-up; each pass {each_pass}",
        "torch_threads": torch.get_num_threads(),
        "dtype": str(torch.get_default_dtype()).removeprefix("torch."),
        "device": "cpu",
        "test_structures": structures,
        "test_atoms": atoms,
        "peak_memory_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }


def num_parameters(model: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def versions(peer_package: str, other_package: str) -> dict[str, str]:
    """{peer_package, "torch", other_package, "python": version} (distribution versions; torch's own)."""
    return {peer_package: importlib.metadata.version(peer_package), "torch": torch.__version__,
            other_package: importlib.metadata.version(other_package), "python": sys.version.split()[0]}


def write_atomic(path: Path | str, data: bytes) -> None:
    """``data`` to ``path`` through a temporary file beside it, so a reader never sees half a file."""
    path = Path(path)
    partial = path.with_name(f"{path.name}.partial-{os.getpid()}")
    partial.write_bytes(data)
    os.replace(partial, path)


def write_result(path: Path | str, result: Mapping[str, Any]) -> None:
    """The result json (indent 2), atomically."""
    write_atomic(path, json.dumps(result, indent=2).encode())


def write_predictions(path: Path | str, arrays: Mapping[str, np.ndarray]) -> None:
    """{field: array} as an npz, atomically (``.npz`` appended when missing, as ``np.savez`` does)."""
    path = str(path) if str(path).endswith(".npz") else f"{path}.npz"
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_atomic(path, buffer.getvalue())


def run_md_block(calculator: Any, md_cfg: Mapping[str, Any], has_energy: bool = True) -> dict[str, Any]:
    """Run.json's ``md`` block with ``calculator`` (an ASE calculator of the trained model):
    ``md_protocol.run_md`` from structure ``md_cfg["start_index"]`` (0) of the extxyz file
    ``md_cfg["start"]`` with the protocol ``md_cfg["protocol"]`` (``MDProtocol.to_dict``'s keys);
    its record. Progress lines go to stdout (the runner's log)."""
    try:
        import md_protocol  # beside this file, on sys.path when a runner runs as a script
    except ImportError:
        from benchmarks.peers import md_protocol

    atoms = ase.io.read(md_cfg["start"], index=int(md_cfg.get("start_index", 0)), format="extxyz")
    atoms.calc = calculator
    protocol = md_protocol.MDProtocol.from_dict(dict(md_cfg["protocol"]))
    return md_protocol.run_md(atoms, protocol, has_energy, log=lambda line: print(line, flush=True))


@dataclass(frozen=True)
class RunnerSteps(Generic[Run]):
    """A runner's own parts: ``prepare(run.json) -> run`` (data and model, seeded);
    ``train(run, run.json's train block) -> {what happened}`` (in place); ``predict(run) ->
    {field: test predictions}``; ``inference_record(run) -> {timing and description}``;
    ``md_calculator(run, run.json's md block) -> ASE calculator`` of the trained model, whose
    energy its forces derive from (``md`` mode; None where the runner has none)."""

    prepare: Callable[[dict[str, Any]], Run]
    train: Callable[[Run, dict[str, Any]], dict[str, Any]]
    predict: Callable[[Run], dict[str, np.ndarray]]
    inference_record: Callable[[Run], dict[str, Any]]
    md_calculator: Callable[[Run, dict[str, Any]], Any] | None = None


def run_main(steps: RunnerSteps[Run], description: str, argv: list[str] | None = None) -> int:
    """A runner's ``main``: read run.json, prepare; in ``train`` and ``md`` mode train and write
    the predictions; in every mode time inference; in ``md`` mode run the MD protocol with the
    trained model (result key ``md``, :func:`run_md_block`); write the result json ({"mode", ...}).

    Raises:
        ValueError: for a mode other than :data:`MODES` ("train" when absent), or ``md`` mode for a
            runner without ``md_calculator``.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("config", type=Path, help="run.json")
    cfg = json.loads(parser.parse_args(argv).config.read_text())
    mode = cfg.get("mode", "train")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose from {list(MODES)}")
    if mode == "md" and steps.md_calculator is None:
        raise ValueError("this runner has no md mode (no md_calculator)")
    run = steps.prepare(cfg)
    result: dict[str, Any] = {"mode": mode}
    if mode in ("train", "md"):
        result.update(steps.train(run, cfg["train"]))
        write_predictions(cfg["predictions"], steps.predict(run))
    result.update(steps.inference_record(run))
    if mode == "md":
        write_result(cfg["result"], result)  # the training's record survives a failing MD run
        result["md"] = run_md_block(steps.md_calculator(run, cfg["md"]), cfg["md"])
    write_result(cfg["result"], result)
    return 0

