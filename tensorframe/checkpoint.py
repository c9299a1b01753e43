"""Checkpoints: one file with the model config, weights (with output scaling), versions and,
optionally, the training state. Written atomically; read with ``weights_only=True`` so a
checkpoint from an untrusted source cannot execute code.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from tensorframe.model import TensorModel, build_model

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


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint's contents, loaded with ``weights_only=True``.

    Raises:
        CheckpointError: naming the file, for missing, truncated, foreign or unsafe files.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many kinds for bad files
        raise CheckpointError(
            f"{path}: not a loadable tensorframe checkpoint (truncated, corrupted, or it holds objects "
            f"that weights_only loading refuses): {type(error).__name__}: {str(error).splitlines()[0]}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") not in (FORMAT, *LEGACY_FORMATS):
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path}: expected a checkpoint of format {FORMAT!r}, found {found!r}")
    return payload


def load_model(path: str | Path, map_location: str | torch.device | None = None) -> TensorModel:
    """The model saved in a checkpoint, in eval mode, on ``map_location`` (default CPU)."""
    payload = load_checkpoint(path)
    config = payload["model_config"]
    if payload["format"] in LEGACY_FORMATS:
        config = with_paper_basis(config)
    model = build_model(config)
    model = model.to(dtype=getattr(torch, payload.get("dtype", "float32")))
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{path}: weights do not fit the saved config: {error}") from None
    if map_location is not None:
        model = model.to(map_location)
    return model.eval()


def with_paper_basis(config: dict[str, Any]) -> dict[str, Any]:
    """A format-1 model config with ``basis: paper`` on every head that has the option."""
    from tensorframe.registry import get_registry

    registry = get_registry()
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
