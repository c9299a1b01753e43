"""``tensorframe evaluate CKPT DATA...``: per-field and per-component MAE/RMSE, parity plots, metrics JSON."""

from __future__ import annotations

import argparse

from tensorframe.commands.options import positive_int


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="MAE/RMSE per field and component, parity plots",
        description="Compare a trained model's predictions with the labels in DATA files: MAE and RMSE per field "
                    "and per Cartesian component (printed, and in OUTDIR/metrics.json) and one parity plot per "
                    "field (OUTDIR/parity_<field>.png).",
    )
    parser.add_argument("checkpoint", help="a tensorframe checkpoint (.pt)")
    parser.add_argument("data", nargs="+", metavar="DATA", help="labelled structure files (any tensorframe reader)")
    parser.add_argument("--format", default=None, help="reader name (default: from the file extension)")
    parser.add_argument("--key-map", action="append", nargs="+", default=None, metavar="FILE_KEY=FIELD",
                        help="rename label keys of the files to field names, e.g. REF_forces=forces")
    parser.add_argument("-o", "--outdir", default="evaluation", help="folder for metrics.json and plots (evaluation)")
    parser.add_argument("--batch-size", type=positive_int, default=16)
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, ...)")
    parser.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from tensorframe.checkpoint import load_model
    from tensorframe.commands.predict import parse_key_map, read_inputs
    from tensorframe.evaluate import format_table, write_report

    key_map = parse_key_map(args.key_map)
    model = load_model(args.checkpoint, map_location=args.device)
    samples, _ = read_inputs(args.data, args.format, **({"key_map": key_map} if key_map else {}))
    result = write_report(model, samples, args.outdir, batch_size=args.batch_size)
    if not result["fields"]:
        raise ValueError(
            f"{', '.join(args.data)}: no labels for any field the model predicts ({', '.join(model.fields)}); "
            "rename the file's keys with --key-map FILE_KEY=FIELD"
        )
    print(f"{result['num_structures']} structures from {', '.join(args.data)}")
    print(format_table(result))
    print(f"wrote {args.outdir}/metrics.json and parity plots")
    return 0
