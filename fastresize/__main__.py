"""Command line: ``python -m fastresize demo`` (also installed as ``fastresize``)."""

from __future__ import annotations

import argparse
import sys

from fastresize import demo


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="fastresize", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo.add_arguments(
        commands.add_parser("demo", help="train a small autoencoder with multi-scale batches on synthetic images")
    )
    args = parser.parse_args(argv)
    try:
        records = demo.run_demo(
            steps=args.steps,
            batch_size=args.batch_size,
            workers=args.workers,
            lower=args.lower,
            upper=args.upper,
            image_size=args.image_size,
            images=args.images,
            lr=args.lr,
            seed=args.seed,
            device=args.device,
            data=args.data,
            progress=not args.no_progress,
        )
    except (ValueError, TypeError) as error:
        parser.error(str(error))
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    demo.print_table(records, device, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
