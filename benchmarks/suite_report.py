"""The suite's markdown section of docs/benchmarks.md, generated from its JSON (never typed by hand)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.toolkit import DOCS, REPO_ROOT, markdown_table, replace_section
from benchmarks.toolkit import fmt_g as _g


def merge_task(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """One task's records from two runs (e.g. the backbones, and a peer run later): models of
    ``new`` replace those of ``old`` of the same name, the others are kept; the best backbone is
    chosen again over all of them (its parity plots are kept from the run that made them)."""
    out = {**old, **{k: v for k, v in new.items() if k not in ("backbones", "peers", "best_backbone", "plots")}}
    out["backbones"] = {**old.get("backbones", {}), **new.get("backbones", {})}
    out["peers"] = {**old.get("peers", {}), **new.get("peers", {})}
    ranked = [n for n, r in out["backbones"].items() if "fields" in r]
    out["best_backbone"] = min(ranked, key=lambda n: out["backbones"][n]["relative_error"]) if ranked else None
    for record in (new, old):
        if record.get("plots") and record.get("best_backbone") == out["best_backbone"]:
            out["plots"] = record["plots"]
            break
    else:
        out.pop("plots", None)
    return out


def merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Several suite JSONs (e.g. from parallel processes) as one; a task run in several files gets
    the models of all of them (later files win per model, see :func:`merge_task`)."""
    merged = dict(results[0])
    merged["tasks"] = {}
    merged["parts"] = [part for r in results for part in r.get("parts", [
        {"mode": r["mode"], "date": r["environment"].get("date"), "commit": r["environment"].get("git_commit"),
         "tasks": list(r["tasks"]), "backbones": list(r.get("backbone_configs", {})),
         "peers": sorted({p for t in r["tasks"].values() for p in t.get("peers", {})})}])]
    merged["backbone_configs"] = {k: v for r in results for k, v in r.get("backbone_configs", {}).items()}
    for r in results:
        for name, task in r["tasks"].items():
            merged["tasks"][name] = merge_task(merged["tasks"][name], task) if name in merged["tasks"] else task
    from benchmarks.tasks import TASKS

    order = {name: i for i, name in enumerate(TASKS)}
    merged["tasks"] = dict(sorted(merged["tasks"].items(), key=lambda item: order.get(item[0], len(order))))
    return merged


