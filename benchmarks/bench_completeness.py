"""Complete word sets against the paper's: accuracy per field, planar and linear molecules in
their principal frames, and the cost of the extra words in a forward pass.

    python -m benchmarks.bench_completeness                     # train + cost, writes docs
    python -m benchmarks.bench_completeness --cost-only         # only the forward-cost table
    python -m benchmarks.bench_completeness --reduced --no-docs # CI smoke test

Training: each task of :data:`TASKS` x backbone x basis (``complete``, the default, and
``paper``) on the suite's data, split and budget (:mod:`benchmarks.suite`), the two bases of
one backbone run back to back in one process. The default-molecules models are then evaluated
in each planar or linear test molecule's principal frame: in-plane vs out-of-plane (normal)
components for planar molecules, axial vs perpendicular for linear ones.

Cost: the same backbone weights under both word sets, forward passes (``inference_mode``) over
each task's test split timed in interleaved rounds in one process; the median per model.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.suite import BACKBONES, REDUCED_BACKBONES, RUNS_DIR, _public, run_backbone, write_task_data
from benchmarks.tasks import TASKS, Task, budget, load_task
from benchmarks.toolkit import (
    DOCS,
    RESULTS,
    environment,
    interleaved_rounds,
    machine_line,
    markdown_table,
    replace_section,
    seeded_model,
    write_json,
    written_by,
)
from benchmarks.toolkit import fmt_sig as _g
from tensorframe.types import Sample

RESULTS_JSON = RESULTS / "completeness.json"
TASK_NAMES = ("default-molecules", "tensoap-clusters", "deepmd-water-polar", "becs-eps")
BACKBONE_NAMES = ("schnet", "etgnn")
BASES = ("complete", "paper")
CHARGE_FLOW_FIELDS = ("dipole", "polarizability")
MOLECULAR_TASKS = ("default-molecules", "tensoap-clusters")  # charge flow needs non-periodic structures
PLANAR_RATIO = 0.15  # smallest / largest singular value of the centred positions below this: planar
LINEAR_RATIO = 0.15  # second / largest below this: linear


def with_basis(task: Task, basis: str, charge_flow: bool = False) -> Task:
    """The task with ``basis`` on every head (and ``charge_flow`` on its dipole and
    polarizability heads)."""
    def options(head: dict[str, Any]) -> dict[str, Any]:
        flow = charge_flow and head.get("field", head["name"]) in CHARGE_FLOW_FIELDS
        return {**head, "basis": basis, **({"charge_flow": True} if flow else {})}

    return dataclasses.replace(task, heads=[options(head) for head in task.heads])


def variants(task_name: str) -> dict[str, tuple[str, bool]]:
    """{suffix: (basis, charge_flow)} run on a task."""
    out = {basis: (basis, False) for basis in BASES}
    if task_name in MOLECULAR_TASKS:
        out["complete-cf"] = ("complete", True)
    return out


# ----------------------------------------------------------------- principal frames
def principal_frame(sample: Sample) -> tuple[str, np.ndarray]:
    """``("planar" | "linear" | "3d", V)`` with V's rows the principal axes, largest spread first."""
    centred = sample.positions - sample.positions.mean(0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=True)
    singular = np.concatenate([singular, np.zeros(3 - singular.shape[0])])
    if singular[1] < LINEAR_RATIO * singular[0]:
        return "linear", vt
    if singular[2] < PLANAR_RATIO * singular[0]:
        return "planar", vt
    return "3d", vt


