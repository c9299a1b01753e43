"""Metrics of a model on labelled structures: per field and per Cartesian component, and parity plots.

For each field the model predicts and the data labels, every labelled tensor is flattened
row-major into its 3**rank components (``xx, xy, xz, yx, ...``; a scalar has one component,
``value``): atom-level fields contribute one row per atom, structure-level fields one row per
structure. MAE and RMSE are taken over all rows and components, and per component.
Structures without a label for a field are left out of that field's numbers (``count`` says
how many rows entered).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tensorframe.types import Sample


@dataclass
class FieldPairs:
    """Predicted and labelled values of one field.

    Shapes: predicted, target (M, C): M rows (atoms or structures), C = 3**rank components
    """

    field: str
    level: str
    units: str
    rank: int
    predicted: np.ndarray
    target: np.ndarray
    num_structures: int

    @property
    def components(self) -> list[str]:
        return component_names(self.rank)


def component_names(rank: int) -> list[str]:
    """``["value"]`` for a scalar, ``["x", "y", "z"]``, ``["xx", "xy", ..., "zz"]``, ... (row-major)."""
    if rank == 0:
        return ["value"]
    return ["".join(p) for p in itertools.product("xyz", repeat=rank)]


def collect_pairs(model: Any, samples: Sequence[Sample], batch_size: int = 16) -> dict[str, FieldPairs]:
    """Predictions of ``model`` beside the labels, for every field it predicts that some sample labels.

    Raises:
        ValueError: naming the structure index and field, for a label of the wrong size or
            with NaN/inf values.
    """
    fields = model.fields
    predictions = model.predict(samples, batch_size=batch_size)
    rows: dict[str, tuple[list[np.ndarray], list[np.ndarray], int]] = {}
    for index, (sample, prediction) in enumerate(zip(samples, predictions, strict=True)):
        for name, spec in fields.items():
            if name not in sample.targets or name not in prediction:  # stress/virial: 3D-periodic only
                continue
            predicted = np.asarray(prediction[name], dtype=np.float64)
            target = np.asarray(sample.targets[name], dtype=np.float64)
            if target.size != predicted.size:
                raise ValueError(
                    f"structure {index}, field {name!r}: label has shape {target.shape}, the model predicts {predicted.shape}"
                )
            if not np.all(np.isfinite(target)):
                raise ValueError(f"structure {index}, field {name!r}: label contains NaN or inf")
            per_row = sample.num_atoms if spec.level == "atom" else 1
            pred_rows, target_rows, count = rows.setdefault(name, ([], [], 0))
            pred_rows.append(predicted.reshape(per_row, -1))
            target_rows.append(target.reshape(per_row, -1))
            rows[name] = (pred_rows, target_rows, count + 1)
    return {
        name: FieldPairs(name, fields[name].level, _units(fields[name]), fields[name].rank, np.concatenate(p),
                         np.concatenate(t), n)
        for name, (p, t, n) in rows.items()
    }


def _units(spec: Any) -> str:
    """The head's units, else those of the registered field of that name (a scalar head's default is "")."""
    if spec.units:
        return spec.units
    from tensorframe.registry import get_registry

    registered = get_registry().items["field"].get(spec.name)
    return registered.units if registered is not None else ""


def metrics(pairs: FieldPairs) -> dict[str, Any]:
    """MAE/RMSE over all components and per component, and the labels' spread (std) for scale."""
    error = pairs.predicted - pairs.target
    per_component = {
        name: {"mae": float(np.abs(error[:, c]).mean()), "rmse": float(np.sqrt((error[:, c] ** 2).mean())),
               "target_std": float(pairs.target[:, c].std())}
        for c, name in enumerate(pairs.components)
    }
    return {
        "level": pairs.level,
        "units": pairs.units,
        "count": int(error.shape[0]),
        "num_structures": pairs.num_structures,
        "mae": float(np.abs(error).mean()),
        "rmse": float(np.sqrt((error**2).mean())),
        "target_std": float(pairs.target.std()),
        "components": per_component,
    }