def train_throughput(record: dict[str, Any], n_train: int) -> float | None:
    """Structures/s of training for a peer that reports only epochs, steps and time (same formula
    as the suite uses for backbones: structures seen / training wall time)."""
    if record.get("train_structures_per_s") is not None:
        return record["train_structures_per_s"]
    epochs, steps, seconds = record.get("epochs"), record.get("steps"), record.get("train_time_s")
    if epochs is None or steps is None or not seconds:
        return None
    batch = int(record.get("settings", {}).get("batch_size", 8))
    per_epoch = -(-n_train // batch)
    return (epochs * n_train + max(0, steps - epochs * per_epoch) * batch) / seconds


def load_speed(path: Path, backbone_configs: dict[str, Any]) -> dict[str, Any] | None:
    """The side-by-side speed JSON (:mod:`benchmarks.speed`) when it exists, timed the same
    backbone configurations as the suite, and ran them as the suite does (CPU, float32);
    otherwise None (the training-run timings are shown)."""
    if not path.exists():
        return None
    speed = json.loads(path.read_text())
    if speed.get("device", "cpu") != "cpu" or speed.get("precision", "float32") != "float32":
        return None
    timed = speed.get("backbone_configs", {})  # models it did not time (e.g. conservative variants) show their run's timings
    shared = [name for name in backbone_configs if name in timed]
    same = bool(shared) and all(timed[name] == backbone_configs[name] for name in shared)
    return speed if same else None


def with_speed(name: str, task: dict[str, Any], speed: dict[str, Any] | None) -> dict[str, Any]:
    """``task`` with the inference columns and bar 2 taken from the speed pass where it timed the task."""
    from benchmarks.speed import speeds_for
    from benchmarks.suite import bar
    from benchmarks.tasks import TASKS

    speeds = speeds_for(speed, name)
    if "skipped" in task:
        return task
    out = dict(task)
    if not speeds:
        if name in TASKS:
            out["bar"] = bar(TASKS[name], out)
        return out
    models = speed["tasks"][name]["models"]
    for group in ("backbones", "peers"):
        out[group] = {}
        for model, record in task.get(group, {}).items():
            record = dict(record)
            if model in speeds:
                record["inference_structures_per_s"] = models[model]["structures_per_s"]
                record["inference_atoms_per_s"] = models[model]["atoms_per_s"]
            elif "fields" in record:
                record["inference_structures_per_s"] = record["inference_atoms_per_s"] = None
            out[group][model] = record
    if name in TASKS:
        out["bar"] = bar(TASKS[name], out, speeds)
    return out


def task_section(name: str, task: dict[str, Any]) -> str:
    lines = [f"### {name}", "", task["description"], "", f"Caveats: {task['caveats']}", ""]
    lines.append(f"Data: `../shared/datasets/{task['dataset']}` (see its PROVENANCE.md)" if task["dataset"] != "embedded"
                 else "Data: the embedded molecule set (`tensorframe.datasets.load_default_dataset`).")
    if "skipped" in task:
        return "\n".join([*lines, "", f"**Skipped:** {task['skipped']}", ""])
    sizes = task["split_sizes"]
    subset = task.get("subset_of_at_most")
    lines += ["", f"{task['num_structures']} structures{f' (seeded subset, at most {subset} kept)' if subset else ''} (mean {task['num_atoms_mean']:.0f} atoms), split "
              f"{sizes['train']}/{sizes['valid']}/{sizes['test']} (train/valid/test, seed {task['split_fractions'].get('seed', 0)}); "
              f"cutoff {task['cutoff']} Å, triplet cutoff {task['triplet_cutoff']} Å; budget per model: "
              f"{task['budget']['epochs']} epochs or {task['budget']['max_time_s']:g} s of training"
              + (" (reduced mode)" if task.get("reduced") else "") + ".", ""]
    fields = list(task["targets"])
    rows: list[dict[str, Any]] = []
    for bname, r in task.get("backbones", {}).items():
        rows.append({"name": f"tensorframe {bname}" + (" (best)" if bname == task.get("best_backbone") else ""), **r})
    for pname, r in task.get("peers", {}).items():
        rows.append({"name": f"peer {pname}", **r})
    best = task.get("backbones", {}).get(task.get("best_backbone") or "", {})
    header = ["model"] + [f"{f} MAE" for f in fields] + [f"{f} RMSE" for f in fields] + [
        "epochs", "train struct/s", "infer struct/s", "infer atoms/s", "train peak MiB", "params",
        "MAE ratio to best backbone", "speed ratio (best backbone / peer)"]
    table = []
    notes = []
    for r in rows:
        if "error" in r or (r.get("supported") is False):
            notes.append(f"- {r['name']}: {r.get('error') or r.get('reason')}")
            continue
        f = r.get("fields", {})
        ratio = speed = "–"
        if r["name"].startswith("peer") and best.get("fields"):
            ratio = ", ".join(f"{_g(f[k]['mae'] / best['fields'][k]['mae'], 2)}" for k in fields
                              if k in f and best["fields"][k]["mae"] > 0)
            if r.get("inference_structures_per_s"):
                if best.get("inference_structures_per_s"):
                    speed = _g(best["inference_structures_per_s"] / r["inference_structures_per_s"], 2)
        epochs = _g(r.get("epochs"))
        if r.get("epochs") is None and r.get("models"):  # a venv peer: epochs per model it trained
            epochs = "/".join(_g(m.get("epochs_done")) for m in r["models"])
        memory = _g(r.get("train_peak_memory_mib", r.get("peak_memory_mib")))
        if "whole process" in str(r.get("peak_memory_method", "")):
            memory += " ‡"
        table.append([r["name"], *[_g(f.get(k, {}).get("mae")) for k in fields],
                      *[_g(f.get(k, {}).get("rmse")) for k in fields],
                      epochs + (" †" if str(r.get("evaluated_checkpoint", "")).startswith("last") else ""),
                      _g(train_throughput(r, sizes["train"])), _g(r.get("inference_structures_per_s")),
                      _g(r.get("inference_atoms_per_s")),
                      memory, _g(r.get("num_parameters")),
                      ratio, speed])
    lines += [markdown_table(header, table), ""]
    units = ", ".join(f"{k} in {v['units'] or '(as stored)'}" for k, v in
                      next((r["fields"] for r in task.get("backbones", {}).values() if "fields" in r), {}).items())
    if units:
        lines += [f"Units: {units}" + ("" if units.endswith(".") else "."), ""]
    if any(str(r.get("evaluated_checkpoint", "")).startswith("last") for r in task.get("backbones", {}).values()):
        lines += ["† no epoch finished within the time budget: the model was evaluated as it stood when time ran "
                  "out (last.pt), without a validation-selected checkpoint.", ""]
    if any("whole process" in str(r.get("peak_memory_method", "")) for r in task.get("peers", {}).values()):
        lines += ["‡ peak resident memory of the peer's whole runner process (its own venv), not the growth "
                  "during training: not comparable with the other rows.", ""]
    if notes:
        lines += ["Not run:", *notes, ""]
    b = task.get("bar", {})
    if b:
        lines += [f"- Bar 1 (tensorframe's best backbone matches or beats the best peer's test error): "
                  f"{b['accuracy']['text']}.",
                  f"- Bar 2 (ETGNN inference >= 3x faster than the e3nn peer at comparable accuracy): {b['speed']['text']}.", ""]
    for plot in task.get("plots", []):
        rel = Path(plot).relative_to("docs") if plot.startswith("docs/") else Path("..") / plot
        lines.append(f"![parity {Path(plot).stem}]({rel})")
    return "\n".join(lines) + "\n"


def _parts_lines(result: dict[str, Any], speed: dict[str, Any] | None) -> list[str]:
    """One line naming the runs merged into this report, when there are several."""
    parts = result.get("parts", [])
    if len(parts) < 2:
        return []
    described = []
    for part in parts:
        peers, backbones = part.get("peers"), part.get("backbones", [])
        who = ", ".join(backbones) if backbones else "peers only"
        who += f"; peers {', '.join(peers)}" if peers else "; no peers" if peers == [] else ""
        described.append(f"{part.get('date')} (commit {part.get('commit') or 'not recorded'}): "
                         f"{', '.join(part.get('tasks', []))} ({who})")
    line = ("- Runs merged (a later run replaces the models it ran, per task): " + "; ".join(described) + ".")
    if speed:
        line += (" Inference columns come from the speed pass named above, whatever run trained the model; a "
                 "model changed since that pass is not re-timed.")
    return [line]


def section(result: dict[str, Any], json_name: str, speed: dict[str, Any] | None = None) -> str:
    env = result["environment"]
    tasks = {name: with_speed(name, task, speed) for name, task in result["tasks"].items()}
    if speed:
        senv = speed["environment"]
        inference = (f"measured side by side by `python -m benchmarks speed` on {senv.get('date')} (commit "
                     f"{senv.get('git_commit')}), {senv.get('cpu')}, OMP_NUM_THREADS={senv.get('OMP_NUM_THREADS')}: "
                     f"{speed['protocol']}; {speed['repeats']} rounds. Raw numbers: `benchmarks/results/speed.json`. "
                     "MACE is timed by its own runner in a subprocess (its own venv) right after")
        retimed: dict[str, list[str]] = {}
        for task_name, timed in speed.get("tasks", {}).items():
            tenv = timed.get("environment")
            if tenv and tenv.get("date") != senv.get("date"):
                retimed.setdefault(f"{tenv.get('date')} (commit {tenv.get('git_commit')})", []).append(task_name)
        for when, names in retimed.items():
            inference += f"; {', '.join(names)} re-timed whole (every model again, side by side) on {when}"
    else:
        inference = result["inference"] + " (during the suite's training runs, which may share the CPU)"
    lines = [
        "## Suite: every backbone and peer on the shared tensor tasks", "",
        f"Written by `python -m benchmarks run` ({result['mode']} mode) on {env.get('date')} "
        f"(commit {env.get('git_commit')}); do not edit by hand. Raw numbers: `{json_name}`.", "",
        f"- Machine: {env.get('cpu')}, {env.get('cpu_count')} logical CPUs, OMP_NUM_THREADS="
        f"{env.get('OMP_NUM_THREADS')}, torch threads {env.get('torch_num_threads')}; device cpu; "
        f"versions: " + ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items()) + ".",
        "- Backbone sizes: " + "; ".join(f"{k}: {json.dumps(v)}" for k, v in result["backbone_configs"].items()) + ".",
        "- Test errors: MAE and RMSE over every Cartesian component of every test row (atoms or structures). "
        "Best backbone = lowest mean over fields of MAE / mean |label|.",
        f"- Inference: {inference}. Training throughput: {result['training_throughput']}.",
        f"- Memory: {result['memory_method']} (training: whole training call).",
        *_parts_lines(result, speed),
        "- Ratio columns (peers): MAE ratio = peer MAE / best backbone MAE per field (> 1: tensorframe more "
        "accurate); speed ratio = best backbone inference structures/s / peer's (> 1: tensorframe faster). "
        "Comparable accuracy for bar 2: ETGNN's relative error at most 10 % above the e3nn peer's.", "",
    ]
    summary = []
    for name, task in tasks.items():
        b = task.get("bar", {})
        sizes = (speed or {}).get("tasks", {}).get(name, {})
        summary.append([name, task.get("best_backbone") or task.get("skipped", "–"),
                        b.get("accuracy", {}).get("text", "–"), b.get("speed", {}).get("text", "–"),
                        _g(sizes.get("edges_per_atom")), _g(sizes.get("triplets_per_atom"))])
    lines += [markdown_table(["task", "best backbone", "bar 1 (accuracy vs best peer)", "bar 2 (ETGNN vs e3nn speed)",
                              "edges / atom", "triplets / atom"], summary), "",
              "Edges per atom are the work per atom of the edge models (the e3nn peer, MACE); triplets per atom "
              "that of ETGNN's triplet messages (test split, the task's cutoffs).", ""]
    lines += forces_comparison(tasks)
    for name, task in tasks.items():
        lines.append(task_section(name, task))
    return "\n".join(lines)


