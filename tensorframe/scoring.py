"""Scoring a model against labelled structures: MAE and RMSE per field and per Cartesian component, and parity plots.

For each field the model predicts and the data labels, every labelled tensor is flattened
row-major into its 3**rank components (``xx, xy, xz, yx, ...``; a scalar has one component,
``value``): atom-level fields contribute one row per atom, structure-level fields one row per
structure. MAE and RMSE are taken over all rows and components, and per component.
Parity plots show one panel per symmetry-independent component (6 for a symmetric 3x3).
Structures without a label for a field are left out of that field's numbers (``count`` says
how many rows entered).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tensorframe.fields import FieldSpec
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


def collect_pairs(model: Any, samples: Sequence[Sample], batch_size: int = 16,
                  names: Sequence[str] | None = None) -> dict[str, FieldPairs]:
    """Predictions of ``model`` beside the labels, for every field it predicts that some sample labels.

    ``names`` (one per sample, e.g. ``"data.xyz: structure 3"``; default ``"structure <i>"``)
    start the error messages.

    Raises:
        ValueError: naming the structure index and field, for a label of the wrong size or
            with NaN/inf values.
    """
    fields = model.fields
    # Peers' predictors (benchmarks/peers) take only (samples, batch_size): pass names when given.
    predictions = model.predict(samples, batch_size=batch_size, **({"names": names} if names is not None else {}))
    names = list(names) if names is not None else [f"structure {i}" for i in range(len(samples))]
    rows: dict[str, tuple[list[np.ndarray], list[np.ndarray], int]] = {}
    for index, (sample, prediction) in enumerate(zip(samples, predictions, strict=True)):
        for name, spec in fields.items():
            if name not in sample.targets or name not in prediction:  # stress/virial: 3D-periodic only
                continue
            predicted = np.asarray(prediction[name], dtype=np.float64)
            target = np.asarray(sample.targets[name], dtype=np.float64)
            if target.size != predicted.size:
                raise ValueError(
                    f"{names[index]}, field {name!r}: label has shape {target.shape}, the model predicts {predicted.shape}"
                )
            if not np.all(np.isfinite(target)):
                raise ValueError(f"{names[index]}, field {name!r}: label contains NaN or inf")
            per_row = sample.num_atoms if spec.level == "atom" else 1
            pred_rows, target_rows, count = rows.setdefault(name, ([], [], 0))
            pred_rows.append(predicted.reshape(per_row, -1))
            target_rows.append(target.reshape(per_row, -1))
            rows[name] = (pred_rows, target_rows, count + 1)
    return {
        name: FieldPairs(name, fields[name].level, fields[name].units, fields[name].rank, np.concatenate(p),
                         np.concatenate(t), n)
        for name, (p, t, n) in rows.items()
    }


def mae_rmse(abs_sum: float, sq_sum: float, count: float) -> tuple[float, float]:
    """MAE and RMSE of ``count`` error components from their summed absolute and squared values
    (sums that can be gathered batch by batch and over processes); (0, 0) when ``count`` is 0.

    The one definition of both metrics: used by :func:`metrics` and by the trainer's
    :func:`tensorframe.train.loss.summarize`.
    """
    count = max(float(count), 1.0)
    return abs_sum / count, math.sqrt(sq_sum / count)


def error_metrics(error: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """``{"mae", "rmse", "target_std"}`` of an array of errors and of the labels' spread.

    Shapes: error, target (M,) or (M, C), same shape
    """
    mae, rmse = mae_rmse(float(np.abs(error).sum()), float(np.square(error).sum()), error.size)
    return {"mae": mae, "rmse": rmse, "target_std": float(target.std())}


def metrics(pairs: FieldPairs) -> dict[str, Any]:
    """MAE/RMSE over all components and per component, and the labels' spread (std) for scale."""
    error = pairs.predicted - pairs.target
    per_component = {name: error_metrics(error[:, c], pairs.target[:, c]) for c, name in enumerate(pairs.components)}
    return {
        "level": pairs.level,
        "units": pairs.units,
        "count": int(error.shape[0]),
        "num_structures": pairs.num_structures,
        **error_metrics(error, pairs.target),
        "components": per_component,
    }