def evaluate(model: Any, samples: Sequence[Sample], batch_size: int = 16) -> dict[str, Any]:
    """``{"num_structures": B, "fields": {field: metrics}, "unlabelled": [...]}`` for ``model`` on ``samples``.

    Each field's metrics: ``count`` (atoms or structures with a label), ``mae``, ``rmse``,
    ``target_std``, and ``components`` ``{"xy": {"mae", "rmse", "target_std"}, ...}``.
    """
    return _result(model, samples, collect_pairs(model, samples, batch_size))


def _result(model: Any, samples: Sequence[Sample], pairs: dict[str, FieldPairs]) -> dict[str, Any]:
    return {
        "num_structures": len(samples),
        "fields": {name: metrics(p) for name, p in pairs.items()},
        "unlabelled": sorted(set(model.fields) - set(pairs)),
    }


def format_table(result: dict[str, Any]) -> str:
    """A compact text table: one line per field, then its components."""
    lines = [f"{'field':<22} {'count':>7} {'MAE':>11} {'RMSE':>11} {'label std':>11}  units"]
    for name, m in result["fields"].items():
        lines.append(f"{name:<22} {m['count']:>7} {m['mae']:>11.4g} {m['rmse']:>11.4g} {m['target_std']:>11.4g}  {m['units']}")
        if len(m["components"]) > 1:
            for component, c in m["components"].items():
                lines.append(f"  {component:<20} {'':>7} {c['mae']:>11.4g} {c['rmse']:>11.4g} {c['target_std']:>11.4g}")
    if result.get("unlabelled"):
        lines.append(f"no labels in the data for: {', '.join(result['unlabelled'])}")
    return "\n".join(lines)


def parity_plot(pairs: FieldPairs, path: str | Path) -> None:
    """Predicted against labelled values, one colour per Cartesian component, with y = x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = pairs.components
    fig, ax = plt.subplots(figsize=(6.4 if len(names) > 1 else 5.2, 5.0), dpi=110)
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "viridis")
    for c, name in enumerate(names):
        color = cmap(c if len(names) <= 10 else c / max(len(names) - 1, 1))
        ax.scatter(pairs.target[:, c], pairs.predicted[:, c], s=9, alpha=0.7, color=color, label=name, linewidths=0)
    low = float(min(pairs.target.min(), pairs.predicted.min()))
    high = float(max(pairs.target.max(), pairs.predicted.max()))
    pad = 0.05 * (high - low or 1.0)
    ax.plot([low - pad, high + pad], [low - pad, high + pad], color="0.3", lw=0.8, ls="--", zorder=0)
    ax.set_xlim(low - pad, high + pad)
    ax.set_ylim(low - pad, high + pad)
    ax.set_aspect("equal")
    units = f" ({pairs.units})" if pairs.units else ""
    ax.set_xlabel(f"label{units}")
    ax.set_ylabel(f"prediction{units}")
    m = metrics(pairs)
    rows = f"{m['count']} {'atoms' if pairs.level == 'atom' else 'structures'}"
    ax.set_title(f"{pairs.field}: MAE {m['mae']:.3g}, RMSE {m['rmse']:.3g} ({rows})", fontsize=10)
    if len(names) > 1:
        ax.legend(fontsize=7, ncol=2 if len(names) > 9 else 1, markerscale=1.5, frameon=False,
                  loc="center left", bbox_to_anchor=(1.01, 0.5), title="component", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(model: Any, samples: Sequence[Sample], outdir: str | Path, batch_size: int = 16) -> dict[str, Any]:
    """Metrics (``metrics.json``) and one parity plot per field (``parity_<field>.png``) in ``outdir``."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    pairs = collect_pairs(model, samples, batch_size)
    result = _result(model, samples, pairs)
    for name, p in pairs.items():
        parity_plot(p, outdir / f"parity_{name}.png")
    (outdir / "metrics.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


__all__ = ["FieldPairs", "collect_pairs", "component_names", "evaluate", "format_table", "metrics", "parity_plot",
           "write_report"]
