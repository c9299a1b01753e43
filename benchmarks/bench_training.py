"""End-to-end training throughput of ETGNN at the paper's settings (issue 13's training bar),
against the code at a baseline git revision.

The becs-eps paper config (``configs/becs_eps_etgnn.yaml``: cutoffs 6 / 4 Å, max_neighbors 32,
hidden 128, triplet_dim 128, 4 blocks, born + dielectric heads, AdamW, batch 8, float32) is
trained by ``tensorframe``'s own trainer on a fixed seeded subset (240 training and 16
validation crystals; no scheduler, no early stopping, no checkpoints mid-epoch) for 4 epochs,
one core. Each variant runs in its own process: ``baseline`` (the trainer and the ETGNN
plugin as they are at ``--baseline REF``, checked out into a temporary worktree), ``eager``
(this tree, defaults), ``amp-unpadded`` (``amp: true, amp_padding: false``), ``amp``
(``amp: true``: on a CPU, batch graphs padded to bucket sizes), ``compile`` (``compile: true``)
and ``compile+amp``. The variants alternate, round after round, so each sees the same machine
drift. The throughput of a run is 240 / the median ``epoch_time_s`` of its epochs 2-4 (the
trainer's own timing of the training steps; epoch 1 holds compiling and cache filling);
a variant's figure is the median over rounds. Losses are recorded to show that every variant
trains.

Run: ``OMP_NUM_THREADS=1 python -m benchmarks.bench_training --baseline 222988b`` (about 15
minutes for two rounds); writes ``benchmarks/results/training.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from benchmarks.toolkit import REPO_ROOT, RESULTS, environment, write_json

CONFIG = REPO_ROOT / "configs" / "becs_eps_etgnn.yaml"
VARIANTS = {"baseline": {}, "eager": {}, "amp-unpadded": {"amp": True, "amp_padding": False}, "amp": {"amp": True},
            "compile": {"compile": True}, "compile+amp": {"compile": True, "amp": True}}
TRAIN, VALID, EPOCHS, SEED = 240, 16, 4, 0


def run_config(data_path: Path, split_file: Path, output_dir: Path, options: dict[str, Any],
               epochs: int = EPOCHS) -> dict[str, Any]:
    raw = yaml.safe_load(CONFIG.read_text())
    raw["data"]["path"] = str(data_path)
    raw["split"] = {"file": str(split_file)}
    raw.update(epochs=epochs, output_dir=str(output_dir), progress=False, parity_plots=False,
               checkpoint_every_steps=None, early_stopping=None, scheduler=None, **options)
    return raw


CHILD = """
import csv, json, sys, time
from pathlib import Path
import torch
from tensorframe.train.config import parse_train_config
from tensorframe.train.trainer import Trainer
torch.set_num_threads(1)
config_file = Path(sys.argv[1])
raw = json.loads(config_file.read_text())
started = time.monotonic()
Trainer(parse_train_config(raw), config_file.parent).run()
rows = list(csv.DictReader((Path(raw["output_dir"]) / "train_log.csv").open()))
print(json.dumps({"epoch_s": [float(r["epoch_time_s"]) for r in rows],
                  "train_loss": [float(r["train_loss"]) for r in rows],
                  "valid_loss": [float(r["valid_loss"]) for r in rows],
                  "wall_s": time.monotonic() - started}))
"""
"""The variant's process: train with the tensorframe found first on its path, print the log as
one JSON line. Run with ``-c`` from an empty folder, so that nothing but ``PYTHONPATH`` (the
variant's tree and its ETGNN plugin) decides which tensorframe is imported."""


def data_path() -> Path:
    from benchmarks.tasks import DATASETS_ROOT

    return DATASETS_ROOT / "e3nn-crystal-becs-eps" / "phonon_becs_epsilon.xyz"


def run(baseline: str, rounds: int, variants: Sequence[str], train: int = TRAIN, epochs: int = EPOCHS
        ) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        order = list(range(1520))
        random.Random(SEED).shuffle(order)
        split_file = work / "split.json"
        split_file.write_text(json.dumps({"train": sorted(order[:train]), "valid": sorted(order[train:train + VALID]),
                                          "test": []}))
        old = work / "baseline-tree"
        if "baseline" in variants:
            subprocess.run(["git", "worktree", "add", "--detach", "-f", str(old), baseline], cwd=REPO_ROOT,
                           check=True, capture_output=True)
        runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
        try:
            for round_index in range(rounds):
                for variant in variants:
                    config_file = work / f"{variant}.json"
                    config = run_config(data_path(), split_file, work / f"out-{variant}-{round_index}", VARIANTS[variant],
                                        epochs)
                    config_file.write_text(json.dumps(config))
                    tree = old if variant == "baseline" else REPO_ROOT
                    env = dict(os.environ, OMP_NUM_THREADS="1",
                               PYTHONPATH=os.pathsep.join([str(tree), str(tree / "plugins" / "tensorframe-etgnn")]))
                    done = subprocess.run([sys.executable, "-c", CHILD, str(config_file)], cwd=work, env=env,
                                          capture_output=True, text=True)
                    if done.returncode != 0:
                        raise RuntimeError(f"{variant}: the training process failed:\n{done.stderr[-3000:]}")
                    record = json.loads(done.stdout.strip().splitlines()[-1])
                    record["structures_per_s"] = train / statistics.median(record["epoch_s"][1:])
                    runs[variant].append(record)
                    print(variant, round_index, f"{record['structures_per_s']:.2f} structures/s", flush=True)
        finally:
            if "baseline" in variants:
                subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=REPO_ROOT, capture_output=True)
    summary = {v: statistics.median(r["structures_per_s"] for r in records) for v, records in runs.items()}
    reference = summary.get("baseline")
    return {
        "environment": environment(),
        "settings": {"config": str(CONFIG.relative_to(REPO_ROOT)), "train": train, "valid": VALID, "epochs": epochs,
                     "baseline": baseline, "rounds": rounds, "timed_epochs": f"2-{epochs}, median"},
        "runs": runs,
        "structures_per_s": summary,
        "speedup_vs_baseline": {v: s / reference for v, s in summary.items()} if reference else {},
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_training", description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", default="222988b", help="git revision of the baseline (issue 13's start)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--train", type=int, default=TRAIN, help="training crystals (the smoke test uses a few)")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="epochs per run; the first is not timed")
    parser.add_argument("--output", default=str(RESULTS / "training.json"))
    args = parser.parse_args(argv)
    result = run(args.baseline, args.rounds, args.variants, args.train, args.epochs)
    print(json.dumps(result["structures_per_s"]), json.dumps(result["speedup_vs_baseline"]))
    write_json(Path(args.output), result)
    return result


if __name__ == "__main__":
    main()