def score(model: Any, samples: Sequence[Sample], batch_size: int = 16) -> dict[str, Any]:
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


@dataclass(frozen=True)
class ParityPanel:
    """One panel of a parity plot: a symmetry-independent component of a field.

    ``limits`` are the shared x and y axis limits (robust: see :func:`robust_limits`);
    ``clipped`` counts the points outside them, drawn on the edge with their own marker.
    """

    component: str
    mae: float
    limits: tuple[float, float]
    clipped: int


def independent_components(rank: int, symmetry: str | None = None) -> list[int]:
    """Row-major positions (into the 3**rank components) of the symmetry-independent ones.

    ``symmetry`` is the field's index-symmetry formula (``"ij=ji"``, ``"ijk=ikj"``, ...;
    None or ``""`` for none): of each set of components the formula makes equal (up to
    sign), the first in row-major order is kept; components it forces to zero (the
    diagonal of ``"ij=-ji"``) are dropped. A symmetric 3x3 keeps 6 (xx xy xz yy yz zz),
    a Born-charge ``"ij"`` 9, piezo ``"ijk=ikj"`` 18, elastic ``"ijkl=jikl=ijlk=klij"`` 21.
    """
    if not symmetry:
        return list(range(3**rank))
    from tensorframe.ops.symmetry import formula_rank, symmetry_group

    if formula_rank(symmetry) != rank:
        raise ValueError(f"symmetry {symmetry!r} is of rank {formula_rank(symmetry)}, the field has rank {rank}")
    group = symmetry_group(symmetry)
    kept = []
    for flat, index in enumerate(itertools.product(range(3), repeat=rank)):
        images = {(int(np.ravel_multi_index(tuple(index[p] for p in perm), (3,) * rank)), sign)
                  for perm, sign in group}
        if (flat, -1) in images:  # equal to minus itself: always zero
            continue
        if min(image for image, _ in images) == flat:
            kept.append(flat)
    return kept


def robust_limits(*values: np.ndarray, trim: float = 0.005, pad: float = 0.05) -> tuple[float, float]:
    """Axis limits that show the bulk of ``values`` and not one far outlier.

    The core is the range left after trimming the ``trim`` fraction (at least one value,
    once there are 3 or more) from each end; every value within one core width of the core
    is then included, so the extreme points of ordinary data stay in view, while a value far
    beyond (a 1e6 among numbers of order 1) is left out. The range is padded by ``pad`` of
    its width (of its magnitude, or 1, when all values are equal).

    Shapes: values, any shapes (flattened together); NaN and inf are ignored.
    """
    flat = np.concatenate([np.asarray(v, dtype=np.float64).reshape(-1) for v in values])
    flat = np.sort(flat[np.isfinite(flat)])
    if flat.size == 0:
        return -1.0, 1.0
    cut = max(1, int(np.ceil(trim * flat.size))) if flat.size >= 3 else 0
    core = flat[cut : flat.size - cut] if cut else flat
    width = float(core[-1] - core[0]) or 0.1 * max(float(np.abs(core).max()), 1e-12)
    inside = flat[(flat >= core[0] - width) & (flat <= core[-1] + width)]
    low, high = float(inside[0]), float(inside[-1])
    margin = pad * ((high - low) or max(abs(low), abs(high)) or 1.0)
    return low - margin, high + margin


