"""``tensorframe predict CKPT INPUT... -o OUT``: predicted tensors as extended XYZ or JSON, and a
phonopy BORN file (``--born-file``) from predicted Born charges and dielectric tensor."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tensorframe.commands.options import (
    add_command,
    add_device_option,
    add_graph_memory_option,
    apply_graph_memory,
    check_device,
    parse_key_map,
    positive_float,
    positive_int,
)
from tensorframe.compilation import compile_model
from tensorframe.registry import Registry, get_registry
from tensorframe.types import Sample

BORN_FIELDS = ("born_charges", "dielectric")
DESCRIPTION = """\
Predict every field of a trained model for the structures in INPUT files. OUT ending in
.xyz/.extxyz gets extended XYZ (per-atom tensors as flattened columns, structure tensors in
the frame's info), any other name JSON."""


def register(subparsers) -> None:
    parser = add_command(
        subparsers, "predict", f"{__doc__}\n\n{DESCRIPTION}",
        help="predict tensors for structures; write extended XYZ / JSON and a phonopy BORN file",
    )
    parser.add_argument("checkpoint", help="a tensorframe checkpoint (.pt)")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="structure files (any tensorframe reader)")
    parser.add_argument("-o", "--output", default=None, metavar="OUT", help="predictions file: .xyz/.extxyz or JSON")
    parser.add_argument("--format", default=None, help="reader name (default: from the file extension)")
    parser.add_argument("--born-file", default=None, metavar="BORN",
                        help="write a phonopy BORN file (one crystal; needs born_charges and dielectric heads)")
    parser.add_argument("--symprec", type=positive_float, default=1e-5,
                        help="spglib tolerance in Å for --born-file (1e-5)")
    parser.add_argument("--batch-size", type=positive_int, default=16)
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model first (minutes; worth it for many structures)")
    add_device_option(parser, "cpu", "torch device (default cpu)")
    add_graph_memory_option(parser)
    parser.set_defaults(func=cmd_predict)


def read_inputs(paths: list[str], format: str | None = None, registry: Registry | None = None,
                **options: Any) -> tuple[list[Sample], list[str]]:
    """Samples of every file, and a ``file:index`` source for each, read with the readers and
    fields of ``registry`` (default: the installed plugins).

    Raises:
        ValueError: naming the file, for a missing file or one its reader cannot read.
    """
    from tensorframe.io.read import read_structures

    samples, sources = [], []
    for path in paths:
        if not Path(path).exists():
            raise ValueError(f"{path}: no such input file")
        try:
            found = read_structures(path, format=format, registry=registry, **options)
        except Exception as error:  # noqa: BLE001 - readers raise many kinds; name the file once
            message = str(error)
            raise ValueError(message if str(path) in message else f"{path}: {message}") from error
        samples.extend(found)
        sources.extend(f"{path}:{index}" for index in range(len(found)))
    return samples, sources


def structure_names(sources: list[str]) -> list[str]:
    """``["data.xyz:3", ...]`` -> ``["data.xyz: structure 3", ...]``, the prefix of error messages."""
    return ["{}: structure {}".format(*source.rsplit(":", 1)) for source in sources]


def cmd_predict(args: argparse.Namespace) -> int:
    from tensorframe.checkpoint import load_model
    from tensorframe.io.writers import write_born_file, write_predictions

    if args.output is None and args.born_file is None:
        raise ValueError("nothing to write: give -o OUT and/or --born-file BORN")
    device = check_device(args.device)
    apply_graph_memory(args.graph_memory)
    registry = get_registry()
    model = load_model(args.checkpoint, map_location=device, registry=registry)
    if args.compile:
        compile_model(model)
    fields = model.fields
    if args.born_file is not None:
        missing = [name for name in BORN_FIELDS if name not in fields]
        if missing:
            raise ValueError(
                f"{args.checkpoint}: --born-file needs a model predicting born_charges and dielectric; "
                f"it has no {' and no '.join(repr(m) for m in missing)} head (it predicts: {', '.join(fields)})"
            )
    samples, sources = read_inputs(args.inputs, args.format, registry)
    if args.born_file is not None and len(samples) != 1:
        raise ValueError(f"--born-file: a BORN file describes one crystal, but the inputs hold {len(samples)} structures")
    predictions = model.predict(samples, batch_size=args.batch_size, names=structure_names(sources))
    if args.output is not None:
        levels = {name: spec.level for name, spec in {**registry.fields, **fields}.items()}  # labels, predictions
        written = write_predictions(args.output, samples, predictions, levels, sources)
        print(f"wrote {len(samples)} structure(s) with {', '.join(fields)} to {args.output} ({written})")
    if args.born_file is not None:
        prediction = predictions[0]
        try:
            result = write_born_file(args.born_file, samples[0], prediction["born_charges"], prediction["dielectric"],
                                     symprec=args.symprec)
        except ValueError as error:
            raise ValueError(f"{sources[0]}: {error}") from error
        atoms = " ".join(str(i + 1) for i in result.independent_atoms)
        print(
            f"wrote {args.born_file}: space group {result.international_symbol} ({result.num_operations} operations), "
            f"independent atoms {atoms}; symmetrisation changed Z* by at most {result.born_change:.2e} e "
            f"(acoustic sum rule residual before: {result.asr_residual:.2e} e) and eps by {result.dielectric_change:.2e}"
        )
        if result.note:
            print(f"note: {result.note}")
    return 0


__all__ = ["BORN_FIELDS", "cmd_predict", "parse_key_map", "read_inputs", "register"]
