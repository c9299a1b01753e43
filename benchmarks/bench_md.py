"""MD stability: NVE liquid water with forces from models trained as the suite trains them.

    python -m benchmarks md                                   # every default model, writes md.json + docs
    python -m benchmarks md --models schnet mace --steps 2000 # some models, a shorter run
    python -m benchmarks md --docs-only                       # rewrite the docs section from md.json

The protocol is ``benchmarks/peers/md_protocol.py``'s (numpy + ase only, so the peers' runners
run the same code in their venvs): the first structure of the water-forces test split (64
molecules, 192 atoms, periodic 12.44 Å cube), Maxwell-Boltzmann velocities at 300 K (numpy
seed 0, zero total momentum), velocity Verlet at 0.5 fs for 4000 steps (2 ps), a record every
10 steps, energy drift (meV/atom/ps) and breakdown (an O-H bond outside [0.7, 1.5] Å, two atoms
closer than 0.6 Å, or a non-finite force or energy). A direct-force model has no energy: its
potential is minus the work of its forces along the trajectory.

Models (:data:`DEFAULT_MODELS`): tensorframe backbones by the suite's names, ``schnet`` (force
head, direct forces) and ``schnet-conservative`` (energy head, forces = -dE/dr), likewise
``reference``; their checkpoints are the suite's, ``benchmarks/results/runs/water-forces/<name>/best.pt``,
trained here with the suite's config and budget (90 s on one core) where absent. Peers
(``mace``, ``painn``): trained in their venvs exactly as in the suite, then run through the
same protocol with their own ASE calculators (runner ``md`` mode). Every model runs on one
torch thread; results merge into ``benchmarks/results/md.json`` model by model (under a file
lock, so two invocations with different ``--models`` may run side by side).
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import json
import shutil
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ase
import ase.io
import numpy as np
import torch

from benchmarks.peers.md_protocol import MDProtocol, run_md
from benchmarks.suite import BACKBONES, RUNS_DIR, split_model_name, train_config, write_task_data
from benchmarks.tasks import TASKS, Task, budget, load_task
from benchmarks.toolkit import DOCS, RESULTS, environment, markdown_table, replace_section, utc_now, write_json
from benchmarks.toolkit import display_path as _relative
from benchmarks.toolkit import fmt_sig as _g
from tensorframe.types import Sample

TASK_NAME = "water-forces"
DEFAULT_MODELS = ("schnet", "schnet-conservative", "reference", "reference-conservative", "mace", "painn")
PEERS = {"mace": "MACE", "painn": "PaiNN (SchNetPack)"}
RESULTS_JSON = RESULTS / "md.json"
SECTION = "md"
PEER_SECONDS_PER_STEP = 2.0  # generous bound for a peer's runner timeout (MACE takes about 0.2 s a step)


# ----------------------------------------------------------------- start structure
def start_structure(samples: Sequence[Sample], split: dict[str, list[int]]) -> ase.Atoms:
    """The first structure of the test split as ase.Atoms (numbers, positions, cell, pbc)."""
    sample = samples[split["test"][0]]
    return ase.Atoms(numbers=sample.numbers, positions=sample.positions, cell=sample.cell, pbc=sample.pbc)


def describe_start(atoms: ase.Atoms, split: dict[str, list[int]]) -> dict[str, Any]:
    lengths = atoms.cell.lengths()
    return {"task": TASK_NAME, "split": "test", "position_in_split": 0, "structure_index": int(split["test"][0]),
            "num_atoms": len(atoms), "formula": atoms.get_chemical_formula(),
            "cell_lengths_A": [float(x) for x in lengths], "pbc": [bool(p) for p in atoms.pbc]}


# ----------------------------------------------------------------- tensorframe models
def checkpoint(task: Task, name: str, samples: list[Sample], split: dict[str, list[int]], runs_dir: Path,
               log: Callable[[str], None] = print, retrain: bool = False) -> tuple[Path, str]:
    """The suite's checkpoint of backbone ``name`` on ``task`` (``runs_dir/<task>/<name>/best.pt``),
    trained here with the suite's config and full budget when absent (or ``retrain``; the folder is
    emptied first, as the suite does); (path, where it came from)."""
    from tensorframe.train import train

    out = runs_dir / task.name / name
    best = out / "best.pt"
    if best.exists() and not retrain:
        return best, "reused from the suite's run"
    base, conservative = split_model_name(name)
    shutil.rmtree(out, ignore_errors=True)
    data = write_task_data(task, samples, split, runs_dir / task.name)
    run_budget = budget(task, reduced=False)
    config = train_config(task, BACKBONES.get(base, {"name": base}), data, run_budget, False, out, conservative)
    log(f"[md] training {name} ({run_budget['max_time_s']:.0f} s budget) -> {out}")
    train(config, output_dir=out)
    if not best.exists():
        raise FileNotFoundError(f"training {name} wrote no best.pt in {out}")
    return best, f"trained here with the suite's config and budget ({run_budget['max_time_s']:.0f} s)"


def force_mae(model: Any, test: Sequence[Sample]) -> float:
    """Force MAE (eV/Å, every component of every atom) of ``model.predict`` on ``test``."""
    predictions = model.predict(list(test), batch_size=16)
    errors = [np.asarray(p["forces"], dtype=np.float64) - np.asarray(s.targets["forces"], dtype=np.float64)
              for p, s in zip(predictions, test, strict=True)]
    return float(np.mean(np.abs(np.concatenate([e.reshape(-1) for e in errors]))))


def tensorframe_md(model: Any, atoms: ase.Atoms, protocol: MDProtocol,
                   log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The protocol with :class:`tensorframe.TensorframeCalculator` on ``model`` (a TensorModel
    or checkpoint path), from a copy of ``atoms``; ``md_protocol.run_md``'s record plus
    ``kind`` ("conservative" when the calculator has the energy its forces derive from, else
    "direct") and ``dtype``."""
    from tensorframe import TensorframeCalculator

    calc = TensorframeCalculator(model, device="cpu")
    conservative = bool(calc.has_energy and (calc.model.conservative or calc.derive_from_energy))
    atoms = atoms.copy()
    atoms.calc = calc
    record = run_md(atoms, protocol, has_energy=conservative, log=log)
    dtype = str(next(calc.model.parameters()).dtype).removeprefix("torch.")
    return {"kind": "conservative" if conservative else "direct", "dtype": dtype, **record}