def _grid(panels: int) -> tuple[int, int]:
    """(rows, columns): up to 3 columns for up to 9 panels, 6 beyond."""
    columns = min(panels, 3 if panels <= 9 else 6)
    return -(-panels // columns), columns


def parity_plot(pairs: FieldPairs, path: str | Path, symmetry: str | None = None,
                fields: Mapping[str, FieldSpec] | None = None) -> list[ParityPanel]:
    """Predicted against labelled values: one panel per symmetry-independent component.

    Each panel has its component's MAE in the title, the line y = x, and robust axis limits
    (:func:`robust_limits` over its labels and predictions); points outside are drawn on
    the edge as red triangles and counted in the title. ``symmetry`` is the field's formula
    (a model's ``fields[name].symmetry``); None looks ``pairs.field`` up in ``fields`` (a field
    table, e.g. ``Registry.fields``), and a field not found there (or no ``fields``) gets one
    panel per Cartesian component.

    Returns:
        the panels, in the order drawn (row-major components).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if symmetry is None:
        symmetry = _table_symmetry(fields or {}, pairs.field, pairs.rank)
    names = pairs.components
    chosen = independent_components(pairs.rank, symmetry)
    rows, columns = _grid(len(chosen))
    size = 3.0 if len(chosen) > 1 else 4.6
    fig, axes = plt.subplots(rows, columns, figsize=(size * columns, size * rows + 0.3), dpi=110, squeeze=False)
    colours = plt.get_cmap("tab10")
    units = f" ({pairs.units})" if pairs.units else ""
    panels = []
    for k, (ax, c) in enumerate(zip(axes.flat, chosen, strict=False)):
        panels.append(_draw_panel(ax, names[c], pairs.target[:, c], pairs.predicted[:, c], colours(k % 10)))
        ax.set_xlabel(f"label{units}", fontsize=8)
        ax.set_ylabel(f"prediction{units}", fontsize=8)
    for ax in list(axes.flat)[len(chosen):]:
        ax.set_visible(False)
    m = metrics(pairs)
    count = f"{m['count']} {'atoms' if pairs.level == 'atom' else 'structures'}"
    shown = "" if len(chosen) in (1, len(names)) else f"; {len(chosen)} independent components of {len(names)}"
    fig.suptitle(f"{pairs.field}: MAE {m['mae']:.3g}, RMSE {m['rmse']:.3g} ({count}{shown})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, pil_kwargs={"compress_level": 1})  # fastest zlib level: ~15 % less time than the default
    plt.close(fig)
    return panels


def _draw_panel(ax: Any, name: str, target: np.ndarray, predicted: np.ndarray, colour: Any) -> ParityPanel:
    """One component's scatter, y = x and limits; points beyond the limits clipped onto the edge.

    Shapes: target, predicted (M,)
    """
    low, high = robust_limits(target, predicted)
    outside = (target < low) | (target > high) | (predicted < low) | (predicted > high)
    ax.scatter(target[~outside], predicted[~outside], s=9, alpha=0.7, color=colour, linewidths=0)
    if outside.any():
        ax.scatter(np.clip(target[outside], low, high), np.clip(predicted[outside], low, high), s=22, marker="^",
                   color="tab:red", linewidths=0, clip_on=False, zorder=3)
    ax.plot([low, high], [low, high], color="0.3", lw=0.8, ls="--", zorder=0)
    ax.set_xlim(low, high)
    ax.set_ylim(low, high)
    ax.set_aspect("equal")
    ax.tick_params(labelsize=7)
    mae = float(np.abs(predicted - target).mean()) if target.size else float("nan")
    clipped = int(outside.sum())
    note = f", {clipped} clipped (\u25b2)" if clipped else ""
    ax.set_title(f"{name}: MAE {mae:.3g}{note}", fontsize=9)
    return ParityPanel(name, mae, (low, high), clipped)


def _table_symmetry(fields: Mapping[str, FieldSpec], field: str, rank: int) -> str:
    """The index symmetry of ``fields[field]`` when it is there and its rank fits, else none."""
    spec = fields.get(field)
    return spec.symmetry if spec is not None and spec.rank == rank else ""


def write_report(model: Any, samples: Sequence[Sample], outdir: str | Path, batch_size: int = 16,
                 names: Sequence[str] | None = None) -> dict[str, Any]:
    """Metrics (``metrics.json``) and one parity plot per field (``parity_<field>.png``) in ``outdir``.

    Each plot has a panel per symmetry-independent component (:func:`parity_plot`); the
    metrics keep every Cartesian component.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    pairs = collect_pairs(model, samples, batch_size, names)
    result = _result(model, samples, pairs)
    for name, p in pairs.items():
        parity_plot(p, outdir / f"parity_{name}.png", model.fields[name].symmetry)
    (outdir / "metrics.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


__all__ = ["FieldPairs", "ParityPanel", "collect_pairs", "component_names", "error_metrics", "format_table",
           "independent_components", "mae_rmse", "metrics", "parity_plot", "robust_limits", "score", "write_report"]
