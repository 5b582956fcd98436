"""Command line: python -m fastresize demo|memory (also installed as fastresize)."""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType
from typing import Any

from fastresize import demo, verify
from fastresize._checks import check_device

DESCRIPTION = """\
Multi-scale training for PyTorch: a size policy that starts with the largest size, a batch
resize on the device, a DataLoader wrapper and a warm-restart learning-rate scheduler.

Run "python -m fastresize COMMAND --help" for a command's options."""

DEMO_DESCRIPTION = """\
Train a small conv autoencoder through a real DataLoader with workers: every batch is resized on the
device to a size drawn per step (the largest first), and the warmboot scheduler sets the learning
rate per step. The images are built-in synthetic ones, or the images of a folder with --data DIR
(needs Pillow). Prints a progress bar, then a table of the size, learning rate, loss and images/s of
every step. CUDA when available, else CPU."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each option's default, except where there is none to show (``None``, on/off flags)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.nargs == 0 or "(default:" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action) or ""


def _demo(options: dict[str, Any]) -> None:
    records = demo.run_demo(**options)
    demo.print_table(records, str(check_device(options["device"])), sys.stdout)


def _stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # the verification stops its children and reports what finished


def _memory(options: dict[str, Any]) -> None:
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        report = verify.run_verification(**options)
    finally:
        signal.signal(signal.SIGTERM, previous)
    verify.print_report(report, sys.stdout)
    written = verify.save_report(report, options["out"])
    print(f"written: {', '.join(str(path) for path in written)} and {options['out']}/children/")


def build_parser() -> argparse.ArgumentParser:
    """Return the command line's parser."""
    parser = argparse.ArgumentParser(prog="fastresize", description=DESCRIPTION, formatter_class=HelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo.add_arguments(
        commands.add_parser(
            "demo",
            help="train a small autoencoder with multi-scale batches",
            description=DEMO_DESCRIPTION,
            formatter_class=HelpFormatter,
        )
    )
    verify.add_arguments(
        commands.add_parser(
            "memory",
            help="verify max-size-first's fail-fast and measure the allocator",
            description=verify.DESCRIPTION,
            formatter_class=HelpFormatter,
        )
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    options = vars(parser.parse_args(argv))
    command = options.pop("command")
    try:
        {"demo": _demo, "memory": _memory}[command](options)
    except (ValueError, TypeError) as error:
        parser.error(str(error))
    return 0


if __name__ == "__main__":
    sys.exit(main())