def training_record(checkpoint_path: Path) -> dict[str, Any]:
    """``epochs``, ``stopped`` and ``train_time_s`` from the run's metrics.json beside the checkpoint."""
    metrics_path = Path(checkpoint_path).with_name("metrics.json")
    if not metrics_path.exists():
        return {}
    metrics = json.loads(metrics_path.read_text())
    return {"epochs": metrics.get("epochs"), "stopped": metrics.get("stopped"),
            "train_time_s": metrics.get("train_time_s")}


def _md_record(name: str, path: Path, model: Any, atoms: ase.Atoms, protocol: MDProtocol,
               log: Callable[[str], None], backbone: str, **keys: Any) -> dict[str, Any]:
    """The protocol on a loaded checkpoint; its record with ``keys`` and the run's training record."""
    record = tensorframe_md(model, atoms, protocol, log=lambda line: log(f"[md] {name}: {line}"))
    return {"framework": "tensorframe", "backbone": backbone, "checkpoint": _relative(path), **keys,
            **training_record(path), "torch_threads": torch.get_num_threads(), **record}


def run_tensorframe_model(name: str, task: Task, samples: list[Sample], split: dict[str, list[int]],
                          atoms: ase.Atoms, protocol: MDProtocol, runs_dir: Path,
                          log: Callable[[str], None] = print, retrain: bool = False) -> dict[str, Any]:
    """Checkpoint (reused or trained), its test force MAE, then the MD protocol."""
    from tensorframe.checkpoint import load_model

    path, source = checkpoint(task, name, samples, split, runs_dir, log, retrain)
    model = load_model(path, map_location="cpu")
    mae = force_mae(model, [samples[i] for i in split["test"]])
    log(f"[md] {name}: test force MAE {mae:.4g} eV/Å; running {protocol.steps} steps")
    return _md_record(name, path, model, atoms, protocol, log, split_model_name(name)[0], checkpoint_source=source,
                      test_force_mae=mae)


