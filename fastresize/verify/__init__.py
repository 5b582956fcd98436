"""The verification of max-size-first, behind ``python -m fastresize memory``.

:mod:`.schedules` holds the experiment, :mod:`.child` the child processes that run it, :mod:`.run` the
command's options and its two phases, :mod:`.report` the caps and verdicts as text, a figure and files.
"""

from fastresize.verify.report import build_report, print_report, report_figure, save_report
from fastresize.verify.run import DESCRIPTION, add_arguments, run_verification

__all__ = [
    "DESCRIPTION",
    "add_arguments",
    "build_report",
    "print_report",
    "report_figure",
    "run_verification",
    "save_report",
]