def frame_errors(samples: list[Sample], predictions: list[dict[str, np.ndarray]], field: str) -> dict[str, Any]:
    """MAE of rank-2 tensors rotated into each molecule's principal frame, split by the kind
    of component: planar molecules -> ``in_plane`` (2x2 block) and ``normal`` (n.T.n);
    linear ones -> ``axial`` (u.T.u) and ``perpendicular`` (2x2 block normal to the axis).
    Mixed components (one index in each part) are forbidden by symmetry for exactly planar or
    linear molecules and small for rattled ones; they are reported as ``mixed``."""
    groups: dict[str, list[np.ndarray]] = {}
    for sample, prediction in zip(samples, predictions, strict=True):
        if field not in sample.targets:
            continue
        kind, frame = principal_frame(sample)
        if kind == "3d":
            continue
        true = np.asarray(sample.targets[field], dtype=np.float64).reshape(-1, 3, 3)
        pred = np.asarray(prediction[field], dtype=np.float64).reshape(-1, 3, 3)
        error = np.einsum("ia,nab,jb->nij", frame, pred - true, frame)
        label = np.einsum("ia,nab,jb->nij", frame, true, frame)
        if kind == "planar":  # normal = third axis
            parts = {"in_plane": (slice(0, 2), slice(0, 2)), "normal": (slice(2, 3), slice(2, 3))}
        else:  # axis = first axis
            parts = {"axial": (slice(0, 1), slice(0, 1)), "perpendicular": (slice(1, 3), slice(1, 3))}
        for part, (rows, cols) in parts.items():
            groups.setdefault(f"{kind}:{part}", []).append(np.abs(error[:, rows, cols]).ravel())
            groups.setdefault(f"{kind}:{part}:label", []).append(np.abs(label[:, rows, cols]).ravel())
        mixed = np.concatenate([error[:, :2, 2:].ravel(), error[:, 2:, :2].ravel()]) if kind == "planar" else \
            np.concatenate([error[:, :1, 1:].ravel(), error[:, 1:, :1].ravel()])
        groups.setdefault(f"{kind}:mixed", []).append(np.abs(mixed))
    out: dict[str, Any] = {}
    for key, values in groups.items():
        if key.endswith(":label"):
            continue
        joined = np.concatenate(values)
        labels = groups.get(f"{key}:label")
        out[key] = {"mae": float(joined.mean()), "count": int(joined.size),
                    "label_mean_abs": float(np.concatenate(labels).mean()) if labels else None}
    out["molecules"] = {kind: sum(principal_frame(s)[0] == kind for s in samples) for kind in ("planar", "linear")}
    return out


# ----------------------------------------------------------------- training runs
def run_training(task_names: list[str], backbones: list[str], reduced: bool, runs_dir: Path, log=print) -> dict[str, Any]:
    from tensorframe.checkpoint import load_model

    out: dict[str, Any] = {}
    for task_name in task_names:
        task = TASKS[task_name]
        ok, why = task.available()
        if not ok:
            out[task_name] = {"skipped": why}
            log(f"[{task_name}] skipped: {why}")
            continue
        samples, split = load_task(task, reduced)
        data = write_task_data(task, samples, split, runs_dir / task.name)
        run_budget = budget(task, reduced)
        test = [samples[i] for i in split["test"]]
        record: dict[str, Any] = {"budget": run_budget, "n_train": len(split["train"]), "n_test": len(test),
                                  "models": {}}
        for backbone in backbones:
            config = (REDUCED_BACKBONES if reduced else BACKBONES).get(backbone, BACKBONES.get(backbone))
            for suffix, (basis, charge_flow) in variants(task_name).items():
                name = f"{backbone}-{suffix}"
                log(f"[{task_name}] {name} ...")
                result = _public(run_backbone(with_basis(task, basis, charge_flow), name, config, samples, split,
                                              data, run_budget, reduced, runs_dir))
                entry = {key: result[key] for key in ("fields", "relative_error", "epochs", "train_structures_per_s",
                                                      "train_time_s", "params") if key in result}
                if task_name == "default-molecules":
                    model_dir = runs_dir / task.name / name
                    best = model_dir / "best.pt"
                    model = load_model(best if best.exists() else model_dir / "last.pt")
                    predictions = model.predict(test)
                    entry["frames"] = {field: frame_errors(test, predictions, field)
                                       for field in ("born_charges", "polarizability") if field in task.targets}
                record["models"][name] = entry
                log(f"[{task_name}] {name}: " + ", ".join(f"{f} MAE {v['mae']:.4g}" for f, v in entry["fields"].items()))
        out[task_name] = record
    return out