def forces_comparison(tasks: dict[str, Any]) -> list[str]:
    """A table of force test MAE per backbone, direct (force head) beside conservative
    (-dE/dr of an energy head), with the peers, on every task that ran both."""
    from benchmarks.suite import CONSERVATIVE_SUFFIX

    rows, backbones = [], []
    for name, task in tasks.items():
        records = task.get("backbones", {})
        conservative = [n for n in records if n.endswith(CONSERVATIVE_SUFFIX) and "fields" in records[n]]
        if not conservative or "forces" not in task.get("targets", {}):
            continue
        for n in conservative:
            base = n[: -len(CONSERVATIVE_SUFFIX)]
            if base not in backbones:
                backbones.append(base)
        rows.append((name, records, task.get("peers", {})))
    if not rows:
        return []

    def mae(record: dict[str, Any] | None) -> str:
        value = (record or {}).get("fields", {}).get("forces", {}).get("mae")
        return _g(value) if value is not None else "–"

    peers = sorted({p for _, _, ps in rows for p, r in ps.items() if r.get("fields", {}).get("forces")})
    header = ["task", *[f"{b} direct / conservative" for b in backbones], *[f"peer {p}" for p in peers]]
    table = [[name, *[f"{mae(records.get(b))} / {mae(records.get(b + CONSERVATIVE_SUFFIX))}" for b in backbones],
              *[mae(ps.get(p)) for p in peers]] for name, records, ps in rows]
    notes = []
    for name, records, ps in rows:
        ours = {n: r["fields"]["forces"]["mae"] for n, r in records.items()
                if n.endswith(CONSERVATIVE_SUFFIX) and r.get("fields", {}).get("forces")}
        theirs = {p: r["fields"]["forces"]["mae"] for p, r in ps.items() if p != "e3nn" and r.get("fields", {}).get("forces")}
        if ours and theirs:
            best, peer = min(ours, key=ours.get), min(theirs, key=theirs.get)
            gap = ours[best] / theirs[peer] - 1.0
            notes.append(f"- {name}: best conservative {best} {_g(ours[best])} eV/Å against {peer} {_g(theirs[peer])}: "
                         + (f"{-gap:.0%} lower" if gap <= 0 else f"{gap:.0%} higher (falls short)") + ".")
    return ["### Direct and conservative forces", "",
            "Force test MAE (eV/Å), same split and wall-clock budget, from the runs listed above (a budget in "
            "seconds gives fewer epochs to a slower model, and to one whose run shared the CPU): direct = the "
            "paper's force head (Eq. 3); "
            "conservative = `model.conservative: true`, forces = -dE/dr of an energy head trained on the same "
            "force labels (the peers MACE and PaiNN are conservative too). Other fields of a task are predicted "
            "beside them by the same heads in both.", "",
            markdown_table(header, table), "", *notes, ""]


def write_docs(result: dict[str, Any], json_path: Path, docs: Path = DOCS, speed: dict[str, Any] | None = None) -> None:
    rel = json_path.relative_to(REPO_ROOT) if json_path.resolve().is_relative_to(REPO_ROOT) else json_path
    replace_section(docs, "suite", section(result, str(rel), speed))
