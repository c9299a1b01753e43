"""Train the longer water model of the MD table: a conservative energy model trained beyond the
suite's 90 s budget, to see how MD stability grows with training.

    python -m benchmarks.train_water_md_model --minutes 90 --out runs/water-md-long
    python -m benchmarks md --models --checkpoint reference64-conservative-long=runs/water-md-long/best.pt

All 400 frames of the water-forces data (seeded 320/40/40 split, so the MD table's start
structure, taken from the suite's 160-frame subset, may be one of its training frames), energy
and forces (MSE, weights 1 and 1), the reference backbone 64 wide with 3 interactions,
``conservative: true`` and ``pair_repulsion: true``, the suite's cutoffs and optimiser. A run
cut by ``--minutes`` resumes exactly with ``--resume`` (what the recorded model did: 20 minutes,
then 70 more).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from benchmarks.suite import train_config, write_task_data
from benchmarks.tasks import TASKS, load_task

BACKBONE = {"name": "reference", "hidden": 64, "num_interactions": 3}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train_water_md_model", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=90.0, help="wall-clock training budget of this call")
    parser.add_argument("--out", type=Path, default=Path("runs/water-md-long"))
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    args = parser.parse_args(argv)
    from tensorframe.train import train

    task = replace(TASKS["water-forces"], max_structures_full=None, targets={"energy": 1.0, "forces": 1.0})
    samples, split = load_task(task, reduced=False)
    data = write_task_data(task, samples, split, args.out.parent / f"{args.out.name}-data")
    config = train_config(task, BACKBONE, data, {"epochs": 10000, "max_time_s": 60.0 * args.minutes}, False,
                          args.out, conservative=True)
    config = config.model_copy(update={"loss": "mse", "early_stopping": None,
                                       "model": config.model.model_copy(update={"pair_repulsion": True})})
    result = train(config, output_dir=args.out, resume=args.resume)
    print(json.dumps(result.metrics.get("test", {})))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
