"""Command line: ``python -m fastresize demo|memory`` (also installed as ``fastresize``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fastresize import demo, verify


def _demo(args: argparse.Namespace) -> None:
    import torch

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
    demo.print_table(records, args.device or ("cuda" if torch.cuda.is_available() else "cpu"), sys.stdout)


def _memory(args: argparse.Namespace) -> None:
    import torch

    report = verify.run_verification(
        device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
        lower=args.lower,
        upper=args.upper,
        steps=args.steps,
        batch=args.batch_size,
        channels=args.channels,
        seeds=args.seeds,
        timeout=args.timeout,
        progress=not args.no_progress,
    )
    verify.print_report(report, sys.stdout)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    if args.plot:
        verify.plot_report(report, args.plot)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="fastresize", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo.add_arguments(
        commands.add_parser("demo", help="train a small autoencoder with multi-scale batches on synthetic images")
    )
    verify.add_arguments(
        commands.add_parser("memory", help="measure peak memory per step and verify max-size-first's fail-fast")
    )
    args = parser.parse_args(argv)
    try:
        {"demo": _demo, "memory": _memory}[args.command](args)
    except (ValueError, TypeError) as error:
        parser.error(str(error))
    return 0


if __name__ == "__main__":
    sys.exit(main())