def run_given_checkpoint(name: str, path: Path, atoms: ase.Atoms, protocol: MDProtocol,
                         log: Callable[[str], None] = print) -> dict[str, Any]:
    """The protocol on a checkpoint trained elsewhere; test error and training from its run folder."""
    from tensorframe.checkpoint import load_model

    model = load_model(path, map_location="cpu")
    metrics_path = path.with_name("metrics.json")
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    log(f"[md] {name}: given checkpoint {path}; running {protocol.steps} steps")
    minutes = None
    if path.with_name("train_log.csv").exists():  # every call of a resumed run: the epochs' training time
        with path.with_name("train_log.csv").open() as stream:
            minutes = sum(float(row["epoch_time_s"]) for row in csv.DictReader(stream)) / 60.0
    return _md_record(name, path, model, atoms, protocol, log, model.config.backbone.name, training_minutes=minutes,
                      checkpoint_source="given (--checkpoint), trained on its own split, which may hold the start "
                      "structure", test_force_mae=metrics.get("test", {}).get("mae_forces"))


# ----------------------------------------------------------------- peers
def run_peer_model(name: str, task: Task, samples: list[Sample], split: dict[str, list[int]], start_file: Path,
                   protocol: MDProtocol, out_dir: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train the peer as the suite does and run the protocol in its venv (runner ``md`` mode)."""
    import importlib

    peer = importlib.import_module(f"benchmarks.peers.{name}_peer")
    run_budget = budget(task, reduced=False)
    timeout = 3 * float(run_budget["max_time_s"]) + PEER_SECONDS_PER_STEP * protocol.steps + 900
    md = {"protocol": protocol.to_dict(), "start": str(start_file), "start_index": 0}
    log(f"[md] {name}: training ({run_budget['max_time_s']:.0f} s budget) and {protocol.steps} MD steps in its venv")
    result = peer.md_peer(task, samples, split, run_budget, out_dir / name, md, timeout)
    if not result.get("supported"):
        return {"framework": PEERS[name], "error": result.get("reason", "not supported")}
    md_record = dict(result["md"])
    forces = result["fields"].get("forces", {})
    record = {"framework": PEERS[name], "kind": "conservative", "model_description": result.get("model"),
              "test_force_mae": forces.get("mae"), "train_time_s": result.get("train_time_s"),
              "epochs": result.get("epochs_done"), "num_parameters": result.get("num_parameters"),
              "torch_threads": result.get("torch_threads"), "dtype": result.get("dtype"),
              "versions": result.get("versions")}
    if "error" in md_record:
        return {**record, "error": f"MD run failed: {md_record['error']}"}
    return {**record, **md_record}


# ----------------------------------------------------------------- results
def save_model_record(path: Path, name: str, record: dict[str, Any], series_dir: Path, protocol: MDProtocol,
                      env: dict[str, Any], start: dict[str, Any]) -> dict[str, Any]:
    """Merge one model's record into the results json at ``path`` (under an exclusive lock on
    ``<path>.lock.tmp``, which git ignores as it does the ``.tmp`` of the atomic write); its time
    series goes to ``series_dir/<name>.json``. The merged results."""
    record = dict(record)
    series = record.pop("series", None)
    if series is not None:
        series_dir.mkdir(parents=True, exist_ok=True)
        series_file = series_dir / f"{name}.json"
        series_file.write_text(json.dumps(series) + "\n")
        record["series_file"] = _relative(series_file)
    record.update({"protocol": protocol.to_dict(), "length_ps": protocol.length_ps, "date": utc_now()})
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(path.suffix + ".lock.tmp"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = json.loads(path.read_text()) if path.exists() else {}
        result.update({"environment": env, "task": TASK_NAME, "start": start, "protocol": protocol.to_dict()})
        result.setdefault("models", {})[name] = record
        write_json(path, result)
    return result


# ----------------------------------------------------------------- report
def _stability(record: dict[str, Any]) -> str:
    if record.get("stable"):
        return f"stable through {record['time_ps_run']:g} ps"
    return f"broke down at {record['breakdown_time_ps']:g} ps: {record['breakdown_reason']}"


def _peer_versions(result: dict[str, Any]) -> str:
    """" Peers: MACE with mace-torch 0.3.16, ...; " or "" when no peer ran."""
    parts = []
    for record in result.get("models", {}).values():
        versions = record.get("versions") or {}
        if record.get("framework") in PEERS.values() and versions:
            parts.append(f"{record['framework']} with " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    return (" Peers: " + "; ".join(dict.fromkeys(parts)) + ".") if parts else ""


def ordered(models: dict[str, dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """tensorframe models first (in :data:`DEFAULT_MODELS` order, then by name), then the peers."""
    def key(item: tuple[str, dict[str, Any]]) -> tuple[bool, int, str]:
        name = item[0]
        return name in PEERS, DEFAULT_MODELS.index(name) if name in DEFAULT_MODELS else len(DEFAULT_MODELS), name
    return sorted(models.items(), key=key)


def summary(result: dict[str, Any]) -> str:
    """One sentence on how long the models lasted."""
    ran = {n: r for n, r in result.get("models", {}).items() if "steps_run" in r and "error" not in r}
    if not ran:
        return "No model ran."
    broke = {n: r["breakdown_time_ps"] for n, r in ran.items() if not r["stable"]}
    if not broke:
        return f"All {len(ran)} models stayed stable through their runs."
    first, last = min(broke, key=broke.get), max(broke, key=broke.get)
    stable = [n for n in ran if n not in broke]
    text = (f"{len(broke)} of {len(ran)} models broke down, the first ({first}) at {broke[first]:g} ps, "
            f"the last ({last}) at {broke[last]:g} ps")
    return text + (f"; stable through the run: {', '.join(stable)}." if stable else ".")


def render(result: dict[str, Any]) -> str:
    """The docs section: the protocol in words, the machine, and one row per model."""
    env, protocol, start = result.get("environment", {}), result.get("protocol", {}), result.get("start", {})
    cell = " x ".join(f"{x:.2f}" for x in start.get("cell_lengths_A", []))
    lines = ["## MD stability (NVE, liquid water)", "",
             f"Written by `python -m benchmarks md` (last model run {env.get('date')}, commit {env.get('git_commit')}); "
             "do not edit by hand. Raw numbers: `benchmarks/results/md.json`; time series per model in "
             "`benchmarks/results/runs/md/` (not committed).", "",
             f"- Start: the first structure of the `{TASK_NAME}` test split ({start.get('num_atoms')} atoms, "
             f"{start.get('formula')}, periodic {cell} Å cell).",
             f"- Velocities: Maxwell-Boltzmann at {protocol.get('temperature_K')} K from numpy's "
             f"`default_rng({protocol.get('seed')})`, total momentum removed. NVE velocity Verlet (ASE), "
             f"{protocol.get('timestep_fs')} fs steps; the requested length is given per model below.",
             f"- Every {protocol.get('record_every')} steps: potential, kinetic and total energy, temperature and a "
             "geometry check. Breakdown: an O-H distance (each H paired with its nearest O at t = 0, minimum image) "
             f"above {protocol.get('oh_max')} Å or below {protocol.get('oh_min')} Å, two atoms closer than "
             f"{protocol.get('min_distance')} Å, or a non-finite force or energy; the run stops there.",
             "- Drift: slope of a least-squares line through the total energy per atom against time over the recorded "
             "rows before any breakdown (meV/atom/ps); max ΔE: the largest |E_tot(t) - E_tot(0)| per atom "
             "(meV/atom). Direct-force models (marked *) have no energy: their potential is minus the work W of the "
             "forces along the trajectory (trapezoid rule per step, minimum-image displacements). For conservative "
             "models -W matches E_pot(t) - E_pot(0) to the integrator's error (column 'work vs E'), a check that the "
             "calculator's forces are its energy's gradient.",
             "- Caveat on the starred numbers: velocity Verlet conserves KE - W for *any* force field, since "
             "KE(t) - KE(0) - W(t) = Σ_i dt²/(8 m_i) (|F_i(t)|² - |F_i(0)|²) exactly (the per-step differences "
             "telescope; checked in `tests/test_bench_md_smoke.py`). The work-based total energy of a direct model is "
             "therefore flat by construction and its 'drift' only follows the growth of the forces; it cannot show "
             "that the forces are not conservative. Two columns show it instead, for every model: heating (slope of "
             "the temperature against time over the same rows, K/ps; a conservative model can heat only by losing "
             "potential energy) and the asymmetry of the force Jacobian -dF_a/dx_b at the start structure (central "
             f"differences, step {protocol.get('curl_delta')} Å, over the coordinates of the atoms within "
             f"{protocol.get('curl_radius')} Å of the first O; ‖J - Jᵀ‖ / ‖J + Jᵀ‖, 0 for a gradient up to round-off "
             "and the float32 models' precision).",
             "- Models: trained exactly as in the suite, on the same split, for at most 100 epochs or 90 s of wall "
             "time on one CPU core, so their forces are far from converged (test force MAE in the table): the numbers "
             "compare models at this tiny budget, not the architectures' limits. Peers (MACE, PaiNN) run in their own "
             "venvs with their own ASE calculators (`MACECalculator`, SchNetPack's `SpkCalculator`)."
             + "".join(f" {name}: {r['checkpoint_source']}; {r['training_minutes']:.0f} min of training steps "
                       f"({r.get('epochs')} epochs), test force MAE on its own test split."
                       for name, r in result.get("models", {}).items() if r.get("training_minutes") is not None),
             f"- Machine: {env.get('cpu')}, {env.get('cpu_count')} logical CPUs, one torch thread per model "
             f"(OMP_NUM_THREADS={env.get('OMP_NUM_THREADS')}); torch {env.get('versions', {}).get('torch')}. "
             "s/step: MD wall time per step (force call, integrator and checks; each calculator as it comes, so "
             "tensorframe's and MACE's also compute the stress of the periodic cell, SchNetPack's does not); two runs "
             "may have shared the machine, so treat it as approximate." + _peer_versions(result), ""]
    header = ["model", "forces", "epochs", "test force MAE (eV/Å)", "requested", "outcome", "steps run",
              "drift (meV/atom/ps)", "max ΔE (meV/atom)", "work vs E (meV/atom)", "heating (K/ps)",
              "Jacobian asymmetry", "s/step"]
    rows = []
    for name, record in ordered(result.get("models", {})):
        label = name if record.get("framework") == "tensorframe" else str(record.get("framework"))
        if "error" in record or "steps_run" not in record:
            rows.append([label, record.get("kind", "–"), record.get("epochs", "–"), _g(record.get("test_force_mae")),
                         f"{record.get('length_ps', '–')} ps", f"did not run: {record.get('error')}",
                         *["–"] * 7])
            continue
        star = "*" if record.get("kind") == "direct" else ""
        rows.append([label, record.get("kind"), record.get("epochs", "–"), _g(record.get("test_force_mae")),
                     f"{record['length_ps']:g} ps",
                     _stability(record), record["steps_run"], _g(record.get("drift_meV_per_atom_per_ps")) + star,
                     _g(record.get("max_deviation_meV_per_atom")) + star,
                     _g(record.get("work_vs_energy_max_meV_per_atom")), _g(record.get("temperature_slope_K_per_ps")),
                     _g((record.get("force_asymmetry") or {}).get("relative_asymmetry"), 2),
                     _g(record.get("s_per_step"))])
    lines += [summary(result), "", markdown_table(header, rows), "",
              "\\* potential energy = minus the work of the direct forces: flat by construction (see the caveat above). "
              "Drift over fewer than two recorded rows (a breakdown within the first 10 steps) is shown as –.", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="*", default=list(DEFAULT_MODELS),
                        help=f"tensorframe backbone names (suite names, '-conservative' variants) and peers "
                             f"({', '.join(PEERS)}); default: {' '.join(DEFAULT_MODELS)}")
    parser.add_argument("--steps", type=int, default=MDProtocol.steps, help="MD steps (0.5 fs each; 4000 = 2 ps)")
    parser.add_argument("--out", type=Path, default=RESULTS_JSON, help="results json (merged model by model)")
    parser.add_argument("--runs", type=Path, default=RUNS_DIR, help="the suite's runs folder (checkpoints)")
    parser.add_argument("--docs", action=argparse.BooleanOptionalAction, default=True,
                        help="rewrite the md section of docs/benchmarks.md")
    parser.add_argument("--docs-only", action="store_true", help="only rewrite the docs section from --out")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH",
                        help="also run a checkpoint of your own under NAME (e.g. one trained longer than the "
                             "suite's budget); its test error comes from the run's metrics.json")
    parser.add_argument("--retrain", action="store_true",
                        help="train the tensorframe models again even where a checkpoint exists (overwrites it)")


def run(args: argparse.Namespace, log: Callable[[str], None] = print) -> int:
    torch.set_num_threads(1)
    if args.docs_only:
        replace_section(DOCS, SECTION, render(json.loads(args.out.read_text())))
        log(f"rewrote the {SECTION} section of {_relative(DOCS)}")
        return 0
    protocol = MDProtocol(steps=int(args.steps))
    task = TASKS[TASK_NAME]
    samples, split = load_task(task, reduced=False)
    atoms = start_structure(samples, split)
    md_dir = args.runs / "md"
    md_dir.mkdir(parents=True, exist_ok=True)
    start_file = md_dir / "start.extxyz"
    ase.io.write(start_file, atoms, format="extxyz")
    start, env = describe_start(atoms, split), environment()
    result: dict[str, Any] = {}
    given = dict(item.split("=", 1) for item in args.checkpoint)
    for name in [*args.models, *given]:
        began = time.perf_counter()
        try:
            if name in given:
                record = run_given_checkpoint(name, Path(given[name]), atoms, protocol, log)
            elif name in PEERS:
                record = run_peer_model(name, task, samples, split, start_file, protocol, md_dir, log)
            else:
                record = run_tensorframe_model(name, task, samples, split, atoms, protocol, args.runs, log,
                                               args.retrain)
        except Exception as error:  # noqa: BLE001 - one failing model must not hide the others
            record = {"framework": PEERS.get(name, "tensorframe"), "error": f"{type(error).__name__}: {error}",
                      "traceback": traceback.format_exc(limit=4)}
        record["wall_time_total_s"] = time.perf_counter() - began
        result = save_model_record(args.out, name, record, md_dir / "series", protocol, env, start)
        log(f"[md] {name}: " + (record.get("error") or f"{_stability(record)}, drift "
                                f"{_g(record.get('drift_meV_per_atom_per_ps'))} meV/atom/ps, "
                                f"{_g(record.get('s_per_step'))} s/step"))
    if args.docs and result:
        replace_section(DOCS, SECTION, render(result))
    log(f"wrote {_relative(args.out)}" + (f" and the {SECTION} section of {_relative(DOCS)}" if args.docs else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_md", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