# ----------------------------------------------------------------- forward cost
def forward_passes(model: torch.nn.Module, graphs: list[Any]) -> Any:
    """A call running ``model`` on every graph of ``graphs`` (one timed pass)."""

    def call() -> None:
        for graph in graphs:
            model(graph)

    return call


def run_cost(task_names: list[str], backbones: list[str], repeats: int, reduced: bool, log=print) -> dict[str, Any]:
    """Forward time of the complete vs paper words, same backbone weights, interleaved rounds."""
    out: dict[str, Any] = {}
    for task_name in task_names:
        task = TASKS[task_name]
        if not task.available()[0]:
            continue
        samples, split = load_task(task, reduced)
        test = [samples[i] for i in split["test"]][: (8 if reduced else 64)]
        record: dict[str, Any] = {"structures": len(test), "atoms": int(sum(s.num_atoms for s in test))}
        for backbone in backbones:
            backbone_config = (REDUCED_BACKBONES if reduced else BACKBONES).get(backbone, BACKBONES.get(backbone))
            models = {}
            for basis in BASES:
                models[basis] = seeded_model(task.cutoff, min(task.triplet_cutoff, task.cutoff), backbone_config,
                                             with_basis(task, basis).heads).eval()
            models["paper"].backbone.load_state_dict(models["complete"].backbone.state_dict())
            graphs = [models["complete"].make_graph(test[i : i + 16]) for i in range(0, len(test), 16)]
            with torch.inference_mode():  # alternating order: neither model always runs on a warmer cache
                times = interleaved_rounds({b: forward_passes(models[b], graphs) for b in BASES}, repeats, alternate=True)
            median = {basis: statistics.median(values) for basis, values in times.items()}
            # Median of the paired ratios of each round: robust to a slow round hitting both.
            paired = statistics.median(c / p for c, p in zip(times["complete"], times["paper"], strict=True))
            record[backbone] = {"median_s": median, "extra_fraction": paired - 1.0,
                                "extra_fraction_of_medians": median["complete"] / median["paper"] - 1.0}
            log(f"[{task_name}] {backbone}: complete {median['complete']*1e3:.1f} ms, paper {median['paper']*1e3:.1f} ms,"
                f" +{100 * record[backbone]['extra_fraction']:.1f} %")
        out[task_name] = record
    return out


