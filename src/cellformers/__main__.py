"""Command line: ``python -m cellformers demo`` and ``python -m cellformers pretrain``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m cellformers``."""
    parser = argparse.ArgumentParser(prog="python -m cellformers", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="embed, cluster and benchmark a bundled dataset and write a report")
    demo.add_argument("--out", default="demo_output", help="output directory (default: demo_output)")
    demo.add_argument(
        "--data",
        default=None,
        help="an .h5ad file with raw counts in X (default: scanpy's bundled pbmc68k_reduced, counts recovered)",
    )
    demo.add_argument("--label-key", default=None, help="obs column with cell types (default: from the dataset)")
    demo.add_argument("--batch-key", default=None, help="obs column with batches (optional)")
    demo.add_argument(
        "--models",
        default="all",
        help="comma-separated models to train (xtrimogene,scformer,scpalm), 'all' or 'none'",
    )
    demo.add_argument("--quick", action="store_true", help="fewer epochs (for smoke tests)")
    demo.add_argument(
        "--precision",
        default="auto",
        help="'auto' (bf16 where the CPU/GPU has bf16 units, float32 elsewhere), '32' or 'bf16-mixed'",
    )

    from ._cli_pretrain import add_pretrain_parser, run_pretrain_command
    from ._exceptions import CellformersError

    add_pretrain_parser(sub)

    args = parser.parse_args(argv)
    if args.command == "demo":
        from ._demo import run_demo

        run_demo(
            out=args.out,
            data=args.data,
            label_key=args.label_key,
            batch_key=args.batch_key,
            models=args.models,
            quick=args.quick,
            precision=args.precision,
        )
    elif args.command == "pretrain":
        try:
            return run_pretrain_command(args)
        except (CellformersError, ValueError, FileNotFoundError) as err:
            # bad input: the package's message in one line, no traceback (argparse's style)
            message = " ".join(str(err).split())
            print(f"{parser.prog} {args.command}: error: {type(err).__name__}: {message}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
