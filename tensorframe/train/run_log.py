"""What a run writes as it goes: a CSV row per epoch, TensorBoard scalars when installed and
asked for, and progress within an epoch: a bar with the running training loss on a terminal,
plain lines on stderr every ``PROGRESS_INTERVAL_S`` seconds otherwise (CI logs, nohup, SLURM)."""

from __future__ import annotations

import csv
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO


class CsvLog:
    """``train_log.csv``: one row per epoch; columns fixed by the first row.

    On resume, rows of epochs after the ``completed_epochs`` of the checkpoint are dropped
    (epochs count from 1), so a run killed between writing a row and its checkpoint logs
    each epoch once.
    """

    def __init__(self, path: Path, completed_epochs: int = 0) -> None:
        self.path = path
        self.columns: list[str] | None = None
        if path.exists():
            with path.open(newline="") as stream:
                reader = csv.DictReader(stream)
                self.columns = list(reader.fieldnames or []) or None
                kept = [row for row in reader if int(row["epoch"]) <= completed_epochs]
            self._rewrite(kept)

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        with self.path.open("w", newline="") as stream:
            if self.columns:
                writer = csv.DictWriter(stream, fieldnames=self.columns)
                writer.writeheader()
                writer.writerows(rows)

    def write(self, row: dict[str, Any]) -> None:
        if self.columns is None:
            self.columns = list(row)
            self._rewrite([])
        with self.path.open("a", newline="") as stream:
            csv.DictWriter(stream, fieldnames=self.columns, extrasaction="ignore").writerow(row)


class TensorBoardLog:
    """Scalars to ``tensorboard/`` when the ``tensorboard`` package is installed; else a warning, once."""

    def __init__(self, folder: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            warnings.warn("tensorboard: true, but the tensorboard package is not installed; logging to CSV only",
                          stacklevel=2)
            self.writer = None
        else:
            self.writer = SummaryWriter(str(folder))

    def write(self, row: dict[str, Any], step: int) -> None:
        if self.writer is None:
            return
        for key, value in row.items():
            if isinstance(value, float) and key != "epoch":
                self.writer.add_scalar(key.replace("_", "/", 1), value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


PROGRESS_INTERVAL_S = 30.0
"""Seconds between two plain progress lines when stderr is not a terminal."""


class EpochProgress:
    """Progress through one epoch's batches, with the running mean training loss.

    On a terminal (``stream.isatty()``) a tqdm bar whose postfix is the loss; otherwise a
    plain line ``epoch 3/100  batch 120/400  loss 0.1234  12.3 s`` (seconds since the epoch
    started) on ``stream``, at most every ``interval_s`` seconds, plus one for the epoch's
    last batch when a line was printed during the epoch and not for that batch (an epoch
    shorter than ``interval_s`` prints nothing: its summary line follows). Silent unless
    ``enabled`` (the config's ``progress``, on rank 0 only).

    Args:
        epoch: the epoch, counted from 1; ``epochs`` of the run.
        start: batches of this epoch already done (resumed mid-epoch); ``total`` in the epoch.
        interval_s: seconds between plain lines; None: :data:`PROGRESS_INTERVAL_S`.
    """

    def __init__(self, enabled: bool, epoch: int, epochs: int, start: int, total: int,
                 interval_s: float | None = None, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled, self.epoch, self.epochs, self.total = enabled, epoch, epochs, total
        self.interval_s = PROGRESS_INTERVAL_S if interval_s is None else interval_s
        self.clock = clock
        self.started = self.last_line = clock()
        self.batch = start
        self.printed_batch: int | None = None  # batch of the last plain line this epoch
        self.bar = None
        if enabled and self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc=f"epoch {epoch}", leave=False, dynamic_ncols=True,
                            file=self.stream)

    def update(self, batch: int, mean_loss: float) -> None:
        """After batch number ``batch`` (1-based), with the mean loss of the epoch's batches so far."""
        self.batch, self.mean_loss = batch, mean_loss
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{mean_loss:.4g}", refresh=False)
            self.bar.update(1)
        elif self.clock() - self.last_line >= self.interval_s:
            self._line()

    def close(self) -> None:
        """End of the epoch (or of the run, mid-epoch): the bar goes; a last line if one is due."""
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.printed_batch is not None and self.printed_batch != self.batch:
            self._line()

    def _line(self) -> None:
        print(f"epoch {self.epoch}/{self.epochs}  batch {self.batch}/{self.total}  loss {self.mean_loss:.4g}  "
              f"{self.clock() - self.started:.1f} s", file=self.stream, flush=True)
        self.last_line, self.printed_batch = self.clock(), self.batch