# ----------------------------------------------------------------- report
def render(result: dict[str, Any]) -> str:
    env = result["environment"]
    lines = ["## Completeness: complete word sets vs the paper's",
             "",
             written_by("python -m benchmarks.bench_completeness", env, "benchmarks/results/completeness.json"),
             "",
             machine_line(env),
             f"- CUDA: {env.get('cuda') or 'none (CPU only)'}.",
             "- `complete` (the default): the paper's words plus identity words per atom and per edge and "
             "normal-direction (c = a x b) triplet words; `paper`: Eqs. 3-8 (`basis: paper`); `complete-cf`: "
             "complete plus the charge-flow terms on the dipole and polarizability heads (molecular tasks only). "
             "Same task, split, "
             "budget (the suite's: 100 epochs or 90 s of training on one core) and backbone size; one seed each, "
             "so differences of a few per cent are within run-to-run noise.",
             ""]
    training = result.get("training", {})
    for task_name, record in training.items():
        if "skipped" in record:
            lines += [f"### {task_name}", "", f"Skipped: {record['skipped']}", ""]
            continue
        fields = sorted({f for m in record["models"].values() for f in m["fields"]})
        header = ["model", *[f"{f} MAE" for f in fields], "epochs", "train struct/s"]
        rows = [[name, *[_g(m["fields"].get(f, {}).get("mae")) for f in fields], m.get("epochs", "–"),
                 _g(m.get("train_structures_per_s"))] for name, m in record["models"].items()]
        lines += [f"### {task_name}", "", f"{record['n_train']} training / {record['n_test']} test structures.", "",
                  markdown_table(header, rows), ""]
        frames = {name: m["frames"] for name, m in record["models"].items() if "frames" in m}
        if frames:
            lines += ["Planar and linear test molecules in their principal frames (MAE of the components; "
                      "label mean |value| in brackets). Planar: in-plane 2x2 block vs the normal-normal component; "
                      "linear: axial vs the perpendicular 2x2 block. Molecules are rattled, so 'planar' means the "
                      f"smallest spread is below {PLANAR_RATIO} of the largest.", ""]
            for field in ("born_charges", "polarizability"):
                keys = sorted({k for f in frames.values() for k in f.get(field, {}) if k != "molecules"})
                if not keys:
                    continue
                counts = next(iter(frames.values()))[field]["molecules"]
                header = ["model", *keys]
                rows = []
                for name, frame in frames.items():
                    values = frame.get(field, {})
                    rows.append([name, *[f"{_g(values[k]['mae'])} ({_g(values[k]['label_mean_abs'])})"
                                         if k in values else "–" for k in keys]])
                lines += [f"{field} ({counts['planar']} planar, {counts['linear']} linear test molecules):", "",
                          markdown_table(header, rows), ""]
    cost = result.get("cost", {})
    if cost:
        names = list(dict.fromkeys(b for record in cost.values() for b in record if isinstance(record[b], dict)))
        header = ["task", "structures", "atoms", *[f"{b} paper ms" for b in names],
                  *[f"{b} complete ms" for b in names], *[f"{b} extra" for b in names]]
        rows = []
        for task_name, record in cost.items():
            row = [task_name, record["structures"], record["atoms"]]
            row += [_g(record[b]["median_s"]["paper"] * 1e3) if b in record else "–" for b in names]
            row += [_g(record[b]["median_s"]["complete"] * 1e3) if b in record else "–" for b in names]
            row += [f"{100 * record[b]['extra_fraction']:+.1f} %" if b in record else "–" for b in names]
            rows.append(row)
        lines += ["### Cost of the extra words", "",
                  f"Forward pass (float32, `inference_mode`, batches of 16, graphs built beforehand) over up to 64 test "
                  f"structures with every head of the task; same backbone weights; {result.get('repeats')} rounds in "
                  "one process, one thread, both models once per round in alternating order; times are medians, "
                  "'extra' is the median over rounds of complete / paper - 1. `reference` is the small test backbone "
                  "(its forward is cheap, so the heads weigh more).", "", markdown_table(header, rows), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="*", default=list(TASK_NAMES))
    parser.add_argument("--backbones", nargs="*", default=list(BACKBONE_NAMES))
    parser.add_argument("--reduced", action="store_true", help="CI mode: tiny subsets, 1 epoch, a small backbone")
    parser.add_argument("--cost-only", action="store_true", help="only the forward-cost table (keeps stored training)")
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--out", type=Path, default=RESULTS_JSON)
    parser.add_argument("--runs", type=Path, default=RUNS_DIR / "completeness")
    parser.add_argument("--docs", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    previous = json.loads(args.out.read_text()) if args.out.exists() and args.cost_only else {}
    result: dict[str, Any] = {"environment": environment(), "repeats": args.repeats}
    result["training"] = previous.get("training", {}) if args.cost_only else run_training(
        args.tasks, args.backbones, args.reduced, args.runs)
    result["cost"] = run_cost(args.tasks, args.backbones, args.repeats, args.reduced)
    write_json(args.out, result)
    if args.docs:
        replace_section(DOCS, "completeness", render(result))


if __name__ == "__main__":
    main()
