"""What a run writes as it goes: a CSV row per epoch, TensorBoard scalars when installed and
asked for, and a progress bar on a terminal."""

from __future__ import annotations

import csv
import sys
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


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


def progress(items: Iterable[T], enabled: bool, total: int, description: str) -> Iterator[T]:
    """A tqdm bar over ``items`` when ``enabled`` and stderr is a terminal; the items otherwise."""
    if enabled and sys.stderr.isatty():
        from tqdm import tqdm

        yield from tqdm(items, total=total, desc=description, leave=False, dynamic_ncols=True)
    else:
        yield from items
