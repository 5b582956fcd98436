"""Command line: ``python -m fastresize demo|memory`` (also installed as ``fastresize``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fastresize import demo, verify
from fastresize._checks import check_device


def _demo(options: dict[str, Any]) -> None:
    records = demo.run_demo(**options)
    demo.print_table(records, str(check_device(options["device"])), sys.stdout)


def _memory(options: dict[str, Any]) -> None:
    json_path, plot_path = options.pop("json"), options.pop("plot")
    report = verify.run_verification(**options)
    verify.print_report(report, sys.stdout)
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=1))
    if plot_path:
        verify.plot_report(report, plot_path)


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
    options = vars(parser.parse_args(argv))
    command = options.pop("command")
    try:
        {"demo": _demo, "memory": _memory}[command](options)
    except (ValueError, TypeError) as error:
        parser.error(str(error))
    return 0


if __name__ == "__main__":
    sys.exit(main())
