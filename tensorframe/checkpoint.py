"""Checkpoints: one file with the model config, weights (with output scaling), versions and,
optionally, the training state. Written atomically; read with ``weights_only=True`` so a
checkpoint from an untrusted source cannot execute code, then checked (its keys and their
types, finite weights, weights that fit the saved config, a model within the memory budget)
before the model is allocated; every refusal is one line naming the file.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from tensorframe.config import ConfigError, parse_model_config
from tensorframe.model import TensorModel, build_model, check_model_memory, materialize_model, plan_model
from tensorframe.registry import Registry, get_registry

FORMAT = "tensorframe-checkpoint/2"
# Format 1 predates the complete word sets: its heads were built with products of edge
# directions only, which is ``basis: paper`` today.
LEGACY_FORMATS = ("tensorframe-checkpoint/1",)


class CheckpointError(ValueError):
    """A file that is not a readable tensorframe checkpoint (the message names the file)."""


def versions() -> dict[str, str]:
    import e3nn
    import numpy

    import tensorframe

    return {"tensorframe": str(tensorframe.__version__), "torch": str(torch.__version__), "e3nn": str(e3nn.__version__),
            "numpy": str(numpy.__version__)}


def atomic_torch_save(payload: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``:
    a crash leaves either the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(payload, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def model_payload(model: TensorModel) -> dict[str, Any]:
    """The part of a checkpoint that rebuilds the model (CPU tensors)."""
    return {
        "format": FORMAT,
        "model_config": model.config.model_dump(mode="json"),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "versions": versions(),
    }


def save_checkpoint(path: str | Path, model: TensorModel, **extra: Any) -> None:
    """Write ``model`` (and any ``extra`` entries, e.g. ``training_state``) atomically.

    ``extra`` values must be tensors, numbers, strings, lists or dicts of those, so the file
    loads with ``weights_only=True``.
    """
    payload = model_payload(model)
    payload.update(extra)
    atomic_torch_save(payload, path)


REQUIRED_KEYS = {"format": str, "model_config": dict, "state_dict": dict}
OPTIONAL_KEYS = {"dtype": str, "versions": dict, "training_state": dict}
DTYPES = ("float32", "float64", "float16", "bfloat16")
ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint's contents, loaded with ``weights_only=True`` and checked.

    Checks: a torch zip archive that loads; a dict with ``format`` (a known one),
    ``model_config`` (a dict) and ``state_dict`` (names to tensors holding data), optional
    ``dtype``, ``versions`` and ``training_state`` of the right types; every floating weight
    and buffer finite. No tensorframe module keeps NaN or inf in its state by design (element
    reference energies of unseen elements are 0), so any is refused.

    Raises:
        CheckpointError: one line naming the file, for missing, empty, truncated, foreign,
            unsafe, incomplete or non-finite checkpoints.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    payload = _torch_load(path, map_location)
    check_payload(payload, path)
    return payload


def _torch_load(path: Path, map_location: str | torch.device) -> Any:
    """``torch.load(path, weights_only=True)``, each failure one line naming the file."""
    try:
        with path.open("rb") as stream:
            head = stream.read(len(ZIP_MAGIC))
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read the checkpoint: {error.strerror or error}") from None
    if not head:
        raise CheckpointError(f"{path}: not a tensorframe checkpoint (empty file)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many kinds for bad files
        raise CheckpointError(f"{path}: {_load_failure(error, head)}") from None


def _load_failure(error: Exception, head: bytes) -> str:
    """What went wrong in ``torch.load`` (of a file starting with ``head``), in one line that
    is never empty."""
    text = str(error)
    unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if unsafe:
        return (f"refused: it holds a {unsafe.group(1)} object, which weights_only loading does not allow (a "
                f"tensorframe checkpoint holds only tensors, numbers, strings, lists and dicts)")
    if "WeightsUnpickler error" in text or "Weights only load failed" in text:
        detail = re.search(r"WeightsUnpickler error: ([^\n]*)", text)
        reason = detail.group(1).split(". ")[0].strip() if detail else "an object it does not allow"
        return f"refused by weights_only loading: {reason}"
    if head != ZIP_MAGIC:  # torch.load also reads the legacy raw-pickle format
        return f"not a tensorframe checkpoint (not a zip archive written by torch.save; it starts with {head!r})"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    first = first.split(". ")[0][:200]
    detail = f"{type(error).__name__}: {first}" if first else type(error).__name__
    return f"not a loadable tensorframe checkpoint (truncated or corrupted: {detail})"


def check_payload(payload: Any, path: Path) -> None:
    """The structure of a loaded checkpoint (see :func:`load_checkpoint`).

    Raises:
        CheckpointError: naming the file and the first missing or malformed entry.
    """
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: expected a checkpoint of format {FORMAT!r} (a dict), found a "
                              f"{type(payload).__name__}")
    expected = f"expected keys: {', '.join(REQUIRED_KEYS)}; optional: {', '.join(OPTIONAL_KEYS)}"
    if "format" not in payload and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise CheckpointError(f"{path}: holds a bare state_dict of {len(payload)} tensors, not a tensorframe "
                              f"checkpoint ({expected}); save models with tensorframe.save_checkpoint")
    for key in REQUIRED_KEYS:
        if key not in payload:
            raise CheckpointError(f"{path}: checkpoint has no {key!r} ({expected})")
    if payload["format"] not in (FORMAT, *LEGACY_FORMATS):
        raise CheckpointError(f"{path}: expected a checkpoint of format {FORMAT!r}, found {payload['format']!r}")
    for key, kind in {**REQUIRED_KEYS, **OPTIONAL_KEYS}.items():
        if key in payload and not isinstance(payload[key], kind):
            raise CheckpointError(f"{path}: checkpoint entry {key!r} should be a {kind.__name__}, found a "
                                  f"{type(payload[key]).__name__}")
    if payload.get("dtype", "float32") not in DTYPES:
        raise CheckpointError(f"{path}: checkpoint entry 'dtype' is {payload['dtype']!r}; expected one of "
                              f"{', '.join(DTYPES)}")
    check_weights(payload["state_dict"], path)


def check_weights(state_dict: dict[Any, Any], path: Path) -> None:
    """Every entry of a state_dict is a named tensor holding data; floating ones are finite.

    Raises:
        CheckpointError: naming the file and the first bad weight.
    """
    for name, value in state_dict.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: 'state_dict' should map weight names to tensors; entry {name!r} holds a "
                                  f"{type(value).__name__}")
        if value.is_meta:
            raise CheckpointError(f"{path}: weight {name!r} holds no data (a meta tensor); the checkpoint is corrupt")
        if value.is_floating_point() or value.is_complex():
            bad = int((~torch.isfinite(value)).sum())
            if bad:
                raise CheckpointError(f"{path}: weight {name!r} has {bad} NaN/inf values; the checkpoint is corrupt "
                                      f"(or training diverged)")


def load_model(path: str | Path, map_location: str | torch.device | None = None,
               memory_budget_gb: float | None = None, registry: Registry | None = None) -> TensorModel:
    """The model saved in a checkpoint, in eval mode, on ``map_location`` (default CPU), built
    from the plugins of ``registry`` (default: the installed ones, :func:`get_registry`).

    Before any large allocation the saved config is planned (:func:`tensorframe.model.plan_model`),
    its tensor names and shapes compared with the saved weights, and its size with the model
    memory budget (``memory_budget_gb``, else ``$TENSORFRAME_MODEL_MEMORY_GB``, else 8 GiB).

    Raises:
        CheckpointError: for a file :func:`load_checkpoint` refuses, or weights that do not fit
            the saved config (naming the first mismatching tensor).
        ConfigError: for an invalid saved config or one over the memory budget (naming the file).
    """
    path = Path(path)
    payload = load_checkpoint(path)
    registry = registry or get_registry()
    config = payload["model_config"]
    if payload["format"] in LEGACY_FORMATS:
        config = with_paper_basis(config, registry)
    try:
        config = parse_model_config(config)
        planned = plan_model(config, registry)
        if planned is not None:
            check_weights_fit(planned, payload["state_dict"], path)
            check_model_memory(planned, memory_budget_gb)
            model = materialize_model(planned, registry)
        else:
            model = build_model(config, registry, memory_budget_gb)
    except ConfigError as error:
        raise ConfigError(f"{path}: model_config: {error}") from None
    model = model.to(dtype=getattr(torch, payload.get("dtype", "float32")))
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as error:
        reason = "; ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__
        raise CheckpointError(f"{path}: weights do not fit the saved config: {reason}") from None
    if map_location is not None:
        model = model.to(map_location)
    return model.eval()


def check_weights_fit(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """The saved weights have exactly the names and shapes of ``model``'s (a plan will do).

    Raises:
        CheckpointError: naming the first tensor that is missing, unexpected or of another shape.
    """
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    prefix = f"{path}: weights do not fit the saved config:"
    for name, shape in expected.items():
        if name not in state_dict:
            raise CheckpointError(f"{prefix} the config builds {name!r} (shape {shape}), which the file lacks")
        found = tuple(state_dict[name].shape)
        if found != shape:
            raise CheckpointError(f"{prefix} tensor {name!r} has shape {found} in the file, the config builds {shape}")
    extra = [name for name in state_dict if name not in expected]
    if extra:
        raise CheckpointError(f"{prefix} the file holds {extra[0]!r} (shape {tuple(state_dict[extra[0]].shape)}), "
                              f"which the config does not build")


def with_paper_basis(config: dict[str, Any], registry: Registry | None = None) -> dict[str, Any]:
    """A format-1 model config with ``basis: paper`` on every head of ``registry`` (default:
    the installed plugins) that has the option."""
    registry = registry or get_registry()
    heads = []
    for head in config.get("heads", []):
        head = dict(head)
        try:
            options = registry.get("head", head.get("name")).config.model_fields
        except Exception:  # noqa: BLE001 - an unknown head is reported by build_model
            options = {}
        if "basis" in options and "basis" not in head:
            head["basis"] = "paper"
        heads.append(head)
    return {**config, "heads": heads}
