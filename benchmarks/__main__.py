"""``python -m benchmarks run --tasks ... --backbones ... --peers ... [--reduced] [--out DIR] [--docs/--no-docs]``,
``python -m benchmarks speed [--tasks ...] [--backbones ...] [--peers ...]`` (inference of every model side by
side in one process, on a quiet machine), ``python -m benchmarks docs --inputs A.json B.json [--json OUT.json]``
(merge parallel runs, rewrite the docs with the speed pass's numbers where it has them) and ``python -m benchmarks md
[--models ...] [--steps N]`` (NVE stability of liquid water, see benchmarks/bench_md.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks import bench_md
from benchmarks.peers import available_peers
from benchmarks.precision import PRECISIONS
from benchmarks.speed import render_speed, run_speed, section_name
from benchmarks.suite import BACKBONES, RUNS_DIR, run_suite, split_model_name
from benchmarks.suite_report import load_speed, merge, write_docs
from benchmarks.tasks import TASKS
from benchmarks.toolkit import DOCS, RESULTS, display_path, replace_section, resolve_device, write_json

SPEED_JSON = RESULTS / "speed.json"
PLOTS = DOCS.parent / "benchmarks"


def _names(values: list[str] | None, choices: list[str]) -> list[str]:
    """``values`` split at commas; all of ``choices`` for nothing or "all", none for "none"."""
    if not values or values == ["all"]:
        return list(choices)
    return [] if values == ["none"] else [v for value in values for v in value.split(",") if v]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train and evaluate backbones and peers on the tasks")
    run.add_argument("--tasks", nargs="*", help=f"task names or 'all' (choices: {', '.join(TASKS)})")
    run.add_argument("--backbones", nargs="*", help=f"backbone names or 'all' ({', '.join(BACKBONES)})")
    run.add_argument("--peers", nargs="*", help="peer names, 'all' (the modules in benchmarks/peers/) or 'none'")
    run.add_argument("--reduced", action="store_true", help="CI mode: tiny subsets, 1 epoch, a small backbone")
    run.add_argument("--out", type=Path, default=None,
                     help="folder for the JSON and the training runs (default: benchmarks/results; "
                          "reduced runs default to benchmarks/results/runs/reduced)")
    run.add_argument("--json", type=str, default=None, help="JSON file name inside --out (default suite.json, "
                                                            "suite-reduced.json in reduced mode)")
    run.add_argument("--docs", action=argparse.BooleanOptionalAction, default=None,
                     help="rewrite the suite section of docs/benchmarks.md and its plots (default: on for full runs)")
    docs = sub.add_parser("docs", help="merge suite JSONs and rewrite the docs section")
    docs.add_argument("--inputs", nargs="+", type=Path, required=True)
    docs.add_argument("--json", type=Path, default=RESULTS / "suite.json")
    docs.add_argument("--speed", type=Path, default=SPEED_JSON, help="side-by-side speed JSON (used if it exists)")
    speed = sub.add_parser("speed", help="inference of every backbone and peer side by side on each task's test split")
    speed.add_argument("--tasks", nargs="*", help="task names or 'all'")
    speed.add_argument("--backbones", nargs="*", help="backbone names or 'all'")
    speed.add_argument("--peers", nargs="*", help="peer names, 'all' or 'none'")
    speed.add_argument("--repeats", type=int, default=5, help="interleaved timed rounds (median reported)")
    speed.add_argument("--json", type=Path, default=SPEED_JSON)
    speed.add_argument("--reduced", action="store_true", help="time the reduced-mode subsets (smoke test)")
    speed.add_argument("--device", default="cpu", help="cpu or cuda: where the in-process models run (default cpu)")
    speed.add_argument("--precision", choices=PRECISIONS, default="float32",
                       help="float32, tf32 (CUDA products) or bf16 (autocast); default float32")
    speed.add_argument("--merge", action="store_true",
                       help="keep the other tasks of an existing --json; the tasks timed now replace theirs")
    speed_docs = sub.add_parser("speed-docs", help="write a speed JSON's table into its own docs section "
                                                   "(speed-<device>-<precision>), e.g. the GPU pass's")
    speed_docs.add_argument("--json", type=Path, required=True)
    speed_docs.add_argument("--docs", type=Path, default=DOCS)
    md = sub.add_parser("md", help="NVE MD stability of liquid water with trained models (benchmarks/bench_md.py)")
    bench_md.add_arguments(md)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "md":
        return bench_md.run(args)
    if args.command == "docs":
        result = merge([json.loads(p.read_text()) for p in args.inputs])
        write_json(args.json.resolve(), result)
        write_docs(result, args.json.resolve(), speed=load_speed(args.speed, result["backbone_configs"]))
        print(f"wrote {args.json} and the suite section of docs/benchmarks.md")
        return 0
    if args.command == "speed-docs":
        speed = json.loads(args.json.read_text())
        name = section_name(speed)
        replace_section(args.docs, name, render_speed(speed, display_path(args.json)))
        print(f"wrote the {name} section of {args.docs}")
        return 0
    if args.command == "speed":
        backbones = {name: BACKBONES[split_model_name(name)[0]]
                     for name in _names(args.backbones, list(BACKBONES))}
        run_speed(_names(args.tasks, list(TASKS)), backbones, _names(args.peers, available_peers()),
                  args.repeats, args.json.resolve(), reduced=args.reduced, merge=args.merge,
                  device=resolve_device(args.device), precision=args.precision)
        print(f"wrote {args.json}; rewrite the docs with `python -m benchmarks docs --inputs ...`")
        return 0
    tasks = _names(args.tasks, list(TASKS))
    backbones = _names(args.backbones, list(BACKBONES))
    peers = _names(args.peers, available_peers())
    out = (args.out or (RUNS_DIR / "reduced" if args.reduced else RESULTS)).resolve()
    json_path = out / (args.json or ("suite-reduced.json" if args.reduced else "suite.json"))
    docs = args.docs if args.docs is not None else not args.reduced
    runs_dir = out / "runs" if args.out is not None else (RUNS_DIR / "reduced" if args.reduced else RUNS_DIR)
    result = run_suite(tasks, backbones, peers, args.reduced, json_path, runs_dir, PLOTS if docs else None)
    if docs:
        write_docs(result, json_path, speed=None if args.reduced else load_speed(SPEED_JSON, result["backbone_configs"]))
    print(f"wrote {json_path}" + (" and the suite section of docs/benchmarks.md" if docs else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
