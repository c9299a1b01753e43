"""``tensorframe evaluate CKPT DATA...``: per-field and per-component MAE/RMSE, parity plots, metrics JSON."""

from __future__ import annotations

import argparse

from tensorframe.commands.options import (
    add_command,
    add_device_option,
    add_graph_memory_option,
    apply_graph_memory,
    check_device,
    parse_key_map,
    positive_int,
)
from tensorframe.compilation import compile_model
from tensorframe.registry import get_registry

DESCRIPTION = """\
Compare a trained model's predictions with the labels in DATA files: MAE and RMSE per field
and per Cartesian component (printed, and in OUTDIR/metrics.json) and one parity plot per
field (OUTDIR/parity_<field>.png)."""


def register(subparsers) -> None:
    parser = add_command(subparsers, "evaluate", f"{__doc__}\n\n{DESCRIPTION}",
                         help="MAE/RMSE per field and component, parity plots")
    parser.add_argument("checkpoint", help="a tensorframe checkpoint (.pt)")
    parser.add_argument("data", nargs="+", metavar="DATA", help="labelled structure files (any tensorframe reader)")
    parser.add_argument("--format", default=None, help="reader name (default: from the file extension)")
    parser.add_argument("--key-map", action="append", default=None, metavar="FILE_KEY=FIELD",
                        help="rename a label key of the files to a field name, e.g. REF_forces=forces; repeat the "
                             "option or separate pairs by commas (a=b,c=d)")
    parser.add_argument("-o", "--outdir", default="evaluation", help="folder for metrics.json and plots (evaluation)")
    parser.add_argument("--batch-size", type=positive_int, default=16)
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model first (minutes; worth it for many structures)")
    add_device_option(parser, "cpu", "torch device (default cpu)")
    add_graph_memory_option(parser)
    parser.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from tensorframe.checkpoint import load_model
    from tensorframe.commands.predict import read_inputs, structure_names
    from tensorframe.scoring import format_table, write_report

    key_map = parse_key_map(args.key_map)  # checked before anything is loaded
    device = check_device(args.device)
    apply_graph_memory(args.graph_memory)
    registry = get_registry()
    model = load_model(args.checkpoint, map_location=device, registry=registry)
    if args.compile:
        compile_model(model)
    samples, sources = read_inputs(args.data, args.format, registry, **({"key_map": key_map} if key_map else {}))
    result = write_report(model, samples, args.outdir, batch_size=args.batch_size, names=structure_names(sources))
    if not result["fields"]:
        raise ValueError(
            f"{', '.join(args.data)}: no labels for any field the model predicts ({', '.join(model.fields)}); "
            "rename the file's keys with --key-map FILE_KEY=FIELD"
        )
    print(f"{result['num_structures']} structures from {', '.join(args.data)}")
    print(format_table(result))
    print(f"wrote {args.outdir}/metrics.json and parity plots")
    return 0
